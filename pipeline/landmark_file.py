"""Reading the landmark JSON that ``legalign measure`` takes.

Format::

    {"spacing_mm": 0.15 or null,
     "legs": [{"side": "right" or "left", "mirrored": false (optional),
               "landmarks": {"femoral_head": [x, y], ...},
               "confidence": {"femoral_head": 0.98, ...} (optional)}]}

Pixels, x right, y down, origin at the centre of the top-left pixel.  A landmark given
as null is treated as missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from legalign.pipeline.errors import InputError, SpacingError
from legalign.pipeline.geometry import to_canonical
from legalign.pipeline.landmarks import SIDES, LandmarkError, LegLandmarks

# Anatomical side checks: (medial-side landmark, lateral-side landmark).
SIDE_CHECKS = (
    ("femoral_condyle_medial", "femoral_condyle_lateral"),
    ("tibial_plateau_medial", "tibial_plateau_lateral"),
    ("femoral_head", "greater_trochanter"),
)


@dataclass
class LandmarkFile:
    path: str
    spacing_mm: float | None
    legs: list[LegLandmarks]


def check_side(leg: LegLandmarks, where: str) -> None:
    """Raise InputError when the landmarks put medial on the lateral side of the leg."""
    p = to_canonical(leg)
    for medial, lateral in SIDE_CHECKS:
        if medial in p and lateral in p and p[medial][0] < p[lateral][0]:
            raise InputError(
                f"{where}: side {leg.side!r} contradicts the landmarks ({medial} lies lateral "
                f'of {lateral}); wrong side, or a mirrored film (set "mirrored": true)?'
            )


def _spacing(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpacingError(f"{where}: spacing_mm must be a number or null, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise SpacingError(f"{where}: spacing_mm must be a positive finite number, got {value!r}")
    return float(value)


def parse_landmark_document(doc: object, path: str) -> LandmarkFile:
    if not isinstance(doc, dict):
        raise InputError(f"{path}: top level must be a JSON object with a 'legs' list")
    unknown = set(doc) - {"spacing_mm", "legs"}
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    spacing = _spacing(doc.get("spacing_mm"), path)
    legs_doc = doc.get("legs")
    if not isinstance(legs_doc, list) or not legs_doc:
        raise InputError(f"{path}: 'legs' must be a non-empty list")
    legs: list[LegLandmarks] = []
    for i, leg_doc in enumerate(legs_doc):
        where = f"{path}: legs[{i}]"
        if not isinstance(leg_doc, dict):
            raise InputError(f"{where}: must be an object")
        extra = set(leg_doc) - {"side", "mirrored", "landmarks", "confidence"}
        if extra:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        side = leg_doc.get("side")
        if side not in SIDES:
            raise InputError(f"{where}: side must be 'right' or 'left', got {side!r}")
        mirrored = leg_doc.get("mirrored", False)
        if not isinstance(mirrored, bool):
            raise InputError(f"{where}: mirrored must be true or false")
        marks = leg_doc.get("landmarks")
        if not isinstance(marks, dict):
            raise InputError(f"{where}: 'landmarks' must be an object of name: [x, y]")
        points = {}
        for name, xy in marks.items():
            if xy is None:
                continue
            if not isinstance(xy, list | tuple) or len(xy) != 2:
                raise InputError(f"{where}: landmark {name!r} must be [x, y], got {xy!r}")
            points[name] = (xy[0], xy[1])
        conf = leg_doc.get("confidence") or {}
        if not isinstance(conf, dict):
            raise InputError(f"{where}: 'confidence' must be an object of name: value")
        try:
            leg = LegLandmarks(side=side, points=points, confidence=dict(conf), mirrored=mirrored)
        except LandmarkError as exc:
            raise InputError(f"{where}: {exc}") from None
        bad_conf = [n for n in conf if n not in points and n not in marks]
        if bad_conf:
            raise InputError(f"{where}: confidence for unknown landmark(s) {', '.join(bad_conf)}")
        check_side(leg, where)
        legs.append(leg)
    sides = [leg.side for leg in legs]
    if len(sides) != len(set(sides)):
        raise InputError(f"{path}: two legs with the same side ({', '.join(sides)})")
    return LandmarkFile(path=path, spacing_mm=spacing, legs=legs)


def read_landmark_file(path: str | Path) -> LandmarkFile:
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: malformed JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    return parse_landmark_document(doc, path)


def validated_spacing(value: float | None, where: str) -> float | None:
    """A user-given spacing (e.g. --spacing): positive and finite, or None."""
    return _spacing(value, where)
