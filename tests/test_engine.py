"""`legalign run`: input expansion, journal, end-to-end DICOM run with failures, resume,
SIGKILL exactly-once, exit codes, outputs written by the engine.

The end-to-end runs use the real locator with a tiny randomly initialised checkpoint:
the mechanics are tested, never the accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from legalign.pipeline.engine.inputs import expand_inputs
from legalign.pipeline.engine.journal import Journal, file_key

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from tiny_checkpoint import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _write_film(path, seed, **opts):
    from legalign.training.synth.dicom_archive import DicomOptions, write_film_dicom
    from legalign.training.synth.film import generate_film

    film = generate_film(seed, size="small")
    write_film_dicom(path, film, DicomOptions(**opts), index=seed, seed=seed)
    return film


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Good films in every transfer syntax plus one file per failure reason."""
    import pydicom

    root = tmp_path_factory.mktemp("archive")
    (root / "a" / "b").mkdir(parents=True)
    good = []
    for i, (ts, photo) in enumerate(
        [
            ("explicit", "MONOCHROME2"),
            ("rle", "MONOCHROME1"),
            ("jpegls", "MONOCHROME2"),
            ("j2k", "MONOCHROME1"),
        ]
    ):
        p = root / ("a/b" if i % 2 else "a") / f"film{i}.dcm"
        _write_film(p, 100 + i, transfer_syntax=ts, photometric=photo)
        good.append(p)
    # rasters: 16-bit PNG, 16-bit TIFF, 8-bit JPEG
    import cv2
    import tifffile

    from legalign.training.synth.film import generate_film

    img16 = generate_film(150, size="small").image
    cv2.imwrite(str(root / "a" / "film16.png"), img16)
    tifffile.imwrite(root / "a" / "film16.tif", img16)
    cv2.imwrite(str(root / "film8.jpg"), (img16 >> 8).astype(np.uint8))
    good += [root / "a" / "film16.png", root / "a" / "film16.tif", root / "film8.jpg"]
    bad = {}
    data = good[0].read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 3])
    bad["truncated.dcm"] = "unreadable"
    (root / "notes.dat").write_text("not an image\n")
    bad["notes.dat"] = "not_an_image"
    ds = pydicom.dcmread(good[0])
    ds.Modality = "CT"
    ds.save_as(root / "ct.dcm")
    bad["ct.dcm"] = "wrong_modality"
    ds = pydicom.dcmread(good[0])
    ds.ImagerPixelSpacing = ["0", "0"]
    ds.save_as(root / "zero_spacing.dcm")
    bad["zero_spacing.dcm"] = "no_spacing"
    (root / ".hidden.dcm").write_bytes(data)  # skipped by the folder walk
    return root, good, bad


def _run(args, timeout=240, **kw):
    cmd = [sys.executable, "-m", "legalign.pipeline.cli", "run", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def _results(out):
    import pandas as pd

    return pd.read_parquet(Path(out) / "results.parquet")


# ----------------------------------------------------------------- inputs
def test_expand_inputs_is_lazy_recursive_and_skips_out_dir(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for p in ("in/x.dcm", "in/sub/y.png", "in/.hid", "in/DICOMDIR", "in/annotations.json"):
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "in" / "IM0001").write_bytes(b"x")  # DICOM files often have no extension
    out = tmp_path / "in" / "out"
    out.mkdir()
    (out / "z.dcm").write_bytes(b"x")
    gen = expand_inputs([str(tmp_path / "in")], exclude=[out])
    assert iter(gen) is gen  # a generator, nothing listed up front
    got = sorted(Path(p).relative_to(tmp_path).as_posix() for p in gen)
    assert got == ["in/IM0001", "in/sub/y.png", "in/x.dcm"]
    # named explicitly, a sidecar is an input like any other (recorded if not an image)
    assert list(expand_inputs([str(tmp_path / "in" / "annotations.json")])) == [
        str(tmp_path / "in" / "annotations.json")
    ]


def test_expand_inputs_list_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.dcm").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    lst = tmp_path / "files.txt"
    lst.write_text("# comment\nd\n\nb.png\n/nonexistent/c.dcm\n")
    got = list(expand_inputs([str(lst)]))
    assert got == [str(tmp_path / "d" / "a.dcm"), str(tmp_path / "b.png"), "/nonexistent/c.dcm"]
    assert list(expand_inputs([f"@{lst}"])) == got


# ----------------------------------------------------------------- journal
def test_journal_repair_and_latest(tmp_path):
    j = Journal(tmp_path)
    j.append({"file": "/a", "status": "failed"})
    j.append({"file": "/b", "status": "ok"})
    j.append({"file": "/a", "status": "ok"})
    j.close()
    with open(j.path, "ab") as fh:
        fh.write(b'{"file": "/c", "sta')  # a kill mid-append
    assert j.repair() > 0
    assert j.path.read_bytes().endswith(b"\n")
    latest = list(j.latest_records())
    assert [(r["file"], r["status"]) for r in latest] == [("/b", "ok"), ("/a", "ok")]
    assert j.done_keys() == {file_key("/a"), file_key("/b")}
    j2 = Journal(tmp_path)
    j2.append({"file": "/d", "status": "failed"})
    j2.close()
    assert file_key("/d") not in j2.done_keys(include_failed=False)


def test_finished_files_are_checked_against_their_sop_instance_uid(tmp_path):
    """Resume identity of a DICOM file: file key plus the SOP Instance UID its record was
    made from, read from the header up to (0008,0018) only."""
    import shutil

    import pydicom

    from legalign.pipeline.engine.journal import read_sop_instance_uid

    a = tmp_path / "a.dcm"
    _write_film(a, 3)
    copy = tmp_path / "copy_of_a.dcm"
    shutil.copy2(a, copy)
    png = tmp_path / "b.png"
    png.write_bytes(b"not read")
    uid = str(pydicom.dcmread(a).SOPInstanceUID)
    assert read_sop_instance_uid(str(a)) == uid
    assert read_sop_instance_uid(str(png)) is None
    out = tmp_path / "out"
    out.mkdir()
    j = Journal(out)
    for path in (a, copy):
        j.append({"file": str(path), "status": "ok", "sop_instance_uid": uid})
    j.append({"file": str(png), "status": "ok", "sop_instance_uid": None})
    j.close()
    done = j.finished()
    assert len(done) == 3
    for path in (a, copy, png):  # a raster has no UID to check: its key is enough
        assert done.holds(str(path), file_key(str(path)))
    # a rewritten with a new UID of the same length, size and mtime kept: not finished
    st, key = a.stat(), file_key(str(a))
    ds = pydicom.dcmread(a)
    new = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    ds.SOPInstanceUID = new
    ds.file_meta.MediaStorageSOPInstanceUID = new
    ds.save_as(a, enforce_file_format=True)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_key(str(a)) == key  # path, size and mtime alone would call it done
    assert not done.holds(str(a), file_key(str(a)))
    assert done.holds(str(copy), file_key(str(copy)))


# ----------------------------------------------------------------- end to end
@pytest.mark.slow
def test_run_dicom_archive_records_failures_and_resumes(tmp_path, archive, tiny_ckpt):
    import pandas as pd

    root, good, bad = archive
    out = tmp_path / "out"
    proc = _run([root, "--out", out, "--model", tiny_ckpt, "--workers", "2", "--no-progress"])
    assert proc.returncode == 3, proc.stderr[-3000:]
    df = _results(out)
    files = set(df.file)
    expected = {str(p) for p in good} | {str(root / n) for n in bad}
    assert files == expected  # every file, hidden one skipped
    by_file = df.groupby("file").first()
    for name, reason in bad.items():
        row = by_file.loc[str(root / name)]
        assert row.status == "failed" and row.error_reason == reason, (name, row.error)
        assert str(root / name) in row.error  # one line naming the file
    for p in good:
        row = by_file.loc[str(p)]
        # random weights: the film decodes; legs may or may not be "found"
        assert row.width > 0
        if p.suffix == ".dcm":
            assert row.sop_instance_uid and row.spacing_source is not None
        else:
            assert pd.isna(row.spacing_source) and pd.isna(row.spacing_mm)
        assert row.status in ("ok", "partial", "failed")
        if row.status == "failed":
            assert row.error_reason == "no_legs_found"
    # one JSON per image, names inside out/images
    jsons = list((out / "images").glob("*.json"))
    assert len(jsons) == len(expected)
    for jp in jsons:
        d = json.loads(jp.read_text())
        assert d["file"] in expected and d["outputs"]["json"] == f"images/{jp.name}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files_total"] == len(expected)
    assert summary["failures_by_reason"]["unreadable"] == 1
    assert summary["processed_this_run"] == len(expected)
    assert "files/s" in proc.stdout and "failures by reason" in proc.stdout
    # csv matches parquet
    assert len(pd.read_csv(out / "results.csv")) == len(df)

    # re-run: everything is skipped, results unchanged
    proc2 = _run([root, "--out", out, "--model", tiny_ckpt, "--workers", "1", "--no-progress"])
    assert proc2.returncode == 3
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["processed_this_run"] == 0 and s2["skipped_already_done"] == len(expected)
    df2 = _results(out)
    assert sorted(df2.file) == sorted(df.file)


def _shm_segments() -> set[str]:
    if not os.path.isdir("/dev/shm"):
        return set()
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


@pytest.mark.slow
def test_run_main_mode_batches_in_main_process(tmp_path, archive, tiny_ckpt):
    root, good, _ = archive
    out = tmp_path / "out"
    before = _shm_segments()
    proc = _run(
        [
            *good[:3],
            "--out",
            out,
            "--model",
            tiny_ckpt,
            "--workers",
            "1",
            "--mode",
            "main",
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    df = _results(out)
    assert set(df.file) == {str(p) for p in good[:3]}
    assert set(df.error_reason.dropna()) <= {"no_legs_found"}
    assert _shm_segments() <= before  # every film's shared memory released


@pytest.mark.slow
def test_sigkill_then_rerun_gives_every_file_exactly_once(tmp_path, tiny_ckpt):
    src = tmp_path / "films"
    src.mkdir()
    n = 10
    for i in range(n):
        _write_film(src / f"f{i:02d}.dcm", 200 + i)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "legalign.pipeline.cli",
        "run",
        str(src),
        "--out",
        str(out),
        "--model",
        str(tiny_ckpt),
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    journal = out / "journal.jsonl"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 2:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = journal.read_bytes().count(b"\n")
    assert 2 <= done_before < n
    rerun = _run([src, "--out", out, "--model", tiny_ckpt, "--workers", "1", "--no-progress"])
    assert rerun.returncode in (0, 3), rerun.stderr[-3000:]
    df = _results(out)
    per_file = df.groupby("file").size()
    # exactly once: a failed file is one row; a found leg is one row per leg, so compare
    # each file's rows with its JSON
    assert sorted(per_file.index) == sorted(str(p) for p in src.iterdir())
    for f, count in per_file.items():
        from legalign.pipeline.outputs.image_json import output_stem

        d = json.loads((out / "images" / f"{output_stem(f)}.json").read_text())
        assert count == max(1, len(d["legs"]))
    keys = [file_key(r["file"]) for r in Journal(out).records()]
    assert len(keys) == len(set(keys)) == n  # nothing processed twice
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped_already_done"] >= 2 and s["files_total"] == n
    leftovers = [p for p in out.rglob(".*tmp*")]
    assert leftovers == []


def test_exit_codes(tmp_path, tiny_ckpt, capsys):
    from legalign.pipeline.cli import main

    def run(*args):
        code = main(["run", *map(str, args)])
        return code, capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run(empty, "--out", tmp_path / "o1", "--model", tiny_ckpt, "--no-progress")
    assert code == 2 and "no input files found" in err
    code, err = run(empty, "--out", tmp_path / "o2", "--model", tmp_path / "nope.pt")
    assert code == 2 and "checkpoint not found" in err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("landmarks:\n  low_confidence: 2.0\n")
    code, err = run(empty, "--out", tmp_path / "o3", "--model", tiny_ckpt, "--config", bad_cfg)
    assert code == 2 and "low_confidence" in err
    with pytest.raises(SystemExit) as exc:  # argparse: a negative --spacing
        run(empty, "--out", tmp_path / "o4", "--spacing", "-1")
    assert exc.value.code == 2


@pytest.mark.slow
def test_huge_and_missing_spacing_are_recorded_failures(tmp_path, tiny_ckpt):
    import cv2

    dcm = tmp_path / "big.dcm"
    _write_film(dcm, 300)
    png = tmp_path / "tiny.png"
    cv2.imwrite(str(png), (np.arange(400, dtype=np.uint16).reshape(20, 20) * 100))
    out = tmp_path / "out"
    proc = _run(
        [
            dcm,
            png,
            "--out",
            out,
            "--model",
            tiny_ckpt,
            "--workers",
            "1",
            "--max-pixels",
            "1000",
            "--require-spacing",
            "--no-progress",
        ]
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    reasons = dict(zip(_results(out).file, _results(out).error_reason, strict=True))
    assert reasons == {str(dcm): "too_large", str(png): "no_spacing"}


def test_engine_outputs_for_a_dicom_film(tmp_path):
    """What the engine writes for one DICOM film with legs: JSON, overlay, SR, SC, all
    inside --out, SR/SC in the source's study with stable UIDs on a re-write."""
    import pydicom

    from legalign.pipeline.api import FilmInfo, load_config
    from legalign.pipeline.assemble import result_from_legs
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.write import finish_outputs
    from legalign.pipeline.landmarks import LegLandmarks
    from legalign.pipeline.outputs.overlay import thumbnail
    from legalign.pipeline.read import read_radiograph

    src = tmp_path / "src" / "film.dcm"
    src.parent.mkdir()
    film = _write_film(src, 7)
    rad = read_radiograph(src)
    legs = [
        LegLandmarks(leg.side, dict(leg.points), {k: 0.95 for k in leg.points}, leg.mirrored)
        for leg in film.legs
    ]
    d = result_from_legs(FilmInfo.from_radiograph(rad), legs, load_config()).to_dict()
    out = tmp_path / "out"
    for sub in ("images", "overlays", "dicom"):
        (out / sub).mkdir(parents=True)
    opts = EngineOptions(out_dir=out)
    header = pydicom.dcmread(src, stop_before_pixels=True)
    d1 = finish_outputs(dict(d), header, thumbnail(rad.pixels, 512), opts)
    assert set(d1["outputs"]) == {"json", "overlay", "sr", "sc"}, d1.get("output_errors")
    for rel in d1["outputs"].values():
        p = (out / rel).resolve()
        assert p.is_file() and out.resolve() in p.parents
    sr = pydicom.dcmread(out / d1["outputs"]["sr"])
    sc = pydicom.dcmread(out / d1["outputs"]["sc"])
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == header.StudyInstanceUID
    assert sr.Modality == "SR" and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    d2 = finish_outputs(dict(d), header, thumbnail(rad.pixels, 512), opts)
    assert pydicom.dcmread(out / d2["outputs"]["sr"]).SOPInstanceUID == sr.SOPInstanceUID
    import shutil

    if shutil.which("dciodvfy") or os.environ.get("CI") == "true":
        for rel in (d1["outputs"]["sr"], d1["outputs"]["sc"]):
            res = subprocess.run(["dciodvfy", str(out / rel)], capture_output=True, text=True)
            errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], rel
    assert np.asarray(sc.pixel_array).ndim == 3


@pytest.mark.slow
def test_file_timeout_kills_and_records_without_stopping_the_run(tmp_path, tiny_ckpt):
    """A file that runs too long (here: any file, with a 0.5 s limit that worker start-up
    alone exceeds) is killed and recorded; the run goes on and ends."""
    films = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    for i, p in enumerate(films):
        _write_film(p, 400 + i)
    out = tmp_path / "out"
    t0 = time.time()
    proc = _run(
        [
            *films,
            "--out",
            out,
            "--model",
            tiny_ckpt,
            "--workers",
            "1",
            "--file-timeout",
            "0.5",
            "--no-progress",
        ],
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert time.time() - t0 < 110
    df = _results(out)
    assert sorted(df.file) == sorted(map(str, films))
    assert set(df.error_reason) == {"timeout"}
    assert all("--file-timeout" in e for e in df.error)


def test_worker_start_up_failure_is_not_a_file_failure(tmp_path):
    """A worker that cannot start answers every task with its error (the main process
    then stops the run) instead of recording files as failed."""
    from legalign.pipeline.engine import worker
    from legalign.pipeline.engine.options import EngineOptions

    opts = EngineOptions(out_dir=tmp_path, model=str(tmp_path / "missing.pt"))
    try:
        worker.init_pool_worker(opts, "worker")
        res = worker.pool_full(str(tmp_path / "any.dcm"))
        assert res == {
            worker.INIT_ERROR: f"InputError: {tmp_path / 'missing.pt'}: checkpoint not found"
        }
        with pytest.raises(Exception, match="checkpoint not found"):
            worker.WorkerContext.create(opts, networks=True)
    finally:
        worker._POOL.clear()
    assert not (tmp_path / "images").exists()
