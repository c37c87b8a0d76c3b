"""The per-file work of ``legalign run``, done in worker processes (both engines).

A :class:`WorkerContext` holds what one worker process needs for one run: the options,
the geometry config, the locator geometry (spec only) and, in mode "worker", the networks.
Its methods are the tasks:

- :meth:`WorkerContext.full` (mode "worker"): read, locate, measure, plan, outputs;
- :meth:`WorkerContext.prepare` (mode "main"): read, coarse input, overlay thumbnail;
  the film goes to shared memory for the main process's batched networks;
- :meth:`WorkerContext.finish` (mode "main", Ray): measure, plan, outputs of a located film.

Every failure becomes a failed result (its JSON written), never an exception.

The process pool of the local engine keeps one context per worker process (set by its
initialiser, :func:`init_pool_worker`; :func:`pool_full` etc. are the picklable task
entry points); the Ray engine keeps its own per process (``ray_engine``).
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from legalign.models.checkpoint import load_checkpoint
from legalign.models.spec import LocatorSpec
from legalign.pipeline.api import load_config, load_locator
from legalign.pipeline.assemble import result_from_legs
from legalign.pipeline.coarse_to_fine import (
    ArrayPixels,
    FilmPixels,
    coarse_input,
    locate_films,
    radiograph_film,
)
from legalign.pipeline.engine.lifecycle import shm_prefix
from legalign.pipeline.engine.options import EngineOptions
from legalign.pipeline.engine.shared_memory import to_shared
from legalign.pipeline.engine.write import finish_outputs
from legalign.pipeline.errors import FailureReason, SpacingError
from legalign.pipeline.failures import failure_dict, one_line
from legalign.pipeline.geometry_config import GeometryConfig
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.locate import CoarseView, Locator, LocatorGeometry
from legalign.pipeline.outputs.overlay import thumbnail
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.read import read_radiograph
from legalign.pipeline.read.syntax import syntax_label
from legalign.pipeline.results import FilmInfo


def limit_threads(n: int) -> None:
    """Cap the numeric libraries of this worker process at ``n`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    cv2.setNumThreads(n)


def header_only(rad: Radiograph) -> Any:
    """The DICOM header of ``rad`` without its pixel data (cheap to send between processes)."""
    header = rad.header
    if header is not None and "PixelData" in header:
        header = header.copy()
        del header.PixelData
    return header


def read_info(rad: Radiograph) -> dict[str, str]:
    """The ``read`` entry of a result: how the file was stored and which decoder read it."""
    header = rad.header
    if header is not None:
        kind = "dicom"
    else:
        kind = os.path.splitext(rad.path)[1].lower().lstrip(".")
        kind = {"jpg": "jpeg", "tif": "tiff"}.get(kind, kind)
    return {
        "syntax": syntax_label(header, kind),
        "decoder": rad.source.codec_name if rad.source is not None else "full",
    }


@dataclass
class Prepared:
    """Mode "main": what a worker hands to the main process for one film (and what
    :meth:`WorkerContext.finish` needs back: ``coarse`` and ``shm_name`` are then None)."""

    path: str
    info: FilmInfo
    header: Any
    thumb: np.ndarray | None
    coarse: CoarseView | None  # what the coarse network sees (coarse_to_fine.coarse_input)
    shm_name: str | None  # the decoded film in shared memory (None: read progressively)
    shape: tuple[int, int]
    timings: dict[str, float]
    source: FilmPixels | None = None  # a progressive read's pixel source (no shared memory)
    how: dict[str, str] | None = None  # read_info

    def stripped(self) -> Prepared:
        """What ``finish`` needs (no coarse array, no shared memory, no pixel source)."""
        return Prepared(
            self.path,
            self.info,
            self.header,
            self.thumb,
            None,
            None,
            self.shape,
            self.timings,
            None,
            self.how,
        )


@dataclass
class WorkerContext:
    """One worker process's state for one run."""

    opts: EngineOptions
    cfg: GeometryConfig
    geometry: LocatorGeometry
    locator: Locator | None = None  # mode "worker": the networks run in this process

    @classmethod
    def create(
        cls, opts: EngineOptions, *, networks: bool, spec: LocatorSpec | None = None
    ) -> WorkerContext:
        """This process's context; ``networks``: load the locator here (mode "worker").
        ``spec``: the locator spec when the caller has it (else read from the checkpoint)."""
        limit_threads(1)
        cfg = load_config(opts.config)
        if networks:
            torch.set_num_threads(1)
            locator = load_locator(opts.model, device="cpu")
            return cls(opts, cfg, locator, locator)
        if spec is None:
            spec = LocatorSpec.from_dict(load_checkpoint(opts.model)["spec"])
        return cls(opts, cfg, LocatorGeometry(spec))

    # ------------------------------------------------------------ pieces
    def read(self, path: str) -> Radiograph:
        """Read one input file with this run's options (spacing override, size limit)."""
        opts = self.opts
        rad = read_radiograph(
            path,
            spacing_override_mm=opts.spacing_mm,
            max_pixels=opts.max_pixels,
            decoder=opts.decoder,
            overview_height=opts.overview_height,
        )
        if opts.require_spacing and rad.spacing_mm is None:
            raise SpacingError(
                f"{path}: no pixel spacing (mm outputs were asked: --require-spacing)"
            )
        return rad

    def thumbnail(self, rad: Radiograph) -> np.ndarray | None:
        return thumbnail(rad.pixels, self.opts.overlay_height) if self.opts.overlay else None

    def fail(
        self,
        path: str,
        exc: BaseException | str,
        reason: FailureReason | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """The failed result of ``path`` (its JSON written)."""
        return fail_and_write(path, exc, self.opts, reason, timings)

    # ------------------------------------------------------------ tasks
    def full(self, path: str) -> dict[str, Any]:
        """Mode "worker": everything for one file; returns its result dict (outputs written)."""
        assert self.locator is not None, "mode worker: the context holds the networks"
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            rad = self.read(path)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, never raised
            return self.fail(path, exc, timings={"read": time.perf_counter() - t0})
        t1 = time.perf_counter()
        timings["read"] = t1 - t0
        try:
            thumb = self.thumbnail(rad)
            legs = locate_films(self.locator, [radiograph_film(rad)])[0]
            t2 = time.perf_counter()
            timings["locate"] = t2 - t1
            info = FilmInfo.from_radiograph(rad)
            header = header_only(rad)
            how = read_info(rad)
            del rad
            result = result_from_legs(
                info, legs, self.cfg, model_name=self.opts.model_name, timings_s=timings
            )
            result.timings_s["measure"] = time.perf_counter() - t2
            d = result.to_dict()
            d["read"] = how
        except Exception as exc:  # noqa: BLE001
            return self.fail(path, exc, FailureReason.INTERNAL_ERROR)
        return finish_outputs(d, header, thumb, self.opts)

    def prepare(self, path: str) -> Prepared | dict[str, Any]:
        """Mode "main": read, normalise, coarse input, thumbnail; the film goes to shared
        memory (a progressive read hands its pixel source instead: it decodes the crops
        on demand in the main process)."""
        t0 = time.perf_counter()
        try:
            rad = self.read(path)
        except Exception as exc:  # noqa: BLE001
            return self.fail(path, exc, timings={"read": time.perf_counter() - t0})
        t1 = time.perf_counter()
        try:
            source = rad.source
            coarse = coarse_input(self.geometry, source or ArrayPixels(rad.pixels))
            thumb = self.thumbnail(rad)
            name = (
                None
                if source is not None
                else to_shared(
                    np.ascontiguousarray(rad.pixels, dtype=np.float32),
                    shm_prefix(self.opts.out_dir),
                )
            )
            return Prepared(
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
        except Exception as exc:  # noqa: BLE001
            return self.fail(path, exc, FailureReason.INTERNAL_ERROR)

    def finish(
        self, p: Prepared, legs: list[LegLandmarks], timings: dict[str, float]
    ) -> dict[str, Any]:
        """Mode "main": measure, plan and write the outputs of one located film."""
        t0 = time.perf_counter()
        try:
            result = result_from_legs(
                p.info, legs, self.cfg, model_name=self.opts.model_name, timings_s=timings
            )
            result.timings_s["measure"] = time.perf_counter() - t0
            d = result.to_dict()
            if p.how:
                d["read"] = p.how
        except Exception as exc:  # noqa: BLE001
            return self.fail(p.path, exc, FailureReason.INTERNAL_ERROR)
        return finish_outputs(d, p.header, p.thumb, self.opts)


def fail_and_write(
    path: str,
    exc: BaseException | str,
    opts: EngineOptions,
    reason: FailureReason | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A failed file's result with its JSON written (an internal error keeps the end of
    its traceback)."""
    d = failure_dict(path, exc, reason)
    if isinstance(exc, BaseException) and reason is FailureReason.INTERNAL_ERROR:
        d["traceback_tail"] = "".join(traceback.format_exception(exc, limit=-3))[-2000:]
    if timings:
        d["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    return finish_outputs(d, None, None, opts)


# ================================================================ the local process pool
# This worker process's context, set by the pool initialiser (one per process).
_POOL: dict[str, Any] = {}


def init_pool_worker(opts: EngineOptions, mode: str) -> None:
    """Set up this pool worker's context (``pool_start.start_pool_worker`` calls it).
    A failure is not raised (the pool would only see a dead process) but kept: every
    task answers with it and the main process stops the run."""
    _POOL.clear()
    try:
        _POOL["ctx"] = WorkerContext.create(opts, networks=mode == "worker")
    except Exception as exc:  # noqa: BLE001
        _POOL["init_error"] = one_line(exc)


def _context() -> WorkerContext | dict[str, Any]:
    if "init_error" in _POOL:
        return {INIT_ERROR: _POOL["init_error"]}
    return _POOL["ctx"]


INIT_ERROR = "__init_error__"  # the key of a task's answer when its worker could not start


def pool_full(path: str) -> dict[str, Any]:
    ctx = _context()
    return ctx if isinstance(ctx, dict) else ctx.full(path)


def pool_prepare(path: str) -> Prepared | dict[str, Any]:
    ctx = _context()
    return ctx if isinstance(ctx, dict) else ctx.prepare(path)


def pool_finish(p: Prepared, legs: list[LegLandmarks], timings: dict[str, float]) -> dict[str, Any]:
    ctx = _context()
    return ctx if isinstance(ctx, dict) else ctx.finish(p, legs, timings)
