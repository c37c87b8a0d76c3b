"""The local streaming engine behind ``legalign run``.

Data flow (one machine)::

    INPUTs --(lazy generator)--> [skip done / duplicate] --> worker pool --> main process
                                                               |               |
      mode "worker": read + normalise + locate + measure      |      journal (fsync)
                     + plan + outputs, all in the worker      |      progress, summary
      mode "main":   read + normalise + coarse input +         |
                     thumbnail in the worker; both networks   |
                     batched across films in the main         |
                     process; measure + plan + outputs back   |
                     in a worker                               |

Only small objects cross process boundaries in both modes: paths, headers without
pixel data, a reduced uint8 thumbnail for the overlay, the coarse network input
(a few hundred kB), landmark lists and result dicts.  In mode "main" the decoded film,
which the fine crops need at full resolution, is handed over through shared memory
(one copy, no pickling) and released as soon as its crops are cut.

Exactly once: a file is done when its journal line is durable (see journal.py).  Its
outputs are written (atomically) *before* that line, so a re-run after a kill rewrites
the outputs of unfinished files and skips finished ones.  The results table is rebuilt
from the journal at the end of every run.

Memory is bounded: at most ``max_in_flight`` files are between the input generator
and the journal; nothing else grows with the archive except the set of finished-file
digests that resume needs (8-byte keys).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, cast

import torch

from legalign.models.checkpoint import load_checkpoint, nets_from_checkpoint
from legalign.pipeline.api import load_config, load_locator
from legalign.pipeline.coarse_to_fine import Film, FilmPixels, film_of, locate_films
from legalign.pipeline.engine.bookkeeping import OUTPUT_ERRNOS, OutputFailed, RunBook
from legalign.pipeline.engine.lifecycle import Terminated, terminate_as_interrupt
from legalign.pipeline.engine.options import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EngineOptions,
)
from legalign.pipeline.engine.pool_start import start_pool_worker
from legalign.pipeline.engine.shared_memory import SharedFilm, release_shared
from legalign.pipeline.engine.worker import (
    INIT_ERROR,
    Prepared,
    pool_finish,
    pool_full,
    pool_prepare,
)
from legalign.pipeline.errors import FailureReason, LegalignError
from legalign.pipeline.failures import failure_dict
from legalign.pipeline.locate import CoarseView

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "EngineOptions",
    "LocalEngine",
    "failure_dict",
    "run_local",
]


class _InitFailed(Exception):
    """A worker process could not start (environment or checkpoint problem)."""


@dataclass
class _Item:
    path: str
    key: int
    attempts: int = 0


class LocalEngine:
    """Worker processes on this machine (mode "worker": everything per file in the
    workers; mode "main": the networks batched in this process)."""

    def __init__(
        self,
        inputs: list[str],
        opts: EngineOptions,
        *,
        source: Iterable[str | dict[str, Any]] | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.opts = opts
        self.mode = opts.resolved_mode()
        self.book = RunBook(inputs, opts, source=source, on_record=on_record)
        self.in_flight: dict[Future, tuple[str, Any]] = {}
        self.running_since: dict[Future, float] = {}
        self.quarantine: deque[_Item] = deque()
        self.ready: list[tuple[_Item, Prepared]] = []
        self.locator: Any = None

    @property
    def summary(self) -> Any:
        return self.book.summary

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("forkserver" if sys.platform != "win32" else "spawn")
        return ProcessPoolExecutor(
            max_workers=max(1, self.opts.workers),
            mp_context=ctx,
            initializer=start_pool_worker,
            initargs=(os.getpid(), self.opts, self.mode),
        )

    # ------------------------------------------------------------ run
    def run(self) -> int:
        """The whole run; SIGTERM is handled like Ctrl-C (results so far written, exit
        143); the output folder's lock is held until the end."""
        with terminate_as_interrupt():
            try:
                return self._run()
            finally:
                self.book.release()

    def _run(self) -> int:
        opts, book = self.opts, self.book
        load_config(opts.config)  # a bad config is a usage error before any work
        done = book.prepare_out()
        if self.mode == "main":
            if opts.torch_threads:
                torch.set_num_threads(opts.torch_threads)
            self.locator = load_locator(opts.model, device=opts.device)
        else:
            # a missing or unusable checkpoint is a usage error, up front
            nets_from_checkpoint(load_checkpoint(opts.model))
        start = time.perf_counter()
        book.start_progress(len(done))
        # files between the input generator and the journal; in mode "main" the decoded
        # films waiting for the networks (shared memory) are bounded separately
        max_in_flight = opts.max_in_flight or max(4, 3 * opts.workers + 2 * opts.batch_size)
        max_films = opts.batch_size + 2 * opts.workers
        pool = self._new_pool()
        gen = book.unfinished_inputs(done)
        exhausted = False
        interrupted: KeyboardInterrupt | None = None
        fatal: str | None = None
        try:
            while True:
                # feed
                while (
                    not exhausted
                    and self._feedable()
                    and len(self.in_flight) + len(self.ready) < max_in_flight
                    and (self.mode != "main" or self._films_held() < max_films)
                ):
                    if (
                        opts.limit is not None
                        and book.processed + len(self.in_flight) + len(self.ready) >= opts.limit
                    ):
                        exhausted = True
                        break
                    try:
                        path, key = next(gen)
                    except StopIteration:
                        exhausted = True
                        break
                    self._submit(pool, _Item(path, key))
                while self.quarantine and not self.in_flight:
                    self._submit(pool, self.quarantine.popleft())
                if (
                    self.mode == "main"
                    and self.ready
                    and (
                        len(self.ready) >= opts.batch_size
                        or (
                            exhausted
                            and not any(k == "prepare" for k, _ in self.in_flight.values())
                        )
                        or not self.in_flight
                    )
                ):
                    self._infer_ready(pool)
                    continue
                if not self.in_flight:
                    if exhausted and not self.quarantine and not self.ready:
                        break
                    continue
                finished, _ = wait(list(self.in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    kind, payload = self.in_flight.pop(fut)
                    self.running_since.pop(fut, None)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        self._suspect(kind, payload)
                        continue
                    except OSError as exc:
                        if exc.errno in OUTPUT_ERRNOS:  # the output folder is full / gone
                            raise OutputFailed.from_os_error(exc, book.out) from None
                        book.record(
                            failure_dict(_item_path(payload), exc, FailureReason.INTERNAL_ERROR)
                        )
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                        book.record(
                            failure_dict(_item_path(payload), exc, FailureReason.INTERNAL_ERROR)
                        )
                        continue
                    self._handle(kind, payload, res)
                if not broken and self._timed_out(pool):
                    broken = True
                if broken:
                    for kind, payload in list(self.in_flight.values()):
                        self._suspect(kind, payload)
                    self.in_flight.clear()
                    self.running_since.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._new_pool()
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            interrupted = exc
        except _InitFailed as exc:
            fatal = f"worker processes cannot start: {exc}"
        except OutputFailed as exc:
            fatal = str(exc)
        finally:
            pool.shutdown(wait=interrupted is None, cancel_futures=True)
            for _, p in self.ready:
                if p.shm_name:
                    release_shared(p.shm_name)
            try:
                book.close(time.perf_counter() - start)
            except OutputFailed as exc:
                fatal = fatal or str(exc)
        if fatal is not None:
            raise LegalignError(fatal)
        if isinstance(interrupted, Terminated):
            return EXIT_TERMINATED
        if interrupted is not None:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if book.summary.files_failed else EXIT_OK

    def _timed_out(self, pool: ProcessPoolExecutor) -> bool:
        """Record files running longer than file_timeout_s as failed ("timeout") and kill
        the pool's processes (the other files in flight are retried)."""
        limit = self.opts.file_timeout_s
        if not limit:
            return False
        now = time.monotonic()
        late = []
        for fut in self.in_flight:
            if fut.running():
                since = self.running_since.setdefault(fut, now)
                if now - since > limit:
                    late.append(fut)
        if not late:
            return False
        for fut in late:
            kind, payload = self.in_flight.pop(fut)
            self.running_since.pop(fut, None)
            self.book.record(
                failure_dict(
                    _item_path(payload),
                    f"{_item_path(payload)}: still running after {limit:g} s (--file-timeout); killed",
                    FailureReason.TIMEOUT,
                )
            )
        for proc in list(getattr(pool, "_processes", {}).values()):
            try:
                proc.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass
        return True

    def _films_held(self) -> int:
        """Mode "main": decoded films in flight or waiting for the networks."""
        return len(self.ready) + sum(1 for k, _ in self.in_flight.values() if k == "prepare")

    def _feedable(self) -> bool:
        # while suspects of a worker crash are retried one at a time, feed nothing else
        return not self.quarantine

    def _submit(self, pool: ProcessPoolExecutor, item: _Item) -> None:
        fn = pool_full if self.mode == "worker" else pool_prepare
        kind = "full" if self.mode == "worker" else "prepare"
        self.in_flight[pool.submit(fn, item.path)] = (kind, item)

    def _suspect(self, kind: str, payload: Any) -> None:
        """A worker died while this file was in flight: retry it alone; a file that
        kills a worker when it is the only one in flight is recorded as the cause."""
        item: _Item = payload if kind in ("full", "prepare") else payload[0]
        item.attempts += 1
        if item.attempts >= 2:
            self.book.record(
                failure_dict(
                    item.path,
                    "worker process died while processing this file (decoder crash or out of memory)",
                    FailureReason.WORKER_CRASHED,
                )
            )
        else:
            self.quarantine.append(item)

    def _handle(self, kind: str, payload: Any, res: Any) -> None:
        if isinstance(res, dict) and INIT_ERROR in res:
            raise _InitFailed(res[INIT_ERROR])
        if kind == "prepare" and isinstance(res, Prepared):
            self.ready.append((payload, res))
            return
        self.book.record(res)

    def _infer_ready(self, pool: ProcessPoolExecutor) -> None:
        """Mode "main": the coarse-to-fine stage batched over the ready films."""
        batch, self.ready = self.ready[: self.opts.batch_size], self.ready[self.opts.batch_size :]
        t0 = time.perf_counter()
        # a film in shared memory, or (read progressively) its pixel source
        shared = [SharedFilm(p.shm_name, p.shape) if p.shm_name else None for _, p in batch]
        try:
            films: list[Film] = [
                film_of(p.info, s.view()) if s is not None else Film(p.info, _source(p))
                for (_, p), s in zip(batch, shared, strict=True)
            ]
            coarse = cast(list[CoarseView], [p.coarse for _, p in batch])  # cut by prepare
            legs_all = locate_films(self.locator, films, coarse_inputs=coarse)
        except Exception as exc:  # noqa: BLE001 - a batch failure: record every film
            for s in shared:
                if s is not None:
                    s.release()
            for item, p in batch:
                p.header = p.thumb = None
                self.book.record(failure_dict(item.path, exc, FailureReason.INTERNAL_ERROR))
            return
        for s in shared:
            if s is not None:
                s.release()
        dt = (time.perf_counter() - t0) / max(1, len(batch))
        for (item, p), legs in zip(batch, legs_all, strict=True):
            timings = dict(p.timings)
            timings["locate"] = dt
            fut = pool.submit(pool_finish, p.stripped(), legs, timings)
            self.in_flight[fut] = ("finish", (item, p))


def _source(p: Prepared) -> FilmPixels:
    assert p.source is not None, "a prepared film has shared memory or a pixel source"
    return p.source


def _item_path(payload: Any) -> str:
    return payload.path if isinstance(payload, _Item) else payload[0].path


def run_local(
    inputs: list[str],
    opts: EngineOptions,
    *,
    source: Iterable[str | dict[str, Any]] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, Any]:
    """Run the engine; returns (exit code, RunSummary).  ``source`` and ``on_record``:
    see ``RunBook`` (the ``legalign pacs`` command feeds downloads and uploads results)."""
    engine = LocalEngine(inputs, opts, source=source, on_record=on_record)
    code = engine.run()
    return code, engine.summary
