"""The run journal: one JSON line per finished file, appended and fsync'd.

A file is *done* exactly when its line is durable.  A run killed at any moment (SIGKILL
included) leaves at worst a partial last line, which the next run cuts off before it
appends.  The results table is always rebuilt from the journal, keeping the last record
per file, so every file appears exactly once.

Memory: resuming needs the set of finished files; it is kept as 8-byte path digests
(about 60-70 bytes per file in a Python set), not as path strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"


def file_key(path: str) -> int:
    """Identity of an input file in the journal: a digest of its absolute path."""
    absolute = os.path.abspath(path)
    return int.from_bytes(
        hashlib.blake2b(absolute.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
        "little",
    )


class Journal:
    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME
        self._fh: Any = None

    def repair(self) -> int:
        """Cut a partial last line (a run killed mid-append).  Returns bytes removed."""
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        if size == 0:
            return 0
        with open(self.path, "rb+") as fh:
            # find the last newline from the end, reading backwards in blocks
            pos = size
            block = 65536
            last_nl = -1
            while pos > 0 and last_nl < 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                idx = chunk.rfind(b"\n")
                if idx >= 0:
                    last_nl = start + idx
                pos = start
            keep = last_nl + 1  # 0 when there is no complete line at all
            if keep < size:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
            return size - keep

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete, valid record, in order (an invalid line is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # partial tail (a concurrent or killed writer)
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "file" in rec:
                    yield rec

    def done_keys(self, *, include_failed: bool = True) -> set[int]:
        """Keys of the files whose last record counts as finished."""
        done: set[int] = set()
        for rec in self.records():
            key = file_key(rec["file"])
            if include_failed or rec.get("status") != "failed":
                done.add(key)
            else:
                done.discard(key)
        return done

    def latest_records(self) -> Iterator[dict[str, Any]]:
        """One record per file, the last one written (two passes, streamed)."""
        last: dict[int, int] = {}
        for i, rec in enumerate(self.records()):
            last[file_key(rec["file"])] = i
        for i, rec in enumerate(self.records()):
            if last.get(file_key(rec["file"])) == i:
                yield rec

    def append(self, record: dict[str, Any], line: str | None = None) -> None:
        """Append one record durably (write, flush, fsync)."""
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if line is None:
            line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
