"""DICOM radiographs -> ``Radiograph`` (pydicom 3 with the pylibjpeg / gdcm / pyjpegls plugins).

Accepted modalities (``ACCEPTED_MODALITIES``): DX and CR (digital and computed
radiography), RG (radiographic imaging, film/screen), the non-standard "DR" some vendors
write for DX, and OT, which stitching workstations and film digitisers use for the
Secondary Capture objects that hold many full-leg films.  Everything else (CT, MR, US,
MG, XA, SR, ...) is refused with "wrong modality".  A file without a Modality is accepted
only when its SOP class is a radiograph or Secondary Capture image.

Grey levels: ``apply_modality_lut``, then ``apply_voi_lut`` (first VOI LUT or window; no
VOI: min-max), scaled to float32 [0, 1], MONOCHROME1 inverted after the VOI so that bone is
bright.  Checks before decoding: the header is readable, an image, single frame, a
radiograph modality, and Rows x Columns <= max_pixels.  Checks after decoding: the array
has the header's shape and is not uniform (all-zero decodes are a known JPEG 2000 failure);
values beyond Bits Stored (a codestream whose precision disagrees with the header) are
logged and normalised by their actual range instead of the header's window.

Only file names and UIDs are logged, never patient attributes.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import ExplicitVRLittleEndian

from legalign.pipeline.errors import InputError, NotAnImageError, TooLargeError, WrongModalityError
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.read.codecs import openjpeg
from legalign.pipeline.read.codecs.base import CodecError, FileFrame
from legalign.pipeline.read.grey import COLOUR, GREY, one_line, to_unit_grey
from legalign.pipeline.read.native_stderr import native_stderr
from legalign.pipeline.read.progressive import (
    DEFAULT_OVERVIEW_HEIGHT,
    J2K_SYNTAXES,
    open_progressive,
    read_frame,
)
from legalign.pipeline.read.spacing import resolve_spacing

log = logging.getLogger(__name__)

ACCEPTED_MODALITIES = ("DX", "CR", "DR", "RG", "OT")
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
}


def has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM data set without preamble/meta: starts with a group 0x0002 or 0x0008 tag."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00")


@dataclass
class DicomHeader:
    """A header read up to the pixel data, and what follows it in the file."""

    ds: Any  # pydicom Dataset without PixelData
    file_size: int
    has_pixel_data: bool  # the file continues with a (7FE0,0010) Pixel Data element
    pixel_length: int | None = None  # declared value length; None when undefined (encapsulated)
    pixel_available: int = 0  # bytes in the file after the Pixel Data element header
    pixel_offset: int = 0  # where the pixel data's value starts
    # the data set as decoded bytes when the file is deflated (read from memory, not path)
    inflated: bytes | None = None

    def source(self, path: str) -> Any:
        """What to hand pydicom for the full data set: the path, or the inflated bytes."""
        return io.BytesIO(self.inflated) if self.inflated is not None else path


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
DEFLATED_UID = "1.2.840.10008.1.2.1.99"
# bytes a deflated data set may inflate to beyond the pixels themselves (header, overlays)
_INFLATE_SLACK = 16 << 20


def inflate_budget(max_pixels: int) -> int:
    """The most bytes a deflated data set may inflate to: ``max_pixels`` worth of the
    float32 image the reader produces, plus header slack.  A decompression bomb is
    refused when it crosses this, before more is allocated."""
    return int(max_pixels) * 4 + _INFLATE_SLACK


def _inflated_file(path: str, fh: Any, budget: int) -> bytes | None:
    """For a Deflated Explicit VR Little Endian file: preamble + meta (now saying explicit
    VR little endian) + the inflated data set, inflated in bounded steps.  None for any
    other transfer syntax."""
    fh.seek(0)
    head = fh.read(144)
    if not has_preamble(head) or head[132:136] != b"\x02\x00\x00\x00":
        return None
    fh.seek(0)
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - the normal path reports the damage
        return None
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_UID:
        return None
    group_length = int.from_bytes(head[140:144], "little")
    fh.seek(144 + group_length)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = DicomBytesIO()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    limit = out.tell() + budget
    try:
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or fh.read(1 << 20)
            if not chunk:
                break
            out.write(inflater.decompress(chunk, 1 << 22))
            if out.tell() > limit:
                raise TooLargeError(
                    f"{path}: deflated data set inflates to more than {budget} bytes "
                    "(decompression bomb, or a film beyond --max-pixels); refused"
                )
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt deflated data set ({exc})") from None
    return out.getvalue()


def read_header(path: str, max_pixels: int | None = None) -> DicomHeader:
    """Parse the data set up to the pixel data; ``InputError`` when it is not readable DICOM.
    A deflated file is inflated in memory, at most ``inflate_budget(max_pixels)`` bytes."""

    fh: BinaryIO
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({one_line(exc)})") from None
    inflated = None
    with fh:
        inflated = _inflated_file(path, fh, inflate_budget(max_pixels or 80_000_000))
        if inflated is not None:
            fh.close()
            fh = io.BytesIO(inflated)
        fh.seek(0)
        head = fh.read(132)
        fh.seek(0)
        force = not has_preamble(head)
        if force and not looks_like_raw_dicom(head):
            raise NotAnImageError(f"{path}: not a DICOM file (no 'DICM' marker)")
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force)
        except InvalidDicomError as exc:
            raise NotAnImageError(f"{path}: not a DICOM file ({one_line(exc)})") from None
        except MemoryError:
            raise InputError(f"{path}: corrupt DICOM header (out of memory parsing it)") from None
        except Exception as exc:  # EOFError, struct.error, ValueError, ... from a damaged file
            raise InputError(
                f"{path}: truncated or corrupt DICOM header ({one_line(exc)})"
            ) from None
        pos = fh.tell()
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(pos)
        element = fh.read(12)
    header = DicomHeader(
        ds=ds, file_size=size, has_pixel_data=element[:4] == _PIXEL_DATA_TAG, inflated=inflated
    )
    if header.has_pixel_data:
        try:
            implicit = bool(ds.original_encoding[0])
        except Exception:
            implicit = False
        if implicit and len(element) >= 8:
            length, start = int.from_bytes(element[4:8], "little"), pos + 8
        elif len(element) >= 12:
            length, start = int.from_bytes(element[8:12], "little"), pos + 12
        else:
            length, start = 0, size
        header.pixel_length = None if length == 0xFFFFFFFF else length
        header.pixel_available = max(0, size - start)
        header.pixel_offset = start
    return header


def codestream_size(path: str, header: DicomHeader) -> tuple[int, int] | None:
    """(columns, rows) declared by the first JPEG 2000 / JPEG / JPEG-LS codestream of
    encapsulated pixel data (read from its first kilobytes, not decoded), or None."""
    if header.pixel_length is not None or not header.has_pixel_data:
        return None
    if header.inflated is not None:
        head = header.inflated[header.pixel_offset : header.pixel_offset + 65536]
    else:
        with open(path, "rb") as fh:
            fh.seek(header.pixel_offset)
            head = fh.read(65536)
    siz = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ
    if siz >= 0 and len(head) >= siz + 24:
        b = siz + 2
        xsiz, ysiz, xo, yo = (
            int.from_bytes(head[b + 6 + 4 * i : b + 10 + 4 * i], "big") for i in range(4)
        )
        return max(0, xsiz - xo), max(0, ysiz - yo)
    soi = head.find(b"\xff\xd8\xff")  # JPEG / JPEG-LS: walk the markers to the SOF
    if soi < 0:
        return None
    i = soi + 2
    while i + 9 <= len(head) and head[i] == 0xFF:
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            rows = int.from_bytes(head[i + 5 : i + 7], "big")
            cols = int.from_bytes(head[i + 7 : i + 9], "big")
            return cols, rows
        i += 2 + length
    return None


def _int(ds: Any, keyword: str, path: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            raise NotAnImageError(f"{path}: not an image (no {keyword})")
        return int(value)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: invalid {keyword} ({one_line(exc)})") from None


def check_header(header: DicomHeader, path: str, max_pixels: int) -> None:
    """Refuse, from the header alone, what cannot or must not be decoded."""
    ds = header.ds
    try:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        sop_class = str(ds.get("SOPClassUID", "") or "")
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception as exc:
        raise InputError(f"{path}: corrupt DICOM header ({one_line(exc)})") from None
    if modality:
        if modality not in ACCEPTED_MODALITIES:
            raise WrongModalityError(
                f"{path}: wrong modality {modality} (expected a radiograph: "
                f"{', '.join(ACCEPTED_MODALITIES)})"
            )
    if not header.has_pixel_data:
        if modality or sop_class:
            name = IMAGE_SOP_CLASSES.get(sop_class, sop_class or "unknown SOP class")
            raise NotAnImageError(
                f"{path}: no pixel data ({name}; the data set ends at byte "
                f"{header.file_size}: not an image, or truncated)"
            )
        raise InputError(
            f"{path}: truncated or incomplete DICOM file ({header.file_size} bytes, "
            "no SOP Class UID, Modality or pixel data)"
        )
    if not modality and sop_class not in IMAGE_SOP_CLASSES:
        raise WrongModalityError(
            f"{path}: wrong modality (none given; SOP class {sop_class or 'missing'} "
            "is not a radiograph)"
        )
    rows = _int(ds, "Rows", path)
    cols = _int(ds, "Columns", path)
    if rows <= 0 or cols <= 0:
        raise InputError(f"{path}: invalid image size {cols} x {rows}")
    frames = _int(ds, "NumberOfFrames", path, 1)
    if frames != 1:
        raise NotAnImageError(f"{path}: multi-frame image ({frames} frames); expected one film")
    samples = _int(ds, "SamplesPerPixel", path, 1)
    if photometric in GREY:
        if samples != 1:
            raise InputError(f"{path}: {photometric} with SamplesPerPixel {samples}")
    elif photometric in COLOUR:
        if samples != 3:
            raise InputError(f"{path}: {photometric} with SamplesPerPixel {samples}")
    else:
        raise NotAnImageError(
            f"{path}: unsupported PhotometricInterpretation {photometric or '(missing)'}"
        )
    allocated = _int(ds, "BitsAllocated", path)
    stored = _int(ds, "BitsStored", path)
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated:
        raise NotAnImageError(f"{path}: unsupported BitsAllocated/BitsStored {allocated}/{stored}")
    if rows * cols > max_pixels:
        raise TooLargeError(
            f"{path}: image too large ({cols} x {rows} = {rows * cols} pixels > "
            f"max_pixels {max_pixels})"
        )
    if header.pixel_length is not None:  # native (uncompressed) pixel data
        needed = rows * cols * samples * allocated // 8
        if header.pixel_length < needed:
            raise InputError(
                f"{path}: pixel data too short ({header.pixel_length} bytes for "
                f"{cols} x {rows} x {allocated} bits)"
            )
        if header.pixel_available < min(header.pixel_length, needed):
            raise InputError(
                f"{path}: truncated file (pixel data {header.pixel_available} of "
                f"{header.pixel_length} bytes)"
            )
    else:
        declared = codestream_size(path, header)
        if declared is not None and declared != (cols, rows):
            w, h = declared
            if w * h > max_pixels:
                raise TooLargeError(
                    f"{path}: image too large (the compressed stream declares {w} x {h} = "
                    f"{w * h} pixels > max_pixels {max_pixels}; header says {cols} x {rows})"
                )
            raise InputError(
                f"{path}: compressed stream declares {w} x {h} pixels, the header {cols} x {rows}"
            )


def _transfer_syntax_name(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return uid.name if uid is not None else "implicit VR little endian"


_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _ends_with_delimiter(path: str, tail_bytes: int = 65536) -> bool:
    """Whether the encapsulated pixel data's sequence delimiter is near the end of the file."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - tail_bytes))
        return _SEQUENCE_DELIMITER in fh.read()


# Measured on a 2500 x 7000 16-bit film: pyjpegls decodes JPEG-LS twice as fast as gdcm
# (pydicom's default order); pylibjpeg is the fast choice for RLE and JPEG 2000.
_PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": "pylibjpeg",  # RLE lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg",  # JPEG 2000
}


def _preferred_plugin(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    plugin = _PREFERRED_PLUGINS.get(uid, "")
    if not plugin:
        return ""
    try:
        return plugin if plugin in get_decoder(uid).available_plugins else ""
    except Exception:
        return ""


def _decomposition_levels(frame: FileFrame) -> int:
    """The COD marker's number of wavelet decomposition levels (0 when not found), from
    the main header's marker segments (SOC, then segments up to the first SOT)."""
    head = bytearray(min(frame.size, 4096))
    view = memoryview(head)
    got = frame.readinto(0, view)
    frame_head = bytes(head[:got])
    pos = 2
    while pos + 4 <= len(frame_head) and frame_head[pos] == 0xFF:
        marker = frame_head[pos + 1]
        length = int.from_bytes(frame_head[pos + 2 : pos + 4], "big")
        if marker == 0x90:  # SOT: the main header ended without COD
            return 0
        if marker == 0x52 and pos + 9 < len(frame_head):  # COD: Scod, SGcod(4), levels
            return int(frame_head[pos + 9])
        pos += 2 + length
    return 0


def _check_j2k_stream(path: str, header: DicomHeader) -> None:
    """pylibjpeg's OpenJPEG drops the decoder's warnings (a SOP marker it expected, a
    tile-part length past the end: damage it decoded around).  For a JPEG 2000 film the
    codestream is decoded once more at its deepest level (the smallest image; the
    markers and packet headers are read all the same) with this package's OpenJPEG
    binding, and a warning or error fails the file."""
    ds = header.ds
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if uid not in J2K_SYNTAXES or header.inflated is not None or not openjpeg.is_available():
        return
    try:
        frame = read_frame(path, header)  # the fragments located in the file, not loaded
        _, warnings = openjpeg.decode(frame, level=_decomposition_levels(frame))
    except (CodecError, OSError) as exc:
        raise InputError(
            f"{path}: cannot decode pixel data ({_transfer_syntax_name(ds)}; {one_line(exc)})"
        ) from None
    if warnings:
        raise InputError(
            f"{path}: the decoder reported a damaged stream ({_transfer_syntax_name(ds)}: "
            f"{' '.join(warnings[0].split())[:120]}); not used"
        )


def decode(path: str, header: DicomHeader) -> np.ndarray:
    """Decode the single frame; ``InputError`` on any decoder failure."""

    ds = header.ds
    if header.inflated is not None:
        head = header.inflated[:132]
    else:
        with open(path, "rb") as fh:
            head = fh.read(132)
    try:
        if has_preamble(head):
            source: Any = header.source(path)
        else:
            source = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in source.file_meta:
                implicit, little = source.original_encoding
                source.file_meta.TransferSyntaxUID = (
                    pydicom.uid.ImplicitVRLittleEndian
                    if implicit
                    else pydicom.uid.ExplicitVRLittleEndian
                    if little
                    else pydicom.uid.ExplicitVRBigEndian
                )
        plugin = _preferred_plugin(ds)
        arr = None
        with native_stderr() as messages:
            if plugin:
                try:
                    arr = pixel_array(source, decoding_plugin=plugin)
                except MemoryError:
                    raise
                except Exception as exc:
                    log.debug("%s: plugin %s failed (%s), trying the others", path, plugin, exc)
                if hasattr(source, "seek"):
                    source.seek(0)
            if arr is None:
                arr = pixel_array(source)
        if messages:
            raise InputError(
                f"{path}: the decoder reported a damaged stream ({_transfer_syntax_name(ds)}: "
                f"{messages[0][:120]}); not used"
            )
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: out of memory decoding {_transfer_syntax_name(ds)}") from None
    except Exception as exc:
        syntax = _transfer_syntax_name(ds)
        if header.pixel_length is None and not _ends_with_delimiter(path):
            raise InputError(
                f"{path}: truncated file (compressed pixel data, {syntax}, has no end delimiter)"
            ) from None
        raise InputError(f"{path}: cannot decode pixel data ({syntax}; {one_line(exc)})") from None
    _check_j2k_stream(path, header)
    expected = (int(ds.Rows), int(ds.Columns))
    if arr.shape[:2] != expected:
        raise InputError(
            f"{path}: decoded shape {arr.shape[:2]} differs from the header {expected}"
        )
    return arr


def _mirrored(ds: Any) -> bool | None:
    orientation = ds.get("PatientOrientation")
    if not orientation:
        return None
    first = orientation[0] if not isinstance(orientation, str) else orientation.split("\\")[0]
    first = str(first).strip().upper()
    if first.startswith("R"):
        return True
    if first.startswith("L"):
        return False
    return None


def _laterality(ds: Any) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("R", "L", "B"):
            return value
    return None


def _str_or_none(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def read_dicom(
    path: str,
    *,
    spacing_override_mm: float | None = None,
    max_pixels: int = 80_000_000,
    decoder: str = "full",
    overview_height: int | None = None,
) -> Radiograph:
    """``decoder`` "full" decodes the whole film (today's path, every syntax); "auto",
    "cpu" or "gpu" read JPEG 2000 / HTJ2K / baseline JPEG resolution-progressively
    (``pipeline.read.progressive``; other syntaxes keep the full decode)."""
    header = read_header(path, max_pixels)
    check_header(header, path, max_pixels)
    ds = header.ds
    spacing, source = resolve_spacing(ds, path, spacing_override_mm)
    film = None
    if decoder != "full":
        film = open_progressive(
            path,
            header,
            decoder=decoder,
            overview_height=overview_height or DEFAULT_OVERVIEW_HEIGHT,
        )
    if film is not None:
        pixels = film.overview.pixels
    else:
        arr = decode(path, header)
        pixels = to_unit_grey(arr, ds, path)
        del arr
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    return Radiograph(
        path=path,
        pixels=pixels,
        source=film,
        full_size=(film.height, film.width) if film is not None else None,
        pixels_matrix=film.overview.matrix if film is not None else None,
        spacing_mm=spacing,
        spacing_source=source,
        mirrored=_mirrored(ds),
        laterality=_laterality(ds),
        modality=modality,
        sop_instance_uid=_str_or_none(ds, "SOPInstanceUID"),
        study_instance_uid=_str_or_none(ds, "StudyInstanceUID"),
        series_instance_uid=_str_or_none(ds, "SeriesInstanceUID"),
        bits_stored=int(ds.BitsStored),
        header=ds,
    )
