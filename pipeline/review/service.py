"""What the review app does, without HTTP: the worklist, one leg's views before and after
amendment, recomputation, and changes to the durable state."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legalign.pipeline.review.config import ReviewConfig
from legalign.pipeline.review.images import PixelCache
from legalign.pipeline.review.results import Film, ResultsFolder, review_flags
from legalign.pipeline.review.reviewed import reviewed_result
from legalign.pipeline.review.store import (
    LegState,
    ReviewError,
    ReviewStore,
    check_points,
)


@dataclass
class ReviewService:
    folder: ResultsFolder
    store: ReviewStore
    config: ReviewConfig
    geometry: Any  # pipeline.geometry_config.GeometryConfig
    pixels: PixelCache

    def __post_init__(self) -> None:
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        results_dir: str | Path,
        config: ReviewConfig,
        geometry: Any,
        *,
        search_roots: tuple[Path, ...] = (),
    ) -> ReviewService:
        folder = ResultsFolder.open(results_dir, search_roots=search_roots)
        store = ReviewStore.for_results(folder.root)
        pixels = PixelCache(folder.root, config.viewer.preview_max_rows, config.viewer.film_cache)
        return cls(folder, store, config, geometry, pixels)

    # ------------------------------------------------------------ recomputation
    def film_states(self, film: Film) -> dict[str, LegState]:
        return {
            film.leg_id(lg["side"]): self.store.get(film.leg_id(lg["side"])) for lg in film.legs
        }

    def _amended_by_side(
        self, film: Film, states: dict[str, LegState], override: tuple[str, dict] | None = None
    ) -> dict[str, dict[str, list[float]]]:
        out = {}
        for leg in film.legs:
            side = leg["side"]
            st = states.get(film.leg_id(side))
            if st is not None and st.points:
                out[side] = st.points
        if override is not None:
            out[override[0]] = override[1]
        return out

    def current_result(
        self, film: Film, states: dict[str, LegState] | None = None
    ) -> dict[str, Any]:
        """The film's result with every saved amendment applied (cached per version)."""
        if states is None:
            states = self.film_states(film)
        amended = self._amended_by_side(film, states)
        if not amended:
            return film.result
        tag = ";".join(
            f"{leg['side']}:{states[film.leg_id(leg['side'])].version}"
            for leg in film.legs
            if film.leg_id(leg["side"]) in states
        )
        key = (film.film_id, tag)
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is None:
            hit = reviewed_result(film.result, amended, self.geometry)
            with self._cache_lock:
                if len(self._cache) > 512:
                    self._cache.clear()
                self._cache[key] = hit
        return hit

    def recompute(self, leg_id: str, points: Any) -> dict[str, Any]:
        """Measurements and plan of the leg with ``points`` as its amended landmarks
        (nothing saved)."""
        film, leg = self.folder.leg(leg_id)
        image = film.result.get("image") or {}
        pts = check_points(points, image.get("width"), image.get("height"))
        states = self.film_states(film)
        amended = self._amended_by_side(film, states, (leg["side"], pts))
        result = reviewed_result(film.result, amended, self.geometry)
        return {"current": _leg(result, leg["side"]), "lld_mm": result.get("lld_mm")}

    # ----------------------------------------------------------------- worklist
    def worklist(self) -> list[dict[str, Any]]:
        states = self.store.all()
        rows = []
        for film in self.folder.films.values():
            current = self.current_result(film, states)
            for leg in film.legs:
                side = leg["side"]
                leg_id = film.leg_id(side)
                st = states.get(leg_id) or LegState(leg_id)
                cur = _leg(current, side)
                lo, hi = self.folder.interval(film, leg)
                width = hi - lo if lo is not None and hi is not None else None
                flags = review_flags(leg, self.config.flags)
                confs = [
                    lm["confidence"]
                    for lm in (leg.get("landmarks") or {}).values()
                    if lm.get("confidence") is not None
                ]
                rows.append(
                    {
                        "leg_id": leg_id,
                        "film_id": film.film_id,
                        "film": film.name,
                        "side": side,
                        "status": leg.get("status"),
                        "hka_deg": (cur.get("measurements") or {}).get("hka_deg"),
                        "hka_deg_model": (leg.get("measurements") or {}).get("hka_deg"),
                        "hka_interval_deg": width,
                        "plan_level": (cur.get("plan") or {}).get("level"),
                        "plan_level_model": (leg.get("plan") or {}).get("level"),
                        "flags": flags,
                        "flagged": bool(flags),
                        "min_confidence": min(confs) if confs else None,
                        "review_state": st.state,
                        "reviewer": st.reviewer,
                        "updated_at": st.updated_at,
                    }
                )
        return rows

    def has_intervals(self) -> bool:
        return any(
            self.folder.interval(f, leg)[0] is not None
            for f in self.folder.films.values()
            for leg in f.legs
        )

    # --------------------------------------------------------------------- leg
    def leg_view(self, leg_id: str) -> dict[str, Any]:
        film, leg = self.folder.leg(leg_id)
        states = self.film_states(film)
        current = self.current_result(film, states)
        image = film.result.get("image") or {}
        lo, hi = self.folder.interval(film, leg)
        width = hi - lo if lo is not None and hi is not None else None
        return {
            "leg_id": leg_id,
            "side": leg["side"],
            "film": {
                "film_id": film.film_id,
                "name": film.name,
                "width": image.get("width"),
                "height": image.get("height"),
                "bits_stored": image.get("bits_stored"),
                "modality": image.get("modality"),
                "mirrored": image.get("mirrored"),
                "spacing_mm": film.result.get("spacing_mm"),
                "spacing_source": film.result.get("spacing_source"),
                "source_available": film.source is not None,
                "source_note": film.source_note,
                "legs": [lg["side"] for lg in film.legs],
            },
            "model": leg,
            "current": _leg(current, leg["side"]),
            "lld_mm_model": film.result.get("lld_mm"),
            "lld_mm": current.get("lld_mm"),
            "hka_interval": [lo, hi] if width is not None else None,
            "flags": review_flags(leg, self.config.flags),
            "state": states[leg_id].to_dict(),
            "other_legs": [
                {"side": lg["side"], "landmarks": _leg(current, lg["side"]).get("landmarks")}
                for lg in film.legs
                if lg["side"] != leg["side"]
            ],
        }

    def change(self, leg_id: str, body: dict[str, Any]) -> LegState:
        film, leg = self.folder.leg(leg_id)
        action = body.get("action")
        points = None
        reason = None
        if action == "points":
            image = film.result.get("image") or {}
            points = check_points(body.get("points"), image.get("width"), image.get("height"))
            if not set(points) <= set(leg.get("landmarks") or {}):
                raise ReviewError("only the leg's own landmarks can be moved")
        if action == "reject":
            reason = body.get("reason")
            if reason not in self.config.reject_reasons:
                raise ReviewError(
                    "reject reason must be one of: " + "; ".join(self.config.reject_reasons)
                )
        return self.store.change(
            leg_id,
            expected_version=body.get("version"),
            action=str(action),
            reviewer=body.get("reviewer"),
            points=points,
            reason=reason,
        )


def _leg(result: dict[str, Any], side: str) -> dict[str, Any]:
    return next((lg for lg in result.get("legs") or [] if lg.get("side") == side), {})
