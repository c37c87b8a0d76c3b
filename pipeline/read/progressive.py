"""Resolution-progressive DICOM reading: decode only the resolution and regions asked for.

``open_progressive(path, ...)`` returns a ``ProgressiveFilm`` for a single-frame grey
DICOM film whose transfer syntax a codec plugin (``pipeline.read.codecs``) can decode at a
reduced resolution -- JPEG 2000 (1.2.840.10008.1.2.4.90/.91) and HTJ2K (.201-.203), any
tiling or progression, single or multi-fragment, and baseline / 8-bit extended JPEG
(.50/.51) -- and ``None`` for everything else (uncompressed, RLE, JPEG-LS, JPEG lossless,
12-bit JPEG, colour, a codestream that disagrees with its header, ...), which keeps the
full-decode path of ``pipeline.read.dicom``.

A ``ProgressiveFilm`` decodes, at open, one *overview*: the whole film at the deepest
resolution level that is still at least ``overview_height`` rows tall (for a native
7000-row film and 2048 rows, level 2: 1/4 of each side, 1/16 of the pixels).  The
overview gives the coarse network input and the overlay / Secondary Capture thumbnail.
``warp(A, out_shape)`` cuts any other network input (a joint crop) given its 2x3
image->output matrix: it decodes only the region the output needs, at the deepest level
that keeps at least the output's resolution (``level_margin`` levels finer), and
resamples it with ``models.crops.warp`` -- the same resampling as the full path.

DICOM semantics are those of the full path (``pipeline.read.dicom``): the header checks
(``check_header``), modality LUT, VOI LUT or window, MONOCHROME1 inversion after the VOI,
PixelSpacing (native; ``spacing_at(level)`` for a level's own pixels) and orientation are
applied by the same code, through a table from stored value to [0, 1] grey.  One
difference, documented: a film *without* a VOI is scaled min-max by the range of its
overview, not of the full-resolution pixels (the full range is not known without a full
decode; the two differ by the few extreme pixels the low-pass levels smooth out).

Levels and coordinates: JPEG 2000 level ``k`` sample ``n`` sits at full-resolution
position ``n * 2**k`` (the DWT low-pass is centred on even samples); a DCT-scaled JPEG
level sample covers the ``2**k`` block (``x' = (x + 0.5) / 2**k - 0.5``).  Each plugin
says which; ``LevelImage.matrix`` maps full-resolution pixels to the level image's.

Every decoder failure raises ``DecodeError`` (an ``InputError``: one line naming the file
and the transfer syntax); a decoder warning (OpenJPEG's "Expected SOP marker", "Stream
does not end with EOC", ...) fails the file the same way: the pixels cannot be trusted.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legalign.pipeline.errors import InputError
from legalign.pipeline.read.codecs.base import CodecError, FileFrame
from legalign.pipeline.read.grey import stored_to_unit

log = logging.getLogger(__name__)

J2K_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)
JPEG_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline (process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG extended (process 2 & 4); 8-bit frames only
)
PROGRESSIVE_SYNTAXES = J2K_SYNTAXES + JPEG_SYNTAXES
DECODERS = ("auto", "cpu", "gpu")
DEFAULT_OVERVIEW_HEIGHT = 1024


class DecodeError(InputError):
    """A progressive decoder failed on the pixel data (corrupt or truncated stream)."""


@dataclass
class LevelImage:
    """Grey pixels (float32 [0, 1], bone bright) of the film or a region at one level.

    ``matrix`` (2x3) maps full-resolution image pixels to this array's pixels."""

    pixels: np.ndarray
    level: int
    matrix: np.ndarray


@dataclass
class _Codec:
    """The plugin chosen for a film and what it needs to know about the frame."""

    name: str
    decode: Any  # (frame, level, area) -> (int32 array, warnings)
    region: bool  # decodes a region without the rest
    centred: bool  # level pixel-centre convention (DCT) rather than DWT's n * 2**k
    max_level: int
    x_offset: int = 0  # JPEG 2000 image offset on the reference grid
    y_offset: int = 0


def _plugins_for(uid: str, decoder: str) -> list[str]:
    """Plugin names to try for a transfer syntax, best first."""
    if uid in J2K_SYNTAXES:
        cpu = ["openjpeg", "pillow-j2k"]
        if decoder == "cpu":
            return cpu
        if decoder == "gpu":
            return ["nvimgcodec"]
        return ["nvimgcodec", *cpu]
    if uid in JPEG_SYNTAXES:
        return [] if decoder == "gpu" else ["pillow-jpeg"]
    return []


def plugin_available(name: str) -> bool:
    """Whether a plugin can run here (library found; for the GPU, CUDA present)."""
    from legalign.pipeline.read import codecs  # noqa: F401 - package docstring lists them

    if name == "openjpeg":
        from legalign.pipeline.read.codecs import openjpeg as mod
    elif name == "pillow-j2k":
        from legalign.pipeline.read.codecs import pillow_j2k as mod
    elif name == "pillow-jpeg":
        from legalign.pipeline.read.codecs import pillow_jpeg as mod
    elif name == "nvimgcodec":
        from legalign.pipeline.read.codecs import nvimgcodec as mod
    else:
        return False
    return bool(mod.is_available())


def _codec_for(name: str, frame: FileFrame, rows: int, cols: int) -> _Codec | None:
    """The codec for this frame, or None when the frame is not one it should decode
    progressively (then the full path decodes it, with its own checks)."""
    from legalign.pipeline.read.codecs.base import j2k_codestream, parse_j2k_header

    if name in ("openjpeg", "pillow-j2k", "nvimgcodec"):
        h = parse_j2k_header(j2k_codestream(frame))
        if (h.width, h.height) != (cols, rows) or h.components != 1 or h.subsampled:
            return None
        if name == "openjpeg":
            from legalign.pipeline.read.codecs import openjpeg as mod
        elif name == "pillow-j2k":
            from legalign.pipeline.read.codecs import pillow_j2k as mod
        else:
            from legalign.pipeline.read.codecs import nvimgcodec as mod
        # OpenJPEG 2.5 decodes HTJ2K at reduced levels exactly, but an HTJ2K region comes
        # back empty (every sample at the DC level; measured with 2.5.4): cut HT regions
        # from a whole decoded level instead
        return _Codec(
            name=mod.NAME,
            decode=mod.decode,
            region=bool(getattr(mod, "REGION", True)) and not h.high_throughput,
            centred=bool(getattr(mod, "CENTRED", False)),
            max_level=int(h.levels),
            x_offset=h.x_offset,
            y_offset=h.y_offset,
        )
    if name == "pillow-jpeg":
        from legalign.pipeline.read.codecs import pillow_jpeg as mod

        width, height, precision, comps, sof = mod.frame_info(frame)
        if (width, height) != (cols, rows) or precision != 8 or comps != 1:
            return None
        if sof not in (0xC0, 0xC1):
            return None
        return _Codec(
            name=mod.NAME,
            decode=mod.decode,
            region=False,
            centred=True,
            max_level=mod.MAX_LEVEL,
        )
    return None


def _frame_precision_ok(codec: _Codec, frame: FileFrame, ds: Any) -> bool:
    """The codestream's precision and sign agree with Bits Stored / Pixel Representation
    (otherwise the full path, which checks values beyond Bits Stored, decodes it)."""
    from legalign.pipeline.read.codecs.base import j2k_codestream, parse_j2k_header

    stored = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if codec.name == "pillow-jpeg":
        return stored == 8 and not signed and int(ds.BitsAllocated) == 8
    h = parse_j2k_header(j2k_codestream(frame))
    return h.precision <= stored and h.signed == signed and stored <= 16


@dataclass
class ProgressiveFilm:
    """One DICOM film decoded on demand (see the module docstring)."""

    path: str
    ds: Any  # pydicom Dataset without pixel data
    height: int
    width: int
    transfer_syntax: str
    codec_name: str
    overview: LevelImage
    level_margin: int = 1
    _frame: Any = field(default=None, repr=False)  # FileFrame: read from the file on demand
    _codec: Any = field(default=None, repr=False)
    _table: np.ndarray | None = field(default=None, repr=False)
    _table_lo: int = 0
    _levels: dict[int, LevelImage] = field(default_factory=dict, repr=False)
    decoded_pixels: int = 0  # level pixels decoded so far (what the reads cost)

    @property
    def max_level(self) -> int:
        return int(self._codec.max_level)

    def spacing_at(self, spacing_mm: float | None, level: int) -> float | None:
        """The pixel spacing of level ``level``'s pixels (native spacing * 2**level)."""
        return None if spacing_mm is None else float(spacing_mm) * (1 << level)

    def level_shape(self, level: int) -> tuple[int, int]:
        p = 1 << level
        if self._codec.centred:
            return -(-self.height // p), -(-self.width // p)
        y0, x0 = self._codec.y_offset, self._codec.x_offset
        return (
            -(-(y0 + self.height) // p) - -(-y0 // p),
            -(-(x0 + self.width) // p) - -(-x0 // p),
        )

    def level_matrix(self, level: int) -> np.ndarray:
        """Full-resolution pixels -> level ``level`` pixels (2x3)."""
        p = float(1 << level)
        if self._codec.centred:
            t = 0.5 / p - 0.5
            return np.array([[1.0 / p, 0.0, t], [0.0, 1.0 / p, t]])
        x0, y0 = self._codec.x_offset, self._codec.y_offset
        tx = x0 / p - math.ceil(x0 / p)
        ty = y0 / p - math.ceil(y0 / p)
        return np.array([[1.0 / p, 0.0, tx], [0.0, 1.0 / p, ty]])

    # ------------------------------------------------------------------ decoding
    def _decode(self, level: int, area: tuple[int, int, int, int] | None) -> np.ndarray:
        try:
            raw, warnings = self._codec.decode(self._frame, level, area)
        except CodecError as exc:
            raise DecodeError(
                f"{self.path}: cannot decode pixel data ({_syntax_name(self.ds)}; {exc})"
            ) from None
        except MemoryError:
            raise DecodeError(
                f"{self.path}: out of memory decoding {_syntax_name(self.ds)}"
            ) from None
        if warnings:
            # OpenJPEG warns where it met damage it decoded around (a marker it expected,
            # a tile-part length past the end): the pixels cannot be trusted
            raise DecodeError(
                f"{self.path}: the decoder reported a damaged stream ({_syntax_name(self.ds)}, "
                f"{self.codec_name}: {' '.join(warnings[0].split())[:120]}); not used"
            )
        self.decoded_pixels += int(raw.size)
        return raw

    def _grey(self, raw: np.ndarray) -> np.ndarray:
        assert self._table is not None
        idx = np.clip(raw, self._table_lo, self._table_lo + len(self._table) - 1)
        idx -= self._table_lo
        return self._table[idx]

    def level(self, level: int) -> LevelImage:
        """The whole film at ``level`` (decoded once, then kept)."""
        level = int(min(max(level, 0), self.max_level))
        got = self._levels.get(level)
        if got is None:
            raw = self._decode(level, None)
            self._check_shape(raw, self.level_shape(level), level)
            got = LevelImage(self._grey(raw), level, self.level_matrix(level))
            self._levels[level] = got
        return got

    def region(self, level: int, box: tuple[int, int, int, int]) -> LevelImage:
        """Full-resolution box (x0, y0, x1, y1; end exclusive) at ``level``.

        Decoded alone where the codec can; else cut from the whole level (kept)."""
        level = int(min(max(level, 0), self.max_level))
        if level > self.overview.level:
            level = self.overview.level  # finer, and already decoded
        x0, y0, x1, y1 = (int(v) for v in box)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(self.width, x1), min(self.height, y1)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty region {box} of a {self.width} x {self.height} film")
        M = self.level_matrix(level)
        whole = self._levels.get(level)
        if whole is None and not self._codec.region:
            whole = self.level(level)
        if whole is None:
            raw = self._decode(level, (x0, y0, x1, y1))
            # the level samples the area covers: ceil(x0 / 2**k) .. ceil(x1 / 2**k)
            p = 1 << level
            gx0 = -(-(x0 + self._codec.x_offset) // p) - -(-self._codec.x_offset // p)
            gy0 = -(-(y0 + self._codec.y_offset) // p) - -(-self._codec.y_offset // p)
            pixels = self._grey(raw)
        else:
            lh, lw = whole.pixels.shape
            a = _apply(M, np.array([[x0, y0], [x1 - 1, y1 - 1]], dtype=np.float64))
            gx0 = max(0, int(math.floor(a[0, 0])))
            gy0 = max(0, int(math.floor(a[0, 1])))
            gx1 = min(lw, int(math.ceil(a[1, 0])) + 1)
            gy1 = min(lh, int(math.ceil(a[1, 1])) + 1)
            pixels = whole.pixels[gy0:gy1, gx0:gx1]
        T = M.copy()
        T[0, 2] -= gx0
        T[1, 2] -= gy0
        return LevelImage(pixels, level, T)

    def level_for_scale(self, scale: float) -> int:
        """The deepest level whose pixels are still at least as fine as an output that
        samples the film at ``scale`` output pixels per image pixel, ``level_margin``
        levels finer still."""
        if scale <= 0:
            return 0
        k = int(math.floor(math.log2(1.0 / scale) + 1e-9)) - self.level_margin
        return int(min(max(k, 0), self.max_level))

    def warp(self, A: np.ndarray, out_shape: tuple[int, int], border: float = 0.0) -> np.ndarray:
        """What ``models.crops.warp(full_film, A, out_shape, border)`` gives, from the
        region the output needs at the level its scale allows.

        The full path averages the film over ``f`` x ``f`` blocks, then resamples
        bilinearly (``crops.warp_plan``; the blocks lie on the film's own ``f``-pixel
        lattice).  Here the same blocks are averaged from the level image
        (``block_means``: two small matrix products), and the same bilinear step follows:
        at level 0 this is the full path's result; at a reduced level it differs only
        where the level's low-pass differs from the film within a block."""
        from legalign.models.crops import warp_blocks, warp_plan

        A = np.asarray(A, dtype=np.float64)
        plan = warp_plan((self.height, self.width), A, out_shape)
        if plan is None:
            return np.full(out_shape, border, dtype=np.float32)
        scale = math.sqrt(abs(float(np.linalg.det(A[:, :2]))))
        level = self.level_for_scale(scale)
        pad = 2 << level  # the interpolation's neighbours at that level
        part = self.region(level, (plan.x0 - pad, plan.y0 - pad, plan.x1 + pad, plan.y1 + pad))
        blocks = block_means(part.pixels, part.matrix, plan, bool(self._codec.centred))
        return warp_blocks(blocks, plan, A, out_shape, border)

    # ------------------------------------------- the coarse-to-fine stage's FilmPixels
    def whole(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The whole film through a letterbox ``matrix`` (served by the overview)."""
        return self.warp(matrix, size)

    def crop(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A crop through ``matrix`` (served by a region decode)."""
        return self.warp(matrix, size)

    # ------------------------------------------------------------------ checks
    def _check_shape(self, raw: np.ndarray, expect: tuple[int, int], level: int) -> None:
        if raw.shape != expect:
            raise DecodeError(
                f"{self.path}: decoded shape {raw.shape} at level {level} differs from the "
                f"header's {expect} ({_syntax_name(self.ds)})"
            )


def _axis_weights(
    p0: int, p1: int, f: int, a: float, b: float, n: int, box: bool = False
) -> np.ndarray:
    """(blocks, n) weights: the mean over each ``f`` run of full-resolution positions
    ``p0..p1-1`` of the ``n`` level samples at ``u = a p + b``: their linear interpolant,
    or (``box``) the sample whose block holds the position."""
    pos = np.arange(p0, p1, dtype=np.float64)
    u = np.clip(a * pos + b, 0.0, n - 1.0)
    rows = (np.arange(p1 - p0) // f).astype(np.int64)
    W = np.zeros(((p1 - p0) // f, n), dtype=np.float64)
    if box:
        # a pixel-centred level sample covers its 2**k block: full-resolution pixel p
        # belongs to the sample nearest to it (u = (p + 0.5) / 2**k - 0.5, exact in binary)
        np.add.at(W, (rows, np.floor(u + 0.5).astype(np.int64)), 1.0 / f)
        return W
    i0 = np.minimum(np.floor(u).astype(np.int64), max(n - 2, 0))
    t = u - i0
    np.add.at(W, (rows, i0), (1.0 - t) / f)
    if n > 1:
        np.add.at(W, (rows, i0 + 1), t / f)
    return W


def block_means(
    level_pixels: np.ndarray, matrix: np.ndarray, plan: Any, centred: bool = False
) -> np.ndarray:
    """The ``crops.WarpPlan`` region's ``f`` x ``f`` block means, from a level image whose
    ``matrix`` maps full-resolution pixels to its pixels (float32).

    ``centred``: the level's samples are (about) the means of their ``2**k`` blocks (a
    DCT-scaled JPEG level, a block-averaged GPU level): a block is the mean of the samples
    its pixels belong to, which is the full path's block mean when the samples are
    exact.  Otherwise (a JPEG 2000 DWT level: low-pass samples at ``n * 2**k``) the mean
    of their linear interpolant.  Measured on native and real-film DICOMs, each choice
    is the closer one to the full decode's blocks for its codec (baseline JPEG: mean
    difference of a knee crop 2e-4 with blocks of samples vs 5e-4 with the interpolant;
    JPEG 2000: 1e-4 with the interpolant vs 1e-3 with blocks)."""
    h, w = level_pixels.shape
    Wy = _axis_weights(plan.y0, plan.y1, plan.f, matrix[1, 1], matrix[1, 2], h, centred)
    Wx = _axis_weights(plan.x0, plan.x1, plan.f, matrix[0, 0], matrix[0, 2], w, centred)
    return (Wy @ level_pixels.astype(np.float64) @ Wx.T).astype(np.float32)


def _apply(M: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ M[:, :2].T + M[:, 2]


def _syntax_name(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return uid.name if uid is not None else "implicit VR little endian"


_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_END = b"\xfe\xff\xdd\xe0"


def read_frame(path: str, header: Any) -> FileFrame:
    """The single frame's fragments, located in the file (nothing is loaded); a
    ``DecodeError`` when the encapsulated pixel data is damaged or truncated."""
    syntax = _syntax_name(header.ds)
    truncated = DecodeError(
        f"{path}: truncated file (compressed pixel data, {syntax}, has no end delimiter)"
    )
    if header.pixel_length is not None:
        raise DecodeError(f"{path}: {syntax} pixel data is not encapsulated")
    pos = header.file_size - header.pixel_available
    spans: list[tuple[int, int]] = []
    first = True
    with open(path, "rb") as fh:
        while True:
            fh.seek(pos)
            tag = fh.read(8)
            if len(tag) < 8:
                raise truncated
            length = int.from_bytes(tag[4:], "little")
            if tag[:4] == _SEQ_END:
                break
            if tag[:4] != _ITEM or length == 0xFFFFFFFF:
                raise DecodeError(
                    f"{path}: cannot read pixel data ({syntax}; malformed fragment item at "
                    f"byte {pos})"
                )
            if pos + 8 + length > header.file_size:
                raise truncated
            if not first and length:
                spans.append((pos + 8, length))
            first = False  # the first item is the Basic Offset Table
            pos += 8 + length
    if not spans:
        raise DecodeError(f"{path}: cannot read pixel data ({syntax}; no fragments)")
    return FileFrame(path, tuple(spans))


def grey_table(ds: Any, path: str, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """(table, first stored value): stored value -> [0, 1] grey, as the full path maps
    it, for every value a frame of this header can hold; ``lo``..``hi`` is the range of
    the decoded overview (the min-max fallback's range when there is no usable VOI)."""

    name, uid = os.path.basename(path), str(ds.get("SOPInstanceUID", ""))
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    full_lo = -(1 << (bits - 1)) if signed else 0
    full_hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    dtype = np.int32
    seen = np.arange(lo, hi + 1, dtype=dtype)
    quiet = logging.getLogger("legalign.pipeline.read.dicom")
    table_seen = stored_to_unit(seen, ds, path, photometric, False, name, uid)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the same VOI warnings again would only repeat
    try:
        table_full = stored_to_unit(
            np.arange(full_lo, full_hi + 1, dtype=dtype), ds, path, photometric, False, name, uid
        )
    finally:
        quiet.setLevel(level)
    # the VOI applies value by value: the full table agrees with the seen one on the seen
    # range; when it does not, the full path fell back to min-max over the image's range
    if np.array_equal(table_full[lo - full_lo : hi - full_lo + 1], table_seen):
        return table_full.astype(np.float32, copy=False), full_lo
    return table_seen.astype(np.float32, copy=False), lo


def open_progressive(
    path: str,
    header: Any,
    *,
    decoder: str = "auto",
    overview_height: int = DEFAULT_OVERVIEW_HEIGHT,
    level_margin: int = 1,
) -> ProgressiveFilm | None:
    """A ``ProgressiveFilm`` for a checked DICOM header (``pipeline.read.dicom``'s
    ``read_header`` + ``check_header``), or None when the full path should decode it."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    ds = header.ds
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    names = [n for n in _plugins_for(uid, decoder) if plugin_available(n)]
    if not names:
        if decoder == "gpu" and uid in J2K_SYNTAXES:
            raise InputError(
                f"{path}: --decoder gpu asked, but nvImageCodec with CUDA is not available"
            )
        return None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    if int(ds.BitsStored) > 16:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    frame = read_frame(path, header)
    codec = None
    for name in names:
        try:
            codec = _codec_for(name, frame, rows, cols)
        except CodecError as exc:
            raise DecodeError(
                f"{path}: cannot decode pixel data ({_syntax_name(ds)}; {exc})"
            ) from None
        if codec is not None:
            break
    if codec is None or not _frame_precision_ok(codec, frame, ds):
        return None
    from legalign.pipeline.read.codecs.base import j2k_codestream

    if codec.name != "pillow-jpeg":
        frame = j2k_codestream(frame)
    film = ProgressiveFilm(
        path=path,
        ds=ds,
        height=rows,
        width=cols,
        transfer_syntax=uid,
        codec_name=codec.name,
        overview=LevelImage(np.zeros((0, 0), np.float32), 0, np.eye(2, 3)),
        level_margin=int(level_margin),
        _frame=frame,
        _codec=codec,
    )
    level = 0
    while level < codec.max_level and -(-rows // (1 << (level + 1))) >= overview_height:
        level += 1
    raw = film._decode(level, None)
    film._check_shape(raw, film.level_shape(level), level)
    lo, hi = int(raw.min()), int(raw.max())
    if lo == hi:
        what = "all zeros" if hi == 0 else f"uniform (every pixel {hi:g})"
        raise DecodeError(f"{path}: pixel data decoded to {what}; corrupt stream or blank image")
    film._table, film._table_lo = grey_table(ds, path, lo, hi)
    film.overview = LevelImage(film._grey(raw), level, film.level_matrix(level))
    film._levels[level] = film.overview
    return film
