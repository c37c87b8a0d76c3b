"""The first thing a local pool worker process runs (its ``initializer``).

It registers the parent-death watch (``lifecycle.watch_parent``) before anything heavy is
imported: importing the worker's modules (PyTorch, OpenCV, pydicom) takes seconds, and a
worker still importing when the main process is killed would otherwise outlive it for
those seconds.  This module is light on purpose; the worker module is imported inside
:func:`start_pool_worker`, after the watch.
"""

from __future__ import annotations

from legalign.pipeline.engine.lifecycle import watch_parent
from legalign.pipeline.engine.options import EngineOptions


def start_pool_worker(main_pid: int, opts: EngineOptions, mode: str) -> None:
    """Die with ``main_pid`` (even under kill -9), then set up this worker's context."""
    watch_parent(main_pid)
    # heavy (PyTorch): imported only once the watch is in place (see the module docstring)
    from legalign.pipeline.engine.worker import init_pool_worker  # noqa: PLC0415

    init_pool_worker(opts, mode)
