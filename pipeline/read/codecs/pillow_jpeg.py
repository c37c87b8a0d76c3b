"""Baseline and 8-bit extended JPEG at 1/2, 1/4, 1/8 resolution (libjpeg DCT scaling).

Pillow's ``draft`` asks libjpeg (libjpeg-turbo in Pillow's wheel) for a scaled inverse DCT:
each 8 x 8 block is reconstructed at 4 x 4, 2 x 2 or 1 x 1, so the reduced image costs the
entropy decoding and a fraction of the transform.  Level ``k`` sample ``n`` covers full
pixels ``n * 2**k .. (n + 1) * 2**k - 1`` (pixel-centre convention ``x' = (x + 0.5) / 2**k
- 0.5``).  JPEG has no region access: a region is cut from a decoded level.  12-bit JPEG
(extended process 4) is not decoded by Pillow: such frames go to the full-decode path.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from legalign.pipeline.read.codecs.base import CodecError, FileFrame, frame_bytes

NAME = "pillow-jpeg"
REGION = False
MAX_LEVEL = 3


def is_available() -> bool:
    try:
        from PIL import features

        return bool(features.check_codec("jpg"))
    except Exception:  # noqa: BLE001
        return False


def decode(
    frame: bytes | FileFrame, level: int = 0, area: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, list[str]]:
    """The whole image at ``level`` (0-3) and libjpeg's warnings (e.g. a premature end)."""
    if area is not None:
        raise CodecError("pillow-jpeg decodes whole levels only")
    if not 0 <= level <= MAX_LEVEL:
        raise CodecError(f"JPEG DCT scaling has levels 0-{MAX_LEVEL}, not {level}")
    from PIL import Image

    caught: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            im = Image.open(io.BytesIO(frame_bytes(frame)), formats=["JPEG"])
            if im.mode != "L":
                raise CodecError(f"JPEG frame in mode {im.mode}, expected 8-bit grey")
            w, h = im.size
            if level:
                power = 1 << level
                # Pillow picks the scale from floor(size / requested): ask for the floor
                im.draft("L", (max(1, w // power), max(1, h // power)))
            # Pillow's default (LOAD_TRUNCATED_IMAGES off) makes a truncated stream fail
            im.load()
            arr = np.asarray(im)
        caught = [str(g.message) for g in got]
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CodecError(f"Pillow JPEG: {type(exc).__name__}: {exc}") from None
    expect = (-(-h // (1 << level)), -(-w // (1 << level)))
    if arr.shape != expect:
        raise CodecError(f"Pillow JPEG: decoded {arr.shape} at level {level}, expected {expect}")
    return arr.astype(np.int32), caught


def frame_info(frame: bytes | FileFrame) -> tuple[int, int, int, int, int]:
    """(width, height, precision, components, SOF marker) from the JPEG frame header;
    only SOF0/SOF1 (baseline, extended sequential DCT) frames can be DCT-scaled."""
    if isinstance(frame, FileFrame):
        frame = frame.head(1 << 16)
    pos = 2
    n = len(frame)
    if frame[:2] != b"\xff\xd8":
        raise CodecError("not a JPEG stream (no SOI marker)")
    while pos + 4 <= n:
        if frame[pos] != 0xFF:
            raise CodecError("malformed JPEG header")
        marker = frame[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            body = frame[pos + 4 : pos + 2 + length]
            precision = body[0]
            height = int.from_bytes(body[1:3], "big")
            width = int.from_bytes(body[3:5], "big")
            return width, height, precision, body[5], marker
        pos += 2 + length
    raise CodecError("JPEG stream without a frame header (SOF)")
