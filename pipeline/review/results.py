"""A run's output folder, read only: films, legs and the original films they came from.

Every film and leg gets an opaque id (a hash of the per-image JSON's name), so URLs never
carry a file name, which may hold a patient's name.  The original film of a result is found
from the JSON's ``file`` (absolute, or relative to the working directory of the run): a
candidate path is accepted when ``output_stem`` of it gives the JSON's own name, i.e. it is
the very path the run read.  Only those paths and files inside the folder are ever served.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalign.pipeline.errors import InputError
from legalign.pipeline.outputs.image_json import output_stem
from legalign.pipeline.review.config import FlagRules


def opaque_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


@dataclass
class Film:
    """One per-image JSON of the run and the original film it describes."""

    film_id: str
    stem: str  # the JSON's name without .json (output_stem of the input path)
    json_path: Path
    result: dict[str, Any]
    source: Path | None  # the original film, None when it cannot be found any more
    source_note: str | None = None  # why the source is missing or was matched loosely

    @property
    def name(self) -> str:
        """The original film's base name, for display only (never put in a URL or log)."""
        return os.path.basename(str(self.result.get("file") or self.stem))

    @property
    def legs(self) -> list[dict[str, Any]]:
        return list(self.result.get("legs") or [])

    def leg_id(self, side: str) -> str:
        return f"{self.film_id}-{side}"


@dataclass
class ResultsFolder:
    """The films and legs of one ``legalign run`` output folder."""

    root: Path
    films: dict[str, Film] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # unreadable JSONs (one line each)
    table_extra: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path, *, search_roots: tuple[Path, ...] = ()) -> ResultsFolder:
        """Read ``root/images/*.json``; raises ``InputError`` when ``root`` is not a run's
        output folder.  ``search_roots``: where relative input paths may start (default:
        the working directory and the folder above ``root``)."""
        root = Path(root).resolve()
        images = root / "images"
        if not images.is_dir():
            raise InputError(f"{root}: not a legalign run folder (no images/ folder)")
        roots = search_roots or (Path.cwd(), root.parent)
        folder = cls(root=root)
        for path in sorted(images.glob("*.json")):
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(result, dict) or not str(result.get("schema", "")).startswith(
                    "legalign.image/"
                ):
                    raise ValueError("not a legalign per-image JSON")
            except (OSError, ValueError) as exc:
                folder.problems.append(f"{path.name}: {str(exc).splitlines()[0]}")
                continue
            stem = path.stem
            source, note = _find_source(result.get("file"), stem, roots)
            film = Film(opaque_id(stem), stem, path, result, source, note)
            folder.films[film.film_id] = film
        folder.table_extra = _interval_columns(root)
        return folder

    # ----------------------------------------------------------------- look-ups
    def film(self, film_id: str) -> Film:
        film = self.films.get(film_id)
        if film is None:
            raise KeyError(film_id)
        return film

    def leg(self, leg_id: str) -> tuple[Film, dict[str, Any]]:
        film_id, _, side = leg_id.rpartition("-")
        film = self.film(film_id)
        for leg in film.legs:
            if leg.get("side") == side:
                return film, leg
        raise KeyError(leg_id)

    def leg_ids(self) -> list[str]:
        return [f.leg_id(leg["side"]) for f in self.films.values() for leg in f.legs]

    def allowed_sources(self) -> set[Path]:
        return {f.source for f in self.films.values() if f.source is not None}

    def interval(self, film: Film, leg: dict[str, Any]) -> tuple[float | None, float | None]:
        """(hka_deg_lo, hka_deg_hi) when the run wrote HKA intervals, else (None, None)."""
        meas = leg.get("measurements") or {}
        lo, hi = meas.get("hka_deg_lo"), meas.get("hka_deg_hi")
        iv = (leg.get("intervals") or {}).get("hka_deg")  # legalign.image/1 "intervals"
        if lo is None and hi is None and iv is not None and len(iv) == 2:
            lo, hi = iv
        if lo is None and hi is None:
            key = (str(film.result.get("file")), str(leg.get("side")))
            extra = self.table_extra.get(key, {})
            lo, hi = extra.get("hka_deg_lo"), extra.get("hka_deg_hi")
        return _num(lo), _num(hi)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _find_source(file: Any, stem: str, roots: tuple[Path, ...]) -> tuple[Path | None, str | None]:
    if not isinstance(file, str) or not file or "\x00" in file:
        return None, "no input path recorded"
    raw = Path(file)
    candidates = [raw] if raw.is_absolute() else [r / raw for r in roots]
    existing = []
    for cand in candidates:
        absolute = Path(os.path.abspath(cand))
        if absolute.is_file():
            got = output_stem(absolute)
            if got == stem:
                return absolute.resolve(), None
            # the run used another working folder: same relative path and file name
            if not raw.is_absolute() and got.rsplit("-", 1)[0] == stem.rsplit("-", 1)[0]:
                existing.append(absolute.resolve())
    if existing:
        return existing[0], "input found by its relative path (the run used another folder)"
    return None, "original film not found"


def _interval_columns(root: Path) -> dict[tuple[str, str], dict[str, float]]:
    """hka_deg_lo / hka_deg_hi from the results table, when the run wrote them."""
    table = root / "results.parquet"
    if not table.is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        names = set(pq.read_schema(table).names)
        cols = [c for c in ("hka_deg_lo", "hka_deg_hi") if c in names]
        if not cols:
            return {}
        data = pq.read_table(table, columns=["file", "side", *cols]).to_pylist()
    except Exception:  # noqa: BLE001 - a broken table only loses the optional columns
        return {}
    return {
        (str(r["file"]), str(r["side"])): {c: r[c] for c in cols if r[c] is not None}
        for r in data
        if r.get("side")
    }


def review_flags(leg: dict[str, Any], rules: FlagRules) -> list[str]:
    """Why a leg needs a reviewer's look (empty: nothing flagged)."""
    out = []
    if rules.status_not_ok and leg.get("status") != "ok":
        out.append(f"status {leg.get('status')}")
    if rules.low_confidence and leg.get("low_confidence"):
        out.append("low confidence: " + ", ".join(sorted(leg["low_confidence"])))
    level = (leg.get("plan") or {}).get("level")
    if rules.planned_osteotomy and level:
        out.append(f"planned {level}")
    if rules.run_review and leg.get("review"):
        out.extend(leg.get("review_reasons") or ["flagged by the run"])
    return out
