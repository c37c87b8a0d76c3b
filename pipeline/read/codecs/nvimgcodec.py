"""JPEG 2000 / HTJ2K on a CUDA GPU with NVIDIA nvImageCodec (optional, UNMEASURED).

Used when ``nvidia-nvimgcodec-cu12`` (or -cu11/-cu13) is importable *and* CUDA is present
(``--decoder auto``, the default, tries it first; ``--decoder cpu`` never uses it;
``--decoder gpu`` requires it).  It is not a dependency of legalign: install it yourself
on a GPU machine.  No GPU was available when this was written, so it has not been run or
timed here; any failure of it on a frame makes the reader fall back to the CPU plugins
(``pipeline.read.progressive``).

A region is decoded at full resolution with nvImageCodec's region-of-interest decoding; a
reduced level is made from it by averaging ``2**level`` blocks (pixel-centre convention,
``CENTRED``), as nvImageCodec's Python API gives no resolution-level selection.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from legalign.pipeline.read.codecs.base import CodecError, FileFrame, frame_bytes

NAME = "nvimgcodec"
REGION = True
CENTRED = True


@lru_cache(maxsize=1)
def _module() -> Any:
    try:
        from nvidia import nvimgcodec  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed, or its CUDA libraries missing
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except Exception:  # noqa: BLE001
        return None
    return nvimgcodec


@lru_cache(maxsize=1)
def _decoder() -> Any:
    return _module().Decoder()


def is_available() -> bool:
    """nvImageCodec importable and a CUDA device present."""
    return _module() is not None


def decode(
    codestream: bytes | FileFrame, level: int = 0, area: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, list[str]]:
    nv = _module()
    if nv is None:
        raise CodecError("nvImageCodec with CUDA is not available")
    try:
        params = nv.DecodeParams(allow_any_depth=True, color_spec=nv.ColorSpec.UNCHANGED)
        stream = nv.CodeStream(frame_bytes(codestream))
        if area is not None:
            x0, y0, x1, y1 = (int(v) for v in area)
            p = 1 << level
            # whole 2**level blocks, so that the block average lines up with the level grid
            x0, y0 = x0 // p * p, y0 // p * p
            x1, y1 = min(stream.width, -(-x1 // p) * p), min(stream.height, -(-y1 // p) * p)
            stream = stream.get_sub_code_stream(region=nv.Region(y0, x0, y1, x1))
        image = _decoder().decode(stream, params=params)
        if image is None:
            raise CodecError("nvImageCodec returned no image")
        arr = np.asarray(image.cpu())
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CodecError(f"nvImageCodec: {type(exc).__name__}: {exc}") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    arr = arr.astype(np.int32, copy=False)
    if level:
        arr = _block_mean(arr, 1 << level)
    return arr, []


def _block_mean(arr: np.ndarray, p: int) -> np.ndarray:
    h, w = arr.shape
    hh, ww = -(-h // p) * p, -(-w // p) * p
    padded = np.pad(arr.astype(np.float64), ((0, hh - h), (0, ww - w)), mode="edge")
    out = padded.reshape(hh // p, p, ww // p, p).mean(axis=(1, 3))
    return np.rint(out).astype(np.int32)
