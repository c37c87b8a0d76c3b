"""The durable review state: SQLite in WAL mode in the results folder (``review.sqlite``).

Two tables: ``legs`` holds the current state of each reviewed leg (decision, reject
reason, amended points, version, reviewer, time) and ``events`` every change ever made
(append only).  Each change is one transaction with ``synchronous=FULL``: once a request
has been answered, the change survives a crash or kill of the server (and a power loss).

Concurrency: every change names the version it was made on; when the leg has moved on
since (another tab, another reviewer), the change is refused with ``Conflict`` instead of
overwriting it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from legalign.pipeline.landmarks import LANDMARK_NAMES

DB_NAME = "review.sqlite"
SCHEMA_VERSION = 1
# Review states of a leg.  "unreviewed" has no row; "in_progress": points amended, no
# decision yet (or a decision undone by moving a point again).
STATES = ("unreviewed", "in_progress", "accepted", "amended", "rejected")
DECIDED = ("accepted", "amended", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS legs (
    leg_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    points TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    leg_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    at TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    points TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_leg ON events (leg_id, seq);
"""


class ReviewError(ValueError):
    """A change that cannot be made (bad action, reason, point or reviewer name)."""


class Conflict(Exception):
    """The leg changed since the version the client saw."""

    def __init__(self, current: LegState) -> None:
        super().__init__(
            f"leg changed since you loaded it (now version {current.version}, "
            f"{current.state} by {current.reviewer or 'nobody'} at {current.updated_at or '-'})"
        )
        self.current = current


@dataclass
class LegState:
    leg_id: str
    version: int = 0
    state: str = "unreviewed"
    reason: str | None = None
    points: dict[str, list[float]] = field(default_factory=dict)  # amended landmarks only
    reviewer: str | None = None
    updated_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_points(points: Any, width: int | None, height: int | None) -> dict[str, list[float]]:
    """Amended points: known landmark names, finite, inside the image."""
    if not isinstance(points, dict):
        raise ReviewError("points must be an object {landmark: [x, y]}")
    out: dict[str, list[float]] = {}
    for name, xy in points.items():
        if name not in LANDMARK_NAMES:
            raise ReviewError(f"unknown landmark {name!r}")
        if (
            not isinstance(xy, list | tuple)
            or len(xy) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in xy)
        ):
            raise ReviewError(f"landmark {name!r} must be [x, y]")
        x, y = float(xy[0]), float(xy[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ReviewError(f"landmark {name!r} has a non-finite coordinate")
        if width is not None and height is not None:
            if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
                raise ReviewError(f"landmark {name!r} lies outside the image")
        out[name] = [x, y]
    return out


def check_reviewer(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ReviewError("a reviewer name is required")
    name = " ".join(name.split())
    if len(name) > 80 or any(ord(c) < 32 for c in name):
        raise ReviewError("reviewer name: at most 80 printable characters")
    return name


class ReviewStore:
    """Review state of one results folder (thread safe; one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @classmethod
    def for_results(cls, results_dir: str | Path) -> ReviewStore:
        return cls(Path(results_dir) / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ reads
    def get(self, leg_id: str) -> LegState:
        with self._lock:
            row = self._db.execute(
                "SELECT version, state, reason, points, reviewer, updated_at FROM legs "
                "WHERE leg_id = ?",
                (leg_id,),
            ).fetchone()
        return self._state(leg_id, row)

    def all(self) -> dict[str, LegState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT leg_id, version, state, reason, points, reviewer, updated_at FROM legs"
            ).fetchall()
        return {r[0]: self._state(r[0], r[1:]) for r in rows}

    def history(self, leg_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, version, at, reviewer, action, state, reason, points FROM events "
                "WHERE leg_id = ? ORDER BY seq",
                (leg_id,),
            ).fetchall()
        keys = ("seq", "version", "at", "reviewer", "action", "state", "reason", "points")
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            d["points"] = json.loads(d["points"])
            out.append(d)
        return out

    @staticmethod
    def _state(leg_id: str, row: Any) -> LegState:
        if row is None:
            return LegState(leg_id)
        version, state, reason, points, reviewer, at = row
        return LegState(leg_id, version, state, reason, json.loads(points), reviewer, at)

    # ----------------------------------------------------------------- changes
    def change(
        self,
        leg_id: str,
        *,
        expected_version: object,  # checked here: an int
        action: str,
        reviewer: object,  # checked here: check_reviewer
        points: dict[str, list[float]] | None = None,
        reason: str | None = None,
    ) -> LegState:
        """Apply one change and return the new state; ``Conflict`` when the leg is no
        longer at ``expected_version``.

        Actions: ``points`` (replace the amended points; a decision made on other points
        is undone), ``accept`` (accepted, or amended when points were moved), ``reject``
        (with ``reason``), ``reopen`` (back to in progress, points kept).
        """
        reviewer = check_reviewer(reviewer)
        if action not in ("points", "accept", "reject", "reopen"):
            raise ReviewError(f"unknown action {action!r}")
        if not isinstance(expected_version, int) or isinstance(expected_version, bool):
            raise ReviewError("version must be an integer")
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute(
                    "SELECT version, state, reason, points, reviewer, updated_at FROM legs "
                    "WHERE leg_id = ?",
                    (leg_id,),
                ).fetchone()
                old = self._state(leg_id, row)
                if old.version != expected_version:
                    raise Conflict(old)
                new = LegState(
                    leg_id,
                    old.version + 1,
                    old.state,
                    old.reason,
                    dict(old.points),
                    reviewer,
                    _now(),
                )
                if action == "points":
                    if points is None:
                        raise ReviewError("points required")
                    new.points = points
                    new.state, new.reason = "in_progress", None
                elif action == "accept":
                    new.state, new.reason = ("amended" if new.points else "accepted"), None
                elif action == "reject":
                    if not reason:
                        raise ReviewError("a reject reason is required")
                    new.state, new.reason = "rejected", reason
                else:
                    new.state, new.reason = "in_progress", None
                pts = json.dumps(new.points, sort_keys=True)
                cur.execute(
                    "INSERT INTO legs (leg_id, version, state, reason, points, reviewer, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(leg_id) DO UPDATE "
                    "SET version=excluded.version, state=excluded.state, "
                    "reason=excluded.reason, points=excluded.points, "
                    "reviewer=excluded.reviewer, updated_at=excluded.updated_at",
                    (leg_id, new.version, new.state, new.reason, pts, reviewer, new.updated_at),
                )
                cur.execute(
                    "INSERT INTO events (leg_id, version, at, reviewer, action, state, reason, "
                    "points) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        leg_id,
                        new.version,
                        new.updated_at,
                        reviewer,
                        action,
                        new.state,
                        new.reason,
                        pts,
                    ),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return new
