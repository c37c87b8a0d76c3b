"""Decoded films handed from a worker process to the main process through shared memory
(one copy, no pickling): the worker creates the block, the main process owns it from
then on and unlinks it once the film's crops are cut."""

from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

import numpy as np


def to_shared(arr: np.ndarray) -> str:
    """Copy ``arr`` into a new shared-memory block; returns the block's name."""
    shm = shared_memory.SharedMemory(create=True, size=max(1, arr.nbytes))
    try:
        view: np.ndarray = np.ndarray(arr.shape, dtype=arr.dtype, buffer=shm.buf)
        view[...] = arr
        del view
        name = shm.name
    finally:
        shm.close()
    # the main process owns it from here (it unlinks it after cutting the crops)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        pass
    return name


class SharedFilm:
    """A film in shared memory, attached in the main process; unlinked on release."""

    def __init__(self, name: str, shape: tuple[int, int]) -> None:
        self.shm = shared_memory.SharedMemory(name=name)
        self.array: np.ndarray | None = np.ndarray(shape, dtype=np.float32, buffer=self.shm.buf)

    def view(self) -> np.ndarray:
        """The film's pixels (valid until ``release``)."""
        assert self.array is not None, "released"
        return self.array

    def release(self) -> None:
        self.array = None
        try:
            self.shm.close()
        finally:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass


def release_shared(name: str) -> None:
    """Unlink a block by name (a film that never reached the networks)."""
    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
