"""Heatmap encoding and decoding, kept apart from the network code.

Conventions: a heatmap of stride ``s`` over an input of pixels has its pixel ``j`` centred
on input coordinate ``(j + 0.5) * s - 0.5`` (pixel centres, origin at the centre of the
top-left pixel, as everywhere in legalign).  ``to_heatmap``/``from_heatmap`` convert.

Encoding: one unnormalised Gaussian (peak 1) per landmark, at the sub-pixel position.
Decoding: the arg-max pixel, then a sub-pixel refinement by a second-order Taylor
expansion of the log of the (slightly smoothed) heatmap at the maximum (the "DARK"
refinement of Zhang et al. 2020), which is exact for a Gaussian peak.  The confidence
of a landmark is the heatmap's peak value clipped to [0, 1] (the targets peak at 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import maximum_filter

EPS = 1e-10


def to_heatmap(xy: np.ndarray, stride: float) -> np.ndarray:
    """Input-pixel coordinates -> heatmap-pixel coordinates."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) / stride - 0.5


def from_heatmap(xy: np.ndarray, stride: float) -> np.ndarray:
    """Heatmap-pixel coordinates -> input-pixel coordinates."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * stride - 0.5


def encode(
    points: np.ndarray, valid: np.ndarray, shape: tuple[int, int], sigma: float
) -> np.ndarray:
    """Gaussian target heatmaps.

    ``points``: (K, 2) heatmap-pixel (x, y); ``valid``: (K,) bool.  Returns float32
    (K, H, W); channels of invalid points are zero.  Points outside the map still put
    their tail inside it, which is what a landmark just outside a crop looks like.
    """
    h, w = shape
    k = len(points)
    out = np.zeros((k, h, w), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    inv = 1.0 / (2.0 * sigma * sigma)
    for i in range(k):
        if not valid[i]:
            continue
        x, y = float(points[i][0]), float(points[i][1])
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        gx = np.exp(-((xs - x) ** 2) * inv)
        gy = np.exp(-((ys - y) ** 2) * inv)
        out[i] = gy * gx
    return out


def _kernel(sigma: float) -> np.ndarray:
    r = max(1, int(round(2.5 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float32)
    kern = np.exp(-(t**2) / (2 * sigma * sigma))
    kern /= kern.sum()
    return kern


def _smooth(hm: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of the last two axes (keeps a Gaussian peak's centre)."""
    if sigma <= 0:
        return hm
    kern = _kernel(sigma)
    r = len(kern) // 2
    pad = [(0, 0)] * (hm.ndim - 2) + [(r, r), (r, r)]
    p = np.pad(hm, pad, mode="edge")
    # convolve along x then y with sliding sums
    acc = np.zeros(p.shape[:-1] + (hm.shape[-1],), dtype=np.float32)
    for i, c in enumerate(kern):
        acc += c * p[..., i : i + hm.shape[-1]]
    out = np.zeros(hm.shape, dtype=np.float32)
    for i, c in enumerate(kern):
        out += c * acc[..., i : i + hm.shape[-2], :]
    return out


def _smooth_3x3(flat: np.ndarray, x0: np.ndarray, y0: np.ndarray, sigma: float) -> np.ndarray:
    """``_smooth(flat, sigma)[n, y0-1 : y0+2, x0-1 : x0+2]`` for each map n of ``flat``
    (N, H, W): (N, 3, 3), the same arithmetic on the pixels those nine need only (the
    edge padding by clipped indices), so the values are ``_smooth``'s bit for bit.
    ``x0``, ``y0`` (N,) are at least one pixel inside the map."""
    n, h, w = flat.shape
    kern = _kernel(sigma) if sigma > 0 else np.ones(1, np.float32)
    r = len(kern) // 2
    a = np.arange(-1 - r, 2 + r)
    rows = np.clip(y0[:, None] + a, 0, h - 1)
    cols = np.clip(x0[:, None] + a, 0, w - 1)
    win = flat[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if sigma <= 0:
        return win
    acc = np.zeros((n, len(a), 3), dtype=np.float32)
    for i, c in enumerate(kern):
        acc += c * win[:, :, i : i + 3]
    out = np.zeros((n, 3, 3), dtype=np.float32)
    for i, c in enumerate(kern):
        out += c * acc[:, i : i + 3, :]
    return out


def _taylor_terms(at: Callable[[int, int], Any]) -> tuple[Any, Any, Any, Any, Any, Any]:
    """First and second central differences of a log heatmap at a peak, and the
    Hessian's determinant: (dx, dy, dxx, dyy, dxy, det).  ``at(dx, dy)`` gives the log
    values at that offset (NumPy arrays or torch tensors alike)."""
    c = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * c + at(-1, 0)
    dyy = at(0, 1) - 2 * c + at(0, -1)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    return dx, dy, dxx, dyy, dxy, dxx * dyy - dxy * dxy


def _newton_3x3(win: np.ndarray) -> np.ndarray:
    """Newton step on log(win) at the centre of each (3, 3) window of ``win`` (N, 3, 3),
    central differences; offsets (N, 2) clipped to +-1 pixel."""
    lg = np.log(np.maximum(win, EPS))

    def at(dx: int, dy: int) -> np.ndarray:
        return lg[:, 1 + dy, 1 + dx]

    dx, dy, dxx, dyy, dxy, det = _taylor_terms(at)
    ok = (det > 1e-12) & (dxx < 0) & (dyy < 0)
    safe = np.where(ok, det, 1.0)
    ox = np.where(ok, -(dyy * dx - dxy * dy) / safe, 0.0)
    oy = np.where(ok, -(dxx * dy - dxy * dx) / safe, 0.0)
    return np.clip(np.stack([ox, oy], axis=1), -1.0, 1.0)


def _refine(flat: np.ndarray, ix: np.ndarray, iy: np.ndarray, smooth_sigma: float) -> np.ndarray:
    """Sub-pixel offsets (N, 2) at integer peaks ``(ix, iy)`` of maps ``flat`` (N, H, W)
    smoothed by ``smooth_sigma`` (0: as they are); see ``refine_at``."""
    n, h, w = flat.shape
    x0 = np.clip(ix, 1, w - 2)
    y0 = np.clip(iy, 1, h - 2)
    if h >= 3 and w >= 3:
        win = _smooth_3x3(flat, x0, y0, smooth_sigma)
    else:
        # a map too small for a 3 x 3 window: the whole map smoothed, indexed as it
        # always was
        d = np.arange(-1, 2)
        win = _smooth(flat, smooth_sigma)[
            np.arange(n)[:, None, None], y0[:, None, None] + d[:, None], x0[:, None, None] + d
        ]
    off = _newton_3x3(win)
    # points clamped away from the border keep their integer position's frame
    base = np.stack([x0, y0], axis=1).astype(np.float64)
    exact = np.stack([ix, iy], axis=1).astype(np.float64)
    return base + off - exact


def refine_at(hm: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Sub-pixel offsets (N, 2) at integer peaks ``(ix, iy)`` of maps ``hm`` (N, H, W).

    Newton step on log(hm) with central differences; offsets are clipped to +-1 pixel.
    """
    return _refine(np.asarray(hm), ix, iy, 0.0)


def decode(
    heatmaps: np.ndarray, smooth_sigma: float = 1.0, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode heatmaps (..., H, W) -> (coords (..., 2) heatmap px, confidence (...)).

    ``mask`` (broadcastable to (..., H, W), bool) restricts the arg-max to a region.
    The refinement reads the smoothed map at the 3 x 3 pixels around the peak only
    (smoothing whole maps was most of the locator's decoding time).
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    lead = hm.shape[:-2]
    h, w = hm.shape[-2:]
    flat = hm.reshape(-1, h, w)
    search = flat
    if mask is not None:
        m = np.broadcast_to(mask, hm.shape).reshape(-1, h, w)
        search = np.where(m, flat, -np.inf)
    arg = search.reshape(len(flat), -1).argmax(axis=1)
    iy, ix = np.divmod(arg, w)
    conf = flat[np.arange(len(flat)), iy, ix]
    off = _refine(flat, ix, iy, smooth_sigma)
    xy = np.stack([ix, iy], axis=1).astype(np.float64) + off
    return xy.reshape(*lead, 2), np.clip(conf, 0.0, 1.0).reshape(lead)


def find_peaks(
    heatmap: np.ndarray, threshold: float, min_distance: int, max_peaks: int
) -> list[tuple[int, int, float]]:
    """Local maxima of one (H, W) map above ``threshold``: [(ix, iy, value)], best first."""

    size = 2 * int(min_distance) + 1
    mx = maximum_filter(heatmap, size=size, mode="constant", cval=-np.inf)
    cand = np.argwhere((heatmap == mx) & (heatmap >= threshold))
    vals = heatmap[cand[:, 0], cand[:, 1]]
    order = np.argsort(-vals)
    out: list[tuple[int, int, float]] = []
    for i in order:
        y, x = (int(v) for v in cand[i])
        if all((x - px) ** 2 + (y - py) ** 2 > min_distance**2 for px, py, _ in out):
            out.append((x, y, float(vals[i])))
        if len(out) >= max_peaks:
            break
    return out


def disk_mask(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Bool (H, W) mask of heatmap pixels within ``radius`` of ``centre`` (x, y)."""
    h, w = shape
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius * radius


def spread(heatmaps: np.ndarray, xy: np.ndarray, radius: int = 4) -> np.ndarray:
    """Spatial spread of each heatmap around its decoded position, in heatmap pixels.

    ``heatmaps`` (..., H, W), ``xy`` (..., 2) heatmap-pixel positions (``decode``'s
    output).  Returns (...): sqrt of half the mean squared distance from ``xy``,
    weighted by the non-negative heatmap within ``radius`` pixels of the peak, i.e.
    the per-axis standard deviation of the peak's mass.  A clean Gaussian target of
    sigma s gives about s (less when the window cuts its tail); a flat, smeared or
    split peak gives more.  An all-zero window gives ``radius``.  The uncertainty
    stage (``pipeline.uncertainty``) maps it, with the confidence, to an error radius.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    lead = hm.shape[:-2]
    h, w = hm.shape[-2:]
    flat = hm.reshape(-1, h, w)
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    r = int(radius)
    out = np.empty(len(flat), dtype=np.float64)
    for i in range(len(flat)):
        cx, cy = pts[i]
        # the window's columns and rows: round(c) +- r, clipped to the map
        x0, x1 = (min(max(int(round(cx)) + d, 0), w - 1) for d in (-r, r))
        y0, y1 = (min(max(int(round(cy)) + d, 0), h - 1) for d in (-r, r))
        ix, iy = np.arange(x0, x1 + 1), np.arange(y0, y1 + 1)
        win = np.maximum(flat[i, y0 : y1 + 1, x0 : x1 + 1], 0.0).astype(np.float64)
        dx = ix[None, :] - cx
        dy = iy[:, None] - cy
        d2 = dx * dx + dy * dy
        keep = d2 <= (r + 0.5) ** 2
        wsum = float(win[keep].sum())
        out[i] = math.sqrt(float((win * d2)[keep].sum()) / (2.0 * wsum)) if wsum > 1e-8 else r
    return out.reshape(lead)


def decode_differentiable(heatmaps: torch.Tensor, smooth_sigma: float = 1.0) -> torch.Tensor:
    """:func:`decode`'s positions in torch, differentiable in the heatmap values.

    ``heatmaps``: a torch tensor (N, H, W).  The arg-max pixel is chosen without a
    gradient; the DARK sub-pixel offset (same smoothing, edge padding, Newton step and
    +-1 pixel clip as :func:`decode`) carries the gradient, so a loss on the decoded
    position (the weak HKA target of ``training.angle_target``) trains exactly what
    inference reads.  Returns (N, 2) heatmap-pixel (x, y).
    """
    n, h, w = heatmaps.shape
    with torch.no_grad():
        arg = heatmaps.reshape(n, -1).argmax(dim=1)
        iy, ix = arg // w, arg % w
    sm = heatmaps
    if smooth_sigma > 0:
        r = max(1, int(round(2.5 * smooth_sigma)))
        t = torch.arange(-r, r + 1, dtype=heatmaps.dtype, device=heatmaps.device)
        kern = torch.exp(-(t**2) / (2 * smooth_sigma * smooth_sigma))
        kern = kern / kern.sum()
        p = F.pad(heatmaps[:, None], (r, r, r, r), mode="replicate")
        p = F.conv2d(p, kern.view(1, 1, 1, -1))
        sm = F.conv2d(p, kern.view(1, 1, -1, 1))[:, 0]
    lg = torch.log(sm.clamp_min(EPS))
    x0 = ix.clamp(1, w - 2)
    y0 = iy.clamp(1, h - 2)
    idx = torch.arange(n, device=heatmaps.device)

    def at(dx: int, dy: int) -> torch.Tensor:
        return lg[idx, y0 + dy, x0 + dx]

    dx, dy, dxx, dyy, dxy, det = _taylor_terms(at)
    ok = (det > 1e-12) & (dxx < 0) & (dyy < 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    zero = torch.zeros_like(det)
    ox = torch.where(ok, -(dyy * dx - dxy * dy) / safe, zero)
    oy = torch.where(ok, -(dxx * dy - dxy * dx) / safe, zero)
    off = torch.stack([ox, oy], dim=1).clamp(-1.0, 1.0)
    return torch.stack([x0, y0], dim=1).to(heatmaps.dtype) + off
