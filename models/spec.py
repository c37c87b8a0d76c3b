"""What a locator checkpoint's two networks predict, and how their inputs are made.

A ``LocatorSpec`` travels inside every checkpoint (as a plain dict), so inference uses
exactly the geometry the networks were trained with.  Values come from the training
config (``configs/train_*.yaml``, section ``model``); there are no defaults in code.

Coarse stage: the whole film letterboxed into ``coarse_height x coarse_width``; its
channels are class-agnostic (one "knee_centre" channel shows every knee on the film).
Fine stage: square crops around each joint of each leg, of side ``side x femur length``
(the leg's own scale), resampled to ``fine_size`` pixels and mirrored so that the leg's
medial side is +x (every leg looks like a right leg on a standard film); its channels
are anatomical (medial/lateral) names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from legalign.models.heatmap_net import available_architectures
from legalign.pipeline.config_schema import ConfigError, from_mapping
from legalign.pipeline.landmarks import LANDMARK_NAMES


@dataclass
class NetSpec:
    arch: str  # a name from models.heatmap_net.available_architectures()
    depth: int  # backbone stages kept (2-4)
    out_stride: int  # 2 or 4
    head_channels: int
    sigma: float  # target Gaussian sigma, heatmap pixels

    def validate(self) -> None:

        if self.arch not in available_architectures():
            raise ConfigError(
                f"arch: unknown architecture {self.arch!r} "
                f"(available: {', '.join(available_architectures())})"
            )
        if self.depth not in (2, 3, 4):
            raise ConfigError(f"depth: must be 2, 3 or 4, got {self.depth}")
        if self.out_stride not in (2, 4):
            raise ConfigError(f"out_stride: must be 2 or 4, got {self.out_stride}")
        if self.head_channels < 8:
            raise ConfigError(f"head_channels: must be >= 8, got {self.head_channels}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma: must be > 0, got {self.sigma}")


@dataclass
class CropSpec:
    name: str
    anchors: list[str]  # crop centre = weighted mean of these landmarks
    weights: list[float]
    side: float  # crop side as a fraction of the femur length (head -> knee)
    landmarks: list[str]  # fine channels decoded from this crop

    def validate(self) -> None:
        if len(self.anchors) != len(self.weights) or not self.anchors:
            raise ConfigError("anchors/weights: need the same, non-zero number of entries")
        for n in [*self.anchors, *self.landmarks]:
            if n not in LANDMARK_NAMES:
                raise ConfigError(f"unknown landmark name {n!r}")
        if not 0.02 <= self.side <= 2.0:
            raise ConfigError(f"side: must be in [0.02, 2], got {self.side}")


@dataclass
class LocatorSpec:
    coarse_height: int
    coarse_width: int
    coarse_landmarks: list[str]
    coarse_net: NetSpec
    fine_size: int
    fine_landmarks: list[str]
    fine_net: NetSpec
    crops: list[CropSpec]
    fine_scales: list[float]  # crop each joint at these multiples of its side; answers averaged
    peak_threshold: float  # minimum coarse peak for a joint to count as found
    fine_iterations: int  # fine passes; >1 re-centres each crop on the previous answer
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for key, value in (
            ("coarse_height", self.coarse_height),
            ("coarse_width", self.coarse_width),
            ("fine_size", self.fine_size),
        ):
            if value < 32 or value % 32:
                raise ConfigError(f"{key}: must be a positive multiple of 32, got {value}")
        for key, names in (
            ("coarse_landmarks", self.coarse_landmarks),
            ("fine_landmarks", self.fine_landmarks),
        ):
            for n in names:
                if n not in LANDMARK_NAMES:
                    raise ConfigError(f"{key}: unknown landmark name {n!r}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{key}: duplicate names")
        for n in ("femoral_head", "knee_centre", "ankle_centre"):
            if n not in self.coarse_landmarks:
                raise ConfigError(f"coarse_landmarks: must include {n!r}")
        for i, crop in enumerate(self.crops):
            for n in crop.anchors:
                if n not in self.coarse_landmarks:
                    raise ConfigError(f"crops[{i}].anchors: {n!r} is not a coarse landmark")
            for n in crop.landmarks:
                if n not in self.fine_landmarks:
                    raise ConfigError(f"crops[{i}].landmarks: {n!r} is not a fine landmark")
        if not 0 < self.peak_threshold < 1:
            raise ConfigError(f"peak_threshold: must be in (0, 1), got {self.peak_threshold}")
        if not self.fine_scales or any(not 0.5 <= v <= 2.0 for v in self.fine_scales):
            raise ConfigError(f"fine_scales: need values in [0.5, 2], got {self.fine_scales}")
        if self.fine_iterations < 1:
            raise ConfigError(f"fine_iterations: must be >= 1, got {self.fine_iterations}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LocatorSpec:
        data = dict(data)
        # checkpoints from before fine_scales existed cropped each joint once
        data.setdefault("fine_scales", [1.0])
        return from_mapping(cls, data, "spec")
