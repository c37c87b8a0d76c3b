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
    time.sleep(0.01)  # no stray alarm left behind


@pytest.mark.xfail(
    reason="open: the row stays 'pending' instead of 'done' on a clean clone; not yet diagnosed",
    strict=False,
)
@pytest.mark.slow
def test_prepare_stage_turns_a_slow_header_into_a_timeout_row(tmp_path):
    from tiny_checkpoint import tiny_spec_dict

    from legalign.models.spec import LocatorSpec
    from legalign.pipeline.engine import ray_engine
    from legalign.pipeline.engine.options import EngineOptions
    from legalign.pipeline.engine.write import SUBDIRS

    bomb = write_sequence_bomb(tmp_path / "bomb.dcm")
    out = tmp_path / "out"
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True)
    opts = EngineOptions(out_dir=out, file_timeout_s=1.0)
    spec = LocatorSpec.from_dict(tiny_spec_dict())
    try:
        row = ray_engine._stage_prepare({"path": str(bomb)}, opts, "run-1", spec)
    finally:
        ray_engine._CONTEXT.clear()
    assert row["status"] == "done"
    rec = json.loads(row["record"])
    assert rec["error_reason"] == "timeout" and "--file-timeout" in rec["error"]


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
