"""JPEG 2000 / HTJ2K decoding at a reduced resolution level and over a region (OpenJPEG).

A thin ``ctypes`` binding to the OpenJPEG library that Pillow's wheel carries
(``pillow.libs/libopenjp2-*.so``, ``PIL/.dylibs/libopenjp2*.dylib``), or, when that is not
found, a system ``libopenjp2`` -- so the default install needs no system package.  OpenJPEG
>= 2.5 decodes Part 1 (JPEG 2000) and Part 15 (HTJ2K) codestreams, any tiling and
progression order, and decodes only the code-blocks a requested area and resolution need
(``opj_set_decode_area`` + ``cp_reduce``).

``decode(codestream, level, area)`` returns component 0 as an int32 array: the whole image
or ``area`` (x0, y0, x1, y1 in full-resolution pixels, end exclusive) at resolution level
``level`` (1 / 2**level of the full size; the output covers the level-``level`` samples
``ceil(x0 / 2**level) .. ceil(x1 / 2**level)``).  Every decoder error (and a truncated
stream) raises ``CodecError`` with OpenJPEG's message; warnings are returned to the caller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import lru_cache

import numpy as np

from legalign.pipeline.read.codecs.base import CodecError, FileFrame

NAME = "openjpeg"

_MSG_CB = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
_READ_CB = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_CB = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)
_END = ctypes.c_size_t(-1).value  # (OPJ_SIZE_T)-1: end of stream
_OPJ_CODEC_J2K = 0
_PARAMS_BYTES = 1 << 14  # opj_dparameters_t is about 8.3 kB; only its first fields are set


class _Comp(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - ctypes layout
        ("dx", ctypes.c_uint32),
        ("dy", ctypes.c_uint32),
        ("w", ctypes.c_uint32),
        ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("prec", ctypes.c_uint32),
        ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32),
        ("resno_decoded", ctypes.c_uint32),
        ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - ctypes layout
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("x1", ctypes.c_uint32),
        ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_Comp)),
    ]


def _candidates() -> list[str]:
    found: list[str] = []
    try:
        import PIL

        root = os.path.dirname(os.path.dirname(PIL.__file__))
        here = os.path.dirname(PIL.__file__)
        for pattern in (
            os.path.join(root, "pillow.libs", "libopenjp2*.so*"),
            os.path.join(here, ".dylibs", "libopenjp2*.dylib"),
        ):
            found += sorted(glob.glob(pattern))
    except ImportError:  # pragma: no cover - Pillow is a base dependency
        pass
    system = ctypes.util.find_library("openjp2")
    if system:
        found.append(system)
    return found


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            version = lib.opj_version
        except (OSError, AttributeError):
            continue
        version.restype = ctypes.c_char_p
        parts = tuple(int(p) for p in version().decode().split(".")[:2] if p.isdigit())
        if parts < (2, 5):  # HTJ2K decoding and reliable partial decoding came with 2.5
            continue
        _declare(lib)
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, i32 = ctypes.c_void_p, ctypes.c_int32
    sigs = {
        "opj_stream_create": (p, [ctypes.c_size_t, ctypes.c_int]),
        "opj_stream_destroy": (None, [p]),
        "opj_stream_set_read_function": (None, [p, _READ_CB]),
        "opj_stream_set_skip_function": (None, [p, _SKIP_CB]),
        "opj_stream_set_seek_function": (None, [p, _SEEK_CB]),
        "opj_stream_set_user_data": (None, [p, p, p]),
        "opj_stream_set_user_data_length": (None, [p, ctypes.c_uint64]),
        "opj_create_decompress": (p, [ctypes.c_int]),
        "opj_destroy_codec": (None, [p]),
        "opj_set_default_decoder_parameters": (None, [p]),
        "opj_setup_decoder": (ctypes.c_int, [p, p]),
        "opj_codec_set_threads": (ctypes.c_int, [p, ctypes.c_int]),
        "opj_decoder_set_strict_mode": (ctypes.c_int, [p, ctypes.c_int]),
        "opj_set_error_handler": (ctypes.c_int, [p, _MSG_CB, p]),
        "opj_set_warning_handler": (ctypes.c_int, [p, _MSG_CB, p]),
        "opj_set_info_handler": (ctypes.c_int, [p, _MSG_CB, p]),
        "opj_read_header": (ctypes.c_int, [p, p, ctypes.POINTER(ctypes.POINTER(_Image))]),
        "opj_set_decode_area": (ctypes.c_int, [p, ctypes.POINTER(_Image), i32, i32, i32, i32]),
        "opj_decode": (ctypes.c_int, [p, p, ctypes.POINTER(_Image)]),
        "opj_end_decompress": (ctypes.c_int, [p, p]),
        "opj_image_destroy": (None, [ctypes.POINTER(_Image)]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def is_available() -> bool:
    """Whether an OpenJPEG >= 2.5 library was found (Pillow's, else the system's)."""
    return _lib() is not None


def library_path() -> str | None:
    lib = _lib()
    return getattr(lib, "_name", None) if lib is not None else None


class _MemoryStream:
    """The read/skip/seek callbacks of an OpenJPEG input stream over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 0
        self.view = np.frombuffer(data, dtype=np.uint8)  # no copy; read only
        self.base = int(self.view.ctypes.data)
        self.read = _READ_CB(self._read)
        self.skip = _SKIP_CB(self._skip)
        self.seek = _SEEK_CB(self._seek)

    def _read(self, dest: int, n: int, _user: int) -> int:
        left = self.size - self.pos
        if left <= 0:
            return _END
        n = min(n, left)
        ctypes.memmove(dest, self.base + self.pos, n)
        self.pos += n
        return n

    def _skip(self, n: int, _user: int) -> int:
        new = min(max(0, self.pos + n), self.size)
        moved = new - self.pos
        self.pos = new
        return moved

    def _seek(self, n: int, _user: int) -> int:
        if not 0 <= n <= self.size:
            return 0
        self.pos = n
        return 1


class _FileStream(_MemoryStream):
    """The same callbacks over a codestream left in its file (``FileFrame``)."""

    def __init__(self, frame: FileFrame) -> None:  # noqa: D107 - no super(): no bytes
        self.frame = frame
        self.size = frame.size
        self.pos = 0
        self.read = _READ_CB(self._read)
        self.skip = _SKIP_CB(self._skip)
        self.seek = _SEEK_CB(self._seek)

    def _read(self, dest: int, n: int, _user: int) -> int:
        left = self.size - self.pos
        if left <= 0:
            return _END
        n = min(n, left)
        view = memoryview((ctypes.c_char * n).from_address(dest)).cast("B")
        try:
            got = self.frame.readinto(self.pos, view)
        except (OSError, CodecError):
            return _END
        if not got:
            return _END
        self.pos += got
        return got


def decode(
    codestream: bytes | FileFrame,
    level: int = 0,
    area: tuple[int, int, int, int] | None = None,
    *,
    threads: int = 1,
) -> tuple[np.ndarray, list[str]]:
    """(component 0 as int32 (h, w), OpenJPEG warnings) for ``area`` at ``level``."""
    lib = _lib()
    if lib is None:
        raise CodecError("OpenJPEG >= 2.5 library not found")
    errors: list[str] = []
    warnings: list[str] = []

    def on_error(msg: bytes, _user: int) -> None:
        errors.append(msg.decode("utf-8", "replace").strip())

    def on_warning(msg: bytes, _user: int) -> None:
        warnings.append(msg.decode("utf-8", "replace").strip())

    err_cb, warn_cb, info_cb = _MSG_CB(on_error), _MSG_CB(on_warning), _MSG_CB(lambda m, u: None)
    mem = (
        _FileStream(codestream) if isinstance(codestream, FileFrame) else _MemoryStream(codestream)
    )
    params = ctypes.create_string_buffer(_PARAMS_BYTES)
    stream = lib.opj_stream_create(1 << 20, 1)
    codec = lib.opj_create_decompress(_OPJ_CODEC_J2K)
    image = ctypes.POINTER(_Image)()
    try:
        if not stream or not codec:
            raise CodecError("OpenJPEG could not create a decoder")
        lib.opj_stream_set_read_function(stream, mem.read)
        lib.opj_stream_set_skip_function(stream, mem.skip)
        lib.opj_stream_set_seek_function(stream, mem.seek)
        lib.opj_stream_set_user_data(stream, None, None)
        lib.opj_stream_set_user_data_length(stream, mem.size)
        lib.opj_set_error_handler(codec, err_cb, None)
        lib.opj_set_warning_handler(codec, warn_cb, None)
        lib.opj_set_info_handler(codec, info_cb, None)
        lib.opj_set_default_decoder_parameters(params)
        ctypes.c_uint32.from_buffer(params, 0).value = int(level)  # cp_reduce
        ctypes.c_uint32.from_buffer(params, 4).value = 0  # cp_layer: all layers
        if not lib.opj_setup_decoder(codec, params):
            raise CodecError(_message("cannot set up the decoder", errors))
        lib.opj_codec_set_threads(codec, int(threads))
        # strict: a codestream that ends early (truncated data) is an error, not a
        # partially decoded image (OpenJPEG >= 2.5)
        if not lib.opj_decoder_set_strict_mode(codec, 1):
            raise CodecError(_message("cannot set strict mode", errors))
        if not lib.opj_read_header(stream, codec, ctypes.byref(image)):
            raise CodecError(_message("cannot read the codestream header", errors))
        img = image.contents
        if img.numcomps < 1:
            raise CodecError("codestream has no components")
        if area is not None:
            x0, y0, x1, y1 = (int(v) for v in area)
            if not lib.opj_set_decode_area(
                codec, image, img.x0 + x0, img.y0 + y0, img.x0 + x1, img.y0 + y1
            ):
                raise CodecError(_message(f"cannot set the decode area {area}", errors))
        if not lib.opj_decode(codec, stream, image):
            raise CodecError(_message("decoding failed", errors))
        if not lib.opj_end_decompress(codec, stream):
            raise CodecError(_message("decoding did not end cleanly", errors))
        if errors:
            raise CodecError(_message("decoder reported errors", errors))
        comp = image.contents.comps[0]
        h, w = int(comp.h), int(comp.w)
        if h <= 0 or w <= 0 or not comp.data:
            raise CodecError("decoder returned an empty image")
        out = np.ctypeslib.as_array(comp.data, shape=(h, w)).copy()
    finally:
        if image:
            lib.opj_image_destroy(image)
        if codec:
            lib.opj_destroy_codec(codec)
        if stream:
            lib.opj_stream_destroy(stream)
    return out, warnings


def _message(what: str, errors: list[str]) -> str:
    detail = "; ".join(e for e in errors if e)[:200]
    return f"OpenJPEG: {what}" + (f" ({detail})" if detail else "")
