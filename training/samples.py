"""Training samples for the two locator networks: inputs, Gaussian targets and masks.

Each sample is made with one affine matrix (``models.crops``) that maps image and
landmarks alike, the same resampling code the locator runs at inference, so training
and inference see identical geometry.  Geometric augmentation (flip, scale, rotation,
shift, and for the fine crops simulated coarse-stage errors) is folded into that matrix;
photometric augmentation acts on the resampled input.

Coarse sample: the whole film letterboxed into the coarse canvas; target channels are
class-agnostic (the max over the legs).  Fine sample: one crop type around one leg, made
by ``models.crops.joint_crop_matrix``, the crop geometry the locator uses at inference
(``LocatorGeometry.crop_matrices``), mirrored so that the leg's medial side is +x.  A landmark a leg lacks masks its
channel (never a false negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from legalign.models import heatmap_codec as hc
from legalign.models.crops import (
    apply_affine,
    compose,
    joint_crop_matrix,
    leg_scale,
    letterbox_matrix,
    warp,
)
from legalign.models.spec import CropSpec, LocatorSpec
from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.landmarks import LegLandmarks
from legalign.training.datasets.base import AnnotatedFilm


@dataclass
class SampleAug:
    """Augmentation strengths (the ``augment`` section of a training stage)."""

    flip_p: float  # coarse: horizontal mirror of the film
    scale_log_sd: float  # log-normal scale jitter
    rotate_deg: float  # rotation, uniform +-
    shift_frac: float  # coarse: shift, fraction of the canvas; fine: of the femur length
    femur_log_sd: float  # fine: error of the coarse femur-length estimate (log sd)
    gamma_log_sd: float
    contrast: float  # gain 1 +- this
    brightness: float
    noise_sd: float  # max Gaussian noise sd
    blur_p: float
    blur_sigma: float  # max blur sigma (output pixels)

    def validate(self) -> None:

        for name in ("flip_p", "blur_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}: probability must be in [0, 1], got {v}")
        for name in (
            "scale_log_sd",
            "rotate_deg",
            "shift_frac",
            "femur_log_sd",
            "gamma_log_sd",
            "contrast",
            "brightness",
            "noise_sd",
            "blur_sigma",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")


def femur_length(leg: LegLandmarks) -> float | None:
    """The leg's scale (``models.crops.leg_scale``): head-knee distance, or 1.15 x
    knee-ankle when the head is missing; None if neither."""
    return leg_scale(leg.points)


def photometric(img: np.ndarray, aug: SampleAug, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast/brightness, blur and noise on a [0, 1] image."""

    out = np.clip(img, 0.0, 1.0)
    if aug.gamma_log_sd > 0:
        out = out ** float(np.exp(rng.normal(0.0, aug.gamma_log_sd)))
    if aug.contrast > 0 or aug.brightness > 0:
        gain = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
        bias = rng.uniform(-aug.brightness, aug.brightness)
        out = (out - 0.5) * gain + 0.5 + bias
    if aug.blur_p > 0 and rng.random() < aug.blur_p:
        s = rng.uniform(0.3, max(0.3, aug.blur_sigma))
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), s)
    if aug.noise_sd > 0:
        out = out + rng.normal(0.0, rng.uniform(0.0, aug.noise_sd), out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _random_similarity(
    rng: np.random.Generator,
    centre: np.ndarray,
    scale_log_sd: float,
    rotate_deg: float,
    shift: np.ndarray,
) -> np.ndarray:
    """A random rotation+scale about ``centre`` followed by a shift (output pixels)."""
    s = float(np.exp(rng.normal(0.0, scale_log_sd))) if scale_log_sd > 0 else 1.0
    a = math.radians(rng.uniform(-rotate_deg, rotate_deg)) if rotate_deg > 0 else 0.0
    m = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = centre - m @ centre + shift
    return np.concatenate([m, t[:, None]], axis=1)


def coarse_sample(
    film: AnnotatedFilm, spec: LocatorSpec, aug: SampleAug | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input (Hc, Wc), target (Kc, h, w), channel mask (Kc,)) for the coarse network."""
    hc_, wc = spec.coarse_height, spec.coarse_width
    stride = spec.coarse_net.out_stride
    A = letterbox_matrix(film.image.shape[0], film.image.shape[1], hc_, wc)
    if aug is not None:
        if rng.random() < aug.flip_p:
            w = film.image.shape[1]
            A = compose(A, np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]]))
        shift = rng.uniform(-aug.shift_frac, aug.shift_frac, 2) * np.array([wc, hc_])
        centre = np.array([(wc - 1) / 2.0, (hc_ - 1) / 2.0])
        A = compose(_random_similarity(rng, centre, aug.scale_log_sd, aug.rotate_deg, shift), A)
    img = warp(film.image, A, (hc_, wc))
    if aug is not None:
        img = photometric(img, aug, rng)
    shape = (hc_ // stride, wc // stride)
    names = spec.coarse_landmarks
    target = np.zeros((len(names), *shape), dtype=np.float32)
    mask = np.ones(len(names), dtype=np.float32)
    for leg in film.legs:
        pts = np.array([leg.points.get(n, (np.nan, np.nan)) for n in names], dtype=np.float64)
        valid = np.asarray(np.isfinite(pts).all(axis=1))
        mask[~valid] = 0.0
        hm_pts = hc.to_heatmap(apply_affine(A, np.nan_to_num(pts)), stride)
        target = np.maximum(target, hc.encode(hm_pts, valid, shape, spec.coarse_net.sigma))
    return img, target, mask


def fine_sample(
    film: AnnotatedFilm,
    leg: LegLandmarks,
    crop: CropSpec,
    spec: LocatorSpec,
    aug: SampleAug | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(input (S, S), target (Kf, h, w), channel mask (Kf,)) for one crop of one leg.

    Returns None when the leg lacks what the crop needs (scale or anchors).
    """
    femur = femur_length(leg)
    if femur is None or femur <= 1:
        return None
    # simulate the coarse stage's answer: jittered anchors and femur length
    pts = dict(leg.points)
    if aug is not None and aug.shift_frac > 0:
        pts = {
            n: tuple(np.asarray(p) + rng.normal(0.0, aug.shift_frac * femur, 2))
            for n, p in pts.items()
        }
    if not any(a in pts for a in crop.anchors):
        return None
    femur_est = femur
    angle = 0.0
    if aug is not None:
        femur_est = femur * float(np.exp(rng.normal(0.0, aug.femur_log_sd + aug.scale_log_sd)))
        angle = float(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
    s = spec.fine_size
    A = joint_crop_matrix(
        pts,
        crop.anchors,
        crop.weights,
        crop.side,
        femur_est,
        s,
        leg.medial_sign < 0,
        angle_deg=angle,
    )
    assert A is not None  # the leg has one of the anchors (checked above)
    img = warp(film.image, A, (s, s))
    if aug is not None:
        img = photometric(img, aug, rng)
    stride = spec.fine_net.out_stride
    names = spec.fine_landmarks
    gt = np.array([leg.points.get(n, (np.nan, np.nan)) for n in names], dtype=np.float64)
    valid = np.asarray(np.isfinite(gt).all(axis=1))
    hm_pts = hc.to_heatmap(apply_affine(A, np.nan_to_num(gt)), stride)
    shape = (s // stride, s // stride)
    target = hc.encode(hm_pts, valid, shape, spec.fine_net.sigma)
    return img, target, np.asarray(valid, dtype=np.float32)
