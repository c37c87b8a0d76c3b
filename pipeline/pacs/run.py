"""``legalign pacs``: query, retrieve, run the pipeline, store the results back.

Data flow::

    QIDO-RS (paged) --> [skip done] --> WADO-RS, N concurrent, streamed to DIR/retrieved/
        --> the local engine (the same pipeline and outputs as `legalign run`)
        --> journal line (durable) --> STOW-RS of the SR + SC into the source study
        --> QIDO-RS check that both are there --> store ledger line (durable)

The instance's journal key is its staged path, ``DIR/retrieved/<SOPInstanceUID>.dcm``,
i.e. its SOP Instance UID; the ledger is keyed by it too.  On a re-run, an instance
with a journal line is not retrieved again; one whose results are in the ledger is not
stored again; one processed but not in the ledger (a kill between the journal and the
ledger) is stored only after a QIDO-RS search shows its SR / SC are not already in the
archive.  The SR / SC SOP Instance UIDs derive from the source's, so even a repeated
STOW could only replace, never duplicate.

Memory: at most ``2 x concurrency`` retrieved films wait for the engine (on disk, not in
memory), the engine bounds what it holds, the store queue holds at most 64 small jobs;
resume state is 8-byte digests per instance, as in the run journal.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom

from legalign.pipeline.engine.journal import Journal
from legalign.pipeline.engine.local import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EngineOptions,
    run_local,
)
from legalign.pipeline.failures import failure_dict
from legalign.pipeline.outputs.image_json import atomic_write_bytes
from legalign.pipeline.pacs import retry as rt
from legalign.pipeline.pacs.client import ClientOptions, PacsClient
from legalign.pipeline.pacs.ledger import Ledger
from legalign.pipeline.pacs.query import Candidate, QueryFilters, instances_of_study, studies

RETRIEVED = "retrieved"
STORE_QUEUE = 64
PACS_TABLE = "pacs.csv"
PACS_SUMMARY = "pacs_summary.json"
PACS_COLUMNS = (
    "sop_instance_uid",
    "study_instance_uid",
    "status",
    "error_reason",
    "store_status",
    "store_reason",
    "store_error",
    "stored_instances",
)


@dataclass(frozen=True)
class PacsOptions:
    client: ClientOptions
    filters: QueryFilters = QueryFilters()
    concurrency: int = 4  # WADO-RS requests at once
    store: bool = True  # STOW-RS the SR / SC back
    retry_failed: bool = False  # process again instances whose analysis failed


def sop_key(sop: str) -> int:
    return int.from_bytes(hashlib.blake2b(sop.encode(), digest_size=8).digest(), "little")


@dataclass
class StoreJob:
    sop: str
    files: list[Path]
    check_first: bool  # a previous run may have stored them already


@dataclass
class PacsCounts:
    studies: int = 0
    candidates: int = 0
    skipped_done: int = 0
    retrieved: int = 0
    retrieved_bytes: int = 0
    retrieve_failed: int = 0
    stored: int = 0
    store_sent: int = 0  # instances actually sent by STOW (0 when already there)
    store_failed: int = 0
    query_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Prior:
    """What earlier runs left: instances not to retrieve again, and unstored results."""

    final: set[int]
    pending: dict[int, StoreJob]


def staged(out: Path, sop: str) -> Path:
    return out / RETRIEVED / f"{sop}.dcm"


class PacsRun:
    def __init__(self, popts: PacsOptions, eopts: EngineOptions) -> None:
        self.popts = popts
        self.out = Path(eopts.out_dir).resolve()
        # this layer decides what is retried; the engine gets only what must be processed
        self.eopts = replace(eopts, out_dir=self.out, retry_failed=True)
        self.retrieved_dir = self.out / RETRIEVED
        self.prefix = str(self.retrieved_dir) + os.sep
        self.counts = PacsCounts()
        self.lock = threading.Lock()
        self.store_q: queue.Queue[StoreJob | None] = queue.Queue(STORE_QUEUE)
        self.stop_storing = threading.Event()
        self.client: PacsClient | None = None
        self.ledger = Ledger(self.out)

    # ------------------------------------------------------------ state
    def sop_of(self, file: str) -> str | None:
        if file.startswith(self.prefix) and file.endswith(".dcm"):
            return file[len(self.prefix) : -4]
        return None

    def prior(self) -> Prior:
        stored: set[int] = set()
        for rec in self.ledger.records():
            k = sop_key(rec["sop"])
            if rec.get("event") == "stored":
                stored.add(k)
            else:
                stored.discard(k)
        final: set[int] = set()
        pending: dict[int, StoreJob] = {}
        for rec in Journal(self.out).latest_records():
            sop = self.sop_of(str(rec["file"]))
            if sop is None:
                continue
            k = sop_key(sop)
            if rec.get("status") == "failed":
                if rec.get("error_reason") in rt.PACS_REASONS or self.popts.retry_failed:
                    continue  # retrieved again
                final.add(k)
                continue
            final.add(k)
            files = self.result_files(rec)
            if self.popts.store and files and k not in stored:
                pending[k] = StoreJob(sop, files, check_first=True)
        return Prior(final, pending)

    def result_files(self, rec: dict[str, Any]) -> list[Path]:
        outputs = rec.get("outputs") or {}
        return [self.out / outputs[k] for k in ("sr", "sc") if k in outputs]

    # ------------------------------------------------------------ retrieve (the engine's source)
    def source(self, prior: Prior) -> Iterator[str | dict[str, Any]]:
        client, f = self.client, self.popts.filters
        assert client is not None
        seen: set[int] = set()
        window: deque[tuple[Candidate, Future]] = deque()
        limit = 2 * self.popts.concurrency
        with ThreadPoolExecutor(self.popts.concurrency, thread_name_prefix="wado") as pool:
            try:
                for study in studies(client, f):
                    self.counts.studies += 1
                    try:
                        found = list(instances_of_study(client, study, f))
                    except rt.PacsError as exc:
                        self.counts.query_errors.append(str(exc))
                        continue
                    for c in found:
                        self.counts.candidates += 1
                        k = sop_key(c.sop)
                        if k in prior.final or k in prior.pending or k in seen:
                            self.counts.skipped_done += 1
                            continue
                        seen.add(k)
                        window.append((c, pool.submit(self.fetch, c)))
                        while len(window) >= limit:
                            yield self.handed(*window.popleft())
            except rt.PacsError as exc:  # the study listing itself failed for good
                self.counts.query_errors.append(str(exc))
            while window:
                yield self.handed(*window.popleft())

    def fetch(self, c: Candidate) -> str:
        target = staged(self.out, c.sop)
        if not target.exists():  # a film left by a killed run is complete (atomic rename)
            assert self.client is not None
            n = self.client.retrieve_to_file(c.study, c.series, c.sop, target)
            with self.lock:
                self.counts.retrieved += 1
                self.counts.retrieved_bytes += n
        return str(target)

    def handed(self, c: Candidate, fut: Future) -> str | dict[str, Any]:
        try:
            return fut.result()
        except rt.PacsError as exc:
            self.counts.retrieve_failed += 1
            d = failure_dict(str(staged(self.out, c.sop)), exc.args[0], exc.reason)
            d.update(sop_instance_uid=c.sop, study_instance_uid=c.study)
            d["series_instance_uid"] = c.series
            return d

    # ------------------------------------------------------------ store
    def on_record(self, d: dict[str, Any]) -> None:
        """Called by the engine once ``d`` is durable in the journal."""
        sop = self.sop_of(str(d.get("file", "")))
        if sop is None:
            return
        try:
            staged(self.out, sop).unlink()
        except FileNotFoundError:
            pass
        files = self.result_files(d)
        if self.popts.store and d.get("status") != "failed" and files:
            self.store_q.put(StoreJob(sop, files, check_first=False))

    def store_loop(self) -> None:
        while True:
            job = self.store_q.get()
            if job is None:
                return
            if self.stop_storing.is_set():
                continue  # interrupted: left for the next run (its journal line is there)
            try:
                self.store_one(job)
            except Exception as exc:  # noqa: BLE001 - a row, never a crash
                reason = getattr(exc, "reason", rt.REASON_BAD_RESPONSE)
                with self.lock:
                    self.counts.store_failed += 1
                self.ledger.append(
                    {
                        "sop": job.sop,
                        "event": "store_failed",
                        "reason": reason,
                        "error": str(exc)[:300],
                        "time": time.time(),
                    }
                )

    def store_one(self, job: StoreJob) -> None:
        client = self.client
        assert client is not None
        heads = []
        for f in job.files:
            h = pydicom.dcmread(
                f,
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
            heads.append(
                (f, str(h.StudyInstanceUID), str(h.SeriesInstanceUID), str(h.SOPInstanceUID))
            )
        study = heads[0][1]
        todo = [
            f
            for f, st, se, uid in heads
            if not (job.check_first and client.has_instance(st, se, uid))
        ]
        if todo:
            client.store(study, todo)
        missing = [uid for _, st, se, uid in heads if not client.has_instance(st, se, uid)]
        if missing:
            raise rt.PacsError(
                f"STOW-RS into study {study}: answered, but the archive does not hold {', '.join(missing)}",
                rt.REASON_NOT_STORED,
            )
        self.ledger.append(
            {
                "sop": job.sop,
                "study": study,
                "event": "stored",
                "instances": [uid for *_, uid in heads],
                "sent": len(todo),
                "time": time.time(),
            }
        )
        with self.lock:
            self.counts.stored += 1
            self.counts.store_sent += len(todo)

    # ------------------------------------------------------------ run
    def prepare(self) -> Prior:
        self.out.mkdir(parents=True, exist_ok=True)
        self.retrieved_dir.mkdir(exist_ok=True)
        Journal(self.out).repair()
        self.ledger.repair()
        prior = self.prior()
        for entry in os.scandir(self.retrieved_dir):
            stale = entry.name.startswith(".") and entry.name.endswith(".tmp")
            if stale or (entry.name.endswith(".dcm") and sop_key(entry.name[:-4]) in prior.final):
                os.unlink(entry.path)
        return prior

    def run(self) -> tuple[int, Any]:
        prior = self.prepare()
        self.client = PacsClient(self.popts.client)
        storer = threading.Thread(target=self.store_loop, name="stow", daemon=True)
        storer.start()
        code, summary = EXIT_INTERRUPTED, None
        try:
            for job in prior.pending.values():
                self.store_q.put(job)
            code, summary = run_local(
                [], self.eopts, source=self.source(prior), on_record=self.on_record
            )
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
            raise
        finally:
            if code == EXIT_INTERRUPTED:
                self.stop_storing.set()
            self.store_q.put(None)
            storer.join()
            self.ledger.close()
            self.client.close()
            self.write_tables()
        if code == EXIT_OK and (
            self.counts.store_failed or self.counts.retrieve_failed or self.counts.query_errors
        ):
            code = EXIT_SOME_FAILED
        return code, summary

    # ------------------------------------------------------------ tables
    def write_tables(self) -> None:
        last = self.ledger.last_events()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(PACS_COLUMNS)
        totals = {"stored": 0, "store_failed": 0, "store_pending": 0, "analysis_failed": 0}
        for rec in Journal(self.out).latest_records():
            sop = self.sop_of(str(rec["file"]))
            if sop is None:
                continue
            ev = last.get(sop) or {}
            if rec.get("status") == "failed":
                store = "none"
                totals["analysis_failed"] += 1
            elif ev.get("event") == "stored":
                store = "stored"
            elif ev.get("event") == "store_failed":
                store = "failed"
            elif self.popts.store and self.result_files(rec):
                store = "pending"
            else:
                store = "none"
            key = {"stored": "stored", "failed": "store_failed", "pending": "store_pending"}
            if store in key:
                totals[key[store]] += 1
            w.writerow(
                [
                    sop,
                    rec.get("study_instance_uid") or ev.get("study") or "",
                    rec.get("status", ""),
                    rec.get("error_reason") or "",
                    store,
                    ev.get("reason", "") if store == "failed" else "",
                    ev.get("error", "") if store == "failed" else "",
                    " ".join(ev.get("instances", [])) if store == "stored" else "",
                ]
            )
        atomic_write_bytes(self.out / PACS_TABLE, buf.getvalue().encode("utf-8"))
        summary = {"this_run": self.counts.to_dict(), "totals": totals}
        atomic_write_bytes(
            self.out / PACS_SUMMARY, (json.dumps(summary, indent=2) + "\n").encode("utf-8")
        )
        self.totals = totals


def dry_run(popts: PacsOptions, out: Path, stream: Any = None) -> PacsCounts:
    """List what a run would do, one tab-separated line per candidate instance
    (``process``, ``store`` (processed, results not yet stored) or ``done``)."""
    run = PacsRun(popts, EngineOptions(out_dir=out))
    prior = run.prior() if out.exists() else Prior(set(), {})
    client = PacsClient(popts.client)
    counts = run.counts
    stream = stream or sys.stdout
    print("action\tstudy_instance_uid\tseries_instance_uid\tsop_instance_uid", file=stream)
    try:
        for study in studies(client, popts.filters):
            counts.studies += 1
            try:
                found = list(instances_of_study(client, study, popts.filters))
            except rt.PacsError as exc:
                counts.query_errors.append(str(exc))
                continue
            for c in found:
                counts.candidates += 1
                k = sop_key(c.sop)
                action = (
                    "store" if k in prior.pending else "done" if k in prior.final else "process"
                )
                if action == "done":
                    counts.skipped_done += 1
                print(f"{action}\t{c.study}\t{c.series}\t{c.sop}", file=stream)
    except rt.PacsError as exc:
        counts.query_errors.append(str(exc))
    finally:
        client.close()
    return counts
