"""Landmark datasets: COCO keypoints, LabelMe points, long CSV and synthetic films.

Every dataset is a sequence of ``AnnotatedFilm`` (``len(ds)``, ``ds[i]``); images are
read lazily when indexed (``cache=True`` keeps them in memory).  Annotations are
validated when the dataset is built: an unknown landmark name, a point outside the
image, a missing image file, a bad side or malformed JSON/CSV raise
``pipeline.errors.InputError`` with a one-line message naming the file.  Missing
landmarks are simply absent from ``LegLandmarks.points``: mask them in the loss.

``load_dataset(spec)`` picks the reader from the spec:

- ``path/to/file.json``  -> ``CocoKeypointDataset``
- ``path/to/folder``     -> ``LabelMeDataset`` (a folder of LabelMe ``*.json``)
- ``path/to/file.csv``   -> ``CsvDataset``
- ``synthetic:N[:small|native]`` -> ``SyntheticDataset(N, size=...)``
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from legalign.pipeline.errors import InputError

from .base import AnnotatedFilm, FilmDataset, in_memory, load_image
from .coco import CocoKeypointDataset
from .labelme import LabelMeDataset
from .synthetic import SyntheticDataset
from .tabular import CsvDataset

__all__ = [
    "in_memory",
    "AnnotatedFilm",
    "CocoKeypointDataset",
    "ConcatFilms",
    "CsvDataset",
    "FilmDataset",
    "LabelMeDataset",
    "SubsetFilms",
    "SyntheticDataset",
    "load_dataset",
    "load_image",
    "split_indices",
    "train_val_split",
]


def load_dataset(spec: str | Path, **kw) -> FilmDataset:
    """Open a dataset from a path or ``synthetic:N[:small|native]`` (see module docstring).

    Keyword arguments go to the dataset class (e.g. ``cache=True``, ``image_root=...``
    for COCO, ``seed=...`` / ``spacing_range=...`` for synthetic).
    """
    text = str(spec)
    if text.startswith("synthetic:"):
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise InputError(f"{text}: expected synthetic:N or synthetic:N:small|native")
        size = parts[2] if len(parts) == 3 else kw.pop("size", "small")
        if size not in ("small", "native"):
            raise InputError(f"{text}: size must be 'small' or 'native', got {size!r}")
        return SyntheticDataset(int(parts[1]), size=size, **kw)
    path = Path(text)
    if path.is_dir():
        return LabelMeDataset(path, **kw)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InputError(
            f"{path}: unknown dataset kind (expected a COCO .json, a LabelMe folder, "
            "a .csv or synthetic:N)"
        )
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if suffix == ".json":
        return CocoKeypointDataset(path, **kw)
    return CsvDataset(path, **kw)


class SubsetFilms(FilmDataset):
    """The films of ``base`` at ``indices`` (in that order)."""

    def __init__(self, base: Sequence[AnnotatedFilm], indices: Sequence[int]) -> None:
        super().__init__(cache=False)
        self.base = base
        self.indices = [int(i) for i in indices]
        n = len(base)
        for i in self.indices:
            if not 0 <= i < n:
                raise IndexError(f"subset index {i} out of range for {n} films")

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index: int) -> AnnotatedFilm:
        return self.base[self.indices[index]]


class ConcatFilms(FilmDataset):
    """Several datasets one after the other (e.g. real + synthetic)."""

    def __init__(self, datasets: Sequence[Sequence[AnnotatedFilm]]) -> None:
        super().__init__(cache=False)
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _load(self, index: int) -> AnnotatedFilm:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.datasets[k][index - int(self.offsets[k])]


def split_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A reproducible random split of ``range(n)`` into (train, val) index lists."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return train, val


def train_val_split(
    dataset: Sequence[AnnotatedFilm], val_fraction: float, seed: int = 0
) -> tuple[SubsetFilms, SubsetFilms]:
    train, val = split_indices(len(dataset), val_fraction, seed)
    return SubsetFilms(dataset, train), SubsetFilms(dataset, val)
