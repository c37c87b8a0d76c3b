"""Measurements: exact angles back, the identity, mirror invariance, missing data."""

import math

import numpy as np
import pytest
from leg_builder import build_leg

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.measure import measure_leg

CASES = [
    dict(hka=0.0, mpta=87.0, jlca=0.0),
    dict(hka=-8.25, mpta=82.5, jlca=2.0),
    dict(hka=6.5, mpta=91.0, jlca=-1.0),
    dict(hka=-3.0, mpta=85.0, jlca=4.5),
    dict(hka=12.0, mpta=92.0, jlca=0.3),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mirrored", [False, True])
def test_chosen_angles_come_back(case, side, mirrored):
    leg = build_leg(side=side, mirrored=mirrored, mlpfa=91.0, ama=5.5, atfa=6.5, **case)
    m = measure_leg(leg, 0.15)
    assert m.hka_deg == pytest.approx(case["hka"], abs=1e-6)
    assert m.mpta_deg == pytest.approx(case["mpta"], abs=1e-6)
    assert m.jlca_deg == pytest.approx(case["jlca"], abs=1e-6)
    assert m.mldfa_deg == pytest.approx(case["mpta"] - case["jlca"] - case["hka"], abs=1e-6)
    assert m.mlpfa_deg == pytest.approx(91.0, abs=1e-6)
    assert m.ama_deg == pytest.approx(5.5, abs=1e-6)
    assert m.atfa_deg == pytest.approx(6.5, abs=1e-6)
    assert m.femur_length_mm == pytest.approx(3000 * 0.15)
    assert m.tibia_length_mm == pytest.approx(2500 * 0.15)


def test_identity_on_random_landmark_sets():
    rng = np.random.default_rng(7)
    base = build_leg(hka=-2.0, mpta=86.0, jlca=1.0)
    for _ in range(200):
        pts = {
            n: (x + rng.normal(0, 60), y + rng.normal(0, 60)) for n, (x, y) in base.points.items()
        }
        side = str(rng.choice(["right", "left"]))
        m = measure_leg(LegLandmarks(side=side, points=pts), None)
        lhs = m.hka_deg
        rhs = m.mpta_deg - m.mldfa_deg - m.jlca_deg
        diff = math.remainder(lhs - rhs, 360.0)
        assert abs(diff) < 1e-9


def test_signs_varus_negative_and_mad_medial_positive():
    varus = measure_leg(build_leg(hka=-6.0, mpta=84.0), 0.15)
    valgus = measure_leg(build_leg(hka=6.0, mpta=90.0), 0.15)
    assert varus.hka_deg < 0 < valgus.hka_deg
    assert varus.mad_mm > 0 > valgus.mad_mm  # WBL passes medial to the knee in varus
    assert varus.wbl_ratio_pct < 50 < valgus.wbl_ratio_pct
    assert varus.category == "varus" and valgus.category == "valgus"
    assert measure_leg(build_leg(hka=2.9), None).category == "neutral"


def test_mirror_invariance():
    right = build_leg(side="right", hka=-5.5, mpta=84.0, jlca=1.2, origin=(600, 300))
    left = right.as_other_leg(width=2600)
    assert left.side == "left"
    a, b = measure_leg(right, 0.2).to_dict(), measure_leg(left, 0.2).to_dict()
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, abs=1e-9), key
        else:
            assert b[key] == value, key


def test_uncalibrated_gives_angles_only():
    m = measure_leg(build_leg(hka=-4.0), None)
    assert m.hka_deg == pytest.approx(-4.0)
    assert m.wbl_ratio_pct is not None
    for key in ("mad_mm", "femur_length_mm", "tibia_length_mm", "leg_length_mm"):
        assert getattr(m, key) is None
        assert "spacing" in m.null_reasons[key]


def test_missing_landmark_disables_only_what_needs_it():
    leg = build_leg(hka=-4.0, mpta=85.0)
    pts = dict(leg.points)
    del pts["tibial_plateau_lateral"]
    m = measure_leg(LegLandmarks("right", pts), 0.15)
    assert m.mpta_deg is None and m.jlca_deg is None and m.wbl_ratio_pct is None
    assert "tibial_plateau_lateral" in m.null_reasons["mpta_deg"]
    assert m.hka_deg == pytest.approx(-4.0) and m.mldfa_deg is not None and m.mad_mm is not None


def test_coincident_points_are_an_error():
    leg = build_leg()
    pts = dict(leg.points)
    pts["knee_centre"] = pts["femoral_head"]
    with pytest.raises(InputError, match="coincident"):
        measure_leg(LegLandmarks("right", pts), 0.15)


def test_leg_length_discrepancy_left_minus_right():
    from legalign.pipeline.assemble import build_leg as assemble_leg
    from legalign.pipeline.assemble import leg_length_discrepancy
    from legalign.pipeline.geometry_config import load_geometry_config

    cfg = load_geometry_config()
    right = build_leg(side="right", femur_px=3000, tibia_px=2500)
    left = build_leg(side="left", femur_px=3100, tibia_px=2500, origin=(1900, 400))
    legs = [assemble_leg(leg, 0.1, cfg) for leg in (right, left)]
    lld, why_not = leg_length_discrepancy(legs, 0.1)
    by_side = {lr.side: lr.measurements for lr in legs}
    assert why_not is None
    assert lld == pytest.approx(by_side["left"].leg_length_mm - by_side["right"].leg_length_mm)
    assert lld > 0
    assert leg_length_discrepancy(legs[:1], 0.1) == (None, "single leg on the film")
    assert leg_length_discrepancy([legs[0], legs[0]], 0.1) == (None, "not a bilateral film")
    angles_only = [assemble_leg(leg, None, cfg) for leg in (right, left)]
    assert leg_length_discrepancy(angles_only, None) == (None, "no pixel spacing (angles only)")
