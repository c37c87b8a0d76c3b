"""Synthetic films made on the fly by ``training.synth.generate_film``.

Film ``i`` of ``SyntheticDataset(n, seed=s)`` is ``generate_film(s + i, ...)``, so a
dataset is reproducible and two datasets with disjoint seed ranges never share a film
(e.g. train ``seed=0``, validation ``seed=1_000_000``).  With ``spacing_range=(lo, hi)``
the spacing of film ``i`` is drawn uniformly from it with a generator seeded by
``s + i``; otherwise the generator picks its own.  ``distractors=False`` asks the
generator for films without ruler, markers, implants, collimation and mirroring.  The uint16 image is converted to
float32 in [0, 1] by dividing by ``2**bits_stored - 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from legalign.training.synth import generate_film

from .base import AnnotatedFilm, FilmDataset

SIZES = ("small", "native")
LEG_CHOICES = ("both", "right", "left")


def film_from_synthetic(film: Any, seed: int) -> AnnotatedFilm:
    """Convert a ``training.synth.SyntheticFilm`` to an ``AnnotatedFilm``."""
    bits = int(film.bits_stored)
    image = np.asarray(film.image)
    scale = float(2**bits - 1)
    pixels = np.clip(image.astype(np.float32) / scale, 0.0, 1.0)
    mirrored = getattr(film, "mirrored", None)
    return AnnotatedFilm(
        source=f"synthetic:{seed}",
        image=np.ascontiguousarray(pixels),
        legs=list(film.legs),
        spacing_mm=None if film.spacing_mm is None else float(film.spacing_mm),
        mirrored=None if mirrored is None else bool(mirrored),
        meta={"seed": seed, "bits_stored": bits, "params": getattr(film, "params", None)},
    )


class SyntheticDataset(FilmDataset):
    """``n`` synthetic films, generated when indexed (see the module docstring)."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        size: str = "small",
        spacing_range: tuple[float, float] | None = None,
        legs: str = "both",
        cache: bool = False,
        distractors: bool = True,
        generator=None,
    ) -> None:
        super().__init__(cache=cache)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        if legs not in LEG_CHOICES:
            raise ValueError(f"legs must be one of {LEG_CHOICES}, got {legs!r}")
        if spacing_range is not None:
            lo, hi = (float(v) for v in spacing_range)
            if not (0 < lo <= hi):
                raise ValueError(f"spacing_range must be 0 < lo <= hi, got {spacing_range!r}")
            spacing_range = (lo, hi)
        self.n = n
        self.seed = int(seed)
        self.size = size
        self.spacing_range = spacing_range
        self.legs = legs
        self.distractors = bool(distractors)
        self._generator = generator  # injectable for tests; default training.synth

    def __len__(self) -> int:
        return self.n

    def spacing_for(self, seed: int) -> float | None:
        if self.spacing_range is None:
            return None
        lo, hi = self.spacing_range
        return float(np.random.default_rng([seed, 0x5BAC]).uniform(lo, hi))

    def _generate(self, seed: int) -> Any:
        kwargs: dict[str, Any] = {
            "size": self.size,
            "legs": self.legs,
            "spacing_mm": self.spacing_for(seed),
        }
        gen = self._generator
        if gen is None:
            gen = generate_film
        if not self.distractors:
            kwargs["distractors"] = False
        return gen(seed, **kwargs)

    def _load(self, index: int) -> AnnotatedFilm:
        seed = self.seed + index
        if self.cache and index in self._cache:
            return self._cache[index]
        film = film_from_synthetic(self._generate(seed), seed)
        if self.cache:
            self._cache[index] = film
        return film
