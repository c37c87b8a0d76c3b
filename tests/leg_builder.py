"""Build landmark sets with chosen angles, for tests (pure geometry, no images).

Canonical frame: X medial, Y distal.  Given hka, mpta and jlca, mldfa follows from the
identity hka = mpta - mldfa - jlca.
"""

from __future__ import annotations

import math

from legalign.pipeline.landmarks import LegLandmarks


def _dir(deg: float) -> tuple[float, float]:
    return (math.cos(math.radians(deg)), math.sin(math.radians(deg)))


def _add(p, v, k=1.0):
    return (p[0] + k * v[0], p[1] + k * v[1])


def build_leg(
    *,
    side: str = "right",
    hka: float = 0.0,
    mpta: float = 87.0,
    jlca: float = 0.0,
    mlpfa: float = 90.0,
    ama: float = 6.0,
    atfa: float = 6.0,
    femur_px: float = 3000.0,
    tibia_px: float = 2500.0,
    condyle_width_px: float = 500.0,
    plateau_width_px: float = 520.0,
    femur_tilt_deg: float = 3.0,
    origin: tuple[float, float] = (700.0, 400.0),
    mirrored: bool = False,
) -> LegLandmarks:
    """A leg with the requested angles; points in image pixels."""
    mldfa = mpta - jlca - hka
    H = (0.0, 0.0)
    phi_f = 90.0 + femur_tilt_deg  # direction of K - H
    K = _add(H, _dir(phi_f), femur_px)
    phi_cond = phi_f - 180.0 - mldfa  # direction of Cl - Cm
    phi_plat = phi_cond - jlca  # direction of Pl - Pm
    phi_t = mpta + phi_plat + 180.0  # direction of A - K
    A = _add(K, _dir(phi_t), tibia_px)
    gap = 0.02 * femur_px
    above = _add(K, _dir(phi_f), -gap / 2)
    below = _add(K, _dir(phi_t), gap / 2)
    Cm = _add(above, _dir(phi_cond), -condyle_width_px / 2)
    Cl = _add(above, _dir(phi_cond), condyle_width_px / 2)
    Pm = _add(below, _dir(phi_plat), -plateau_width_px / 2)
    Pl = _add(below, _dir(phi_plat), plateau_width_px / 2)
    GT = _add(H, _dir(phi_f + mlpfa), 0.12 * femur_px)
    phi_fs = phi_f - ama
    FSD = _add(H, _dir(phi_f), 0.7 * femur_px)
    FSP = _add(FSD, _dir(phi_fs), -0.4 * femur_px)
    TSP = _add(K, _dir(phi_t), 0.25 * tibia_px)
    TSD = _add(TSP, _dir(phi_fs + atfa), 0.5 * tibia_px)
    canonical = {
        "femoral_head": H,
        "femoral_condyle_medial": Cm,
        "femoral_condyle_lateral": Cl,
        "tibial_plateau_medial": Pm,
        "tibial_plateau_lateral": Pl,
        "knee_centre": K,
        "ankle_centre": A,
        "greater_trochanter": GT,
        "femoral_shaft_proximal": FSP,
        "femoral_shaft_distal": FSD,
        "tibial_shaft_proximal": TSP,
        "tibial_shaft_distal": TSD,
    }
    s = 1 if side == "right" else -1
    if mirrored:
        s = -s
    ox, oy = origin
    pts = {n: (ox + s * X, oy + Y) for n, (X, Y) in canonical.items()}
    return LegLandmarks(side=side, points=pts, mirrored=mirrored)


def legs_with_confidence(
    film, conf: float = 0.9, low=None, spread: float | None = None
) -> list[LegLandmarks]:
    """The legs of an annotated (e.g. synthetic) film as predictions: every landmark at
    confidence ``conf``, except ``low = (side, landmark, confidence)``; with ``spread``
    (image px) every landmark carries that heatmap spread (so it gets an error radius)."""
    out = []
    for leg in film.legs:
        c = {n: conf for n in leg.points}
        if low and leg.side == low[0]:
            c[low[1]] = low[2]
        sp = {} if spread is None else dict.fromkeys(leg.points, float(spread))
        out.append(LegLandmarks(leg.side, dict(leg.points), c, leg.mirrored, sp))
    return out
