"""The run journal: one JSON line per finished file, appended and fsync'd.

A file is *done* exactly when its line is durable.  A run killed at any moment (SIGKILL
included) leaves at worst a partial last line, which the next run cuts off before it
appends.  The results table is always rebuilt from the journal, keeping the last record
per file, so every file appears exactly once.

Identity (``file_key``): resolved path + size + mtime, so a relative and an absolute
spelling, or a symbolic link, of one file resume as one file.  For a DICOM file the SOP
Instance UID it was processed as is part of its identity too: the worker reads it with
the header (``sop_instance_uid`` in the record), so the driver cannot know it before a
file is processed; records are keyed by the file key, and :class:`Finished` keeps, per
file key, a digest of the UID the record was made from.  On resume, a file whose key is
finished and whose record has a UID is checked against the UID in its header now (the
first elements only, up to (0008,0018): :func:`read_sop_instance_uid`): a file rewritten
with a new UID in place, size and modification time kept (``cp -p``, ``rsync -t``, an
archive unpacked over the old one), is processed again, and its new record replaces the
old row.  Two copies of one instance under two names are two files (two rows).

Memory: resuming needs the finished files; they are kept as 8-byte digests (key and UID
digest: about 100 bytes per file in a Python dict), not as path strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.filereader import read_partial

JOURNAL_NAME = "journal.jsonl"
_SOP_INSTANCE_UID_TAG = 0x00080018


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
    return _digest(identity)


def _digest(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
        "little",
    )


def uid_digest(uid: Any) -> int:
    """8-byte digest of a SOP Instance UID (0: none)."""
    text = str(uid or "").strip().rstrip("\0")
    return _digest(text) if text else 0


def read_sop_instance_uid(path: str) -> str | None:
    """The SOP Instance UID in a DICOM file's header, reading only the elements up to it
    (a few kB, never the pixel data or a long private sequence after it); None when the
    file cannot be read or has none."""
    try:
        with open(path, "rb") as fh:
            ds = read_partial(
                fh,
                stop_when=lambda tag, vr, length: tag > _SOP_INSTANCE_UID_TAG,
                force=True,
            )
            value = ds.get("SOPInstanceUID")
    except Exception:  # noqa: BLE001 - anything unreadable: no UID to compare
        return None
    text = str(value or "").strip().rstrip("\0")
    return text or None


class Finished:
    """The files a journal holds as finished: file key -> digest of the SOP Instance UID
    the record was made from (0: not DICOM, or no UID)."""

    def __init__(self) -> None:
        self._uid: dict[int, int] = {}

    def add(self, key: int, uid: Any = None) -> None:
        self._uid[key] = uid_digest(uid)

    def discard(self, key: int) -> None:
        self._uid.pop(key, None)

    def __len__(self) -> int:
        return len(self._uid)

    def __contains__(self, key: object) -> bool:
        return key in self._uid

    def holds(self, path: str, key: int) -> bool:
        """Whether ``path`` (file key ``key``) is finished: its key is, and for a DICOM
        record with a UID the file still carries that UID (its header read up to it)."""
        want = self._uid.get(key)
        if want is None:
            return False
        return want == 0 or uid_digest(read_sop_instance_uid(path)) == want


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

    def finished(self, *, include_failed: bool = True) -> Finished:
        """The files whose last record counts as finished, with the UID each was
        processed as (see :class:`Finished`)."""
        done = Finished()
        for rec in self.records():
            key = record_key(rec)
            if include_failed or rec.get("status") != "failed":
                done.add(key, rec.get("sop_instance_uid"))
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
