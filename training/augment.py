"""Training augmentation for full-leg films with landmarks (albumentations 2.0.8).

``build_augmentation(cfg)`` returns ``augment(film, rng) -> AnnotatedFilm``.  Each call
draws its parameters from ``rng`` (so a seeded generator reproduces a sample), then

1. geometry, through albumentations with ``KeypointParams(format="xy",
   remove_invisible=False, label_fields=[...])`` so that every point keeps its identity:
   ``HorizontalFlip`` and ``Affine`` (rotation, isotropic scale, translation, shear) with a
   constant (zero) border.  No ``Resize`` / ``LongestMaxSize`` / ``RandomResizedCrop``:
   they shift keypoints by half a pixel (docs: dependencies.md); resizing is done by
   ``resample`` below, with one affine matrix for image and points.
2. photometric changes, image only: brightness/contrast, gamma, Gaussian noise, Gaussian
   blur, CLAHE, and rectangular dropout placed away from the landmarks.

Landmarks that the geometry moves outside the image are removed from ``points`` (they
become "missing", i.e. masked in the loss).  A horizontal flip makes a right leg look like
a left leg on a standard AP film: the leg's ``side`` flips and its medial/lateral labels
stay anatomical (as ``LegLandmarks.as_other_leg``).  The pixel spacing follows the scale
(``spacing / sqrt(|det A|)``).

Coordinates: pixel-centre convention throughout (x right, y down, origin at the centre of
the top-left pixel); ``cv2.warpAffine`` samples destination pixel ``(i, j)`` at
``M^-1 (i, j)`` in the same convention, so one 2 x 3 matrix maps image and points alike.

The configuration (``AugmentationConfig``) is the ``augmentation:`` section of a training
config; ``augmentation_config(mapping)`` merges a mapping over
``configs/augmentation_default.yaml`` and validates it (errors name the key).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from legalign.pipeline.config_schema import (
    CONFIG_DIR,
    ConfigError,
    deep_merge,
    from_mapping,
    read_yaml,
)
from legalign.pipeline.landmarks import LegLandmarks
from legalign.training.datasets.base import AnnotatedFilm

DEFAULT_CONFIG = CONFIG_DIR / "augmentation_default.yaml"


# ---------------------------------------------------------------- configuration


def _prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name}: probability must be in [0, 1], got {p!r}")


def _range(name: str, r: Sequence[float], lo: float | None = None, hi: float | None = None) -> None:
    if len(r) != 2 or r[0] > r[1]:
        raise ConfigError(f"{name}: must be [min, max] with min <= max, got {r!r}")
    if lo is not None and r[0] < lo:
        raise ConfigError(f"{name}: must be >= {lo}, got {r!r}")
    if hi is not None and r[1] > hi:
        raise ConfigError(f"{name}: must be <= {hi}, got {r!r}")


@dataclass
class FlipConfig:
    p: float  # probability of a horizontal flip (right leg -> left-looking leg)

    def validate(self) -> None:
        _prob("p", self.p)


@dataclass
class AffineConfig:
    p: float
    rotate_deg: float  # uniform in [-rotate_deg, +rotate_deg] (positive = counter-clockwise)
    scale: list[float]  # [min, max] isotropic scale factor
    translate_frac: float  # uniform in +/- this fraction of width (x) and height (y)
    shear_deg: float  # x shear uniform in [-shear_deg, +shear_deg]

    def validate(self) -> None:
        _prob("p", self.p)
        _range("scale", self.scale, lo=1e-3)
        if not 0 <= self.rotate_deg <= 90:
            raise ConfigError(f"rotate_deg: must be in [0, 90], got {self.rotate_deg!r}")
        if not 0 <= self.translate_frac < 1:
            raise ConfigError(f"translate_frac: must be in [0, 1), got {self.translate_frac!r}")
        if not 0 <= self.shear_deg < 45:
            raise ConfigError(f"shear_deg: must be in [0, 45), got {self.shear_deg!r}")


@dataclass
class BrightnessContrastConfig:
    p: float
    brightness: float  # additive shift uniform in +/- brightness (image range [0, 1])
    contrast: float  # gain uniform in 1 +/- contrast

    def validate(self) -> None:
        _prob("p", self.p)
        if not (0 <= self.brightness <= 1 and 0 <= self.contrast < 1):
            raise ConfigError("brightness must be in [0, 1] and contrast in [0, 1)")


@dataclass
class GammaConfig:
    p: float
    gamma: list[float]  # [min, max] gamma; log-uniform

    def validate(self) -> None:
        _prob("p", self.p)
        _range("gamma", self.gamma, lo=1e-2)


@dataclass
class NoiseConfig:
    p: float
    std: list[float]  # [min, max] Gaussian noise standard deviation (image range [0, 1])

    def validate(self) -> None:
        _prob("p", self.p)
        _range("std", self.std, lo=0.0, hi=1.0)


@dataclass
class BlurConfig:
    p: float
    sigma: list[float]  # [min, max] Gaussian sigma in pixels

    def validate(self) -> None:
        _prob("p", self.p)
        _range("sigma", self.sigma, lo=0.05)


@dataclass
class ClaheConfig:
    p: float
    clip_limit: list[float]  # [min, max] OpenCV CLAHE clip limit
    tiles: int  # tile grid size along the shorter image side

    def validate(self) -> None:
        _prob("p", self.p)
        _range("clip_limit", self.clip_limit, lo=0.1)
        if self.tiles < 1:
            raise ConfigError(f"tiles: must be >= 1, got {self.tiles!r}")


@dataclass
class DropoutConfig:
    p: float
    holes: list[int]  # [min, max] number of rectangles
    size_frac: list[float]  # [min, max] rectangle side, fraction of the shorter image side
    margin_px: float  # keep every landmark at least this far from a rectangle
    fill: float  # grey value of the rectangles

    def validate(self) -> None:
        _prob("p", self.p)
        _range("holes", self.holes, lo=0)
        _range("size_frac", self.size_frac, lo=0.0, hi=1.0)
        if self.margin_px < 0 or not 0 <= self.fill <= 1:
            raise ConfigError("margin_px must be >= 0 and fill in [0, 1]")


@dataclass
class AugmentationConfig:
    enabled: bool
    flip: FlipConfig
    affine: AffineConfig
    brightness_contrast: BrightnessContrastConfig
    gamma: GammaConfig
    noise: NoiseConfig
    blur: BlurConfig
    clahe: ClaheConfig
    dropout: DropoutConfig


def augmentation_config(
    overrides: Mapping[str, Any] | None = None, default_file: str | Path = DEFAULT_CONFIG
) -> AugmentationConfig:
    """The default augmentation config with ``overrides`` (a training config's
    ``augmentation:`` mapping) merged over it, validated; errors name ``augmentation.<key>``."""
    data = read_yaml(default_file)
    data = data.get("augmentation", data)
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"augmentation: must be a mapping, got {overrides!r}")
        data = deep_merge(data, overrides)
    return from_mapping(AugmentationConfig, data, "augmentation")


# ---------------------------------------------------------------- resampling


def resize_matrix(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """2 x 3 matrix resizing an ``in_shape`` (H, W) image onto ``out_shape`` (h, w).

    Pixel-centre convention: the image *edges* map onto each other, so
    ``x' = (x + 0.5) * w / W - 0.5`` (not ``x * w / W``, which is what shifts keypoints
    by ``0.5 * (1 - s)`` in albumentations' Resize).
    """
    sy = out_shape[0] / in_shape[0]
    sx = out_shape[1] / in_shape[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], dtype=np.float64)


def crop_matrix(
    centre: tuple[float, float],
    size: tuple[float, float],
    out_shape: tuple[int, int],
    angle_deg: float = 0.0,
) -> np.ndarray:
    """2 x 3 matrix taking a ``size`` (w, h) pixel window centred on ``centre`` (x, y),
    rotated by ``angle_deg`` (counter-clockwise on screen), onto an ``out_shape`` (h, w)
    image: the window's centre lands on the output centre ``((w-1)/2, (h-1)/2)``."""
    oh, ow = out_shape
    sx, sy = ow / float(size[0]), oh / float(size[1])
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    lin = np.array([[sx, 0.0], [0.0, sy]]) @ np.array([[c, s], [-s, c]])
    out_c = np.array([(ow - 1) / 2.0, (oh - 1) / 2.0])
    t = out_c - lin @ np.asarray(centre, dtype=np.float64)
    return np.hstack([lin, t[:, None]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 (or 3 x 3) affine matrix to an (N, 2) array of points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)[:2]
    return pts @ m[:, :2].T + m[:, 2]


def resample(
    image: np.ndarray,
    points: np.ndarray | None,
    matrix: np.ndarray,
    out_shape: tuple[int, int],
    antialias: bool = True,
    fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Warp ``image`` and ``points`` with one 2 x 3 affine ``matrix`` onto ``out_shape``.

    Bilinear sampling, constant ``fill`` border.  When the matrix shrinks the image,
    ``antialias`` first applies a Gaussian blur of sigma ``(1/s - 1) / 2`` per axis
    (symmetric, so it moves no landmark).  Returns ``(image, points)``; points may fall
    outside the output.
    """

    m = np.asarray(matrix, dtype=np.float64)[:2]
    src = np.ascontiguousarray(image)
    if antialias:
        # Scale along source x / y: the length of the matrix columns.
        sx = float(np.hypot(m[0, 0], m[1, 0]))
        sy = float(np.hypot(m[0, 1], m[1, 1]))
        sig_x = max(0.0, (1.0 / max(sx, 1e-6) - 1.0) / 2.0)
        sig_y = max(0.0, (1.0 / max(sy, 1e-6) - 1.0) / 2.0)
        if sig_x > 0.05 or sig_y > 0.05:
            src = cv2.GaussianBlur(
                src,
                (0, 0),
                sigmaX=max(sig_x, 1e-3),
                sigmaY=max(sig_y, 1e-3),
                borderType=cv2.BORDER_REPLICATE,
            )
    out = cv2.warpAffine(
        src,
        m,
        (int(out_shape[1]), int(out_shape[0])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(fill),
    )
    new_points = None if points is None else transform_points(points, m)
    return out, new_points


def resample_film(
    film: AnnotatedFilm, matrix: np.ndarray, out_shape: tuple[int, int], drop_outside: bool = True
) -> AnnotatedFilm:
    """``resample`` applied to a whole film: image, every leg's points and the spacing."""
    names, pts = _flatten(film.legs)
    image, new = resample(film.image, pts, matrix, out_shape)
    assert new is not None  # points in, points out
    legs = _unflatten(film.legs, names, new, out_shape if drop_outside else None, flip=False)
    return dataclasses.replace(
        film,
        image=image.astype(np.float32, copy=False),
        legs=legs,
        spacing_mm=_scaled_spacing(film.spacing_mm, matrix),
    )


# ---------------------------------------------------------------- parameters


@dataclass
class AugmentParams:
    """Everything one augmentation call does; drawn by ``sample_params``."""

    flip: bool = False
    rotate_deg: float = 0.0
    scale: float = 1.0
    # whole pixels: albumentations' Affine truncates translations to integers
    translate_px: tuple[int, int] = (0, 0)
    shear_deg: float = 0.0
    brightness: float | None = None
    contrast: float | None = None
    gamma: float | None = None
    noise_std: float | None = None
    blur_sigma: float | None = None
    clahe_clip: float | None = None
    dropout_holes: int = 0
    dropout_size_frac: tuple[float, float] = (0.0, 0.0)
    seed: int = 0  # for the noise and the dropout placement

    @property
    def affine(self) -> bool:
        return (
            self.rotate_deg != 0.0
            or self.scale != 1.0
            or self.translate_px != (0, 0)
            or self.shear_deg != 0.0
        )


def sample_params(
    cfg: AugmentationConfig, rng: np.random.Generator, shape: tuple[int, int]
) -> AugmentParams:
    """Draw one set of parameters for an image of ``shape`` (H, W); every draw is made
    whatever the probabilities, so streams stay aligned."""
    u = rng.random(9)
    p = AugmentParams(seed=int(rng.integers(0, 2**31 - 1)))
    p.flip = bool(u[0] < cfg.flip.p)
    a = cfg.affine
    vals = rng.uniform(-1.0, 1.0, size=5)
    if u[1] < a.p:
        p.rotate_deg = float(vals[0] * a.rotate_deg)
        lo, hi = a.scale
        p.scale = float(math.exp(math.log(lo) + (vals[1] + 1) / 2 * (math.log(hi) - math.log(lo))))
        p.translate_px = (
            int(round(vals[2] * a.translate_frac * shape[1])),
            int(round(vals[3] * a.translate_frac * shape[0])),
        )
        p.shear_deg = float(vals[4] * a.shear_deg)
    bc = cfg.brightness_contrast
    b, c = rng.uniform(-1.0, 1.0, size=2)
    if u[2] < bc.p:
        p.brightness = float(b * bc.brightness)
        p.contrast = float(c * bc.contrast)
    g = float(rng.random())
    if u[3] < cfg.gamma.p:
        lo, hi = cfg.gamma.gamma
        p.gamma = float(math.exp(math.log(lo) + g * (math.log(hi) - math.log(lo))))
    n = float(rng.random())
    if u[4] < cfg.noise.p:
        lo, hi = cfg.noise.std
        p.noise_std = lo + n * (hi - lo)
    s = float(rng.random())
    if u[5] < cfg.blur.p:
        lo, hi = cfg.blur.sigma
        p.blur_sigma = lo + s * (hi - lo)
    k = float(rng.random())
    if u[6] < cfg.clahe.p:
        lo, hi = cfg.clahe.clip_limit
        p.clahe_clip = lo + k * (hi - lo)
    d = cfg.dropout
    holes = int(rng.integers(d.holes[0], d.holes[1] + 1))
    if u[7] < d.p:
        p.dropout_holes = holes
        p.dropout_size_frac = (float(d.size_frac[0]), float(d.size_frac[1]))
    return p


# ---------------------------------------------------------------- geometry


def geometric_transforms(params: AugmentParams) -> list:
    """The albumentations transforms (all ``p=1``, fixed parameters) for ``params``."""

    out: list = []
    if params.flip:
        out.append(A.HorizontalFlip(p=1.0))
    if params.affine:
        out.append(
            A.Affine(
                scale={"x": (params.scale, params.scale), "y": (params.scale, params.scale)},
                translate_px={
                    "x": (params.translate_px[0], params.translate_px[0]),
                    "y": (params.translate_px[1], params.translate_px[1]),
                },
                rotate=(params.rotate_deg, params.rotate_deg),
                shear={"x": (params.shear_deg, params.shear_deg), "y": (0.0, 0.0)},
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0.0,
                fit_output=False,
                keep_ratio=False,
                p=1.0,
            )
        )
    return out


def apply_albumentations(
    transforms: list, image: np.ndarray, points: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``transforms`` on ``image`` and (N, 2) ``points``; returns every point, in order."""

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not transforms:
        return image, points
    compose = A.Compose(
        transforms,
        keypoint_params=A.KeypointParams(
            format="xy", remove_invisible=False, label_fields=["point_ids"]
        ),
        seed=seed,
    )
    ids = list(range(len(points)))
    res = compose(image=image, keypoints=points, point_ids=ids)
    kp = np.asarray(res["keypoints"], dtype=np.float64).reshape(-1, 2)
    got = [int(i) for i in res["point_ids"]]
    if got != ids:  # remove_invisible=False must keep every point, in order
        raise RuntimeError(f"albumentations changed the keypoint list: {got} != {ids}")
    return res["image"], kp


def _flatten(legs: list[LegLandmarks]) -> tuple[list[tuple[int, str]], np.ndarray]:
    names = [(i, n) for i, leg in enumerate(legs) for n in leg.points]
    pts = np.array([legs[i].points[n] for i, n in names], dtype=np.float64).reshape(-1, 2)
    return names, pts


def _unflatten(
    legs: list[LegLandmarks],
    names: list[tuple[int, str]],
    pts: np.ndarray,
    shape: tuple[int, int] | None,
    flip: bool,
) -> list[LegLandmarks]:
    new_points: list[dict[str, tuple[float, float]]] = [{} for _ in legs]
    for (i, n), (x, y) in zip(names, pts, strict=True):
        if shape is not None and not (-0.5 <= x <= shape[1] - 0.5 and -0.5 <= y <= shape[0] - 0.5):
            continue  # moved off the film: now a missing landmark
        new_points[i][n] = (float(x), float(y))
    out = []
    for leg, pts_i in zip(legs, new_points, strict=True):
        side = leg.side.other if flip else leg.side
        conf = {n: c for n, c in leg.confidence.items() if n in pts_i}
        out.append(LegLandmarks(side=side, points=pts_i, confidence=conf, mirrored=leg.mirrored))
    return out


def _scaled_spacing(spacing: float | None, matrix: np.ndarray) -> float | None:
    if spacing is None:
        return None
    det = abs(float(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:2, :2])))
    return spacing / math.sqrt(det) if det > 0 else spacing


def affine_matrix(params: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """The 3 x 3 matrix of ``params``' Affine step (albumentations' convention: scale,
    rotate, shear, translate about the image centre ``((W-1)/2, (H-1)/2)``; positive
    rotation is counter-clockwise on screen; positive x shear moves the top of the image
    to the right: x' = x - tan(shear) * y about the centre)."""
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(params.rotate_deg)
    s = params.scale
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    # albumentations negates the shear angle it is given
    shear = np.array([[1.0, -math.tan(math.radians(params.shear_deg))], [0.0, 1.0]])
    lin = shear @ rot @ (s * np.eye(2))
    t = np.array([float(params.translate_px[0]), float(params.translate_px[1])])
    c = np.array([cx, cy])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + t - lin @ c
    return m


# ---------------------------------------------------------------- photometric


def _clahe(image: np.ndarray, clip: float, tiles: int) -> np.ndarray:
    """CLAHE on a float image: the OpenCV 8-bit mapping, applied as an offset so the
    sub-8-bit detail of 12-16-bit films survives."""

    h, w = image.shape[:2]
    short = min(h, w)
    tile = max(1, short // max(1, tiles))
    grid = (max(1, w // tile), max(1, h // tile))
    q = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    eq = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=grid).apply(q)
    delta = (eq.astype(np.float32) - q.astype(np.float32)) / 255.0
    return np.clip(image + delta, 0.0, 1.0).astype(np.float32)


def _dropout(
    image: np.ndarray,
    points: np.ndarray,
    holes: int,
    size_frac: tuple[float, float],
    margin: float,
    fill: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fill up to ``holes`` rectangles that keep every point ``margin`` px away."""
    h, w = image.shape[:2]
    short = min(h, w)
    out = image
    for _ in range(holes):
        for _try in range(10):
            sw = max(1, int(round(rng.uniform(*size_frac) * short)))
            sh = max(1, int(round(rng.uniform(*size_frac) * short)))
            x0 = int(rng.integers(0, max(1, w - sw + 1)))
            y0 = int(rng.integers(0, max(1, h - sh + 1)))
            x1, y1 = x0 + sw - 1, y0 + sh - 1
            if len(points):
                px, py = points[:, 0], points[:, 1]
                dx = np.maximum(np.maximum(x0 - 0.5 - px, px - (x1 + 0.5)), 0.0)
                dy = np.maximum(np.maximum(y0 - 0.5 - py, py - (y1 + 0.5)), 0.0)
                if np.any(np.hypot(dx, dy) < margin):
                    continue
            if out is image:
                out = image.copy()
            out[y0 : y1 + 1, x0 : x1 + 1] = fill
            break
    return out


def photometric(
    image: np.ndarray,
    params: AugmentParams,
    cfg: AugmentationConfig,
    points: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the photometric part of ``params`` to a float32 [0, 1] image."""

    img = np.ascontiguousarray(image, dtype=np.float32)
    tf: list = []
    if params.brightness is not None:
        b, c = params.brightness, params.contrast or 0.0
        tf.append(
            A.RandomBrightnessContrast(
                brightness_limit=(b, b), contrast_limit=(c, c), brightness_by_max=True, p=1.0
            )
        )
    if params.gamma is not None:
        g = params.gamma * 100.0
        tf.append(A.RandomGamma(gamma_limit=(g, g), p=1.0))
    if params.blur_sigma is not None:
        s = params.blur_sigma
        tf.append(A.GaussianBlur(blur_limit=0, sigma_limit=(s, s), p=1.0))
    if params.noise_std is not None and params.noise_std > 0:
        s = params.noise_std
        tf.append(A.GaussNoise(std_range=(s, s), mean_range=(0.0, 0.0), per_channel=False, p=1.0))
    if tf:
        img = A.Compose(tf, seed=params.seed)(image=img)["image"]
        img = np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
    if params.clahe_clip is not None:
        img = _clahe(img, params.clahe_clip, cfg.clahe.tiles)
    if params.dropout_holes > 0:
        pts = np.zeros((0, 2)) if points is None else np.asarray(points).reshape(-1, 2)
        img = _dropout(
            img,
            pts,
            params.dropout_holes,
            params.dropout_size_frac,
            cfg.dropout.margin_px,
            cfg.dropout.fill,
            np.random.default_rng([params.seed, 7]),
        )
    return np.ascontiguousarray(img, dtype=np.float32)


# ---------------------------------------------------------------- the augmenter


def augment_with(
    film: AnnotatedFilm, params: AugmentParams, cfg: AugmentationConfig
) -> AnnotatedFilm:
    """Apply explicit ``params`` to ``film`` (geometry, then photometric)."""
    image = np.ascontiguousarray(film.image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"{film.source}: expected an H x W image, got shape {image.shape}")
    names, pts = _flatten(film.legs)
    transforms = geometric_transforms(params)
    if transforms:
        image, pts = apply_albumentations(transforms, image, pts, seed=params.seed)
    legs = _unflatten(film.legs, names, pts, image.shape[:2], flip=params.flip)
    image = photometric(image, params, cfg, _flatten(legs)[1])
    spacing = film.spacing_mm
    if params.affine:
        spacing = _scaled_spacing(spacing, affine_matrix(params, image.shape[:2]))
    meta = dict(film.meta)
    meta["augment"] = dataclasses.asdict(params)
    return dataclasses.replace(film, image=image, legs=legs, spacing_mm=spacing, meta=meta)


def build_augmentation(
    cfg: AugmentationConfig | Mapping[str, Any] | None = None,
) -> Callable[[AnnotatedFilm, np.random.Generator], AnnotatedFilm]:
    """``augment(film, rng) -> AnnotatedFilm`` for ``cfg`` (a config, a mapping of
    overrides for ``augmentation_config``, or None for the defaults).  With
    ``enabled: false`` the film is returned unchanged."""
    if cfg is None or isinstance(cfg, Mapping):
        cfg = augmentation_config(cfg)
    if not isinstance(cfg, AugmentationConfig):
        raise TypeError(f"expected AugmentationConfig, got {type(cfg).__name__}")
    config = cfg

    def augment(film: AnnotatedFilm, rng: np.random.Generator) -> AnnotatedFilm:
        if not config.enabled:
            return film
        return augment_with(film, sample_params(config, rng, film.image.shape[:2]), config)

    augment.config = config  # type: ignore[attr-defined]
    return augment
