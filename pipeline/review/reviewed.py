"""Amended landmarks -> measurements, plan and statuses, by the pipeline's own code.

``reviewed_result`` rebuilds a film's result from its legs' landmarks with the amended
points put in, through ``pipeline.api.result_from_legs`` (the one code path from
landmarks to measurements, plans, null reasons, statuses and the leg-length
discrepancy).  A point a reviewer placed counts as certain: it has no network confidence
and is always used; the other points keep the model's confidence (a low-confidence point
stays unused until a reviewer moves it).
"""

from __future__ import annotations

import copy
from typing import Any

from legalign.pipeline.api import FilmInfo, result_from_legs
from legalign.pipeline.landmarks import LegLandmarks


def film_info(result: dict[str, Any]) -> FilmInfo:
    image = result.get("image") or {}
    return FilmInfo(
        path=str(result.get("file")),
        width=int(image.get("width") or 0),
        height=int(image.get("height") or 0),
        spacing_mm=result.get("spacing_mm"),
        spacing_source=result.get("spacing_source"),
        mirrored=image.get("mirrored"),
        laterality=image.get("laterality"),
        modality=image.get("modality"),
        bits_stored=image.get("bits_stored"),
        sop_instance_uid=result.get("sop_instance_uid"),
        study_instance_uid=result.get("study_instance_uid"),
        series_instance_uid=result.get("series_instance_uid"),
    )


def leg_landmarks(leg: dict[str, Any], amended: dict[str, list[float]] | None) -> LegLandmarks:
    points: dict[str, tuple[float, float]] = {}
    confidence: dict[str, float] = {}
    for name, lm in (leg.get("landmarks") or {}).items():
        points[name] = (float(lm["x"]), float(lm["y"]))
        if lm.get("confidence") is not None:
            confidence[name] = float(lm["confidence"])
    for name, (x, y) in (amended or {}).items():
        points[name] = (float(x), float(y))
        confidence.pop(name, None)
    return LegLandmarks(
        side=leg["side"], points=points, confidence=confidence, mirrored=bool(leg.get("mirrored"))
    )


def reviewed_result(
    result: dict[str, Any], amended: dict[str, dict[str, list[float]]], cfg: Any
) -> dict[str, Any]:
    """The film's result dict with ``amended[side]`` points in place and everything that
    depends on them recomputed.  Legs without amendments come out as the run wrote
    them (same code, same inputs); keys the recomputation does not produce (outputs,
    timings, uncertainty fields of the run) are kept from the original."""
    legs = result.get("legs") or []
    if not any(amended.get(leg.get("side")) for leg in legs):
        return copy.deepcopy(result)
    new = result_from_legs(
        film_info(result),
        [leg_landmarks(leg, amended.get(leg["side"])) for leg in legs],
        cfg,
        model_name=result.get("model"),
        timings_s=result.get("timings_s"),
    ).to_dict()
    out = copy.deepcopy(result)
    by_side = {leg["side"]: leg for leg in new["legs"]}
    merged = []
    for old in legs:
        side = old["side"]
        fresh = by_side.get(side, {})
        if not amended.get(side):
            merged.append(copy.deepcopy(old))
            continue
        leg = copy.deepcopy(old)
        leg.update({k: v for k, v in fresh.items() if k != "side_source"})
        # an amended leg's model-derived uncertainty no longer describes it
        for key in [k for k in (leg.get("measurements") or {}) if k.startswith("hka_deg_")]:
            leg["measurements"].pop(key)
        for name in amended[side]:
            if name in leg["landmarks"]:
                leg["landmarks"][name]["amended"] = True
        merged.append(leg)
    out["legs"] = merged
    for key in ("status", "error_reason", "error", "lld_mm", "null_reasons"):
        out[key] = new.get(key)
    return out
