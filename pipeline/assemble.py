"""Located landmarks -> an ``ImageResult``: the one place where landmarks become
measurements, plans, null reasons and statuses (the API and every engine call
:func:`result_from_legs`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from legalign.pipeline.enums import Side, Status
from legalign.pipeline.errors import FailureReason, LegalignError
from legalign.pipeline.landmark_use import review_reasons, usable_landmarks
from legalign.pipeline.landmarks import CORE_LANDMARKS, LANDMARK_NAMES, LegLandmarks
from legalign.pipeline.measure import MM_VALUES, REQUIRES, LegMeasurements, measure_leg
from legalign.pipeline.plan import plan_leg
from legalign.pipeline.results import FilmInfo, ImageResult, Landmark, LegResult, measurement_values
from legalign.pipeline.uncertainty import leg_uncertainty, load_uncertainty_config

# Which landmarks each per-leg measurement needs (pipeline/measure.py).  Used to explain
# a null value: the first missing or low-confidence landmark is the reason.
MEASUREMENT_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    **REQUIRES,
    "category": REQUIRES["hka_deg"],
}
MM_MEASUREMENTS = frozenset(MM_VALUES)
# Measurements a leg needs to be "ok"; any other null makes it "partial".
MEASUREMENT_KEYS: tuple[str, ...] = tuple(MEASUREMENT_DEPENDENCIES)


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
    *,
    strict: bool = False,
) -> LegResult:
    """Measure from every usable landmark (pipeline/landmark_use.py: not outside the film
    ``film_size`` = (width, height), not unusable), attach error radii and intervals
    (``uncertainty``: an ``UncertaintyConfig``, default configs/uncertainty.yaml), flag
    the leg for review when its HKA interval is wide, plan, and explain every null.

    ``strict`` (``legalign measure``, landmarks given by a person or a program): landmarks
    a measurement cannot use (``InputError``) and a plan that cannot reach its target
    (``PlanningError``) raise instead of becoming null values with a reason."""

    uncertainty = uncertainty or load_uncertainty_config()
    width, height = film_size if film_size is not None else (None, None)
    use = usable_landmarks(leg, width, height, float(cfg.landmarks.unusable_confidence))
    used_leg = use.leg
    dropped = use.reasons
    threshold = float(cfg.landmarks.low_confidence)
    try:
        meas = measure_leg(used_leg, spacing_mm, cfg)
    except LegalignError as exc:  # e.g. two landmarks that define a line coincide
        if strict:
            raise
        why = str(exc).splitlines()[0]
        meas = LegMeasurements(null_reasons={k: why for k in MEASUREMENT_KEYS})
    values = measurement_values(meas)
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
        if strict:
            raise
        null_reasons["plan"] = str(exc).splitlines()[0]
    if plan is not None and (plan.indicated is None or (plan.indicated and plan.level is None)):
        null_reasons["plan"] = plan.reason
    core_ok = getattr(meas, "hka_deg", None) is not None
    incomplete = [k for k, v in null_reasons.items() if not v.startswith("no pixel spacing")]
    status = Status.FAILED if not core_ok else (Status.PARTIAL if incomplete else Status.OK)
    to_review = review_reasons(unc.intervals, getattr(meas, "hka_deg", None), cfg)
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
        review=bool(to_review),
        review_reasons=to_review,
    )


def leg_length_discrepancy(
    leg_results: list[LegResult], spacing_mm: float | None
) -> tuple[float | None, str | None]:
    """(lld_mm, None): the left leg's length minus the right's on a bilateral film, or
    (None, why not)."""
    if {lr.side for lr in leg_results} != {Side.LEFT, Side.RIGHT} or len(leg_results) != 2:
        return None, "single leg on the film" if len(leg_results) < 2 else "not a bilateral film"
    length = {lr.side: getattr(lr.measurements, "leg_length_mm", None) for lr in leg_results}
    left, right = length[Side.LEFT], length[Side.RIGHT]
    if left is not None and right is not None:
        return float(left - right), None
    if spacing_mm is None:
        return None, "no pixel spacing (angles only)"
    why = [
        f"{lr.side}: {lr.null_reasons['leg_length_mm']}"
        for lr in leg_results
        if "leg_length_mm" in lr.null_reasons
    ]
    return None, "; ".join(why) or "not computable"


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
    base: dict[str, Any] = dict(
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
    if not any(lr.status is not Status.FAILED for lr in leg_results):
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
            status=Status.FAILED,
            legs=leg_results,
            error_reason=FailureReason.NO_LEGS_FOUND,
            error=msg,
            **base,
        )
    null_reasons: dict[str, str] = {}
    lld, why_not = leg_length_discrepancy(leg_results, info.spacing_mm)
    if why_not is not None:
        null_reasons["lld_mm"] = why_not
    status = Status.OK if all(lr.status is Status.OK for lr in leg_results) else Status.PARTIAL
    return ImageResult(
        status=status, legs=leg_results, lld_mm=lld, null_reasons=null_reasons, **base
    )
