"""Notebook API: one call analyses one image and returns a typed result.

    >>> from legalign.pipeline.api import analyse
    >>> result = analyse("film.dcm")            # doctest: +SKIP
    >>> result.legs[0].measurements.hka_deg     # doctest: +SKIP

The batch engines (``legalign run``) use the same pieces: ``pipeline.coarse_to_fine``
locates, ``pipeline.assemble.result_from_legs`` turns landmarks into measurements, plans,
null reasons and statuses, ``pipeline.results`` holds the typed results and
``pipeline.failures`` the failed ones.

Planning support only: every plan is a proposal for a clinician to check, not a
clinical decision.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from legalign.pipeline.assemble import build_leg, result_from_legs
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.errors import InputError, SpacingError
from legalign.pipeline.geometry_config import GeometryConfig, load_geometry_config
from legalign.pipeline.locate import Locator
from legalign.pipeline.radiograph import Radiograph
from legalign.pipeline.read import read_radiograph
from legalign.pipeline.results import DISCLAIMER, FilmInfo, ImageResult, Landmark, LegResult

__all__ = [
    "DISCLAIMER",
    "FilmInfo",
    "ImageResult",
    "Landmark",
    "LegResult",
    "analyse",
    "build_leg",
    "result_from_legs",
    "load_config",
    "load_locator",
    "radiograph_from",
]


def load_config(config: str | Path | GeometryConfig | None = None) -> GeometryConfig:
    """A GeometryConfig from None (defaults), a path, or a GeometryConfig."""
    if isinstance(config, GeometryConfig):
        return config
    return load_geometry_config(config)


def load_locator(model: str | Path | Locator | None = None, device: str = "cpu") -> Locator:
    """A Locator from None (shipped default), a checkpoint path, or a Locator."""
    if isinstance(model, Locator):
        return model
    return Locator.from_checkpoint(None if model is None else str(model), device=device)


def analyse(
    path_or_array: str | Path | np.ndarray,
    *,
    model: str | Path | Locator | None = None,
    spacing_mm: float | None = None,
    config: str | Path | GeometryConfig | None = None,
    device: str = "cpu",
) -> ImageResult:
    """Analyse one image.

    ``path_or_array``: a DICOM / PNG / JPEG / TIFF path, or a 2-D array (any numeric
    dtype; scaled to [0, 1], bone bright).  ``model``: None (the shipped default), a
    checkpoint path, or a ``Locator`` (pass one to analyse many images without
    reloading).  ``spacing_mm`` overrides the file's spacing.  ``config``: None, a YAML
    path merged over configs/geometry.yaml, or a ``GeometryConfig``.

    Input problems raise ``InputError``; "no leg found" is a result with status "failed".
    """
    cfg = load_config(config)
    locator = load_locator(model, device=device)
    t0 = time.perf_counter()
    rad = radiograph_from(path_or_array, spacing_mm=spacing_mm)
    t1 = time.perf_counter()
    legs = locate_radiographs(locator, [rad])[0]
    t2 = time.perf_counter()
    result = result_from_legs(
        FilmInfo.from_radiograph(rad),
        legs,
        cfg,
        model_name=getattr(locator, "name", None),
        timings_s={"read": t1 - t0, "locate": t2 - t1},
    )
    result.timings_s["measure"] = time.perf_counter() - t2
    return result


def radiograph_from(
    path_or_array: str | Path | np.ndarray, *, spacing_mm: float | None = None
) -> Radiograph:
    """A Radiograph from a path (the readers) or an array (normalised here)."""
    if isinstance(path_or_array, np.ndarray):
        arr = np.asarray(path_or_array)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., :3].mean(axis=2)
        if arr.ndim != 2 or arr.size == 0:
            raise InputError(f"array: expected a 2-D greyscale image, got shape {arr.shape}")
        arr = arr.astype(np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise InputError("array: constant or non-finite image")
        if spacing_mm is not None and not spacing_mm > 0:
            raise SpacingError(f"array: spacing must be positive, got {spacing_mm}")
        return Radiograph(
            path="<array>",
            pixels=(arr - lo) / (hi - lo),
            spacing_mm=spacing_mm,
            spacing_source="user" if spacing_mm is not None else None,
        )
    return read_radiograph(str(path_or_array), spacing_override_mm=spacing_mm)
