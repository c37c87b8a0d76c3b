"""Notebook API: one call analyses one image and returns a typed result.

    >>> from pipeline.api import analyse
    >>> result = analyse("film.dcm")            # doctest: +SKIP
    >>> result.legs[0].measurements.hka_deg     # doctest: +SKIP

The batch engine (``legalign run``) uses the same functions: it reads and prepares films
in worker processes, runs the locator in batches, then calls :func:`result_from_legs`,
the one place where landmarks become measurements, plans, null reasons and statuses.

Planning support only: every plan is a proposal for a clinician to check, not a
clinical decision.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from legalign.pipeline.errors import InputError, LegalignError
from legalign.pipeline.landmarks import CORE_LANDMARKS, LANDMARK_NAMES, LegLandmarks
from legalign.pipeline.measure import MM_VALUES, REQUIRES

DISCLAIMER = "Planning support only: not a clinical decision; a clinician must verify."
RESULT_SCHEMA = "legalign.image/1"

# Which landmarks each per-leg measurement needs (pipeline/measure.py).  Used to explain
# a null value: the first missing or low-confidence landmark is the reason.
MEASUREMENT_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    **REQUIRES,
    "category": REQUIRES["hka_deg"],
}
MM_MEASUREMENTS = frozenset(MM_VALUES)
# Measurements a leg needs to be "ok"; any other null makes it "partial".
MEASUREMENT_KEYS: tuple[str, ...] = tuple(MEASUREMENT_DEPENDENCIES)

# Failure reasons recorded in the results (docs/results-schema.md).
FAILURE_REASONS: tuple[str, ...] = (
    "unreadable",  # corrupt or truncated file, decoder failure
    "not_an_image",  # not DICOM / PNG / JPEG / TIFF, or DICOM without pixel data
    "wrong_modality",  # DICOM modality that is not a projection radiograph
    "too_large",  # more pixels than the configured limit
    "no_spacing",  # zero / absent pixel spacing while --require-spacing is set
    "no_legs_found",  # the locator found no leg with its core landmarks
    "internal_error",  # a bug: an unexpected exception (message recorded)
    "worker_crashed",  # the worker process died on this file (e.g. decoder segfault)
    "timeout",  # still running after --file-timeout seconds (killed)
)


# --------------------------------------------------------------------------- types
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

    side: str
    status: str
    landmarks: dict[str, Landmark]
    measurements: Any  # pipeline.measure.LegMeasurements
    plan: Any  # pipeline.plan.OsteotomyPlan | None
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
        return _measurement_values(self.measurements)

    def plan_dict(self) -> dict[str, Any] | None:
        return None if self.plan is None else _to_dict(self.plan)

    def used_landmarks(self) -> LegLandmarks:
        return LegLandmarks(
            side=self.side,
            points={n: (lm.x, lm.y) for n, lm in self.landmarks.items() if lm.used},
            confidence={
                n: lm.confidence
                for n, lm in self.landmarks.items()
                if lm.used and lm.confidence is not None
            },
            mirrored=self.mirrored,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "status": self.status,
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
    status: str
    legs: list[LegResult] = field(default_factory=list)
    error_reason: str | None = None
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

    def leg(self, side: str) -> LegResult | None:
        return next((leg for leg in self.legs if leg.side == side), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "file": self.file,
            "status": self.status,
            "error_reason": self.error_reason,
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
    def from_radiograph(cls, rad: Any) -> FilmInfo:
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


# --------------------------------------------------------------------------- helpers
def _measurement_values(meas: Any) -> dict[str, Any]:
    d = _to_dict(meas)
    d.pop("null_reasons", None)
    return d


def _to_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    return dict(obj.to_dict())


def classify_error(exc: BaseException, path: str | None = None) -> str:
    """Map an exception to one of FAILURE_REASONS (an explicit ``reason`` attribute
    wins; otherwise the one-line message, without its leading file name, is read)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason in FAILURE_REASONS:
        return reason
    if isinstance(exc, MemoryError):
        return "too_large"
    if not isinstance(exc, LegalignError):
        return "internal_error"
    msg = str(exc)
    if path and msg.startswith(f"{path}:"):
        msg = msg[len(path) + 1 :]
    msg = msg.lower()
    if "modality" in msg:
        return "wrong_modality"
    if any(w in msg for w in ("too large", "too big", "megapixel", "pixels exceed", "exceeds")):
        return "too_large"
    if "spacing" in msg:
        return "no_spacing"
    if any(
        w in msg
        for w in ("not a dicom", "not an image", "unsupported", "no pixel data", "unknown format")
    ):
        return "not_an_image"
    return "unreadable"


def failed_result(path: str, exc: BaseException | str, reason: str | None = None) -> ImageResult:
    """An ImageResult recording one failure (reason code + one-line message, no traceback)."""
    from legalign.pipeline.outputs.safe_text import printable

    if isinstance(exc, BaseException):
        # one line whatever the file name holds: newlines and other control characters
        # (and undecodable bytes) escaped, not cut
        msg = printable(str(exc).strip()) if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, LegalignError):
            msg = f"{type(exc).__name__}: {msg}"
        reason = reason or classify_error(exc, str(path))
    else:
        msg = printable(exc)
        reason = reason or "internal_error"
    return ImageResult(file=str(path), status="failed", error_reason=reason, error=msg)


def load_config(config: Any = None) -> Any:
    """A GeometryConfig from None (defaults), a path, or a GeometryConfig."""
    from legalign.pipeline.geometry_config import GeometryConfig, load_geometry_config

    if isinstance(config, GeometryConfig):
        return config
    return load_geometry_config(config)


def load_locator(model: Any = None, device: str = "cpu") -> Any:
    """A Locator from None (shipped default), a checkpoint path, or a Locator."""
    from legalign.pipeline.locate import Locator

    if isinstance(model, Locator):
        return model
    return Locator.from_checkpoint(None if model is None else str(model), device=device)


def _centre_x(leg: LegLandmarks) -> float:
    xs = [leg.points[n][0] for n in CORE_LANDMARKS if n in leg.points] or [
        p[0] for p in leg.points.values()
    ]
    return float(np.mean(xs)) if xs else 0.0


def side_source(legs: list[LegLandmarks], info: FilmInfo) -> str | None:
    """Where the legs' right/left labels come from.  The locator names the sides: from
    DICOM orientation (PatientOrientation) when the file has it, else from DICOM
    laterality for a single-leg film, else from anatomy assuming a standard AP display
    (the greater trochanter is lateral of the femoral head; on a bilateral film medial
    is towards the other leg)."""
    if not legs:
        return None
    if info.mirrored is not None:
        return "dicom_orientation"
    if len(legs) == 1 and info.laterality in ("R", "L"):
        return "dicom_laterality"
    return "anatomy"


def _null_reason(
    key: str, leg: LegLandmarks, dropped: dict[str, str], spacing_mm: float | None
) -> str:
    deps = MEASUREMENT_DEPENDENCIES.get(key, ())
    for name in deps:
        if name in dropped:
            return dropped[name]
    for name in deps:
        if name not in leg.points:
            return f"{name} not found"
    if (key in MM_MEASUREMENTS or key.endswith("_mm")) and spacing_mm is None:
        return "no pixel spacing (angles only)"
    if dropped:
        return "not computable; not used: " + "; ".join(r for _, r in sorted(dropped.items()))
    return "not computable from these landmarks"


def build_leg(
    leg: LegLandmarks,
    spacing_mm: float | None,
    cfg: Any,
    side_source: str | None = None,
    film_size: tuple[int, int] | None = None,
    uncertainty: Any = None,
) -> LegResult:
    """Measure from every usable landmark (pipeline/landmark_use.py: not outside the film
    ``film_size`` = (width, height), not unusable), attach error radii and intervals
    (``uncertainty``: an ``UncertaintyConfig``, default configs/uncertainty.yaml), flag
    the leg for review when its HKA interval is wide, plan, and explain every null."""
    from legalign.pipeline.landmark_use import review_reasons, usable_landmarks
    from legalign.pipeline.measure import measure_leg
    from legalign.pipeline.plan import plan_leg
    from legalign.pipeline.uncertainty import leg_uncertainty, load_uncertainty_config

    uncertainty = uncertainty or load_uncertainty_config()
    width, height = film_size if film_size is not None else (None, None)
    use = usable_landmarks(leg, width, height, float(cfg.landmarks.unusable_confidence))
    used_leg = use.leg
    dropped = use.reasons
    threshold = float(cfg.landmarks.low_confidence)
    try:
        meas = measure_leg(used_leg, spacing_mm, cfg)
    except LegalignError as exc:  # e.g. two landmarks that define a line coincide
        from legalign.pipeline.measure import LegMeasurements

        why = str(exc).splitlines()[0]
        meas = LegMeasurements(null_reasons={k: why for k in MEASUREMENT_KEYS})
    values = _measurement_values(meas)
    unc = leg_uncertainty(used_leg, values, spacing_mm, uncertainty, cfg)
    landmarks: dict[str, Landmark] = {}
    low: list[str] = []
    for name in LANDMARK_NAMES:
        if name not in leg.points:
            continue
        x, y = leg.points[name]
        conf = leg.confidence.get(name)
        flag = use.flags.get(name)
        if flag is None and conf is not None and float(conf) < threshold:
            flag = "low_confidence"
            low.append(name)
        radius = unc.landmark_radius_px.get(name)
        landmarks[name] = Landmark(
            name,
            float(x),
            float(y),
            None if conf is None else float(conf),
            name not in use.flags,
            flag,
            radius,
            None if radius is None or spacing_mm is None else radius * spacing_mm,
        )
    null_reasons: dict[str, str] = {}
    for key, value in values.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            lead = getattr(meas, "null_reasons", {}).get(key)
            mine = _null_reason(key, used_leg, dropped, spacing_mm)
            # a landmark outside the film or unusable is the root cause: say so
            deps = MEASUREMENT_DEPENDENCIES.get(key, ())
            root = any(n in dropped for n in deps)
            null_reasons[key] = mine if (lead is None or root) else lead
    plan = None
    try:
        plan = plan_leg(used_leg, meas, spacing_mm, cfg, low_confidence=tuple(sorted(low)))
    except LegalignError as exc:
        null_reasons["plan"] = str(exc).splitlines()[0]
    if plan is not None and (plan.indicated is None or (plan.indicated and plan.level is None)):
        null_reasons["plan"] = plan.reason
    core_ok = getattr(meas, "hka_deg", None) is not None
    incomplete = [k for k, v in null_reasons.items() if not v.startswith("no pixel spacing")]
    status = "failed" if not core_ok else ("partial" if incomplete else "ok")
    why = review_reasons(unc.intervals, getattr(meas, "hka_deg", None), cfg)
    return LegResult(
        side=leg.side,
        status=status,
        landmarks=landmarks,
        measurements=meas,
        plan=plan,
        null_reasons=null_reasons,
        mirrored=leg.mirrored,
        side_source=side_source,
        intervals=unc.intervals,
        interval_level=unc.level,
        review=bool(why),
        review_reasons=why,
    )


def result_from_legs(
    info: FilmInfo,
    legs: list[LegLandmarks],
    cfg: Any,
    *,
    model_name: str | None = None,
    timings_s: dict[str, float] | None = None,
    uncertainty: Any = None,
) -> ImageResult:
    """The one code path from located landmarks to an ImageResult (API and engine).
    ``uncertainty``: an ``UncertaintyConfig`` (default: configs/uncertainty.yaml)."""
    from legalign.pipeline.uncertainty import load_uncertainty_config

    base = dict(
        file=info.path,
        width=info.width,
        height=info.height,
        modality=info.modality,
        bits_stored=info.bits_stored,
        sop_instance_uid=info.sop_instance_uid,
        study_instance_uid=info.study_instance_uid,
        series_instance_uid=info.series_instance_uid,
        spacing_mm=info.spacing_mm,
        spacing_source=info.spacing_source,
        laterality=info.laterality,
        mirrored=info.mirrored,
        model=model_name,
        timings_s=dict(timings_s or {}),
    )
    legs = sorted(legs, key=_centre_x)
    source = side_source(legs, info)
    uncertainty = uncertainty or load_uncertainty_config()
    size = (info.width, info.height)
    leg_results = [build_leg(leg, info.spacing_mm, cfg, source, size, uncertainty) for leg in legs]
    if not any(lr.status != "failed" for lr in leg_results):
        n = len(leg_results)
        msg = f"{info.path}: " + (
            "no leg found"
            if n == 0
            else f"{n} leg(s) found but none with hip, knee and ankle centres usable"
        )
        if n:
            msg += ": " + "; ".join(
                f"{lr.side}: {lr.null_reasons.get('hka_deg', '?')}" for lr in leg_results
            )
        return ImageResult(
            status="failed", legs=leg_results, error_reason="no_legs_found", error=msg, **base
        )
    null_reasons: dict[str, str] = {}
    lld = None
    sides = {lr.side for lr in leg_results}
    if sides == {"left", "right"}:
        # lld_mm as pipeline.measure.measure_film defines it (left minus right leg length),
        # from the legs already measured here
        length = {lr.side: getattr(lr.measurements, "leg_length_mm", None) for lr in leg_results}
        if length["left"] is not None and length["right"] is not None:
            lld = float(length["left"] - length["right"])
        else:
            if info.spacing_mm is None:
                null_reasons["lld_mm"] = "no pixel spacing (angles only)"
            else:
                why = [
                    f"{lr.side}: {lr.null_reasons['leg_length_mm']}"
                    for lr in leg_results
                    if "leg_length_mm" in lr.null_reasons
                ]
                null_reasons["lld_mm"] = "; ".join(why) or "not computable"
    else:
        null_reasons["lld_mm"] = "single leg on the film"
    status = "ok" if all(lr.status == "ok" for lr in leg_results) else "partial"
    return ImageResult(
        status=status, legs=leg_results, lld_mm=lld, null_reasons=null_reasons, **base
    )


# --------------------------------------------------------------------------- the call
def analyse(
    path_or_array: str | Path | np.ndarray,
    *,
    model: Any = None,
    spacing_mm: float | None = None,
    config: Any = None,
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
    legs = locator.locate(rad)
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
) -> Any:
    """A Radiograph from a path (the readers) or an array (normalised here)."""
    from legalign.pipeline.radiograph import Radiograph

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
            raise InputError(f"array: spacing must be positive, got {spacing_mm}")
        return Radiograph(
            path="<array>",
            pixels=(arr - lo) / (hi - lo),
            spacing_mm=spacing_mm,
            spacing_source="user" if spacing_mm is not None else None,
        )
    from legalign.pipeline.read import read_radiograph

    return read_radiograph(str(path_or_array), spacing_override_mm=spacing_mm)
