"""COCO keypoint annotations (the format of ``../shared/data/oai-sample``).

One COCO *image* is one film; each *annotation* on it is one leg.  Keys read:

- categories: ``keypoints`` (landmark names; every name must be one of
  ``pipeline.landmarks.LANDMARK_NAMES``, in any order, a subset is allowed).
- images: ``id``, ``file_name`` (relative to ``image_root``; PNG/JPEG/TIFF or DICOM),
  ``width``, ``height``, optional ``pixel_spacing_mm`` (float), ``mirrored`` (bool) and
  ``bits_stored`` (int, scales 16-bit PNGs), as written by ``legalign synth``.
- annotations: ``image_id``, ``category_id``, ``keypoints`` (flat ``[x, y, v, ...]``,
  pixel-centre convention), ``side`` (``"right"``/``"left"``; required).  ``v = 0``
  means "not labelled": the landmark is absent from ``LegLandmarks.points``;
  ``v = 1`` (labelled, occluded) and ``v = 2`` are both kept.

Images without annotations become films with no legs.  Everything except the pixel
data is validated when the dataset is built, so a broken file fails at once with an
``InputError`` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legalign.pipeline.errors import InputError

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


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: malformed JSON (line {exc.lineno}: {exc.msg})") from None


def default_image_root(ann_file: Path) -> Path:
    """``images/`` beside the annotation folder (oai-sample layout), else the file's folder."""
    sibling = ann_file.parent.parent / "images"
    if ann_file.parent.name == "annotations" and sibling.is_dir():
        return sibling
    if (ann_file.parent / "images").is_dir():
        return ann_file.parent / "images"
    return ann_file.parent


class CocoKeypointDataset(RecordDataset):
    """Films from a COCO keypoints JSON file; see the module docstring for the keys."""

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path | None = None,
        cache: bool = False,
        check_files: bool = True,
    ) -> None:
        super().__init__(cache=cache)
        self.ann_file = Path(ann_file)
        self.image_root = (
            Path(image_root) if image_root is not None else default_image_root(self.ann_file)
        )
        self._parse(read_json(self.ann_file), check_files)

    def _parse(self, data: Any, check_files: bool) -> None:
        f = str(self.ann_file)
        if not isinstance(data, dict):
            raise InputError(f"{f}: not a COCO file (top level is not an object)")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise InputError(f"{f}: not a COCO keypoints file (no {key!r} list)")
        categories: dict[Any, list[str]] = {}
        for cat in data["categories"]:
            names = cat.get("keypoints") if isinstance(cat, dict) else None
            if not isinstance(names, list):
                raise InputError(f"{f}: category without a 'keypoints' list")
            categories[cat.get("id")] = [
                check_name(n, f"{f}: category {cat.get('id')!r}") for n in names
            ]
        images: dict[Any, dict[str, Any]] = {}
        for img in data["images"]:
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise InputError(f"{f}: image entry without 'id' or 'file_name'")
            if img["id"] in images:
                raise InputError(f"{f}: duplicate image id {img['id']!r}")
            where = f"{f}: image {img['file_name']!r}"
            width, height = img.get("width"), img.get("height")
            if (width is None) != (height is None) or (
                width is not None
                and not (isinstance(width, int) and isinstance(height, int) and width > 0 < height)
            ):
                raise InputError(f"{where}: bad width/height {width!r} x {height!r}")
            path = self.image_root / img["file_name"]
            if check_files and not path.is_file():
                raise InputError(f"{path}: image file not found (listed in {f})")
            bits = img.get("bits_stored")
            if bits is not None and not (isinstance(bits, int) and 8 <= bits <= 16):
                raise InputError(f"{where}: 'bits_stored' must be an integer 8-16, got {bits!r}")
            mirrored = img.get("mirrored")
            if mirrored is not None and not isinstance(mirrored, bool):
                raise InputError(f"{where}: 'mirrored' must be true/false, got {mirrored!r}")
            images[img["id"]] = {
                "path": path,
                "width": width,
                "height": height,
                "spacing_mm": check_spacing(img.get("pixel_spacing_mm"), where),
                "mirrored": mirrored,
                "bits_stored": bits,
                "legs": [],
                "image_id": img["id"],
            }
        for ann in data["annotations"]:
            if not isinstance(ann, dict):
                raise InputError(f"{f}: annotation is not an object")
            rec = images.get(ann.get("image_id"))
            if rec is None:
                raise InputError(
                    f"{f}: annotation {ann.get('id')!r} refers to unknown image {ann.get('image_id')!r}"
                )
            where = f"{f}: image {rec['path'].name!r} annotation {ann.get('id')!r}"
            names = categories.get(ann.get("category_id"))
            if names is None:
                raise InputError(f"{where}: unknown category {ann.get('category_id')!r}")
            side = check_side(ann.get("side"), where)
            kps = ann.get("keypoints")
            if not isinstance(kps, list) or len(kps) != 3 * len(names):
                raise InputError(
                    f"{where}: 'keypoints' must hold {3 * len(names)} numbers [x, y, v, ...]"
                )
            points: dict[str, tuple[float, float]] = {}
            for i, name in enumerate(names):
                x, y, v = kps[3 * i : 3 * i + 3]
                if not all(
                    isinstance(t, int | float) and not isinstance(t, bool) for t in (x, y, v)
                ):
                    raise InputError(f"{where}: landmark {name!r} has non-numeric values")
                if v == 0:
                    continue
                if v not in (1, 2):
                    raise InputError(f"{where}: landmark {name!r} has visibility {v!r}")
                check_inside(name, float(x), float(y), rec["width"], rec["height"], where)
                points[name] = (float(x), float(y))
            rec["legs"].append(make_leg(side, points, bool(rec["mirrored"]), where))
        for rec in images.values():
            check_legs_unique(rec["legs"], f"{f}: image {rec['path'].name!r}")
            self._records.append(rec)

    def _load(self, index: int) -> AnnotatedFilm:
        rec = self._records[index]
        image = self._cached_image(index, lambda: load_image(rec["path"], rec["bits_stored"]))
        check_image_shape(image, rec["width"], rec["height"], str(rec["path"]))
        if rec["width"] is None:  # no declared size: check the points against the pixels
            check_points_in_image(rec["legs"], image, f"{self.ann_file}: {rec['path'].name}")
        return AnnotatedFilm(
            source=str(rec["path"]),
            image=image,
            legs=list(rec["legs"]),
            spacing_mm=rec["spacing_mm"],
            mirrored=rec["mirrored"],
            meta={"image_id": rec["image_id"], "annotation_file": str(self.ann_file)},
        )
