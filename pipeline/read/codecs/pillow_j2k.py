"""JPEG 2000 / HTJ2K at a reduced resolution level with Pillow's own decoder.

The fallback when ``openjpeg`` cannot load a library: whole film only (Pillow decodes
every tile; a region is cut from the decoded level).  Pillow's ``reduce`` computes the
reduced size with a rounding that disagrees with the codestream for some sizes, so the
tile is set up here with the exact size, ``ceil(size / 2**level)``.
"""

from __future__ import annotations

import io

import numpy as np

from legalign.pipeline.read.codecs.base import CodecError, FileFrame, frame_bytes

NAME = "pillow-j2k"
REGION = False  # regions are cut from a whole decoded level


def is_available() -> bool:
    try:
        from PIL import features

        return bool(features.check_codec("jpg_2000"))
    except Exception:  # noqa: BLE001 - no Pillow, or one built without OpenJPEG
        return False


def decode(
    codestream: bytes | FileFrame, level: int = 0, area: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, list[str]]:
    """The whole image at ``level`` (``area`` must be None) and no warnings."""
    if area is not None:
        raise CodecError("pillow-j2k decodes whole levels only")
    from PIL import Image, ImageFile

    try:
        im = Image.open(io.BytesIO(frame_bytes(codestream)), formats=["JPEG2000"])
        w, h = im.size
        if level:
            power = 1 << level
            size = (-(-w // power), -(-h // power))
            t = im.tile[0]
            args = (t.args[0], int(level), 0, t.args[3], t.args[4])
            im._size = size
            im.tile = [ImageFile._Tile(t.codec_name, (0, 0, *size), t.offset, args)]
        im.load()
        arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a CodecError
        raise CodecError(f"Pillow JPEG 2000: {type(exc).__name__}: {exc}") from None
    if arr.ndim != 2:
        raise CodecError(f"Pillow JPEG 2000: {im.mode} image, expected one component")
    return arr.astype(np.int32, copy=False), []
