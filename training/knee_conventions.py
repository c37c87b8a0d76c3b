"""Which knee point matches an angle reference?  HKA under several knee-centre definitions.

    python -m legalign.training.knee_conventions ../shared/data/oai-readers/readers.csv

Locates every film of an angle-only CSV (``file, side, hka_deg``) once, then computes HKA
(``pipeline.measure``'s angle, varus negative) with the femoral and tibial mechanical axes
meeting at different knee points, and prints, for each definition, the agreement with the
reference (bias, SD, mean absolute difference, within 1 deg, Pearson r), and how far the
alternative points lie from ``knee_centre`` (medial positive, image px).  The evidence
table in docs/clinical-geometry.md ("Knee and ankle centre against the OAI readers")
comes from this command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from legalign.pipeline.api import radiograph_from
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.geometry import angle_between_deg, to_canonical
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.locate import Locator
from legalign.training.readers_eval import load_angle_truth

H, K, A = "femoral_head", "knee_centre", "ankle_centre"
CM, CL = "femoral_condyle_medial", "femoral_condyle_lateral"
PM, PL = "tibial_plateau_medial", "tibial_plateau_lateral"

Points = dict[str, np.ndarray]
# name -> (femoral knee point, tibial knee point), from the leg's canonical points
DEFINITIONS: dict[str, tuple[Callable[[Points], np.ndarray], Callable[[Points], np.ndarray]]] = {
    "knee_centre": (lambda p: p[K], lambda p: p[K]),
    "condyle midpoint": (lambda p: (p[CM] + p[CL]) / 2, lambda p: (p[CM] + p[CL]) / 2),
    "plateau midpoint": (lambda p: (p[PM] + p[PL]) / 2, lambda p: (p[PM] + p[PL]) / 2),
    "knee_centre femur, plateau midpoint tibia": (lambda p: p[K], lambda p: (p[PM] + p[PL]) / 2),
}


def hka_with(p: Points, femoral_knee: np.ndarray, tibial_knee: np.ndarray) -> float:
    """HKA (deg, varus negative) with the two axes ending at their own knee points."""
    return angle_between_deg(p[A] - tibial_knee, femoral_knee - p[H])


def agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = pred - ref
    return {
        "n": int(d.size),
        "bias": float(d.mean()),
        "sd": float(d.std(ddof=1)),
        "mad": float(np.abs(d).mean()),
        "within_1": float(np.mean(np.abs(d) <= 1.0)),
        "r": float(np.corrcoef(pred, ref)[0, 1]),
    }


def compare(legs: list[tuple[LegLandmarks, float]]) -> dict[str, dict[str, float]]:
    """(predicted leg, reference HKA) pairs -> agreement per definition (legs lacking a
    point a definition needs are left out of that row)."""
    out = {}
    for name, (fk, tk) in DEFINITIONS.items():
        pred, ref = [], []
        for leg, hka in legs:
            p = to_canonical(leg)
            try:
                pred.append(hka_with(p, fk(p), tk(p)))
            except KeyError:
                continue
            ref.append(hka)
        if len(pred) > 2:
            out[name] = agreement(np.array(pred), np.array(ref))
    return out


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="python -m legalign.training.knee_conventions")
    ap.add_argument("csv", help="angle-only reference CSV (file, side, hka_deg)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    args = ap.parse_args(argv)
    truths = load_angle_truth(args.csv)
    locator = Locator.from_checkpoint(args.model)
    legs = []
    offsets: dict[str, list[float]] = {"condyle midpoint": [], "plateau midpoint": []}
    for path in dict.fromkeys(t.path for t in truths):
        found = locate_radiographs(locator, [radiograph_from(path)])[0]
        for t in (t for t in truths if t.path == path):
            leg = next((g for g in found if g.side == t.side), None)
            if leg is None or not leg.has(H, K, A):
                continue
            legs.append((leg, t.hka_deg))
            p = to_canonical(leg)
            if leg.has(CM, CL):
                offsets["condyle midpoint"].append(float(((p[CM] + p[CL]) / 2 - p[K])[0]))
            if leg.has(PM, PL):
                offsets["plateau midpoint"].append(float(((p[PM] + p[PL]) / 2 - p[K])[0]))
    print(f"{len(legs)} legs; HKA difference = legalign - reference (deg)")
    print(f"{'knee point':<44}{'n':>5}{'bias':>8}{'SD':>7}{'MAD':>7}{'<=1':>7}{'r':>8}")
    for name, s in compare(legs).items():
        print(
            f"{name:<44}{s['n']:>5}{s['bias']:>+8.2f}{s['sd']:>7.2f}{s['mad']:>7.2f}"
            f"{100 * s['within_1']:>6.1f}%{s['r']:>8.3f}"
        )
    for name, v in offsets.items():
        if v:
            print(
                f"{name} - knee_centre, x (medial +): mean {np.mean(v):+.2f} px, SD {np.std(v):.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
