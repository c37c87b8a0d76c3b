"""`legalign run` against its own surroundings: no orphan processes or shared memory
after kill -9 / SIGTERM of the main process, SIGTERM handled like Ctrl-C (exit 143),
the output-folder lock, someone else's --out, read-only / under-a-file / full --out,
start-up cleanup limited to the run's own files, resume identity by resolved path (and
the SOP Instance UID for DICOM).

End-to-end runs use a tiny random checkpoint: mechanics only, never accuracy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# subprocess runs that start worker pools and kill them: the slow step of .ci/run
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from tiny_checkpoint import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    from legalign.training.synth.dicom_archive import DicomOptions, write_film_dicom
    from legalign.training.synth.film import generate_film

    root = tmp_path_factory.mktemp("films")
    for i in range(6):
        write_film_dicom(
            root / f"f{i}.dcm",
            generate_film(500 + i, size="small"),
            DicomOptions(),
            index=i,
            seed=500 + i,
        )
    return root


def _cmd(*args):
    return [sys.executable, "-m", "legalign.pipeline.cli", "run", *map(str, args)]


def _run(*args, timeout=300, **kw):
    return subprocess.run(
        _cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw
    )


def _children() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                out[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pid: int) -> set[int]:
    tree = _children()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, parent in tree.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _start_and_wait_busy(films, out, tiny_ckpt, *extra, until=None):
    """Start a run; return once its worker processes are up (and ``until()`` holds)."""
    proc = subprocess.Popen(
        _cmd(films, "--out", out, "--model", tiny_ckpt, "--workers", "2", "--no-progress", *extra),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # forkserver, resource tracker and two workers
    ok = _wait_for(
        lambda: len(_descendants(proc.pid)) >= 4 and (until is None or until()), timeout=240
    )
    if not ok:
        proc.kill()
        proc.communicate()
        pytest.fail("the run did not start its workers")
    return proc, _descendants(proc.pid)


@pytest.mark.parametrize("mode", ["worker", "main"])
def test_kill9_of_the_main_process_leaves_no_orphans(films, tmp_path, tiny_ckpt, mode):
    from legalign.pipeline.engine.lifecycle import shm_prefix

    out = tmp_path / "out"
    prefix = shm_prefix(out)

    def films_in_shared_memory():
        return mode == "worker" or any(n.startswith(prefix) for n in os.listdir("/dev/shm"))

    proc, tree = _start_and_wait_busy(
        films, out, tiny_ckpt, "--mode", mode, until=films_in_shared_memory
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    t0 = time.monotonic()
    gone = _wait_for(lambda: not any(_alive(p) for p in tree), timeout=5.0)
    survivors = [p for p in tree if _alive(p)]
    for p in survivors:  # do not leave them to the next test
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    assert gone, f"still alive {time.monotonic() - t0:.1f} s after kill -9: {survivors}"
    assert _wait_for(lambda: not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)], 5.0)
    # and a re-run resumes and finishes
    again = _run(films, "--out", out, "--model", tiny_ckpt, "--workers", "1", "--no-progress")
    assert again.returncode in (0, 3), again.stderr[-2000:]


def test_sigterm_is_handled_like_ctrl_c(films, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    proc, tree = _start_and_wait_busy(films, out, tiny_ckpt)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert (out / "results.parquet").is_file() and (out / "summary.json").is_file()
    assert "Traceback" not in err
    assert _wait_for(lambda: not any(_alive(p) for p in tree), timeout=5.0)


def test_second_run_on_a_locked_out_fails_at_once(films, tmp_path, tiny_ckpt):
    from legalign.pipeline.engine.lifecycle import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out)
    lock.acquire()
    try:
        t0 = time.monotonic()
        proc = _run(films, "--out", out, "--model", tiny_ckpt, "--no-progress")
        assert proc.returncode == 2
        assert "another legalign run is using" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert time.monotonic() - t0 < 60
        assert not (out / "journal.jsonl").exists()
    finally:
        lock.release()


def test_out_holding_someone_elses_files_is_refused(films, tmp_path, tiny_ckpt):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "results.csv").write_text("their,own\n1,2\n")
    (theirs / "summary.json").write_text("{}")
    proc = _run(films, "--out", theirs, "--model", tiny_ckpt, "--no-progress")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (theirs / "results.csv").read_text() == "their,own\n1,2\n"
    # --out equal to the input folder: the films are someone else's files too
    proc = _run(films, "--out", films, "--model", tiny_ckpt, "--no-progress")
    assert proc.returncode == 2 and not (films / "results.csv").exists()
    proc = _run(
        films / "f0.dcm", "--out", theirs, "--model", tiny_ckpt, "--no-progress", "--overwrite"
    )
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    assert "their,own" not in (theirs / "results.csv").read_text()


def test_out_inside_the_input_is_never_walked(films, tmp_path, tiny_ckpt):
    import shutil

    import pandas as pd

    src = tmp_path / "in"
    shutil.copytree(films, src)
    out = src / "results"
    for _ in range(2):
        proc = _run(src, "--out", out, "--model", tiny_ckpt, "--no-progress", "--workers", "1")
        assert proc.returncode in (0, 3), proc.stderr[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert all("/results/" not in f for f in df.file)
    # a symbolic link to the output folder, and a copy of it (marker inside), are skipped
    (src / "link").symlink_to(out, target_is_directory=True)
    shutil.copytree(out, tmp_path / "in" / "old_results")
    proc = _run(src, "--out", out, "--model", tiny_ckpt, "--no-progress", "--workers", "1")
    df = pd.read_parquet(out / "results.parquet")
    assert df.file.nunique() == 6


def test_startup_cleanup_touches_only_its_own_temporaries(films, tmp_path, tiny_ckpt):
    from legalign.pipeline.engine.inputs import OUTPUT_MARKER

    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text("")
    theirs = out / ".editor.tmp123"
    theirs.write_text("user's")
    ours = out / "images" / ".x.json.legalign-tmp-4242"
    ours.write_text("{")
    proc = _run(films / "f0.dcm", "--out", out, "--model", tiny_ckpt, "--no-progress")
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    assert theirs.read_text() == "user's"
    assert not ours.exists()


def test_resume_identity_is_the_resolved_file(films, tmp_path, tiny_ckpt):
    import pandas as pd

    out = tmp_path / "out"
    rel = os.path.relpath(films, REPO)
    first = _run(rel, "--out", out, "--model", tiny_ckpt, "--no-progress", "--workers", "1")
    assert first.returncode in (0, 3), first.stderr[-2000:]
    (tmp_path / "alias").symlink_to(films, target_is_directory=True)
    for spelling in (films, tmp_path / "alias"):
        proc = _run(spelling, "--out", out, "--model", tiny_ckpt, "--no-progress")
        assert proc.returncode in (0, 3), proc.stderr[-2000:]
        assert "0 processed, 6 already done" in proc.stdout
    df = pd.read_parquet(out / "results.parquet")
    assert df.file.nunique() == 6


def test_resume_identity_includes_the_sop_instance_uid(films, tmp_path, tiny_ckpt):
    """Two names for one instance (same UID) are two files, each done once; a file
    rewritten in place with a new UID, size and modification time kept, is processed
    again and its row replaced."""
    import shutil

    import pandas as pd
    import pydicom
    from pydicom.uid import generate_uid

    from legalign.pipeline.engine.journal import read_sop_instance_uid

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy2(films / "f0.dcm", src / "a.dcm")
    shutil.copy2(films / "f0.dcm", src / "copy_of_a.dcm")  # same instance, second name
    shutil.copy2(films / "f1.dcm", src / "b.dcm")
    out = tmp_path / "out"
    args = ("--out", out, "--model", tiny_ckpt, "--no-progress", "--workers", "1")
    first = _run(src, *args)
    assert first.returncode in (0, 3), first.stderr[-2000:]
    assert "3 processed" in first.stdout
    again = _run(src, *args)
    assert "0 processed, 3 already done" in again.stdout, again.stdout[-2000:]

    # b.dcm rewritten with a new SOP Instance UID of the same length: same size; the
    # modification time put back (as cp -p, rsync -t or an unpacked archive do)
    b = src / "b.dcm"
    st = b.stat()
    ds = pydicom.dcmread(b)
    old_uid = str(ds.SOPInstanceUID)
    new_uid = generate_uid(entropy_srcs=["rewritten"])[: len(old_uid)].rstrip(".")
    new_uid += "1" * (len(old_uid) - len(new_uid))
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    ds.save_as(b, enforce_file_format=True)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert b.stat().st_size == st.st_size and b.stat().st_mtime_ns == st.st_mtime_ns
    assert read_sop_instance_uid(str(b)) == new_uid != old_uid

    third = _run(src, *args)
    assert third.returncode in (0, 3), third.stderr[-2000:]
    assert "1 processed, 2 already done" in third.stdout, third.stdout[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert sorted(os.path.basename(f) for f in df.file) == ["a.dcm", "b.dcm", "copy_of_a.dcm"]
    assert df.set_index(df.file.map(os.path.basename)).loc["b.dcm", "sop_instance_uid"] == new_uid
    uids = df.set_index(df.file.map(os.path.basename)).sop_instance_uid
    assert uids["a.dcm"] == uids["copy_of_a.dcm"]


def test_out_under_a_file_is_a_one_line_usage_error(films, tmp_path, tiny_ckpt):
    (tmp_path / "afile").write_text("x")
    proc = _run(films, "--out", tmp_path / "afile" / "out", "--model", tiny_ckpt)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "afile" in proc.stderr
    assert "Traceback" not in proc.stderr


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()[:100]})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_out_is_a_one_line_usage_error(films, tmp_path, tiny_ckpt):
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        proc = _run(films, "--out", ro / "out", "--model", tiny_ckpt)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and str(ro) in proc.stderr
        assert "Read-only" in proc.stderr


def test_full_out_stops_with_the_failing_file_named(films, tmp_path, tiny_ckpt):
    with _tmpfs(tmp_path / "small", "size=400k") as small:
        proc = _run(
            films, "--out", small / "out", "--model", tiny_ckpt, "--no-progress", "--workers", "1"
        )
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        line = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in line and str(small / "out") in line
        assert "Traceback" not in proc.stderr
