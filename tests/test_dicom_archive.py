"""The DICOM archive factory writes valid DX/CR objects that read back pixel-exact."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from legalign.pipeline.landmarks import LegLandmarks
from legalign.training.synth.dicom_archive import (
    BITS_STORED,
    CR_UID,
    DX_FOR_PRESENTATION_UID,
    MODALITIES,
    PHOTOMETRICS,
    SPACING_TAGS,
    TRANSFER_SYNTAXES,
    DicomOptions,
    random_dicom_options,
    reported_spacing,
    stored_pixel_array,
    write_film_dicom,
)

SYNTAX_UIDS = {
    "explicit": pydicom.uid.ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}


@dataclass
class Film:
    """Stand-in with the fields of training.synth's SyntheticFilm that the writer uses."""

    image: np.ndarray
    bits_stored: int
    spacing_mm: float
    legs: list[Any] = field(default_factory=list)
    mirrored: bool = False
    params: dict = field(default_factory=dict)


def _legs(*sides: str) -> list[LegLandmarks]:
    return [LegLandmarks(side=s, points={"femoral_head": (10.0, 5.0)}) for s in sides]


def _film(bits: int, *, seed: int = 0, shape=(40, 32), **kw) -> Film:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 1 << bits, shape, dtype=np.int64).astype(np.uint16)
    img[0, 0], img[-1, -1] = 0, (1 << bits) - 1  # use the full range
    kw.setdefault("legs", _legs("right", "left"))
    return Film(image=img, bits_stored=bits, spacing_mm=0.143, **kw)


def _dciodvfy() -> str | None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy (Debian package dicom3tools) is required in CI")
        return None
    return exe


def _validate(path) -> tuple[list[str], list[str]]:
    """dciodvfy's (Error, Warning) lines for ``path`` (skips when dciodvfy is absent)."""
    exe = _dciodvfy()
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (res.stdout + res.stderr).splitlines()
    assert any(ln.strip() in ("DXImageForPresentation", "CRImage") for ln in lines), lines
    return (
        [ln for ln in lines if ln.startswith("Error")],
        [ln for ln in lines if ln.startswith("Warning")],
    )


# modality x photometric x bits x syntax is 48 small files (about a second); the spacing
# conventions rotate through the combinations so each appears with every syntax.
COMBOS = [
    (mod, ph, bits, syn, SPACING_TAGS[i % 4] if mod == "CR" else SPACING_TAGS[1 + i % 3])
    for i, (mod, ph, bits, syn) in enumerate(
        itertools.product(MODALITIES, PHOTOMETRICS, BITS_STORED, TRANSFER_SYNTAXES)
    )
]


@pytest.mark.parametrize("modality,photometric,bits,syntax,spacing_tags", COMBOS)
def test_write_read_back_pixel_exact_and_valid(
    tmp_path, modality, photometric, bits, syntax, spacing_tags
):
    film = _film(bits, seed=bits)
    opts = DicomOptions(modality, photometric, bits, syntax, spacing_tags, 1.12)
    path = tmp_path / "f.dcm"
    write_film_dicom(path, film, opts, index=3, seed=11)

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == SYNTAX_UIDS[syntax]
    assert ds.SOPClassUID == (DX_FOR_PRESENTATION_UID if modality == "DX" else CR_UID)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == modality
    assert ds.PhotometricInterpretation == photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, bits, bits - 1)

    arr = pixel_array(ds)
    expected = film.image if photometric == "MONOCHROME2" else (1 << bits) - 1 - film.image
    np.testing.assert_array_equal(arr, expected.astype(np.uint16))
    np.testing.assert_array_equal(arr, stored_pixel_array(film, opts))

    errors, warnings = _validate(path)
    assert errors == []
    if modality == "CR" and spacing_tags == "imager+magnification":
        # ERMF is not in the CR IOD: a Standard Extended SOP Class, warned, not an error.
        assert warnings and all("Standard" in w or "not present" in w for w in warnings)
    else:
        assert warnings == []


def test_headers_orientation_laterality_names(tmp_path):
    for legs, mirrored, lat, orient in [
        (_legs("right", "left"), False, "B", ["L", "F"]),
        (_legs("right"), True, "R", ["R", "F"]),
        (_legs("left"), False, "L", ["L", "F"]),
    ]:
        film = _film(12, legs=legs, mirrored=mirrored)
        p = tmp_path / f"{lat}.dcm"
        write_film_dicom(p, film, DicomOptions(), index=1, seed=5)
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert ds.ImageLaterality == lat
        assert list(ds.PatientOrientation) == orient
        assert ds.ViewPosition == "AP"
        assert ds.BodyPartExamined in ("LEG", "LOWER LIMB")
        assert str(ds.PatientName) == "SYNTHETIC^0001"
        assert ds.PresentationIntentType == "FOR PRESENTATION"


def test_uids_deterministic_and_distinct(tmp_path):
    film = _film(12)
    uids = {}
    for seed, index, name in [(1, 1, "a"), (1, 1, "b"), (1, 2, "c"), (2, 1, "d")]:
        p = tmp_path / f"{name}.dcm"
        opts = DicomOptions(transfer_syntax="rle")  # compress() must not make a new UID
        write_film_dicom(p, film, opts, index=index, seed=seed)
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        uids[name] = (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert len(set(uids[name])) == 3
        for u in uids[name]:
            assert pydicom.uid.UID(u).is_valid
    assert uids["a"] == uids["b"]
    assert len({uids["a"], uids["c"], uids["d"]}) == 3
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


@pytest.mark.parametrize("spacing_tags", SPACING_TAGS)
def test_spacing_tags(tmp_path, spacing_tags):
    film = _film(14)
    mag = 1.15
    opts = DicomOptions("CR", "MONOCHROME2", 14, "explicit", spacing_tags, mag)
    p = tmp_path / "s.dcm"
    write_film_dicom(p, film, opts, index=0, seed=0)
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    has = {k: k in ds for k in ("PixelSpacing", "ImagerPixelSpacing")}
    has["mag"] = "EstimatedRadiographicMagnificationFactor" in ds
    has["cal"] = "PixelSpacingCalibrationType" in ds
    assert (
        has
        == {
            "pixel": {
                "PixelSpacing": True,
                "ImagerPixelSpacing": False,
                "mag": False,
                "cal": False,
            },
            "imager": {
                "PixelSpacing": False,
                "ImagerPixelSpacing": True,
                "mag": False,
                "cal": False,
            },
            "imager+magnification": {
                "PixelSpacing": False,
                "ImagerPixelSpacing": True,
                "mag": True,
                "cal": False,
            },
            "both": {"PixelSpacing": True, "ImagerPixelSpacing": True, "mag": False, "cal": True},
        }[spacing_tags]
    )
    if "PixelSpacing" in ds:
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.143, 0.143])
    if "ImagerPixelSpacing" in ds:
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([0.143 * mag] * 2)
    if has["mag"]:
        assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(mag)
    value, source = reported_spacing(film, opts)
    assert value == pytest.approx(0.143 if spacing_tags != "imager" else 0.143 * mag, rel=1e-6)
    assert source.startswith("PixelSpacing" if spacing_tags in ("pixel", "both") else "Imager")


def test_window_and_monochrome1_window(tmp_path):
    film = _film(12)
    film.image[:] = np.clip(film.image, 1000, 3000)
    c = {}
    for ph in PHOTOMETRICS:
        p = tmp_path / f"{ph}.dcm"
        write_film_dicom(p, film, DicomOptions(photometric=ph, bits_stored=12), index=0, seed=0)
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        c[ph] = (float(ds.WindowCenter), float(ds.WindowWidth))
        assert 1000 <= c[ph][0] <= 3096 and 1900 <= c[ph][1] <= 2100
    # The MONOCHROME1 window covers the same tissue in inverted stored values.
    assert c["MONOCHROME1"][1] == c["MONOCHROME2"][1]
    lo2 = c["MONOCHROME2"][0] - 0.5 - (c["MONOCHROME2"][1] - 1) / 2
    hi1 = c["MONOCHROME1"][0] - 0.5 + (c["MONOCHROME1"][1] - 1) / 2
    assert hi1 == pytest.approx(4095 - lo2)


def test_bits_conversion_rescales_and_reads_back(tmp_path):
    film = _film(16)
    opts = DicomOptions(bits_stored=12, transfer_syntax="jpegls")
    p = tmp_path / "b.dcm"
    write_film_dicom(p, film, opts, index=0, seed=0)
    arr = pixel_array(p)
    assert int(arr.max()) == 4095 and int(arr.min()) == 0
    np.testing.assert_array_equal(arr, np.rint(film.image / 65535.0 * 4095).astype(np.uint16))


def test_bad_options_and_films_rejected():
    with pytest.raises(ValueError, match="modality"):
        DicomOptions(modality="CT")
    with pytest.raises(ValueError, match="transfer_syntax"):
        DicomOptions(transfer_syntax="jpeg")
    with pytest.raises(ValueError, match="bits_stored"):
        DicomOptions(bits_stored=8)
    with pytest.raises(ValueError, match="CR only"):
        DicomOptions(modality="DX", spacing_tags="pixel")
    with pytest.raises(ValueError, match="magnification"):
        DicomOptions(magnification=0.5)
    film = _film(12)
    film.image[3, 3] = 5000
    with pytest.raises(ValueError, match="do not fit"):
        stored_pixel_array(film, DicomOptions())


def test_random_options_valid_and_varied():
    rng = np.random.default_rng(0)
    drawn = [random_dicom_options(rng) for _ in range(400)]
    for field_name, values in [
        ("modality", MODALITIES),
        ("photometric", PHOTOMETRICS),
        ("bits_stored", BITS_STORED),
        ("transfer_syntax", TRANSFER_SYNTAXES),
        ("spacing_tags", SPACING_TAGS),
    ]:
        assert {getattr(o, field_name) for o in drawn} == set(values), field_name
    assert all(1.05 <= o.magnification <= 1.2 for o in drawn)
    assert not any(o.modality == "DX" and o.spacing_tags == "pixel" for o in drawn)
    assert not any(o.modality == "CR" and o.spacing_tags == "imager+magnification" for o in drawn)
    again = [random_dicom_options(np.random.default_rng(0)) for _ in range(1)]
    assert again[0] == drawn[0]


def test_j2k_needs_32_pixels(tmp_path):
    film = _film(12, shape=(40, 31))
    with pytest.raises(ValueError, match="at least 32"):
        write_film_dicom(
            tmp_path / "x.dcm", film, DicomOptions(transfer_syntax="j2k"), index=0, seed=0
        )


def test_constant_image_gets_full_range_window(tmp_path):
    film = Film(np.full((32, 32), 7, np.uint16), 12, 0.2, legs=[])
    p = tmp_path / "c.dcm"
    write_film_dicom(p, film, DicomOptions(bits_stored=12, transfer_syntax="j2k"), index=0, seed=0)
    ds = pydicom.dcmread(p)
    assert ds.ImageLaterality == "B"
    assert float(ds.WindowWidth) > 1000
    np.testing.assert_array_equal(pixel_array(ds), film.image)


def test_generated_films_valid_and_exact(tmp_path):
    """Films from the real generator, with random options: exact and dciodvfy-clean."""
    synth = pytest.importorskip("legalign.training.synth")
    if not hasattr(synth, "generate_film"):
        pytest.skip("legalign.training.synth.generate_film not available")
    rng = np.random.default_rng(2)
    for i in range(3):
        film = synth.generate_film(i, size="small")
        opts = random_dicom_options(rng)
        path = tmp_path / f"g{i}.dcm"
        write_film_dicom(path, film, opts, index=i, seed=2)
        np.testing.assert_array_equal(pixel_array(path), stored_pixel_array(film, opts))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert list(ds.PatientOrientation)[0] == ("R" if film.mirrored else "L")
        assert _validate(path) == ([], [])
