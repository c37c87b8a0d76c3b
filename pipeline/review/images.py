"""Pixels for the viewer: a reduced preview and windowed crops of the original film.

Films are decoded by the project's readers (``pipeline.read.read_radiograph``: modality
LUT, VOI, MONOCHROME1, 16-bit precision kept as float32 in [0, 1]).  A few decoded films
stay in memory (LRU), so zooming and panning only crop, resample and encode.  Previews
(the whole film reduced to ``preview_max_rows``) are also kept on disk in the results
folder (``.review-cache/``), keyed by the source's size and modification time, so the
first view of a film is one small file read once it has been rendered (in the background
at start-up, or the first time it is opened).  JPEG 2000 / HTJ2K / baseline JPEG DICOM
films are previewed from a reduced resolution level decoded alone by the project's
progressive reader, without a full decode.

Window/level: ``lo`` and ``hi`` are grey levels in [0, 1] of the decoded film; values are
mapped linearly to 0-255 between them (full precision of 16-bit films, applied before the
reduction to 8 bits).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from legalign.pipeline.errors import InputError
from legalign.pipeline.read import DEFAULT_MAX_PIXELS, detect_kind
from legalign.pipeline.read.dicom import check_header, read_header
from legalign.pipeline.read.progressive import open_progressive

CACHE_DIR = ".review-cache"


class PixelCache:
    """Decoded films (LRU) and their rendered previews and crops."""

    def __init__(self, cache_root: Path, preview_max_rows: int, capacity: int = 3) -> None:
        self.cache_root = Path(cache_root) / CACHE_DIR / "previews"
        self.preview_max_rows = int(preview_max_rows)
        self.capacity = int(capacity)
        self._films: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._decode_locks: dict[str, threading.Lock] = {}

    # ---------------------------------------------------------------- decoding
    def pixels(self, key: str, source: Path, keep: bool = True) -> np.ndarray:
        """float32 H x W in [0, 1], bone bright (``InputError`` naming the file).
        ``keep``: hold it in the LRU (False for background work that should not evict the
        films being viewed)."""
        with self._lock:
            arr = self._films.get(key)
            if arr is not None:
                self._films.move_to_end(key)
                return arr
            lock = self._decode_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                arr = self._films.get(key)
            if arr is None:
                from legalign.pipeline.read import read_radiograph

                arr = read_radiograph(str(source)).pixels
            if not keep:
                return arr
            with self._lock:
                self._films[key] = arr
                self._films.move_to_end(key)
                while len(self._films) > self.capacity:
                    self._films.popitem(last=False)
        return arr

    def warm(self, key: str, source: Path) -> None:
        """Decode the film in the background (the viewer's crops need it next)."""
        with self._lock:
            if key in self._films:
                return
        threading.Thread(target=self._warm, args=(key, source), daemon=True).start()

    def _warm(self, key: str, source: Path) -> None:
        try:
            self.pixels(key, source)
        except Exception:  # noqa: BLE001 - the crop request reports the error
            pass

    # ----------------------------------------------------------------- preview
    def _preview_path(self, key: str, source: Path) -> Path:
        st = source.stat()
        tag = f"{st.st_size:x}-{int(st.st_mtime_ns):x}-{self.preview_max_rows}"
        return self.cache_root / f"{key}-{tag}.png"

    def preview_png(self, key: str, source: Path, keep: bool = True) -> tuple[bytes, int, int]:
        """(PNG bytes, preview width, preview height) of the whole film."""
        path = self._preview_path(key, source)
        if path.is_file():
            data = path.read_bytes()
            w, h = _png_size(data)
            return data, w, h
        arr = _overview(source, self.preview_max_rows)
        if arr is None:
            arr = self.pixels(key, source, keep)
        h, w = arr.shape
        scale = min(1.0, self.preview_max_rows / h)
        ow, oh = max(1, round(w * scale)), max(1, round(h * scale))
        data = encode_png(render(arr, 0, 0, w, h, ow, oh, 0.0, 1.0))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return data, ow, oh

    def region_png(
        self,
        key: str,
        source: Path,
        box: tuple[int, int, int, int],
        out_size: tuple[int, int],
        window: tuple[float, float],
    ) -> bytes:
        arr = self.pixels(key, source)
        x0, y0, x1, y1 = box
        return encode_png(render(arr, x0, y0, x1, y1, out_size[0], out_size[1], *window))


def _overview(source: Path, rows: int) -> np.ndarray | None:
    """The whole film at a reduced resolution (at least ``rows`` rows), decoded alone by
    the project's progressive reader (``pipeline.read.progressive``: JPEG 2000, HTJ2K and
    baseline JPEG DICOM films) -- a fraction of a full decode.  None for every other film
    or when the progressive path declines (the full path then decodes and reports)."""
    try:
        if detect_kind(source) != "dicom":
            return None
        header = read_header(str(source), DEFAULT_MAX_PIXELS)
        check_header(header, str(source), DEFAULT_MAX_PIXELS)
        film = open_progressive(str(source), header, overview_height=rows)
    except InputError:
        return None
    return None if film is None else film.overview.pixels


def render(
    arr: np.ndarray,
    x0: int,
    y0: int,
    x1: int,
    y1: int,
    out_w: int,
    out_h: int,
    lo: float,
    hi: float,
) -> np.ndarray:
    """uint8 crop [y0:y1, x0:x1] resampled to out_h x out_w (never above the crop's own
    size) with the window [lo, hi] applied at full precision."""
    import cv2

    h, w = arr.shape
    x0, x1 = max(0, min(w - 1, int(x0))), max(1, min(w, int(x1)))
    y0, y1 = max(0, min(h - 1, int(y0))), max(1, min(h, int(y1)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    crop = arr[y0:y1, x0:x1]
    out_w = max(1, min(int(out_w), crop.shape[1]))
    out_h = max(1, min(int(out_h), crop.shape[0]))
    if (out_w, out_h) != (crop.shape[1], crop.shape[0]):
        crop = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_AREA)
    span = max(float(hi) - float(lo), 1e-6)
    scaled = (crop - np.float32(lo)) * np.float32(255.0 / span)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def encode_png(grey: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 failure
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
