"""One leg's bones and soft tissue, built from alignment parameters, with exact landmarks.

Everything here is in millimetres in the leg's **canonical frame**: X medial, Y distal
(image y), femoral head centre at the origin.  A right leg on a standard AP film is
placed by a translation; a left leg (and a mirrored film) by a reflection in x too, so
the measurements of a generated leg do not depend on its side.

Inputs: MPTA, mLDFA and JLCA are the free angles; HKA = MPTA - mLDFA - JLCA follows
(the identity of docs/clinical-geometry.md).  ``resolve_alignment`` accepts any three of
the four (or fewer, drawing the rest).  Angle conventions (phi(v) = atan2(v.y, v.x) in
the canonical frame):

    HKA   = phi(A - K)   - phi(K - H)
    mLDFA = phi(H - K)   - phi(Cl - Cm)
    MPTA  = phi(A - K)   - phi(Pm - Pl)
    JLCA  = phi(Cl - Cm) - phi(Pl - Pm)

Landmarks ARE the anatomy drawn (docs/synthetic.md, "Landmarks"):
- femoral_head: centre of the head sphere.
- condyles: the points where the femoral joint line (the common tangent of the two
  condyle ellipses) touches each condyle, i.e. the most distal point of each condyle
  measured perpendicular to the joint line.
- plateau edges: the medial-most / lateral-most points of the proximal tibia, which is
  a half-ellipsoid cut flat along the tibial joint line, so its widest points are the
  two ends of the cut.
- knee_centre: the femoral condylar outline is symmetric about the joint-line normal
  through the middle of the condyles; K is on that normal, half way across the joint gap.
- ankle_centre: middle of the plafond (the flat distal cut of the distal tibia, whose
  width there excludes the malleolus).
- greater_trochanter: the top of the (axis-aligned) trochanter ellipse.
- shaft points: middle of the bone outline on the horizontal line at 30 % / 70 %
  (femur) or 25 % / 75 % (tibia) of the bone's vertical extent from its top.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from legalign.pipeline.errors import InputError

from .primitives import Arc, Ellipsoid, Primitive, Tube

ALIGN_KEYS = ("hka_deg", "mpta_deg", "mldfa_deg", "jlca_deg")
LENGTH_KEYS = ("femur_length_mm", "tibia_length_mm")
# Segment lengths the bone shapes are built for, per unit of patient scale (mm); the
# random ones stay well inside.
LENGTH_RANGES = {"femur_length_mm": (360.0, 620.0), "tibia_length_mm": (300.0, 520.0)}

# Attenuation per mm (roughly 60-80 kVp, relative to air): cortical bone, cancellous
# bone, fatty marrow, soft tissue (water), implant metal.
MU_CORTEX = 0.050
MU_CANCELLOUS = 0.013
MU_MARROW = 0.010
MU_SOFT = 0.016
MU_METAL = 0.60


def _v(x: float, y: float) -> np.ndarray:
    return np.array([float(x), float(y)])


def _dir(angle_rad: float) -> np.ndarray:
    return np.array([math.cos(angle_rad), math.sin(angle_rad)])


def _rot(v: np.ndarray, angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


def _distal_normal(e: np.ndarray) -> np.ndarray:
    """Normal of a medial->lateral joint-line direction (about (-1, 0)) pointing distally."""
    return np.array([e[1], -e[0]])


def resolve_alignment(
    given: dict | None, rng: np.random.Generator, scale: float = 1.0
) -> dict[str, float]:
    """Fill in an alignment: any of hka/mpta/mldfa/jlca (deg) and segment lengths (mm).

    Draws from a mixture of normal, varus and valgus populations what is not given;
    with three angles given the fourth follows from HKA = MPTA - mLDFA - JLCA; with all
    four they must satisfy it.  Drawn segment lengths grow with the patient's ``scale``.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(ALIGN_KEYS) - set(LENGTH_KEYS))
    if unknown:
        raise InputError(
            f"unknown alignment key(s) {', '.join(unknown)} "
            f"(expected {', '.join(ALIGN_KEYS + LENGTH_KEYS)})"
        )
    for k, v in given.items():
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise InputError(f"alignment {k} must be a finite number, got {v!r}")
    # Always draw the same numbers so that a given value does not shift the others.
    mode = rng.random()
    if mode < 0.5:  # normal
        d = {
            "mpta_deg": rng.normal(87.2, 2.0),
            "mldfa_deg": rng.normal(87.6, 1.8),
            "jlca_deg": rng.normal(0.8, 0.9),
        }
    elif mode < 0.8:  # varus (medial OA, tibial deformity)
        d = {
            "mpta_deg": rng.normal(84.3, 2.6),
            "mldfa_deg": rng.normal(88.6, 2.0),
            "jlca_deg": rng.normal(2.4, 1.5),
        }
    else:  # valgus (femoral deformity)
        d = {
            "mpta_deg": rng.normal(89.4, 2.3),
            "mldfa_deg": rng.normal(84.4, 2.4),
            "jlca_deg": rng.normal(-0.2, 1.2),
        }
    d["mpta_deg"] = float(np.clip(d["mpta_deg"], 78.0, 97.0))
    d["mldfa_deg"] = float(np.clip(d["mldfa_deg"], 78.0, 98.0))
    d["jlca_deg"] = float(np.clip(d["jlca_deg"], -3.0, 7.0))
    scale_len = rng.normal(0.0, 1.0)
    d_fem = 438.0 * scale * (1.0 + 0.035 * scale_len + 0.02 * rng.normal())
    d_tib = 368.0 * scale * (1.0 + 0.035 * scale_len + 0.02 * rng.normal())

    a = {k: float(given[k]) for k in ALIGN_KEYS if k in given}
    if "hka_deg" in a:
        if len(a) == 4:
            resid = a["mpta_deg"] - a["mldfa_deg"] - a["jlca_deg"] - a["hka_deg"]
            if abs(resid) > 1e-6:
                raise InputError(
                    "alignment must satisfy hka_deg = mpta_deg - mldfa_deg - jlca_deg "
                    f"(off by {resid:.4g} deg); give three of the four"
                )
        elif len(a) == 3:
            missing = next(k for k in ALIGN_KEYS if k not in a)
            if missing == "mpta_deg":
                a["mpta_deg"] = a["hka_deg"] + a["mldfa_deg"] + a["jlca_deg"]
            elif missing == "mldfa_deg":
                a["mldfa_deg"] = a["mpta_deg"] - a["jlca_deg"] - a["hka_deg"]
            else:
                a["jlca_deg"] = a["mpta_deg"] - a["mldfa_deg"] - a["hka_deg"]
        else:
            # HKA and at most one other: draw JLCA, then MPTA, derive mLDFA.
            a.setdefault("jlca_deg", d["jlca_deg"])
            if "mpta_deg" not in a and "mldfa_deg" not in a:
                a["mpta_deg"] = d["mpta_deg"]
            if "mldfa_deg" in a:
                a["mpta_deg"] = a["hka_deg"] + a["mldfa_deg"] + a["jlca_deg"]
            else:
                a["mldfa_deg"] = a["mpta_deg"] - a["jlca_deg"] - a["hka_deg"]
    else:
        for k in ("mpta_deg", "mldfa_deg", "jlca_deg"):
            a.setdefault(k, d[k])
        a["hka_deg"] = a["mpta_deg"] - a["mldfa_deg"] - a["jlca_deg"]
    out = {k: float(a[k]) for k in ALIGN_KEYS}
    out["femur_length_mm"] = float(given.get("femur_length_mm", d_fem))
    out["tibia_length_mm"] = float(given.get("tibia_length_mm", d_tib))
    for k, (lo, hi) in LENGTH_RANGES.items():
        if not lo * scale <= out[k] <= hi * scale:
            raise InputError(
                f"alignment {k}={out[k]:g} is outside {lo * scale:g}-{hi * scale:g} mm "
                f"({lo:g}-{hi:g} mm times the patient scale {scale:g})"
            )
    return out


@dataclass
class LegShape:
    """Everything random about one leg besides the alignment (mm, deg, factors)."""

    scale: float  # overall size of the bones' widths (lengths come from the alignment)
    femoral_inclination_deg: float  # K - H leans medially by this much from vertical
    ama_deg: float  # femoral anatomical vs mechanical axis
    nsa_deg: float  # neck-shaft angle
    head_radius: float
    condylar_width: float
    joint_gap: float
    gt_drop: float  # trochanter tip below the head centre (mm, may be negative)
    gt_lateral: float  # trochanter tip lateral to the anatomical axis
    axis_offset: float  # anatomical axis meets the knee this far lateral of its middle
    patella_lateral: float
    patella_height: float
    cortex: float  # cortical thickness factor (osteoporosis < 1 < sclerotic)
    density: float  # overall bone density factor
    fat: float  # soft tissue girth factor
    ankle_gap: float

    @staticmethod
    def draw(rng: np.random.Generator, scale: float) -> LegShape:
        return LegShape(
            scale=float(scale),
            femoral_inclination_deg=float(rng.uniform(-1.0, 5.0)),
            ama_deg=float(np.clip(rng.normal(5.6, 0.8), 4.0, 7.5)),
            nsa_deg=float(np.clip(rng.normal(129.0, 4.5), 117.0, 142.0)),
            head_radius=float(scale * rng.normal(23.5, 1.2)),
            condylar_width=float(scale * rng.normal(80.0, 4.0)),
            joint_gap=float(scale * rng.uniform(4.0, 8.5)),
            gt_drop=float(scale * rng.uniform(-6.0, 12.0)),
            gt_lateral=float(scale * rng.uniform(7.0, 15.0)),
            axis_offset=float(scale * rng.normal(0.0, 2.0)),
            patella_lateral=float(scale * rng.uniform(0.0, 9.0)),
            patella_height=float(scale * rng.uniform(20.0, 40.0)),
            cortex=float(rng.uniform(0.75, 1.2)),
            density=float(rng.uniform(0.8, 1.15)),
            fat=float(rng.uniform(0.85, 1.45)),
            ankle_gap=float(scale * rng.uniform(2.5, 4.5)),
        )


@dataclass
class LegModel:
    """A leg in its canonical frame: primitives per bone, soft tissue, landmarks (mm)."""

    bones: dict[str, list[Primitive]]
    soft: list[Primitive]
    landmarks: dict[str, np.ndarray]
    alignment: dict[str, float]
    shape: LegShape
    # geometry handles for implants and checks
    frame: dict[str, np.ndarray] = field(default_factory=dict)
    extents: dict[str, tuple[float, float]] = field(default_factory=dict)

    def params(self) -> dict:
        return {**self.alignment, "shape": {k: round(v, 4) for k, v in asdict(self.shape).items()}}


def stance_inclination(al: dict[str, float], ankle_x: float) -> float:
    """Femoral inclination (deg, K medial of H) that puts the ankle ``ankle_x`` mm medial
    of the hip centre, given the leg's HKA and segment lengths (clipped to -6..10 deg)."""
    lf, lt = al["femur_length_mm"], al["tibia_length_mm"]
    h = math.radians(al["hka_deg"])
    z = complex(lf, 0.0) + lt * complex(math.cos(h), math.sin(h))
    r, delta = abs(z), math.atan2(z.imag, z.real)
    phi = math.acos(max(-1.0, min(1.0, ankle_x / r))) - delta
    return float(np.clip(90.0 - math.degrees(phi), -6.0, 10.0))


def _y_extent(prims: list[Primitive]) -> tuple[float, float]:
    ys = np.concatenate([p.outline()[:, 1] for p in prims])
    return float(ys.min()), float(ys.max())


def _hcut_mid(tubes: list[Tube], y: float, what: str) -> np.ndarray:
    """Middle of the union outline of collinear ``tubes`` on the horizontal line ``y``."""
    xs = []
    for side in range(2):
        hit = None
        for t in tubes:
            b0, b1 = t.sides()[side]
            if (b1[1] - b0[1]) == 0:
                continue
            s = (y - b0[1]) / (b1[1] - b0[1])
            if -1e-9 <= s <= 1 + 1e-9:
                hit = b0[0] + s * (b1[0] - b0[0])
                break
        if hit is None:  # pragma: no cover - guarded by construction
            raise RuntimeError(f"{what}: shaft level y={y:.1f} mm is outside the shaft")
        xs.append(hit)
    return _v(0.5 * (xs[0] + xs[1]), y)


def build_leg(al: dict[str, float], sh: LegShape) -> LegModel:
    s = sh.scale
    dens = sh.density
    cx = MU_CORTEX * dens
    ci = MU_CANCELLOUS * dens
    mi = MU_MARROW
    H = _v(0.0, 0.0)
    phi_f = math.radians(90.0 - sh.femoral_inclination_deg)
    K = H + al["femur_length_mm"] * _dir(phi_f)
    phi_t = phi_f + math.radians(al["hka_deg"])
    A = K + al["tibia_length_mm"] * _dir(phi_t)
    e_f = _dir(phi_f - math.pi - math.radians(al["mldfa_deg"]))  # Cm -> Cl
    n_f = _distal_normal(e_f)
    e_t = _dir(phi_t - math.radians(al["mpta_deg"]) + math.pi)  # Pm -> Pl
    n_t = _distal_normal(e_t)
    g = sh.joint_gap
    wc = sh.condylar_width
    sc = 0.58 * wc  # distance between the condyles' distal points
    wp = 0.94 * wc  # plateau width
    Cmid = K - n_f * (g / 2)
    Cm = Cmid - e_f * (sc / 2)
    Cl = Cmid + e_f * (sc / 2)
    Pmid = K + n_t * (g / 2)
    Pm = Pmid - e_t * (wp / 2)
    Pl = Pmid + e_t * (wp / 2)

    # ---------------------------------------------------------------- femur
    rh = sh.head_radius
    m_up = (H - K) / al["femur_length_mm"]
    a_up = _rot(m_up, -math.radians(sh.ama_deg))  # anatomical axis, leaning laterally
    Kax = Cmid + e_f * sh.axis_offset
    dn = _rot(a_up, math.radians(180.0 - sh.nsa_deg))  # neck base -> head, medial-up
    # N0 = Kax + t a_up = H - w dn
    mat = np.array([[a_up[0], dn[0]], [a_up[1], dn[1]]])
    t_n, w_n = np.linalg.solve(mat, H - Kax)
    N0 = Kax + t_n * a_up
    lat_up = np.array([-a_up[1], a_up[0]])  # perpendicular to the axis
    if lat_up[0] > 0:
        lat_up = -lat_up  # lateral (-X)
    femur: list[Primitive] = []
    head_shell = 1.6 * s * sh.cortex
    femur.append(Ellipsoid(H.copy(), _v(1, 0), rh, rh, rh, head_shell, cx, ci))
    neck_end = N0 - dn * (8.0 * s)
    femur.append(Tube(H.copy(), neck_end, 0.66 * rh, 0.78 * rh, 0.14 * sh.cortex, cx, ci, 0.9))
    # shaft: three collinear tubes, wide at the ends, narrow mid-shaft
    Sd = Kax + a_up * (40.0 * s)
    Su = N0 + a_up * (8.0 * s)
    Sm1 = Sd + (Su - Sd) * 0.33
    Sm2 = Sd + (Su - Sd) * 0.7
    rd, rm, ru = 0.3 * wc, 13.2 * s, 21.0 * s
    cf = min(0.55, 0.42 * sh.cortex)
    shaft = [
        Tube(Sd, Sm1, rd, rm, cf * 0.6, cx, mi, 1.05, cf),
        Tube(Sm1, Sm2, rm, rm * 1.02, cf, cx, mi, 1.05),
        Tube(Sm2, Su, rm * 1.02, ru, cf, cx, ci, 0.95, 0.08),
    ]
    femur += shaft
    # intertrochanteric mass, trochanters
    femur.append(
        Ellipsoid(
            N0 - a_up * (18.0 * s) + lat_up * (2.0 * s),
            a_up,
            36.0 * s,
            26.0 * s,
            20.0 * s,
            1.4 * s,
            cx,
            ci,
        )
    )

    # The trochanter tip must be the most proximal femur point lateral to the shaft:
    # keep it 3 mm above every other part's outline there.
    def axis_x(y):
        return Kax[0] + (y - Kax[1]) * a_up[0] / a_up[1]

    others = np.concatenate([p.outline() for p in femur[1:]])
    lateral = others[others[:, 0] < axis_x(others[:, 1]) - 5.0 * s]
    gt_y = H[1] + sh.gt_drop
    if lateral.size:
        gt_y = min(gt_y, float(lateral[:, 1].min()) - 3.0 * s)
    ax_x = axis_x(gt_y)
    T = _v(ax_x - sh.gt_lateral, gt_y)
    bg = 32.0 * s
    femur.append(Ellipsoid(T + _v(0, bg), _v(1, 0), 15.0 * s, bg, 20.0 * s, 1.4 * s, cx, ci))
    med = -lat_up
    femur.append(
        Ellipsoid(
            N0 - a_up * (34.0 * s) + med * (15.0 * s),
            a_up,
            13.0 * s,
            8.5 * s,
            9.0 * s,
            1.3 * s,
            cx,
            ci,
        )
    )
    # distal femur: metaphysis and condyles
    femur.append(
        Ellipsoid(Cmid - n_f * (34.0 * s), e_f, wc / 2, 27.0 * s, 0.42 * wc, 1.6 * s, cx, ci)
    )
    ac = (wc - sc) / 2
    bc = 25.0 * s
    for cpt in (Cm, Cl):
        femur.append(Ellipsoid(cpt - n_f * bc, e_f, ac, bc, 0.36 * wc, 1.5 * s, cx, ci))

    # ---------------------------------------------------------------- tibia
    t_dir = (A - Pmid) / float(np.hypot(*(A - Pmid)))
    e_ta = np.array([-t_dir[1], t_dir[0]])  # lateral at the ankle
    tibia: list[Primitive] = []
    tibia.append(
        Ellipsoid(Pmid.copy(), e_t, wp / 2, 30.0 * s, 0.3 * wp, 1.1 * s, cx, ci, keep=n_t.copy())
    )
    tibia.append(  # metaphysis: a cone from under the plateau into the shaft
        Tube(
            Pmid + n_t * (15.0 * s),
            Pmid + t_dir * (55.0 * s),
            0.42 * wp,
            15.5 * s,
            0.05,
            cx,
            ci,
            0.75,
            caps=False,
        )
    )
    # subchondral plate along the plateau, just inside the outline
    tibia.append(
        Tube(
            Pm + n_t * (1.5 * s) + e_t * (3.0 * s),
            Pl + n_t * (1.5 * s) - e_t * (3.0 * s),
            1.3 * s,
            1.3 * s,
            0.0,
            cx,
            cx,
            6.0,
        )
    )
    for sgn in (-1.0, 1.0):  # tibial spines
        tibia.append(
            Ellipsoid(
                Pmid + e_t * (sgn * 5.0 * s),
                e_t,
                4.5 * s,
                8.0 * s,
                8.0 * s,
                1.0 * s,
                cx,
                ci,
                keep=-n_t,
            )
        )
    Lt = float(np.hypot(*(A - Pmid)))
    T0 = Pmid + t_dir * (28.0 * s)
    Tm = Pmid + t_dir * (0.5 * Lt)
    T1 = A - t_dir * (32.0 * s)
    ct = min(0.55, 0.4 * sh.cortex)
    tshaft = [
        Tube(T0, Tm, 19.0 * s, 11.5 * s, ct * 0.45, cx, mi, 0.95, ct),
        Tube(Tm, T1, 11.5 * s, 13.5 * s, ct, cx, mi, 0.95, ct * 0.6),
    ]
    tibia += tshaft
    wa = 35.0 * s  # distal tibial width at the plafond
    tibia.append(
        Ellipsoid(A.copy(), e_ta, wa / 2, 54.0 * s, 0.55 * wa, 1.4 * s, cx, ci, keep=-t_dir)
    )
    tibia.append(
        Tube(
            A - t_dir * (1.5 * s) - e_ta * (wa / 2 - 3 * s),
            A - t_dir * (1.5 * s) + e_ta * (wa / 2 - 3 * s),
            1.2 * s,
            1.2 * s,
            0.0,
            cx,
            cx,
            5.0,
        )
    )
    # medial malleolus: widest at its centre level, exactly reaching the plafond width
    tibia.append(
        Ellipsoid(
            A - e_ta * (wa / 2 - 6.0 * s) + t_dir * (4.0 * s),
            t_dir,
            15.0 * s,
            6.0 * s,
            9.0 * s,
            1.2 * s,
            cx,
            ci,
        )
    )

    # ---------------------------------------------------------------- fibula
    fib_head = Pl + e_t * (1.0 * s) + n_t * (24.0 * s)
    lat_mall = A + e_ta * (wa / 2 + 3.0 * s) + t_dir * (8.0 * s)
    fibula: list[Primitive] = [
        Ellipsoid(fib_head, t_dir, 13.0 * s, 10.5 * s, 11.0 * s, 1.2 * s, cx, ci),
        Tube(fib_head, lat_mall - t_dir * (15.0 * s), 7.0 * s, 7.5 * s, 0.45 * sh.cortex, cx, mi),
        Ellipsoid(lat_mall, t_dir, 24.0 * s, 8.5 * s, 10.0 * s, 1.2 * s, cx, ci),
    ]

    # ---------------------------------------------------------------- patella
    patella: list[Primitive] = [
        Ellipsoid(
            Cmid - n_f * sh.patella_height + e_f * sh.patella_lateral,
            e_f,
            21.0 * s,
            24.0 * s,
            11.0 * s,
            1.3 * s,
            cx * 0.55,
            ci * 0.9,
        )
    ]

    # ---------------------------------------------------------------- foot
    ta = A + t_dir * (sh.ankle_gap + 13.0 * s)
    foot: list[Primitive] = [
        Ellipsoid(ta, e_ta, wa / 2 + 2.0 * s, 13.0 * s, 24.0 * s, 1.2 * s, cx, ci),  # talus
        Ellipsoid(
            A + t_dir * (47.0 * s) + e_ta * (4.0 * s),
            e_ta,
            22.0 * s,
            18.0 * s,
            26.0 * s,
            1.4 * s,
            cx,
            ci,
        ),  # calcaneus
        Ellipsoid(
            A + t_dir * (33.0 * s) - e_ta * (19.0 * s),
            e_ta,
            12.0 * s,
            9.0 * s,
            14.0 * s,
            1.0 * s,
            cx,
            ci,
        ),  # navicular
        Ellipsoid(
            A + t_dir * (40.0 * s) + e_ta * (21.0 * s),
            e_ta,
            11.0 * s,
            10.0 * s,
            16.0 * s,
            1.0 * s,
            cx,
            ci,
        ),  # cuboid
    ]
    foot.append(  # forefoot seen end-on: metatarsals and toes overlapping
        Ellipsoid(
            A + t_dir * (62.0 * s) - e_ta * (6.0 * s),
            e_ta,
            32.0 * s,
            13.0 * s,
            20.0 * s,
            1.0 * s,
            ci,
            ci * 0.8,
        )
    )

    # ---------------------------------------------------------------- hemipelvis
    up_lat = _rot(_v(0, -1), -math.radians(20.0))
    pelvis: list[Primitive] = [
        Arc(H.copy(), rh + 3.5 * s, 2.6 * s, up_lat, math.radians(70.0), cx, 3.0),
        Ellipsoid(
            H + _v(14, -6) * s, _v(0, 1), rh + 14 * s, rh + 4 * s, 9.0 * s, 2.0 * s, cx, ci
        ),  # acetabular walls / teardrop region
        Ellipsoid(
            H + _v(-8, -72) * s,
            _rot(_v(1, 0), -math.radians(22.0)),
            72.0 * s,
            58.0 * s,
            5.0 * s,
            2.0 * s,
            cx,
            ci * 0.7,
        ),  # ilium
        Ellipsoid(
            H + _v(18, 60) * s, _v(0, 1), 28.0 * s, 15.0 * s, 18.0 * s, 1.6 * s, cx, ci
        ),  # ischium
    ]
    soft: list[Primitive] = []
    fat = sh.fat
    chain = [  # (point, radius) along the limb; spheres at the joints avoid notches
        (H + _v(-22, -50) * s, 92 * s * fat),
        (K - _v(0, 30) * s, 56 * s * fat),
        (K + t_dir * (45 * s), 50 * s * fat),
        (K + t_dir * (0.4 * Lt), 57 * s * fat),
        (A - t_dir * (50 * s), 34 * s * fat),
        (A + t_dir * (30 * s), 33 * s * min(fat, 1.15)),
    ]
    for (p0, r0), (p1, r1) in zip(chain[:-1], chain[1:], strict=True):
        soft.append(Tube(p0, p1, r0, r1, 0.0, 0.0, MU_SOFT))
    for p0, r0 in chain[1:-1]:
        soft.append(Ellipsoid(p0, _v(1, 0), r0, r0, r0, 0.0, MU_SOFT, MU_SOFT))
    soft.append(
        Ellipsoid(A + t_dir * (52 * s), e_ta, 52 * s, 34 * s, 42 * s, 0.0, MU_SOFT, MU_SOFT)
    )

    bones = {
        "femur": femur,
        "tibia": tibia,
        "fibula": fibula,
        "patella": patella,
        "foot": foot,
        "pelvis": pelvis,
    }

    # ---------------------------------------------------------------- landmarks
    f_top, f_bot = _y_extent(femur)
    t_top, t_bot = _y_extent(tibia)
    lm = {
        "femoral_head": H.copy(),
        "femoral_condyle_medial": Cm,
        "femoral_condyle_lateral": Cl,
        "tibial_plateau_medial": Pm,
        "tibial_plateau_lateral": Pl,
        "knee_centre": K,
        "ankle_centre": A,
        "greater_trochanter": T,
        "femoral_shaft_proximal": _hcut_mid(shaft, f_top + 0.3 * (f_bot - f_top), "femur"),
        "femoral_shaft_distal": _hcut_mid(shaft, f_top + 0.7 * (f_bot - f_top), "femur"),
        "tibial_shaft_proximal": _hcut_mid(tshaft, t_top + 0.25 * (t_bot - t_top), "tibia"),
        "tibial_shaft_distal": _hcut_mid(tshaft, t_top + 0.75 * (t_bot - t_top), "tibia"),
    }
    frame = {
        "e_f": e_f,
        "n_f": n_f,
        "e_t": e_t,
        "n_t": n_t,
        "t_dir": t_dir,
        "e_ta": e_ta,
        "a_up": a_up,
        "Kax": Kax,
        "N0": N0,
        "Cmid": Cmid,
        "Pmid": Pmid,
        "Sd": Sd,
        "Su": Su,
        "T0": T0,
        "T1": T1,
        "wc": np.array([wc, sc, wp, wa, rd, rm, ru]),
    }
    return LegModel(
        bones=bones,
        soft=soft,
        landmarks=lm,
        alignment=dict(al),
        shape=sh,
        frame=frame,
        extents={"femur": (f_top, f_bot), "tibia": (t_top, t_bot)},
    )


def pubis(hip_half: float, s: float) -> list[Primitive]:
    """Pubic rami and symphysis of one side (canonical frame; midline at X = hip_half)."""
    cx, ci = MU_CORTEX, MU_CANCELLOUS
    sym = _v(hip_half - 12.0 * s, 40.0 * s)
    return [
        Tube(_v(16, 6) * s, sym + _v(-2, -10) * s, 9.5 * s, 8.5 * s, 0.3, cx, ci),  # sup. ramus
        Ellipsoid(sym, _v(0, 1), 21.0 * s, 10.0 * s, 14.0 * s, 1.5 * s, cx, ci),  # body
        Tube(sym + _v(-3, 14) * s, _v(26, 74) * s, 7.5 * s, 7.0 * s, 0.3, cx, ci),  # inf. ramus
    ]
