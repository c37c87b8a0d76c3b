"""PNG, JPEG and TIFF exports -> ``Radiograph`` (no spacing unless the user gives one).

Decoding: OpenCV for PNG and JPEG (8 or 16 bit, colour converted to grey, EXIF
orientation applied), tifffile for TIFF (first page; 8/16-bit integer or float;
MINISWHITE inverted), with OpenCV's libtiff for TIFF compressions that tifffile needs
the optional imagecodecs package for (LZW, PackBits, JPEG).  Scaling to float32 [0, 1]: 8-bit images are already rendered for
display and are divided by 255; 16-bit and float images carry no window, so they are
scaled min-max (a 12-bit export in a 16-bit container would otherwise be almost black).

Sizes are read from the header and checked against ``max_pixels`` before decoding.  A
PNG without its IEND chunk or a JPEG without its EOI marker is refused as truncated
(OpenCV would otherwise return a partly grey image with only a warning).

Pillow (used here for PNG/JPEG headers) keeps its decompression-bomb guard, set
deliberately to ``PILLOW_MAX_IMAGE_PIXELS`` -- above the largest stitched film we expect,
well below what exhausts memory.  Images above it are refused even with a larger
``max_pixels``.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import tifffile
from PIL import Image

from legalign.pipeline.errors import InputError, NotAnImageError, TooLargeError
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.read.native_stderr import native_stderr
from legalign.pipeline.read.spacing import resolve_spacing

PILLOW_MAX_IMAGE_PIXELS = 200_000_000

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def raster_kind(head: bytes) -> str | None:
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    return None


def _pillow():
    Image.MAX_IMAGE_PIXELS = PILLOW_MAX_IMAGE_PIXELS
    return Image


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def raster_header(path: str, kind: str) -> dict:
    """width, height, bits (per sample) and channels from the file header, no decoding."""
    if kind == "tiff":
        try:
            with tifffile.TiffFile(path) as tf:
                page = tf.pages.first
                shape = page.shape
                bits = int(page.bitspersample)
                channels = int(page.samplesperpixel)
                height, width = int(page.imagelength), int(page.imagewidth)
        except Exception as exc:
            raise InputError(f"{path}: unreadable TIFF ({_short(exc)})") from None
        if len(shape) not in (2, 3):
            raise NotAnImageError(f"{path}: unsupported TIFF page shape {shape}")
        return {"width": width, "height": height, "bits": bits, "channels": channels}

    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64))
            tail = fh.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_short(exc)})") from None
    _check_complete(path, kind, tail)
    Image = _pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                mode = im.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLargeError(
            f"{path}: image too large for the decompression-bomb guard "
            f"(> {PILLOW_MAX_IMAGE_PIXELS} pixels)"
        ) from None
    except Exception as exc:
        raise InputError(f"{path}: unreadable {kind.upper()} header ({_short(exc)})") from None
    bits = 16 if mode.startswith("I;16") or mode in ("I", "F") else 8
    channels = {"L": 1, "P": 1, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode, 1)
    return {"width": int(width), "height": int(height), "bits": bits, "channels": channels}


def _check_complete(path: str, kind: str, tail: bytes) -> None:
    """Refuse a PNG without IEND or a JPEG without EOI in its last 64 bytes."""
    if kind == "png":
        # The IEND chunk: length 0, type "IEND", CRC AE426082.
        if b"IEND\xaeB`\x82" not in tail:
            raise InputError(f"{path}: truncated PNG (no IEND chunk)")
    elif kind == "jpeg":
        if b"\xff\xd9" not in tail:
            raise InputError(f"{path}: truncated JPEG (no end-of-image marker)")


def _to_grey(img: np.ndarray, path: str, channels_last: bool = True) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.ndim == 3 and channels_last and img.shape[2] in (3, 4):
        rgb = img[..., :3].astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if img.ndim == 3 and channels_last and img.shape[2] in (1, 2):
        return img[..., 0]
    raise NotAnImageError(f"{path}: unsupported image layout {img.shape}")


def _unit(grey: np.ndarray, dtype: np.dtype, path: str) -> np.ndarray:
    if dtype == np.uint8:
        out = grey.astype(np.float32) / np.float32(255.0)
    else:
        values = grey.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise InputError(f"{path}: image contains non-finite values")
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise InputError(f"{path}: uniform image (every pixel {lo:g})")
        out = (values - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    if float(out.min()) == float(out.max()):
        raise InputError(f"{path}: uniform image")
    return out.astype(np.float32, copy=False)


def _read_tiff(path: str) -> np.ndarray:
    """tifffile for what it decodes alone; OpenCV (libtiff) for compressions that tifffile
    leaves to the optional imagecodecs package (LZW, PackBits, JPEG, ...)."""

    try:
        with tifffile.TiffFile(path) as tf, native_stderr() as messages:
            page = tf.pages.first
            photometric = int(page.photometric)
            bits = int(page.bitspersample)
            try:
                img = page.asarray()
            except (KeyError, ValueError, NotImplementedError) as exc:
                if "imagecodecs" not in str(exc):
                    raise
                img = None
    except MemoryError:
        raise InputError(f"{path}: out of memory decoding TIFF") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot decode TIFF ({_short(exc)})") from None
    if messages:
        raise InputError(
            f"{path}: the TIFF decoder reported a damaged file ({messages[0][:120]}); not used"
        )
    invert = photometric == 0  # MINISWHITE: low values are white
    if img is None:
        img = cv2.imdecode(
            np.fromfile(path, dtype=np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE
        )
        if img is None:
            raise InputError(f"{path}: cannot decode TIFF (compression not supported)")
        # libtiff's RGBA path, which OpenCV uses for 8-bit images, already applies
        # MINISWHITE; 16-bit samples come back as stored (tests pin both).
        invert = invert and bits > 8
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[2] not in (3, 4):
        img = np.moveaxis(img, 0, -1)  # planar configuration
    unit = _unit(_to_grey(img, path), img.dtype, path)
    if invert:
        np.subtract(np.float32(1.0), unit, out=unit)
    return unit


def read_raster(
    path: str,
    kind: str,
    *,
    spacing_override_mm: float | None = None,
    max_pixels: int = 80_000_000,
) -> Radiograph:
    header = raster_header(path, kind)
    width, height = header["width"], header["height"]
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: invalid image size {width} x {height}")
    if width * height > max_pixels:
        raise TooLargeError(
            f"{path}: image too large ({width} x {height} = {width * height} pixels > "
            f"max_pixels {max_pixels})"
        )
    spacing, source = resolve_spacing(None, path, spacing_override_mm)

    if kind == "tiff":
        unit = _read_tiff(path)
    else:
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({_short(exc)})") from None
        _check_complete(path, kind, data[-64:].tobytes())
        with native_stderr() as messages:
            img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE)
        if messages:
            raise InputError(
                f"{path}: the {kind.upper()} decoder reported a damaged stream "
                f"({messages[0][:120]}); not used"
            )
        if img is None:
            raise InputError(f"{path}: cannot decode {kind.upper()} (corrupt file)")
        del data
        unit = _unit(img, img.dtype, path)

    return Radiograph(
        path=path,
        pixels=unit,
        spacing_mm=spacing,
        spacing_source=source,
        mirrored=None,
        laterality=None,
        modality=None,
        bits_stored=int(header["bits"]),
        header=None,
    )
