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

The per-file work is the local engine's own code (``pipeline.engine.local``: ``read_input``,
``SpecOnly``, ``task_finish``, ``finish_outputs``, ``failure_dict``) and the locator's
stage functions (``pipeline.locate.Locator``); the driver is a ``LocalEngine`` whose
``run`` streams from Ray instead of a process pool (same journal, resume, table, summary).

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
import json
import os
import pickle
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from legalign.pipeline.engine import local
from legalign.pipeline.engine.journal import file_key
from legalign.pipeline.engine.local import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EngineOptions,
    LocalEngine,
)
from legalign.pipeline.errors import LegalignError

INSTALL_HINT = 'the Ray engine needs Ray Data: pip install -e ".[ray]"'

# Ray failed under the run (a node or the driver's connection lost, a task failing
# after Ray's retries): results so far are written; re-running resumes (docs/ray.md)
EXIT_RAY_STOPPED = 1

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
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise LegalignError(INSTALL_HINT) from None
    return ray


# =============================================================== worker side
def _ensure(opts: EngineOptions, run_id: str, spec: Any) -> None:
    """Initialise this Ray worker process for this run: what the local engine's
    ``_init_worker(opts, "main")`` sets, with the locator spec shipped from the driver
    instead of every CPU worker loading the whole checkpoint to read it."""
    if local.WORKER.get("ray_run") == run_id:
        return
    from legalign.pipeline.api import load_config

    local.limit_threads(1)
    local.WORKER.update(opts=opts, mode="main", cfg=load_config(opts.config), spec=spec)
    local.WORKER["ray_run"] = run_id


def _pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _done(path: str, d: dict[str, Any]) -> dict[str, Any]:
    from legalign.pipeline.outputs.image_json import dumps

    return {"path": path, "status": DONE, "state": b"", "record": dumps(d, indent=None)}


def _pending(path: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"path": path, "status": PENDING, "state": _pack(state), "record": ""}


def _fail(path: str, exc: BaseException | str, reason: str | None, opts: EngineOptions, **kw):
    """A finished row for a failed file (its JSON written, as the local engine does)."""
    d = local.failure_dict(path, exc, reason)
    if isinstance(exc, BaseException) and reason == "internal_error":
        d["traceback_tail"] = "".join(traceback.format_exception(exc, limit=-3))[-2000:]
    if kw.get("timings"):
        d["timings_s"] = {k: round(v, 4) for k, v in kw["timings"].items()}
    return _done(path, local.finish_outputs(d, None, None, opts))


class _Geometry(local.SpecOnly):
    """The locator's crop geometry without its networks (reads only ``self.spec``)."""

    def crop_matrices(self, leg: Any) -> Any:
        return self._cls.crop_matrices(self, leg)  # type: ignore[arg-type]

    def fine_inputs(self, rad: Any, coarse: Any) -> Any:
        return self._cls.fine_inputs(self, rad, coarse)  # type: ignore[arg-type]


class FileTimeout(BaseException):
    """A file's read ran past ``--file-timeout`` inside a Ray task.  A BaseException, so
    that the readers' ``except Exception`` handlers do not turn it into a decode error."""

    reason = "timeout"


@contextlib.contextmanager
def _file_time_limit(path: str, seconds: float | None):
    """Stop the read of ``path`` after ``seconds`` (``FileTimeout``, reason timeout).

    Ray runs a task on its worker's main thread, where SIGALRM can interrupt Python
    code and blocking system calls; a decoder busy inside native code is stopped when it
    returns to Python.  Elsewhere (not the main thread) there is no limit."""
    import signal
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001
        raise FileTimeout(f"{path}: still running after {seconds:g} s (--file-timeout); stopped")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read(path: str, opts: EngineOptions) -> Any:
    """``local.read_input`` under ``--file-timeout`` (InputError with reason timeout)."""
    from legalign.pipeline.errors import input_error

    try:
        with _file_time_limit(path, opts.file_timeout_s):
            return local.read_input(path)
    except FileTimeout as exc:
        raise input_error(str(exc), "timeout") from None


def _stage_prepare(
    row: dict[str, Any], opts: EngineOptions, run_id: str, spec: Any
) -> dict[str, Any]:
    """CPU task: read and normalise the film, cut the coarse network input and the
    overlay thumbnail (reduced uint8)."""
    from legalign.pipeline.api import FilmInfo
    from legalign.pipeline.outputs.overlay import thumbnail

    _ensure(opts, run_id, spec)
    path = str(row["path"])
    t0 = time.perf_counter()
    try:
        rad = _read(path, opts)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, never raised
        return _fail(path, exc, None, opts, timings={"read": time.perf_counter() - t0})
    t1 = time.perf_counter()
    try:
        state = {
            "info": FilmInfo.from_radiograph(rad),
            "header": local.header_only(rad),
            "coarse_input": local.SpecOnly(local.WORKER["spec"]).coarse_input(rad),
            "thumb": thumbnail(rad.pixels, opts.overlay_height) if opts.overlay else None,
            "shape": (rad.height, rad.width),
            "how": local.read_info(rad),
        }
        state["timings"] = {"read": t1 - t0, "prepare": time.perf_counter() - t1}
        return _pending(path, state)
    except Exception as exc:  # noqa: BLE001
        return _fail(path, exc, "internal_error", opts)


def _stage_crops(
    row: dict[str, Any], opts: EngineOptions, run_id: str, spec: Any
) -> dict[str, Any]:
    """CPU task: decode the film again and cut the fine crops around the coarse legs
    (a film without legs needs no crops: it is not decoded again)."""
    if row["status"] != PENDING:
        return row
    _ensure(opts, run_id, spec)
    path = str(row["path"])
    state = pickle.loads(row["state"])
    timings = state["timings"]
    rad = None
    if state["coarse"].legs:
        t0 = time.perf_counter()
        try:
            rad = _read(path, opts)
        except Exception as exc:  # noqa: BLE001 - e.g. the file changed or vanished meanwhile
            return _fail(path, exc, None, opts)
        timings["reread"] = timings.get("reread", 0.0) + (time.perf_counter() - t0)
    t1 = time.perf_counter()
    try:
        state["fine"] = _Geometry(local.WORKER["spec"]).fine_inputs(rad, state["coarse"])
        timings["crop"] = timings.get("crop", 0.0) + (time.perf_counter() - t1)
        return _pending(path, state)
    except Exception as exc:  # noqa: BLE001
        return _fail(path, exc, "internal_error", opts)


def _stage_finish(
    row: dict[str, Any], opts: EngineOptions, run_id: str, spec: Any
) -> dict[str, Any]:
    """CPU task: measurements, plan and outputs through the local engine's task_finish."""
    if row["status"] != PENDING:
        return row
    _ensure(opts, run_id, spec)
    path = str(row["path"])
    try:
        s = pickle.loads(row["state"])
        p = local.Prepared(
            path,
            s["info"],
            s["header"],
            s.get("thumb"),
            None,
            "",
            s["shape"],
            s["timings"],
            how=s.get("how"),
        )
        return _done(path, local.task_finish(p, s["legs"], s["timings"]))
    except Exception as exc:  # noqa: BLE001
        return _fail(path, exc, "internal_error", opts)


class _FilmShape:
    """What ``Locator.decode_coarse`` reads from a radiograph: size, mirrored, laterality."""

    def __init__(self, info: Any) -> None:
        self.height = int(info.height)
        self.width = int(info.width)
        self.mirrored = info.mirrored
        self.laterality = info.laterality


class _Actor:
    """Holds the locator (both networks) on this actor's device."""

    def __init__(self, opts: EngineOptions, device: str, threads: int) -> None:
        import torch

        from legalign.pipeline.api import load_locator

        self.opts = opts
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.locator = load_locator(opts.model, device=device)
        self.per_film = device == "cpu"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

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
                    rows[i] = _fail(str(rows[i]["path"]), exc, "internal_error", self.opts)
            else:
                dt = (time.perf_counter() - t0) / len(todo)
                for (i, state), res in zip(todo, results, strict=True):
                    path = str(rows[i]["path"])
                    if isinstance(res, BaseException):
                        rows[i] = _fail(path, res, "internal_error", self.opts)
                        continue
                    state["timings"]["locate"] = state["timings"].get("locate", 0.0) + dt
                    rows[i] = _pending(path, state)
        return {
            k: np.array([r[k] for r in rows], dtype=object)
            for k in ("path", "status", "state", "record")
        }

    def forward(self, predict: Any, per_film: list[Any]) -> Any:
        """One network over a batch's films: one forward pass for the whole batch on a
        GPU; on CPU one pass per film, as the local engine's CPU mode runs them, because
        a CPU convolution's last bits depend on the batch it is in (identical rows)."""
        import numpy as np

        if not self.per_film:
            return predict(np.concatenate(per_film, axis=0))
        outs = [predict(x) for x in per_film if len(x)]
        return np.concatenate(outs, axis=0) if outs else predict(per_film[0][:0])

    def infer(self, states: list[dict[str, Any]]) -> list[Any]:  # pragma: no cover
        raise NotImplementedError


class _CoarseActor(_Actor):
    """Coarse network over a batch of films, then each film's coarse decode."""

    def infer(self, states: list[dict[str, Any]]) -> list[Any]:
        loc = self.locator
        heat = self.forward(loc.predict_coarse, [s.pop("coarse_input")[None] for s in states])
        out: list[Any] = []
        for i, s in enumerate(states):
            try:
                s["coarse"] = loc.decode_coarse(heat[i], _FilmShape(s["info"]))
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
        import numpy as np

        loc = self.locator
        inputs = [s.pop("fine") for s in states]
        counts = [len(fi.items) for fi in inputs]
        fheat = self.forward(loc.predict_fine, [fi.crops for fi in inputs])
        per = np.split(fheat, np.cumsum(counts)[:-1]) if len(fheat) else [fheat] * len(inputs)
        out: list[Any] = []
        for s, fi, fh in zip(states, inputs, per, strict=True):
            try:
                if self.last:
                    s["legs"] = loc.decode_fine(s.pop("coarse"), fi, fh)
                else:
                    s["coarse"] = loc._recentre(s["coarse"], fi, fh)
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


class RayEngine(LocalEngine):
    """The local engine's driver (journal, resume, summary, table) over a Ray dataset."""

    def __init__(self, inputs: list[str], opts: EngineOptions, ropts: RayOptions) -> None:
        super().__init__(inputs, opts)
        self.ropts = ropts
        self.layout: _Layout | None = None

    def _paths_to_do(self, done: set[int]) -> list[str]:
        paths: list[str] = []
        for path, _key in self._unfinished_inputs(done):
            if self.opts.limit is not None and len(paths) >= self.opts.limit:
                break
            # Ray workers do not share the driver's working directory
            paths.append(os.path.abspath(path))
        return paths

    def build_dataset(self, ray: Any, paths: list[str], spec: Any, run_id: str) -> Any:
        import ray.data

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
                self._record(
                    local.failure_dict(
                        path,
                        f"{path}: the Ray task processing this file failed after Ray's "
                        "retries (worker process died: decoder crash or out of memory)",
                        "worker_crashed",
                    )
                )

    def run(self) -> int:
        from legalign.pipeline.engine.lifecycle import terminate_as_interrupt

        with terminate_as_interrupt():
            try:
                return self._run_ray()
            finally:
                if self.lock is not None:
                    self.lock.release()

    def _run_ray(self) -> int:
        from legalign.pipeline.engine.lifecycle import EXIT_TERMINATED, Terminated

        ray = require_ray()
        from legalign.models.checkpoint import load_checkpoint
        from legalign.models.spec import LocatorSpec
        from legalign.pipeline.api import load_config

        opts = self.opts
        opts.out_dir = self.out = self.out.resolve()  # the workers write there
        load_config(opts.config)  # a bad config is a usage error before any work
        spec = LocatorSpec.from_dict(load_checkpoint(opts.model)["spec"])  # fails up front
        self._prepare_out()
        done = self.journal.done_keys(include_failed=not opts.retry_failed)
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
                self._start_progress(len(done))
                if self.bar is not None:
                    self.bar.total = len(paths)
                for row in ds.iter_rows():
                    d = json.loads(row["record"])
                    key = file_key(d["file"])
                    if key in recorded:  # a retried task's duplicate row
                        continue
                    recorded.add(key)
                    self._record(d)
                self._record_lost(paths, recorded)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            interrupted = exc
        except LegalignError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray itself failed (e.g. a node lost)
            stopped = exc
        finally:
            self.journal.close()
            if self.bar is not None:
                self.bar.close()
            if started_here:
                ray.shutdown()
        self.summary.elapsed_s = time.perf_counter() - start
        self.summary.processed_this_run = self.processed
        self._write_results()
        if stopped is not None:
            err = LegalignError(
                f"the Ray run stopped ({_plain(local.one_line(stopped))}); {self.processed} files "
                "finished in this run are journalled: re-run the same command to resume"
            )
            err.exit_code = EXIT_RAY_STOPPED
            raise err
        if isinstance(interrupted, Terminated):
            return EXIT_TERMINATED
        if interrupted is not None:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.summary.files_failed else EXIT_OK


def _per_film(ds: Any) -> Any:
    """One film per block again after an actor's batch, so that the next CPU stage runs
    a batch's films in parallel tasks and each finished film streams back to the driver
    (and is journalled) on its own.  Streaming repartition needs a Ray with
    ``repartition(target_num_rows_per_block=...)``; an older Ray keeps the batches."""
    import inspect

    if "target_num_rows_per_block" not in inspect.signature(ds.repartition).parameters:
        return ds
    return ds.repartition(target_num_rows_per_block=1)


def _plain(text: str) -> str:
    """Without the terminal colour codes Ray puts in its task errors."""
    import re

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
    import ray.data

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
