"""``legalign synth``: files, COCO format, film i independent of N, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from legalign.pipeline.cli import main
from legalign.pipeline.landmarks import LANDMARK_NAMES
from legalign.pipeline.measure import measure_leg
from legalign.training.datasets.coco import CocoKeypointDataset


def _run(*argv: str) -> int:
    return main(["synth", *argv])


def test_synth_writes_pngs_and_coco_like_the_sample(tmp_path):
    out = tmp_path / "s"
    assert _run("--n", "3", "--out", str(out), "--size", "small", "--seed", "5") == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert set(coco) == {"info", "categories", "images", "annotations"}
    (cat,) = coco["categories"]
    assert cat["name"] == "leg" and cat["keypoints"] == list(LANDMARK_NAMES)
    assert cat["skeleton"] == [[1, 6], [6, 7], [2, 3], [4, 5], [9, 10], [11, 12]]
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 6
    for img in coco["images"]:
        png = cv2.imread(str(out / img["file_name"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (img["height"], img["width"])
        assert img["pixel_spacing_mm"] == 1.0 and isinstance(img["mirrored"], bool)
        assert set(img["alignment"]) == {"right", "left"}
        assert int(png.max()) < 2 ** img["bits_stored"]
        for side in ("right", "left"):
            a = img["alignment"][side]
            assert {"hka_deg", "mpta_deg", "mldfa_deg", "jlca_deg"} <= set(a)
    for ann in coco["annotations"]:
        assert ann["side"] in ("right", "left") and ann["category_id"] == 1
        assert len(ann["keypoints"]) == 36 and ann["num_keypoints"] == 12
        assert set(ann["outlines"]) == {"femur", "tibia"}
    # the project's COCO reader takes it, and the labels measure back the alignment
    ds = CocoKeypointDataset(out / "annotations.json")
    assert len(ds) == 3
    for i in range(3):
        film = ds[i]
        img = coco["images"][i]
        assert film.spacing_mm == 1.0 and film.mirrored == img["mirrored"]
        for leg in film.legs:
            m = measure_leg(leg, film.spacing_mm)
            assert m.hka_deg == pytest.approx(img["alignment"][leg.side]["hka_deg"], abs=1e-3)


def test_film_i_depends_only_on_seed_and_i(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run("--n", "2", "--out", str(a), "--size", "small", "--seed", "9") == 0
    assert _run("--n", "3", "--out", str(b), "--size", "small", "--seed", "9") == 0
    ca = json.loads((a / "annotations.json").read_text())
    cb = json.loads((b / "annotations.json").read_text())
    assert ca["images"] == cb["images"][:2]
    assert ca["annotations"] == cb["annotations"][:4]
    for name in ("synth_000000.png", "synth_000001.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = tmp_path / "c"
    assert _run("--n", "2", "--out", str(c), "--size", "small", "--seed", "10") == 0
    assert (c / "synth_000000.png").read_bytes() != (a / "synth_000000.png").read_bytes()


def test_single_leg_and_contact_sheet(tmp_path):
    out = tmp_path / "r"
    sheet = tmp_path / "sheet.png"
    assert (
        _run(
            "--n",
            "2",
            "--out",
            str(out),
            "--legs",
            "left",
            "--spacing-mm",
            "2.0",
            "--contact-sheet",
            str(sheet),
        )
        == 0
    )
    coco = json.loads((out / "annotations.json").read_text())
    assert [a["side"] for a in coco["annotations"]] == ["left", "left"]
    assert coco["images"][0]["pixel_spacing_mm"] == 2.0
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] > 100


def test_dicom_output(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    out = tmp_path / "d"
    assert _run("--n", "1", "--out", str(out), "--size", "small", "--format", "both") == 0
    coco = json.loads((out / "annotations.json").read_text())
    img = coco["images"][0]
    assert img["file_name"] == "synth_000000.png" and img["dicom_file"] == "synth_000000.dcm"
    ds = pydicom.dcmread(out / "synth_000000.dcm")
    assert (ds.Rows, ds.Columns) == (img["height"], img["width"])
    assert ds.PatientOrientation[0] == ("R" if img["mirrored"] else "L")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "1", "--seed", "-1"], "--seed must be non-negative"),
        (["--n", "1", "--spacing-mm", "0"], "--spacing-mm"),
        (["--n", "1", "--contact-sheet", "x.jpg"], "--contact-sheet must be a .png"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    assert _run("--out", str(tmp_path / "o"), *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("legalign synth: error:")
    assert not (tmp_path / "o").exists()


def test_refuses_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _run("--n", "1", "--out", str(out), "--size", "small") == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _run("--n", "1", "--out", str(out), "--size", "small", "--overwrite") == 0
    assert (out / "annotations.json").exists() and (out / "keep.txt").exists()


@pytest.mark.parametrize(
    "syntax, uid",
    [("jpeg", "1.2.840.10008.1.2.4.50"), ("htj2k", "1.2.840.10008.1.2.4.201")],
)
def test_transfer_syntax_on_request(tmp_path, syntax, uid):
    pydicom = pytest.importorskip("pydicom")
    from legalign.pipeline.read import read_radiograph
    from legalign.training.synth.dicom_archive import htj2k_available

    if syntax == "htj2k" and not htj2k_available():
        pytest.skip("no HTJ2K encoder (the optional imagecodecs package)")
    out = tmp_path / "d"
    argv = ["--n", "2", "--out", str(out), "--size", "small", "--format", "dicom"]
    assert _run(*argv, "--transfer-syntax", syntax) == 0
    coco = json.loads((out / "annotations.json").read_text())
    for img in coco["images"]:
        assert img["dicom_options"]["transfer_syntax"] == syntax
        ds = pydicom.dcmread(out / img["dicom_file"], stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == uid
        assert ds.BitsStored == (8 if syntax == "jpeg" else img["dicom_options"]["bits_stored"])
        rad = read_radiograph(out / img["dicom_file"])
        assert rad.pixels.shape == (img["height"], img["width"])


def test_transfer_syntax_needs_dicom_output(tmp_path, capsys):
    assert _run("--n", "1", "--out", str(tmp_path / "o"), "--transfer-syntax", "j2k") == 2
    assert "--transfer-syntax applies to DICOM output" in capsys.readouterr().err
