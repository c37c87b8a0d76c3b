"""Fit ``configs/uncertainty.yaml``: landmark error scales and the clinical scale factor.

    python -m legalign.training.calibration \\
        --landmarks ../shared/data/oai-sample/annotations/val.json \\
        --readers ../shared/data/oai-readers/readers.csv --out configs/uncertainty.yaml

1. **Landmark scales** (``landmark_scale``), on films with landmark labels the model did
   not train on (the oai-sample val split): for each landmark, the root mean square of
   ``|error| / sqrt(2)`` divided by its heatmap term ``spread_px / confidence**gamma``
   (``pipeline.uncertainty``), i.e. the maximum-likelihood scale of an isotropic
   Gaussian error proportional to that term.
2. **Scale factor** (``scale``), on the *calibration part* of an angle-only reference
   (the OAI readers' HKA; the films are split reproducibly by ``readers_split``): split
   conformal calibration of the HKA interval.  With ``s_i`` the HKA SD propagated from
   the landmark scales and ``d_i`` the difference from the reference, ``scale`` is the
   ``ceil((n + 1) * level)``-th smallest ``|d_i| / s_i``, divided by the normal quantile
   ``z``, so that ``level`` of the calibration legs fall inside their interval.  The other
   part is held out: ``legalign evaluate CKPT readers.csv --part heldout`` reports the
   coverage and the accuracy there.

The YAML it writes records the command, the data and the figures of both steps.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from legalign.pipeline.api import radiograph_from
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks
from legalign.pipeline.locate import Locator
from legalign.pipeline.measure import measure_leg
from legalign.pipeline.uncertainty import (
    ReadersSplit,
    UncertaintyConfig,
    landmark_sd_px,
    measurement_sds,
)
from legalign.training.datasets import load_dataset
from legalign.training.evaluate import match_legs
from legalign.training.readers_eval import load_angle_truth, readers_part


def landmark_scales(
    pairs: list[tuple[LegLandmarks, LegLandmarks]], gamma: float, min_confidence: float
) -> dict[str, dict[str, float]]:
    """(truth, prediction) legs -> per landmark {scale, n, rms_px}."""
    ratios: dict[str, list[float]] = {}
    errs: dict[str, list[float]] = {}
    for truth, pred in pairs:
        for name, xy in truth.points.items():
            if name not in pred.points or name not in pred.spread:
                continue
            e2 = float(np.sum(np.subtract(xy, pred.points[name]) ** 2))
            c = max(float(pred.confidence.get(name, 0.0)), min_confidence)
            term = float(pred.spread[name]) / c**gamma
            ratios.setdefault(name, []).append(e2 / 2.0 / term**2)
            errs.setdefault(name, []).append(e2)
    return {
        n: {
            "scale": math.sqrt(float(np.mean(r))),
            "n": len(r),
            "rms_px": math.sqrt(float(np.mean(errs[n]))),
        }
        for n, r in ratios.items()
    }


def conformal_scale(abs_diff: np.ndarray, sd: np.ndarray, level: float) -> float:
    """Split-conformal scale: the ceil((n+1) level)-th smallest |d|/sd over z(level)."""

    z = NormalDist().inv_cdf(0.5 + level / 2)
    ratio = np.sort(np.asarray(abs_diff, dtype=np.float64) / np.asarray(sd, dtype=np.float64))
    k = min(len(ratio), math.ceil((len(ratio) + 1) * level)) - 1
    return float(ratio[k]) / z


def fit(args: argparse.Namespace) -> dict[str, Any]:

    geometry = load_geometry_config(args.geometry_config)
    locator = Locator.from_checkpoint(args.model)

    # 1. landmark scales on landmark labels
    ds = load_dataset(args.landmarks)
    pairs = []
    for i in range(len(ds)):
        film = ds[i]
        pred = locate_radiographs(locator, [film.to_radiograph(None, None)])[0]
        for truth, p in match_legs(film.legs, pred)[0]:
            if p is not None:
                pairs.append((truth, p))
    scales = landmark_scales(pairs, args.confidence_exponent, args.min_confidence)

    # 2. conformal scale on the readers' calibration part
    truths = load_angle_truth(args.readers)
    films = list(dict.fromkeys(t.path for t in truths))
    keep = {
        films[i]
        for i in readers_part(
            len(films), "calibration", args.fraction, args.seed, args.angle_fraction
        )
    }
    unit = UncertaintyConfig(
        level=args.level,
        confidence_exponent=args.confidence_exponent,
        min_confidence=args.min_confidence,
        scale=1.0,
        landmark_scale={n: s["scale"] for n, s in scales.items()},
        readers_split=ReadersSplit(args.seed, args.fraction, args.angle_fraction),
        fitted_by="",
        fitted_on="",
    )
    diffs, sds = [], []
    for path in sorted(keep):
        legs = locate_radiographs(locator, [radiograph_from(path)])[0]
        for t in (t for t in truths if t.path == path):
            leg = next((g for g in legs if g.side == t.side), None)
            if leg is None:
                continue
            hka = measure_leg(leg, None, geometry).hka_deg
            sd = measurement_sds(leg, None, landmark_sd_px(leg, unit), geometry).get("hka_deg")
            if hka is None or sd is None:
                continue
            diffs.append(abs(hka - t.hka_deg))
            sds.append(sd)
    scale = conformal_scale(np.array(diffs), np.array(sds), args.level)
    return {
        "scales": scales,
        "scale": scale,
        "n_landmark_legs": len(pairs),
        "n_calibration_legs": len(diffs),
    }


def to_yaml(result: dict[str, Any], args: argparse.Namespace, command: str) -> str:

    lines = [
        "# Landmark error model and interval calibration (pipeline/uncertainty.py).",
        "# Written by training/calibration.py; do not edit by hand, re-fit instead:",
        f"#   {command}",
        f"# Landmark scales: {result['n_landmark_legs']} legs of {args.landmarks}",
        "#   (films the model did not train on); per landmark: n, RMS radial error px.",
        f"# scale: split conformal on {result['n_calibration_legs']} legs, the calibration",
        f"#   part of {args.readers} (readers_split below); the angle part trains the",
        "#   angle stage (configs/train_angle.yaml) when there is one; the rest is held out:",
        "#   legalign evaluate CKPT readers.csv --part heldout",
        f"level: {args.level:g}                  # interval level; error radii hold the point this often",
        f"confidence_exponent: {args.confidence_exponent:g}    # sd grows as confidence**-exponent",
        f"min_confidence: {args.min_confidence:g}        # confidences below count as this",
        f"scale: {result['scale']:.4f}              # clinical scale factor (conformal, readers' HKA)",
        "landmark_scale:             # per-axis sd = scale * this * spread_px / confidence**exponent",
    ]
    for name in LANDMARK_NAMES:
        s = result["scales"].get(name)
        if s is not None:
            lines.append(f"  {name}: {s['scale']:.4f}    # n {s['n']}, RMS {s['rms_px']:.2f} px")
    lines += [
        "readers_split:              # how the films of the angle CSV are split",
        f"  seed: {args.seed}",
        f"  calibration_fraction: {args.fraction:g}   # not held out: angle + calibration parts",
        f"  angle_fraction: {args.angle_fraction:g}         # of those, the angle stage's films",
        f'fitted_by: "{command}"',
        f'fitted_on: "landmarks: {Path(args.landmarks).name}; scale: calibration part of '
        f'{Path(args.readers).parent.name}/{Path(args.readers).name}"',
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m legalign.training.calibration", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--landmarks", required=True, help="landmark-labelled films (COCO .json etc.)")
    ap.add_argument(
        "--readers", required=True, help="angle-only reference CSV (file, side, hka_deg)"
    )
    ap.add_argument("--out", required=True, help="YAML to write (e.g. configs/uncertainty.yaml)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9)")
    ap.add_argument("--confidence-exponent", type=float, default=1.0)
    ap.add_argument("--min-confidence", type=float, default=0.05)
    ap.add_argument("--fraction", type=float, default=0.5, help="share of films used to calibrate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the readers split")
    ap.add_argument(
        "--angle-fraction",
        type=float,
        default=0.0,
        help="share of the not-held-out films kept for the angle stage (default 0: none)",
    )
    ap.add_argument("--geometry-config", default=None)
    args = ap.parse_args(argv)
    command = "python -m legalign.training.calibration " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    result = fit(args)
    text = to_yaml(result, args, command)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
