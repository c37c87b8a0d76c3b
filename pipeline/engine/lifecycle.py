"""What keeps a run from leaving things behind or stepping on other runs' files.

- ``watch_parent()``: a worker process dies with the main process (kernel parent-death
  signal, a pidfd watch of the main process, and no worker keeping the forkserver
  alive), so a ``kill -9`` of the main process takes the workers and the forkserver
  with it; the resource tracker exits when the last of them has (it then unlinks any
  shared memory still registered).
- ``Terminated`` / ``terminate_as_interrupt()``: SIGTERM is handled like Ctrl-C (the
  results so far are written), and the run exits 143 instead of 130.
- ``OutputLock``: an exclusive ``flock`` on ``DIR/.legalign-lock`` for the whole run;
  a second run on the same ``--out`` fails at once.
- ``check_out_folder()``: an ``--out`` that holds files but no legalign marker is
  someone else's folder: refused unless ``--overwrite``.
- temporary files are named ``.<name>.legalign-tmp-<pid>``; start-up cleanup removes
  only those (``is_own_temp``), never another program's ``.*tmp*`` files.
- shared memory: segment names carry a prefix derived from the output folder
  (``shm_prefix``); start-up removes segments with that prefix that a killed run left.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from multiprocessing import forkserver
from pathlib import Path

from legalign.pipeline.errors import LegalignError
from legalign.pipeline.outputs.image_json import TMP_TAG, is_own_temp, temp_name

__all__ = ["TMP_TAG", "is_own_temp", "temp_name"]

LOCK_NAME = ".legalign-lock"
_PR_SET_PDEATHSIG = 1


def watch_parent(main_pid: int | None = None) -> None:
    """Make this worker process die with the run's main process.

    Pool workers are children of the multiprocessing forkserver.  Three things together:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills the worker when the forkserver
    exits); closing the worker's inherited copy of the forkserver's "alive" pipe (the
    forkserver exits when the main process's end closes, but only once no worker holds
    another copy of it); and, where ``main_pid`` is given, a thread that waits on a
    pidfd of the main process and kills this worker when it exits (Linux 5.3+)."""
    if not sys.platform.startswith("linux"):
        return
    _pdeathsig(signal.SIGKILL)
    _close_forkserver_alive_fd()
    if main_pid is not None:
        _watch_pid(main_pid)


def _pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before we armed it
        os._exit(1)
    return True


def _close_forkserver_alive_fd() -> None:
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _watch_pid(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):
        return

    def wait() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="legalign-watch-main", daemon=True).start()


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the same clean-up runs."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """In the main thread: SIGTERM raises ``Terminated`` (a KeyboardInterrupt) for the
    duration, then the previous handler is restored."""
    if not _in_main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def out_error(path: os.PathLike[str] | str, exc: OSError, what: str) -> LegalignError:
    """A one-line usage error for an output folder problem (read-only, full, under a file)."""
    reason = exc.strerror or type(exc).__name__
    return LegalignError(f"{os.fspath(path)}: {what} ({reason})")


def check_out_folder(out: Path, marker: str, overwrite: bool) -> None:
    """Refuse an existing, non-empty ``out`` that was not written by legalign (no
    ``marker``), unless ``overwrite``: a run writes results.csv, summary.json, ... there."""
    if overwrite or not out.is_dir() or (out / marker).exists():
        return
    try:
        entries = [e for e in os.listdir(out) if not e.startswith(".")]
    except OSError as exc:
        raise out_error(out, exc, "--out cannot be listed") from None
    if entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise LegalignError(
            f"{out}: --out holds files that no legalign run wrote ({len(entries)}: {shown}); "
            "choose an empty or new folder, or pass --overwrite"
        )


class OutputLock:
    """Exclusive lock on the output folder for the life of a run."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise out_error(self.path, exc, "cannot create the run lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise LegalignError(
                f"{self.path.parent}: another legalign run is using this --out{who}; "
                "wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def shm_prefix(out: Path) -> str:
    """Shared-memory name prefix of runs writing to ``out`` (short: names are limited)."""
    digest = hashlib.blake2b(os.fsencode(os.path.realpath(out)), digest_size=5).hexdigest()
    return f"legalign_{digest}_"


def clean_stale_shm(prefix: str, shm_dir: str = "/dev/shm") -> int:
    """Unlink shared-memory segments named ``prefix*`` (left by a killed run on the same
    --out; the caller holds the output lock, so no live run owns them)."""
    removed = 0
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(shm_dir, name))
                removed += 1
    return removed
