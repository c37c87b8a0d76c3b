"""DICOM archive factory: write synthetic films as DX or CR objects a PACS would accept.

The synthetic generator (``training/synth``) produces a ``SyntheticFilm`` (uint16 image,
bone bright, values < 2**bits_stored, patient-plane ``spacing_mm``, ``legs``,
``mirrored``).  ``write_film_dicom`` stores it as

- Digital X-Ray Image Storage - For Presentation (modality DX) or Computed Radiography
  Image Storage (modality CR),
- MONOCHROME1 or MONOCHROME2, Bits Stored 12, 14 or 16 (Bits Allocated 16, unsigned),
- one of the spacing tag conventions met in archives (see ``SPACING_TAGS``),
- with a VOI window, PatientOrientation, ImageLaterality, BodyPartExamined, ViewPosition,
- in explicit VR little endian, RLE lossless, JPEG-LS lossless or JPEG 2000 lossless
  (pydicom's encoders with the pylibjpeg / pyjpegls plugins), and on request HTJ2K
  lossless (the optional ``imagecodecs`` package) or 8-bit baseline JPEG (Pillow),

with every UID derived deterministically from ``(seed, index)`` and synthetic patient
names only (``SYNTHETIC^0001``).  The files pass ``dciodvfy`` (dicom3tools) without errors.

Stored values: the film's values, rescaled linearly when ``options.bits_stored`` differs
from ``film.bits_stored``, inverted (``max - v``) for MONOCHROME1; ``stored_pixel_array``
returns exactly what the PixelData decodes to.  The VOI window spans the 0.5-99.5 %
grey levels of the stored values.  JPEG 2000 needs at least 32 rows and columns
(openjpeg's 6 resolution levels); smaller films raise ``ValueError``.

Physical model of the spacing tags: the detector always sees the patient magnified by
``options.magnification``, so wherever ImagerPixelSpacing is written it is
``spacing_mm * magnification``; PixelSpacing, where written, is the patient-plane
``spacing_mm``.  ``reported_spacing`` says what a reader following
docs/clinical-geometry.md ("Calibration") should report for a file.

DX carries ImagerPixelSpacing as a Type 1 attribute (DX Detector module), so
``spacing_tags="pixel"`` (PixelSpacing only) is valid for CR only; asking for it with DX
raises ``ValueError`` and ``random_dicom_options`` never draws it.  The CR IOD has no
EstimatedRadiographicMagnificationFactor (DX has it in DX Positioning): CR with
``"imager+magnification"`` is written on request (some vendors do it) and then draws two
dciodvfy *warnings* (Standard Extended SOP Class), no errors; ``random_dicom_options``
does not draw it.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

MODALITIES = ("DX", "CR")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
BITS_STORED = (12, 14, 16)
TRANSFER_SYNTAXES = ("explicit", "rle", "jpegls", "j2k")
# Written on request only (``random_dicom_options`` keeps drawing from the four above, so
# a seed makes the same archive as before): HTJ2K lossless (needs the optional
# ``imagecodecs`` package, whose OpenJPH encoder writes Part 15 codestreams) and 8-bit
# baseline JPEG (Pillow's libjpeg; lossy, Bits Stored 8).
EXTRA_TRANSFER_SYNTAXES = ("htj2k", "jpeg")
ALL_TRANSFER_SYNTAXES = TRANSFER_SYNTAXES + EXTRA_TRANSFER_SYNTAXES
JPEG_QUALITY = 95
SPACING_TAGS = ("pixel", "imager", "imager+magnification", "both")

DX_FOR_PRESENTATION_UID = "1.2.840.10008.5.1.4.1.1.1.1"
CR_UID = "1.2.840.10008.5.1.4.1.1.1"
SOP_CLASS_UIDS = {"DX": DX_FOR_PRESENTATION_UID, "CR": CR_UID}

# Anatomic Region: SNOMED CT "Lower limb" (CID 4031).  Body Part Examined: "LEG", the
# defined term validators know (dciodvfy warns on "LOWER LIMB") and full-leg archives use.
_ANATOMY = ("61685007", "SCT", "Lower limb")
_BODY_PART = "LEG"
# View: SNOMED CT "antero-posterior" (CID 4010), matching ViewPosition "AP".
_VIEW_AP = ("399348003", "SCT", "antero-posterior")
# openjpeg (pylibjpeg-openjpeg) encodes with 6 DWT resolutions: tiles need >= 32 pixels.
_J2K_MIN_SIZE = 32
_UID_NAMESPACE = "legalign-synth-dicom-archive-v1"
_BASE_DATE = _dt.datetime(2024, 1, 1, 8, 0, 0)


class FilmLike(Protocol):
    """What ``write_film_dicom`` needs from ``training.synth``'s ``SyntheticFilm``."""

    image: np.ndarray
    bits_stored: int
    spacing_mm: float
    legs: list[Any]
    mirrored: bool


@dataclass
class DicomOptions:
    """How one film is stored.  See the module docstring for the meaning of each field."""

    modality: str = "DX"
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    transfer_syntax: str = "explicit"
    spacing_tags: str = "imager+magnification"
    magnification: float = 1.1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for options no valid object can carry."""
        for name, allowed in (
            ("modality", MODALITIES),
            ("photometric", PHOTOMETRICS),
            ("bits_stored", (*BITS_STORED, 8)),
            ("transfer_syntax", ALL_TRANSFER_SYNTAXES),
            ("spacing_tags", SPACING_TAGS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"DicomOptions.{name}={value!r}; expected one of {allowed}")
        if not (np.isfinite(self.magnification) and 1.0 <= self.magnification <= 2.0):
            raise ValueError(
                f"DicomOptions.magnification={self.magnification!r}; expected 1.0 to 2.0"
            )
        if (self.bits_stored == 8) != (self.transfer_syntax == "jpeg"):
            raise ValueError(
                "DicomOptions: transfer_syntax='jpeg' (8-bit baseline JPEG) needs "
                f"bits_stored=8 and bits_stored=8 needs it (got {self.transfer_syntax!r}, "
                f"{self.bits_stored})"
            )
        if self.modality == "DX" and self.spacing_tags == "pixel":
            raise ValueError(
                "DicomOptions: DX requires ImagerPixelSpacing (Type 1, DX Detector module); "
                "spacing_tags='pixel' is valid for CR only"
            )


def random_dicom_options(rng: np.random.Generator) -> DicomOptions:
    """Draw storage options covering what archives hold (DX more often than CR)."""
    modality = "DX" if rng.random() < 0.6 else "CR"
    photometric = "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"
    bits = int(rng.choice(BITS_STORED))
    syntax = str(rng.choice(TRANSFER_SYNTAXES))
    # CR: no EstimatedRadiographicMagnificationFactor (it is not in the CR IOD; dciodvfy
    # calls such files Standard Extended).  DX: no PixelSpacing-only (invalid).
    choices = ("pixel", "imager", "both") if modality == "CR" else SPACING_TAGS[1:]
    spacing_tags = str(rng.choice(choices))
    magnification = round(float(rng.uniform(1.05, 1.2)), 3)
    return DicomOptions(
        modality=modality,
        photometric=photometric,
        bits_stored=bits,
        transfer_syntax=syntax,
        spacing_tags=spacing_tags,
        magnification=magnification,
    )


def _ds_number(value: float) -> str:
    """A decimal string (at most 16 characters) for ``value``."""

    return format_number_as_ds(float(value))


def reported_spacing(film: FilmLike, options: DicomOptions) -> tuple[float, str]:
    """(spacing in mm, source) that a reader following the Calibration rules reports.

    The values are those written to the file (decimal strings), so the reader should
    match them to float precision.
    """
    spacing = float(_ds_number(film.spacing_mm))
    imager = float(_ds_number(film.spacing_mm * options.magnification))
    mag = float(_ds_number(options.magnification))
    if options.spacing_tags in ("pixel", "both"):
        return spacing, "PixelSpacing"
    if options.spacing_tags == "imager+magnification":
        return imager / mag, "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    return imager, "ImagerPixelSpacing (no magnification correction)"


def stored_pixel_array(film: FilmLike, options: DicomOptions) -> np.ndarray:
    """The exact uint16 array (uint8 for 8 bits) that the written PixelData decodes to
    (before lossy JPEG compression, for ``"jpeg"``).

    The film's values are rescaled from ``film.bits_stored`` to ``options.bits_stored``
    when they differ (linear, rounded), then inverted (``max - v``) for MONOCHROME1.
    """
    image = np.asarray(film.image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"film image must be a non-empty 2-D array, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.integer):
        raise ValueError(f"film image must be an integer array, got {image.dtype}")
    src_bits = int(film.bits_stored)
    if not 1 <= src_bits <= 16:
        raise ValueError(f"film bits_stored={src_bits} outside 1..16")
    src_max = (1 << src_bits) - 1
    if int(image.min()) < 0 or int(image.max()) > src_max:
        raise ValueError(
            f"film values {int(image.min())}..{int(image.max())} do not fit bits_stored={src_bits}"
        )
    dst_max = (1 << options.bits_stored) - 1
    if src_bits == options.bits_stored:
        out = image.astype(np.uint16)
    else:
        out = np.rint(image.astype(np.float64) * (dst_max / src_max)).astype(np.uint16)
    if options.photometric == "MONOCHROME1":
        out = (dst_max - out.astype(np.int32)).astype(np.uint16)
    if options.bits_stored <= 8:
        return np.ascontiguousarray(out, dtype=np.uint8)
    return np.ascontiguousarray(out, dtype="<u2")


def _uid(seed: int, index: int, what: str) -> str:

    return generate_uid(entropy_srcs=[_UID_NAMESPACE, str(int(seed)), str(int(index)), what])


def _laterality(film: FilmLike) -> str:
    sides = {getattr(leg, "side", None) for leg in film.legs}
    if sides == {"right"}:
        return "R"
    if sides == {"left"}:
        return "L"
    # Both legs, or a film without annotated legs (a full-leg view still shows both).
    return "B"


def _window(stored: np.ndarray, bits: int) -> tuple[float, float]:
    """Window centre and width (DICOM linear VOI) covering the 0.5-99.5 % grey levels."""
    sample = stored[:: max(1, stored.shape[0] // 512), :: max(1, stored.shape[1] // 512)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    lo, hi = float(np.floor(lo)), float(np.ceil(hi))
    if hi - lo < 2:
        lo, hi = 0.0, float((1 << bits) - 1)
    # DICOM linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] to the output range.
    width = hi - lo + 1
    centre = lo + 0.5 + (width - 1) / 2
    return centre, width


def _code_item(value: str, scheme: str, meaning: str):

    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def build_dataset(film: FilmLike, options: DicomOptions, *, index: int, seed: int):
    """The complete pydicom ``FileDataset`` (uncompressed PixelData) for one film."""

    options.validate()
    stored = stored_pixel_array(film, options)
    rows, cols = stored.shape
    bits = options.bits_stored
    sop_class = SOP_CLASS_UIDS[options.modality]
    sop_uid = _uid(seed, index, "sop")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 7331])
    when = _BASE_DATE + _dt.timedelta(
        days=int(rng.integers(0, 730)), seconds=int(rng.integers(0, 10 * 3600))
    )
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LEGALIGN_SYN"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Patient (synthetic identity only)
    ds.PatientName = f"SYNTHETIC^{index:04d}"
    ds.PatientID = f"SYN-{seed}-{index:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = _uid(seed, index, "study")
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{index:06d}"
    ds.AccessionNumber = f"SYN{index:08d}"
    ds.StudyDescription = "Synthetic standing full-leg AP radiograph"
    # General Series (+ DX Series / CR Series)
    ds.Modality = options.modality
    ds.SeriesInstanceUID = _uid(seed, index, "series")
    ds.SeriesNumber = 1
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = "Full-leg AP standing"
    ds.BodyPartExamined = _BODY_PART
    ds.ViewPosition = "AP"
    ds.PatientPosition = ""
    if options.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    # Frame of Reference is optional for DX/CR: left out.
    # General Equipment
    ds.Manufacturer = "legalign synthetic"
    ds.ManufacturerModelName = "training.synth"
    ds.SoftwareVersions = "legalign"
    ds.InstitutionName = "SYNTHETIC"
    # General Image / General Acquisition
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDate = date
    ds.AcquisitionTime = time
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["R" if film.mirrored else "L", "F"]
    ds.ImageLaterality = _laterality(film)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.KVP = _ds_number(round(float(rng.uniform(70, 90)), 1))
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = options.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    # Modality LUT (identity) and VOI LUT
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    centre, width = _window(stored, bits)
    ds.WindowCenter = _ds_number(centre)
    ds.WindowWidth = _ds_number(width)
    ds.VOILUTFunction = "LINEAR"
    ds.WindowCenterWidthExplanation = "SYNTHETIC"
    if options.modality == "DX":
        # DX Anatomy Imaged, DX Image, DX Detector, DX Positioning, Acquisition Context
        ds.AnatomicRegionSequence = [_code_item(*_ANATOMY)]
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower values = less beam intensity (bone dark in stored values, MONOCHROME1).
        ds.PixelIntensityRelationshipSign = 1 if options.photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if options.photometric == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.AcquisitionContextSequence = []
        ds.ViewCodeSequence = [_code_item(*_VIEW_AP)]
        ds.PositionerType = "NONE"
        ds.DistanceSourceToDetector = _ds_number(1800.0)
        ds.DistanceSourceToPatient = _ds_number(1800.0 / options.magnification)
    else:
        ds.PlateType = "SYNTHETIC"

    spacing = _ds_number(film.spacing_mm)
    imager = _ds_number(film.spacing_mm * options.magnification)
    if options.spacing_tags in ("pixel", "both"):
        ds.PixelSpacing = [spacing, spacing]
    if options.spacing_tags in ("imager", "imager+magnification", "both"):
        ds.ImagerPixelSpacing = [imager, imager]
    if options.spacing_tags == "imager+magnification":
        ds.EstimatedRadiographicMagnificationFactor = _ds_number(options.magnification)
    if options.spacing_tags == "both":
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Imager spacing / geometric magnification"

    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    return ds


def write_film_dicom(
    path: str | os.PathLike[str],
    film: FilmLike,
    options: DicomOptions,
    *,
    index: int,
    seed: int,
) -> None:
    """Write ``film`` to ``path`` as one DICOM file (see the module docstring)."""

    image_shape = np.shape(film.image)
    if options.transfer_syntax in ("j2k", "htj2k") and min(image_shape) < _J2K_MIN_SIZE:
        raise ValueError(
            f"JPEG 2000 encoding (openjpeg, 6 resolution levels) needs at least "
            f"{_J2K_MIN_SIZE} rows and columns, the film is {image_shape}"
        )
    ds = build_dataset(film, options, index=index, seed=seed)
    if options.transfer_syntax in EXTRA_TRANSFER_SYNTAXES:
        _encapsulate(ds, options.transfer_syntax)
        ds.save_as(path, enforce_file_format=True)
        return
    syntax = {"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}.get(
        options.transfer_syntax
    )
    if syntax is not None:
        arr = np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns)
        ds.compress(syntax, arr, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def htj2k_available() -> bool:
    """Whether HTJ2K can be written here (the optional ``imagecodecs`` package)."""
    try:
        import imagecodecs  # noqa: PLC0415 - the optional htj2k extra

        return bool(imagecodecs.HTJ2K.available)
    except Exception:  # noqa: BLE001 - not installed
        return False


def _encapsulate(ds: Any, syntax: str) -> None:
    """Replace ``ds``'s native PixelData by one HTJ2K or baseline-JPEG fragment."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    if syntax == "htj2k":
        if not htj2k_available():
            raise ValueError(
                "writing HTJ2K needs the optional imagecodecs package (OpenJPH encoder): "
                "pip install 'legalign[htj2k]'"
            )
        import imagecodecs  # noqa: PLC0415 - the optional htj2k extra

        arr = np.frombuffer(ds.PixelData, dtype="<u2").reshape(rows, cols)
        stream = bytes(imagecodecs.htj2k_encode(arr, reversible=True, resolutions=6))
        uid = HTJ2KLossless
    else:
        arr = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(rows, cols)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=JPEG_QUALITY)
        stream = buf.getvalue()
        uid = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = _ds_number(arr.nbytes / len(stream))
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = uid
