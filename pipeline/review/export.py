"""``legalign review RESULTS_DIR --export OUT``: the reviewed legs as training labels, and
the run's results with the review state.

Writes into OUT only:

- ``annotations.json``: COCO keypoints (the format ``training.datasets`` reads) with the
  original films' absolute paths as ``file_name``.  A film goes in when every leg on it
  was accepted or amended (the coarse network learns from whole films: an unlabelled leg
  would be taught as background); an amended point replaces the model's, an accepted
  leg's used points are taken as they are, and a low-confidence point nobody moved is
  "not labelled" (v = 0).  Films with a rejected or unreviewed leg are left out and listed
  under ``legalign_review`` with the reason.
- ``results.parquet`` / ``results.csv``: the run's table (docs/results-schema.md) with the
  amended landmarks and the values recomputed from them, plus ``review_state``,
  ``review_reason``, ``reviewer``, ``reviewed_at``, ``review_version`` and
  ``amended_landmarks``.
- ``dicom/<stem>_review_sr.dcm``: for DICOM films, the TID 1500 SR of the reviewed result
  with each leg's review status (and reject reason), the landmarks a reviewer placed
  flagged, and the SR marked VERIFIED by the reviewer once every leg is decided.
- ``review_summary.json``: counts and one line per leg.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LANDMARK_NAMES
from legalign.pipeline.review.service import ReviewService
from legalign.pipeline.review.store import DECIDED, LegState

REVIEW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("review_state", "string"),
    ("review_reason", "string"),
    ("reviewer", "string"),
    ("reviewed_at", "string"),
    ("review_version", "int"),
    ("amended_landmarks", "string"),
)
TRAINING_STATES = ("accepted", "amended")
SR_SERIES_NUMBER = 9803


def _keypoints(leg: dict[str, Any], amended: dict[str, list[float]]) -> list[float]:
    flat: list[float] = []
    landmarks = leg.get("landmarks") or {}
    for name in LANDMARK_NAMES:
        lm = landmarks.get(name)
        if name in amended:
            x, y = amended[name]
            flat += [float(x), float(y), 2]
        elif lm is not None and lm.get("used", True) and lm.get("flag") is None:
            # flagged points (low confidence, outside the film, unusable) are no labels
            flat += [float(lm["x"]), float(lm["y"]), 2]
        else:
            flat += [0.0, 0.0, 0]
    return flat


def export_reviewed(service: ReviewService, out: Path) -> dict[str, Any]:
    out = Path(out).resolve()
    root = service.folder.root
    if out == root or root in out.parents:
        raise InputError(f"{out}: the export folder must not be inside the results folder")
    out.mkdir(parents=True, exist_ok=True)
    states = service.store.all()
    coco: dict[str, Any] = {
        "info": {
            "description": f"legalign review export of {root.name}",
            "legalign_review": True,
        },
        "categories": [{"id": 1, "name": "leg", "keypoints": list(LANDMARK_NAMES)}],
        "images": [],
        "annotations": [],
        "legalign_review": {"excluded": []},
    }
    rows: list[dict[str, Any]] = []
    legs_summary: list[dict[str, Any]] = []
    counts = {"legs_exported": 0, "legs_rejected": 0, "legs_unreviewed": 0, "films": 0}
    sr_errors: dict[str, str] = {}
    from legalign.pipeline.outputs.table import rows_for_image

    for film in service.folder.films.values():
        current = service.current_result(film, states)
        legs = film.legs
        leg_states = {
            leg["side"]: states.get(film.leg_id(leg["side"])) or LegState(film.leg_id(leg["side"]))
            for leg in legs
        }
        for leg in legs:
            st = leg_states[leg["side"]]
            legs_summary.append(
                {
                    "film": str(film.result.get("file")),
                    "side": leg["side"],
                    "state": st.state,
                    "reason": st.reason,
                    "reviewer": st.reviewer,
                    "at": st.updated_at,
                    "amended": sorted(st.points),
                }
            )
            if st.state == "rejected":
                counts["legs_rejected"] += 1
            elif st.state not in DECIDED:
                counts["legs_unreviewed"] += 1
        # --- the results table: every film, reviewed values and review columns
        for row in rows_for_image(current):
            row_state = leg_states.get(row["side"]) if row.get("side") else None
            row.update(
                review_state=row_state.state if row_state else None,
                review_reason=row_state.reason if row_state else None,
                reviewer=row_state.reviewer if row_state else None,
                reviewed_at=row_state.updated_at if row_state else None,
                review_version=row_state.version if row_state else None,
                amended_landmarks=";".join(sorted(row_state.points)) or None if row_state else None,
            )
            rows.append(row)
        # --- COCO: films whose every leg is accepted or amended
        if legs and all(leg_states[leg["side"]].state in TRAINING_STATES for leg in legs):
            if film.source is None:
                coco["legalign_review"]["excluded"].append(
                    {"file": str(film.result.get("file")), "why": film.source_note}
                )
            else:
                image = film.result.get("image") or {}
                image_id = len(coco["images"]) + 1
                entry: dict[str, Any] = {
                    "id": image_id,
                    "file_name": str(film.source),
                    "width": image.get("width"),
                    "height": image.get("height"),
                    "mirrored": bool(image.get("mirrored")),
                }
                if film.result.get("spacing_mm"):
                    entry["pixel_spacing_mm"] = float(film.result["spacing_mm"])
                coco["images"].append(entry)
                for leg in legs:
                    st = leg_states[leg["side"]]
                    coco["annotations"].append(
                        {
                            "id": len(coco["annotations"]) + 1,
                            "image_id": image_id,
                            "category_id": 1,
                            "side": leg["side"],
                            "keypoints": _keypoints(leg, st.points),
                            "num_keypoints": 0,
                            "review_state": st.state,
                            "reviewer": st.reviewer,
                        }
                    )
                    coco["annotations"][-1]["num_keypoints"] = sum(
                        1 for v in coco["annotations"][-1]["keypoints"][2::3] if v
                    )
                    counts["legs_exported"] += 1
                counts["films"] += 1
        elif legs:
            why = "; ".join(
                f"{side}: {st.state}" + (f" ({st.reason})" if st.reason else "")
                for side, st in leg_states.items()
                if st.state not in TRAINING_STATES
            )
            coco["legalign_review"]["excluded"].append(
                {"file": str(film.result.get("file")), "why": why}
            )
        # --- DICOM SR of the reviewed result
        if film.source is not None and _is_dicom(film.source) and legs:
            try:
                _write_sr(film, current, leg_states, out, service.config.reject_reasons)
            except Exception as exc:  # noqa: BLE001 - recorded, the other outputs stand
                sr_errors[film.stem] = str(exc).splitlines()[0] if str(exc) else repr(exc)

    (out / "annotations.json").write_text(json.dumps(coco, indent=1), encoding="utf-8")
    _write_table(rows, out)
    summary = {**counts, "sr_errors": sr_errors, "legs": legs_summary}
    (out / "review_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _is_dicom(path: Path) -> bool:
    from legalign.pipeline.read import detect_kind

    try:
        return detect_kind(path) == "dicom"
    except InputError:
        return False


def _write_sr(
    film: Any,
    current: dict[str, Any],
    leg_states: dict[str, LegState],
    out: Path,
    reasons: list[str],
) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    from legalign.pipeline.outputs.dicom_sr import build_sr
    from legalign.pipeline.outputs.image_json import safe_join

    header = pydicom.dcmread(str(film.source), stop_before_pixels=True)
    review = {
        side: {
            "state": st.state,
            "reason": st.reason,
            "reason_code": f"REJ{reasons.index(st.reason) + 1}" if st.reason in reasons else None,
            "amended": sorted(st.points),
        }
        for side, st in leg_states.items()
    }
    decided = all(st.state in DECIDED for st in leg_states.values())
    reviewers = sorted({st.reviewer for st in leg_states.values() if st.reviewer})
    verifier = "^".join(reviewers[:1]) if decided and reviewers else None
    src = str(header.SOPInstanceUID)
    version = ".".join(str(st.version) for st in leg_states.values())
    ds = build_sr(
        current,
        header,
        series_instance_uid=generate_uid(entropy_srcs=[src, "review-sr-series"]),
        sop_instance_uid=generate_uid(entropy_srcs=[src, "review-sr", version]),
        series_number=SR_SERIES_NUMBER,
        review=review,
        verifier=verifier,
    )
    ds.SeriesDescription = "legalign reviewed alignment measurements (planning support only)"
    (out / "dicom").mkdir(exist_ok=True)
    target = safe_join(out, "dicom", f"{film.stem}_review_sr.dcm")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    ds.save_as(str(tmp), enforce_file_format=True)
    os.replace(tmp, target)


def _write_table(rows: list[dict[str, Any]], out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from legalign.pipeline.outputs.table import COLUMN_NAMES, arrow_schema

    types = {"string": pa.string(), "int": pa.int64()}
    schema = arrow_schema()
    for name, typ in REVIEW_COLUMNS:
        schema = schema.append(pa.field(name, types[typ]))
    names = [*COLUMN_NAMES, *(n for n, _ in REVIEW_COLUMNS)]
    table = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows], schema=schema)
    pq.write_table(table, out / "results.parquet")
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for r in rows:
            w.writerow([_csv(r.get(n)) for n in names])


def _csv(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return v
