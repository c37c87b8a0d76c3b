"""Synthetic film generator: exact alignment, landmarks on the drawn anatomy, determinism."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LANDMARK_NAMES
from legalign.pipeline.measure import measure_leg
from legalign.training.synth import SyntheticFilm, generate_film, resolve_alignment

ANGLES = ("hka_deg", "mpta_deg", "mldfa_deg", "jlca_deg")


def _check_alignment(film: SyntheticFilm, tol: float = 1e-6) -> None:
    for leg in film.legs:
        want = film.params["alignment"][leg.side]
        assert (
            abs(want["hka_deg"] - (want["mpta_deg"] - want["mldfa_deg"] - want["jlca_deg"])) < 1e-9
        )
        got = measure_leg(leg, film.spacing_mm)
        for k in ANGLES:
            assert abs(getattr(got, k) - want[k]) < tol, (leg.side, k, getattr(got, k), want[k])
        assert got.femur_length_mm == pytest.approx(want["femur_length_mm"], abs=1e-6)
        assert got.tibia_length_mm == pytest.approx(want["tibia_length_mm"], abs=1e-6)


@pytest.mark.parametrize("legs", ["both", "right", "left"])
def test_random_films_measure_back_their_alignment(legs):
    for seed in range(6):
        film = generate_film(seed, legs=legs)
        assert [lg.side for lg in film.legs] == (["right", "left"] if legs == "both" else [legs])
        _check_alignment(film)


def test_requested_alignment_is_returned_exactly_including_mirrored_films():
    req = {
        "right": {"mpta_deg": 83.5, "mldfa_deg": 88.25, "jlca_deg": 1.5},
        "left": {"hka_deg": 4.0, "mpta_deg": 90.0, "jlca_deg": -0.5},
    }
    seen_mirrored = set()
    for seed in range(40):
        film = generate_film(seed, alignment=req)
        _check_alignment(film)
        r = measure_leg(film.legs[0], film.spacing_mm)
        assert r.hka_deg == pytest.approx(83.5 - 88.25 - 1.5, abs=1e-6)
        assert r.mldfa_deg == pytest.approx(88.25, abs=1e-6)
        lf = measure_leg(film.legs[1], film.spacing_mm)
        assert lf.mldfa_deg == pytest.approx(90.0 + 0.5 - 4.0, abs=1e-6)
        assert all(lg.mirrored == film.mirrored for lg in film.legs)
        seen_mirrored.add(film.mirrored)
        if seen_mirrored == {True, False}:
            break
    assert seen_mirrored == {True, False}


def test_mirrored_film_puts_the_right_leg_on_the_viewers_right():
    for seed in range(60):
        film = generate_film(seed)
        if film.mirrored:
            break
    else:  # pragma: no cover
        pytest.fail("no mirrored film in 60 seeds")
    right, left = film.legs
    assert right.points["femoral_head"][0] > left.points["femoral_head"][0]
    # medial is -x for a right leg on a mirrored film
    assert right.points["femoral_condyle_medial"][0] < right.points["femoral_condyle_lateral"][0]
    normal = generate_film(0)
    assert not normal.mirrored
    r0 = normal.legs[0]
    assert r0.points["femoral_head"][0] < normal.legs[1].points["femoral_head"][0]
    assert r0.points["femoral_condyle_medial"][0] > r0.points["femoral_condyle_lateral"][0]


def test_resolve_alignment_inputs():
    rng = np.random.default_rng(0)
    a = resolve_alignment({"hka_deg": -6.0, "mpta_deg": 84.0, "jlca_deg": 2.0}, rng)
    assert a["mldfa_deg"] == pytest.approx(88.0)
    a = resolve_alignment({"hka_deg": 3.0}, np.random.default_rng(1))
    assert a["hka_deg"] == 3.0
    assert a["mpta_deg"] - a["mldfa_deg"] - a["jlca_deg"] == pytest.approx(3.0)
    a = resolve_alignment({"femur_length_mm": 400.0}, np.random.default_rng(2))
    assert a["femur_length_mm"] == 400.0
    with pytest.raises(InputError, match="femur_length_mm=300 is outside 360-620 mm"):
        resolve_alignment({"femur_length_mm": 300.0}, rng)
    a = resolve_alignment({"femur_length_mm": 300.0}, rng, scale=0.8)
    assert a["femur_length_mm"] == 300.0
    with pytest.raises(InputError, match="must satisfy"):
        resolve_alignment(
            {"hka_deg": 0.0, "mpta_deg": 87.0, "mldfa_deg": 87.0, "jlca_deg": 1.0}, rng
        )
    with pytest.raises(InputError, match="unknown alignment key"):
        resolve_alignment({"hka": 1.0}, rng)
    big = generate_film(0, alignment={"scale": 1.3})
    small = generate_film(0, alignment={"scale": 0.8})
    assert big.params["scale"] == 1.3 and small.params["scale"] == 0.8
    assert big.image.shape[1] > small.image.shape[1]
    with pytest.raises(InputError, match="scale"):
        generate_film(0, alignment={"scale": 3})
    with pytest.raises(InputError, match="alignment keys"):
        generate_film(0, alignment={"both": {"hka_deg": 1.0}})
    with pytest.raises(InputError, match="size"):
        generate_film(0, size="huge")


def test_small_film_shape_dtype_and_speed():
    generate_film(0)  # warm caches
    times = []
    for seed in range(3):
        t0 = time.perf_counter()
        film = generate_film(seed)
        times.append(time.perf_counter() - t0)
        h, w = film.image.shape
        assert film.image.dtype == np.uint16 and film.bits_stored in (12, 14, 16)
        assert int(film.image.max()) < 2**film.bits_stored
        assert film.spacing_mm == 1.0 and 850 <= h <= 1300 and 250 <= w <= 600
        for leg in film.legs:
            assert set(leg.points) == set(LANDMARK_NAMES)
            for x, y in leg.points.values():
                assert 0 <= x <= w - 1 and 0 <= y <= h - 1
    # generous bound on a shared machine; docs/synthetic.md has measured numbers
    assert min(times) < 1.0


def test_bone_bright_soft_tissue_faint_background_dark():
    film = generate_film(4, distractors=False, spacing_mm=1.0)
    img = film.image.astype(float) / (2**film.bits_stored - 1)
    leg = film.legs[0]
    x, y = (int(round(v)) for v in leg.points["femoral_shaft_distal"])
    bone = img[y - 2 : y + 3, x - 2 : x + 3].mean()
    soft = img[y - 2 : y + 3, x - 30 : x - 25].mean()  # lateral thigh, no bone
    air = img[y - 2 : y + 3, 0:4].mean()
    assert bone > soft > air
    assert soft - air > 0.05


def test_deterministic_and_sizes_share_the_patient():
    a, b = generate_film(11), generate_film(11)
    assert np.array_equal(a.image, b.image) and a.params == b.params
    fine = generate_film(11, spacing_mm=0.5)
    assert fine.params["alignment"] == a.params["alignment"]
    k = a.spacing_mm / fine.spacing_mm
    for la, lf in zip(a.legs, fine.legs, strict=True):
        for n in LANDMARK_NAMES:
            assert lf.points[n][0] == pytest.approx(la.points[n][0] * k, abs=1e-6)
            assert lf.points[n][1] == pytest.approx(la.points[n][1] * k, abs=1e-6)
    right = generate_film(11, legs="right")
    assert right.params["alignment"]["right"] == a.params["alignment"]["right"]


def _poly(film: SyntheticFilm, side: str, bone: str) -> np.ndarray:
    return np.asarray(film.outlines[side][bone], np.float32).reshape(-1, 1, 2)


def _hcut(poly: np.ndarray, y: float) -> list[float]:
    p = poly.reshape(-1, 2).astype(float)
    q = np.roll(p, -1, axis=0)
    xs = []
    for (x0, y0), (x1, y1) in zip(p, q, strict=True):
        if (y0 - y) * (y1 - y) < 0:
            xs.append(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return sorted(xs)


@pytest.mark.parametrize("seed", [0, 7])
def test_landmarks_sit_on_the_drawn_anatomy(seed):
    sp = 0.5
    film = generate_film(seed, spacing_mm=sp, distractors=False)
    for leg in film.legs:
        femur, tibia = _poly(film, leg.side, "femur"), _poly(film, leg.side, "tibia")
        p = leg.points

        def dist(poly, name, p=p):
            return abs(cv2.pointPolygonTest(poly, p[name], True))

        tol = 2.0  # px: mask rasterisation + contour simplification
        for name in ("femoral_condyle_medial", "femoral_condyle_lateral", "greater_trochanter"):
            assert dist(femur, name) < tol, name
        for name in ("tibial_plateau_medial", "tibial_plateau_lateral", "ankle_centre"):
            assert dist(tibia, name) < tol, name
        # head centre: the head outline is a circle around it
        rh = film.params["alignment"][leg.side]["shape"]["head_radius"] / sp
        assert abs(dist(femur, "femoral_head") - rh) < tol
        # knee centre lies in the joint gap, outside both bones
        assert cv2.pointPolygonTest(femur, p["knee_centre"], False) < 0
        assert cv2.pointPolygonTest(tibia, p["knee_centre"], False) < 0
        # shaft points: middle of the outline on their horizontal line, at 30/70 % and
        # 25/75 % of the bone's vertical extent
        for poly, names, fracs in (
            (femur, ("femoral_shaft_proximal", "femoral_shaft_distal"), (0.3, 0.7)),
            (tibia, ("tibial_shaft_proximal", "tibial_shaft_distal"), (0.25, 0.75)),
        ):
            ys = poly.reshape(-1, 2)[:, 1]
            for name, frac in zip(names, fracs, strict=True):
                x, y = p[name]
                assert y == pytest.approx(ys.min() + frac * (ys.max() - ys.min()), abs=tol)
                xs = _hcut(poly, y)
                assert len(xs) == 2, (name, xs)
                assert x == pytest.approx(0.5 * (xs[0] + xs[1]), abs=tol)
        # trochanter tip: no femur outline lateral to the shaft axis (the line through the
        # two shaft points) rises above it
        gt = p["greater_trochanter"]
        (x0, y0), (x1, y1) = p["femoral_shaft_proximal"], p["femoral_shaft_distal"]
        outline = femur.reshape(-1, 2).astype(float)
        axis_x = x0 + (outline[:, 1] - y0) * (x1 - x0) / (y1 - y0)
        lateral = outline[(outline[:, 0] - axis_x) * leg.medial_sign < -5]
        assert lateral[:, 1].min() > gt[1] - tol


def test_distractors_do_not_follow_the_anatomy():
    """Changing the legs' alignment moves landmarks but no distractor."""
    a = generate_film(21, alignment={"right": {"hka_deg": -10.0}, "left": {"hka_deg": 8.0}})
    b = generate_film(21, alignment={"right": {"hka_deg": 6.0}, "left": {"hka_deg": -7.0}})
    assert a.legs[0].points["ankle_centre"] != b.legs[0].points["ankle_centre"]
    kinds = [d["kind"] for d in a.params["distractors"]]
    assert kinds == [d["kind"] for d in b.params["distractors"]]
    for da, db in zip(a.params["distractors"], b.params["distractors"], strict=True):
        if da["kind"] == "ruler":
            assert da["x_mm"] == db["x_mm"]
        if da["kind"] == "calibration_ball":
            assert da["centre_px"][0] == db["centre_px"][0]


def test_ball_and_ruler_are_spread_over_the_film():
    xs = []
    for seed in range(40):
        film = generate_film(seed)
        w = film.image.shape[1]
        for d in film.params["distractors"]:
            if d["kind"] == "calibration_ball":
                xs.append(d["centre_px"][0] / w)
    assert len(xs) > 10 and min(xs) < 0.3 and max(xs) > 0.7


@pytest.mark.slow
def test_native_film_size_and_bits():
    t0 = time.perf_counter()
    film = generate_film(0, size="native")
    elapsed = time.perf_counter() - t0
    h, w = film.image.shape
    assert 0.1 <= film.spacing_mm <= 0.2
    assert 5000 <= h <= 9500 and 1800 <= w <= 3600
    assert film.bits_stored in (12, 14, 16) and int(film.image.max()) < 2**film.bits_stored
    _check_alignment(film)
    assert elapsed < 60
    assert math.isfinite(elapsed)


@pytest.mark.parametrize(
    "req",
    [
        {"hka_deg": -25.0, "mpta_deg": 75.0, "jlca_deg": 8.0},
        {"mpta_deg": 100.0, "mldfa_deg": 70.0, "jlca_deg": 0.0},
        {"femur_length_mm": 365.0, "tibia_length_mm": 305.0},
        {"femur_length_mm": 610.0, "tibia_length_mm": 510.0},
    ],
)
def test_extreme_requests_stay_exact_and_inside_the_film(req):
    film = generate_film(3, legs="right", alignment={"scale": 1.0, "right": req})
    _check_alignment(film)
    h, w = film.image.shape
    for x, y in film.legs[0].points.values():
        assert 0 <= x <= w - 1 and 0 <= y <= h - 1
