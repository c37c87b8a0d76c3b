"""LabelMe point annotations: one ``*.json`` per film in a folder.

Convention (LabelMe 4/5 JSON):

- Each landmark is a shape with ``"shape_type": "point"`` and one point ``[[x, y]]``.
  Shapes of other types (outlines, polygons) are ignored.
- The label is ``"<side>/<landmark>"``, e.g. ``"right/femoral_head"`` or
  ``"left/knee_centre"``; or just ``"<landmark>"``, and the side then comes from the
  shape's ``flags`` (``{"right": true}`` or ``{"left": true}``), else from the file's
  top-level ``flags``, else from a top-level ``"side"`` key.  A point whose side cannot
  be decided is an error.
- ``imagePath`` is relative to the JSON file; ``imageWidth`` / ``imageHeight`` are used
  to check that points lie inside the image.  Optional top-level keys
  ``pixel_spacing_mm`` (float) and ``mirrored`` (bool) are read when present.
- **Coordinates.** LabelMe draws pixel ``i`` over ``[i, i + 1)``, so its coordinates
  have the origin at the top-left *corner* of the image.  By default
  (``pixel_origin="corner"``) 0.5 is subtracted to reach the project's pixel-centre
  convention; pass ``pixel_origin="centre"`` for files written in pixel-centre
  coordinates (e.g. exported by this project).
- A landmark without a point is missing (masked in the loss).  The same landmark twice
  on one leg is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import SIDES

from .base import (
    AnnotatedFilm,
    RecordDataset,
    check_image_shape,
    check_inside,
    check_legs_unique,
    check_name,
    check_points_in_image,
    check_side,
    check_spacing,
    load_image,
    make_leg,
)
from .coco import read_json


def _side_from_flags(flags: Any) -> str | None:
    if not isinstance(flags, dict):
        return None
    on = [s for s in SIDES if flags.get(s) is True]
    if len(on) == 1:
        return on[0]
    return None


def parse_labelme(
    path: Path, data: Any, pixel_origin: Literal["corner", "centre"] = "corner"
) -> dict[str, Any]:
    """Validate one LabelMe document; return a record with path, size, legs, spacing."""
    f = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise InputError(f"{f}: not a LabelMe file (no 'shapes' list)")
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise InputError(f"{f}: no 'imagePath'")
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if width is not None or height is not None:
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 < height):
            raise InputError(f"{f}: bad imageWidth/imageHeight {width!r} x {height!r}")
    mirrored = data.get("mirrored")
    if mirrored is not None and not isinstance(mirrored, bool):
        raise InputError(f"{f}: 'mirrored' must be true/false, got {mirrored!r}")
    file_side = _side_from_flags(data.get("flags"))
    if file_side is None and data.get("side") is not None:
        file_side = check_side(data.get("side"), f)
    shift = 0.5 if pixel_origin == "corner" else 0.0
    legs: dict[str, dict[str, tuple[float, float]]] = {}
    for k, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            raise InputError(f"{f}: shape {k} is not an object")
        if shape.get("shape_type", "point") != "point":
            continue
        label = shape.get("label")
        if not isinstance(label, str):
            raise InputError(f"{f}: shape {k} has no label")
        if "/" in label:
            side_text, name = label.split("/", 1)
            side: str | None = check_side(side_text, f"{f}: point {label!r}")
        else:
            name = label
            side = _side_from_flags(shape.get("flags")) or file_side
            if side is None:
                raise InputError(
                    f"{f}: point {label!r} has no side (label 'right/{label}' or set a side flag)"
                )
        name = check_name(name, f)
        pts = shape.get("points")
        if (
            not isinstance(pts, list)
            or len(pts) != 1
            or not isinstance(pts[0], list | tuple)
            or len(pts[0]) != 2
            or not all(isinstance(t, int | float) and not isinstance(t, bool) for t in pts[0])
        ):
            raise InputError(f"{f}: point {label!r} must hold exactly one [x, y]")
        x, y = float(pts[0][0]) - shift, float(pts[0][1]) - shift
        check_inside(name, x, y, width, height, f)
        assert side is not None  # checked above
        leg = legs.setdefault(side, {})
        if name in leg:
            raise InputError(f"{f}: landmark {name!r} given twice for the {side} leg")
        leg[name] = (x, y)
    leg_list = [make_leg(side, pts, bool(mirrored), f) for side, pts in legs.items()]
    check_legs_unique(leg_list, f)
    return {
        "json": path,
        "path": (path.parent / image_path),
        "width": width,
        "height": height,
        "spacing_mm": check_spacing(data.get("pixel_spacing_mm"), f),
        "mirrored": mirrored,
        "legs": leg_list,
    }


class LabelMeDataset(RecordDataset):
    """Every ``*.json`` in ``folder`` (sorted by name) as one film; see the module docstring."""

    def __init__(
        self,
        folder: str | Path,
        pixel_origin: Literal["corner", "centre"] = "corner",
        cache: bool = False,
        check_files: bool = True,
    ) -> None:
        super().__init__(cache=cache)
        if pixel_origin not in ("corner", "centre"):
            raise ValueError(f"pixel_origin must be 'corner' or 'centre', got {pixel_origin!r}")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: not a folder")
        files = sorted(self.folder.glob("*.json"))
        if not files:
            raise InputError(f"{self.folder}: no LabelMe .json files")
        for path in files:
            rec = parse_labelme(path, read_json(path), pixel_origin)
            if check_files and not rec["path"].is_file():
                raise InputError(f"{rec['path']}: image file not found (listed in {path})")
            self._records.append(rec)

    def _load(self, index: int) -> AnnotatedFilm:
        rec = self._records[index]
        image = self._cached_image(index, lambda: load_image(rec["path"]))
        check_image_shape(image, rec["width"], rec["height"], str(rec["json"]))
        if rec["width"] is None:
            check_points_in_image(rec["legs"], image, str(rec["json"]))
        return AnnotatedFilm(
            source=str(rec["path"]),
            image=image,
            legs=list(rec["legs"]),
            spacing_mm=rec["spacing_mm"],
            mirrored=rec["mirrored"],
            meta={"annotation_file": str(rec["json"])},
        )
