"""Typed failures: every reason of docs/results-schema.md comes from a test input, chosen
where the error is raised (errors.FailureReason), never read from the message."""

from __future__ import annotations

import re

import pydicom
import pytest

from legalign.pipeline.assemble import result_from_legs
from legalign.pipeline.errors import (
    FailureReason,
    InputError,
    LegalignError,
    NotAnImageError,
    SpacingError,
    TooLargeError,
    WrongModalityError,
    failure_reason,
)
from legalign.pipeline.failures import failed_result
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.read import read_radiograph
from legalign.pipeline.results import FilmInfo


@pytest.fixture(scope="module")
def dicom_film(tmp_path_factory):
    from legalign.training.synth.dicom_archive import DicomOptions, build_dataset
    from legalign.training.synth.film import generate_film

    film = generate_film(1, size="small")
    path = tmp_path_factory.mktemp("dcm") / "film.dcm"
    build_dataset(film, DicomOptions(), index=1, seed=1).save_as(path, enforce_file_format=True)
    return path


def _reason(path, **kw) -> FailureReason:
    try:
        read_radiograph(str(path), **kw)
    except Exception as exc:  # noqa: BLE001 - the reason of whatever it raised
        return failed_result(str(path), exc).error_reason
    raise AssertionError(f"{path} was read")


def _edited(src, dst, **tags):
    ds = pydicom.dcmread(src)
    for k, v in tags.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def test_dicom_cut_at_200_bytes_is_unreadable(dicom_film, tmp_path):
    # was "wrong_modality": the message mentions "Modality" (no SOP Class UID, Modality ...)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(dicom_film.read_bytes()[:200])
    assert _reason(cut) is FailureReason.UNREADABLE


def test_magnification_zero_is_no_spacing(dicom_film, tmp_path):
    # was "unreadable": the message names EstimatedRadiographicMagnificationFactor, not spacing
    bad = _edited(
        dicom_film,
        tmp_path / "mag0.dcm",
        PixelSpacing=None,
        ImagerPixelSpacing=[1.0, 1.0],
        EstimatedRadiographicMagnificationFactor=0,
    )
    assert _reason(bad) is FailureReason.NO_SPACING


def test_input_reasons(dicom_film, tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image\n" * 20)
    assert _reason(tmp_path / "empty.dcm") is FailureReason.UNREADABLE
    assert _reason(tmp_path / "notes.png") is FailureReason.NOT_AN_IMAGE
    nopix = _edited(dicom_film, tmp_path / "nopix.dcm", PixelData=None)
    assert _reason(nopix) is FailureReason.NOT_AN_IMAGE
    ct = _edited(dicom_film, tmp_path / "ct.dcm", Modality="CT")
    assert _reason(ct) is FailureReason.WRONG_MODALITY
    assert _reason(dicom_film, max_pixels=1000) is FailureReason.TOO_LARGE
    neg = _edited(dicom_film, tmp_path / "neg.dcm", PixelSpacing=[-1.0, -1.0])
    assert _reason(neg) is FailureReason.NO_SPACING


def test_result_reasons(dicom_film):
    info = FilmInfo(str(dicom_film), 10, 20, 1.0, "user", None, None, "DX", 16, None, None, None)
    r = result_from_legs(info, [], load_geometry_config())
    assert r.error_reason is FailureReason.NO_LEGS_FOUND
    assert r.to_dict()["error_reason"] == "no_legs_found"
    assert failed_result("x", RuntimeError("bug")).error_reason is FailureReason.INTERNAL_ERROR
    assert failed_result("x", MemoryError()).error_reason is FailureReason.TOO_LARGE
    # reasons the engine records itself (its tests run them: worker_crashed, timeout)
    for reason in (FailureReason.WORKER_CRASHED, FailureReason.TIMEOUT):
        assert failed_result("x", "x: died", reason).to_dict()["error_reason"] == reason.value


def test_reason_is_the_class_not_the_message():
    # a message that talks about modality and spacing does not change the reason
    assert failure_reason(InputError("x: modality spacing too large")) is FailureReason.UNREADABLE
    assert failure_reason(SpacingError("x: anything")) is FailureReason.NO_SPACING
    assert failure_reason(TooLargeError("x")) is FailureReason.TOO_LARGE
    assert failure_reason(WrongModalityError("x")) is FailureReason.WRONG_MODALITY
    assert failure_reason(NotAnImageError("x")) is FailureReason.NOT_AN_IMAGE
    # a user-facing error that is not about an input file is a bug when it ends a file
    assert failure_reason(LegalignError("x")) is FailureReason.INTERNAL_ERROR


def test_every_documented_reason_is_an_enum_value():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "results-schema.md").read_text()
    section = doc.split("### Failure reasons")[1].split("## Results table")[0]
    documented = {
        name
        for line in section.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])
    }
    # pacs_not_stored is a store-ledger event (docs/pacs.md), not a results row
    assert documented | {"pacs_not_stored"} == {r.value for r in FailureReason}


def test_a_file_that_kills_its_worker_twice_is_worker_crashed(tmp_path):
    """The local engine retries a file alone after a worker died with it in flight; a
    second death records it as worker_crashed (the timeout reason: test_engine)."""
    from legalign.pipeline.engine.local import LocalEngine, _Item
    from legalign.pipeline.engine.options import EngineOptions

    engine = LocalEngine([], EngineOptions(out_dir=tmp_path, progress=False))
    engine.book.prepare_out()
    item = _Item(str(tmp_path / "film.dcm"), 1)
    engine._suspect("full", item)  # first death: retried alone
    assert list(engine.quarantine) == [item]
    engine.quarantine.clear()
    engine._suspect("full", item)  # second death: recorded
    engine.book.journal.close()
    (rec,) = list(engine.book.journal.records())
    assert rec["error_reason"] == "worker_crashed" and rec["status"] == "failed"
