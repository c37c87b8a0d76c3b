"""The coarse-to-fine stage: the one implementation of the locator's loop.

    whole film --coarse input--> coarse net --decode--> legs (CoarseResult)
        repeat ``spec.fine_iterations`` times:
            crops around each joint --fine net--> re-centred legs (middle passes)
                                                  or final landmarks (last pass)

The Python API (``pipeline.api.analyse``), both modes of the local engine and the Ray
engine all go through the functions here.  The single-machine callers use
:func:`locate_films`; the Ray engine runs the same steps as separate dataset stages
(:func:`coarse_input`, :func:`coarse_heatmaps` + ``Locator.decode_coarse``,
:func:`fine_inputs`, :func:`fine_heatmaps` + :func:`next_legs`), in the order
:func:`locate_films` runs them.

Pixels come from a :class:`FilmPixels`: something that can give the whole film through
a 2x3 letterbox matrix at the coarse canvas size, and a crop through a 2x3 image->crop
matrix at the fine size.  :class:`ArrayPixels` (a decoded film in memory) is the
default; a reader that can decode at reduced resolution or decode a region only can
supply its own.  The result must be what ``models.crops.warp`` of the full-resolution
film through the same matrix gives (up to the decoder's own resampling).

Networks run batched across films (``per_film=False``) or one film at a time
(``per_film=True``: a CPU convolution's last bits depend on the batch it runs in, so a
caller that must match the one-film-per-call path bit for bit asks for this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from legalign.models.crops import warp
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.locate import (
    CoarseResult,
    CoarseView,
    FilmShape,
    FineInputs,
    Locator,
    LocatorGeometry,
)
from legalign.pipeline.radiograph import Radiograph


class FilmPixels(Protocol):
    """Where the stage reads a film's pixels (float32 [0, 1], bone bright).

    ``height`` x ``width`` is the film's full-resolution size: every matrix maps
    full-resolution pixel coordinates to output coordinates.
    """

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def whole(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The whole film through ``matrix`` (a letterbox: a reduced-resolution decode
        serves it) as float32 (size[0], size[1])."""
        ...

    def crop(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A small region through ``matrix`` (a region decode serves it) as float32
        (size[0], size[1])."""
        ...


@dataclass(frozen=True)
class ArrayPixels:
    """The default :class:`FilmPixels`: a decoded film held in memory."""

    pixels: np.ndarray

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def whole(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return warp(self.pixels, matrix, size)

    def crop(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return warp(self.pixels, matrix, size)


@dataclass(frozen=True)
class Film:
    """One film going through the stage: its layout (size, DICOM mirrored/laterality,
    for the coarse decode) and where its pixels come from."""

    shape: FilmShape
    pixels: FilmPixels


def film_of(radiograph: FilmShape, pixels: np.ndarray) -> Film:
    """A :class:`Film` over a decoded array (``Radiograph`` and ``FilmInfo`` are layouts)."""
    return Film(radiograph, ArrayPixels(pixels))


def radiograph_film(radiograph: Radiograph) -> Film:
    """A :class:`Film` over a read radiograph: its progressive ``source`` (decodes the
    reduced level or the region each step needs) when it was read that way, else its
    decoded pixels."""
    if radiograph.source is not None:
        return Film(radiograph, radiograph.source)
    return film_of(radiograph, radiograph.pixels)


# ------------------------------------------------------------------ per film (no networks)
def coarse_input(geometry: LocatorGeometry, pixels: FilmPixels) -> CoarseView:
    """What the coarse network sees of the film (``LocatorGeometry.coarse_view``): its
    exposed region letterboxed into the coarse canvas and, for a film wide enough for
    two legs, each half alone."""
    spec = geometry.spec
    size = (spec.coarse_height, spec.coarse_width)
    return geometry.coarse_view(
        pixels.height,
        pixels.width,
        lambda matrix: np.asarray(pixels.whole(matrix, size), dtype=np.float32),
    )


def fine_inputs(
    geometry: LocatorGeometry, pixels: FilmPixels | None, coarse: CoarseResult
) -> FineInputs:
    """Crops around each joint of each coarse leg (``pixels`` may be None when the film
    has no legs: nothing is cut)."""
    s = geometry.spec.fine_size
    crops, mats, items = [], [], []
    for li, leg in enumerate(coarse.legs):
        for name, A in geometry.crop_matrices(leg):
            assert pixels is not None, "a film with legs needs its pixels for the crops"
            crops.append(pixels.crop(A, (s, s)))
            mats.append(A)
            items.append((li, name))
    arr = np.stack(crops)[:, None] if crops else np.zeros((0, 1, s, s), np.float32)
    return FineInputs(crops=arr.astype(np.float32, copy=False), matrices=mats, items=items)


# ------------------------------------------------------------------ batched (networks)
def _forward(
    predict: Callable[[np.ndarray], np.ndarray], per_film: Sequence[np.ndarray], one_by_one: bool
) -> list[np.ndarray]:
    """One network over several films' inputs; the outputs split back per film."""
    counts = [len(x) for x in per_film]
    if not per_film:
        return []
    if one_by_one:
        return [predict(x) if len(x) else predict(x)[:0] for x in per_film]
    out = predict(np.concatenate(list(per_film), axis=0))
    if len(out) == 0:
        return [out] * len(per_film)
    return list(np.split(out, np.cumsum(counts)[:-1]))


def coarse_heatmaps(
    locator: Locator, inputs: Sequence[CoarseView], *, per_film: bool = False
) -> list[np.ndarray]:
    """Coarse heatmaps (V, K, h, w) of each film from its ``coarse_input`` (V canvases)."""
    return _forward(locator.predict_coarse, [v.images for v in inputs], per_film)


def fine_heatmaps(
    locator: Locator, inputs: Sequence[FineInputs], *, per_film: bool = False
) -> list[np.ndarray]:
    """Fine heatmaps (M, K, h, w) of each film's crops."""
    return _forward(locator.predict_fine, [fi.crops for fi in inputs], per_film)


def next_legs(
    geometry: LocatorGeometry,
    coarse: CoarseResult,
    inputs: FineInputs,
    heatmaps: np.ndarray,
    *,
    last: bool,
) -> CoarseResult | list[LegLandmarks]:
    """After a fine pass: the legs re-centred for the next pass, or (``last``) the
    film's final landmarks."""
    if last:
        return geometry.decode_fine(coarse, inputs, heatmaps)
    return geometry.recentre(coarse, inputs, heatmaps)


# ------------------------------------------------------------------ the loop
def locate_films(
    locator: Locator,
    films: Sequence[Film],
    *,
    coarse_inputs: Sequence[CoarseView] | None = None,
    per_film: bool = False,
) -> list[list[LegLandmarks]]:
    """Every film through the whole stage; both networks batched across the films.

    ``coarse_inputs``: the films' ``coarse_input`` when already cut (the local engine
    cuts them in its worker processes).
    """
    if not films:
        return []
    if coarse_inputs is None:
        coarse_inputs = [coarse_input(locator, f.pixels) for f in films]
    heat = coarse_heatmaps(locator, coarse_inputs, per_film=per_film)
    legs: list[CoarseResult] = [
        locator.decode_coarse(h, f.shape, v)
        for h, f, v in zip(heat, films, coarse_inputs, strict=True)
    ]
    n = locator.spec.fine_iterations
    for it in range(n):
        inputs = [fine_inputs(locator, f.pixels, c) for f, c in zip(films, legs, strict=True)]
        fheat = fine_heatmaps(locator, inputs, per_film=per_film)
        if it + 1 < n:
            legs = [
                locator.recentre(c, fi, fh) for c, fi, fh in zip(legs, inputs, fheat, strict=True)
            ]
        else:
            return [
                locator.decode_fine(c, fi, fh)
                for c, fi, fh in zip(legs, inputs, fheat, strict=True)
            ]
    raise AssertionError("spec.fine_iterations >= 1 is checked when the spec is loaded")


def locate_radiographs(
    locator: Locator, radiographs: Sequence[Radiograph]
) -> list[list[LegLandmarks]]:
    """:func:`locate_films` over read radiographs (see :func:`radiograph_film`)."""
    return locate_films(locator, [radiograph_film(r) for r in radiographs])
