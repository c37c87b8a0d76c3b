"""Rounding of every number legalign writes (JSON, table, SR), documented in
docs/results-schema.md ("Precision").

Floats carry more digits than the method supports (``0.16799999999999998``).  The
rule, by the name of the value:

- confidences (``confidence``, ``*_conf``, ``min_confidence``): 3 decimals;
- pixel spacing (``spacing_mm``): 6 decimals (it multiplies every mm value);
- stage timings (inside ``timings_s``): 4 decimals (seconds);
- everything else (pixel coordinates, degrees, millimetres, percentages): 2 decimals,
  i.e. 0.01 px / deg / mm / %, ten times finer than the method's accuracy.
"""

from __future__ import annotations

import math
from typing import Any

DECIMALS_DEFAULT = 2
DECIMALS_CONFIDENCE = 3
DECIMALS_SPACING = 6
DECIMALS_TIMING = 4


def decimals_for(key: str | None, parent: str | None = None) -> int:
    if parent == "timings_s":
        return DECIMALS_TIMING
    k = key or ""
    if k == "confidence" or k.endswith("_conf") or k == "min_confidence":
        return DECIMALS_CONFIDENCE
    if k == "low_confidence" or parent == "low_confidence":
        return DECIMALS_CONFIDENCE
    if k == "spacing_mm":
        return DECIMALS_SPACING
    return DECIMALS_DEFAULT


def round_value(value: float, key: str | None = None, parent: str | None = None) -> float | None:
    """``value`` rounded for ``key``; non-finite values become None (JSON has no NaN)."""
    v = float(value)
    if not math.isfinite(v):
        return None
    r = round(v, decimals_for(key, parent))
    return 0.0 if r == 0 else r  # no "-0.0"


def rounded(obj: Any, key: str | None = None, parent: str | None = None) -> Any:
    """A copy of a result structure with every float rounded by its key."""
    if isinstance(obj, dict):
        return {str(k): rounded(v, str(k), key) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, key, parent) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, float):
        return round_value(obj, key, parent)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return rounded(obj.item(), key, parent)
    return obj
