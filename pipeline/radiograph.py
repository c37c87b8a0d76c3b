"""The normalised radiograph handed from the readers to the locator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Radiograph:
    """One film, decoded and normalised for display.

    ``pixels`` is float32, H x W, in [0, 1], bone bright (MONOCHROME2 sense) after the
    modality LUT and VOI window (MONOCHROME1 inverted after VOI).
    ``spacing_mm`` is the isotropic pixel spacing in the patient plane, or None when
    unknown; ``spacing_source`` says where it came from (see docs/clinical-geometry.md,
    "Calibration"), e.g. "PixelSpacing", "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
    "ImagerPixelSpacing (no magnification correction)", "user", or None.
    ``mirrored`` is True when DICOM orientation says the patient's right is on the
    viewer's right (the film is mirrored against the standard AP display), False when
    it says standard display, None when the file does not say.
    ``laterality`` is "R", "L", "B" (both) or None, from ImageLaterality/Laterality.

    A film read resolution-progressively (``pipeline.read.progressive``, a compressed
    DICOM read with ``decoder`` other than "full") carries ``source``, which decodes the
    whole film at a reduced level or a region on demand (a ``coarse_to_fine.FilmPixels``);
    its ``pixels`` are then only the film at a reduced resolution level (an overview for
    thumbnails, ``pixels_matrix`` maps full-resolution pixels to it) and ``height`` /
    ``width`` are the full-resolution size, from ``full_size``.
    """

    path: str
    pixels: np.ndarray
    spacing_mm: float | None = None
    spacing_source: str | None = None
    mirrored: bool | None = None
    laterality: str | None = None
    modality: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    bits_stored: int | None = None
    # The DICOM header (pydicom Dataset, without pixel data) when the source is DICOM;
    # used to place derived objects (SR, Secondary Capture) in the source's study.
    header: Any = field(default=None, repr=False)
    source: Any = field(default=None, repr=False)
    full_size: tuple[int, int] | None = None
    pixels_matrix: np.ndarray | None = field(default=None, repr=False)

    @property
    def height(self) -> int:
        return int(self.full_size[0] if self.full_size else self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.full_size[1] if self.full_size else self.pixels.shape[1])

    @property
    def progressive(self) -> bool:
        """Whether ``pixels`` is a reduced overview and ``source`` holds the film."""
        return self.source is not None
