"""Landmarks -> alignment measurements (docs/clinical-geometry.md, "Measurements").

All angles are computed in the leg's canonical frame (X medial, Y distal), where with
phi(v) the direction of v:

    hka_deg   = phi(A - K)  - phi(K - H)      varus negative
    mldfa_deg = phi(H - K)  - phi(Cl - Cm)    lateral distal femoral angle
    mpta_deg  = phi(A - K)  - phi(Pm - Pl)    medial proximal tibial angle
    jlca_deg  = phi(Cl - Cm) - phi(Pl - Pm)   positive when the joint lines open laterally
    mlpfa_deg = phi(GT - H) - phi(K - H)
    atfa_deg  = phi(tibial shaft) - phi(femoral shaft)   valgus positive
    ama_deg   = phi(K - H) - phi(femoral shaft)

so that hka = mpta - mldfa - jlca holds identically (modulo 360).  Lengths and MAD are
reported in mm only when a pixel spacing is known; a value that cannot be computed is
None with a reason in ``null_reasons``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from legalign.pipeline.geometry import (
    angle_between_deg,
    check_distinct,
    line_intersection,
    medial_normal,
    to_canonical,
    unit,
)
from legalign.pipeline.geometry_config import GeometryConfig, load_geometry_config
from legalign.pipeline.landmarks import LegLandmarks

H, K, A = "femoral_head", "knee_centre", "ankle_centre"
CM, CL = "femoral_condyle_medial", "femoral_condyle_lateral"
PM, PL = "tibial_plateau_medial", "tibial_plateau_lateral"
GT = "greater_trochanter"
FSP, FSD = "femoral_shaft_proximal", "femoral_shaft_distal"
TSP, TSD = "tibial_shaft_proximal", "tibial_shaft_distal"

# Which landmarks each measurement needs (also used to explain nulls).
REQUIRES: dict[str, tuple[str, ...]] = {
    "hka_deg": (H, K, A),
    "mad_mm": (H, K, A),
    "wbl_ratio_pct": (H, A, PM, PL),
    "mldfa_deg": (H, K, CM, CL),
    "mpta_deg": (K, A, PM, PL),
    "jlca_deg": (CM, CL, PM, PL),
    "mlpfa_deg": (H, K, GT),
    "atfa_deg": (FSP, FSD, TSP, TSD),
    "ama_deg": (H, K, FSP, FSD),
    "femur_length_mm": (H, K),
    "tibia_length_mm": (K, A),
    "leg_length_mm": (H, A),
}
MM_VALUES = ("mad_mm", "femur_length_mm", "tibia_length_mm", "leg_length_mm")
DISTINCT_PAIRS = ((H, K), (K, A), (H, A), (CM, CL), (PM, PL), (FSP, FSD), (TSP, TSD), (H, GT))


@dataclass
class LegMeasurements:
    """Measurements of one leg; None where a value cannot be computed (see null_reasons)."""

    hka_deg: float | None = None
    mad_mm: float | None = None
    wbl_ratio_pct: float | None = None
    mldfa_deg: float | None = None
    mpta_deg: float | None = None
    jlca_deg: float | None = None
    mlpfa_deg: float | None = None
    atfa_deg: float | None = None
    ama_deg: float | None = None
    femur_length_mm: float | None = None
    tibia_length_mm: float | None = None
    leg_length_mm: float | None = None
    category: str | None = None  # "varus", "valgus", "neutral"
    null_reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _hka_category(hka: float, cfg: GeometryConfig) -> str:
    if hka < cfg.classification.varus_below_deg:
        return "varus"
    if hka > cfg.classification.valgus_above_deg:
        return "valgus"
    return "neutral"


def measure_leg(
    leg: LegLandmarks,
    spacing_mm: float | None,
    cfg: GeometryConfig | None = None,
) -> LegMeasurements:
    """Compute every measurement the landmarks of ``leg`` allow.

    Raises ``InputError`` when two landmarks that define a line coincide.
    """
    cfg = cfg or load_geometry_config()
    p = to_canonical(leg)
    check_distinct(p, *DISTINCT_PAIRS)
    m = LegMeasurements()

    for name, needs in REQUIRES.items():
        missing = [n for n in needs if n not in p]
        if missing:
            m.null_reasons[name] = "missing landmark " + ", ".join(missing)
        elif name in MM_VALUES and spacing_mm is None:
            m.null_reasons[name] = "no pixel spacing (angles only)"

    def ok(name: str) -> bool:
        return name not in m.null_reasons

    if ok("hka_deg"):
        m.hka_deg = angle_between_deg(p[A] - p[K], p[K] - p[H])
        m.category = _hka_category(m.hka_deg, cfg)
    if ok("mad_mm"):
        assert spacing_mm is not None  # mm values are null without a spacing (above)
        e = unit(p[A] - p[H], f"{H} and {A}")
        m.mad_mm = float(np.dot(p[H] - p[K], medial_normal(e))) * spacing_mm
    if ok("wbl_ratio_pct"):
        hit = line_intersection(p[H], p[A] - p[H], p[PM], p[PL] - p[PM])
        if hit is None:
            m.null_reasons["wbl_ratio_pct"] = "weight-bearing line parallel to the plateau line"
        else:
            m.wbl_ratio_pct = 100.0 * hit[1]
    if ok("mldfa_deg"):
        m.mldfa_deg = angle_between_deg(p[H] - p[K], p[CL] - p[CM])
    if ok("mpta_deg"):
        m.mpta_deg = angle_between_deg(p[A] - p[K], p[PM] - p[PL])
    if ok("jlca_deg"):
        m.jlca_deg = angle_between_deg(p[CL] - p[CM], p[PL] - p[PM])
    if ok("mlpfa_deg"):
        m.mlpfa_deg = angle_between_deg(p[GT] - p[H], p[K] - p[H])
    if ok("atfa_deg"):
        m.atfa_deg = angle_between_deg(p[TSD] - p[TSP], p[FSD] - p[FSP])
    if ok("ama_deg"):
        m.ama_deg = angle_between_deg(p[K] - p[H], p[FSD] - p[FSP])
    for name, (a, b) in {
        "femur_length_mm": (H, K),
        "tibia_length_mm": (K, A),
        "leg_length_mm": (H, A),
    }.items():
        if ok(name):
            assert spacing_mm is not None  # mm values are null without a spacing (above)
            m.__setattr__(name, float(np.hypot(*(p[a] - p[b]))) * spacing_mm)
    if m.hka_deg is None:
        m.null_reasons["category"] = m.null_reasons["hka_deg"]
    return m
