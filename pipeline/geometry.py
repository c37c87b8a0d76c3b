"""2-D geometry helpers and the per-leg canonical frame.

In the canonical frame of a leg, X points medially and Y distally (image y).  For a
right leg on a standard AP film that is the image frame itself; a left leg (or a
mirrored film) is reflected in x.  Every signed measurement is computed in this frame,
so left and right legs read alike by construction.
"""

from __future__ import annotations

import math

import numpy as np

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LegLandmarks

Vec = np.ndarray

# Below this separation (pixels) two landmarks are treated as coincident.
COINCIDENT_PX = 1e-6


def to_canonical(leg: LegLandmarks) -> dict[str, Vec]:
    """Landmarks of ``leg`` in its canonical frame (X medial, Y distal)."""
    s = float(leg.medial_sign)
    return {name: np.array([s * x, y], dtype=float) for name, (x, y) in leg.points.items()}


def from_canonical(p: Vec, medial_sign: int) -> tuple[float, float]:
    """A canonical-frame point back in image pixels."""
    return (float(medial_sign * p[0]), float(p[1]))


def direction_deg(v: Vec) -> float:
    """Direction of ``v`` in degrees, atan2(y, x)."""
    return math.degrees(math.atan2(float(v[1]), float(v[0])))


def wrap_deg(a: float) -> float:
    """Wrap an angle to (-180, 180]."""
    a = math.fmod(a, 360.0)
    if a <= -180.0:
        a += 360.0
    elif a > 180.0:
        a -= 360.0
    return a


def angle_between_deg(to_vec: Vec, from_vec: Vec) -> float:
    """Signed angle (deg) that rotates ``from_vec`` onto ``to_vec``, in (-180, 180]."""
    return wrap_deg(direction_deg(to_vec) - direction_deg(from_vec))


def unit(v: Vec, what: str) -> Vec:
    n = float(np.hypot(v[0], v[1]))
    if n < COINCIDENT_PX:
        raise InputError(f"coincident points: {what}")
    return v / n


def medial_normal(axis: Vec) -> Vec:
    """Unit vector perpendicular to ``axis`` that points medially (+X side).

    For a distally pointing axis (0, 1) this is (1, 0); for a proximally pointing
    one (0, -1) it is also (1, 0).
    """
    n = np.array([axis[1], -axis[0]], dtype=float)
    if n[0] < 0 or (n[0] == 0 and n[1] < 0):
        n = -n
    return n / float(np.hypot(n[0], n[1]))


def rotate_about(p: Vec, centre: Vec, angle_deg: float) -> Vec:
    """Rotate point ``p`` about ``centre`` by ``angle_deg`` (positive: +X towards +Y)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    d = p - centre
    return centre + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])


def line_intersection(p: Vec, d: Vec, q: Vec, e: Vec) -> tuple[float, float] | None:
    """Parameters (s, r) with p + s d = q + r e, or None when the lines are parallel."""
    m = np.array([[d[0], -e[0]], [d[1], -e[1]]], dtype=float)
    det = float(np.linalg.det(m))
    scale = float(np.hypot(*d) * np.hypot(*e))
    if scale == 0 or abs(det) < 1e-12 * scale:
        return None
    s, r = np.linalg.solve(m, q - p)
    return float(s), float(r)


def check_distinct(points: dict[str, Vec], *pairs: tuple[str, str]) -> None:
    """Raise InputError when two landmarks that define a line coincide."""
    for a, b in pairs:
        if a in points and b in points:
            if float(np.hypot(*(points[a] - points[b]))) < COINCIDENT_PX:
                raise InputError(f"coincident points: {a} and {b}")
