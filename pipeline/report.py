"""Measure and plan every leg of a film and shape the JSON report (the CLI contract)."""

from __future__ import annotations

from legalign.pipeline.errors import InputError, PlanningError
from legalign.pipeline.geometry_config import GeometryConfig
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.measure import measure_film
from legalign.pipeline.plan import DISCLAIMER, plan_leg


def film_report(
    legs: list[LegLandmarks],
    spacing_mm: float | None,
    spacing_source: str | None,
    cfg: GeometryConfig,
    where: str = "",
    low_confidence: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """``{"legs": [{"side", "measurements", "plan"}], "lld_mm", "spacing_source", ...}``.

    A plan that cannot reach its target raises PlanningError naming ``where`` and the side.
    """
    prefix = f"{where}: " if where else ""
    try:
        film = measure_film(legs, spacing_mm, cfg)
    except InputError as exc:
        raise InputError(f"{prefix}{exc}") from None
    out_legs = []
    for leg, m in film.legs:
        flagged = (low_confidence or {}).get(leg.side, ())
        try:
            plan = plan_leg(leg, m, spacing_mm, cfg, low_confidence=flagged)
        except PlanningError as exc:
            raise PlanningError(f"{prefix}{leg.side} leg: {exc}") from None
        out_legs.append(
            {
                "side": leg.side,
                "mirrored": leg.mirrored,
                "measurements": m.to_dict(),
                "plan": plan.to_dict(),
            }
        )
    return {
        "legs": out_legs,
        "lld_mm": film.lld_mm,
        "lld_null_reason": film.lld_null_reason,
        "spacing_mm": spacing_mm,
        "spacing_source": spacing_source,
        "disclaimer": DISCLAIMER,
    }
