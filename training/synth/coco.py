"""COCO keypoints for synthetic films, in the format of ``../shared/data/oai-sample``.

One category ``leg`` with the 12 landmark names and the skeleton; one annotation per leg
with its ``side``, ``keypoints`` ``[x, y, 2] * 12`` (pixels, origin at the centre of the
top-left pixel) and the bone ``outlines`` (``femur``, ``tibia``).  Image records carry
``pixel_spacing_mm``, ``mirrored``, ``bits_stored``, ``alignment`` (per side: the
requested and exactly realised HKA/MPTA/mLDFA/JLCA, segment lengths, shape) and the
full generator parameters under ``synth``.
"""

from __future__ import annotations

from typing import Any

from legalign.pipeline.landmarks import LANDMARK_NAMES

SKELETON = [[1, 6], [6, 7], [2, 3], [4, 5], [9, 10], [11, 12]]
CATEGORY = {
    "id": 1,
    "name": "leg",
    "supercategory": "lower_limb",
    "keypoints": list(LANDMARK_NAMES),
    "skeleton": SKELETON,
}


def new_coco(description: str) -> dict[str, Any]:
    return {
        "info": {"description": description},
        "categories": [dict(CATEGORY)],
        "images": [],
        "annotations": [],
    }


def add_film(coco: dict[str, Any], film: Any, file_name: str, **extra: Any) -> int:
    """Append ``film`` (a ``SyntheticFilm``) as one image and one annotation per leg."""
    image_id = len(coco["images"]) + 1
    h, w = film.image.shape
    coco["images"].append(
        {
            "id": image_id,
            "file_name": file_name,
            "width": int(w),
            "height": int(h),
            "pixel_spacing_mm": float(film.spacing_mm),
            "mirrored": bool(film.mirrored),
            "bits_stored": int(film.bits_stored),
            "alignment": film.params.get("alignment", {}),
            **extra,
            "synth": {k: v for k, v in film.params.items() if k != "alignment"},
        }
    )
    for leg in film.legs:
        kps: list[float] = []
        xs, ys = [], []
        for name in LANDMARK_NAMES:
            x, y = leg.points[name]
            kps += [round(float(x), 4), round(float(y), 4), 2]
            xs.append(x)
            ys.append(y)
        outlines = getattr(film, "outlines", {}).get(leg.side, {})
        for poly in outlines.values():
            xs += poly[0::2]
            ys += poly[1::2]
        x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
        x1, y1 = min(max(xs), w - 1.0), min(max(ys), h - 1.0)
        bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
        coco["annotations"].append(
            {
                "id": len(coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "side": leg.side,
                "mirrored": bool(leg.mirrored),
                "keypoints": kps,
                "num_keypoints": len(LANDMARK_NAMES),
                "bbox": bbox,
                "area": round(bbox[2] * bbox[3], 2),
                "outlines": outlines,
            }
        )
    return image_id
