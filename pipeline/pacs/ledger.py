"""The store ledger: one JSON line per SOP instance whose results went to the PACS.

Keyed by the source SOP Instance UID, appended and fsync'd like the run journal (a line
cut off by a kill is removed before the next append).  The last line of an instance
wins.  Events: ``stored`` (the SR / SC are in the archive, checked by QIDO-RS) and
``store_failed`` (with ``reason`` and ``error``; retried by the next run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from legalign.pipeline.engine.journal import Journal

LEDGER_NAME = "pacs_ledger.jsonl"


class Ledger:
    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self._journal = Journal(out_dir)  # its repair() and durable append()
        self._journal.path = Path(out_dir) / LEDGER_NAME
        self.path = self._journal.path

    def repair(self) -> int:
        return self._journal.repair()

    def append(self, record: dict[str, Any]) -> None:
        self._journal.append(record)

    def close(self) -> None:
        self._journal.close()

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "sop" in rec:
                    yield rec

    def last_events(self) -> dict[str, dict[str, Any]]:
        last: dict[str, dict[str, Any]] = {}
        for rec in self.records():
            last[rec["sop"]] = rec
        return last
