"""The driver's books for one ``legalign run`` (both engines): the output folder (its
lock, marker and clean-up), the journal (exactly-once, resume), the progress bar, the
run summary and, at the end, the results table rebuilt from the journal.

An output folder that cannot be written any more (full, read-only, removed) stops the
run with :class:`OutputFailed`: every further file would fail the same way; what is
journalled so far is kept and a re-run resumes."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from legalign.pipeline.engine.inputs import OUTPUT_MARKER, expand_inputs
from legalign.pipeline.engine.journal import Finished, Journal, file_key
from legalign.pipeline.engine.lifecycle import (
    OutputLock,
    clean_stale_shm,
    is_own_temp,
    out_error,
    shm_prefix,
)
from legalign.pipeline.engine.options import EngineOptions
from legalign.pipeline.engine.write import SUBDIRS
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.outputs.image_json import atomic_write_bytes, dumps
from legalign.pipeline.outputs.summary import RunSummary
from legalign.pipeline.outputs.table import write_tables

# errors writing into --out that stop the run (every further file would fail the same way)
OUTPUT_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "EIO")
    if hasattr(errno, n)
)


class OutputFailed(LegalignError):
    """The output folder cannot be written any more (full, read-only, removed)."""

    @classmethod
    def from_os_error(cls, exc: OSError, out: Path) -> OutputFailed:
        where = exc.filename or out
        return cls(
            f"{os.fspath(where)}: cannot write ({exc.strerror or type(exc).__name__}); "
            "the run stopped, results so far are kept: free the space and re-run to resume"
        )


class RunBook:
    """Journal, summary and progress of one run over ``inputs`` into ``opts.out_dir``."""

    def __init__(
        self,
        inputs: list[str],
        opts: EngineOptions,
        *,
        source: Iterable[str | dict[str, Any]] | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``source`` replaces the expansion of ``inputs``: an iterable (it may block, e.g.
        on a download) of file paths, or of finished failure rows (dicts, recorded as they
        come), consumed lazily.  ``on_record`` is called with each row once it is durable
        in the journal (e.g. to send its outputs somewhere)."""
        self.inputs = list(inputs)
        self.source = source
        self.on_record = on_record
        self.opts = opts
        self.out = Path(opts.out_dir)
        self.journal = Journal(self.out)
        self.summary = RunSummary()
        self.bar: Any = None
        self.processed = 0
        self.failed_this_run = 0
        self.lock: OutputLock | None = None

    def prepare_out(self) -> Finished:
        """Create --out (one-line usage error when it cannot be written), take its lock,
        mark it as an output folder, remove what a killed run on it left (our own
        temporary files and shared-memory segments, a partial journal line); returns the
        keys of the files already done (failed ones too unless retried)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise out_error(self.out, exc, "cannot create the output folder") from None
        self.lock = OutputLock(self.out)
        self.lock.acquire()
        try:
            marker = self.out / OUTPUT_MARKER
            if not marker.exists():  # the folder walk never takes this folder as input
                marker.write_text("legalign run output folder: never read as input\n")
            for sub in SUBDIRS:
                (self.out / sub).mkdir(exist_ok=True)
            # temporary files of a killed run (atomic writes never completed)
            for folder in (self.out, *(self.out / s for s in SUBDIRS)):
                for entry in os.scandir(folder):
                    if is_own_temp(entry.name) and entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
            self.journal.repair()
        except OSError as exc:
            self.release()
            raise out_error(
                exc.filename or self.out, exc, "cannot write to the output folder"
            ) from None
        clean_stale_shm(shm_prefix(self.out))
        return self.journal.finished(include_failed=not self.opts.retry_failed)

    def release(self) -> None:
        """Drop the output folder's lock (the end of the run)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def unfinished_inputs(self, done: Finished) -> Iterator[tuple[str, int]]:
        """(path, key) of each input not finished yet, once each; counts what it skips.
        A finished DICOM file is checked against the SOP Instance UID it was processed
        as (``Finished.holds``: its header read up to the UID)."""
        seen: set[int] = set()
        items = self.source if self.source is not None else self._expanded_inputs()
        for path in items:
            if isinstance(path, dict):  # a row the source already finished (a failure)
                self.record(path)
                continue
            key = file_key(path)
            if done.holds(path, key):
                self.summary.skipped_done += 1
                continue
            if key in seen:
                self.summary.skipped_duplicate += 1
                continue
            seen.add(key)
            yield path, key

    def _expanded_inputs(self) -> Iterator[str]:
        return expand_inputs(self.inputs, exclude=[self.out])

    def record(self, d: dict[str, Any]) -> None:
        """Journal one finished file (durable), then count it."""
        d.setdefault("input_key", file_key(d["file"]))
        try:
            self.journal.append(d, dumps(d, indent=None))
        except OSError as exc:
            raise OutputFailed.from_os_error(exc, self.out) from None
        self.processed += 1
        self.summary.add_processed(d)
        for stage, secs in (d.get("timings_s") or {}).items():
            self.summary.add_timing(stage, secs)
        if d.get("status") == "failed":
            self.failed_this_run += 1
        if self.on_record is not None:
            self.on_record(d)
        if self.bar is not None:
            self.bar.update(1)
            if self.failed_this_run:
                self.bar.set_postfix(failed=self.failed_this_run, refresh=False)

    def close(self, elapsed_s: float) -> None:
        """Close the journal and the bar; rebuild the table and the summary from the
        journal.  ``OutputFailed`` when --out cannot be written (after trying it all)."""
        failed: OutputFailed | None = None
        try:
            self.journal.close()
        except OSError as exc:
            failed = OutputFailed.from_os_error(exc, self.out)
        if self.bar is not None:
            self.bar.close()
        try:
            self._write_results(elapsed_s)
        except OSError as exc:
            failed = failed or OutputFailed.from_os_error(exc, self.out)
        if failed is not None:
            raise failed

    def _write_results(self, elapsed_s: float) -> None:
        self.summary.elapsed_s = elapsed_s
        self.summary.processed_this_run = self.processed
        stats = self.summary

        def counted() -> Iterator[dict[str, Any]]:
            for rec in self.journal.latest_records():
                stats.add_result(rec)
                yield rec

        stats.rows = write_tables(counted(), self.out)
        atomic_write_bytes(
            self.out / "summary.json",
            (json.dumps(stats.to_dict(), indent=2) + "\n").encode("utf-8"),
        )

    def start_progress(self, n_done: int, total: int | None = None) -> None:
        """A progress bar on stderr; without ``total``, a second lazy walk of the inputs
        counts them for the ETA."""
        if not self.opts.progress:
            return
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            unit="film",
            desc="legalign run",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.5 if tty else 30.0,
        )
        if total is not None or self.source is not None:
            return  # a caller's source is not walked twice
        bar, inputs, out = self.bar, self.inputs, self.out

        def count() -> None:
            # total for the ETA: a second lazy walk that only counts (no listing kept)
            try:
                n = sum(1 for _ in expand_inputs(inputs, exclude=[out]))
                bar.total = max(0, n - n_done)
                bar.refresh()
            except Exception:  # noqa: BLE001 - the ETA is a nicety
                pass

        threading.Thread(target=count, daemon=True).start()
