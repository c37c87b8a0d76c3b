"""The hostile-input suite: a generated corpus (tests/hostile_corpus.py, no stored binaries)
of malformed, hostile and special inputs run through ONE ``legalign run``; every case is
checked against its expected row, message, outputs and warnings, and the outputs (table,
summary, terminal, SR / SC) against the safety rules (docs/results-schema.md)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hostile_corpus import (  # noqa: E402
    ABSENT,
    USABLE,
    build_corpus,
    good_dataset,
    write_sequence_bomb,
)

from legalign.pipeline.engine.journal import Journal  # noqa: E402
from legalign.pipeline.outputs.dicom_header import TYPE2_COPIED, value_problem  # noqa: E402
from legalign.pipeline.safe_text import printable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_PIXELS = 2_000_000  # small films are ~0.45 Mpx; bombs and huge declarations exceed it


def _cli(*args, timeout=600, **kw):
    cmd = [sys.executable, "-m", "legalign.pipeline.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    """The corpus, built once per session, and one run over all of it."""
    base = tmp_path_factory.mktemp("hostile")
    corpus = build_corpus(base / "in")
    out = base / "out"
    proc = _cli(
        "run",
        base / "in",
        *corpus.extra_inputs,
        "--out",
        out,
        "--workers",
        "2",
        "--no-progress",
        "--max-pixels",
        MAX_PIXELS,
    )
    records = {rec["file"]: rec for rec in Journal(out).latest_records()}
    return corpus, proc, out, records


@pytest.mark.slow
def test_corpus_is_large_and_covers_the_reasons(hostile):
    corpus, *_ = hostile
    assert len(corpus.cases) >= 60
    schema = (REPO / "docs" / "results-schema.md").read_text()
    section = schema.split("### Failure reasons")[1].split("\n## ")[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert "unreadable" in documented and "timeout" in documented
    produced = {c.expect for c in corpus.cases} - {USABLE, ABSENT}
    # the three the engine produces (timeout, worker_crashed, internal_error) have their
    # own hostile cases below; every other documented reason has a corpus case
    missing = set(documented) - produced - {"timeout", "worker_crashed", "internal_error"}
    assert not missing, missing


@pytest.mark.slow
def test_run_ends_with_exit_3_and_no_traceback(hostile):
    _, proc, out, _ = hostile
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert (out / "results.parquet").is_file() and (out / "summary.json").is_file()


@pytest.mark.slow
def test_every_case_becomes_its_expected_row(hostile):
    corpus, _, out, records = hostile
    problems = []
    for case in corpus.cases:
        rec = records.get(case.path)
        label = f"{case.name} ({printable(case.path)})"
        if case.expect == ABSENT:
            if rec is not None:
                problems.append(f"{label}: expected no row, got {rec.get('status')}")
            continue
        if rec is None:
            problems.append(f"{label}: no row")
            continue
        status, reason = rec.get("status"), rec.get("error_reason")
        errors = rec.get("output_errors") or {}
        warnings = rec.get("warnings") or []
        if case.expect == USABLE:
            if status == "failed":
                problems.append(f"{label}: failed ({reason}: {rec.get('error')})")
                continue
            for kind in case.outputs:
                rel = (rec.get("outputs") or {}).get(kind)
                if not rel or not (out / rel).is_file():
                    problems.append(f"{label}: no {kind} output ({errors.get(kind)})")
            if case.outputs and errors:
                problems.append(f"{label}: output errors {errors}")
            for kind in case.output_errors:
                if kind not in errors:
                    problems.append(f"{label}: {kind} should be reported as not written")
            if case.output_errors and status != "partial":
                problems.append(f"{label}: status {status} with outputs missing")
            if case.warns:
                said = " ".join(warnings) + " " + " ".join(errors.values())
                if case.warns not in said:
                    problems.append(f"{label}: no warning about {case.warns!r}: {said!r}")
        else:
            if status != "failed" or reason != case.expect:
                problems.append(
                    f"{label}: expected {case.expect}, got {status}/{reason}: {rec.get('error')}"
                )
                continue
            err = rec.get("error") or ""
            if "\n" in err or "\r" in err:
                problems.append(f"{label}: error is not one line: {err!r}")
            name = printable(os.path.basename(case.path))
            if name not in err:
                problems.append(f"{label}: error does not name the file: {err!r}")
            if "Traceback" in err:
                problems.append(f"{label}: traceback in the error")
    assert not problems, "\n".join(problems)


def test_each_input_is_exactly_one_film_in_the_table(hostile):
    import pandas as pd

    corpus, _, out, records = hostile
    df = pd.read_parquet(out / "results.parquet")
    expected = {printable(c.path) for c in corpus.cases if c.expect != ABSENT}
    assert set(df.file) == expected
    per_file = df.groupby("file").size()
    failed = {printable(c.path) for c in corpus.cases if c.expect not in (USABLE, ABSENT)}
    assert all(per_file[f] == 1 for f in failed if f in per_file.index and f != "no_legs_found")


def test_csv_cells_are_neutralised_and_one_line(hostile):
    corpus, _, out, _ = hostile
    text = (out / "results.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    header = rows[0]
    assert all(len(r) == len(header) for r in rows)  # no cell broken over lines
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text)
    string_cols = {
        "file",
        "error",
        "warnings",
        "output_errors",
        "sop_instance_uid",
        "study_instance_uid",
        "plan_reason",
        "null_reasons",
    }
    idx = [header.index(c) for c in string_cols]
    for r in rows[1:]:
        for i in idx:
            assert not r[i].startswith(("=", "+", "-", "@", "\t", "\r")), (header[i], r[i])
    files = {r[header.index("file")] for r in rows[1:]}
    formula = [c for c in corpus.cases if "HYPERLINK" in c.path][0]
    assert "'" + printable(formula.path) not in files  # paths are absolute: start with /
    assert printable(formula.path) in files
    uids = [r[header.index("study_instance_uid")] for r in rows[1:]]
    assert '\'=HYPERLINK("http://x.example","y")' in uids  # the formula UID, as text


def test_numbers_are_rounded_and_disclaimer_everywhere(hostile):
    import pyarrow.parquet as pq

    from legalign.pipeline.api import DISCLAIMER

    _, proc, out, records = hostile
    df = pq.read_table(out / "results.parquet").to_pandas()
    for col in ("hka_deg", "knee_centre_x", "spacing_mm", "femoral_head_conf"):
        values = df[col].dropna()
        digits = 6 if col == "spacing_mm" else 3 if col.endswith("_conf") else 2
        assert ((values * 10**digits).round() - values * 10**digits).abs().max() < 1e-6, col
    assert set(df.disclaimer) == {DISCLAIMER}
    assert b"legalign.disclaimer" in pq.read_schema(out / "results.parquet").metadata
    assert DISCLAIMER in (out / "results.csv").read_text()
    assert json.loads((out / "summary.json").read_text())["disclaimer"] == DISCLAIMER
    assert DISCLAIMER in proc.stdout
    one = next(r for r in records.values() if r.get("status") != "failed")
    assert json.loads((out / one["outputs"]["json"]).read_text())["disclaimer"]


def test_terminal_lists_reasons_with_names_and_angles_only(hostile):
    _, proc, _, records = hostile
    text = proc.stdout
    failed = [r for r in records.values() if r.get("status") == "failed"]
    for reason in {r["error_reason"] for r in failed}:
        line = next((ln for ln in text.splitlines() if ln.startswith(f"  {reason}: ")), None)
        assert line is not None, (reason, text)
        assert 1 <= line.count("/") and len(line) < 5 * 600
    assert "angles only" in text
    assert "output not written" in text  # the SR / SC refused for invalid source UIDs


def test_sr_and_sc_from_minimal_and_hostile_headers_validate(hostile):
    import pydicom

    corpus, _, out, records = hostile
    exe = shutil.which("dciodvfy")
    if exe is None and os.environ.get("CI") != "true":
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    names = (
        "deidentified.dcm",
        "no_type2.dcm",
        "long_patient_id.dcm",
        "ctrl_name.dcm",
        "no_birthdate.dcm",
        "charset.dcm",
        "deflated.dcm",
    )
    checked = 0
    for case in corpus.cases:
        if os.path.basename(case.path) not in names:
            continue
        rec = records[case.path]
        for kind in ("sr", "sc"):
            path = out / rec["outputs"][kind]
            res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
            errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], (case.name, kind, errors)
            ds = pydicom.dcmread(path)
            # every copied value passes the rules the product copies by (its VR's
            # characters and length, no control characters): dicom_header.value_problem
            bad = {
                e.keyword: value_problem(e)
                for e in ds
                if e.VR != "SQ" and value_problem(e) is not None
            }
            assert bad == {}, (case.name, kind, bad)
            for keyword in TYPE2_COPIED:  # Type 2: present, empty when the source lacks it
                assert keyword in ds, (case.name, kind, keyword)
            checked += 1
    assert checked == 2 * len(names)


# ---------------------------------------------------------------- the engine's own reasons
def _descendants(pid: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process below ``pid``."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
                procs[int(entry)] = (ppid, cmd)
            except (OSError, IndexError, ValueError):
                pass
    found: dict[int, tuple[int, str]] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == p and child not in found:
                found[child] = (ppid, cmd)
                todo.append(child)
    return found


def _workers(main_pid: int) -> set[int]:
    tree = _descendants(main_pid)
    servers = {p for p, (pp, cmd) in tree.items() if pp == main_pid and "forkserver" in cmd}
    return {p for p, (pp, _) in tree.items() if pp in servers}


@pytest.fixture(scope="module")
def engine_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_cases")
    bomb = write_sequence_bomb(root / "a_sequence_bomb.dcm")
    ds, _ = good_dataset(seed=4)
    good = root / "b_good.dcm"
    ds.save_as(good, enforce_file_format=True)
    return bomb, good


def _records(out):
    return {r["file"]: r for r in Journal(out).latest_records()}


@pytest.mark.slow
def test_a_header_that_never_finishes_parsing_is_a_timeout_row(engine_cases, tmp_path):
    bomb, good = engine_cases
    out = tmp_path / "out"
    proc = _cli(
        "run",
        bomb,
        good,
        "--out",
        out,
        "--workers",
        "1",
        "--no-progress",
        "--file-timeout",
        "3",
        timeout=600,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    recs = _records(out)
    assert recs[str(bomb)]["error_reason"] == "timeout"
    assert "--file-timeout" in recs[str(bomb)]["error"]
    assert str(good) in recs  # the run went on
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_file_that_keeps_killing_its_worker_is_a_worker_crashed_row(engine_cases, tmp_path):
    """A decoder crash ends the worker process the way SIGKILL does: the file is retried
    alone, and when its worker dies again it becomes a worker_crashed row."""
    import signal
    import time

    bomb, good = engine_cases
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "legalign.pipeline.cli",
            "run",
            str(bomb),
            str(good),
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
            "--file-timeout",
            "600",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def has_open(pid: int, path: Path) -> bool:
        try:
            return any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == str(path)
                for fd in os.listdir(f"/proc/{pid}/fd")
            )
        except OSError:
            return False

    killed: set[int] = set()
    deadline = time.monotonic() + 500
    while len(killed) < 2 and time.monotonic() < deadline and proc.poll() is None:
        for w in _workers(proc.pid) - killed:
            if has_open(w, bomb):  # the worker is parsing the bomb: "crash" it there
                os.kill(w, signal.SIGKILL)
                killed.add(w)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=600)
    assert len(killed) == 2, err[-3000:]
    assert proc.returncode == 3, err[-3000:]
    recs = _records(out)
    assert recs[str(bomb)]["error_reason"] == "worker_crashed", recs[str(bomb)]
    assert str(good) in recs  # the run went on
    assert "Traceback" not in err


def test_an_unexpected_exception_is_an_internal_error_row(tmp_path, monkeypatch):
    """A bug (here: the locator raising) is recorded as internal_error with its message;
    the file's row is written and nothing stops."""
    from tiny_checkpoint import tiny_checkpoint

    from legalign.pipeline.engine import worker
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.write import SUBDIRS

    ds, _ = good_dataset(seed=6)
    film = tmp_path / "film.dcm"
    ds.save_as(film, enforce_file_format=True)

    out = tmp_path / "out"
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True)
    opts = EngineOptions(out_dir=out, model=str(tiny_checkpoint(tmp_path / "tiny.pt")))
    ctx = worker.WorkerContext.create(opts, networks=True)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the locator")

    monkeypatch.setattr(worker, "locate_films", broken)
    d = ctx.full(str(film))
    assert d["status"] == "failed" and d["error_reason"] == "internal_error"
    assert "ZeroDivisionError: a bug in the locator" in d["error"]
    assert (out / d["outputs"]["json"]).is_file()
