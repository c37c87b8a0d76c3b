"""Readers: DICOM / PNG / JPEG / TIFF -> Radiograph, and InputError for bad input."""

from __future__ import annotations

import logging
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from legalign.pipeline.errors import InputError
from legalign.pipeline.read import check_input, probe, read_radiograph
from legalign.pipeline.read.spacing import (
    SOURCE_IMAGER,
    SOURCE_IMAGER_MAG,
    SOURCE_PIXEL,
    SOURCE_USER,
    resolve_spacing,
)
from legalign.training.synth.dicom_archive import (
    BITS_STORED,
    TRANSFER_SYNTAXES,
    DicomOptions,
    reported_spacing,
    stored_pixel_array,
    write_film_dicom,
)


@dataclass
class Film:
    image: np.ndarray
    bits_stored: int
    spacing_mm: float
    legs: list[Any] = field(default_factory=list)
    mirrored: bool = False
    params: dict = field(default_factory=dict)


def _film(bits: int = 12, shape=(48, 40), seed: int = 0, **kw) -> Film:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 1 << bits, shape, dtype=np.int64).astype(np.uint16)
    return Film(image=img, bits_stored=bits, spacing_mm=0.15, **kw)


def _linear_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear window to [0, 1], written out independently."""
    x = x.astype(np.float64)
    y = ((x - (centre - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    y[x <= centre - 0.5 - (width - 1) / 2] = 0
    y[x > centre - 0.5 + (width - 1) / 2] = 1
    return y


def _make_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    implicit: bool = False,
    **tags: Any,
) -> Path:
    """A minimal hand-made single-frame DICOM image (native pixel data)."""
    arr = np.asarray(arr)
    signed = arr.dtype.kind == "i"
    allocated = arr.dtype.itemsize * 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN12345"
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare data set: no preamble, no file meta information
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        ds.save_as(path, implicit_vr=implicit, little_endian=True)
    return path


def _assert_input_error(path: Path, match: str, **kw) -> str:
    with pytest.raises(InputError) as err:
        read_radiograph(path, **kw)
    msg = str(err.value)
    assert path.name in msg, msg
    assert "\n" not in msg
    assert match.lower() in msg.lower(), msg
    return msg


# --------------------------------------------------------------------------- DICOM grey


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES)
@pytest.mark.parametrize("bits", BITS_STORED)
def test_every_syntax_reads_window_applied_bone_bright(tmp_path, syntax, bits):
    film = _film(bits, seed=bits, mirrored=True)
    films = {}
    for ph in ("MONOCHROME2", "MONOCHROME1"):
        opts = DicomOptions("DX", ph, bits, syntax, "imager+magnification", 1.1)
        path = tmp_path / f"{ph}.dcm"
        write_film_dicom(path, film, opts, index=2, seed=3)
        rg = read_radiograph(path)
        films[ph] = rg
        assert rg.pixels.dtype == np.float32 and rg.pixels.shape == film.image.shape
        assert 0.0 <= float(rg.pixels.min()) and float(rg.pixels.max()) <= 1.0
        assert rg.modality == "DX" and rg.bits_stored == bits
        assert rg.mirrored is True and rg.laterality == "B"
        ds = rg.header
        assert "PixelData" not in ds
        assert rg.sop_instance_uid == ds.SOPInstanceUID
        assert rg.study_instance_uid == ds.StudyInstanceUID
        assert rg.series_instance_uid == ds.SeriesInstanceUID
        # The independent DICOM window formula on the stored values, inverted for MONO1.
        stored = stored_pixel_array(film, opts)
        expected = _linear_window(stored, float(ds.WindowCenter), float(ds.WindowWidth))
        if ph == "MONOCHROME1":
            expected = 1 - expected
        np.testing.assert_allclose(rg.pixels, expected, atol=2e-6)
    # Same film, either photometric: the same bone-bright picture.
    np.testing.assert_allclose(films["MONOCHROME1"].pixels, films["MONOCHROME2"].pixels, atol=1e-3)
    # Bone bright: brighter where the film's values are higher.
    hi = film.image > np.percentile(film.image, 90)
    lo = film.image < np.percentile(film.image, 10)
    assert films["MONOCHROME1"].pixels[hi].mean() > films["MONOCHROME1"].pixels[lo].mean() + 0.5


def test_jpeg_lossless_sv1_via_gdcm(tmp_path):
    """JPEG Lossless SV1, the commonest compressed syntax in archives (gdcm decodes it)."""
    gdcm = pytest.importorskip("gdcm")
    film = _film(12, seed=4)
    src, dst = tmp_path / "src.dcm", tmp_path / "jpeg_lossless.dcm"
    write_film_dicom(src, film, DicomOptions(bits_stored=12), index=0, seed=0)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(dst).file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    np.testing.assert_array_equal(read_radiograph(dst).pixels, read_radiograph(src).pixels)


def test_modality_lut_rescale_then_window(tmp_path):
    stored = np.arange(0, 4000, 2, dtype=np.uint16).reshape(40, 50)
    path = _make_dicom(
        tmp_path / "rescale.dcm",
        stored,
        bits_stored=12,
        RescaleSlope="2",
        RescaleIntercept="-1000",
        WindowCenter="3000",
        WindowWidth="4000",
    )
    rg = read_radiograph(path)
    expected = _linear_window(stored * 2.0 - 1000.0, 3000.0, 4000.0)
    np.testing.assert_allclose(rg.pixels, expected, atol=2e-6)
    assert float(rg.pixels.min()) == 0.0 and float(rg.pixels.max()) == 1.0


def test_signed_pixels_with_rescale(tmp_path):
    stored = np.linspace(-2000, 2000, 40 * 30).astype(np.int16).reshape(40, 30)
    path = _make_dicom(
        tmp_path / "signed.dcm",
        stored,
        RescaleSlope="1",
        RescaleIntercept="1024",
        WindowCenter="1024",
        WindowWidth="2001",
    )
    rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, _linear_window(stored + 1024.0, 1024, 2001), atol=2e-6)


def test_voi_lut_sequence(tmp_path):
    stored = (np.arange(60 * 40) % 1024).astype(np.uint16).reshape(60, 40)
    lut = (np.arange(1024) ** 2 // 1024 * 4).astype(np.uint16)  # 0..4088, 12 bits
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 12]
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    path = _make_dicom(
        tmp_path / "voilut.dcm", stored, bits_stored=10, VOILUTSequence=[item], WindowCenter="1"
    )
    ds = pydicom.dcmread(path)
    ds.WindowWidth = "1"  # a window too, to show the LUT is preferred
    ds.save_as(path)
    rg = read_radiograph(path)
    expected = lut[stored] / float(lut.max())
    np.testing.assert_allclose(rg.pixels, expected, atol=2e-6)


def test_no_voi_is_min_max_and_monochrome1_inverted(tmp_path):
    stored = np.linspace(100, 900, 30 * 20).astype(np.uint16).reshape(30, 20)
    for ph in ("MONOCHROME2", "MONOCHROME1"):
        path = _make_dicom(tmp_path / f"{ph}.dcm", stored, bits_stored=10, photometric=ph)
        rg = read_radiograph(path)
        expected = (stored - 100.0) / 800.0
        if ph == "MONOCHROME1":
            expected = 1 - expected
        np.testing.assert_allclose(rg.pixels, expected, atol=2e-6)


def test_window_missing_the_data_falls_back_to_min_max(tmp_path, caplog):
    stored = np.linspace(100, 900, 30 * 20).astype(np.uint16).reshape(30, 20)
    path = _make_dicom(
        tmp_path / "badwin.dcm", stored, bits_stored=12, WindowCenter="3500", WindowWidth="100"
    )
    with caplog.at_level(logging.WARNING, logger="legalign.pipeline.read"):
        rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, (stored - 100.0) / 800.0, atol=2e-6)
    assert "badwin.dcm" in caplog.text and "uniform" in caplog.text


def test_bits_stored_smaller_than_codestream_is_normalised_by_range(tmp_path, caplog):
    film = _film(16, shape=(40, 40))
    film.image[0, 0], film.image[1, 1] = 0, 65535
    path = tmp_path / "mismatch.dcm"
    write_film_dicom(path, film, DicomOptions(transfer_syntax="j2k"), index=0, seed=0)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11  # header says 12 bits, codestream holds 16
    ds.save_as(path)
    with caplog.at_level(logging.WARNING, logger="legalign.pipeline.read"):
        rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, film.image / 65535.0, atol=2e-6)
    assert "exceed Bits Stored 12" in caplog.text
    assert "SYNTHETIC" not in caplog.text  # no patient data in logs
    assert ds.SOPInstanceUID in caplog.text


def test_dicom_without_preamble_implicit_vr(tmp_path):
    stored = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    path = _make_dicom(tmp_path / "raw.dcm", stored, preamble=False, implicit=True)
    assert path.read_bytes()[128:132] != b"DICM"
    rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, stored / float(stored.max()), atol=2e-6)


def test_ot_secondary_capture_rgb_accepted(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = rgb[..., 1] = rgb[..., 2] = np.arange(32, dtype=np.uint8)[None, :] * 8
    path = tmp_path / "sc.dcm"
    ds = pydicom.dcmread(_make_dicom(path, rgb[..., 0], modality="OT"))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)
    rg = read_radiograph(path)
    assert rg.modality == "OT"
    np.testing.assert_allclose(rg.pixels, rgb[..., 0] / 255.0, atol=1e-5)


# ------------------------------------------------------------------------ orientation


@pytest.mark.parametrize(
    "tags,mirrored,laterality",
    [
        ({"PatientOrientation": ["L", "F"], "ImageLaterality": "B"}, False, "B"),
        ({"PatientOrientation": ["R", "F"], "ImageLaterality": "R"}, True, "R"),
        ({"Laterality": "L"}, None, "L"),
        ({"PatientOrientation": ["A", "F"], "ImageLaterality": "U"}, None, None),
        ({}, None, None),
    ],
)
def test_mirrored_and_laterality(tmp_path, tags, mirrored, laterality):
    path = _make_dicom(tmp_path / "o.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), **tags)
    rg = read_radiograph(path)
    assert rg.mirrored is mirrored
    assert rg.laterality == laterality


def test_writer_orientation_and_single_leg_laterality(tmp_path):
    from legalign.pipeline.landmarks import LegLandmarks

    leg = LegLandmarks(side="left", points={"knee_centre": (3.0, 4.0)})
    film = _film(legs=[leg], mirrored=False)
    path = tmp_path / "left.dcm"
    write_film_dicom(path, film, DicomOptions("CR", spacing_tags="pixel"), index=0, seed=0)
    rg = read_radiograph(path)
    assert (rg.mirrored, rg.laterality, rg.modality) == (False, "L", "CR")


# ---------------------------------------------------------------------------- spacing


@pytest.mark.parametrize("spacing_tags", ["pixel", "imager", "imager+magnification", "both"])
def test_writer_spacing_rules(tmp_path, spacing_tags):
    film = _film()
    opts = DicomOptions("CR", "MONOCHROME2", 12, "rle", spacing_tags, 1.17)
    path = tmp_path / "s.dcm"
    write_film_dicom(path, film, opts, index=0, seed=0)
    rg = read_radiograph(path)
    value, source = reported_spacing(film, opts)
    assert rg.spacing_source == source
    assert rg.spacing_mm == pytest.approx(value, rel=1e-9)
    expected = {
        "pixel": (0.15, SOURCE_PIXEL),
        "both": (0.15, SOURCE_PIXEL),
        "imager+magnification": (0.15, SOURCE_IMAGER_MAG),
        "imager": (0.15 * 1.17, SOURCE_IMAGER),
    }[spacing_tags]
    assert (rg.spacing_mm, rg.spacing_source) == (pytest.approx(expected[0]), expected[1])
    user = read_radiograph(path, spacing_override_mm=0.2)
    assert (user.spacing_mm, user.spacing_source) == (0.2, SOURCE_USER)


def _ds(**tags) -> Dataset:
    ds = Dataset()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def test_spacing_rules_on_headers():
    f = "film.dcm"
    assert resolve_spacing(_ds(), f) == (None, None)
    assert resolve_spacing(None, f) == (None, None)
    assert resolve_spacing(None, f, 0.1) == (0.1, SOURCE_USER)
    assert resolve_spacing(_ds(PixelSpacing=["0.1", "0.1"]), f) == (0.1, SOURCE_PIXEL)
    assert resolve_spacing(_ds(PixelSpacing="0.1"), f) == (0.1, SOURCE_PIXEL)  # VM 1
    v, s = resolve_spacing(
        _ds(ImagerPixelSpacing=["0.12", "0.12"], EstimatedRadiographicMagnificationFactor="1.2"),
        f,
    )
    assert (v, s) == (pytest.approx(0.1), SOURCE_IMAGER_MAG)
    assert resolve_spacing(_ds(ImagerPixelSpacing=["0.12", "0.12"]), f) == (0.12, SOURCE_IMAGER)
    # Calibrated PixelSpacing wins over the detector spacing.
    both = _ds(PixelSpacing=["0.1", "0.1"], ImagerPixelSpacing=["0.12", "0.12"])
    assert resolve_spacing(both, f) == (0.1, SOURCE_PIXEL)
    # PixelSpacing merely copying ImagerPixelSpacing is the detector spacing.
    copy = _ds(
        PixelSpacing=["0.12", "0.12"],
        ImagerPixelSpacing=["0.12", "0.12"],
        EstimatedRadiographicMagnificationFactor="1.2",
    )
    assert resolve_spacing(copy, f) == (pytest.approx(0.1), SOURCE_IMAGER_MAG)
    copy.PixelSpacingCalibrationType = "GEOMETRY"
    assert resolve_spacing(copy, f) == (0.12, SOURCE_PIXEL)
    del copy.EstimatedRadiographicMagnificationFactor, copy.PixelSpacingCalibrationType
    assert resolve_spacing(copy, f) == (0.12, SOURCE_IMAGER)
    # Within 1 %: isotropic (mean); beyond: an error naming the file.
    v, _ = resolve_spacing(_ds(PixelSpacing=["0.100", "0.1005"]), f)
    assert v == pytest.approx(0.10025)
    with pytest.raises(InputError, match=r"film\.dcm: non-isotropic PixelSpacing"):
        resolve_spacing(_ds(PixelSpacing=["0.1", "0.102"]), f)
    for bad in (["0", "0"], ["-0.1", "-0.1"], ["0.1", "0.1", "0.1"]):
        with pytest.raises(InputError, match=r"film\.dcm: .*PixelSpacing"):
            resolve_spacing(_ds(PixelSpacing=bad), f)
    with pytest.raises(InputError, match="EstimatedRadiographicMagnificationFactor"):
        resolve_spacing(
            _ds(ImagerPixelSpacing=["0.1", "0.1"], EstimatedRadiographicMagnificationFactor="0"),
            f,
        )
    for bad_user in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match=r"film\.dcm: spacing override"):
            resolve_spacing(None, f, bad_user)
    # A user value replaces even unusable tags.
    assert resolve_spacing(_ds(PixelSpacing=["0", "0"]), f, 0.2) == (0.2, SOURCE_USER)


def test_zero_and_anisotropic_spacing_files(tmp_path):
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
    zero = _make_dicom(tmp_path / "zero_spacing.dcm", arr, PixelSpacing=["0", "0"])
    _assert_input_error(zero, "PixelSpacing")
    assert probe(zero)["ok"] is False
    aniso = _make_dicom(tmp_path / "aniso.dcm", arr, ImagerPixelSpacing=["0.1", "0.2"])
    _assert_input_error(aniso, "non-isotropic")
    assert read_radiograph(zero, spacing_override_mm=0.1).spacing_source == SOURCE_USER


# ----------------------------------------------------------------------------- raster


def test_png_8_and_16_bit(tmp_path):
    img8 = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (30, 1))
    p8 = tmp_path / "a8.png"
    cv2.imwrite(str(p8), img8)
    rg = read_radiograph(p8)
    np.testing.assert_allclose(rg.pixels, img8 / 255.0, atol=1e-6)
    assert (rg.spacing_mm, rg.spacing_source, rg.mirrored, rg.header) == (None, None, None, None)

    img16 = np.tile(np.arange(1000, 4000, 100, dtype=np.uint16), (20, 1))
    p16 = tmp_path / "a16.png"
    cv2.imwrite(str(p16), img16)
    rg = read_radiograph(p16, spacing_override_mm=0.143)
    np.testing.assert_allclose(rg.pixels, (img16 - 1000.0) / 2900.0, atol=1e-6)
    assert (rg.spacing_mm, rg.spacing_source) == (0.143, "user")

    rgb = np.dstack([img8, img8, img8])
    prgb = tmp_path / "rgb.png"
    cv2.imwrite(str(prgb), rgb)
    np.testing.assert_allclose(read_radiograph(prgb).pixels, img8 / 255.0, atol=1 / 255)


def test_jpeg(tmp_path):
    img = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    path = tmp_path / "film.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    rg = read_radiograph(path)
    assert rg.pixels.shape == (48, 64) and rg.pixels.dtype == np.float32
    assert np.abs(rg.pixels - img / 255.0).max() < 0.05  # lossy
    assert probe(path)["kind"] == "jpeg"


def test_tiff_16_bit_and_miniswhite(tmp_path):
    img = np.tile(np.arange(0, 60000, 2000, dtype=np.uint16), (25, 1))
    path = tmp_path / "film.tif"
    tifffile.imwrite(path, img)
    rg = read_radiograph(path)
    np.testing.assert_allclose(rg.pixels, img / 58000.0, atol=1e-6)
    inv = tmp_path / "white.tif"
    tifffile.imwrite(inv, img, photometric="miniswhite")
    np.testing.assert_allclose(read_radiograph(inv).pixels, 1 - img / 58000.0, atol=1e-6)
    info = probe(path)
    assert (info["ok"], info["kind"], info["width"], info["height"]) == (True, "tiff", 30, 25)
    assert info["bits_stored"] == 16


@pytest.mark.parametrize("bits", [8, 16])
def test_lzw_tiff_and_miniswhite(tmp_path, bits):
    img = np.tile(np.arange(0, 60000, 2000, dtype=np.uint16), (25, 1))
    if bits == 8:
        img = (img // 256).astype(np.uint8)
    path = tmp_path / "lzw.tif"
    assert cv2.imwrite(str(path), img)  # OpenCV writes LZW-compressed TIFF
    with tifffile.TiffFile(path) as tf:
        assert tf.pages.first.compression == 5  # LZW
    expected = (img - float(img.min())) / float(img.max() - img.min())
    if bits == 8:
        expected = img / 255.0
    np.testing.assert_allclose(read_radiograph(path).pixels, expected, atol=1e-6)
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tf.pages.first.tags["PhotometricInterpretation"].overwrite(0)  # MINISWHITE
    np.testing.assert_allclose(read_radiograph(path).pixels, 1 - expected, atol=1e-6)


def test_kind_from_content_not_extension(tmp_path):
    img = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (30, 1))
    path = tmp_path / "looks_like.dcm"
    ok, buf = cv2.imencode(".png", img)
    path.write_bytes(buf.tobytes())
    assert probe(path)["kind"] == "png"
    assert read_radiograph(path).width == img.shape[1]


def _png_with_size(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


# ------------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    _assert_input_error(tmp_path / "nowhere.dcm", "not found")
    assert probe(tmp_path / "nowhere.dcm")["error"].endswith("file not found")


def test_random_bytes_text_and_empty_files(tmp_path):
    rnd = tmp_path / "random.dcm"
    rnd.write_bytes(np.random.default_rng(0).bytes(4000))
    _assert_input_error(rnd, "not a DICOM, PNG, JPEG or TIFF")
    txt = tmp_path / "notes.txt"
    txt.write_text("patient list\n" * 50)
    _assert_input_error(txt, "not a DICOM, PNG, JPEG or TIFF")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_input_error(empty, "empty file")
    _assert_input_error(tmp_path, "directory")
    info = probe(rnd)
    assert info["ok"] is False and info["kind"] is None and "random.dcm" in info["error"]


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES)
def test_truncated_dicom(tmp_path, syntax):
    path = tmp_path / f"trunc_{syntax}.dcm"
    write_film_dicom(
        path, _film(shape=(64, 64)), DicomOptions(transfer_syntax=syntax), index=0, seed=0
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data) // 3])
    _assert_input_error(path, "truncated")
    header_only = tmp_path / f"header_cut_{syntax}.dcm"
    header_only.write_bytes(data[:400])
    _assert_input_error(header_only, "truncated")
    assert probe(header_only)["ok"] is False


def test_truncated_png_and_jpeg(tmp_path):
    img = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (30, 1))
    for ext, match in ((".png", "truncated PNG"), (".jpg", "truncated JPEG")):
        ok, buf = cv2.imencode(ext, img)
        path = tmp_path / f"cut{ext}"
        path.write_bytes(buf.tobytes()[: len(buf) * 2 // 3])
        _assert_input_error(path, match)


def test_wrong_modality(tmp_path):
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
    for modality in ("CT", "MR", "US", "MG"):
        path = _make_dicom(tmp_path / f"{modality}.dcm", arr, modality=modality)
        msg = _assert_input_error(path, f"wrong modality {modality}")
        info = probe(path)
        assert info["ok"] is False and info["modality"] == modality and info["error"] == msg


def test_structured_report_without_pixels(tmp_path):
    path = tmp_path / "report.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    _assert_input_error(path, "wrong modality SR")
    ds.Modality = "DX"
    ds.save_as(path, enforce_file_format=True)
    _assert_input_error(path, "no pixel data")


def test_huge_image_refused_from_header_before_decoding(tmp_path):
    # The header claims 20000 x 20000; the pixel data is tiny: only the header is read.
    path = _make_dicom(tmp_path / "huge.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000
    ds.save_as(path)
    _assert_input_error(path, "too large")
    assert "too large" in probe(path)["error"]
    # The limit is the caller's.
    small = _make_dicom(tmp_path / "small.dcm", np.arange(100, dtype=np.uint16).reshape(10, 10))
    _assert_input_error(small, "max_pixels 99", max_pixels=99)
    assert read_radiograph(small, max_pixels=100).pixels.shape == (10, 10)
    png = _png_with_size(tmp_path / "huge.png", 12000, 9000)
    _assert_input_error(png, "too large")
    assert probe(png)["width"] == 12000


def test_pillow_bomb_guard_kept_on(tmp_path):
    from PIL import Image

    from legalign.pipeline.read.raster import PILLOW_MAX_IMAGE_PIXELS

    png = _png_with_size(tmp_path / "bomb.png", 30000, 30000)  # 900 M pixels
    _assert_input_error(png, "decompression-bomb", max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == PILLOW_MAX_IMAGE_PIXELS is not None


def test_short_native_pixel_data(tmp_path):
    path = _make_dicom(tmp_path / "short.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows = 8
    ds.save_as(path)
    _assert_input_error(path, "pixel data too short")


def test_all_zero_and_uniform_decodes(tmp_path):
    zero = tmp_path / "zeros.dcm"
    film = Film(np.zeros((40, 40), np.uint16), 12, 0.1)
    write_film_dicom(
        zero, film, DicomOptions(bits_stored=12, transfer_syntax="j2k"), index=0, seed=0
    )
    _assert_input_error(zero, "all zeros")
    flat = _make_dicom(tmp_path / "flat.dcm", np.full((8, 8), 7, np.uint16))
    _assert_input_error(flat, "uniform")
    flat_png = tmp_path / "flat.png"
    cv2.imwrite(str(flat_png), np.full((8, 8), 9, np.uint16))
    _assert_input_error(flat_png, "uniform")


def test_multiframe_and_palette_refused(tmp_path):
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
    multi = _make_dicom(tmp_path / "multi.dcm", arr, NumberOfFrames=2)
    _assert_input_error(multi, "multi-frame")
    pal = _make_dicom(tmp_path / "palette.dcm", arr, photometric="PALETTE COLOR")
    _assert_input_error(pal, "PhotometricInterpretation")


def test_probe_good_dicom_and_check_input(tmp_path):
    path = tmp_path / "ok.dcm"
    film = _film(shape=(48, 40))
    opts = DicomOptions(transfer_syntax="jpegls", spacing_tags="both")
    write_film_dicom(path, film, opts, index=0, seed=0)
    info = probe(path)
    assert info["ok"] is True and info["error"] is None
    assert (info["kind"], info["width"], info["height"], info["modality"]) == (
        "dicom",
        40,
        48,
        "DX",
    )
    assert info["transfer_syntax"] == pydicom.uid.JPEGLSLossless
    assert info["spacing_source"] == SOURCE_PIXEL
    assert check_input(path) == info
    with pytest.raises(InputError, match="too large"):
        check_input(path, max_pixels=100)


def test_no_patient_data_in_logs(tmp_path, caplog):
    stored = np.linspace(100, 900, 30 * 20).astype(np.uint16).reshape(30, 20)
    path = _make_dicom(
        tmp_path / "film.dcm", stored, bits_stored=12, WindowCenter="3500", WindowWidth="1"
    )
    with caplog.at_level(logging.DEBUG):
        read_radiograph(path)
    assert caplog.text  # something was logged (the window fallback) ...
    assert "DOE" not in caplog.text and "MRN12345" not in caplog.text  # ... without names


# ------------------------------------------------------------------ native-size timing


@pytest.mark.slow
def test_native_size_film_every_syntax(tmp_path):
    """A 2500 x 7000 16-bit film in each syntax reads back exactly; prints timings.

    Run: .venv/bin/pytest -m slow -s tests/test_read.py -k native
    """
    from pydicom.pixels import pixel_array

    h, w = 7000, 2500
    rng = np.random.default_rng(1)
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    legs = np.exp(-(((x - 800) / 150) ** 2)) + np.exp(-(((x - 1700) / 150) ** 2))
    base = 20000 + 15000 * legs + 3000 * np.sin(y / 300)
    img = np.clip(base + rng.normal(0, 400, (h, w)), 0, 65535).astype(np.uint16)
    film = Film(img, 16, 0.143)
    for syntax in TRANSFER_SYNTAXES:
        path = tmp_path / f"{syntax}.dcm"
        opts = DicomOptions("DX", "MONOCHROME2", 16, syntax, "imager+magnification")
        t0 = time.perf_counter()
        write_film_dicom(path, film, opts, index=0, seed=0)
        t1 = time.perf_counter()
        rg = read_radiograph(path)
        t2 = time.perf_counter()
        assert rg.pixels.shape == (h, w)
        ds = rg.header
        expected = _linear_window(img, float(ds.WindowCenter), float(ds.WindowWidth))
        assert np.abs(rg.pixels - expected).max() < 2e-6
        np.testing.assert_array_equal(pixel_array(path), img)
        print(
            f"\n{syntax:9s} {path.stat().st_size / 1e6:5.1f} MB  write {t1 - t0:5.2f} s  "
            f"read_radiograph {t2 - t1:5.2f} s"
        )


@pytest.mark.parametrize("decoder", ["auto", "full"])
def test_damaged_jpeg2000_headers_fail_in_both_decode_paths(tmp_path, decoder):
    """Bit flips OpenJPEG reports, as an error or only as a warning (it decodes around a
    SOP marker it expected, a tile-part length past the end), fail the file with reason
    unreadable in the progressive and the full decode path; the undamaged film reads."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hostile_corpus import J2K_HEADER_FLIPS, _flip_marker_bit, _j2k_edited, good_dataset

    from legalign.pipeline.read.codecs import openjpeg

    if not openjpeg.is_available():
        pytest.skip("no OpenJPEG >= 2.5 library")
    ds, _ = good_dataset()
    clean = _j2k_edited(ds, bytes)
    clean.save_as(tmp_path / "clean.dcm", enforce_file_format=True)
    assert read_radiograph(str(tmp_path / "clean.dcm"), decoder=decoder).width == ds.Columns
    for k, (what, marker, offset, bit) in enumerate(J2K_HEADER_FLIPS):
        path = tmp_path / f"flip{k}.dcm"
        _j2k_edited(ds, _flip_marker_bit(marker, offset, bit)).save_as(
            path, enforce_file_format=True
        )
        with pytest.raises(InputError) as exc:
            read_radiograph(str(path), decoder=decoder)
        assert exc.value.reason == "unreadable", what
        assert str(path) in str(exc.value) and "\n" not in str(exc.value), what
