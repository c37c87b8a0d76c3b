"""A finished file's outputs: overlay PNG, DICOM SR and Secondary Capture, then its JSON.

Each output is written to a temporary name and renamed; one that cannot be written is
recorded in ``output_errors`` and the file's result stands.  The JSON is written last.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from legalign.pipeline.engine.options import EngineOptions
from legalign.pipeline.failures import one_line
from legalign.pipeline.outputs.dicom_header import derivable_header
from legalign.pipeline.outputs.dicom_sc import build_sc
from legalign.pipeline.outputs.dicom_sr import build_sr
from legalign.pipeline.outputs.image_json import (
    atomic_write_bytes,
    output_stem,
    safe_join,
    write_image_json,
)
from legalign.pipeline.outputs.overlay import encode_png, render_overlay

# the output folder's sub-folders (docs/results-schema.md)
SUBDIRS = ("images", "overlays", "dicom")

ANGLES_ONLY_WARNING = "no pixel spacing: angles only, no mm values (--spacing MM gives them)"


def finish_outputs(
    d: dict[str, Any], header: Any, thumb: Any, opts: EngineOptions
) -> dict[str, Any]:
    """Write overlay, SR, SC (each failure recorded, not fatal), then the JSON last.

    An output that was asked for and could not be written makes an ``ok`` film
    ``partial``, with the reason in ``output_errors`` (JSON, table, summary, terminal).
    Header values the SR / SC may not copy are dropped with a warning in ``warnings``
    (pipeline/outputs/dicom_header.py)."""
    out = Path(opts.out_dir)
    stem = output_stem(d["file"])
    outputs: dict[str, str] = {}
    errors: dict[str, str] = {}
    warnings: list[str] = list(d.get("warnings") or [])
    if d.get("status") != "failed" and d.get("spacing_mm") is None:
        warnings.append(ANGLES_ONLY_WARNING)
    if warnings:
        d["warnings"] = warnings
    t0 = time.perf_counter()
    rgb = None
    if opts.overlay and thumb is not None:
        try:
            rgb = render_overlay(d, thumb)
            target = safe_join(out, "overlays", f"{stem}.png")
            atomic_write_bytes(target, encode_png(rgb))
            outputs["overlay"] = f"overlays/{stem}.png"
        except Exception as exc:  # noqa: BLE001
            errors["overlay"] = one_line(exc)
    if opts.dicom_outputs and header is not None and d.get("status") != "failed":
        kinds = ["sr"] + (["sc"] if rgb is not None else [])
        source: Any = None
        try:
            source, dropped = derivable_header(header)
        except Exception as exc:  # noqa: BLE001 - InvalidSourceIdentity, or a broken header
            for kind in kinds:
                errors[kind] = one_line(exc)
            kinds = []
        else:
            warnings.extend(dropped)
            if warnings:
                d["warnings"] = warnings
        # deterministic UIDs per (source SOP instance, kind): a re-run replaces, not adds
        src_uid = str(getattr(header, "SOPInstanceUID", d["file"]))
        builders: dict[str, Any] = {"sr": lambda **uids: build_sr(d, source, **uids)}
        if rgb is not None:
            overlay_rgb = rgb
            builders["sc"] = lambda **uids: build_sc(overlay_rgb, source, **uids)
        for kind in kinds:
            try:
                ds = builders[kind](
                    series_instance_uid=derived_uid(src_uid, f"{kind}-series"),
                    sop_instance_uid=derived_uid(src_uid, kind),
                )
                _save_dataset(ds, safe_join(out, "dicom", f"{stem}_{kind}.dcm"))
                outputs[kind] = f"dicom/{stem}_{kind}.dcm"
            except Exception as exc:  # noqa: BLE001
                errors[kind] = one_line(exc)
    outputs["json"] = f"images/{stem}.json"
    d["outputs"] = outputs
    if errors:
        d["output_errors"] = errors
        if d.get("status") == "ok":
            d["status"] = "partial"
    d.setdefault("timings_s", {})["write"] = round(time.perf_counter() - t0, 4)
    write_image_json(d, safe_join(out, "images", f"{stem}.json"))
    return d


def derived_uid(src_uid: str, kind: str) -> str:
    """The UID of a derived object of ``kind`` for a source SOP instance (deterministic)."""
    return generate_uid(entropy_srcs=["legalign", src_uid, kind])


def _save_dataset(ds: Any, target: Path) -> None:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(target, buf.getvalue())
