"""Outputs of `legalign run`: table, per-image JSON, overlay, DICOM SR and SC, summary.

Built from a synthetic film's ground-truth landmarks (with hand-set confidences), so the
values are known; the locator is not involved here (see test_engine.py for that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from leg_builder import legs_with_confidence

from legalign.pipeline.api import FilmInfo, load_config
from legalign.pipeline.assemble import result_from_legs
from legalign.pipeline.landmarks import LANDMARK_NAMES


@pytest.fixture(scope="module")
def synth_dicom(tmp_path_factory):
    """A small synthetic bilateral film written as DICOM; (path, film, header, pixels)."""
    import pydicom

    from legalign.pipeline.read import read_radiograph
    from legalign.training.synth.dicom_archive import DicomOptions, write_film_dicom
    from legalign.training.synth.film import generate_film

    film = generate_film(
        11,
        size="small",
        legs="both",
        alignment={"right": {"hka_deg": -8.0, "mpta_deg": 82.0, "jlca_deg": 1.0}},
    )
    path = tmp_path_factory.mktemp("src") / "film.dcm"
    write_film_dicom(
        path, film, DicomOptions(modality="DX", transfer_syntax="explicit"), index=5, seed=9
    )
    header = pydicom.dcmread(path, stop_before_pixels=True)
    rad = read_radiograph(path)
    return path, film, header, rad


def _result(rad, film, low=None, conf=0.9, spread=None):
    legs = legs_with_confidence(film, conf, low, spread)
    info = FilmInfo.from_radiograph(rad)
    return result_from_legs(info, legs, load_config(), model_name="test")


def _dciodvfy_errors(path: Path) -> list[str] | None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is required when CI=true")
        return None
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")]


# ----------------------------------------------------------------- table
def test_table_one_row_per_leg_with_schema(tmp_path, synth_dicom):
    import pandas as pd

    from legalign.pipeline.outputs.table import COLUMN_NAMES, write_tables

    _, film, _, rad = synth_dicom
    ok = _result(rad, film, low=("left", "tibial_plateau_lateral", 0.05), spread=2.0).to_dict()
    failed = {
        "file": "/x/bad.dcm",
        "status": "failed",
        "error_reason": "unreadable",
        "error": "boom",
        "legs": [],
    }
    n = write_tables([ok, failed], tmp_path)
    assert n == 3
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert tuple(df.columns) == COLUMN_NAMES
    csv = pd.read_csv(tmp_path / "results.csv")
    assert tuple(csv.columns) == COLUMN_NAMES and len(csv) == 3
    right = df[df.side == "right"].iloc[0]
    left = df[df.side == "left"].iloc[0]
    assert right.sop_instance_uid == rad.sop_instance_uid
    for name in LANDMARK_NAMES:
        assert np.isfinite(right[f"{name}_x"]) and right[f"{name}_conf"] == pytest.approx(0.9)
    assert right.hka_deg == pytest.approx(-8.0, abs=0.05)
    assert right.spacing_source == rad.spacing_source
    # unusable (not merely low-confidence): not measured from, null with the reason
    assert left.status == "partial" and pd.isna(left.low_confidence)
    assert not left.tibial_plateau_lateral_used
    assert pd.isna(left.mpta_deg) and pd.isna(left.mpta_deg_lo)
    assert (
        "tibial_plateau_lateral unusable (no heatmap peak, confidence 0.05)"
        in json.loads(left.null_reasons)["mpta_deg"]
    )
    # the 90 % intervals and error radii are columns
    assert right.hka_deg_lo < right.hka_deg < right.hka_deg_hi and right.interval_level == 0.9
    assert right.mad_mm_lo < right.mad_mm < right.mad_mm_hi
    assert right.femoral_head_radius_px > 0
    assert right.femoral_head_radius_mm == pytest.approx(
        right.femoral_head_radius_px * rad.spacing_mm
    )
    assert right.review == (right.hka_deg_hi - right.hka_deg_lo > 2.5)
    bad = df[df.file == "/x/bad.dcm"].iloc[0]
    assert bad.status == "failed" and bad.error_reason == "unreadable" and pd.isna(bad.side)
    # the plan of the varus right leg is in the row
    assert right.plan_indicated and right.plan_level in ("HTO", "DFO", "DLO")
    assert right.plan_correction_deg > 0


def test_table_types_survive_all_null_columns(tmp_path):
    import pyarrow.parquet as pq

    from legalign.pipeline.outputs.table import arrow_schema, write_tables

    write_tables(
        [{"file": "a", "status": "failed", "error_reason": "unreadable", "legs": []}], tmp_path
    )
    assert pq.read_schema(tmp_path / "results.parquet").equals(arrow_schema())


# ----------------------------------------------------------------- names and json
@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "/abs/dir/..", "a/b/.hidden", "we ird\\name:?.dcm", "", "/"],
)
def test_output_stem_is_a_safe_file_name(path):
    from legalign.pipeline.outputs.image_json import output_stem

    stem = output_stem(path)
    assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
    assert ".." not in stem.split("-")[0] or stem.split("-")[0].strip(".")


def test_output_stem_distinguishes_same_names_in_different_folders():
    from legalign.pipeline.outputs.image_json import output_stem

    assert output_stem("/a/x.dcm") != output_stem("/b/x.dcm")
    assert output_stem("/a/x.dcm") == output_stem("/a/./x.dcm")


def test_safe_join_refuses_escape(tmp_path):
    from legalign.pipeline.outputs.image_json import safe_join

    assert safe_join(tmp_path, "images", "a.json") == (tmp_path / "images" / "a.json").resolve()
    for bad in ("..", "../x", "a/b", ""):
        with pytest.raises(ValueError):
            safe_join(tmp_path, bad)


def test_image_json_atomic_and_nan_free(tmp_path, synth_dicom):
    from legalign.pipeline.outputs.image_json import write_image_json

    _, film, _, rad = synth_dicom
    d = _result(rad, film).to_dict()
    d["extra"] = float("nan")
    target = tmp_path / "r.json"
    write_image_json(d, target)
    back = json.loads(target.read_text())
    assert back["extra"] is None and back["legs"][0]["side"] in ("right", "left")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left


# ----------------------------------------------------------------- overlay
def test_overlay_draws_landmarks_axes_wedge_and_panel(synth_dicom):
    from legalign.pipeline.outputs.overlay import (
        PANEL_WIDTH,
        footer_lines,
        panel_lines,
        render_overlay,
        thumbnail,
    )

    _, film, _, rad = synth_dicom
    d = _result(rad, film, low=("left", "femoral_condyle_medial", 0.2)).to_dict()
    thumb = thumbnail(rad.pixels, 512)
    assert thumb.dtype == np.uint8 and thumb.shape[0] == min(512, rad.height)
    rgb = render_overlay(d, thumb)
    assert rgb.shape == (thumb.shape[0], thumb.shape[1] + PANEL_WIDTH, 3)
    # the panel has text, the film part has coloured (non-grey) drawing
    assert rgb[:, thumb.shape[1] :].max() > 0
    film_part = rgb[:, : thumb.shape[1]].astype(int)
    coloured = (np.abs(film_part[..., 0] - film_part[..., 1]) > 40) | (
        np.abs(film_part[..., 1] - film_part[..., 2]) > 40
    )
    assert coloured.sum() > 200
    # the planned wedge (orange) of the varus right leg is drawn near its hinge
    right = next(leg for leg in d["legs"] if leg["side"] == "right")
    plan = right["plan"]
    assert plan["level"] is not None
    step = next(s for s in plan["steps"] if s["hinge"])
    s = thumb.shape[0] / rad.height
    hx, hy = (int(round((v + 0.5) * s - 0.5)) for v in step["hinge"])
    patch = rgb[max(0, hy - 6) : hy + 7, max(0, hx - 6) : hx + 7].astype(int)
    orange = (
        (patch[..., 0] > 200) & (patch[..., 1] > 100) & (patch[..., 1] < 200) & (patch[..., 2] < 80)
    )
    assert orange.any()
    text = "\n".join(t for t, _ in [*panel_lines(d), *footer_lines()])
    assert "HKA" in text and "Planning support only" in text and "low landmark confidence" in text


# ----------------------------------------------------------------- DICOM SR / SC
def test_sr_in_source_study_with_landmark_points(tmp_path, synth_dicom):
    from pydicom.uid import ComprehensiveSRStorage  # noqa: F401  (name check only)

    from legalign.pipeline.outputs.dicom_sr import build_sr

    _, film, header, rad = synth_dicom
    d = _result(rad, film, low=("left", "knee_centre", 0.15), spread=2.0).to_dict()
    assert next(leg for leg in d["legs"] if leg["side"] == "left")["review"] is True
    sr = build_sr(d, header)
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.PatientID == header.PatientID
    assert sr.SeriesInstanceUID != header.SeriesInstanceUID
    out = tmp_path / "sr.dcm"
    sr.save_as(out, enforce_file_format=True)

    points, units, refs, names = [], set(), set(), set()

    def walk(items):
        for it in items:
            names.add(it.ConceptNameCodeSequence[0].CodeValue)
            if it.ValueType == "SCOORD":
                points.append([float(v) for v in it.GraphicData])
                for child in it.get("ContentSequence", []):
                    refs.add(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if it.ValueType == "NUM":
                units.add(it.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
            walk(it.get("ContentSequence", []))

    walk(sr.ContentSequence)
    n_landmarks = sum(len(leg["landmarks"]) for leg in d["legs"])
    assert len(points) == n_landmarks
    fh = next(leg for leg in d["legs"] if leg["side"] == "right")["landmarks"]["femoral_head"]
    assert any(
        abs(p[0] - (fh["x"] + 0.5)) < 1e-4 and abs(p[1] - (fh["y"] + 0.5)) < 1e-4 for p in points
    )
    assert refs == {header.SOPInstanceUID}
    assert {"deg", "mm", "%"} <= units
    assert {"HKA-LO", "HKA-HI", "LMERR", "REVIEW"} <= names
    errors = _dciodvfy_errors(out)
    if errors is not None:
        assert errors == []


# set from the clock at construction: the only values two builds of one report may differ in
_NOW_KEYWORDS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _sr_json(ds) -> dict:
    from pydicom.datadict import tag_for_keyword

    j = ds.to_json_dict()
    for kw in _NOW_KEYWORDS:
        assert f"{tag_for_keyword(kw):08X}" in j, kw
        j.pop(f"{tag_for_keyword(kw):08X}")
    for seq, kw in (
        ("VerifyingObserverSequence", "VerificationDateTime"),
        ("ContributingEquipmentSequence", "ContributionDateTime"),
    ):
        for item in j.get(f"{tag_for_keyword(seq):08X}", {}).get("Value", []):
            item.pop(f"{tag_for_keyword(kw):08X}", None)
    return j


@pytest.mark.parametrize("reviewed", [False, True])
def test_sr_document_equals_highdicom_constructor(synth_dicom, reviewed):
    """The fast SR document (no deep copy of the content tree) is the dataset highdicom's
    own Comprehensive3DSR constructor makes of the same report: every attribute, every
    content item, the evidence sequence and the flags; only creation times may differ."""
    import highdicom as hd

    from legalign.pipeline.outputs.dicom_sr import measurement_report, sr_document, sr_kwargs

    _, film, header, rad = synth_dicom
    d = _result(rad, film, low=("left", "knee_centre", 0.15), spread=2.0).to_dict()
    review = (
        {
            "right": {"state": "amended", "reason": None, "amended": ["femoral_head"]},
            "left": {"state": "rejected", "reason": "Film cut", "reason_code": "REJ1"},
        }
        if reviewed
        else None
    )
    verifier = "Doe^Jane" if reviewed else None
    report = measurement_report(d, header, review=review)
    uids = {
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_number": 9801,
        "sop_instance_uid": "1.2.826.0.1.3680043.8.498.2",
        "verifier": verifier,
    }
    reference = hd.sr.Comprehensive3DSR(evidence=[header], content=report, **sr_kwargs(**uids))
    fast = sr_document(report, header, **uids)
    assert _sr_json(fast) == _sr_json(reference)
    assert fast.VerificationFlag == ("VERIFIED" if reviewed else "UNVERIFIED")
    assert len(list(fast.iterall())) == len(list(reference.iterall())) > 1000
    # sr.content: the typed root container, as highdicom's constructor gives it
    assert type(fast.content[0]) is type(reference.content[0])
    assert len(fast.content[0].ContentSequence) == len(reference.content[0].ContentSequence)


def test_sr_encoding_marks_skip_pydicoms_per_item_pass_and_keep_the_bytes(synth_dicom, monkeypatch):
    """The content items' declared encoding spares pydicom's ambiguous-VR pass on each
    item (it runs once from the top) and the encoded file is byte for byte the one
    written without the marks."""
    import copy
    import io

    import pydicom.filewriter as fw

    from legalign.pipeline.outputs.dicom_sr import build_sr

    _, film, header, rad = synth_dicom
    d = _result(rad, film, low=("left", "knee_centre", 0.15)).to_dict()
    sr = build_sr(d, header, series_instance_uid="1.2.3", sop_instance_uid="1.2.4")
    plain = copy.deepcopy(sr)
    items = 0
    seen: set[int] = set()
    stack = list(plain.ContentSequence)
    while stack:
        item = stack.pop()
        if id(item) in seen:  # a code or reference item shared by several groups
            continue
        seen.add(id(item))
        items += 1
        assert item.original_encoding == (False, True)
        item.set_original_encoding(None, None, "")
        stack.extend(it for e in item if e.VR == "SQ" for it in e.value)
    assert items > 500

    calls = {"n": 0}
    original = fw.correct_ambiguous_vr

    def counting(ds, *a, **k):
        calls["n"] += 1
        return original(ds, *a, **k)

    monkeypatch.setattr(fw, "correct_ambiguous_vr", counting)

    def encode(ds) -> tuple[bytes, int]:
        calls["n"] = 0
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue(), calls["n"]

    marked, n_marked = encode(sr)
    unmarked, n_unmarked = encode(plain)
    assert marked == unmarked
    assert n_unmarked > 4 * items and n_marked < n_unmarked / 4


def test_sr_document_refuses_content_referencing_other_images(synth_dicom):
    """The evidence check highdicom's constructor does on the tree is kept: a report whose
    image regions point at another instance than the evidence is refused."""
    import copy

    from legalign.pipeline.outputs.dicom_sr import measurement_report, sr_document

    _, film, header, rad = synth_dicom
    d = _result(rad, film).to_dict()
    report = measurement_report(d, header)
    other = copy.deepcopy(header)
    other.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    with pytest.raises(ValueError, match="not its evidence"):
        sr_document(
            report, other, series_instance_uid="1.2.3", series_number=1, sop_instance_uid="1.2.4"
        )


def test_sc_of_overlay_in_source_study(tmp_path, synth_dicom):
    from legalign.pipeline.outputs.dicom_sc import build_sc
    from legalign.pipeline.outputs.overlay import render_overlay, thumbnail

    _, film, header, rad = synth_dicom
    d = _result(rad, film).to_dict()
    rgb = render_overlay(d, thumbnail(rad.pixels, 400))
    sc = build_sc(rgb, header)
    assert sc.StudyInstanceUID == header.StudyInstanceUID and sc.PatientID == header.PatientID
    assert sc.Rows == rgb.shape[0] and sc.Columns == rgb.shape[1] and sc.SamplesPerPixel == 3
    out = tmp_path / "sc.dcm"
    sc.save_as(out, enforce_file_format=True)
    import pydicom

    back = pydicom.dcmread(out)
    assert np.array_equal(back.pixel_array, rgb)
    errors = _dciodvfy_errors(out)
    if errors is not None:
        assert errors == []


# ----------------------------------------------------------------- summary
def test_summary_counts_and_reasons():
    from legalign.pipeline.outputs.summary import RunSummary

    s = RunSummary()
    s.add_result({"status": "ok", "legs": [{"status": "ok"}, {"status": "partial"}]})
    s.add_result({"status": "failed", "error_reason": "unreadable", "legs": []})
    s.add_result({"status": "failed", "error_reason": "unreadable", "legs": []})
    s.add_timing("read", 1.0, 2)
    s.processed_this_run, s.elapsed_s = 3, 1.5
    d = s.to_dict()
    assert d["files_total"] == 3 and d["files_failed"] == 2 and d["files_ok"] == 1
    assert d["failures_by_reason"] == {"unreadable": 2}
    assert d["legs_by_status"] == {"ok": 1, "partial": 1}
    assert d["files_per_s"] == pytest.approx(2.0)
    assert d["stages"]["read"]["seconds_per_film"] == pytest.approx(0.5)
    assert "unreadable 2" in s.format_text()


def test_summary_rates_per_syntax_leave_out_files_never_read():
    from legalign.pipeline.outputs.summary import RunSummary

    s = RunSummary()
    s.add_processed(
        {"read": {"syntax": "jpeg2000", "decoder": "openjpeg"}, "timings_s": {"read": 1.0}}
    )
    s.add_processed(
        {"read": {"syntax": "jpeg2000", "decoder": "openjpeg"}, "timings_s": {"read": 3.0}}
    )
    s.add_processed({"status": "failed", "timings_s": {"read": 0.001}})  # refused unread
    s.processed_this_run, s.elapsed_s = 3, 2.0
    by = s.to_dict()["by_syntax"]
    assert list(by) == ["jpeg2000"]
    assert by["jpeg2000"]["films"] == 2 and by["jpeg2000"]["films_per_s"] == pytest.approx(1.0)
    assert "unknown" not in s.format_text()
