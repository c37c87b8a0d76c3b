"""Osteotomy proposal (docs/clinical-geometry.md, "Osteotomy proposal").

Planning support only: every plan says so; it is not a clinical decision.

One solver serves every level: the distal fragment (every landmark on the distal side
of the cut line) is rotated about the hinge point by an angle found numerically so
that an objective measured on the *re-measured* landmarks reaches its target -- the
WBL ratio for HTO and DFO (Miniaci), mLDFA for the femoral step of a double-level
osteotomy (DLO), whose tibial step then takes the WBL to its target.  The closed-loop
check (re-measure after the rotation) is therefore the solver's own definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import brentq

from legalign.pipeline.enums import OsteotomyLevel
from legalign.pipeline.errors import PlanningError
from legalign.pipeline.geometry import (
    from_canonical,
    medial_normal,
    rotate_about,
    to_canonical,
    unit,
)
from legalign.pipeline.geometry_config import (
    GeometryConfig,
    OsteotomyGeometry,
    load_geometry_config,
)
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.measure import CL, CM, PL, PM, A, H, K, LegMeasurements, measure_leg

# The one disclaimer every output carries (plans, per-image results, overlays, reports).
DISCLAIMER = "Planning support only: not a clinical decision; a clinician must verify."
POST_KEYS = ("hka_deg", "mad_mm", "wbl_ratio_pct", "mpta_deg", "mldfa_deg")


@dataclass
class OsteotomyStep:
    """One cut: where it is, how far it turns, what it aims at."""

    level: OsteotomyLevel  # HTO or DFO
    direction: str  # "valgus-producing" or "varus-producing"
    wedge: str  # "opening" or "closing" at the cut-start cortex
    objective: str  # e.g. "wbl_ratio_pct" or "mldfa_deg"
    target: float
    correction_deg: float
    # Signed rotation of the distal fragment about the hinge in image pixels (x right,
    # y down): positive turns +x towards +y.  correction_deg is its magnitude.
    rotation_deg: float
    gap_mm: float | None
    hinge: tuple[float, float]  # image pixels
    cut_start: tuple[float, float]  # image pixels
    cut_length_mm: float | None


@dataclass
class OsteotomyPlan:
    indicated: bool | None
    level: OsteotomyLevel | None  # HTO, DFO, DLO or None
    reason: str
    target_wbl_pct: float | None = None
    correction_deg: float | None = None
    gap_mm: float | None = None
    hinge: tuple[float, float] | None = None
    cut_start: tuple[float, float] | None = None
    steps: list[OsteotomyStep] = field(default_factory=list)
    post: dict[str, float | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict:
        d = asdict(self)
        # the outputs carry the level's string value
        d["level"] = None if self.level is None else str(self.level)
        for step in d["steps"]:
            step["level"] = str(step["level"])
        return d


@dataclass
class _Cut:
    """A cut in the canonical frame of one leg."""

    level: OsteotomyLevel
    hinge: np.ndarray
    cut_start: np.ndarray


def _cut_geometry(
    level: OsteotomyLevel, p: dict[str, np.ndarray], geo: OsteotomyGeometry, px_per_mm: float
) -> _Cut:
    """Hinge and cut-start points of an HTO or DFO, canonical frame (X medial, Y distal)."""
    if level == OsteotomyLevel.HTO:
        along = unit(p[A] - p[K], f"{K} and {A}")  # distal along the tibial mech axis
        medial_edge, lateral_edge = p[PM], p[PL]
    else:
        along = unit(p[H] - p[K], f"{H} and {K}")  # proximal along the femoral mech axis
        medial_edge, lateral_edge = p[CM], p[CL]
    to_medial = medial_normal(along)
    if geo.hinge_side == "lateral":
        hinge_edge, start_edge, inset = lateral_edge, medial_edge, to_medial
    else:
        hinge_edge, start_edge, inset = medial_edge, lateral_edge, -to_medial
    hinge = hinge_edge + along * geo.hinge_from_joint_mm * px_per_mm
    hinge = hinge + inset * geo.hinge_inset_mm * px_per_mm
    cut_start = start_edge + along * geo.cut_start_from_joint_mm * px_per_mm
    return _Cut(level=level, hinge=hinge, cut_start=cut_start)


def _distal_fragment(p: dict[str, np.ndarray], cut: _Cut) -> list[str]:
    """Landmarks on the same side of the cut line as the ankle centre (they move)."""
    d = cut.hinge - cut.cut_start

    def side(q: np.ndarray) -> float:
        return float(d[0] * (q[1] - cut.cut_start[1]) - d[1] * (q[0] - cut.cut_start[0]))

    ankle_side = math.copysign(1.0, side(p[A]))
    excluded = {H} if cut.level == OsteotomyLevel.DFO else {H, CM, CL, K}
    return [n for n, q in p.items() if n not in excluded and side(q) * ankle_side > 0]


def _rotated(
    p: dict[str, np.ndarray], moving: list[str], hinge: np.ndarray, angle: float
) -> dict[str, np.ndarray]:
    out = dict(p)
    for n in moving:
        out[n] = rotate_about(p[n], hinge, angle)
    return out


def _leg_from(p: dict[str, np.ndarray], leg: LegLandmarks) -> LegLandmarks:
    s = leg.medial_sign
    return LegLandmarks(
        side=leg.side,
        points={n: from_canonical(q, s) for n, q in p.items()},
        confidence=dict(leg.confidence),
        mirrored=leg.mirrored,
    )


def solve_rotation(
    objective: Callable[[float], float | None],
    target: float,
    max_angle: float,
    tol: float,
    step: float = 0.5,
) -> float:
    """Smallest |angle| in [-max_angle, max_angle] with objective(angle) == target.

    The search walks outwards from 0 in ``step`` degrees, both directions at once; the
    first bracket with a sign change is refined with Brent's method (a bracket where the
    objective is undefined inside is skipped).  Raises PlanningError when no angle in
    range reaches the target.
    """

    def f(a: float) -> float:
        v = objective(a)
        return math.nan if v is None else v - target

    f0 = f(0.0)
    if f0 == 0.0:
        return 0.0
    last = {1.0: (0.0, f0), -1.0: (0.0, f0)}
    n_steps = int(math.ceil(max_angle / step))
    for k in range(1, n_steps + 1):
        a_abs = min(k * step, max_angle)
        roots = []
        for sign in (1.0, -1.0):
            a1 = sign * a_abs
            v1 = f(a1)
            a0, v0 = last[sign]
            last[sign] = (a1, v1)
            if math.isnan(v1) or math.isnan(v0):
                continue
            if v1 == 0.0:
                roots.append(a1)
            elif v0 * v1 < 0:
                lo, hi = sorted((a0, a1))
                try:
                    roots.append(float(brentq(f, lo, hi, xtol=tol, rtol=4 * np.finfo(float).eps)))
                except ValueError:  # the objective is undefined somewhere inside
                    continue
        if roots:
            return min(roots, key=abs)
    raise PlanningError(
        f"the correction cannot reach the target ({target:g}) within +/-{max_angle:g} deg"
    )


def _solve_step(
    level: OsteotomyLevel,
    direction: str,
    objective_name: str,
    target: float,
    p: dict[str, np.ndarray],
    leg: LegLandmarks,
    cfg: GeometryConfig,
    px_per_mm: float,
    spacing_mm: float | None,
) -> tuple[OsteotomyStep, dict[str, np.ndarray]]:
    geo = cfg.planning.hto if level == OsteotomyLevel.HTO else cfg.planning.dfo
    cut = _cut_geometry(level, p, geo, px_per_mm)
    moving = _distal_fragment(p, cut)

    def objective(angle: float) -> float | None:
        m = measure_leg(_leg_from(_rotated(p, moving, cut.hinge, angle), leg), None, cfg)
        return getattr(m, objective_name)

    solver = cfg.planning.solver
    try:
        angle = solve_rotation(objective, target, solver.max_angle_deg, solver.tolerance_deg)
    except PlanningError as exc:
        raise PlanningError(f"{level} {objective_name}: {exc}") from None
    after = _rotated(p, moving, cut.hinge, angle)
    # Opening wedge when the cut-start cortex of the distal fragment moves away from the
    # proximal fragment, i.e. to the distal side of the cut line.
    moved = rotate_about(cut.cut_start, cut.hinge, angle) - cut.cut_start
    d = cut.hinge - cut.cut_start
    distal_normal = np.array([-d[1], d[0]])
    if float(np.dot(distal_normal, p[A] - cut.cut_start)) < 0:
        distal_normal = -distal_normal
    wedge = "opening" if float(np.dot(moved, distal_normal)) > 0 else "closing"
    length_px = float(np.hypot(*d))
    length_mm = length_px * spacing_mm if spacing_mm is not None else None
    gap = 2.0 * length_mm * math.sin(math.radians(abs(angle)) / 2.0) if length_mm else None
    s = leg.medial_sign
    step = OsteotomyStep(
        level=level,
        direction=direction,
        wedge=wedge,
        objective=objective_name,
        target=target,
        correction_deg=abs(angle),
        rotation_deg=angle * s,
        gap_mm=gap,
        hinge=from_canonical(cut.hinge, s),
        cut_start=from_canonical(cut.cut_start, s),
        cut_length_mm=length_mm,
    )
    return step, after


# Normal ranges are inclusive; floating-point noise at a bound must not flip a level.
RANGE_EPS_DEG = 1e-9


def _choose_level(
    m: LegMeasurements, varus: bool, cfg: GeometryConfig
) -> tuple[OsteotomyLevel, str | None]:
    assert m.mpta_deg is not None and m.mldfa_deg is not None  # plan_leg checked them
    lo_t, hi_t = cfg.normals.mpta_deg[0] - RANGE_EPS_DEG, cfg.normals.mpta_deg[1] + RANGE_EPS_DEG
    lo_f, hi_f = cfg.normals.mldfa_deg[0] - RANGE_EPS_DEG, cfg.normals.mldfa_deg[1] + RANGE_EPS_DEG
    if varus:
        tibia_abn, femur_abn = m.mpta_deg < lo_t, m.mldfa_deg > hi_f
        fallback = OsteotomyLevel.HTO
    else:
        tibia_abn, femur_abn = m.mpta_deg > hi_t, m.mldfa_deg < lo_f
        fallback = OsteotomyLevel.DFO
    if tibia_abn and femur_abn:
        return OsteotomyLevel.DLO, None
    if tibia_abn:
        return OsteotomyLevel.HTO, None
    if femur_abn:
        return OsteotomyLevel.DFO, None
    return fallback, (
        f"MPTA {m.mpta_deg:.1f} and mLDFA {m.mldfa_deg:.1f} deg are both within normal: "
        f"the deformity sits in the joint (JLCA {m.jlca_deg:.1f} deg); {fallback} proposed"
    )


def plan_leg(
    leg: LegLandmarks,
    measurements: LegMeasurements,
    spacing_mm: float | None,
    cfg: GeometryConfig | None = None,
    low_confidence: tuple[str, ...] = (),
) -> OsteotomyPlan:
    """Propose an osteotomy for one leg (planning support only).

    ``low_confidence`` names landmarks that were flagged and left out upstream; they are
    reported as a warning.  Raises PlanningError when the correction cannot reach its
    target within the solver's range.
    """
    cfg = cfg or load_geometry_config()
    pl = cfg.planning
    m = measurements
    warnings: list[str] = []
    if low_confidence:
        warnings.append("low landmark confidence: " + ", ".join(low_confidence))
    if m.hka_deg is None:
        return OsteotomyPlan(
            indicated=None,
            level=None,
            reason="not assessable: hka_deg " + m.null_reasons.get("hka_deg", "unavailable"),
            warnings=warnings,
        )
    if abs(m.hka_deg) <= pl.indication_abs_hka_deg:
        return OsteotomyPlan(
            indicated=False,
            level=None,
            reason=f"no correction indicated (|HKA| {abs(m.hka_deg):.1f} <= {pl.indication_abs_hka_deg:g} deg)",
            warnings=warnings,
        )
    varus = m.hka_deg < 0
    target = pl.target_wbl_pct.varus if varus else pl.target_wbl_pct.valgus
    lacking = [k for k in ("mpta_deg", "mldfa_deg", "wbl_ratio_pct") if getattr(m, k) is None]
    if lacking:
        return OsteotomyPlan(
            indicated=True,
            level=None,
            reason="correction indicated but the level cannot be chosen: "
            + "; ".join(f"{k} {m.null_reasons.get(k, 'unavailable')}" for k in lacking),
            target_wbl_pct=target,
            warnings=warnings,
        )

    level, joint_warning = _choose_level(m, varus, cfg)
    if joint_warning:
        warnings.append(joint_warning)
    p = to_canonical(leg)
    if spacing_mm is not None:
        px_per_mm = 1.0 / spacing_mm
    else:
        width_px = float(np.hypot(*(p[PL] - p[PM])))
        px_per_mm = width_px / pl.uncalibrated_plateau_width_mm
        warnings.append(
            "uncalibrated image: angles only, no gap mm; hinge and cut placed assuming a "
            f"{pl.uncalibrated_plateau_width_mm:g} mm plateau width"
        )
    direction = "valgus-producing" if varus else "varus-producing"
    args = (p, leg, cfg, px_per_mm, spacing_mm)

    steps: list[OsteotomyStep] = []
    if level in (OsteotomyLevel.HTO, OsteotomyLevel.DFO):
        step, after = _solve_step(level, direction, "wbl_ratio_pct", target, *args)
        post = measure_leg(_leg_from(after, leg), spacing_mm, cfg)
        post_mpta = post.mpta_deg  # computable: the same landmarks as the pre-op MPTA
        if (
            level == OsteotomyLevel.HTO
            and varus
            and post_mpta is not None
            and post_mpta > pl.max_post_mpta_deg
        ):
            warnings.append(
                f"an isolated HTO would need a post-op MPTA of {post_mpta:.1f} deg "
                f"(> {pl.max_post_mpta_deg:g}): double-level osteotomy proposed"
            )
            level = OsteotomyLevel.DLO
        else:
            steps = [step]
    if level == OsteotomyLevel.DLO:
        femur, after = _solve_step(
            OsteotomyLevel.DFO, direction, "mldfa_deg", pl.dlo_femur_target_mldfa_deg, *args
        )
        tibia, after = _solve_step(
            OsteotomyLevel.HTO,
            direction,
            "wbl_ratio_pct",
            target,
            after,
            leg,
            cfg,
            px_per_mm,
            spacing_mm,
        )
        steps = [femur, tibia]
        post = measure_leg(_leg_from(after, leg), spacing_mm, cfg)

    plan = OsteotomyPlan(
        indicated=True,
        level=level,
        reason=f"{m.category} leg (HKA {m.hka_deg:.1f} deg): {level} {direction}",
        target_wbl_pct=target,
        steps=steps,
        post={k: getattr(post, k) for k in POST_KEYS},
        warnings=warnings,
    )
    if level == OsteotomyLevel.DLO:
        plan.correction_deg = sum(s.correction_deg for s in steps)
    else:
        only = steps[0]
        plan.correction_deg, plan.gap_mm = only.correction_deg, only.gap_mm
        plan.hinge, plan.cut_start = only.hinge, only.cut_start
    if post.mpta_deg is not None and post.mpta_deg > pl.max_post_mpta_deg:
        warnings.append(f"post-op MPTA {post.mpta_deg:.1f} deg > {pl.max_post_mpta_deg:g}")
    for s in steps:
        if s.level == OsteotomyLevel.HTO and s.gap_mm is not None and s.gap_mm > pl.warn_gap_mm:
            warnings.append(f"HTO gap {s.gap_mm:.1f} mm > {pl.warn_gap_mm:g} mm")
        if s.correction_deg > pl.warn_correction_deg:
            warnings.append(
                f"{s.level} correction {s.correction_deg:.1f} deg > {pl.warn_correction_deg:g} deg"
            )
    return plan
