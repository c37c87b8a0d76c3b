"""The results table: one row per leg (or one row per failed file), parquet and csv.

Rows are built from the per-image result dicts (``ImageResult.to_dict()``), so the table
can be rebuilt at any time from the run's journal.  The column list and types are fixed
here (an all-null column keeps its type); docs/results-schema.md documents every column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from legalign.pipeline.landmarks import LANDMARK_NAMES
from legalign.pipeline.measure import REQUIRES
from legalign.pipeline.outputs.image_json import temp_name
from legalign.pipeline.outputs.precision import round_value
from legalign.pipeline.plan import POST_KEYS
from legalign.pipeline.results import DISCLAIMER
from legalign.pipeline.safe_text import csv_cell, printable

# Every numeric measurement of pipeline/measure.py, in its order; the plan's post-op keys.
MEASUREMENT_COLUMNS: tuple[str, ...] = tuple(REQUIRES)

# (name, type) with type one of "string", "float", "int", "bool"
COLUMNS: tuple[tuple[str, str], ...] = (
    ("file", "string"),
    ("sop_instance_uid", "string"),
    ("study_instance_uid", "string"),
    ("side", "string"),
    ("status", "string"),
    ("image_status", "string"),
    ("error_reason", "string"),
    ("error", "string"),
    ("width", "int"),
    ("height", "int"),
    ("modality", "string"),
    ("spacing_mm", "float"),
    ("spacing_source", "string"),
    ("side_source", "string"),
    ("mirrored", "bool"),
    ("n_legs", "int"),
    *[
        col
        for n in LANDMARK_NAMES
        for col in (
            (f"{n}_x", "float"),
            (f"{n}_y", "float"),
            (f"{n}_conf", "float"),
            (f"{n}_used", "bool"),
            (f"{n}_radius_px", "float"),
            (f"{n}_radius_mm", "float"),
        )
    ],
    ("min_confidence", "float"),
    ("low_confidence", "string"),
    *[(m, "float") for m in MEASUREMENT_COLUMNS],
    *[col for m in MEASUREMENT_COLUMNS for col in ((f"{m}_lo", "float"), (f"{m}_hi", "float"))],
    ("interval_level", "float"),
    ("review", "bool"),
    ("review_reasons", "string"),
    ("category", "string"),
    ("lld_mm", "float"),
    ("plan_indicated", "bool"),
    ("plan_level", "string"),
    ("plan_reason", "string"),
    ("plan_target_wbl_pct", "float"),
    ("plan_correction_deg", "float"),
    ("plan_gap_mm", "float"),
    ("plan_hinge_x", "float"),
    ("plan_hinge_y", "float"),
    ("plan_cut_start_x", "float"),
    ("plan_cut_start_y", "float"),
    ("plan_steps", "string"),
    *[(f"plan_post_{k}", "float") for k in POST_KEYS],
    ("plan_warnings", "string"),
    ("null_reasons", "string"),
    ("warnings", "string"),
    ("output_errors", "string"),
    ("model", "string"),
    ("disclaimer", "string"),
    ("json_path", "string"),
    ("overlay_path", "string"),
    ("sr_path", "string"),
    ("sc_path", "string"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c for c, _ in COLUMNS)


def _xy(v: Any) -> tuple[float | None, float | None]:
    if v is None:
        return None, None
    return float(v[0]), float(v[1])


def rows_for_image(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one image result dict: one per leg, or one for a failed file."""
    image = d.get("image") or {}
    outputs = d.get("outputs") or {}
    base: dict[str, Any] = {
        "file": d.get("file"),
        "sop_instance_uid": d.get("sop_instance_uid"),
        "study_instance_uid": d.get("study_instance_uid"),
        "image_status": d.get("status"),
        "error_reason": d.get("error_reason"),
        "error": d.get("error"),
        "width": image.get("width"),
        "height": image.get("height"),
        "modality": image.get("modality"),
        "spacing_mm": d.get("spacing_mm"),
        "spacing_source": d.get("spacing_source"),
        "lld_mm": d.get("lld_mm"),
        "model": d.get("model"),
        "disclaimer": DISCLAIMER,
        "warnings": "; ".join(d.get("warnings") or []) or None,
        "output_errors": "; ".join(f"{k}: {v}" for k, v in (d.get("output_errors") or {}).items())
        or None,
        "n_legs": len(d.get("legs") or []),
        "json_path": outputs.get("json"),
        "overlay_path": outputs.get("overlay"),
        "sr_path": outputs.get("sr"),
        "sc_path": outputs.get("sc"),
    }
    legs = d.get("legs") or []
    if not legs:
        row = dict(base)
        row["status"] = d.get("status")
        if d.get("null_reasons"):
            row["null_reasons"] = json.dumps(d["null_reasons"], sort_keys=True)
        return [_complete(row)]
    rows = []
    for leg in legs:
        row = dict(base)
        row["side"] = leg.get("side")
        row["status"] = leg.get("status")
        row["side_source"] = leg.get("side_source")
        row["mirrored"] = leg.get("mirrored")
        confs = []
        for name, lm in (leg.get("landmarks") or {}).items():
            row[f"{name}_x"] = lm.get("x")
            row[f"{name}_y"] = lm.get("y")
            row[f"{name}_conf"] = lm.get("confidence")
            row[f"{name}_used"] = lm.get("used")
            row[f"{name}_radius_px"] = lm.get("error_radius_px")
            row[f"{name}_radius_mm"] = lm.get("error_radius_mm")
            if lm.get("confidence") is not None:
                confs.append(float(lm["confidence"]))
        row["min_confidence"] = min(confs) if confs else None
        low = leg.get("low_confidence") or {}
        row["low_confidence"] = ";".join(sorted(low)) or None
        meas = leg.get("measurements") or {}
        intervals = leg.get("intervals") or {}
        for m in MEASUREMENT_COLUMNS:
            row[m] = meas.get(m)
            row[f"{m}_lo"], row[f"{m}_hi"] = _xy(intervals.get(m))
        row["interval_level"] = leg.get("interval_level")
        row["review"] = leg.get("review")
        row["review_reasons"] = "; ".join(leg.get("review_reasons") or []) or None
        row["category"] = meas.get("category")
        plan = leg.get("plan")
        if plan:
            row["plan_indicated"] = plan.get("indicated")
            row["plan_level"] = plan.get("level")
            row["plan_reason"] = plan.get("reason")
            row["plan_target_wbl_pct"] = plan.get("target_wbl_pct")
            row["plan_correction_deg"] = plan.get("correction_deg")
            row["plan_gap_mm"] = plan.get("gap_mm")
            row["plan_hinge_x"], row["plan_hinge_y"] = _xy(plan.get("hinge"))
            row["plan_cut_start_x"], row["plan_cut_start_y"] = _xy(plan.get("cut_start"))
            steps = plan.get("steps") or []
            row["plan_steps"] = json.dumps(steps, sort_keys=True) if steps else None
            post = plan.get("post") or {}
            for k in POST_KEYS:
                row[f"plan_post_{k}"] = post.get(k)
            row["plan_warnings"] = "; ".join(plan.get("warnings") or []) or None
        reasons = dict(leg.get("null_reasons") or {})
        if d.get("null_reasons"):
            reasons.update({k: v for k, v in d["null_reasons"].items() if k not in reasons})
        row["null_reasons"] = json.dumps(reasons, sort_keys=True) if reasons else None
        rows.append(_complete(row))
    return rows


def _cast(value: Any, typ: str, name: str = "") -> Any:
    if value is None:
        return None
    if typ == "float":
        return round_value(value, name)
    if typ == "int":
        return int(value)
    if typ == "bool":
        return bool(value)
    return printable(value)


def _complete(row: dict[str, Any]) -> dict[str, Any]:
    """Every column, typed; floats rounded (precision.py); strings valid Unicode with
    control characters escaped (safe_text.py)."""
    return {name: _cast(row.get(name), typ, name) for name, typ in COLUMNS}


def arrow_schema() -> Any:
    types = {"string": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}
    return pa.schema([(name, types[typ]) for name, typ in COLUMNS])


def _atomic_target(path: Path) -> Path:
    return temp_name(path)


def write_tables(
    image_dicts: Iterable[dict[str, Any]], out_dir: str | Path, *, chunk_rows: int = 4096
) -> int:
    """Write results.parquet and results.csv from image result dicts (streamed in chunks,
    so memory does not grow with the archive).  Both files appear atomically.  Returns
    the number of rows."""

    out_dir = Path(out_dir)
    schema = arrow_schema()
    pq_path, csv_path = out_dir / "results.parquet", out_dir / "results.csv"
    pq_tmp, csv_tmp = _atomic_target(pq_path), _atomic_target(csv_path)
    n = 0
    schema = schema.with_metadata({"legalign.disclaimer": DISCLAIMER})
    writer = pq.ParquetWriter(str(pq_tmp), schema)
    try:
        with open(csv_tmp, "w", newline="", encoding="utf-8") as fh:
            cw = csv.writer(fh)
            cw.writerow(COLUMN_NAMES)
            for chunk in _chunks(_all_rows(image_dicts), chunk_rows):
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                for r in chunk:
                    cw.writerow(["" if r[c] is None else _csv_value(r[c]) for c in COLUMN_NAMES])
                n += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        writer.close()
    os.replace(pq_tmp, pq_path)
    os.replace(csv_tmp, csv_path)
    return n


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        # CSV injection: a spreadsheet would run "=...", "+...", "-...", "@..." as a
        # formula; csv_cell makes it text (control characters are already escaped)
        return csv_cell(v)
    return v


def _all_rows(image_dicts: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for d in image_dicts:
        yield from rows_for_image(d)


def _chunks(it: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in it:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
