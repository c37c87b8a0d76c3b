"""Stored DICOM pixel values -> float32 grey levels in [0, 1], bone bright.

The modality LUT, then the VOI LUT or window (no VOI, or one that leaves a uniform image:
min-max), scaled to [0, 1], MONOCHROME1 inverted after the VOI.  Shared by the full
decode (``pipeline.read.dicom``) and the resolution-progressive reader
(``pipeline.read.progressive``), which applies it as a table over the stored values.
Only file names and UIDs are logged.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut

from legalign.pipeline.errors import InputError

log = logging.getLogger("legalign.pipeline.read.dicom")

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as a short single line (type and first words of the message)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _window_output_range(ds: Any) -> tuple[float, float]:
    """The output range of pydicom's ``apply_windowing`` for this header."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        lo, hi = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _voi_kind(ds: Any) -> str | None:
    """Which VOI transform ``apply_voi_lut(prefer_lut=True)`` applies: "lut", "window", None."""
    seq = ds.get("VOILUTSequence")
    if seq and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData")):
        return "lut"
    if None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):
        return "window"
    return None


def _minmax(x: np.ndarray) -> tuple[float, float]:
    return float(np.min(x)), float(np.max(x))


def to_unit_grey(arr: np.ndarray, ds: Any, path: str) -> np.ndarray:
    """Stored values -> float32 [0, 1], bone bright (the Radiograph contract)."""
    uid = str(ds.get("SOPInstanceUID", ""))
    name = os.path.basename(path)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    lo_raw, hi_raw = _minmax(arr)
    if lo_raw == hi_raw:
        what = "all zeros" if hi_raw == 0 else f"uniform (every pixel {hi_raw:g})"
        raise InputError(f"{path}: pixel data decoded to {what}; corrupt stream or blank image")

    if photometric in COLOUR:
        rgb = arr.astype(np.float32)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        full = float(2 ** int(ds.BitsStored) - 1)
        return np.clip(grey / full, 0.0, 1.0).astype(np.float32)

    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    limit_hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    limit_lo = -(2 ** (bits - 1)) if signed else 0
    beyond_bits = hi_raw > limit_hi or lo_raw < limit_lo
    if beyond_bits:
        log.warning(
            "%s (SOP %s): values %g..%g exceed Bits Stored %d (codestream precision "
            "disagrees with the header); ignoring the VOI, normalising by the actual range",
            name,
            uid,
            lo_raw,
            hi_raw,
            bits,
        )

    if np.issubdtype(arr.dtype, np.integer) and hi_raw - lo_raw <= _TABLE_MAX:
        # Every step below is a function of the stored value alone: run it once per grey
        # level present (at most 65536 for 16 bits) and index, instead of on every pixel
        # in float64 (about 10x faster on a 2500 x 7000 film, identical values).
        domain = np.arange(int(lo_raw), int(hi_raw) + 1).astype(arr.dtype)
        table = stored_to_unit(domain, ds, path, photometric, beyond_bits, name, uid)
        if lo_raw == 0:
            return table[arr]
        offset = np.subtract(arr, arr.dtype.type(lo_raw), dtype=np.int32 if signed else arr.dtype)
        return table[offset]
    return stored_to_unit(arr, ds, path, photometric, beyond_bits, name, uid)


# Grey levels up to 2**20 are mapped through a table; wider (32-bit) data pixel by pixel.
_TABLE_MAX = 1 << 20


def stored_to_unit(
    arr: np.ndarray,
    ds: Any,
    path: str,
    photometric: str,
    beyond_bits: bool,
    name: str,
    uid: str,
) -> np.ndarray:
    """Modality LUT, VOI (or min-max), scaling to [0, 1] and MONOCHROME1 inversion.

    ``arr`` holds stored values: the image, or every grey level between the image's
    minimum and maximum (then the min-max fallback sees the same extremes as the image
    for any monotonic modality LUT).
    """

    values = apply_modality_lut(arr, ds)
    kind = None if beyond_bits else _voi_kind(ds)
    out: np.ndarray | None = None
    lo = hi = 0.0
    try:
        if kind == "lut":
            if not np.issubdtype(values.dtype, np.integer):
                values = np.rint(values).astype(np.int64)
            out = apply_voi_lut(values, ds)
            item = ds.VOILUTSequence[0]
            first, n = int(item.LUTDescriptor[1]), int(item.LUTDescriptor[0]) or 65536
            lo, hi = _minmax(apply_voi(np.arange(first, first + n, dtype=np.int64), ds))
        elif kind == "window":
            out = apply_voi_lut(values, ds)
            lo, hi = _window_output_range(ds)
    except Exception as exc:  # a malformed window or LUT: fall back to min-max
        log.warning("%s (SOP %s): VOI not applied (%s)", name, uid, one_line(exc))
        out = None
    if out is not None:
        olo, ohi = _minmax(out)
        if hi <= lo or ohi - olo <= 1e-6 * (hi - lo):
            log.warning("%s (SOP %s): the VOI leaves a uniform image; using min-max", name, uid)
            out = None
    if out is None:
        out = values
        lo, hi = _minmax(values)
        if hi <= lo:
            raise InputError(f"{path}: uniform image after the modality LUT")
    unit = (np.asarray(out, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(unit, 0.0, 1.0, out=unit)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), unit, out=unit)
    return unit
