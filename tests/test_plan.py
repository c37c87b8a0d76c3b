"""Osteotomy proposal: hand-checked example, closed loop, level rules, DLO, warnings."""

import math

import numpy as np
import pytest
from leg_builder import build_leg

from legalign.pipeline.config_schema import deep_merge, from_mapping, read_yaml
from legalign.pipeline.errors import PlanningError
from legalign.pipeline.geometry_config import CONFIG_FILE, GeometryConfig, load_geometry_config
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.measure import measure_leg
from legalign.pipeline.plan import plan_leg

CFG = load_geometry_config()


def cfg_with(**override) -> GeometryConfig:
    return from_mapping(GeometryConfig, deep_merge(read_yaml(CONFIG_FILE), override))


def worked_example() -> LegLandmarks:
    """A right leg drawn on squared paper, spacing 0.5 mm/px.

    H = (100, 0), K = (100, 800), A = (170, 1600); condyles (180, 800) medial and
    (20, 800) lateral; plateau (180, 810) medial and (20, 810) lateral.
    By hand:
    - femoral axis K-H is vertical; tibial axis A-K = (70, 800) leans medially by
      atan(70/800) = atan(0.0875) = 0.087278 rad = 5.0006 deg, so HKA = -5.0006 deg (varus).
    - MAD: distance from K to line H-A = |70*800 - 1600*0| / hypot(70, 1600)
      = 56000 / 1601.530 = 34.966 px = 17.483 mm; the WBL at y=800 is at
      x = 100 + 70 * 800/1600 = 135 > 100, i.e. medial of K -> positive.
    - WBL ratio: at y = 810 the WBL is at x = 100 + 70 * 810/1600 = 135.4375;
      from the medial edge (180) towards the lateral (20): (180 - 135.4375) / 160 = 27.852 %.
    - mLDFA: joint line horizontal, femoral axis vertical -> 90.000 deg.
    - MPTA: plateau horizontal, tibial axis 5.0005 deg off vertical towards medial ->
      90 - 5.0006 = 84.9994 deg;  JLCA = 0.
    - Level: varus, MPTA 84.9994 < 85 with mLDFA 90 (normal, inclusive) -> HTO.
    - Hinge: along = (70, 800)/803.057 = (0.087167, 0.996194), medial normal
      (0.996194, -0.087167); P = (20, 810) + 30 px * along + 20 px * normal
      = (42.539, 838.142).  Cut start C = (180, 810) + 80 px * along = (186.973, 889.695).
      L = |P - C| = 153.361 px = 76.680 mm.
    """
    pts = {
        "femoral_head": (100.0, 0.0),
        "knee_centre": (100.0, 800.0),
        "ankle_centre": (170.0, 1600.0),
        "femoral_condyle_medial": (180.0, 800.0),
        "femoral_condyle_lateral": (20.0, 800.0),
        "tibial_plateau_medial": (180.0, 810.0),
        "tibial_plateau_lateral": (20.0, 810.0),
    }
    return LegLandmarks("right", pts)


def test_worked_example_by_hand():
    leg = worked_example()
    m = measure_leg(leg, 0.5, CFG)
    assert m.hka_deg == pytest.approx(-5.0006, abs=1e-4)
    assert m.mad_mm == pytest.approx(17.483, abs=1e-3)
    assert m.wbl_ratio_pct == pytest.approx(27.852, abs=1e-3)
    assert m.mldfa_deg == pytest.approx(90.0, abs=1e-9)
    assert m.mpta_deg == pytest.approx(84.9994, abs=1e-4)
    assert m.jlca_deg == pytest.approx(0.0, abs=1e-9)
    plan = plan_leg(leg, m, 0.5, CFG)
    assert plan.level == "HTO" and plan.indicated
    assert plan.hinge == pytest.approx((42.539, 838.142), abs=1e-3)
    assert plan.cut_start == pytest.approx((186.973, 889.695), abs=1e-3)
    assert plan.steps[0].cut_length_mm == pytest.approx(76.680, abs=1e-3)
    assert plan.steps[0].wedge == "opening"
    # Miniaci by construction, independently of the solver: A' lies on the circle about
    # P through A and on the line from H through the target T (62.5 % from medial).
    H, A, P = np.array([100.0, 0.0]), np.array([170.0, 1600.0]), np.array(plan.hinge)
    T = np.array([180.0 - 0.625 * 160.0, 810.0])
    d = (T - H) / np.linalg.norm(T - H)
    r = np.linalg.norm(A - P)
    b = np.dot(H - P, d)
    c = np.dot(H - P, H - P) - r * r
    s = -b + math.sqrt(b * b - c)  # the far (distal) intersection
    A2 = H + s * d
    miniaci = math.degrees(
        math.acos(np.dot(A - P, A2 - P) / (np.linalg.norm(A - P) * np.linalg.norm(A2 - P)))
    )
    assert plan.correction_deg == pytest.approx(miniaci, abs=1e-6)
    assert plan.gap_mm == pytest.approx(2 * 76.680 * math.sin(math.radians(miniaci) / 2), abs=1e-3)
    assert plan.post["wbl_ratio_pct"] == pytest.approx(62.5, abs=1e-6)


def apply_step(leg: LegLandmarks, step) -> LegLandmarks:
    """Rotate every landmark distal to the cut line about the hinge (test's own code)."""
    hinge, start = np.array(step.hinge), np.array(step.cut_start)
    d = hinge - start
    ankle = np.array(leg.points["ankle_centre"])

    def side(q):
        return d[0] * (q[1] - start[1]) - d[1] * (q[0] - start[0])

    fixed = {"femoral_head"} | (
        set()
        if step.level == "DFO"
        else {"femoral_condyle_medial", "femoral_condyle_lateral", "knee_centre"}
    )
    a = math.radians(step.rotation_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = {}
    for n, q in leg.points.items():
        q = np.array(q)
        if n not in fixed and side(q) * side(ankle) > 0:
            q = hinge + rot @ (q - hinge)
        pts[n] = (float(q[0]), float(q[1]))
    return LegLandmarks(leg.side, pts, mirrored=leg.mirrored)


CLOSED_LOOP = [
    (dict(hka=-7.0, mpta=82.0, jlca=1.0), "HTO", 62.5),
    (dict(hka=-6.0, mpta=87.0, jlca=1.0), "DFO", 62.5),  # mLDFA 92
    (dict(hka=-10.0, mpta=83.0, jlca=1.0), "DLO", 62.5),  # mLDFA 92
    (dict(hka=7.0, mpta=88.0, jlca=0.0), "DFO", 50.0),  # mLDFA 81
    (dict(hka=6.0, mpta=93.0, jlca=0.0), "HTO", 50.0),  # mLDFA 87
    (dict(hka=9.0, mpta=92.0, jlca=0.0), "DLO", 50.0),  # mLDFA 83
]


@pytest.mark.parametrize("angles,level,target", CLOSED_LOOP)
@pytest.mark.parametrize("side", ["right", "left"])
def test_closed_loop_and_levels(angles, level, target, side):
    leg = build_leg(side=side, **angles)
    m = measure_leg(leg, 0.15, CFG)
    plan = plan_leg(leg, m, 0.15, CFG)
    assert plan.level == level
    assert plan.target_wbl_pct == target
    after = leg
    for step in plan.steps:
        after = apply_step(after, step)
    post = measure_leg(after, 0.15, CFG)
    assert post.wbl_ratio_pct == pytest.approx(target, abs=0.1)
    assert plan.post["wbl_ratio_pct"] == pytest.approx(target, abs=1e-6)
    assert plan.post["hka_deg"] == pytest.approx(post.hka_deg, abs=1e-6)
    if level == "DLO":
        femur, tibia = plan.steps
        assert (femur.level, tibia.level) == ("DFO", "HTO")
        assert plan.post["mldfa_deg"] == pytest.approx(87.0, abs=1e-6)
        assert plan.correction_deg == pytest.approx(femur.correction_deg + tibia.correction_deg)
        assert plan.gap_mm is None and plan.hinge is None
    else:
        assert plan.correction_deg == plan.steps[0].correction_deg > 0
        assert plan.gap_mm == pytest.approx(
            2 * plan.steps[0].cut_length_mm * math.sin(math.radians(plan.correction_deg) / 2)
        )
    if level == "DFO":
        assert plan.post["mpta_deg"] == pytest.approx(m.mpta_deg, abs=1e-6)  # knee turns whole
    if level == "HTO":
        assert plan.post["mldfa_deg"] == pytest.approx(m.mldfa_deg, abs=1e-6)


def test_isolated_hto_over_mpta_limit_becomes_dlo():
    leg = build_leg(hka=-14.0, mpta=84.0, jlca=1.0)  # mLDFA 97 is abnormal too -> DLO anyway
    assert plan_leg(leg, measure_leg(leg, 0.15), 0.15).level == "DLO"
    leg = build_leg(hka=-15.0, mpta=80.0, jlca=5.0)  # mLDFA 90 normal: HTO would need > 95
    m = measure_leg(leg, 0.15)
    plan = plan_leg(leg, m, 0.15)
    assert plan.level == "DLO"
    assert any("95" in w and "double-level" in w for w in plan.warnings)
    assert plan.post["mpta_deg"] <= 95.0


def test_joint_deformity_gets_hto_with_warning():
    leg = build_leg(hka=-6.0, mpta=86.0, jlca=4.0)  # mLDFA 88: both normal
    plan = plan_leg(leg, measure_leg(leg, 0.15), 0.15)
    assert plan.level == "HTO"
    assert any("joint" in w for w in plan.warnings)


def test_not_indicated_for_neutral_leg():
    leg = build_leg(hka=2.0)
    plan = plan_leg(leg, measure_leg(leg, 0.15), 0.15)
    assert plan.indicated is False and plan.level is None and plan.steps == []
    assert "no correction indicated" in plan.reason
    assert "not a clinical decision" in plan.disclaimer


def test_uncalibrated_plan_gives_angle_without_gap():
    leg = build_leg(hka=-7.0, mpta=82.0, jlca=1.0)
    plan = plan_leg(leg, measure_leg(leg, None), None)
    assert plan.level == "HTO" and plan.correction_deg > 0
    assert plan.gap_mm is None
    assert any("uncalibrated" in w for w in plan.warnings)
    assert plan.post["mad_mm"] is None and plan.post["wbl_ratio_pct"] == pytest.approx(62.5)


def test_warnings_for_large_corrections_and_low_confidence():
    leg = build_leg(hka=-12.0, mpta=78.0, jlca=0.0, plateau_width_px=700)  # mLDFA 90: HTO
    m = measure_leg(leg, 0.15)
    plan = plan_leg(leg, m, 0.15, low_confidence=("ankle_centre",))
    text = " | ".join(plan.warnings)
    assert "low landmark confidence: ankle_centre" in text
    assert "correction" in text and "> 15" in text


def test_unreachable_target_is_an_error():
    cfg = cfg_with(planning={"solver": {"max_angle_deg": 2.0}})
    leg = build_leg(hka=-9.0, mpta=82.0, jlca=1.0)
    with pytest.raises(PlanningError, match="cannot reach the target"):
        plan_leg(leg, measure_leg(leg, 0.15, cfg), 0.15, cfg)


def test_configured_target_is_used():
    cfg = cfg_with(planning={"target_wbl_pct": {"varus": 55.0}})
    leg = build_leg(hka=-7.0, mpta=82.0, jlca=1.0)
    plan = plan_leg(leg, measure_leg(leg, 0.15, cfg), 0.15, cfg)
    assert plan.post["wbl_ratio_pct"] == pytest.approx(55.0, abs=1e-6)


def test_solver_skips_brackets_where_the_objective_is_undefined():
    from legalign.pipeline.plan import solve_rotation

    # Roots at +/-0.1 deg, but the objective is undefined strictly inside (0, 0.25), so
    # the bracket [0, 0.25] cannot be refined; the root at -0.1 must still be found.
    def objective(a):
        return None if 0.0 < a < 0.25 else abs(a) - 0.1

    assert solve_rotation(objective, 0.0, 45.0, 1e-12) == pytest.approx(-0.1, abs=1e-9)
