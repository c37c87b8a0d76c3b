"""Short names of what a file is stored as, for the run summary's per-syntax rates."""

from __future__ import annotations

from typing import Any

SYNTAX_LABELS = {
    "1.2.840.10008.1.2": "uncompressed",
    "1.2.840.10008.1.2.1": "uncompressed",
    "1.2.840.10008.1.2.2": "uncompressed",
    "1.2.840.10008.1.2.1.99": "deflated",
    "1.2.840.10008.1.2.5": "rle",
    "1.2.840.10008.1.2.4.50": "jpeg-baseline",
    "1.2.840.10008.1.2.4.51": "jpeg-extended",
    "1.2.840.10008.1.2.4.57": "jpeg-lossless",
    "1.2.840.10008.1.2.4.70": "jpeg-lossless",
    "1.2.840.10008.1.2.4.80": "jpeg-ls",
    "1.2.840.10008.1.2.4.81": "jpeg-ls",
    "1.2.840.10008.1.2.4.90": "jpeg2000",
    "1.2.840.10008.1.2.4.91": "jpeg2000",
    "1.2.840.10008.1.2.4.201": "htj2k",
    "1.2.840.10008.1.2.4.202": "htj2k",
    "1.2.840.10008.1.2.4.203": "htj2k",
}


def syntax_label(header: Any, kind: str = "dicom") -> str:
    """ "jpeg2000", "uncompressed", ... for a DICOM header; the raster kind ("png",
    "jpeg-file", "tiff") for other files; "unknown" when the header does not say."""
    if kind != "dicom":
        return "jpeg-file" if kind == "jpeg" else kind
    meta = getattr(header, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not uid:
        return "uncompressed" if header is not None else "unknown"
    return SYNTAX_LABELS.get(uid, uid)
