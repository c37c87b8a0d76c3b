"""The run journal: one JSON line per finished file, appended and fsync'd.

A file is *done* exactly when its line is durable.  A run killed at any moment (SIGKILL
included) leaves at worst a partial last line, which the next run cuts off before it
appends.  The results table is always rebuilt from the journal, keeping the last record
per file, so every file appears exactly once.

Identity (``file_key``): resolved path + size + mtime, so a relative and an absolute
spelling, or a symbolic link, of one file resume as one file.

Memory: resuming needs the set of finished files; it is kept as 8-byte digests
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
    """Identity of an input file: a digest of its resolved path (symbolic links and
    relative spellings resolved), size and modification time.  The same file named two
    ways is one file; a file replaced by different content (new size or mtime) is a new
    one.  A path that cannot be stat'ed (missing, broken link) is keyed by its resolved
    path alone.  Records keep the key they were written with (``input_key``)."""
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
        identity = f"{resolved}\0{st.st_size}\0{st.st_mtime_ns}"
    except OSError:
        identity = resolved
    return int.from_bytes(
        hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
        "little",
    )


def record_key(rec: dict[str, Any]) -> int:
    """The identity a journal record was written with (older records: recomputed)."""
    key = rec.get("input_key")
    return int(key) if isinstance(key, int) else file_key(rec["file"])


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
            key = record_key(rec)
            if include_failed or rec.get("status") != "failed":
                done.add(key)
            else:
                done.discard(key)
        return done

    def latest_records(self) -> Iterator[dict[str, Any]]:
        """One record per file, the last one written (two passes, streamed)."""
        last: dict[int, int] = {}
        for i, rec in enumerate(self.records()):
            last[record_key(rec)] = i
        for i, rec in enumerate(self.records()):
            if last.get(record_key(rec)) == i:
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
