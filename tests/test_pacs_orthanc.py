"""legalign pacs against a real Orthanc (Debian's orthanc + orthanc-dicomweb), started on
loopback with a temporary configuration and storage, shared by the tests of this module.

Skipped with the reason when Orthanc is not installed, except in CI (CI=true), where
its absence fails.  Kill / restart tests are marked slow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from orthanc_server import OrthancServer, find_orthanc

USER, SECRET = "legalign", "0rthanc-T3st-Secret"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    exe, plugin = find_orthanc()
    if exe is None or plugin is None:
        missing = "Orthanc" if exe is None else "its DICOMweb plugin"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} is required in CI (.ci/run installs orthanc, orthanc-dicomweb)")
        pytest.skip(f"{missing} not installed (apt-get install orthanc orthanc-dicomweb)")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), users={USER: SECRET})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def films(tmp_path_factory):
    from legalign.pipeline.cli import main

    d = tmp_path_factory.mktemp("orthanc_films")
    args = ["synth", "--n", "3", "--out", str(d), "--format", "dicom", "--size", "small"]
    assert main([*args, "--seed", "21"]) == 0
    return sorted(d.glob("*.dcm"))


@pytest.fixture
def archive(orthanc, films, monkeypatch):
    """Orthanc holding exactly ``films``; the credentials in the default variable."""
    orthanc.clear()
    for f in films:
        orthanc.upload(f)
    monkeypatch.setenv("LEGALIGN_PACS_AUTH", f"basic {USER}:{SECRET}")
    return orthanc


def _pacs(url, out, *extra):
    from legalign.pipeline.cli import main

    return main(["pacs", url, "--out", str(out), "--workers", "1", "--no-progress", *extra])


def _results_in(orthanc, study_uid):
    """SOP class -> instances (Orthanc ids) of legalign's results in one study."""
    found = {}
    for s in orthanc.rest("/studies", expand=1):
        if s["MainDicomTags"]["StudyInstanceUID"] != study_uid:
            continue
        for series_id in s["Series"]:
            for inst in orthanc.rest(f"/series/{series_id}/instances"):
                tags = orthanc.rest(f"/instances/{inst['ID']}/simplified-tags")
                found.setdefault(tags["SOPClassUID"], []).append(inst["ID"])
    return found


def _dciodvfy_errors(data: bytes, tmp: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy (dicom3tools) is required in CI")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    f = tmp / "check.dcm"
    f.write_bytes(data)
    res = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def _ledger(out):
    return [json.loads(ln) for ln in (out / "pacs_ledger.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_round_trip_results_in_their_studies_then_nothing_new(archive, films, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "out"
    changes0 = archive.new_instance_changes()
    assert _pacs(archive.url, out) == 0
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in films}
    # local outputs, as `legalign run` writes them
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) >= len(films) and set(table["status"]) <= {"ok", "partial"}
    for name in ("results.csv", "summary.json", "pacs.csv", "pacs_summary.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "dicom").glob("*_sr.dcm"))) == len(films)
    assert len(list((out / "overlays").glob("*.png"))) == len(films)
    assert not any((out / "retrieved").iterdir())  # staged films removed once done
    # in the archive: one SR and one SC in each source study, valid DICOM
    for sop, f in sources.items():
        study = str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
        found = _results_in(archive, study)
        assert len(found.get(SR_CLASS, [])) == 1 and len(found.get(SC_CLASS, [])) == 1, found
        for cls in (SR_CLASS, SC_CLASS):
            data = archive.download(found[cls][0])
            ds = pydicom.dcmread(io.BytesIO(data))
            assert str(ds.StudyInstanceUID) == study
            assert _dciodvfy_errors(data, tmp_path) == [], (cls, sop)
    assert archive.new_instance_changes() - changes0 == 2 * len(films)
    rows = list(csv.DictReader(open(out / "pacs.csv")))
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(sources)
    assert {r["store_status"] for r in rows} == {"stored"}
    # re-run: nothing retrieved, nothing stored, nothing new in the archive
    ledger = _ledger(out)
    capsys.readouterr()
    assert _pacs(archive.url, out) == 0
    summary = json.loads((out / "pacs_summary.json").read_text())["this_run"]
    assert (summary["retrieved"], summary["stored"], summary["skipped_done"]) == (0, 0, len(films))
    assert _ledger(out) == ledger
    assert archive.new_instance_changes() - changes0 == 2 * len(films)
    capsys.readouterr()
    assert _pacs(archive.url, out, "--dry-run") == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert sorted(ln.split("\t")[0] for ln in lines) == ["done"] * len(films)


def test_filters_select_by_modality_study_body_part_and_date(archive, films, tmp_path, capsys):
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in films]
    out = tmp_path / "o"

    def listed(*extra):
        capsys.readouterr()
        assert _pacs(archive.url, out, "--dry-run", *extra) == 0
        return sorted(ln.split("\t")[3] for ln in capsys.readouterr().out.strip().splitlines()[1:])

    assert listed() == sorted(str(h.SOPInstanceUID) for h in heads)
    for mod in ("CR", "DX"):
        assert listed("--modality", mod) == sorted(
            str(h.SOPInstanceUID) for h in heads if h.Modality == mod
        )
    studies = tmp_path / "studies.txt"
    studies.write_text(f"{heads[1].StudyInstanceUID}\n")
    assert listed("--study-list", str(studies)) == [str(heads[1].SOPInstanceUID)]
    part = str(heads[0].BodyPartExamined)
    assert len(listed("--body-part", part.lower()[:2] + "*")) == len(heads)
    assert listed("--body-part", "SKULL") == []
    assert listed("--series-description", "*no such*") == []
    dates = sorted(str(h.StudyDate) for h in heads)
    assert listed("--date-from", dates[-1], "--date-to", dates[-1]) == sorted(
        str(h.SOPInstanceUID) for h in heads if str(h.StudyDate) == dates[-1]
    )
    assert not out.exists()  # a dry run writes nothing


def test_wrong_credentials_are_a_reason_never_echoed(archive, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEGALIGN_PACS_AUTH", "basic legalign:Wr0ng-Pa55")
    capsys.readouterr()
    assert _pacs(archive.url, tmp_path / "o") == 3
    text = "".join(capsys.readouterr())
    assert "HTTP 401" in text and "Wr0ng-Pa55" not in text


# ------------------------------------------------------------------ slow: kill, restart
def _spawn(url, out, *extra):
    env = dict(os.environ, LEGALIGN_PACS_AUTH=f"basic {USER}:{SECRET}")
    cmd = [sys.executable, "-m", "legalign.pipeline.cli", "pacs", url, "--out", str(out)]
    return subprocess.Popen(
        [*cmd, "--workers", "1", "--no-progress", "--concurrency", "1", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for(pred, timeout_s=600.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture(scope="session")
def more_films(tmp_path_factory):
    from legalign.pipeline.cli import main

    d = tmp_path_factory.mktemp("orthanc_more")
    args = ["synth", "--n", "5", "--out", str(d), "--format", "dicom", "--size", "small"]
    assert main([*args, "--seed", "31"]) == 0
    return sorted(d.glob("*.dcm"))


def _check_exactly_once(orthanc, films, out, changes0):
    for f in films:
        h = pydicom.dcmread(f, stop_before_pixels=True)
        found = _results_in(orthanc, str(h.StudyInstanceUID))
        assert len(found.get(SR_CLASS, [])) == 1 and len(found.get(SC_CLASS, [])) == 1
    stored = Counter(r["sop"] for r in _ledger(out) if r["event"] == "stored")
    assert len(stored) == len(films) and set(stored.values()) == {1}
    assert orthanc.new_instance_changes() - changes0 == 2 * len(films)
    import pandas as pd

    files = pd.read_parquet(out / "results.parquet")["file"]
    assert files.nunique() == len(films)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3])
def test_killed_at_any_moment_resumes_each_instance_once(
    orthanc, more_films, tmp_path, monkeypatch, kill_after
):
    orthanc.clear()
    for f in more_films:
        orthanc.upload(f)
    changes0 = orthanc.new_instance_changes()
    out = tmp_path / "out"
    proc = _spawn(orthanc.url, out)
    _wait_for(lambda: _lines(out / "journal.jsonl") >= kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _spawn(orthanc.url, out)
    assert proc.wait(timeout=900) == 0
    _check_exactly_once(orthanc, more_films, out, changes0)


@pytest.mark.slow
def test_orthanc_restarted_mid_run(orthanc, more_films, tmp_path):
    orthanc.clear()
    for f in more_films:
        orthanc.upload(f)
    changes0 = orthanc.new_instance_changes()
    out = tmp_path / "out"
    proc = _spawn(orthanc.url, out, "--retries", "8")
    _wait_for(lambda: _lines(out / "journal.jsonl") >= 1)
    orthanc.stop()
    time.sleep(3.0)
    orthanc.start()
    assert proc.wait(timeout=900) == 0
    _check_exactly_once(orthanc, more_films, out, changes0)


@pytest.mark.slow
def test_orthanc_down_for_good_gives_rows_then_resumes(orthanc, more_films, tmp_path):
    orthanc.clear()
    for f in more_films:
        orthanc.upload(f)
    changes0 = orthanc.new_instance_changes()
    out = tmp_path / "out"
    proc = _spawn(orthanc.url, out, "--retries", "2")
    _wait_for(lambda: _lines(out / "journal.jsonl") >= 1)
    orthanc.stop()
    try:
        assert proc.wait(timeout=900) == 3
    finally:
        orthanc.start()
    rows = list(csv.DictReader(open(out / "pacs.csv")))
    reasons = {
        r["error_reason"] or r["store_reason"] for r in rows if r["store_status"] != "stored"
    }
    assert reasons and reasons <= {"pacs_unreachable"}, rows
    proc = _spawn(orthanc.url, out)
    assert proc.wait(timeout=900) == 0
    _check_exactly_once(orthanc, more_films, out, changes0)
