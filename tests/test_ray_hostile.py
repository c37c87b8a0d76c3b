"""The Ray engine's share of the hostile-input guarantees, without starting Ray: a read
that runs past --file-timeout becomes a timeout row inside the task, a file whose task
never comes back (its worker died, Ray Data skipped the block) becomes a worker_crashed
row instead of stopping the run, and SIGTERM exits 143 like the local engine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hostile_corpus import write_sequence_bomb  # noqa: E402

pytest.importorskip("ray.data", reason='ray not installed: pip install -e ".[ray]"')


def test_file_time_limit_stops_a_long_read():
    from legalign.pipeline.engine.ray_engine import _file_time_limit, _FileTimeout

    t0 = time.monotonic()
    with pytest.raises(_FileTimeout, match="--file-timeout"):
        with _file_time_limit("/x/a.dcm", 0.5):
            while True:
                sum(range(1000))
    assert time.monotonic() - t0 < 10
    with _file_time_limit("/x/a.dcm", 5.0):  # a quick read is not affected
        pass
    time.sleep(0.3)  # no stray alarm left behind (the timer re-arms until disarmed)


def _busy_in_ctypes_callbacks(seconds: float) -> None:
    """Spend ``seconds`` almost entirely inside ctypes callbacks (as OpenJPEG's stream
    reads are): an exception raised there is printed and swallowed, not propagated."""
    import ctypes

    libc = ctypes.CDLL(None)
    cmp_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    calls = 0

    def cmp(a, b):  # noqa: ARG001
        nonlocal calls
        calls += 1
        t = time.monotonic()
        while time.monotonic() - t < 0.02:
            pass
        return 0

    arr = (ctypes.c_int * 8)()  # about 20 comparisons: 0.4 s per sort
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        libc.qsort(arr, len(arr), ctypes.sizeof(ctypes.c_int), cmp_type(cmp))


# the alarm's exceptions swallowed inside the callbacks are what these tests reproduce
SWALLOWED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@SWALLOWED
def test_file_time_limit_holds_when_the_alarm_lands_in_a_ctypes_callback():
    """The diagnosis of the 'pending instead of done' row: the one-shot alarm's exception,
    raised inside a ctypes callback, was swallowed and the read ran to its end.  Now the
    timer re-arms and a block that completes after the alarm still times out."""
    from legalign.pipeline.engine.ray_engine import _file_time_limit, _FileTimeout

    t0 = time.monotonic()
    with pytest.raises(_FileTimeout, match="--file-timeout"):
        with _file_time_limit("/x/a.dcm", 0.2):
            _busy_in_ctypes_callbacks(1.5)
    assert time.monotonic() - t0 < 5.0


@pytest.mark.slow
@SWALLOWED
@pytest.mark.parametrize("slow", ["header bomb", "decoder callbacks"])
def test_prepare_stage_turns_a_slow_read_into_a_timeout_row(tmp_path, monkeypatch, slow):
    from tiny_checkpoint import tiny_spec_dict

    from legalign.models.spec import LocatorSpec
    from legalign.pipeline.engine import ray_engine
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.worker import WorkerContext
    from legalign.pipeline.engine.write import SUBDIRS

    bomb = write_sequence_bomb(tmp_path / "bomb.dcm")
    out = tmp_path / "out"
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True)
    if slow == "decoder callbacks":
        monkeypatch.setattr(WorkerContext, "read", lambda self, p: _busy_in_ctypes_callbacks(3))
    # the header bomb takes seconds to parse on any machine; 0.2 s is far below that
    opts = EngineOptions(out_dir=out, file_timeout_s=0.2)
    spec = LocatorSpec.from_dict(tiny_spec_dict())
    t0 = time.monotonic()
    try:
        row = ray_engine._stage_prepare({"path": str(bomb)}, opts, "run-1", spec)
    finally:
        ray_engine._CONTEXT.clear()
    assert row["status"] == "done"
    rec = json.loads(row["record"])
    assert rec["error_reason"] == "timeout" and "--file-timeout" in rec["error"]
    assert time.monotonic() - t0 < 20


def test_files_whose_task_never_returned_are_worker_crashed_rows(tmp_path):
    from legalign.pipeline.engine.journal import Journal, file_key
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.ray_engine import RayEngine, RayOptions
    from legalign.pipeline.engine.write import SUBDIRS

    out = tmp_path / "out"
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True)
    engine = RayEngine([], EngineOptions(out_dir=out), RayOptions())
    engine._record_lost(["/x/a.dcm", "/x/b.dcm"], {file_key("/x/a.dcm")})
    engine.book.journal.close()
    recs = list(Journal(out).records())
    assert [(r["file"], r["error_reason"]) for r in recs] == [("/x/b.dcm", "worker_crashed")]
    assert engine.summary.files_failed == 0 and engine.book.failed_this_run == 1


def test_ray_errored_blocks_are_skipped_not_fatal():
    import ray.data

    from legalign.pipeline.engine.ray_engine import _quiet_ray_data

    ctx = ray.data.DataContext.get_current()
    old = ctx.max_errored_blocks
    try:
        _quiet_ray_data()
        assert ctx.max_errored_blocks == -1
    finally:
        ctx.max_errored_blocks = old
