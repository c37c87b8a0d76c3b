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

import errno
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalign.pipeline.engine.inputs import expand_inputs
from legalign.pipeline.engine.journal import Journal, file_key

# Exit codes of `legalign run` (docs/results-schema.md)
EXIT_OK = 0  # every file succeeded (status ok or partial)
EXIT_USAGE = 2  # usage or configuration error: nothing was processed
EXIT_SOME_FAILED = 3  # the run completed; at least one file failed (see its error_reason)
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C); re-run the same command to resume

SUBDIRS = ("images", "overlays", "dicom")


@dataclass
class EngineOptions:
    out_dir: Path
    model: str | None = None
    config: str | None = None
    workers: int = 2
    device: str = "cpu"
    spacing_mm: float | None = None
    require_spacing: bool = False
    max_pixels: int = 80_000_000
    batch_size: int = 8
    mode: str = "auto"  # "worker", "main" or "auto" (main on cuda, worker on cpu)
    overlay: bool = True
    dicom_outputs: bool = True
    overlay_height: int = 2048
    retry_failed: bool = False
    progress: bool = True
    torch_threads: int | None = None
    max_in_flight: int | None = None
    file_timeout_s: float | None = 900.0  # a file still running after this is killed
    limit: int | None = None  # stop after this many newly processed files (benchmarks)
    # how compressed DICOM is read: "auto"/"cpu"/"gpu" progressive (docs/progressive.md),
    # "full" every film decoded whole; the overview (coarse canvas, overlay) has at
    # least overview_height rows
    decoder: str = "auto"
    overview_height: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "main" if str(self.device).startswith("cuda") else "worker"


# =============================================================== worker side
# The state of one worker process (options, geometry config, locator spec, model), set by
# the pool initialiser here and by the Ray tasks' initialiser (pipeline.engine.ray_engine);
# each worker process has its own.  The names below are shared with the Ray engine.
WORKER: dict[str, Any] = {}


def limit_threads(n: int) -> None:
    """Cap the numeric libraries of this worker process at ``n`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except Exception:  # noqa: BLE001 - cv2 optional here
        pass


def _init_worker(
    opts: EngineOptions, mode: str, capture: bool = False, main_pid: int | None = None
) -> None:
    """Worker start-up.  With ``capture`` (the local pool), a failure is not raised (the
    pool would only see a dead process) but kept: every task answers with it and the main
    process stops the run (see _InitFailed).  Without, it raises."""
    WORKER.pop("init_error", None)
    if main_pid is not None:
        from legalign.pipeline.engine.lifecycle import watch_parent

        watch_parent(main_pid)  # dies with the main process, even under kill -9
    try:
        _init_worker_inner(opts, mode)
    except Exception as exc:  # noqa: BLE001
        if not capture:
            raise
        WORKER["init_error"] = one_line(exc)


def _init_failed() -> dict[str, Any] | None:
    err = WORKER.get("init_error")
    return None if err is None else {"__init_error__": err}


class _InitFailed(Exception):
    """A worker process could not start (environment or checkpoint problem)."""


class _OutputFailed(Exception):
    """The output folder cannot be written any more (full, read-only, removed)."""


# errors writing into --out that stop the run (every further file would fail the same way)
_OUTPUT_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "EIO")
    if hasattr(errno, n)
)


def _output_failure(exc: OSError, out: Path) -> str:
    where = exc.filename or out
    return (
        f"{os.fspath(where)}: cannot write ({exc.strerror or type(exc).__name__}); "
        "the run stopped, results so far are kept: free the space and re-run to resume"
    )


def _init_worker_inner(opts: EngineOptions, mode: str) -> None:
    limit_threads(1)
    from legalign.pipeline.api import load_config

    WORKER["opts"] = opts
    WORKER["mode"] = mode
    WORKER["cfg"] = load_config(opts.config)
    if mode == "worker":
        import torch

        torch.set_num_threads(1)
        from legalign.pipeline.api import load_locator

        WORKER["locator"] = load_locator(opts.model, device="cpu")
    else:
        from legalign.models.checkpoint import load_checkpoint
        from legalign.models.spec import LocatorSpec

        WORKER["spec"] = LocatorSpec.from_dict(load_checkpoint(opts.model)["spec"])


def read_input(path: str) -> Any:
    """Read one input file with this worker's options (spacing override, size limit)."""
    from legalign.pipeline.errors import InputError
    from legalign.pipeline.read import read_radiograph

    opts: EngineOptions = WORKER["opts"]
    rad = read_radiograph(
        path,
        spacing_override_mm=opts.spacing_mm,
        max_pixels=opts.max_pixels,
        decoder=opts.decoder,
        overview_height=opts.overview_height,
    )
    if opts.require_spacing and rad.spacing_mm is None:
        err = InputError(f"{path}: no pixel spacing (mm outputs were asked: --require-spacing)")
        err.reason = "no_spacing"  # type: ignore[attr-defined]
        raise err
    return rad


def read_info(rad: Any) -> dict[str, str]:
    """The ``read`` entry of a result: how the file was stored and which decoder read it."""
    from legalign.pipeline.read.syntax import syntax_label

    header = getattr(rad, "header", None)
    source = getattr(rad, "source", None)
    kind = "dicom" if header is not None else os.path.splitext(rad.path)[1].lower().lstrip(".")
    kind = {"jpg": "jpeg", "tif": "tiff"}.get(kind, kind)
    return {
        "syntax": syntax_label(header, kind),
        "decoder": source.codec_name if source is not None else "full",
    }


def header_only(rad: Any) -> Any:
    """The DICOM header of ``rad`` without its pixel data (cheap to send between processes)."""
    header = getattr(rad, "header", None)
    if header is not None and "PixelData" in header:
        header = header.copy()
        del header.PixelData
    return header


def failure_dict(path: str, exc: BaseException | str, reason: str | None = None) -> dict[str, Any]:
    """The result row of a file that failed."""
    from legalign.pipeline.api import failed_result

    return failed_result(path, exc, reason).to_dict()


def task_full(path: str) -> dict[str, Any]:
    """Mode "worker": everything for one file; returns its result dict (outputs written)."""
    from legalign.pipeline.api import FilmInfo, result_from_legs
    from legalign.pipeline.outputs.overlay import thumbnail

    if _init_failed():
        return _init_failed()  # type: ignore[return-value]
    opts: EngineOptions = WORKER["opts"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        rad = read_input(path)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, never raised
        d = failure_dict(path, exc)
        d["timings_s"] = {"read": round(time.perf_counter() - t0, 4)}
        return finish_outputs(d, None, None, opts)
    t1 = time.perf_counter()
    timings["read"] = t1 - t0
    try:
        thumb = thumbnail(rad.pixels, opts.overlay_height) if opts.overlay else None
        locator = WORKER["locator"]
        legs = locator.locate(rad)
        t2 = time.perf_counter()
        timings["locate"] = t2 - t1
        info = FilmInfo.from_radiograph(rad)
        header = header_only(rad)
        how = read_info(rad)
        del rad
        result = result_from_legs(
            info, legs, WORKER["cfg"], model_name=_model_name(opts), timings_s=timings
        )
        result.timings_s["measure"] = time.perf_counter() - t2
        d = result.to_dict()
        d["read"] = how
    except Exception as exc:  # noqa: BLE001
        d = failure_dict(path, exc, "internal_error")
        d["traceback_tail"] = traceback.format_exc(limit=-3)[-2000:]
        return finish_outputs(d, None, None, opts)
    return finish_outputs(d, header, thumb, opts)


def _model_name(opts: EngineOptions) -> str:
    return os.path.basename(opts.model) if opts.model else "default"


@dataclass
class Prepared:
    """Mode "main": what a worker hands to the main process for one film."""

    path: str
    info: Any  # FilmInfo
    header: Any
    thumb: Any
    coarse: Any  # float32 (1, Hc, Wc)
    shm_name: str
    shape: tuple[int, int]
    timings: dict[str, float]
    source: Any = None  # a progressive read's pixel source (no shared memory then)
    how: Any = None  # read_info


def task_prepare(path: str) -> Prepared | dict[str, Any]:
    """Mode "main": read, normalise, coarse input, thumbnail; the film goes to shared memory."""
    import numpy as np

    from legalign.pipeline.api import FilmInfo
    from legalign.pipeline.outputs.overlay import thumbnail

    if _init_failed():
        return _init_failed()  # type: ignore[return-value]
    opts: EngineOptions = WORKER["opts"]
    t0 = time.perf_counter()
    try:
        rad = read_input(path)
    except Exception as exc:  # noqa: BLE001
        d = failure_dict(path, exc)
        d["timings_s"] = {"read": round(time.perf_counter() - t0, 4)}
        return finish_outputs(d, None, None, opts)
    t1 = time.perf_counter()
    try:
        helper = SpecOnly(WORKER["spec"])
        coarse = helper.coarse_input(rad)
        thumb = thumbnail(rad.pixels, opts.overlay_height) if opts.overlay else None
        source = getattr(rad, "source", None)
        name = (
            ""
            if source is not None
            else _to_shared(np.ascontiguousarray(rad.pixels, dtype=np.float32))
        )
        prepared = Prepared(
            path=path,
            info=FilmInfo.from_radiograph(rad),
            header=header_only(rad),
            thumb=thumb,
            coarse=coarse,
            shm_name=name,
            shape=(rad.height, rad.width),
            timings={"read": t1 - t0, "prepare": time.perf_counter() - t1},
            source=source,
            how=read_info(rad),
        )
        return prepared
    except Exception as exc:  # noqa: BLE001
        d = failure_dict(path, exc, "internal_error")
        return finish_outputs(d, None, None, opts)


def task_finish(p: Prepared, legs: list[Any], timings: dict[str, float]) -> dict[str, Any]:
    """Mode "main": measure, plan and write the outputs of one located film."""
    from legalign.pipeline.api import result_from_legs

    if _init_failed():
        return _init_failed()  # type: ignore[return-value]
    opts: EngineOptions = WORKER["opts"]
    t0 = time.perf_counter()
    try:
        result = result_from_legs(
            p.info, legs, WORKER["cfg"], model_name=_model_name(opts), timings_s=timings
        )
        result.timings_s["measure"] = time.perf_counter() - t0
        d = result.to_dict()
        if p.how:
            d["read"] = p.how
    except Exception as exc:  # noqa: BLE001
        d = failure_dict(p.path, exc, "internal_error")
        return finish_outputs(d, None, None, opts)
    return finish_outputs(d, p.header, p.thumb, opts)


def finish_outputs(
    d: dict[str, Any], header: Any, thumb: Any, opts: EngineOptions
) -> dict[str, Any]:
    """Write overlay, SR, SC (each failure recorded, not fatal), then the JSON last.

    An output that was asked for and could not be written makes an ``ok`` film
    ``partial``, with the reason in ``output_errors`` (JSON, table, summary, terminal).
    Header values the SR / SC may not copy are dropped with a warning in ``warnings``
    (pipeline/outputs/dicom_header.py)."""
    from legalign.pipeline.outputs.image_json import (
        atomic_write_bytes,
        output_stem,
        safe_join,
        write_image_json,
    )

    out = Path(opts.out_dir)
    stem = output_stem(d["file"])
    outputs: dict[str, str] = {}
    errors: dict[str, str] = {}
    warnings: list[str] = list(d.get("warnings") or [])
    if d.get("status") != "failed" and d.get("spacing_mm") is None:
        warnings.append(ANGLES_ONLY_WARNING)
    if warnings:
        d["warnings"] = warnings
    t0 = time.perf_counter()
    rgb = None
    if opts.overlay and thumb is not None:
        try:
            from legalign.pipeline.outputs.overlay import encode_png, render_overlay

            rgb = render_overlay(d, thumb)
            target = safe_join(out, "overlays", f"{stem}.png")
            atomic_write_bytes(target, encode_png(rgb))
            outputs["overlay"] = f"overlays/{stem}.png"
        except Exception as exc:  # noqa: BLE001
            errors["overlay"] = one_line(exc)
    if opts.dicom_outputs and header is not None and d.get("status") != "failed":
        from legalign.pipeline.outputs.dicom_header import derivable_header
        from legalign.pipeline.outputs.dicom_sc import build_sc
        from legalign.pipeline.outputs.dicom_sr import build_sr

        kinds = ["sr"] + (["sc"] if rgb is not None else [])
        try:
            source, dropped = derivable_header(header)
        except Exception as exc:  # noqa: BLE001 - InvalidSourceIdentity, or a broken header
            for kind in kinds:
                errors[kind] = one_line(exc)
            kinds = []
        else:
            warnings.extend(dropped)
            if warnings:
                d["warnings"] = warnings
        # deterministic UIDs per (source SOP instance, kind): a re-run replaces, not adds
        src_uid = str(getattr(header, "SOPInstanceUID", d["file"]))
        builders = {
            "sr": lambda **uids: build_sr(d, source, **uids),
            "sc": lambda **uids: build_sc(rgb, source, **uids),
        }
        for kind in kinds:
            try:
                ds = builders[kind](
                    series_instance_uid=_uid(src_uid, f"{kind}-series"),
                    sop_instance_uid=_uid(src_uid, kind),
                )
                _save_dataset(ds, safe_join(out, "dicom", f"{stem}_{kind}.dcm"))
                outputs[kind] = f"dicom/{stem}_{kind}.dcm"
            except Exception as exc:  # noqa: BLE001
                errors[kind] = one_line(exc)
    outputs["json"] = f"images/{stem}.json"
    d["outputs"] = outputs
    if errors:
        d["output_errors"] = errors
        if d.get("status") == "ok":
            d["status"] = "partial"
    d.setdefault("timings_s", {})["write"] = round(time.perf_counter() - t0, 4)
    write_image_json(d, safe_join(out, "images", f"{stem}.json"))
    return d


ANGLES_ONLY_WARNING = "no pixel spacing: angles only, no mm values (--spacing MM gives them)"


def _uid(src_uid: str, kind: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["legalign", src_uid, kind])


def _save_dataset(ds: Any, target: Path) -> None:
    import io

    from legalign.pipeline.outputs.image_json import atomic_write_bytes

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(target, buf.getvalue())


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters), for result rows."""
    from legalign.pipeline.outputs.safe_text import printable

    return printable(f"{type(exc).__name__}: {str(exc).strip()}")[:300]


# ----------------------------------------------------------- shared memory
def _to_shared(arr: Any) -> str:
    """Copy ``arr`` into a new shared-memory segment named with this run's prefix.  It
    stays registered with the run's resource tracker (shared by all its processes), so
    if the main process dies before unlinking it, the tracker unlinks it when the last
    process of the run is gone; the main process's unlink unregisters it."""
    import uuid
    from multiprocessing import shared_memory

    from legalign.pipeline.engine.lifecycle import shm_prefix

    opts: EngineOptions = WORKER["opts"]
    name = f"{shm_prefix(Path(opts.out_dir))}{uuid.uuid4().hex[:16]}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, arr.nbytes))
    try:
        import numpy as np

        view = np.ndarray(arr.shape, dtype=arr.dtype, buffer=shm.buf)
        view[...] = arr
        del view
        name = shm.name
    finally:
        shm.close()
    return name


class _Shared:
    """A film in shared memory, attached in the main process; unlinked on release."""

    def __init__(self, name: str, shape: tuple[int, int]) -> None:
        from multiprocessing import shared_memory

        import numpy as np

        self.shm = shared_memory.SharedMemory(name=name)
        self.array = np.ndarray(shape, dtype=np.float32, buffer=self.shm.buf)

    def release(self) -> None:
        self.array = None
        try:
            self.shm.close()
        finally:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass


def _release_shared(name: str) -> None:
    from multiprocessing import shared_memory

    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


class SpecOnly:
    """The locator's geometric helpers without its networks (usable in a worker):
    ``coarse_input``, ``coarse_matrix``, ``crop_matrices``, ``fine_inputs`` only read
    ``self.spec``."""

    def __init__(self, spec: Any) -> None:
        from legalign.pipeline.locate import Locator

        self.spec = spec
        self._cls = Locator

    def coarse_matrix(self, height: int, width: int) -> Any:
        return self._cls.coarse_matrix(self, height, width)  # type: ignore[arg-type]

    def coarse_input(self, rad: Any) -> Any:
        return self._cls.coarse_input(self, rad)  # type: ignore[arg-type]


# =============================================================== main side
@dataclass
class _Item:
    path: str
    key: int
    attempts: int = 0


class LocalEngine:
    def __init__(
        self,
        inputs: list[str],
        opts: EngineOptions,
        *,
        source: Iterable[str | dict[str, Any]] | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        from legalign.pipeline.outputs.summary import RunSummary

        self.inputs = list(inputs)
        self.source = source
        self.on_record = on_record
        self.opts = opts
        self.mode = opts.resolved_mode()
        self.out = Path(opts.out_dir)
        self.journal = Journal(self.out)
        self.summary = RunSummary()
        self.in_flight: dict[Future, tuple[str, Any]] = {}
        self.running_since: dict[Future, float] = {}
        self.quarantine: deque[_Item] = deque()
        self.ready: list[tuple[_Item, Prepared]] = []
        self.locator: Any = None
        self.bar: Any = None
        self.processed = 0
        self.failed_this_run = 0
        self.lock: Any = None

    # ------------------------------------------------------------ setup
    def _prepare_out(self) -> None:
        """Create --out (one-line usage error when it cannot be written), take its lock,
        mark it as an output folder, remove what a killed run on it left: our own
        temporary files and shared-memory segments, a partial journal line."""
        from legalign.pipeline.engine.inputs import OUTPUT_MARKER
        from legalign.pipeline.engine.lifecycle import (
            OutputLock,
            clean_stale_shm,
            is_own_temp,
            out_error,
            shm_prefix,
        )

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
            self.lock.release()
            raise out_error(
                exc.filename or self.out, exc, "cannot write to the output folder"
            ) from None
        clean_stale_shm(shm_prefix(self.out))

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver" if sys.platform != "win32" else "spawn")
        return ProcessPoolExecutor(
            max_workers=max(1, self.opts.workers),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self.opts, self.mode, True, os.getpid()),
        )

    # ------------------------------------------------------------ run
    def run(self) -> int:
        from legalign.pipeline.engine.lifecycle import terminate_as_interrupt

        with terminate_as_interrupt():
            try:
                return self._run()
            finally:
                if self.lock is not None:
                    self.lock.release()

    def _run(self) -> int:
        from legalign.pipeline.api import load_config
        from legalign.pipeline.engine.lifecycle import EXIT_TERMINATED, Terminated

        opts = self.opts
        load_config(opts.config)  # a bad config is a usage error before any work
        self._prepare_out()
        done = self.journal.done_keys(include_failed=not opts.retry_failed)
        if self.mode == "main":
            import torch

            from legalign.pipeline.api import load_locator

            if opts.torch_threads:
                torch.set_num_threads(opts.torch_threads)
            self.locator = load_locator(opts.model, device=opts.device)
        else:
            from legalign.models.checkpoint import load_checkpoint, nets_from_checkpoint

            # a missing or unusable checkpoint is a usage error, up front
            nets_from_checkpoint(load_checkpoint(opts.model))
        start = time.perf_counter()
        self._start_progress(len(done))
        # files between the input generator and the journal; in mode "main" the decoded
        # films waiting for the networks (shared memory) are bounded separately
        max_in_flight = opts.max_in_flight or max(4, 3 * opts.workers + 2 * opts.batch_size)
        max_films = opts.batch_size + 2 * opts.workers
        pool = self._new_pool()
        gen = self._unfinished_inputs(done)
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
                        and self.processed + len(self.in_flight) + len(self.ready) >= opts.limit
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
                        if exc.errno in _OUTPUT_ERRNOS:  # the output folder is full / gone
                            raise _OutputFailed(_output_failure(exc, self.out)) from None
                        self._record(failure_dict(_item_path(payload), exc, "internal_error"))
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                        self._record(failure_dict(_item_path(payload), exc, "internal_error"))
                        continue
                    self._handle(pool, kind, payload, res)
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
        except _OutputFailed as exc:
            fatal = str(exc)
        finally:
            pool.shutdown(wait=interrupted is None, cancel_futures=True)
            for _, p in self.ready:
                if p.shm_name:
                    _release_shared(p.shm_name)
            try:
                self.journal.close()
            except OSError as exc:
                fatal = fatal or _output_failure(exc, self.out)
            if self.bar is not None:
                self.bar.close()
        self.summary.elapsed_s = time.perf_counter() - start
        self.summary.processed_this_run = self.processed
        try:
            self._write_results()
        except OSError as exc:
            fatal = fatal or _output_failure(exc, self.out)
        if fatal is not None:
            from legalign.pipeline.errors import LegalignError

            raise LegalignError(fatal)
        if isinstance(interrupted, Terminated):
            return EXIT_TERMINATED
        if interrupted is not None:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.summary.files_failed else EXIT_OK

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
            self._record(
                failure_dict(
                    _item_path(payload),
                    f"{_item_path(payload)}: still running after {limit:g} s (--file-timeout); killed",
                    "timeout",
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
        fn = task_full if self.mode == "worker" else task_prepare
        kind = "full" if self.mode == "worker" else "prepare"
        self.in_flight[pool.submit(fn, item.path)] = (kind, item)

    def _suspect(self, kind: str, payload: Any) -> None:
        """A worker died while this file was in flight: retry it alone; a file that
        kills a worker when it is the only one in flight is recorded as the cause."""
        item: _Item = payload if kind in ("full", "prepare") else payload[0]
        item.attempts += 1
        if item.attempts >= 2:
            self._record(
                failure_dict(
                    item.path,
                    "worker process died while processing this file (decoder crash or out of memory)",
                    "worker_crashed",
                )
            )
        else:
            self.quarantine.append(item)

    def _handle(self, pool: ProcessPoolExecutor, kind: str, payload: Any, res: Any) -> None:
        if isinstance(res, dict) and "__init_error__" in res:
            raise _InitFailed(res["__init_error__"])
        if kind == "prepare" and isinstance(res, Prepared):
            self.ready.append((payload, res))
            return
        self._record(res)

    def _infer_ready(self, pool: ProcessPoolExecutor) -> None:
        """Mode "main": both networks batched over the ready films."""
        import numpy as np

        batch, self.ready = self.ready[: self.opts.batch_size], self.ready[self.opts.batch_size :]
        loc = self.locator
        t0 = time.perf_counter()
        shared = [_Shared(p.shm_name, p.shape) if p.shm_name else None for _, p in batch]
        try:
            rads = [
                _radiograph_view(p, s.array if s is not None else None)
                for (_, p), s in zip(batch, shared, strict=True)
            ]
            heat = loc.predict_coarse(np.stack([p.coarse for _, p in batch]))
            coarse = [loc.decode_coarse(heat[i], rg) for i, rg in enumerate(rads)]
            legs_all = None
            for it in range(loc.spec.fine_iterations):
                inputs = [loc.fine_inputs(rg, c) for rg, c in zip(rads, coarse, strict=True)]
                counts = [len(fi.items) for fi in inputs]
                fheat = loc.predict_fine(np.concatenate([fi.crops for fi in inputs], axis=0))
                per = (
                    np.split(fheat, np.cumsum(counts)[:-1]) if len(fheat) else [fheat] * len(inputs)
                )
                if it + 1 < loc.spec.fine_iterations:
                    coarse = [
                        loc._recentre(c, fi, fh)
                        for c, fi, fh in zip(coarse, inputs, per, strict=True)
                    ]
                else:
                    legs_all = [
                        loc.decode_fine(c, fi, fh)
                        for c, fi, fh in zip(coarse, inputs, per, strict=True)
                    ]
        except Exception as exc:  # noqa: BLE001 - a batch failure: record every film
            for s in shared:
                if s is not None:
                    s.release()
            for item, p in batch:
                p.header = p.thumb = None
                self._record(failure_dict(item.path, exc, "internal_error"))
            return
        for s in shared:
            if s is not None:
                s.release()
        dt = (time.perf_counter() - t0) / max(1, len(batch))
        for (item, p), legs in zip(batch, legs_all or [], strict=True):
            timings = dict(p.timings)
            timings["locate"] = dt
            fut = pool.submit(task_finish, _strip(p), legs, timings)
            self.in_flight[fut] = ("finish", (item, p))

    # ------------------------------------------------------------ results
    def _record(self, d: dict[str, Any]) -> None:
        """Journal one finished file (durable), then count it."""
        from legalign.pipeline.outputs.image_json import dumps

        d.setdefault("input_key", file_key(d["file"]))
        try:
            self.journal.append(d, dumps(d, indent=None))
        except OSError as exc:
            raise _OutputFailed(_output_failure(exc, self.out)) from None
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

    def _write_results(self) -> None:
        import json

        from legalign.pipeline.outputs.image_json import atomic_write_bytes
        from legalign.pipeline.outputs.table import write_tables

        stats = self.summary

        def counted():
            for rec in self.journal.latest_records():
                stats.add_result(rec)
                yield rec

        stats.rows = write_tables(counted(), self.out)
        atomic_write_bytes(
            self.out / "summary.json",
            (json.dumps(stats.to_dict(), indent=2) + "\n").encode("utf-8"),
        )

    # ------------------------------------------------------------ progress
    def _unfinished_inputs(self, done: set[int]) -> Iterator[tuple[str, int]]:
        """(path, key) of each input not finished yet, once each; counts what it skips."""
        seen: set[int] = set()
        items = self.source if self.source is not None else self._expanded_inputs()
        for path in items:
            if isinstance(path, dict):  # a row the source already finished (a failure)
                self._record(path)
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

    def _start_progress(self, n_done: int) -> None:
        if not self.opts.progress:
            return
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=None,
            unit="film",
            desc="legalign run",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.5 if tty else 30.0,
        )
        bar, inputs, out = self.bar, self.inputs, self.out

        def count() -> None:
            # total for the ETA: a second lazy walk that only counts (no listing kept)
            try:
                n = sum(1 for _ in expand_inputs(inputs, exclude=[out]))
                bar.total = max(0, n - n_done)
                bar.refresh()
            except Exception:  # noqa: BLE001 - the ETA is a nicety
                pass

        if self.source is None:  # a caller's source is not walked twice
            threading.Thread(target=count, daemon=True).start()


def _item_path(payload: Any) -> str:
    return payload.path if isinstance(payload, _Item) else payload[0].path


def _strip(p: Prepared) -> Prepared:
    """What task_finish needs (no coarse array, no shared memory)."""
    return Prepared(p.path, p.info, p.header, p.thumb, None, "", p.shape, p.timings, None, p.how)


def _radiograph_view(p: Prepared, pixels: Any) -> Any:
    from legalign.pipeline.radiograph import Radiograph

    i = p.info
    source = p.source
    return Radiograph(
        path=i.path,
        pixels=pixels if source is None else source.overview.pixels,
        source=source,
        full_size=None if source is None else (source.height, source.width),
        spacing_mm=i.spacing_mm,
        spacing_source=i.spacing_source,
        mirrored=i.mirrored,
        laterality=i.laterality,
        modality=i.modality,
    )


def run_local(
    inputs: list[str],
    opts: EngineOptions,
    *,
    source: Iterable[str | dict[str, Any]] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, Any]:
    """Run the engine; returns (exit code, RunSummary).

    ``source`` replaces the expansion of ``inputs``: an iterable (it may block, e.g. on a
    download) of file paths, or of finished failure rows (dicts, recorded as they come),
    consumed lazily.  ``on_record`` is called in the main process with each row once it
    is durable in the journal (e.g. to send its outputs somewhere).
    """
    engine = LocalEngine(inputs, opts, source=source, on_record=on_record)
    code = engine.run()
    return code, engine.summary
