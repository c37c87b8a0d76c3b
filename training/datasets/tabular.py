"""A simple long-format CSV of landmarks: one row per landmark.

Columns (header required, order free, extra columns ignored):

=============  ========  =====================================================
column         required  meaning
=============  ========  =====================================================
``image``      yes       image path, relative to the CSV's folder (or absolute)
``side``       yes       ``right`` or ``left``
``landmark``   yes       one of ``pipeline.landmarks.LANDMARK_NAMES``
``x``, ``y``   yes       pixels, origin at the *centre* of the top-left pixel;
                         both empty = landmark not labelled (same as no row)
``spacing_mm`` no        isotropic pixel spacing in mm (same on every row of an image)
``mirrored``   no        ``true``/``false`` (same on every row of an image)
=============  ========  =====================================================

Films appear in the order their image first appears.  A landmark that has no row is
missing and masked in the loss.  Errors name the CSV file and its line.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from PIL import Image

from legalign.pipeline.errors import InputError

from .base import (
    AnnotatedFilm,
    RecordDataset,
    check_image_shape,
    check_inside,
    check_legs_unique,
    check_name,
    check_side,
    check_spacing,
    load_image,
    make_leg,
)

REQUIRED_COLUMNS = ("image", "side", "landmark", "x", "y")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels, or None."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - unknown header: check after decoding instead
        return None


class CsvDataset(RecordDataset):
    """Films from a long-format landmark CSV; see the module docstring for the columns."""

    def __init__(self, csv_file: str | Path, cache: bool = False, check_files: bool = True):
        super().__init__(cache=cache)
        self.csv_file = Path(csv_file)
        f = str(self.csv_file)
        try:
            handle = self.csv_file.open(newline="", encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{f}: file not found") from None
        except OSError as exc:
            raise InputError(f"{f}: cannot read ({exc})") from None
        records: dict[str, dict[str, Any]] = {}
        with handle:
            try:
                reader = csv.DictReader(handle)
                header = [h.strip() for h in (reader.fieldnames or [])]
                missing = [c for c in REQUIRED_COLUMNS if c not in header]
                if missing:
                    raise InputError(f"{f}: missing column(s) {', '.join(missing)}")
                reader.fieldnames = header
                for row in reader:
                    self._add_row(records, row, f"{f}:{reader.line_num}")
            except csv.Error as exc:
                raise InputError(f"{f}: malformed CSV ({exc})") from None
            except UnicodeDecodeError:
                raise InputError(f"{f}: not a UTF-8 text file") from None
        for rec in records.values():
            where = f"{f}: image {rec['image']!r}"
            if check_files:
                if not rec["path"].is_file():
                    raise InputError(f"{rec['path']}: image file not found (listed in {f})")
                size = image_size(rec["path"])
                if size is not None:
                    rec["width"], rec["height"] = size
            legs = []
            for side, pts in rec["points"].items():
                for name, (x, y) in pts.items():
                    check_inside(name, x, y, rec["width"], rec["height"], where)
                legs.append(make_leg(side, pts, bool(rec["mirrored"]), where))
            check_legs_unique(legs, where)
            rec["legs"] = legs
            self._records.append(rec)

    def _add_row(self, records: dict[str, dict[str, Any]], row: dict, where: str) -> None:
        def cell(key: str) -> str:
            value = row.get(key)
            return "" if value is None else str(value).strip()

        image = cell("image")
        if not image:
            if not any(cell(k) for k in REQUIRED_COLUMNS):
                return  # blank line
            raise InputError(f"{where}: empty 'image'")
        side = check_side(cell("side"), where)
        name = check_name(cell("landmark"), where)
        rec = records.get(image)
        if rec is None:
            path = Path(image)
            if not path.is_absolute():
                path = self.csv_file.parent / path
            rec = records[image] = {
                "image": image,
                "path": path,
                "width": None,
                "height": None,
                "spacing_mm": None,
                "mirrored": None,
                "points": {},
            }
        if "spacing_mm" in row and cell("spacing_mm"):
            spacing = check_spacing(cell("spacing_mm"), where)
            if rec["spacing_mm"] is not None and abs(rec["spacing_mm"] - spacing) > 1e-9:
                raise InputError(f"{where}: spacing_mm differs from earlier rows of {image!r}")
            rec["spacing_mm"] = spacing
        if "mirrored" in row and cell("mirrored"):
            text = cell("mirrored").lower()
            if text not in _TRUE | _FALSE:
                raise InputError(f"{where}: 'mirrored' must be true/false, got {text!r}")
            value = text in _TRUE
            if rec["mirrored"] is not None and rec["mirrored"] != value:
                raise InputError(f"{where}: 'mirrored' differs from earlier rows of {image!r}")
            rec["mirrored"] = value
        xs, ys = cell("x"), cell("y")
        if not xs and not ys:
            return
        try:
            x, y = float(xs), float(ys)
        except ValueError:
            raise InputError(
                f"{where}: landmark {name!r} has bad coordinates {xs!r}, {ys!r}"
            ) from None
        check_inside(name, x, y, None, None, where)
        pts = rec["points"].setdefault(side, {})
        if name in pts:
            raise InputError(f"{where}: landmark {name!r} given twice for the {side} leg")
        pts[name] = (x, y)

    def _load(self, index: int) -> AnnotatedFilm:
        rec = self._records[index]
        image = self._cached_image(index, lambda: load_image(rec["path"]))
        where = f"{self.csv_file}: image {rec['image']!r}"
        if rec["width"] is not None:
            check_image_shape(image, rec["width"], rec["height"], where)
        else:
            h, w = image.shape[:2]
            for leg in rec["legs"]:
                for name, (x, y) in leg.points.items():
                    check_inside(name, x, y, w, h, where)
        return AnnotatedFilm(
            source=str(rec["path"]),
            image=image,
            legs=list(rec["legs"]),
            spacing_mm=rec["spacing_mm"],
            mirrored=rec["mirrored"],
            meta={"annotation_file": str(self.csv_file)},
        )
