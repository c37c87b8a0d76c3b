"""The ``legalign measure`` report: landmarks (no image) -> the JSON of measurements and
plans (the geometry contract, README "legalign measure").

Built by the same code as a run's results (``pipeline.assemble``: ``build_leg`` and
``leg_length_discrepancy``), in its strict form: landmarks a measurement cannot use and a
plan that cannot reach its target are one-line errors here, not null values.
"""

from __future__ import annotations

from legalign.pipeline.assemble import build_leg, leg_length_discrepancy
from legalign.pipeline.errors import InputError, PlanningError
from legalign.pipeline.geometry_config import GeometryConfig
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.results import DISCLAIMER


def film_report(
    legs: list[LegLandmarks],
    spacing_mm: float | None,
    spacing_source: str | None,
    cfg: GeometryConfig,
    where: str = "",
) -> dict:
    """``{"legs": [{"side", "mirrored", "measurements", "plan"}], "lld_mm",
    "lld_null_reason", "spacing_mm", "spacing_source", "disclaimer"}``.

    Unusable landmarks raise ``InputError``, an unreachable plan ``PlanningError``, each
    naming ``where`` (and the side)."""
    prefix = f"{where}: " if where else ""
    results = []
    for leg in legs:
        try:
            results.append(build_leg(leg, spacing_mm, cfg, strict=True))
        except PlanningError as exc:
            raise PlanningError(f"{prefix}{leg.side} leg: {exc}") from None
        except InputError as exc:
            raise InputError(f"{prefix}{exc}") from None
    lld, why_not = leg_length_discrepancy(results, spacing_mm)
    return {
        "legs": [
            {
                "side": str(lr.side),
                "mirrored": lr.mirrored,
                "measurements": lr.measurements.to_dict(),
                "plan": lr.plan.to_dict() if lr.plan is not None else None,
            }
            for lr in results
        ],
        "lld_mm": lld,
        "lld_null_reason": why_not,
        "spacing_mm": spacing_mm,
        "spacing_source": spacing_source,
        "disclaimer": DISCLAIMER,
    }
