"""Heatmap codec and resampling geometry: sub-pixel exactness, masks, peaks."""

from __future__ import annotations

import numpy as np
import pytest

from legalign.models import heatmap_codec as hc
from legalign.models.crops import (
    apply_affine,
    compose,
    crop_matrix,
    invert_affine,
    letterbox_matrix,
    warp,
)


def test_encode_decode_roundtrip_subpixel():
    rng = np.random.default_rng(0)
    pts = rng.uniform(3, 28, size=(20, 2))
    hm = hc.encode(pts, np.ones(20, bool), (32, 32), sigma=1.5)
    xy, conf = hc.decode(hm)
    assert np.abs(xy - pts).max() < 0.02
    assert np.all(conf > 0.7)


def test_decode_at_border_and_invalid_channels():
    pts = np.array([[0.2, 15.3], [5.0, 5.0]])
    hm = hc.encode(pts, np.array([True, False]), (32, 32), sigma=1.5)
    assert hm[1].max() == 0.0
    xy, _ = hc.decode(hm[:1])
    assert np.abs(xy[0] - pts[0]).max() < 0.5


def test_spread_grows_with_the_peak_width():
    pts = np.array([[20.3, 30.7], [20.3, 30.7], [20.3, 30.7]])
    hm = np.stack([hc.encode(pts[:1], np.array([True]), (64, 48), s)[0] for s in (1.0, 1.5, 3.0)])
    xy, _ = hc.decode(hm)
    sp = hc.spread(hm, xy, radius=6)
    assert sp[0] == pytest.approx(1.0, abs=0.05) and sp[1] == pytest.approx(1.5, abs=0.08)
    assert sp[1] < sp[2] < 3.0  # the window cuts the widest peak's tail
    # two peaks (an undecided network) spread more than one
    two = hm[1] + np.roll(hm[1], 4, axis=1)
    assert hc.spread(two[None], hc.decode(two[None])[0], radius=6)[0] > sp[1] + 0.5
    assert hc.spread(np.zeros((1, 16, 16)), np.array([[8.0, 8.0]]), radius=4)[0] == 4


def _whole_map_refinement(hm: np.ndarray, sigma: float) -> np.ndarray:
    """The decode's sub-pixel refinement as it was defined: the whole map smoothed, the
    log taken everywhere, the Newton step read at the arg-max (clamped inside)."""
    flat = hm.reshape(-1, *hm.shape[-2:])
    n, h, w = flat.shape
    iy, ix = np.divmod(flat.reshape(n, -1).argmax(axis=1), w)
    lg = np.log(np.maximum(hc._smooth(flat, sigma), hc.EPS))
    x0, y0, i = np.clip(ix, 1, w - 2), np.clip(iy, 1, h - 2), np.arange(n)

    def at(dx, dy):
        return lg[i, y0 + dy, x0 + dx]

    dx, dy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    dxx, dyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0), at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    ok = (det > 1e-12) & (dxx < 0) & (dyy < 0)
    safe = np.where(ok, det, 1.0)
    ox = np.where(ok, -(dyy * dx - dxy * dy) / safe, 0.0)
    oy = np.where(ok, -(dxx * dy - dxy * dx) / safe, 0.0)
    off = np.clip(np.stack([ox, oy], axis=1), -1.0, 1.0)
    return np.stack([x0, y0], axis=1) + off


@pytest.mark.parametrize("shape", [(3, 8, 64, 64), (2, 64, 32), (4, 9, 7), (2, 3, 3)])
@pytest.mark.parametrize("sigma", [0.0, 1.0, 1.5])
def test_decode_reads_the_smoothed_map_near_the_peak_only_bit_for_bit(shape, sigma):
    """The refinement smooths the 3 x 3 pixels around each peak only: the same numbers
    as smoothing the whole map, peaks at the border and inside, flat maps included."""
    rng = np.random.default_rng(int(sigma * 10) + len(shape))
    h, w = shape[-2:]
    hm = rng.random(shape, dtype=np.float32) * 0.3
    flat = hm.reshape(-1, h, w)
    ys, xs = np.mgrid[0:h, 0:w]
    for k in range(len(flat)):
        cx, cy = (rng.uniform(-1, w), rng.uniform(-1, h)) if k % 3 else (0.0, h - 1.0)
        flat[k] += np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 4.5).astype(np.float32)
    flat[0] = 0.0  # a flat map: no refinement
    xy, _ = hc.decode(hm, smooth_sigma=sigma)
    assert np.array_equal(xy.reshape(-1, 2), _whole_map_refinement(hm, sigma))


def test_stride_conversion_is_pixel_centred():
    for s in (2, 4, 8):
        x = np.array([[0.0, 10.0], [-0.5, 37.25]])
        assert np.allclose(hc.from_heatmap(hc.to_heatmap(x, s), s), x)
    # heatmap pixel 0 of stride 4 covers input pixels 0..3, centred on 1.5
    assert np.allclose(hc.from_heatmap(np.zeros(2), 4), 1.5)


def test_decode_mask_selects_second_peak():
    pts = np.array([[8.0, 8.0], [24.0, 20.0]])
    hm = hc.encode(pts, np.ones(2, bool), (32, 32), 1.5).max(axis=0)
    hm[8, 8] *= 1.5  # the first peak is the global maximum
    xy, _ = hc.decode(hm, mask=hc.disk_mask((32, 32), (23, 21), 4))
    assert np.abs(xy - pts[1]).max() < 0.05


def test_find_peaks_two_legs():
    pts = np.array([[10.3, 12.0], [30.7, 13.0]])
    hm = hc.encode(pts, np.ones(2, bool), (40, 48), 1.5).max(axis=0) * np.array([0.9, 0.6]).max()
    peaks = hc.find_peaks(hm, 0.2, 3, 4)
    assert len(peaks) == 2
    assert {(p[0], p[1]) for p in peaks} == {(10, 12), (31, 13)}


def _blob_image(h, w, pts, sigma):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    for x, y in pts:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("side", [40.0, 300.0])
def test_crop_warp_maps_points_exactly(flip, side):
    p = (210.3, 180.7)
    img = _blob_image(400, 420, [p], sigma=max(4.0, side / 25))
    A = crop_matrix((200.0, 190.0), side, 64, flip)
    crop = warp(img, A, (64, 64))
    xy, _ = hc.decode(crop, smooth_sigma=0.0)
    back = apply_affine(invert_affine(A), xy)
    # bilinear resampling of a sampled blob moves its decoded peak by < 0.15 output px
    assert np.abs(back - np.array(p)).max() < 0.15 * side / 64
    # the mirror puts a medial (+x) point on the other side
    u = apply_affine(A, np.array(p))
    assert (u[0] < 31.5) == flip


def test_letterbox_keeps_points_and_aspect():
    h, w = 1000, 300
    p = [(150.4, 620.2)]
    img = _blob_image(h, w, p, sigma=12)
    A = letterbox_matrix(h, w, 128, 64)
    out = warp(img, A, (128, 64))
    xy, _ = hc.decode(out, smooth_sigma=0.0)
    assert np.abs(apply_affine(invert_affine(A), xy) - np.array(p[0])).max() < 0.3
    assert np.isclose(A[0, 0], A[1, 1])


def test_affine_helpers():
    A = crop_matrix((10.0, 20.0), 50.0, 32, True, 7.0)
    B = letterbox_matrix(100, 50, 64, 32)
    p = np.array([[3.0, 4.0], [40.0, 9.0]])
    assert np.allclose(apply_affine(compose(A, B), p), apply_affine(A, apply_affine(B, p)))
    assert np.allclose(apply_affine(invert_affine(A), apply_affine(A, p)), p)


def test_warp_outside_image_is_border():
    img = np.ones((50, 50), np.float32)
    A = crop_matrix((500.0, 500.0), 20.0, 16, False)
    assert np.all(warp(img, A, (16, 16), border=0.0) == 0.0)


@pytest.mark.parametrize("angle", [0.0, 3.0])
def test_warp_moves_smoothly_with_the_crop(angle):
    """A crop moved by a hair averages the same blocks: its pixels move by a hair too.
    (The block grid used to start at the region's corner: whenever the corner crossed an
    image pixel the grid jumped by one pixel, and a fine crop of a native film changed
    by up to ~0.1 grey for a 0.001 px move.)"""
    rng = np.random.default_rng(3)
    img = rng.random((900, 700)).astype(np.float32)
    side = 620.0  # 128 px crop: ~4.8 image px per crop px, blocks of 4
    out = (128, 128)
    worst = 0.0
    for cx in np.linspace(330.0, 334.0, 33):
        a = warp(img, crop_matrix((cx, 450.0), side, 128, False, angle), out)
        b = warp(img, crop_matrix((cx + 1e-3, 450.0 + 1e-3), side, 128, False, angle), out)
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst < 2e-3, worst


def test_warp_blocks_lie_on_the_image_lattice():
    from legalign.models.crops import warp_plan

    for cx in (301.2, 302.9, 417.5):
        A = crop_matrix((cx, 333.3), 500.0, 64, False)
        plan = warp_plan((900, 700), A, (64, 64))
        assert plan is not None and plan.f > 1
        assert plan.x0 % plan.f == 0 and plan.y0 % plan.f == 0


def test_spread_window_is_clipped_to_the_map():
    """Peaks inside, at and beyond the border: the window is round(xy) +- radius cut to
    the map (the same numbers as gathering the clipped, de-duplicated indices)."""
    rng = np.random.default_rng(3)
    hm = rng.random((6, 20, 12), dtype=np.float32)
    xy = np.array([[5.4, 9.6], [0.2, 0.4], [11.0, 19.0], [-3.0, 25.0], [13.7, -0.6], [6.5, 10.5]])
    r = 4
    want = []
    for m, (cx, cy) in zip(hm, xy, strict=True):
        ix = np.unique(np.clip(int(round(cx)) + np.arange(-r, r + 1), 0, 11))
        iy = np.unique(np.clip(int(round(cy)) + np.arange(-r, r + 1), 0, 19))
        win = np.maximum(m[np.ix_(iy, ix)], 0.0).astype(np.float64)
        d2 = (ix[None, :] - cx) ** 2 + (iy[:, None] - cy) ** 2
        keep = d2 <= (r + 0.5) ** 2
        wsum = float(win[keep].sum())
        want.append(np.sqrt(float((win * d2)[keep].sum()) / (2 * wsum)) if wsum > 1e-8 else r)
    assert np.array_equal(hc.spread(hm, xy, radius=r), np.array(want))
