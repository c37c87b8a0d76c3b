"""Pixel spacing from DICOM tags or the user (docs/clinical-geometry.md, "Calibration").

Rules, first match wins:

1. A user-given spacing (``--spacing``): source ``"user"``.
2. ``PixelSpacing`` (0028,0030), the patient plane: source ``"PixelSpacing"`` -- unless it
   merely repeats ``ImagerPixelSpacing`` (equal within 0.1 %) without a
   ``PixelSpacingCalibrationType``.  Such a copy is the detector spacing, not a calibration
   (many CR/DX exporters write it), so it falls through to rule 3 / 4.
3. ``ImagerPixelSpacing`` (0018,1164) / ``EstimatedRadiographicMagnificationFactor``
   (0018,1114): source ``"ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"``.
4. ``ImagerPixelSpacing`` alone: source ``"ImagerPixelSpacing (no magnification
   correction)"`` -- 5-20 % larger than the patient-plane spacing.
5. Nothing: ``(None, None)``; mm outputs are then not reported.

Non-isotropic spacing (row and column spacing differ by more than 1 %), zero, negative,
non-numeric or non-finite values, and a spacing or magnification factor outside the
plausibility bounds of ``configs/input_limits.yaml`` raise ``InputError`` (reason
``no_spacing``) naming the file.
"""

from __future__ import annotations

import math
from typing import Any

from legalign.pipeline.errors import SpacingError
from legalign.pipeline.read.limits import InputLimits, default_input_limits

SOURCE_USER = "user"
SOURCE_PIXEL = "PixelSpacing"
SOURCE_IMAGER_MAG = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
SOURCE_IMAGER = "ImagerPixelSpacing (no magnification correction)"

ISOTROPY_TOLERANCE = 0.01
_COPY_TOLERANCE = 0.001


def _positive(value: Any, path: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpacingError(f"{path}: {what} is not a number ({value!r})") from None
    if not math.isfinite(v) or v <= 0:
        raise SpacingError(f"{path}: {what} must be a positive number, got {value!r}")
    return v


def _plausible(value: float, bounds: Any, path: str, what: str) -> float:
    if value not in bounds:
        raise SpacingError(
            f"{path}: implausible {what} {value:.6g} (outside {bounds.min:g}-{bounds.max:g}, "
            "configs/input_limits.yaml)"
        )
    return value


def _pair(ds: Any, keyword: str, path: str) -> float | None:
    """The isotropic value of a (row, column) spacing tag, None when absent or empty."""
    try:
        raw = ds.get(keyword)
    except Exception as exc:  # an unparsable DS value
        raise SpacingError(f"{path}: {keyword} cannot be read ({type(exc).__name__})") from None
    if raw is None or raw == "":
        return None
    if isinstance(raw, str | bytes) or not hasattr(raw, "__len__"):
        values = [raw]
    else:
        values = list(raw)
    if len(values) not in (1, 2):
        raise SpacingError(f"{path}: {keyword} must have 2 values, got {len(values)}")
    nums = [_positive(v, path, keyword) for v in values]
    row, col = nums[0], nums[-1]
    if abs(row - col) > ISOTROPY_TOLERANCE * max(row, col):
        raise SpacingError(
            f"{path}: non-isotropic {keyword} {row:g} x {col:g} mm "
            f"(differ by more than {ISOTROPY_TOLERANCE:.0%}); resample the image first"
        )
    return _plausible(row / 2 + col / 2, default_input_limits().spacing_mm, path, keyword)


def resolve_spacing(
    ds: Any | None,
    path: str,
    spacing_override_mm: float | None = None,
    limits: InputLimits | None = None,
) -> tuple[float | None, str | None]:
    """(spacing in mm per pixel, source) for a DICOM header ``ds`` (or None for rasters)."""
    spacing, source = _resolve(ds, path, spacing_override_mm, limits or default_input_limits())
    if spacing is not None and source != SOURCE_USER:
        _plausible(
            spacing, (limits or default_input_limits()).spacing_mm, path, "pixel spacing (mm)"
        )
    return spacing, source


def _resolve(
    ds: Any | None, path: str, spacing_override_mm: float | None, limits: InputLimits
) -> tuple[float | None, str | None]:
    if spacing_override_mm is not None:
        if isinstance(spacing_override_mm, bool):
            raise SpacingError(f"{path}: spacing override must be a number of mm")
        return _positive(spacing_override_mm, path, "spacing override (mm)"), SOURCE_USER
    if ds is None:
        return None, None

    pixel = _pair(ds, "PixelSpacing", path)
    imager = _pair(ds, "ImagerPixelSpacing", path)
    calibrated = bool(ds.get("PixelSpacingCalibrationType"))
    if pixel is not None:
        copied = (
            imager is not None
            and not calibrated
            and abs(pixel - imager) <= _COPY_TOLERANCE * max(pixel, imager)
        )
        if not copied:
            return pixel, SOURCE_PIXEL
    if imager is None:
        return None, None
    mag = ds.get("EstimatedRadiographicMagnificationFactor")
    if mag is not None and mag != "":
        factor = _positive(mag, path, "EstimatedRadiographicMagnificationFactor")
        _plausible(factor, limits.magnification, path, "EstimatedRadiographicMagnificationFactor")
        return imager / factor, SOURCE_IMAGER_MAG
    return imager, SOURCE_IMAGER
