"""Projected solids: the X-ray line integral of simple 3-D shapes, rasterised in 2-D.

Every primitive is the parallel projection of a solid (ellipsoid, tapered cylinder,
torus segment) onto the film.  ``path(x, y)`` returns, at pixel centres, three line
integrals (unitless, mu * length): cortex density times the outer chord, cortex density
times the chord of the shell-less interior, and interior density times that chord.  The
attenuation of one part alone is ``outer - inner + interior``: a cortical shell is a
denser outer layer of thickness ``shell`` around a less dense interior (medulla /
cancellous bone), so a shaft shows the bright cortical edges of a real radiograph.
``render_group`` combines the parts of one bone into one solid.

Geometry is stored in whatever unit the caller uses (mm in the anatomy module, pixels
after ``scaled(spacing)``).  ``mirror`` reflects about x = 0, ``moved`` translates: the
anatomy is built once in a leg's canonical frame (X medial, Y distal) and mapped onto
the film by a reflection, a translation and a scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / float(np.hypot(v[0], v[1]))


@dataclass
class Ellipsoid:
    """Ellipsoid with one principal axis along the beam.

    ``c`` centre, ``u`` unit direction of semi-axis ``a`` (``b`` is perpendicular),
    ``depth`` the semi-axis along the beam.  ``keep``: optional unit vector; only the
    half with ``(p - c) . keep >= 0`` exists (a flat cut through the centre, used for
    the tibial plateau and plafond).
    """

    c: np.ndarray
    u: np.ndarray
    a: float
    b: float
    depth: float
    shell: float
    mu_c: float
    mu_i: float
    keep: np.ndarray | None = None

    def bbox(self) -> tuple[float, float, float, float]:
        u = self.u
        hx = float(np.hypot(self.a * u[0], self.b * u[1]))
        hy = float(np.hypot(self.a * u[1], self.b * u[0]))
        return (self.c[0] - hx, self.c[1] - hy, self.c[0] + hx, self.c[1] + hy)

    def outline(self, n: int = 4096) -> np.ndarray:
        """Boundary points (n x 2) of the projected (possibly half) ellipse."""
        t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        v = np.array([-self.u[1], self.u[0]])
        pts = (
            self.c[None, :]
            + (self.a * np.cos(t))[:, None] * self.u[None, :]
            + (self.b * np.sin(t))[:, None] * v[None, :]
        )
        if self.keep is not None:
            k = (pts - self.c[None, :]) @ self.keep >= -1e-12
            pts = pts[k]
        return pts

    def path(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ux, uy = float(self.u[0]), float(self.u[1])
        dx = x - float(self.c[0])
        dy = y - float(self.c[1])
        pu = dx * ux + dy * uy
        pv = -dx * uy + dy * ux
        q = (pu / self.a) ** 2 + (pv / self.b) ** 2
        outer = 2.0 * self.depth * np.sqrt(np.maximum(1.0 - q, 0.0))
        ai, bi, di = self.a - self.shell, self.b - self.shell, self.depth - self.shell
        if ai > 0 and bi > 0 and di > 0:
            qi = (pu / ai) ** 2 + (pv / bi) ** 2
            inner = 2.0 * di * np.sqrt(np.maximum(1.0 - qi, 0.0))
        else:
            inner = np.zeros_like(outer)
        if self.keep is not None:
            kx, ky = float(self.keep[0]), float(self.keep[1])
            k = dx * kx + dy * ky >= 0.0
            outer = np.where(k, outer, 0.0)
            inner = np.where(k, inner, 0.0)
        return self.mu_c * outer, self.mu_c * inner, self.mu_i * inner

    def mirror(self) -> Ellipsoid:
        return replace(
            self,
            c=np.array([-self.c[0], self.c[1]]),
            u=np.array([-self.u[0], self.u[1]]),
            keep=None if self.keep is None else np.array([-self.keep[0], self.keep[1]]),
        )

    def moved(self, dx: float, dy: float) -> Ellipsoid:
        return replace(self, c=self.c + np.array([dx, dy]))

    def scaled(self, k: float) -> Ellipsoid:
        """Lengths divided by ``k`` (mm -> pixels for k = spacing); mu times k."""
        return replace(
            self,
            c=self.c / k,
            a=self.a / k,
            b=self.b / k,
            depth=self.depth / k,
            shell=self.shell / k,
            mu_c=self.mu_c * k,
            mu_i=self.mu_i * k,
        )


@dataclass
class Tube:
    """Tapered cylinder from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), flat ends.

    The cross-section is an ellipse ``depth_k`` times deeper along the beam than wide.
    Its projected outline is exactly the two lines ``C(t) +- r(t) n``.
    """

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    shell_frac: float
    mu_c: float
    mu_i: float
    depth_k: float = 1.0
    shell_frac1: float | None = None  # cortical fraction at p1 (default: shell_frac)
    caps: bool = True  # rounded (hemispherical) ends; False: flat ends

    def bbox(self) -> tuple[float, float, float, float]:
        r = max(self.r0, self.r1)
        xs = (self.p0[0], self.p1[0])
        ys = (self.p0[1], self.p1[1])
        return (min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r)

    def sides(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The two boundary segments (start, end) of the projected outline."""
        u = _unit(self.p1 - self.p0)
        n = np.array([-u[1], u[0]])
        return [(self.p0 + s * self.r0 * n, self.p1 + s * self.r1 * n) for s in (1.0, -1.0)]

    def outline(self, n: int = 256) -> np.ndarray:
        (a0, a1), (b0, b1) = self.sides()
        t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        ring = np.stack([np.cos(t), np.sin(t)], axis=1)
        corners = np.array([a0, a1, b1, b0])
        if not self.caps:
            return corners
        caps = np.concatenate([self.p0 + self.r0 * ring, self.p1 + self.r1 * ring])
        return np.concatenate([corners, caps])

    def path(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.p1 - self.p0
        length = float(np.hypot(d[0], d[1]))
        ux, uy = float(d[0]) / length, float(d[1]) / length
        dx = x - float(self.p0[0])
        dy = y - float(self.p0[1])
        s = (dx * ux + dy * uy) / length
        dist = -dx * uy + dy * ux
        sc = np.minimum(np.maximum(s, 0.0), 1.0)
        r = float(self.r0) + float(self.r1 - self.r0) * sc
        # rounded (hemispherical) ends: beyond p0 / p1 the distance to the end point
        if self.caps:
            along = (s - sc) * length
            d2 = dist * dist + along * along
        else:
            d2 = np.where((s >= 0.0) & (s <= 1.0), dist * dist, np.float32(1e30))
        outer = np.sqrt(np.maximum(r * r - d2, 0.0))
        f0 = float(self.shell_frac)
        f1 = f0 if self.shell_frac1 is None else float(self.shell_frac1)
        ri = r * (1.0 - f0) if f1 == f0 else r * (1.0 - (f0 + (f1 - f0) * sc))
        inner = np.sqrt(np.maximum(ri * ri - d2, 0.0))
        k = 2.0 * self.depth_k
        return (k * self.mu_c) * outer, (k * self.mu_c) * inner, (k * self.mu_i) * inner

    def mirror(self) -> Tube:
        return replace(
            self, p0=np.array([-self.p0[0], self.p0[1]]), p1=np.array([-self.p1[0], self.p1[1]])
        )

    def moved(self, dx: float, dy: float) -> Tube:
        off = np.array([dx, dy])
        return replace(self, p0=self.p0 + off, p1=self.p1 + off)

    def scaled(self, k: float) -> Tube:
        return replace(
            self,
            p0=self.p0 / k,
            p1=self.p1 / k,
            r0=self.r0 / k,
            r1=self.r1 / k,
            mu_c=self.mu_c * k,
            mu_i=self.mu_i * k,
        )


@dataclass
class Arc:
    """Segment of a torus (ring of tube radius ``t``) around ``c`` at radius ``radius``,
    within ``half_angle`` (radians) of the unit direction ``mid``; e.g. the acetabular
    roof (sourcil)."""

    c: np.ndarray
    radius: float
    t: float
    mid: np.ndarray
    half_angle: float
    mu: float
    depth_k: float = 1.0

    def bbox(self) -> tuple[float, float, float, float]:
        r = self.radius + self.t
        return (self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r)

    def outline(self, n: int = 64) -> np.ndarray:
        ang0 = np.arctan2(self.mid[1], self.mid[0])
        t = np.linspace(ang0 - self.half_angle, ang0 + self.half_angle, n)
        ring = np.stack([np.cos(t), np.sin(t)], axis=1)
        return np.concatenate(
            [self.c + (self.radius + self.t) * ring, self.c + (self.radius - self.t) * ring[::-1]]
        )

    def path(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dx = x - float(self.c[0])
        dy = y - float(self.c[1])
        rho = np.hypot(dx, dy)
        mx, my = float(self.mid[0]), float(self.mid[1])
        cosang = (dx * mx + dy * my) / np.maximum(rho, 1e-9)
        chord = 2.0 * self.depth_k * np.sqrt(np.maximum(self.t**2 - (rho - self.radius) ** 2, 0.0))
        out = np.where(cosang >= np.cos(self.half_angle), self.mu * chord, 0.0)
        return out, np.zeros_like(out), np.zeros_like(out)

    def mirror(self) -> Arc:
        return replace(
            self, c=np.array([-self.c[0], self.c[1]]), mid=np.array([-self.mid[0], self.mid[1]])
        )

    def moved(self, dx: float, dy: float) -> Arc:
        return replace(self, c=self.c + np.array([dx, dy]))

    def scaled(self, k: float) -> Arc:
        return replace(self, c=self.c / k, radius=self.radius / k, t=self.t / k, mu=self.mu * k)


Primitive = Ellipsoid | Tube | Arc


def render_group(
    prims: list[Primitive],
    shape: tuple[int, int],
    texture: np.ndarray | None = None,
    texture_amp: float = 0.0,
) -> tuple[np.ndarray | None, tuple[int, int, int, int]]:
    """Rasterise one bone (or one material) over its primitives' joint bbox.

    Returns ``(buffer, (x0, y0, x1, y1))``: the line integral over rows y0:y1 and
    columns x0:x1 of an image of ``shape`` (H, W), or ``(None, ...)`` when off-image.
    The primitives are treated as one solid: outer chords, inner (shell-less) chords and
    interior attenuation are each combined by ``max``, so a cortex shows only where no
    other part's interior covers it (the outline of the union), not at internal seams.
    ``texture`` (same shape as the image) modulates the interior: cancellous grain.
    """
    h, w = shape
    boxes = np.array([p.bbox() for p in prims])
    x0 = max(int(np.floor(boxes[:, 0].min())), 0)
    y0 = max(int(np.floor(boxes[:, 1].min())), 0)
    x1 = min(int(np.ceil(boxes[:, 2].max())) + 1, w)
    y1 = min(int(np.ceil(boxes[:, 3].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None, (0, 0, 0, 0)
    bufs = [np.zeros((y1 - y0, x1 - x0), dtype=np.float32) for _ in range(3)]
    for p in prims:
        bx0, by0, bx1, by1 = p.bbox()
        px0 = max(int(np.floor(bx0)), x0)
        py0 = max(int(np.floor(by0)), y0)
        px1 = min(int(np.ceil(bx1)) + 1, x1)
        py1 = min(int(np.ceil(by1)) + 1, y1)
        if px1 <= px0 or py1 <= py0:
            continue
        xs = np.arange(px0, px1, dtype=np.float32)[None, :]
        ys = np.arange(py0, py1, dtype=np.float32)[:, None]
        for buf, val in zip(bufs, p.path(xs, ys), strict=True):
            sub = buf[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0]
            np.maximum(sub, val.astype(np.float32, copy=False), out=sub)
    outer, inner, interior = bufs
    if texture is not None and texture_amp:
        interior *= 1.0 + texture_amp * texture[y0:y1, x0:x1]
    outer -= inner
    outer += interior
    return outer, (x0, y0, x1, y1)
