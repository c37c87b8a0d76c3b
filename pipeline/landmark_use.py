"""Which located landmarks are measured from, and when a leg goes to review.

No landmark is dropped for a low confidence any more: a dim or smeared heatmap peak
widens the landmark's error radius and the measurement intervals
(``pipeline.uncertainty``), and a leg whose HKA interval is wider than
``review.max_hka_interval_deg`` (configs/geometry.yaml) is flagged for review while
keeping its best measurement.  A landmark is *not used* only when

- it lies outside the film, or the locator judged its joint cut off by the film's edge
  (``LegLandmarks.outside``) (flag ``outside_film``), or
- it is unusable: its heatmap has no peak to speak of (confidence below
  ``landmarks.unusable_confidence``; flag ``unusable``).

Every measurement that depends on an unused landmark is null with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks

OUTSIDE_FILM = "outside_film"
UNUSABLE = "unusable"


@dataclass
class LandmarkUse:
    """``leg`` restricted to the usable landmarks, and why the others are not used."""

    leg: LegLandmarks
    flags: dict[str, str] = field(default_factory=dict)  # name -> OUTSIDE_FILM / UNUSABLE
    reasons: dict[str, str] = field(default_factory=dict)  # name -> one-line reason


def inside_film(xy: tuple[float, float], width: int | None, height: int | None) -> bool:
    """Pixel centres run 0..width-1; a point within half a pixel of the edge is inside."""
    if width is None or height is None:
        return True
    x, y = xy
    return -0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5


def usable_landmarks(
    leg: LegLandmarks, width: int | None, height: int | None, unusable_confidence: float
) -> LandmarkUse:
    """Split ``leg``'s landmarks into used and not used (see the module docstring)."""
    flags: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for name in LANDMARK_NAMES:
        if name not in leg.points:
            continue
        conf = leg.confidence.get(name)
        if name in leg.outside or not inside_film(leg.points[name], width, height):
            flags[name], reasons[name] = OUTSIDE_FILM, f"{name} outside the film"
        elif conf is not None and float(conf) < unusable_confidence:
            flags[name] = UNUSABLE
            reasons[name] = f"{name} unusable (no heatmap peak, confidence {float(conf):.2f})"
    keep = [n for n in leg.points if n not in flags]
    used = LegLandmarks(
        side=leg.side,
        points={n: leg.points[n] for n in keep},
        confidence={n: leg.confidence[n] for n in keep if n in leg.confidence},
        mirrored=leg.mirrored,
        spread={n: leg.spread[n] for n in keep if n in leg.spread},
        outside=leg.outside,
    )
    return LandmarkUse(used, flags, reasons)


def review_reasons(
    intervals: dict[str, tuple[float, float]], hka_deg: float | None, cfg: Any
) -> list[str]:
    """Why a measured leg should be reviewed: its HKA interval is wider than
    ``cfg.review.max_hka_interval_deg``.  Empty when it need not be."""
    if hka_deg is None or "hka_deg" not in intervals:
        return []
    lo, hi = intervals["hka_deg"]
    limit = float(cfg.review.max_hka_interval_deg)
    if hi - lo > limit:
        return [f"HKA interval {hi - lo:.1f} deg wide (> {limit:g})"]
    return []
