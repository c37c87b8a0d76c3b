"""Schema of ``configs/geometry.yaml``: measurement thresholds and planning defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from legalign.pipeline.config_schema import CONFIG_DIR, ConfigError, load_config

DEFAULT_GEOMETRY_CONFIG = "geometry.yaml"
CONFIG_FILE = CONFIG_DIR / DEFAULT_GEOMETRY_CONFIG


def _check_range(name: str, pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ConfigError(f"{name}: lower bound {pair[0]} exceeds upper bound {pair[1]}")


@dataclass(frozen=True)
class Classification:
    varus_below_deg: float
    valgus_above_deg: float

    def validate(self) -> None:
        if self.varus_below_deg > self.valgus_above_deg:
            raise ConfigError("varus_below_deg: must not exceed valgus_above_deg")


@dataclass(frozen=True)
class Normals:
    mpta_deg: tuple[float, float]
    mldfa_deg: tuple[float, float]

    def validate(self) -> None:
        for name in ("mpta_deg", "mldfa_deg"):
            pair = getattr(self, name)
            if len(pair) != 2:
                raise ConfigError(f"{name}: must be [low, high]")
            _check_range(name, pair)


@dataclass(frozen=True)
class LandmarkRules:
    low_confidence: float  # flagged below this (still measured from)
    unusable_confidence: float  # not measured from below this

    def validate(self) -> None:
        for name in ("low_confidence", "unusable_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be within [0, 1]")
        if self.unusable_confidence > self.low_confidence:
            raise ConfigError("unusable_confidence: must not exceed low_confidence")


@dataclass(frozen=True)
class Review:
    max_hka_interval_deg: float  # a wider 90 % HKA interval flags the leg for review

    def validate(self) -> None:
        if not self.max_hka_interval_deg > 0:
            raise ConfigError("max_hka_interval_deg: must be positive")


@dataclass(frozen=True)
class TargetWbl:
    varus: float
    valgus: float

    def validate(self) -> None:
        for name in ("varus", "valgus"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise ConfigError(f"{name}: must be a percentage within [0, 100]")


@dataclass(frozen=True)
class Solver:
    max_angle_deg: float
    tolerance_deg: float

    def validate(self) -> None:
        if not 0.0 < self.max_angle_deg < 90.0:
            raise ConfigError("max_angle_deg: must be within (0, 90)")
        if self.tolerance_deg <= 0:
            raise ConfigError("tolerance_deg: must be positive")


@dataclass(frozen=True)
class OsteotomyGeometry:
    hinge_side: Literal["lateral", "medial"]
    hinge_from_joint_mm: float
    hinge_inset_mm: float
    cut_start_from_joint_mm: float

    def validate(self) -> None:
        for name in ("hinge_from_joint_mm", "hinge_inset_mm", "cut_start_from_joint_mm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative")


@dataclass(frozen=True)
class Planning:
    indication_abs_hka_deg: float
    target_wbl_pct: TargetWbl
    max_post_mpta_deg: float
    dlo_femur_target_mldfa_deg: float
    warn_gap_mm: float
    warn_correction_deg: float
    uncalibrated_plateau_width_mm: float
    solver: Solver
    hto: OsteotomyGeometry
    dfo: OsteotomyGeometry

    def validate(self) -> None:
        if self.indication_abs_hka_deg < 0:
            raise ConfigError("indication_abs_hka_deg: must not be negative")
        if self.uncalibrated_plateau_width_mm <= 0:
            raise ConfigError("uncalibrated_plateau_width_mm: must be positive")


@dataclass(frozen=True)
class GeometryConfig:
    classification: Classification
    normals: Normals
    landmarks: LandmarkRules
    review: Review
    planning: Planning


def load_geometry_config(path: str | Path | None = None) -> GeometryConfig:
    """The defaults of configs/geometry.yaml, with ``path`` (a partial YAML) merged over them."""
    return load_config(GeometryConfig, DEFAULT_GEOMETRY_CONFIG, path)
