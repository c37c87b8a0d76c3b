"""The Ray engine behind ``legalign run --engine ray``: the same job on a Ray cluster.

Ray Data is an optional extra (``pip install -e ".[ray]"``).  Data flow::

    driver: INPUTs -> [skip journalled / duplicate] -> absolute paths -> dataset of paths
      1. CPU task   read + normalise; coarse input, thumbnail      (_stage_prepare)
      2. actor      coarse network, batched; coarse decode         (_CoarseActor)
      3. CPU task   read again + fine crops (films with legs)      (_stage_crops)
      4. actor      fine network, batched; fine decode / re-centre (_FineActor)
         (3 and 4 repeat ``spec.fine_iterations`` times)
      5. CPU task   measure + plan + outputs (JSON, overlay, SR, SC) (_stage_finish)
    driver: iter_rows -> journal (fsync'd) per file -> results table + summary

The per-file work is the local engine's own (``pipeline.engine.worker.WorkerContext``:
``read``, ``finish``; ``pipeline.engine.write.finish_outputs``), the locating is the one
coarse-to-fine stage (``pipeline.coarse_to_fine``: ``coarse_input``, ``coarse_heatmaps``,
``fine_inputs``, ``fine_heatmaps``, ``next_legs``, run as separate dataset stages in the
order ``locate_films`` runs them), and the driver keeps the same books as the local
engine (``pipeline.engine.bookkeeping.RunBook``: journal, resume, table, summary).

Only small arrays cross stages: the coarse input (a few hundred kB), the fine crops, the
reduced uint8 thumbnail, the DICOM header without pixel data, landmark lists.  The film
itself never does: a crop stage decodes the file again (the fine crops need the full
resolution), so a film with legs is decoded ``1 + fine_iterations`` times.  That is the
price of keeping whole films out of the object store, where they would cross the network
between nodes and fill the store (docs/ray.md).

Failures: a Ray Data block holds many rows and a failed block is dropped whole, so every
stage catches errors per file and turns the row into a finished one (``status`` "done",
``record`` the failed result's JSON); later stages pass finished rows through.  A network
failure on a batch fails that batch's films (reason internal_error), as in the local
engine.  Outputs are written by the workers (the output folder must be on storage every
node can write, at the same path); the driver journals a file once its row streams back,
after its outputs are written, so a re-run skips it (exactly as the local engine).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pickle
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legalign.models.checkpoint import load_checkpoint
from legalign.models.spec import LocatorSpec
from legalign.pipeline.api import load_config, load_locator
from legalign.pipeline.coarse_to_fine import (
    coarse_heatmaps,
    coarse_input,
    fine_heatmaps,
    fine_inputs,
    next_legs,
    radiograph_film,
)
from legalign.pipeline.engine.bookkeeping import RunBook
from legalign.pipeline.engine.journal import Finished, file_key
from legalign.pipeline.engine.lifecycle import Terminated, terminate_as_interrupt
from legalign.pipeline.engine.options import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_TERMINATED,
    EngineOptions,
)
from legalign.pipeline.engine.worker import (
    Prepared,
    WorkerContext,
    fail_and_write,
    header_only,
    read_info,
)
from legalign.pipeline.errors import FailureReason, FileTimeoutError, LegalignError
from legalign.pipeline.failures import failure_dict, one_line
from legalign.pipeline.outputs.image_json import dumps
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.results import FilmInfo

INSTALL_HINT = 'the Ray engine needs Ray Data: pip install -e ".[ray]"'

# Ray failed under the run (a node or the driver's connection lost, a task failing
# after Ray's retries): results so far are written; re-running resumes (docs/ray.md)
EXIT_RAY_STOPPED = 1


class RayStoppedError(LegalignError):
    """Ray failed under the run; the files finished so far are journalled."""

    exit_code = EXIT_RAY_STOPPED


PENDING = "pending"
DONE = "done"


@dataclass
class RayOptions:
    """How the job is laid out on the cluster (``None``: chosen from the cluster)."""

    address: str | None = None  # None: start a local Ray (or use the one already running)
    actors: int | None = None  # actors per inference stage (default: GPUs, or 1 on CPU)
    gpus_per_actor: float | None = None  # default: 1 / number of inference stages on cuda
    actor_cpus: float | None = None  # CPUs each actor reserves (default: see _layout)
    files_per_block: int | None = None  # files per read task (default: 1, more for huge runs)
    local_cpus: int | None = None  # num_cpus of a local Ray started here (default: --workers)


def require_ray() -> Any:
    """Import ray and ray.data, or fail with the one-line install hint."""
    try:
        import ray  # noqa: PLC0415 - optional extra, off the start-up path
        import ray.data  # noqa: F401, PLC0415 - optional extra
    except ImportError:
        raise LegalignError(INSTALL_HINT) from None
    return ray


# =============================================================== worker side
# This Ray worker process's context for the current run (one per process; a new run id
# replaces it).
_CONTEXT: dict[str, WorkerContext] = {}


def _context(opts: EngineOptions, run_id: str, spec: LocatorSpec) -> WorkerContext:
    """This Ray worker process's context for this run: the local engine's mode "main"
    context, with the locator spec shipped from the driver instead of every CPU worker
    loading the whole checkpoint to read it."""
    ctx = _CONTEXT.get(run_id)
    if ctx is None:
        _CONTEXT.clear()
        ctx = _CONTEXT[run_id] = WorkerContext.create(opts, networks=False, spec=spec)
    return ctx


def _pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _done(path: str, d: dict[str, Any]) -> dict[str, Any]:
    return {"path": path, "status": DONE, "state": b"", "record": dumps(d, indent=None)}


def _pending(path: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"path": path, "status": PENDING, "state": _pack(state), "record": ""}


def _fail(
    path: str,
    exc: BaseException | str,
    reason: FailureReason | None,
    opts: EngineOptions,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A finished row for a failed file (its JSON written, as the local engine does)."""
    return _done(path, fail_and_write(path, exc, opts, reason, timings))


class _FileTimeout(BaseException):
    """A file's read ran past ``--file-timeout`` inside a Ray task.  A BaseException, so
    that the readers' ``except Exception`` handlers do not turn it into a decode error."""


# after the first alarm, the timer fires again this often until the read gives way
_REARM_S = 0.1


@contextlib.contextmanager
def _file_time_limit(path: str, seconds: float | None) -> Iterator[None]:
    """Stop the read of ``path`` after ``seconds`` (``_FileTimeout``, reason timeout).

    Ray runs a task on its worker's main thread, where SIGALRM can interrupt Python
    code and blocking system calls; a decoder busy inside native code is stopped when it
    returns to Python.  Elsewhere (not the main thread) there is no limit.

    The exception the alarm raises is lost when the alarm lands in code that swallows
    exceptions: a ``ctypes`` callback (OpenJPEG's stream reads call back into Python),
    a ``__del__``.  So the timer re-arms every ``_REARM_S`` until the block gives way,
    and a block that still completes after the alarm fired counts as timed out: a file
    past ``--file-timeout`` never comes back as a finished read."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    message = f"{path}: still running after {seconds:g} s (--file-timeout); stopped"
    fired = False

    def on_alarm(signum: int, frame: Any) -> None:  # noqa: ARG001
        nonlocal fired
        fired = True
        raise _FileTimeout(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds), _REARM_S)
    try:
        yield
    finally:
        while True:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                break
            except _FileTimeout:
                continue  # one more alarm came in while disarming
    if fired:  # the alarm's exception was swallowed and the block ran to its end
        raise _FileTimeout(message)


def _read(ctx: WorkerContext, path: str) -> Radiograph:
    """``WorkerContext.read`` under ``--file-timeout`` (``FileTimeoutError``: reason
    timeout)."""
    try:
        with _file_time_limit(path, ctx.opts.file_timeout_s):
            return ctx.read(path)
    except _FileTimeout as exc:
        raise FileTimeoutError(str(exc)) from None


def _stage_prepare(
    row: dict[str, Any], opts: EngineOptions, run_id: str, spec: LocatorSpec
) -> dict[str, Any]:
    """CPU task: read and normalise the film, cut the coarse network input and the
    overlay thumbnail (reduced uint8)."""
    ctx = _context(opts, run_id, spec)
    path = str(row["path"])
    t0 = time.perf_counter()
    try:
        rad = _read(ctx, path)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, never raised
        return _fail(path, exc, None, opts, timings={"read": time.perf_counter() - t0})
    t1 = time.perf_counter()
    try:
        state = {
            "info": FilmInfo.from_radiograph(rad),
            "header": header_only(rad),
            "coarse_input": coarse_input(ctx.geometry, radiograph_film(rad).pixels),
            "thumb": ctx.thumbnail(rad),
            "shape": (rad.height, rad.width),
            "how": read_info(rad),
        }
        state["timings"] = {"read": t1 - t0, "prepare": time.perf_counter() - t1}
        return _pending(path, state)
    except Exception as exc:  # noqa: BLE001
        return _fail(path, exc, FailureReason.INTERNAL_ERROR, opts)


def _stage_crops(
    row: dict[str, Any], opts: EngineOptions, run_id: str, spec: LocatorSpec
) -> dict[str, Any]:
    """CPU task: decode the film again and cut the fine crops around the coarse legs
    (a film without legs needs no crops: it is not decoded again)."""
    if row["status"] != PENDING:
        return row
    ctx = _context(opts, run_id, spec)
    path = str(row["path"])
    state = pickle.loads(row["state"])
    timings = state["timings"]
    pixels = None
    if state["coarse"].legs:
        t0 = time.perf_counter()
        try:
            pixels = radiograph_film(_read(ctx, path)).pixels
        except Exception as exc:  # noqa: BLE001 - e.g. the file changed or vanished meanwhile
            return _fail(path, exc, None, opts)
        timings["reread"] = timings.get("reread", 0.0) + (time.perf_counter() - t0)
    t1 = time.perf_counter()
    try:
        state["fine"] = fine_inputs(ctx.geometry, pixels, state["coarse"])
        timings["crop"] = timings.get("crop", 0.0) + (time.perf_counter() - t1)
        return _pending(path, state)
    except Exception as exc:  # noqa: BLE001
        return _fail(path, exc, FailureReason.INTERNAL_ERROR, opts)


def _stage_finish(
    row: dict[str, Any], opts: EngineOptions, run_id: str, spec: LocatorSpec
) -> dict[str, Any]:
    """CPU task: measurements, plan and outputs (the local engine's ``finish``)."""
    if row["status"] != PENDING:
        return row
    ctx = _context(opts, run_id, spec)
    path = str(row["path"])
    try:
        s = pickle.loads(row["state"])
        p = Prepared(
            path,
            s["info"],
            s["header"],
            s.get("thumb"),
            None,
            None,
            s["shape"],
            s["timings"],
            how=s.get("how"),
        )
        return _done(path, ctx.finish(p, s["legs"], s["timings"]))
    except Exception as exc:  # noqa: BLE001
        return _fail(path, exc, FailureReason.INTERNAL_ERROR, opts)


class _Actor:
    """Holds the locator (both networks) on this actor's device."""

    def __init__(self, opts: EngineOptions, device: str, threads: int) -> None:
        self.opts = opts
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.locator = load_locator(opts.model, device=device)
        # On CPU one network pass per film, as the local engine's CPU mode runs them,
        # because a CPU convolution's last bits depend on the batch it is in (identical
        # rows); on a GPU one pass for the whole batch.
        self.per_film = device == "cpu"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [
            {k: batch[k][i] for k in ("path", "status", "state", "record")}
            for i in range(len(batch["path"]))
        ]
        todo = [(i, pickle.loads(r["state"])) for i, r in enumerate(rows) if r["status"] == PENDING]
        if todo:
            t0 = time.perf_counter()
            try:
                results = self.infer([s for _, s in todo])
            except Exception as exc:  # noqa: BLE001 - a batch failure: record every film
                for i, _ in todo:
                    rows[i] = _fail(
                        str(rows[i]["path"]), exc, FailureReason.INTERNAL_ERROR, self.opts
                    )
            else:
                dt = (time.perf_counter() - t0) / len(todo)
                for (i, state), res in zip(todo, results, strict=True):
                    path = str(rows[i]["path"])
                    if isinstance(res, BaseException):
                        rows[i] = _fail(path, res, FailureReason.INTERNAL_ERROR, self.opts)
                        continue
                    state["timings"]["locate"] = state["timings"].get("locate", 0.0) + dt
                    rows[i] = _pending(path, state)
        return {
            k: np.array([r[k] for r in rows], dtype=object)
            for k in ("path", "status", "state", "record")
        }

    def infer(self, states: list[dict[str, Any]]) -> list[Any]:  # pragma: no cover
        raise NotImplementedError


class _CoarseActor(_Actor):
    """Coarse network over a batch of films, then each film's coarse decode."""

    def infer(self, states: list[dict[str, Any]]) -> list[Any]:
        loc = self.locator
        inputs = [s.pop("coarse_input") for s in states]
        heat = coarse_heatmaps(loc, inputs, per_film=self.per_film)
        out: list[Any] = []
        for s, h, view in zip(states, heat, inputs, strict=True):
            try:
                s["coarse"] = loc.decode_coarse(h, s["info"], view)
                out.append(s)
            except Exception as exc:  # noqa: BLE001 - this film only
                out.append(exc)
        return out


class _FineActor(_Actor):
    """Fine network over the crops of a batch of films, then re-centre (a middle pass)
    or the final fine decode (the last pass)."""

    def __init__(self, opts: EngineOptions, device: str, threads: int, last: bool) -> None:
        super().__init__(opts, device, threads)
        self.last = last

    def infer(self, states: list[dict[str, Any]]) -> list[Any]:
        loc = self.locator
        inputs = [s.pop("fine") for s in states]
        fheat = fine_heatmaps(loc, inputs, per_film=self.per_film)
        out: list[Any] = []
        for s, fi, fh in zip(states, inputs, fheat, strict=True):
            try:
                legs = next_legs(loc, s.pop("coarse"), fi, fh, last=self.last)
                s["legs" if self.last else "coarse"] = legs
                out.append(s)
            except Exception as exc:  # noqa: BLE001 - this film only
                out.append(exc)
        return out


# =============================================================== driver side
@dataclass
class _Layout:
    actors: int
    gpus_per_actor: float
    actor_cpus: float
    device: str
    threads: int


def _layout(ray: Any, opts: EngineOptions, ropts: RayOptions, n_stages: int) -> _Layout:
    """Actors per inference stage and what each reserves.

    On cuda: one actor per GPU in each stage, the stages sharing each GPU (num_gpus =
    1 / stages), and one CPU per GPU in all (a GPU actor would otherwise reserve a whole
    CPU).  On CPU: one actor per stage, each reserving one CPU when the cluster has at
    least four CPUs per actor, else none: on a small machine the networks then share the
    CPUs with the read tasks, as the local engine's main mode shares them with its
    workers; reserving them would leave the read tasks (one CPU each) too few CPUs, or
    none at all (they would wait forever)."""
    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 1.0))
    gpus = float(res.get("GPU", 0.0))
    cuda = str(opts.device).startswith("cuda")
    if cuda:
        if gpus <= 0 and not ropts.gpus_per_actor:
            raise LegalignError("--device cuda: the Ray cluster has no GPU")
        per = ropts.gpus_per_actor or round(1.0 / n_stages, 4)
        actors = ropts.actors or max(1, int(gpus))
        actor_cpus = ropts.actor_cpus if ropts.actor_cpus is not None else round(1 / n_stages, 4)
        # Ray gives each actor its own CUDA_VISIBLE_DEVICES: "cuda" is the assigned GPU
        return _Layout(actors, per, actor_cpus, "cuda", 1)
    actors = ropts.actors or 1
    if ropts.actor_cpus is not None:
        actor_cpus = ropts.actor_cpus
    else:
        actor_cpus = 1.0 if cpus >= 4 * actors * n_stages else 0.0
    threads = opts.torch_threads or max(1, int(actor_cpus))
    return _Layout(actors, 0.0, actor_cpus, "cpu", threads)


class RayEngine:
    """The local engine's books (journal, resume, summary, table) over a Ray dataset."""

    def __init__(self, inputs: list[str], opts: EngineOptions, ropts: RayOptions) -> None:
        opts.out_dir = Path(opts.out_dir).resolve()  # the workers write there
        self.opts = opts
        self.ropts = ropts
        self.book = RunBook(inputs, opts)
        self.layout: _Layout | None = None

    @property
    def summary(self) -> Any:
        return self.book.summary

    def _paths_to_do(self, done: Finished) -> list[str]:
        paths: list[str] = []
        for path, _key in self.book.unfinished_inputs(done):
            if self.opts.limit is not None and len(paths) >= self.opts.limit:
                break
            # Ray workers do not share the driver's working directory
            paths.append(os.path.abspath(path))
        return paths

    def build_dataset(self, ray: Any, paths: list[str], spec: Any, run_id: str) -> Any:
        import ray.data  # noqa: F401, PLC0415 - the optional extra, imported where it is used

        opts, ropts = self.opts, self.ropts
        n_stages = 1 + spec.fine_iterations
        lay = self.layout = _layout(ray, opts, ropts, n_stages)
        per_block = ropts.files_per_block or max(1, -(-len(paths) // 20_000))
        blocks = max(1, -(-len(paths) // per_block))
        items = [{"path": p} for p in paths]
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        kw = {"opts": opts, "run_id": run_id, "spec": spec}
        ds = ds.map(_stage_prepare, fn_kwargs=kw, num_cpus=1)
        actor_kw: dict[str, Any] = {
            "batch_size": opts.batch_size,
            "compute": ray.data.ActorPoolStrategy(size=lay.actors),
            "num_cpus": lay.actor_cpus,
            "batch_format": "numpy",
        }
        if lay.gpus_per_actor:
            actor_kw["num_gpus"] = lay.gpus_per_actor
        ctor = {"opts": opts, "device": lay.device, "threads": lay.threads}
        ds = _per_film(ds.map_batches(_CoarseActor, fn_constructor_kwargs=ctor, **actor_kw))
        for it in range(spec.fine_iterations):
            last = it + 1 == spec.fine_iterations
            ds = ds.map(_stage_crops, fn_kwargs=kw, num_cpus=1)
            ds = ds.map_batches(
                _FineActor, fn_constructor_kwargs={**ctor, "last": last}, **actor_kw
            )
            ds = _per_film(ds)
        ds = ds.map(_stage_finish, fn_kwargs=kw, num_cpus=1)
        return ds.select_columns(["path", "status", "record"])

    def _record_lost(self, paths: list[str], recorded: set[int]) -> None:
        """Files whose rows never came back: their task kept failing (the worker process
        died on them: decoder crash, out of memory) and Ray Data skipped the block
        (``max_errored_blocks``).  Each becomes a worker_crashed row, as in the local
        engine, instead of stopping the run."""
        for path in paths:
            if file_key(path) not in recorded:
                self.book.record(
                    failure_dict(
                        path,
                        f"{path}: the Ray task processing this file failed after Ray's "
                        "retries (worker process died: decoder crash or out of memory)",
                        FailureReason.WORKER_CRASHED,
                    )
                )

    def run(self) -> int:
        with terminate_as_interrupt():
            try:
                return self._run()
            finally:
                self.book.release()

    def _run(self) -> int:
        ray = require_ray()
        opts, book = self.opts, self.book
        load_config(opts.config)  # a bad config is a usage error before any work
        spec = LocatorSpec.from_dict(load_checkpoint(opts.model)["spec"])  # fails up front
        done = book.prepare_out()
        start = time.perf_counter()
        paths = self._paths_to_do(done)
        started_here = False
        interrupted: KeyboardInterrupt | None = None
        stopped: BaseException | None = None
        recorded: set[int] = set()
        try:
            if paths:
                started_here = _init_ray(ray, self.ropts, opts)
                _quiet_ray_data()
                ds = self.build_dataset(ray, paths, spec, uuid.uuid4().hex)
                book.start_progress(len(done), total=len(paths))
                for row in ds.iter_rows():
                    d = json.loads(row["record"])
                    key = file_key(d["file"])
                    if key in recorded:  # a retried task's duplicate row
                        continue
                    recorded.add(key)
                    book.record(d)
                self._record_lost(paths, recorded)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            interrupted = exc
        except LegalignError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray itself failed (e.g. a node lost)
            stopped = exc
        finally:
            if started_here:
                ray.shutdown()
            book.close(time.perf_counter() - start)
        if stopped is not None:
            raise RayStoppedError(
                f"the Ray run stopped ({_plain(one_line(stopped))}); {book.processed} files "
                "finished in this run are journalled: re-run the same command to resume"
            )
        if isinstance(interrupted, Terminated):
            return EXIT_TERMINATED
        if interrupted is not None:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if book.summary.files_failed else EXIT_OK


def _per_film(ds: Any) -> Any:
    """One film per block again after an actor's batch, so that the next CPU stage runs
    a batch's films in parallel tasks and each finished film streams back to the driver
    (and is journalled) on its own.  Streaming repartition needs a Ray with
    ``repartition(target_num_rows_per_block=...)``; an older Ray keeps the batches."""
    if "target_num_rows_per_block" not in inspect.signature(ds.repartition).parameters:
        return ds
    return ds.repartition(target_num_rows_per_block=1)


def _plain(text: str) -> str:
    """Without the terminal colour codes Ray puts in its task errors."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _init_ray(ray: Any, ropts: RayOptions, opts: EngineOptions) -> bool:
    """Connect to ``address`` (or start a local Ray); True when this call started it."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
    if ropts.address:
        kw["address"] = ropts.address
    elif not os.environ.get("RAY_ADDRESS"):
        kw["num_cpus"] = ropts.local_cpus or opts.workers
    try:
        ray.init(**kw)
    except ConnectionError as exc:
        raise LegalignError(
            f"cannot connect to the Ray cluster at {ropts.address}: {exc}"
        ) from None
    return True


def _quiet_ray_data() -> None:
    """Our own progress bar (films journalled), not Ray Data's per-operator ones."""
    import ray.data  # noqa: PLC0415 - optional extra, off the start-up path

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # a block whose task keeps failing (its worker died on a file) is skipped, not fatal:
    # the driver records its files as worker_crashed rows (RayEngine._record_lost)
    ctx.max_errored_blocks = -1


def run_ray(inputs: list[str], opts: EngineOptions, ropts: RayOptions) -> tuple[int, Any]:
    """Run the Ray engine; returns (exit code, RunSummary)."""
    require_ray()
    engine = RayEngine(inputs, opts, ropts)
    code = engine.run()
    return code, engine.summary
