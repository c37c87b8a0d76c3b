"""Decoded films handed from a worker process to the main process through shared memory
(one copy, no pickling): the worker creates the block, the main process owns it from
then on and unlinks it once the film's crops are cut.

Blocks are named with the run's prefix (``lifecycle.shm_prefix``) and stay registered
with the run's resource tracker (shared by all its processes): if the main process dies
before unlinking a block, the tracker unlinks it when the last process of the run is
gone, and the next run on the same output folder removes any that are left."""

from __future__ import annotations

import uuid
from multiprocessing import shared_memory

import numpy as np


def to_shared(arr: np.ndarray, prefix: str) -> str:
    """Copy ``arr`` into a new shared-memory block named ``prefix`` + a random part;
    returns the block's name."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, arr.nbytes))
    try:
        view: np.ndarray = np.ndarray(arr.shape, dtype=arr.dtype, buffer=shm.buf)
        view[...] = arr
        del view
        name = shm.name
    finally:
        shm.close()
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
