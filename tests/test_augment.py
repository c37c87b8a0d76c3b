"""Augmentation: every geometric transform keeps a keypoint within 0.1 px of where it
belongs (analytic position AND the centroid of a bright blob drawn at the point);
photometric transforms leave keypoints unchanged; config validation; resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.landmarks import LegLandmarks
from legalign.training.augment import (
    AugmentationConfig,
    AugmentParams,
    augment_with,
    augmentation_config,
    build_augmentation,
    crop_matrix,
    resample,
    resample_film,
    resize_matrix,
)
from legalign.training.datasets import AnnotatedFilm

H, W = 320, 140
SIGMA = 2.5
# Points spread over the film, away from the edges so transformed blobs stay inside.
POINTS = {
    "femoral_head": (50.3, 60.7),
    "knee_centre": (71.85, 160.2),
    "ankle_centre": (88.5, 251.45),
    "femoral_condyle_medial": (95.2, 150.9),
}
TOL = 0.1


def _blobs(points, shape=(H, W), sigma=SIGMA) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape, np.float32)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)
    return img


def _centroid(img: np.ndarray, x: float, y: float, r: int = 11) -> tuple[float, float]:
    h, w = img.shape
    x0, x1 = max(0, round(x) - r), min(w, round(x) + r + 1)
    y0, y1 = max(0, round(y) - r), min(h, round(y) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    win = img[y0:y1, x0:x1].astype(np.float64)
    return float((win * xx).sum() / win.sum()), float((win * yy).sum() / win.sum())


def _film(points=POINTS, side="right", spacing=0.5) -> AnnotatedFilm:
    return AnnotatedFilm(
        source="test",
        image=_blobs(points.values()),
        legs=[LegLandmarks(side=side, points=dict(points))],
        spacing_mm=spacing,
    )


def _cfg(**over) -> AugmentationConfig:
    off = {
        k: {"p": 0.0}
        for k in (
            "flip",
            "affine",
            "brightness_contrast",
            "gamma",
            "noise",
            "blur",
            "clahe",
            "dropout",
        )
    }
    for k, v in over.items():
        off[k] = v
    return augmentation_config(off)


def _analytic(params: AugmentParams, x: float, y: float, shape=(H, W)) -> tuple[float, float]:
    """Where a point belongs, written out independently of training.augment:
    flip x -> W-1-x; then about the centre c = ((W-1)/2, (H-1)/2): scale, rotate
    counter-clockwise on screen (y down), shear x by -tan(shear) * y, translate."""
    h, w = shape
    if params.flip:
        x = (w - 1) - x
    cx, cy = (w - 1) / 2, (h - 1) / 2
    dx, dy = (x - cx) * params.scale, (y - cy) * params.scale
    a = math.radians(params.rotate_deg)
    rx = math.cos(a) * dx + math.sin(a) * dy
    ry = -math.sin(a) * dx + math.cos(a) * dy
    rx = rx - math.tan(math.radians(params.shear_deg)) * ry
    return cx + rx + params.translate_px[0], cy + ry + params.translate_px[1]


GEOMETRIC = {
    "hflip": AugmentParams(flip=True),
    "rotate+7.3": AugmentParams(rotate_deg=7.3),
    "rotate-11": AugmentParams(rotate_deg=-11.0),
    "scale1.15": AugmentParams(scale=1.15),
    "scale0.8": AugmentParams(scale=0.8),
    "translate": AugmentParams(translate_px=(5, -7)),
    "shear+3": AugmentParams(shear_deg=3.0),
    "shear-2": AugmentParams(shear_deg=-2.0),
    "combined": AugmentParams(
        flip=True, rotate_deg=-4.2, scale=0.91, translate_px=(3, 2), shear_deg=1.5
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_transform_keeps_keypoints_within_0_1_px(name):
    params = GEOMETRIC[name]
    film = _film()
    out = augment_with(film, params, _cfg())
    (leg,) = out.legs
    assert set(leg.points) == set(POINTS)
    assert out.image.shape == (H, W) and out.image.dtype == np.float32
    for lm, (x, y) in POINTS.items():
        kx, ky = leg.points[lm]
        ex, ey = _analytic(params, x, y)
        assert math.hypot(kx - ex, ky - ey) < TOL, (lm, (kx, ky), (ex, ey))
        cx, cy = _centroid(out.image, kx, ky)
        assert math.hypot(cx - kx, cy - ky) < TOL, (lm, (cx, cy), (kx, ky))
    # the transform really moved things (a test that cannot fail proves nothing)
    moved = max(
        math.hypot(leg.points[n][0] - x, leg.points[n][1] - y) for n, (x, y) in POINTS.items()
    )
    assert moved > 1.0


def test_flip_turns_right_leg_into_left_looking_leg_with_anatomical_labels():
    film = _film()
    out = augment_with(film, AugmentParams(flip=True), _cfg())
    (leg,) = out.legs
    expected = film.legs[0].as_other_leg(W)
    assert leg.side == "left" == expected.side
    assert leg.mirrored == expected.mirrored
    for n, (x, y) in expected.points.items():
        assert leg.points[n] == pytest.approx((x, y), abs=1e-4)
    # medial condyle of a right leg lies at larger x; as a left leg it lies at smaller x
    assert leg.points["femoral_condyle_medial"][0] < leg.points["knee_centre"][0]
    assert leg.medial_sign == -1
    assert out.spacing_mm == film.spacing_mm


def test_random_geometry_keeps_blobs_on_keypoints():
    cfg = _cfg(
        flip={"p": 0.5},
        affine={"p": 1.0, "rotate_deg": 10.0, "scale": [0.8, 1.2], "translate_frac": 0.03},
    )
    aug = build_augmentation(cfg)
    rng = np.random.default_rng(123)
    sides = set()
    for _ in range(6):
        out = aug(_film(), rng)
        leg = out.legs[0]
        sides.add(leg.side)
        for kx, ky in leg.points.values():
            cx, cy = _centroid(out.image, kx, ky)
            assert math.hypot(cx - kx, cy - ky) < TOL
    assert sides == {"left", "right"}


def test_scale_updates_spacing_and_points_off_the_film_become_missing():
    film = _film(points={**POINTS, "greater_trochanter": (3.0, 5.0)})
    out = augment_with(film, AugmentParams(scale=1.25), _cfg())
    assert out.spacing_mm == pytest.approx(0.5 / 1.25)
    assert "greater_trochanter" not in out.legs[0].points  # pushed outside the image
    assert set(out.legs[0].points) == set(POINTS)


PHOTOMETRIC = {
    "brightness_contrast": ({"p": 1.0, "brightness": 0.1, "contrast": 0.2}, None),
    "gamma": ({"p": 1.0, "gamma": [0.6, 0.7]}, None),
    "noise": ({"p": 1.0, "std": [0.02, 0.03]}, None),
    "blur": ({"p": 1.0, "sigma": [1.0, 1.2]}, None),
    "clahe": ({"p": 1.0, "clip_limit": [2.0, 3.0], "tiles": 4}, None),
    "dropout": (
        {"p": 1.0, "holes": [3, 3], "size_frac": [0.2, 0.3], "margin_px": 8.0, "fill": 0.0},
        None,
    ),
}


@pytest.mark.parametrize("name", list(PHOTOMETRIC))
def test_photometric_transform_leaves_keypoints_unchanged(name):
    section, _ = PHOTOMETRIC[name]
    aug = build_augmentation(_cfg(**{name: section}))
    film = _film()
    if name == "dropout":  # a bright film, so the holes show
        film.image = np.clip(film.image + 0.5, 0, 1).astype(np.float32)
    out = aug(film, np.random.default_rng(5))
    assert out.legs[0].points == film.legs[0].points
    assert out.legs[0].side == "right"
    assert out.image.dtype == np.float32 and out.image.shape == film.image.shape
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert not np.allclose(out.image, film.image, atol=1e-4), "transform did nothing"
    assert film.image.max() <= 1.5  # input film not modified in place
    if name == "dropout":
        changed = out.image != film.image
        assert changed.sum() > 100
        yy, xx = np.mgrid[0:H, 0:W]
        for x, y in POINTS.values():
            near = np.hypot(xx - x, yy - y) < 7.5
            assert not changed[near].any()


def test_augmentation_is_reproducible_and_varies():
    aug = build_augmentation(None)
    a = aug(_film(), np.random.default_rng(7))
    b = aug(_film(), np.random.default_rng(7))
    c = aug(_film(), np.random.default_rng(8))
    assert np.array_equal(a.image, b.image) and a.legs == b.legs
    assert not np.array_equal(a.image, c.image)
    assert a.meta["augment"]["seed"] == b.meta["augment"]["seed"]


def test_disabled_augmentation_returns_the_film():
    film = _film()
    assert build_augmentation({"enabled": False})(film, np.random.default_rng(0)) is film


def test_two_legs_keep_their_identities_through_flip():
    left_pts = {n: (W - 1 - x, y) for n, (x, y) in POINTS.items()}
    film = AnnotatedFilm(
        "t",
        _blobs(POINTS.values()),
        [LegLandmarks("right", dict(POINTS)), LegLandmarks("left", left_pts)],
    )
    out = augment_with(film, AugmentParams(flip=True, rotate_deg=3.0), _cfg())
    assert [leg.side for leg in out.legs] == ["left", "right"]
    # the former left leg (now "right") sits where the right leg's points go, unflipped
    for n in POINTS:
        x, y = POINTS[n]
        ex, ey = _analytic(AugmentParams(rotate_deg=3.0), x, y)
        assert out.legs[1].points[n] == pytest.approx((ex, ey), abs=TOL)


# ---------------------------------------------------------------- config


def test_default_config_and_overrides():
    cfg = augmentation_config()
    assert cfg.enabled and 0 < cfg.flip.p <= 1 and cfg.affine.scale[0] < 1 < cfg.affine.scale[1]
    cfg2 = augmentation_config({"affine": {"rotate_deg": 2.0}})
    assert cfg2.affine.rotate_deg == 2.0 and cfg2.affine.p == cfg.affine.p


@pytest.mark.parametrize(
    "over, message",
    [
        ({"affine": {"rotat_deg": 2}}, "augmentation.affine.rotat_deg: unknown key"),
        ({"flip": {"p": 1.5}}, "augmentation.flip.p: probability"),
        ({"gamma": {"gamma": [1.5, 0.7]}}, "augmentation.gamma.gamma: must be [min, max]"),
        ({"noise": {"std": "big"}}, "augmentation.noise.std: must be a list"),
        ({"blurr": {}}, "augmentation.blurr: unknown key"),
    ],
)
def test_config_errors_name_the_key(over, message):
    with pytest.raises(ConfigError) as exc:
        augmentation_config(over)
    assert message in str(exc.value)


# ---------------------------------------------------------------- resample


def test_resize_matrix_maps_edges_and_centres():
    m = resize_matrix((100, 40), (25, 10))
    edges = np.array([[-0.5, -0.5], [39.5, 99.5]])
    got = edges @ m[:, :2].T + m[:, 2]
    assert np.allclose(got, [[-0.5, -0.5], [9.5, 24.5]])


@pytest.mark.parametrize(
    "matrix_fn",
    [
        lambda: resize_matrix((H, W), (H // 4, W // 4)),
        lambda: resize_matrix((H, W), (H * 2, W * 2)),
        lambda: resize_matrix((H, W), (200, 90)),  # anisotropic, non-integer factor
        lambda: crop_matrix((70.0, 150.0), (100.0, 200.0), (128, 64), angle_deg=6.0),
    ],
)
def test_resample_keeps_blob_on_point(matrix_fn):
    m = matrix_fn()
    sigma = 6.0  # wide enough to survive 4x downsampling
    pts = np.array([[50.3, 60.7], [71.85, 160.2], [88.5, 221.45]])
    img = _blobs(pts, sigma=sigma)
    # output shape from the matrix: push the far corner through it
    corner = np.array([W - 0.5, H - 0.5]) @ m[:, :2].T + m[:, 2]
    out_shape = (int(round(corner[1] + 0.5)), int(round(corner[0] + 0.5)))
    if m[0, 1] != 0:  # the rotated crop: its own shape
        out_shape = (128, 64)
    out, new = resample(img, pts, m, out_shape)
    assert out.shape == out_shape
    sigma_out = sigma * abs(np.linalg.det(m[:, :2])) ** 0.5
    margin = 3.5 * sigma_out
    checked = 0
    for (x, y), (nx, ny) in zip(pts, new, strict=True):
        ex, ey = m[:, :2] @ [x, y] + m[:, 2]
        assert math.hypot(nx - ex, ny - ey) < 1e-9
        if not (
            margin <= nx <= out_shape[1] - 1 - margin and margin <= ny <= out_shape[0] - 1 - margin
        ):
            continue  # blob cut by the output border: its centroid is biased
        cx, cy = _centroid(out, nx, ny, r=max(3, int(math.ceil(margin))))
        assert math.hypot(cx - nx, cy - ny) < TOL, ((cx, cy), (nx, ny))
        checked += 1
    assert checked >= 1


def test_crop_matrix_puts_centre_in_the_middle():
    m = crop_matrix((70.0, 150.0), (100.0, 200.0), (128, 64))
    c = m[:, :2] @ [70.0, 150.0] + m[:, 2]
    assert np.allclose(c, [(64 - 1) / 2, (128 - 1) / 2])
    # window edges map to output edges
    e = m[:, :2] @ [70.0 - 50.0, 150.0 - 100.0] + m[:, 2]
    assert np.allclose(e, [-0.5, -0.5])


def test_resample_film_updates_points_and_spacing():
    film = _film()
    m = resize_matrix((H, W), (H // 2, W // 2))
    out = resample_film(film, m, (H // 2, W // 2))
    assert out.image.shape == (H // 2, W // 2)
    assert out.spacing_mm == pytest.approx(1.0)
    x, y = POINTS["knee_centre"]
    assert out.legs[0].points["knee_centre"] == pytest.approx(
        ((x + 0.5) / 2 - 0.5, (y + 0.5) / 2 - 0.5)
    )


def test_films_without_landmarks_are_augmented():
    cfg = augmentation_config(
        {"flip": {"p": 1.0}, "affine": {"p": 1.0}, "dropout": {"p": 1.0}, "clahe": {"p": 1.0}}
    )
    aug = build_augmentation(cfg)
    img = np.random.default_rng(0).random((100, 50)).astype(np.float32)
    out = aug(AnnotatedFilm("x", img, []), np.random.default_rng(0))
    assert out.legs == [] and out.image.shape == (100, 50)
    out = aug(AnnotatedFilm("x", img, [LegLandmarks("left", {})]), np.random.default_rng(0))
    assert out.legs == [LegLandmarks("right", {})]
