"""The typed results of analysing one image (``legalign.image/1``, docs/results-schema.md).

``ImageResult.to_dict()`` is the per-image JSON (without the ``outputs`` the engine adds).
Planning support only: every plan is a proposal for a clinician to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legalign.pipeline.enums import Side, Status
from legalign.pipeline.errors import FailureReason
from legalign.pipeline.landmarks import LANDMARK_NAMES
from legalign.pipeline.measure import LegMeasurements
from legalign.pipeline.plan import DISCLAIMER, OsteotomyPlan
from legalign.pipeline.radiograph import Radiograph

RESULT_SCHEMA = "legalign.image/1"


@dataclass(frozen=True)
class Landmark:
    """One located landmark.  ``used`` is False when it lies outside the film or is
    unusable (flag ``outside_film`` / ``unusable``): it is reported but not measured
    from.  A used landmark below the low-confidence threshold carries the flag
    ``low_confidence``.  ``error_radius_px`` / ``_mm``: the radius that holds the true
    position with the configured probability (90 %; pipeline/uncertainty.py)."""

    name: str
    x: float
    y: float
    confidence: float | None
    used: bool
    flag: str | None = None
    error_radius_px: float | None = None
    error_radius_mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "confidence": self.confidence,
            "used": self.used,
            "flag": self.flag,
            "error_radius_px": self.error_radius_px,
            "error_radius_mm": self.error_radius_mm,
        }


@dataclass
class LegResult:
    """One leg: landmarks with confidence, measurements, plan, and why values are null.

    ``status``: "ok" (every measurement and the plan computed), "partial" (some values are
    null, each with a reason in ``null_reasons``), "failed" (no hip-knee-ankle axis).
    """

    side: Side
    status: Status
    landmarks: dict[str, Landmark]
    measurements: LegMeasurements
    plan: OsteotomyPlan | None
    null_reasons: dict[str, str] = field(default_factory=dict)
    mirrored: bool = False
    side_source: str | None = None
    # measurement -> (lo, hi): the ``interval_level`` interval propagated from the
    # landmarks' error radii (pipeline/uncertainty.py)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    interval_level: float | None = None
    review: bool = False  # the leg should be reviewed (it keeps its measurements)
    review_reasons: list[str] = field(default_factory=list)

    @property
    def low_confidence(self) -> dict[str, float]:
        """Landmarks below the low-confidence threshold (flagged, still measured from)."""
        return {
            n: float(lm.confidence)
            for n, lm in self.landmarks.items()
            if lm.flag == "low_confidence" and lm.confidence is not None
        }

    def measurements_dict(self) -> dict[str, Any]:
        return measurement_values(self.measurements)

    def plan_dict(self) -> dict[str, Any] | None:
        return None if self.plan is None else _to_dict(self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": str(self.side),
            "status": str(self.status),
            "mirrored": self.mirrored,
            "side_source": self.side_source,
            "landmarks": {
                n: self.landmarks[n].to_dict() for n in LANDMARK_NAMES if n in self.landmarks
            },
            "low_confidence": self.low_confidence,
            "measurements": self.measurements_dict(),
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "interval_level": self.interval_level,
            "review": self.review,
            "review_reasons": list(self.review_reasons),
            "plan": self.plan_dict(),
            "null_reasons": dict(self.null_reasons),
        }


@dataclass
class ImageResult:
    """Everything legalign found on one image.  ``status`` is "ok", "partial" (some leg
    values null, with reasons) or "failed" (``error_reason`` + ``error``)."""

    file: str
    status: Status
    legs: list[LegResult] = field(default_factory=list)
    error_reason: FailureReason | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    modality: str | None = None
    bits_stored: int | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    spacing_mm: float | None = None
    spacing_source: str | None = None
    laterality: str | None = None
    mirrored: bool | None = None
    lld_mm: float | None = None
    null_reasons: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def leg(self, side: Side | str) -> LegResult | None:
        return next((leg for leg in self.legs if leg.side == side), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "file": self.file,
            "status": str(self.status),
            "error_reason": None if self.error_reason is None else str(self.error_reason),
            "error": self.error,
            "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "image": {
                "width": self.width,
                "height": self.height,
                "modality": self.modality,
                "bits_stored": self.bits_stored,
                "laterality": self.laterality,
                "mirrored": self.mirrored,
            },
            "spacing_mm": self.spacing_mm,
            "spacing_source": self.spacing_source,
            "legs": [leg.to_dict() for leg in self.legs],
            "lld_mm": self.lld_mm,
            "null_reasons": dict(self.null_reasons),
            "model": self.model,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "disclaimer": DISCLAIMER,
        }


@dataclass(frozen=True)
class FilmInfo:
    """What result building needs from a radiograph, without its pixels (small enough to
    cross a process boundary)."""

    path: str
    width: int
    height: int
    spacing_mm: float | None
    spacing_source: str | None
    mirrored: bool | None
    laterality: str | None
    modality: str | None
    bits_stored: int | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None

    @classmethod
    def from_radiograph(cls, rad: Radiograph) -> FilmInfo:
        return cls(
            path=str(rad.path),
            width=int(rad.width),
            height=int(rad.height),
            spacing_mm=rad.spacing_mm,
            spacing_source=rad.spacing_source,
            mirrored=rad.mirrored,
            laterality=rad.laterality,
            modality=rad.modality,
            bits_stored=rad.bits_stored,
            sop_instance_uid=rad.sop_instance_uid,
            study_instance_uid=rad.study_instance_uid,
            series_instance_uid=rad.series_instance_uid,
        )


def measurement_values(meas: Any) -> dict[str, Any]:
    d = _to_dict(meas)
    d.pop("null_reasons", None)
    return d


def _to_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    return dict(obj.to_dict())
