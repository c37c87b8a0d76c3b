"""Plausibility bounds for declared pixel spacing and magnification (``configs/input_limits.yaml``).

A DICOM header can carry any number in PixelSpacing or
EstimatedRadiographicMagnificationFactor: 1e308 (which overflows to inf when divided),
1e-6, 0, a negative value.  Values outside these bounds fail the file (reason
``no_spacing``) instead of producing millimetre values nobody should trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from legalign.pipeline.config_schema import ConfigError, load_config

DEFAULT_INPUT_LIMITS = "input_limits.yaml"


@dataclass(frozen=True)
class Bounds:
    min: float
    max: float

    def validate(self) -> None:
        if not 0 < self.min < self.max:
            raise ConfigError(f"min/max: need 0 < min < max, got {self.min} / {self.max}")

    def __contains__(self, value: float) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True)
class InputLimits:
    spacing_mm: Bounds
    magnification: Bounds


@lru_cache(maxsize=1)
def default_input_limits() -> InputLimits:
    """The shipped bounds (read once per process; immutable)."""
    return load_config(InputLimits, DEFAULT_INPUT_LIMITS)
