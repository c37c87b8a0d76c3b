"""The weak HKA target: the fine network tuned so that the HKA it measures matches an
angle-only reference (the ``angle`` stage of a training recipe).

The oai-sample landmarks are derived from bone outlines; the clinical truth is the
radiologists' HKA (``../shared/data/oai-readers``), which has no landmarks.  This stage
trains the fine network on both at once: each step's batch is the fine stage's heatmap
samples plus, for ``legs_per_step`` reference legs, the three crops the locator cuts at
inference (hip, knee, ankle: ``LocatorGeometry.crop_matrices`` geometry, around the
coarse network's leg, with a small simulated coarse-stage error).  The fine heatmaps of
those crops are decoded exactly as at inference but differentiably
(``models.heatmap_codec.decode_differentiable``), mapped back to the film, and their HKA
(``pipeline.measure``'s definition, in torch) is compared with the reference:

    loss = heatmap loss + weight * smooth_L1(HKA - reference HKA, beta)

Only the ``part`` of the reference named in the config is used (``angle``: its films in
``readers_split`` of configs/uncertainty.yaml); the ``calibration`` part fits the
interval scale and the ``heldout`` part is never used for either
(``legalign evaluate CKPT readers.csv --part heldout``).  The coarse network is not
changed; the legs are found once, with the run's coarse network, when the stage starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from legalign.models import heatmap_codec as hc
from legalign.models.crops import anchor_centre, compose, invert_affine, joint_crop_matrix, warp
from legalign.models.spec import LocatorSpec
from legalign.pipeline.coarse_to_fine import coarse_input, radiograph_film
from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.locate import Locator, crop_angle
from legalign.pipeline.read import read_radiograph
from legalign.training.engine import StageConfig
from legalign.training.readers_eval import load_angle_truth, truths_of_part
from legalign.training.samples import SampleAug, photometric

# The three points of the HKA and the crop each is read from (the crop that lists it).
HKA_POINTS = ("femoral_head", "knee_centre", "ankle_centre")
PARTS = ("angle", "calibration", "heldout", "all")
_LATTICE = 16  # a joint region starts on this pixel lattice (warp's block grid)


@dataclass
class AngleTargetConfig:
    """The reference of the ``angle`` stage and how strongly it pulls."""

    data: str  # angle CSV (file, side, hka_deg); relative: the config file's folder
    part: str  # angle | calibration | heldout | all (readers_split, configs/uncertainty.yaml)
    weight: float  # weight of the HKA loss (deg) against the heatmap loss
    legs_per_step: int  # reference legs (3 crops each) added to every batch
    anchor_jitter: float  # simulated coarse error of the crop anchors, fraction of the femur
    femur_log_sd: float  # simulated error of the coarse femur length (log sd)
    rotate_deg: float  # crop rotation jitter, uniform +-
    loss_beta: float  # smooth-L1 transition, deg

    def validate(self) -> None:
        if self.part not in PARTS:
            raise ConfigError(f"part: must be one of {', '.join(PARTS)}, got {self.part!r}")
        if not self.weight > 0:
            raise ConfigError(f"weight: must be > 0, got {self.weight}")
        if self.legs_per_step < 1:
            raise ConfigError(f"legs_per_step: must be >= 1, got {self.legs_per_step}")
        for name in ("anchor_jitter", "femur_log_sd", "rotate_deg"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.loss_beta > 0:
            raise ConfigError(f"loss_beta: must be > 0, got {self.loss_beta}")


@dataclass
class AngleStageConfig(StageConfig):
    """The fine stage's settings (heatmap samples from ``train_data``) plus the target."""

    target: AngleTargetConfig


@dataclass
class JointRegion:
    """The part of a film one joint's crops can need: pixels and their film offset."""

    pixels: np.ndarray
    x0: int
    y0: int

    def crop(self, A: np.ndarray, size: int) -> np.ndarray:
        """``warp`` of the film through ``A`` (film -> crop), read from this region."""
        to_film = np.array([[1.0, 0.0, self.x0], [0.0, 1.0, self.y0]])
        return warp(self.pixels, compose(A, to_film), (size, size))


@dataclass
class TargetLeg:
    """One reference leg as the coarse network found it."""

    file: str
    hka_deg: float
    points: dict[str, tuple[float, float]]  # the coarse leg's anchors, film pixels
    medial_sign: int
    femur_px: float
    regions: dict[str, JointRegion]  # crop name -> region


def _region(pixels: np.ndarray, centre: tuple[float, float], half: float) -> JointRegion:
    h, w = pixels.shape[:2]
    x0 = max(0, int(math.floor((centre[0] - half) / _LATTICE)) * _LATTICE)
    y0 = max(0, int(math.floor((centre[1] - half) / _LATTICE)) * _LATTICE)
    x1 = min(w, int(math.ceil(centre[0] + half)) + 1)
    y1 = min(h, int(math.ceil(centre[1] + half)) + 1)
    return JointRegion(np.ascontiguousarray(pixels[y0:y1, x0:x1], np.float32), x0, y0)


def load_target_legs(
    cfg: AngleTargetConfig, locator: Locator, log: Callable[..., None] = print
) -> list[TargetLeg]:
    """Read the reference films of ``cfg.part``, find their legs with ``locator``'s
    coarse network and keep, per leg, the regions its crops can reach."""
    truths = load_angle_truth(cfg.data)
    truths = truths_of_part(truths, None if cfg.part == "all" else cfg.part)
    if not truths:
        raise ConfigError(
            f"angle: part {cfg.part!r} of {cfg.data} has no films (readers_split in "
            "configs/uncertainty.yaml; the angle part needs angle_fraction > 0)"
        )
    spec = locator.spec
    for name in HKA_POINTS:
        if not any(name in c.landmarks for c in spec.crops):
            raise ConfigError(f"angle: no crop of the model reads {name}")
    legs: list[TargetLeg] = []
    missed: list[str] = []
    read_path: Any = None  # the film last read (a film's legs are listed together)
    for t in truths:
        if t.path != read_path:
            try:
                r = read_radiograph(t.path)
            except LegalignError as exc:
                raise ConfigError(f"angle: {str(exc).splitlines()[0]}") from None
            film = radiograph_film(r)
            view = coarse_input(locator, film.pixels)
            coarse = locator.decode_coarse(locator.predict_coarse(view.images), film.shape, view)
            read_path, pixels = t.path, r.pixels
        found = [leg for leg in coarse.legs if leg.side == t.side]
        if not found or not all(a in found[0].points for a in HKA_POINTS):
            missed.append(f"{t.file} {t.side}")
            continue
        leg = found[0]
        regions = {}
        for c in spec.crops:
            centre = anchor_centre(leg.points, c.anchors, c.weights)
            if centre is None:
                continue
            side = c.side * leg.femur_px * max(spec.fine_scales)
            half = side * 0.75 * math.exp(3 * cfg.femur_log_sd)
            half += 3 * cfg.anchor_jitter * leg.femur_px + 4
            regions[c.name] = _region(pixels, centre, half)
        if not all(_crop_of(spec, n).name in regions for n in HKA_POINTS):
            missed.append(f"{t.file} {t.side}")
            continue
        legs.append(
            TargetLeg(
                t.file,
                t.hka_deg,
                {k: (float(v[0]), float(v[1])) for k, v in leg.points.items()},
                int(leg.medial_sign),
                float(leg.femur_px),
                regions,
            )
        )
    log(
        f"angle target: {len(legs)} legs of {len(truths)} from {cfg.data} (part {cfg.part})"
        + (f"; no complete coarse leg on {len(missed)}: {', '.join(missed[:5])}" if missed else "")
    )
    if not legs:
        raise ConfigError(f"angle: the coarse network found no leg on the films of {cfg.data}")
    return legs


def _crop_of(spec: LocatorSpec, landmark: str):
    return next(c for c in spec.crops if landmark in c.landmarks)


@dataclass
class TargetBatch:
    """Crops of ``n`` reference legs, 3 per leg in ``HKA_POINTS`` order."""

    crops: np.ndarray  # (3n, 1, S, S)
    crop_to_film: np.ndarray  # (3n, 2, 3)
    hka_deg: np.ndarray  # (n,)
    medial_sign: np.ndarray  # (n,)


class AngleTarget:
    """The extra batch and loss of the ``angle`` stage (``training.engine.train_stage``)."""

    def __init__(
        self,
        legs: list[TargetLeg],
        spec: LocatorSpec,
        cfg: AngleTargetConfig,
        photometric_aug: SampleAug | None,
        seed: int,
    ) -> None:
        self.legs, self.spec, self.cfg, self.aug = legs, spec, cfg, photometric_aug
        self.rng = np.random.default_rng(seed)
        self.channels = [spec.fine_landmarks.index(n) for n in HKA_POINTS]

    def batch(self) -> TargetBatch:
        rng, cfg, s = self.rng, self.cfg, self.spec.fine_size
        crops, mats, hka, sign = [], [], [], []
        for _ in range(cfg.legs_per_step):
            leg = self.legs[int(rng.integers(len(self.legs)))]
            jitter = cfg.anchor_jitter * leg.femur_px
            pts = {k: np.add(p, rng.normal(0.0, jitter, 2)) for k, p in leg.points.items()}
            femur = leg.femur_px * float(np.exp(rng.normal(0.0, cfg.femur_log_sd)))
            flip = leg.medial_sign < 0
            angle = crop_angle(leg.points, flip) + float(
                rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
            )
            for name in HKA_POINTS:
                c = _crop_of(self.spec, name)
                A = joint_crop_matrix(
                    pts, c.anchors, c.weights, c.side, femur, s, flip, angle_deg=angle
                )
                assert A is not None  # the leg has the anchors (load_target_legs)
                img = leg.regions[c.name].crop(A, s)
                if self.aug is not None:
                    img = photometric(img, self.aug, rng)
                crops.append(img)
                mats.append(invert_affine(A))
            hka.append(leg.hka_deg)
            sign.append(float(leg.medial_sign))
        return TargetBatch(
            np.stack(crops)[:, None].astype(np.float32),
            np.stack(mats).astype(np.float32),
            np.asarray(hka, np.float32),
            np.asarray(sign, np.float32),
        )

    def loss(self, heatmaps: torch.Tensor, batch: TargetBatch) -> tuple[torch.Tensor, float]:
        """(weighted loss, mean |HKA - reference| deg) for the batch's fine heatmaps."""
        dev = heatmaps.device
        pred = hka_from_heatmaps(
            heatmaps.float(),
            self.channels,
            torch.from_numpy(batch.crop_to_film).to(dev),
            torch.from_numpy(batch.medial_sign).to(dev),
            self.spec.fine_net.out_stride,
        )
        ref = torch.from_numpy(batch.hka_deg).to(dev)
        loss = F.smooth_l1_loss(pred, ref, beta=self.cfg.loss_beta)
        return self.cfg.weight * loss, float((pred - ref).abs().mean().detach())


def hka_deg_torch(H: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``pipeline.measure``'s HKA, phi(A - K) - phi(K - H) wrapped to (-180, 180], for
    canonical-frame points (N, 2)."""
    a1 = torch.atan2(A[:, 1] - K[:, 1], A[:, 0] - K[:, 0])
    a0 = torch.atan2(K[:, 1] - H[:, 1], K[:, 0] - H[:, 0])
    d = torch.rad2deg(a1 - a0)
    return 180.0 - torch.remainder(180.0 - d, 360.0)


def hka_from_heatmaps(
    heatmaps: torch.Tensor,
    channels: list[int],
    crop_to_film: torch.Tensor,
    medial_sign: torch.Tensor,
    stride: int,
) -> torch.Tensor:
    """HKA (n,) of n legs from the fine heatmaps (3n, K, h, w) of their hip, knee and
    ankle crops, decoded as at inference."""
    n = len(medial_sign)
    rows = torch.arange(3 * n, device=heatmaps.device)
    chans = torch.tensor(channels * n, device=heatmaps.device)
    xy = (hc.decode_differentiable(heatmaps[rows, chans]) + 0.5) * stride - 0.5
    film = torch.einsum("nij,nj->ni", crop_to_film[:, :, :2], xy) + crop_to_film[:, :, 2]
    film = film.view(n, 3, 2)
    canon = torch.stack([film[..., 0] * medial_sign[:, None], film[..., 1]], dim=-1)
    return hka_deg_torch(canon[:, 0], canon[:, 1], canon[:, 2])
