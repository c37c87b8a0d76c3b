"""The driver's books for one ``legalign run`` (both engines): the output folder, the
journal (exactly-once, resume), the progress bar, the run summary and, at the end, the
results table rebuilt from the journal."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from legalign.pipeline.engine.inputs import expand_inputs
from legalign.pipeline.engine.journal import Journal, file_key
from legalign.pipeline.engine.options import EngineOptions
from legalign.pipeline.engine.write import SUBDIRS
from legalign.pipeline.outputs.image_json import atomic_write_bytes, dumps
from legalign.pipeline.outputs.summary import RunSummary
from legalign.pipeline.outputs.table import write_tables


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

    def prepare_out(self) -> set[int]:
        """Create the output folder, delete a killed run's temporaries, repair the journal;
        returns the keys of the files already done (failed ones too unless retried)."""
        self.out.mkdir(parents=True, exist_ok=True)
        for sub in SUBDIRS:
            (self.out / sub).mkdir(exist_ok=True)
        # temporary files of a killed run (atomic writes never completed)
        for folder in (self.out, *(self.out / s for s in SUBDIRS)):
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file():
                    os.unlink(entry.path)
        self.journal.repair()
        return self.journal.done_keys(include_failed=not self.opts.retry_failed)

    def unfinished_inputs(self, done: set[int]) -> Iterator[tuple[str, int]]:
        """(path, key) of each input not finished yet, once each; counts what it skips."""
        seen: set[int] = set()
        items = self.source if self.source is not None else self._expanded_inputs()
        for path in items:
            if isinstance(path, dict):  # a row the source already finished (a failure)
                self.record(path)
                continue
            key = file_key(path)
            if key in done:
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
        self.journal.append(d, dumps(d, indent=None))
        self.processed += 1
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
        """Close the journal and the bar; rebuild the table and the summary from the journal."""
        self.journal.close()
        if self.bar is not None:
            self.bar.close()
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
