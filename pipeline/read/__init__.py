"""Readers: DICOM (pydicom 3 + plugins), PNG, JPEG and TIFF -> ``Radiograph``.

- ``read_radiograph(path, *, spacing_override_mm=None, max_pixels=80_000_000)`` decodes one
  film into the ``Radiograph`` seam (float32 [0, 1], bone bright, spacing with its source,
  orientation, laterality and DICOM identity).
- ``probe(path)`` is the fast header-only check for batch planning: it never raises for a
  bad file and returns a dict (``ok``, ``error``, ``kind``, ``width``, ``height``, ...).
- ``check_input(path)`` runs the same header checks and raises ``InputError``.

The file kind comes from the content (magic bytes), not the extension.  Every failure is an
``InputError`` with one line that names the file.  Heavy libraries (pydicom, cv2,
tifffile, Pillow) are imported on first use.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from legalign.pipeline.errors import InputError, NotAnImageError, TooLargeError
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.read.dicom import (
    check_header,
    has_preamble,
    looks_like_raw_dicom,
    read_dicom,
    read_header,
)
from legalign.pipeline.read.raster import raster_header, raster_kind, read_raster
from legalign.pipeline.read.spacing import resolve_spacing

DEFAULT_MAX_PIXELS = 80_000_000
KINDS = ("dicom", "png", "jpeg", "tiff")

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "InputError",
    "KINDS",
    "check_input",
    "detect_kind",
    "probe",
    "read_radiograph",
]


def _path(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def detect_kind(path: str | os.PathLike[str]) -> str:
    """ "dicom", "png", "jpeg" or "tiff" from the file's first bytes; ``InputError`` otherwise."""

    p = _path(path)
    check_regular_file(p)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, open returns at once
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot open ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{p}: not a regular file")
        try:
            head = fh.read(132)
        except OSError as exc:
            raise InputError(f"{p}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not head:
        raise InputError(f"{p}: empty file")
    if has_preamble(head):
        return "dicom"
    kind = raster_kind(head)
    if kind is not None:
        return kind
    if looks_like_raw_dicom(head):
        return "dicom"
    if len(head) < 132 and head.startswith(b"\0" * len(head)):
        raise InputError(f"{p}: truncated file ({len(head)} bytes)")
    if len(head) == 132 and head.startswith(b"\0" * 128):
        raise InputError(f"{p}: truncated DICOM file (only the preamble)")
    raise NotAnImageError(f"{p}: not a DICOM, PNG, JPEG or TIFF file")


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular_file(p: str) -> os.stat_result:
    """``os.stat`` of ``p``, refusing (without opening it) anything but a regular file:
    FIFOs would block a reader forever, devices never end, a folder is no film."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        what = "broken symbolic link" if os.path.islink(p) else "file not found"
        raise InputError(f"{p}: {what}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot access ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            os.listdir(p)
        except OSError as exc:
            raise InputError(
                f"{p}: folder cannot be listed ({exc.strerror or type(exc).__name__}); "
                "its films were not processed"
            ) from None
        raise NotAnImageError(f"{p}: is a directory, not an image file")
    for test, what in _SPECIAL:
        if test(st.st_mode):
            raise InputError(f"{p}: is {what}, not a regular file (not opened)")
    return st


def read_radiograph(
    path: str | os.PathLike[str],
    *,
    spacing_override_mm: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: str = "full",
    overview_height: int | None = None,
) -> Radiograph:
    """Decode one film; ``InputError`` (one line naming the file) when it cannot be used.

    ``decoder``: "full" (default) decodes every pixel; "auto", "cpu" or "gpu" read JPEG
    2000, HTJ2K and baseline-JPEG DICOM resolution-progressively: the Radiograph then
    holds an overview of at least ``overview_height`` rows and a ``source`` that decodes
    what the locator asks for (see ``pipeline.read.progressive``)."""
    p = _path(path)
    kind = detect_kind(p)
    if kind == "dicom":
        return read_dicom(
            p,
            spacing_override_mm=spacing_override_mm,
            max_pixels=max_pixels,
            decoder=decoder,
            overview_height=overview_height,
        )

    return read_raster(p, kind, spacing_override_mm=spacing_override_mm, max_pixels=max_pixels)


def _blank_info(path: str) -> dict[str, Any]:
    return {
        "path": path,
        "ok": True,
        "error": None,
        "kind": None,
        "width": None,
        "height": None,
        "modality": None,
        "bits_stored": None,
        "transfer_syntax": None,
        "sop_instance_uid": None,
        "spacing_mm": None,
        "spacing_source": None,
    }


def _inspect(p: str, max_pixels: int, info: dict[str, Any]) -> None:
    """Fill ``info`` from the header, raising ``InputError`` at the first problem."""
    info["kind"] = kind = detect_kind(p)
    if kind == "dicom":
        header = read_header(p, max_pixels)
        ds = header.ds
        meta = getattr(ds, "file_meta", None)
        tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
        try:
            info.update(
                modality=str(ds.get("Modality", "") or "").strip().upper() or None,
                width=int(ds.Columns) if ds.get("Columns") is not None else None,
                height=int(ds.Rows) if ds.get("Rows") is not None else None,
                bits_stored=int(ds.BitsStored) if ds.get("BitsStored") is not None else None,
                transfer_syntax=str(tsuid) if tsuid else None,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
            )
        except Exception as exc:
            raise InputError(f"{p}: corrupt DICOM header ({type(exc).__name__})") from None
        check_header(header, p, max_pixels)
        info["spacing_mm"], info["spacing_source"] = resolve_spacing(ds, p)
    else:
        raster = raster_header(p, kind)
        width, height = raster["width"], raster["height"]
        info.update(width=width, height=height, bits_stored=raster["bits"])
        if width * height > max_pixels:
            raise TooLargeError(
                f"{p}: image too large ({width} x {height} = {width * height} pixels > "
                f"max_pixels {max_pixels})"
            )


def check_input(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Header-only checks (readable, kind, image, modality, size, spacing tags) that raise
    ``InputError``; returns the same dict as ``probe`` for a usable file."""
    p = _path(path)
    info = _blank_info(p)
    _inspect(p, max_pixels, info)
    return info


def probe(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Fast header check that never raises for a bad file.

    Returns ``path``, ``ok``, ``error`` (one line naming the file, or None), ``kind``
    (dicom/png/jpeg/tiff or None), ``width``, ``height``, ``modality``, ``bits_stored``,
    ``transfer_syntax``, ``sop_instance_uid``, ``spacing_mm`` and ``spacing_source``
    (what was read before a failure stays filled in).  Pixel data is not decoded, so a
    corrupt codestream only shows in ``read_radiograph``.
    """
    p = _path(path)
    info = _blank_info(p)
    try:
        _inspect(p, max_pixels, info)
    except InputError as exc:
        info["ok"] = False
        info["error"] = str(exc)
    return info
