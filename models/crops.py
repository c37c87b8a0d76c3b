"""Resampling of films into network inputs with exact, invertible affine maps.

Every network input (the whole-film coarse canvas, a joint crop) is made by one
``warp(image, A, out_shape)`` where ``A`` is a 2x3 affine matrix from image pixels to
output pixels (pixel centres, origin at the centre of the top-left pixel).  Landmarks
map with the same matrix, so training targets and inference decoding agree exactly.

Down-sampling is anti-aliased: the region the output needs is first block-averaged by
an integer factor (which keeps the pixel-centre convention exact), then the residual
affine is applied with bilinear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Femur length / tibia length: a leg's scale when its femoral head is not found.
FEMUR_PER_TIBIA = 1.15


def apply_affine(A: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map points (..., 2) with a 2x3 affine matrix."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ A[:, :2].T + A[:, 2]


def invert_affine(A: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    m = np.asarray(A[:, :2], dtype=np.float64)
    mi = np.linalg.inv(m)
    return np.concatenate([mi, -(mi @ A[:, 2])[:, None]], axis=1)


def compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The affine ``A o B`` (apply B first)."""
    m = A[:, :2] @ B[:, :2]
    t = A[:, :2] @ B[:, 2] + A[:, 2]
    return np.concatenate([m, t[:, None]], axis=1)


def scale_matrix(s: float) -> np.ndarray:
    """Isotropic scaling in the pixel-centre convention: x' = (x + 0.5) s - 0.5."""
    return np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]])


def letterbox_matrix(height: int, width: int, out_h: int, out_w: int) -> np.ndarray:
    """Scale a film to fit ``out_h x out_w`` keeping its aspect ratio, centred."""
    s = min(out_h / height, out_w / width)
    A = scale_matrix(s)
    A[0, 2] += 0.5 * (out_w - width * s)
    A[1, 2] += 0.5 * (out_h - height * s)
    return A


def crop_matrix(
    centre: tuple[float, float], side: float, out_size: int, flip: bool, angle_deg: float = 0.0
) -> np.ndarray:
    """Square crop of ``side`` image pixels around ``centre`` -> ``out_size`` pixels.

    ``flip`` mirrors x (so a leg whose medial side is -x shows it at +x); ``angle_deg``
    rotates the crop content (augmentation).
    """
    k = out_size / float(side)
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    f = np.diag([-1.0 if flip else 1.0, 1.0])
    m = k * (r @ f)
    c = np.asarray(centre, dtype=np.float64)
    t = np.full(2, (out_size - 1) / 2.0) - m @ c
    return np.concatenate([m, t[:, None]], axis=1)


def leg_scale(points: Mapping[str, Sequence[float] | np.ndarray]) -> float | None:
    """A leg's scale in the points' units: the femur length (femoral head to knee
    centre), or 1.15 x the tibia (knee to ankle centre) when the head is missing; None
    without the knee or both."""
    if "knee_centre" not in points:
        return None
    knee = points["knee_centre"]
    if "femoral_head" in points:
        return float(np.hypot(*np.subtract(knee, points["femoral_head"])))
    if "ankle_centre" in points:
        return FEMUR_PER_TIBIA * float(np.hypot(*np.subtract(points["ankle_centre"], knee)))
    return None


def joint_crop_matrix(
    points: Mapping[str, Sequence[float] | np.ndarray],
    anchors: Sequence[str],
    weights: Sequence[float],
    side_per_femur: float,
    femur: float,
    out_size: int,
    flip: bool,
    *,
    scale: float = 1.0,
    angle_deg: float = 0.0,
) -> np.ndarray | None:
    """The image->crop matrix of one joint crop, the one crop geometry of training
    (``training.samples.fine_sample``) and inference (``LocatorGeometry.crop_matrices``).

    Centred on the weighted mean of the ``anchors`` the leg has, ``side_per_femur x
    femur x scale`` image pixels wide, ``out_size`` pixels, mirrored when ``flip`` (the
    leg's medial side is then +x), rotated by ``angle_deg`` (augmentation).  None when
    the leg has none of the anchors.
    """
    centre = anchor_centre(points, anchors, weights)
    if centre is None:
        return None
    side = side_per_femur * femur * scale
    return crop_matrix(centre, side, out_size, flip, angle_deg)


def anchor_centre(
    points: Mapping[str, Sequence[float] | np.ndarray],
    anchors: Sequence[str],
    weights: Sequence[float],
) -> tuple[float, float] | None:
    """The weighted mean of the ``anchors`` the points have (a joint crop's centre);
    None when they have none."""
    pts = [(points[a], w) for a, w in zip(anchors, weights, strict=True) if a in points]
    if not pts:
        return None
    wsum = sum(w for _, w in pts)
    cx = sum(p[0] * w for p, w in pts) / wsum
    cy = sum(p[1] * w for p, w in pts) / wsum
    return float(cx), float(cy)


def _area_factor(A: np.ndarray) -> int:
    k = math.sqrt(abs(float(np.linalg.det(A[:, :2]))))
    if k >= 0.75:
        return 1
    return max(1, int(math.floor(1.0 / k)))


@dataclass(frozen=True)
class WarpPlan:
    """What ``warp`` reads of an image: rows ``y0:y1`` and columns ``x0:x1`` (a whole
    number of ``f`` x ``f`` blocks), averaged block by block, then resampled bilinearly."""

    f: int
    x0: int
    y0: int
    x1: int
    y1: int


def warp_plan(
    image_shape: tuple[int, int], A: np.ndarray, out_shape: tuple[int, int]
) -> WarpPlan | None:
    """The region and block factor ``warp`` uses (None: the output misses the image)."""
    out_h, out_w = out_shape
    h, w = image_shape[:2]
    A = np.asarray(A, dtype=np.float64)
    f = _area_factor(A)
    # region of the image the output needs
    inv = invert_affine(A)
    corners = apply_affine(
        inv,
        np.array(
            [[-0.5, -0.5], [out_w - 0.5, -0.5], [-0.5, out_h - 0.5], [out_w - 0.5, out_h - 0.5]]
        ),
    )
    pad = 2 * f + 2
    # the blocks lie on the image's own f-pixel lattice (x0, y0 multiples of f), not on
    # one that starts at the region's corner: a crop moved by a fraction of a pixel then
    # averages the same blocks, so its pixels move smoothly with it (a block grid that
    # followed the corner jumped by one image pixel whenever the corner crossed one)
    x0 = max(0, int(math.floor(corners[:, 0].min())) - pad) // f * f
    y0 = max(0, int(math.floor(corners[:, 1].min())) - pad) // f * f
    x1 = min(w, int(math.ceil(corners[:, 0].max())) + pad + 1)
    y1 = min(h, int(math.ceil(corners[:, 1].max())) + pad + 1)
    if x1 - x0 < f or y1 - y0 < f:
        return None
    # extend to a multiple of f inside the image where possible, else drop the remainder
    x1 = min(w, x0 + -(-(x1 - x0) // f) * f)
    y1 = min(h, y0 + -(-(y1 - y0) // f) * f)
    x1 = x0 + (x1 - x0) // f * f
    y1 = y0 + (y1 - y0) // f * f
    return WarpPlan(f, x0, y0, x1, y1)


def warp_blocks(
    blocks: np.ndarray,
    plan: WarpPlan,
    A: np.ndarray,
    out_shape: tuple[int, int],
    border: float = 0.0,
) -> np.ndarray:
    """The bilinear step of ``warp``: ``blocks`` are the plan's region averaged over its
    ``f`` x ``f`` blocks (the region itself when ``f`` is 1), float32."""
    out_h, out_w = out_shape
    to_sub = np.array([[1.0, 0.0, -plan.x0], [0.0, 1.0, -plan.y0]])
    if plan.f > 1:
        to_sub = compose(scale_matrix(1.0 / plan.f), to_sub)
    residual = compose(np.asarray(A, dtype=np.float64), invert_affine(to_sub))
    return cv2.warpAffine(
        np.ascontiguousarray(blocks),
        residual,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(border),
    )


def warp(
    image: np.ndarray, A: np.ndarray, out_shape: tuple[int, int], border: float = 0.0
) -> np.ndarray:
    """Resample ``image`` (H, W float32) into ``out_shape`` with the 2x3 map ``A``.

    Regions outside the image are filled with ``border``.
    """
    plan = warp_plan(image.shape[:2], A, out_shape)
    if plan is None:
        return np.full(out_shape, border, dtype=np.float32)
    f = plan.f
    sub = image[plan.y0 : plan.y1, plan.x0 : plan.x1]
    if sub.dtype != np.float32:
        sub = sub.astype(np.float32)
    if f > 1:
        size = ((plan.x1 - plan.x0) // f, (plan.y1 - plan.y0) // f)
        sub = cv2.resize(sub, size, interpolation=cv2.INTER_AREA)
    return warp_blocks(sub, plan, A, out_shape, border)
