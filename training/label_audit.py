"""How precise are landmark labels that were derived from drawn outlines?

The oai-sample labels were computed from LabelMe bone outlines (``outlines`` in each COCO
annotation), e.g. the femoral head centre is a least-squares circle fitted to the arc of
the femoral head outline.  This audit reports, per annotation file:

- how finely the outlines were drawn (vertices per femur and per tibia outline);
- for the femoral head, the least-squares circle through the outline vertices near the
  labelled centre (within 25 % of their median distance to it), the scatter of those
  vertices about the circle, and the jackknife standard error of the circle's centre:
  how far the label would move if the annotator had clicked one vertex fewer.  It is a
  lower bound of the label noise (it ignores which arc the rule chose and any bias of
  the drawing), in pixels.

    python -m legalign.training.label_audit ../shared/data/oai-sample/annotations/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from legalign.pipeline.errors import InputError


@dataclass(frozen=True)
class HeadArcFit:
    vertices: int  # outline vertices on the head arc
    radius_px: float
    scatter_px: float  # sd of the vertices' distance from the fitted circle
    centre_se_px: float  # jackknife standard error of the centre (radial)
    label_offset_px: float  # fitted centre to the labelled centre


def fit_circle(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic least-squares circle (Kasa) through (N, 2) points: (centre, radius)."""
    a = np.c_[2.0 * points, np.ones(len(points))]
    b = (points**2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:2]
    return centre, float(np.sqrt(sol[2] + centre @ centre))


def head_arc_fit(femur_outline: np.ndarray, head_label: np.ndarray) -> HeadArcFit | None:
    d = np.hypot(*(femur_outline - head_label).T)
    near = d[d < 40.0]
    if len(near) < 4:
        return None
    r0 = float(np.median(near))
    arc = femur_outline[np.abs(d - r0) < 0.25 * r0]
    if len(arc) < 5:
        return None
    centre, radius = fit_circle(arc)
    scatter = float(np.std(np.hypot(*(arc - centre).T) - radius))
    jack = np.array([fit_circle(np.delete(arc, i, axis=0))[0] for i in range(len(arc))])
    n = len(arc)
    se = float(np.sqrt((n - 1) / n * ((jack - jack.mean(axis=0)) ** 2).sum()))
    return HeadArcFit(n, radius, scatter, se, float(np.hypot(*(centre - head_label))))


def audit(path: Path) -> dict:
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        names = coco["categories"][0]["keypoints"]
        anns = coco["annotations"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise InputError(f"{path}: not a COCO keypoints file ({exc})") from None
    if "femoral_head" not in names:
        raise InputError(f"{path}: no femoral_head keypoint")
    k = names.index("femoral_head")
    femur_v, tibia_v, fits = [], [], []
    for ann in anns:
        outlines = ann.get("outlines")
        if not outlines or "femur" not in outlines:
            continue
        femur = np.asarray(outlines["femur"], dtype=np.float64).reshape(-1, 2)
        femur_v.append(len(femur))
        if "tibia" in outlines:
            tibia_v.append(len(outlines["tibia"]) // 2)
        x, y, v = ann["keypoints"][3 * k : 3 * k + 3]
        if v:
            fit = head_arc_fit(femur, np.array([x, y], dtype=np.float64))
            if fit is not None:
                fits.append(fit)
    if not femur_v:
        raise InputError(f"{path}: no annotation has 'outlines' (nothing to audit)")

    def pct(values):
        return [int(v) for v in np.percentile(values, [10, 50, 90])] if values else []

    return {
        "file": str(path),
        "annotations": len(anns),
        "femur_vertices_p10_p50_p90": pct(femur_v),
        "tibia_vertices_p10_p50_p90": pct(tibia_v),
        "head_arcs_fitted": len(fits),
        "head_arc_vertices_mean": float(np.mean([f.vertices for f in fits])) if fits else None,
        "head_scatter_px_mean": float(np.mean([f.scatter_px for f in fits])) if fits else None,
        "head_centre_se_px_median": (
            float(np.median([f.centre_se_px for f in fits])) if fits else None
        ),
        "head_label_offset_px_mean": (
            float(np.mean([f.label_offset_px for f in fits])) if fits else None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m legalign.training.label_audit", description=__doc__
    )
    ap.add_argument("annotations", nargs="+", type=Path, help="COCO keypoints files")
    args = ap.parse_args(argv)
    try:
        for p in args.annotations:
            print(json.dumps(audit(p)))
    except InputError as exc:
        print(f"label_audit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
