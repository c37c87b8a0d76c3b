"""Schema of ``configs/review.yaml`` (worklist flags, reject reasons, viewer limits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legalign.pipeline.config_schema import ConfigError, load_config

DEFAULT_REVIEW_CONFIG = "review.yaml"


@dataclass(frozen=True)
class FlagRules:
    status_not_ok: bool
    low_confidence: bool
    planned_osteotomy: bool
    # the run's own review flag (a wide HKA interval: configs/geometry.yaml's
    # review.max_hka_interval_deg, applied when the film was analysed), with its reasons
    run_review: bool


@dataclass(frozen=True)
class ViewerLimits:
    preview_max_rows: int
    region_max_pixels: int
    film_cache: int

    def validate(self) -> None:
        if not 64 <= self.preview_max_rows <= 8192:
            raise ConfigError("preview_max_rows: must be within [64, 8192]")
        if self.region_max_pixels < 65536:
            raise ConfigError("region_max_pixels: must be >= 65536")
        if self.film_cache < 1:
            raise ConfigError("film_cache: must be >= 1")


@dataclass(frozen=True)
class ReviewConfig:
    flags: FlagRules
    reject_reasons: list[str]
    viewer: ViewerLimits

    def validate(self) -> None:
        if not self.reject_reasons:
            raise ConfigError("reject_reasons: needs at least one reason")
        if len(set(self.reject_reasons)) != len(self.reject_reasons):
            raise ConfigError("reject_reasons: duplicate reason")


def load_review_config(path: str | Path | None = None) -> ReviewConfig:
    """configs/review.yaml with ``path`` (a partial YAML) merged over it."""
    return load_config(ReviewConfig, DEFAULT_REVIEW_CONFIG, path)
