"""A whole synthetic standing full-leg AP film: layout, rendering, distractors, noise.

Film ``seed`` draws from independent random streams (anatomy per side, layout, implants,
distractors, exposure/noise, spacing), so e.g. the right leg of a ``legs="right"`` film
is the right leg of the ``legs="both"`` film of the same seed, and a small film shows
the same patient as the native film of the same seed.

No distractor is placed at or relative to a landmark: the ruler, calibration ball, L/R
markers, grid, seams and collimation edges are placed uniformly at random on the film
(collimation only within the margins that hold no bone); implants follow a bone's shaft
or joint surface at random axial positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from legalign.pipeline.enums import Side
from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks

from .anatomy import (
    MU_CORTEX,
    MU_METAL,
    MU_SOFT,
    LegModel,
    LegShape,
    build_leg,
    pubis,
    resolve_alignment,
    stance_inclination,
)
from .primitives import Ellipsoid, Primitive, Tube, render_group

SIZES = {"native": None, "small": 1.0}
NATIVE_SPACINGS = (0.125, 0.139, 0.143, 0.148, 0.15, 0.16, 0.168, 0.175)
LEGS = ("both", "right", "left")
BITS = (12, 14, 16)

# stream ids for np.random.SeedSequence([seed, stream])
_S_PATIENT, _S_RIGHT, _S_LEFT, _S_LAYOUT, _S_IMPLANT, _S_DISTRACT, _S_EXPOSE, _S_SPACING = range(8)


@dataclass
class SyntheticFilm:
    """One generated film.  ``image`` is uint16, bone bright, values < 2**bits_stored."""

    image: np.ndarray
    bits_stored: int
    spacing_mm: float
    legs: list[LegLandmarks]
    mirrored: bool
    params: dict
    # side -> {"femur": [x0, y0, ...], "tibia": [...]}: bone outlines in pixels
    outlines: dict = field(default_factory=dict)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, stream]))


class _Placer:
    """Maps a leg's canonical-frame primitives (mm) to film pixels."""

    def __init__(self, hip_x: float, hip_y: float, sign: int, x0: float, y0: float, sp: float):
        self.hx, self.hy, self.sign, self.x0, self.y0, self.sp = hip_x, hip_y, sign, x0, y0, sp

    def prim(self, p: Primitive) -> Primitive:
        q = p if self.sign > 0 else p.mirror()
        return q.moved(self.hx - self.x0, self.hy - self.y0).scaled(self.sp)

    def point(self, v: np.ndarray) -> tuple[float, float]:
        x = self.hx + self.sign * float(v[0])
        y = self.hy + float(v[1])
        return ((x - self.x0) / self.sp, (y - self.y0) / self.sp)

    def mm(self, v: np.ndarray) -> np.ndarray:
        """Canonical point -> film mm (origin at the film's top-left pixel centre)."""
        return np.array(
            [self.hx + self.sign * float(v[0]) - self.x0, self.hy + float(v[1]) - self.y0]
        )


def _implants(leg: LegModel, rng: np.random.Generator) -> tuple[list[Primitive], list[dict]]:
    """Metal following the bone: plates with screws, knee arthroplasty (canonical mm)."""
    prims: list[Primitive] = []
    used: list[dict] = []
    f = leg.frame
    s = leg.shape.scale
    wc, sc, wp, wa, rd, rm, ru = (float(v) for v in f["wc"])
    lat_f = np.array([-f["a_up"][1], f["a_up"][0]])
    if lat_f[0] > 0:
        lat_f = -lat_f
    if rng.random() < 0.12:
        kind = str(rng.choice(["femur_lateral", "tibia_medial", "tibia_shaft", "femur_shaft"]))
        n_screws = int(rng.integers(3, 8))
        if kind.startswith("femur"):
            axis = f["a_up"]
            start_mm = float(
                rng.uniform(30, 60) if kind == "femur_lateral" else rng.uniform(90, 200)
            )
            base = f["Kax"] + axis * (start_mm * s)
            side = lat_f
            radius = rm
        else:
            axis = -f["t_dir"]  # pointing proximally
            if kind == "tibia_medial":
                start_mm = float(rng.uniform(90, 130))
                side = -f["e_ta"]
            else:
                start_mm = float(rng.uniform(120, 260))
                side = f["e_ta"] if rng.random() < 0.5 else -f["e_ta"]
            base = f["Pmid"] - axis * (start_mm * s)
            radius = 12.0 * s
        length = float(rng.uniform(90, 190)) * s
        if kind == "tibia_medial":
            length = min(length, (start_mm - 14.0) * s)
        off = side * (radius + 3.0 * s)
        p0, p1 = base + off, base + off + axis * length
        width = float(rng.uniform(11, 16))
        prims.append(Tube(p0, p1, 2.6, 2.6, 0.0, MU_METAL, MU_METAL, width / 5.2))
        for t in np.sort(rng.uniform(0.05, 0.95, n_screws)):
            c = p0 + (p1 - p0) * t
            prims.append(
                Tube(c, c - side * (2 * radius + 6.0 * s), 2.3, 2.0, 0.0, MU_METAL, MU_METAL * 0.8)
            )
        used.append(
            {"kind": "plate", "where": kind, "length_mm": round(length, 1), "screws": n_screws}
        )
    if rng.random() < 0.08:
        e_f, n_f, e_t, n_t = f["e_f"], f["n_f"], f["e_t"], f["n_t"]
        ac = (wc - sc) / 2
        bc = 25.0 * s
        for sgn in (-1.0, 1.0):
            cpt = f["Cmid"] + e_f * (sgn * sc / 2) - n_f * bc
            prims.append(
                Ellipsoid(
                    cpt,
                    e_f,
                    ac + 1.0,
                    bc + 1.0,
                    0.36 * wc,
                    4.5,
                    MU_METAL,
                    MU_METAL * 0.45,
                    keep=n_f.copy(),
                )
            )
        prims.append(
            Ellipsoid(
                f["Cmid"] - n_f * (bc + 3.0 * s),
                e_f,
                wc / 2 * 0.96,
                10.0 * s,
                0.3 * wc,
                3.0,
                MU_METAL,
                MU_METAL * 0.1,
                keep=n_f.copy(),
            )
        )
        frac = float(rng.uniform(0.84, 0.97))
        shift = float(rng.uniform(-0.02, 0.02)) * wp
        tray_c = f["Pmid"] + n_t * (3.5 * s) + e_t * shift
        prims.append(
            Tube(
                tray_c - e_t * (frac * wp / 2),
                tray_c + e_t * (frac * wp / 2),
                2.2,
                2.2,
                0.0,
                MU_METAL,
                MU_METAL,
                10.0,
            )
        )
        stem_len = float(rng.uniform(35, 70)) * s
        prims.append(
            Tube(
                tray_c,
                tray_c + f["t_dir"] * stem_len,
                7.0 * s,
                4.5 * s,
                0.0,
                MU_METAL * 0.7,
                MU_METAL * 0.7,
            )
        )
        used.append({"kind": "knee_arthroplasty", "tray_fraction": round(frac, 3)})
    return prims, used


def _text_mask(text: str, height_px: float, thickness: int) -> np.ndarray:
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(height_px / 22.0, 0.1)
    thickness = max(int(thickness), 1)
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    m = np.zeros((h + base + 2 * thickness + 2, w + 2 * thickness + 2), np.uint8)
    cv2.putText(m, text, (thickness + 1, h + thickness), font, scale, 255, thickness, cv2.LINE_AA)
    return m


def _paste(dst: np.ndarray, src: np.ndarray, x: int, y: int, gain: float) -> None:
    h, w = src.shape
    H, W = dst.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        return
    dst[y0:y1, x0:x1] += gain * src[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32) / 255.0


def _distractors(
    L: np.ndarray, foreign: np.ndarray, sp: float, rng: np.random.Generator, legs: str
) -> list[dict]:
    """Physical objects in the beam, at random places: added to the line integral."""
    H, W = L.shape
    used: list[dict] = []
    # ruler: a radiolucent strip with metal ticks every 10 mm (magnified) and numbers
    if rng.random() < 0.7:
        mag = float(rng.uniform(0.97, 1.12))
        xr = float(rng.uniform(0.0, W * sp))
        y_start = float(rng.uniform(0.0, 0.25)) * H * sp
        y_end = H * sp - float(rng.uniform(0.0, 0.25)) * H * sp
        width = float(rng.uniform(22, 34))
        x0, x1 = int((xr - width / 2) / sp), int((xr + width / 2) / sp)
        ya, yb = int(y_start / sp), int(y_end / sp)
        L[max(ya, 0) : yb, max(x0, 0) : max(x1, 0)] += 0.12
        mask = np.zeros((max(yb - ya, 1), max(x1 - x0, 1)), np.uint8)
        step = 10.0 * mag / sp
        thick = max(int(round(0.7 / sp)), 1)
        tick_side = 0 if rng.random() < 0.5 else 1
        k = 0
        while k * step < mask.shape[0]:
            yy = int(round(k * step))
            ln = (0.55 if k % 5 else 0.8) * mask.shape[1] if k % 10 else mask.shape[1] * 0.95
            xa = 0 if tick_side == 0 else int(mask.shape[1] - ln)
            cv2.line(mask, (xa, yy), (int(xa + ln), yy), 255, thick)
            if k % 10 == 0 and k > 0:
                txt = _text_mask(str(k // 10), 6.0 / sp, max(int(0.8 / sp), 1))
                th, tw = txt.shape
                ty, tx = yy + int(1.5 / sp), int(mask.shape[1] * 0.45)
                if ty + th < mask.shape[0] and tx + tw < mask.shape[1]:
                    mask[ty : ty + th, tx : tx + tw] = np.maximum(
                        mask[ty : ty + th, tx : tx + tw], txt
                    )
            k += 1
        gain = float(rng.uniform(1.5, 3.0))
        _paste(L, mask, x0, ya, gain)
        _paste(foreign, mask, x0, ya, gain)
        used.append({"kind": "ruler", "x_mm": round(xr, 1), "magnification": round(mag, 4)})
    # 25 mm calibration ball, magnified like the patient plane +- a little
    if rng.random() < 0.6:
        mag = float(rng.uniform(1.0, 1.15))
        r = 12.5 * mag / sp
        bx, by = float(rng.uniform(r, W - r)), float(rng.uniform(r, H - r))
        ball = Ellipsoid(
            np.array([bx, by]), np.array([1.0, 0.0]), r, r, r, 0.0, 0.0, MU_METAL * 0.35 * sp
        )
        buf, (x0, y0, x1, y1) = render_group([ball], L.shape)
        if buf is not None:
            L[y0:y1, x0:x1] += buf
            foreign[y0:y1, x0:x1] += buf
        used.append(
            {
                "kind": "calibration_ball",
                "diameter_mm": 25.0,
                "magnification": round(mag, 4),
                "centre_px": [round(bx, 2), round(by, 2)],
                "diameter_px": round(2 * r, 3),
            }
        )
    # lead L / R markers
    if rng.random() < 0.85:
        letters = {"both": ["R", "L"], "right": ["R"], "left": ["L"]}[legs]
        if rng.random() < 0.3:
            letters = [letters[int(rng.integers(len(letters)))]]
        for letter in letters:
            hpx = float(rng.uniform(12, 25)) / sp
            m = _text_mask(letter, hpx, int(hpx / 7))
            x = int(rng.uniform(0, max(W - m.shape[1], 1)))
            y = int(rng.uniform(0, max(H - m.shape[0], 1)))
            if rng.random() < 0.5:  # in a plastic holder
                pad = int(hpx * 0.3)
                L[
                    max(y - pad, 0) : y + m.shape[0] + pad, max(x - pad, 0) : x + m.shape[1] + pad
                ] += 0.15
            gain = float(rng.uniform(3.0, 6.0))
            _paste(L, m, x, y, gain)
            _paste(foreign, m, x, y, gain)
            used.append({"kind": "marker", "text": letter})
    # faint grid (stitching grid plate)
    if rng.random() < 0.3:
        step = float(rng.uniform(20, 60)) / sp
        phase_x, phase_y = rng.uniform(0, step, 2)
        amp = float(rng.uniform(0.03, 0.12))
        thick = max(int(round(0.5 / sp)), 1)
        for x in np.arange(phase_x, W, step):
            L[:, int(x) : int(x) + thick] += amp
        for y in np.arange(phase_y, H, step):
            L[int(y) : int(y) + thick, :] += amp
        used.append({"kind": "grid", "step_mm": round(step * sp, 2)})
    return used


def _resize_to(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _lowpass(v: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass with a large sigma, computed on a reduced copy."""
    k = max(int(sigma_px / 4.0), 1)
    small = cv2.resize(
        v, (max(v.shape[1] // k, 1), max(v.shape[0] // k, 1)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / k)
    return _resize_to(small, v.shape)


def _outline(buf: np.ndarray | None, box: tuple[int, int, int, int]) -> list[float]:
    if buf is None:
        return []
    mask = (buf > 1e-4).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    c = max(contours, key=cv2.contourArea)
    c = cv2.approxPolyDP(c, 0.6, True).reshape(-1, 2).astype(float)
    c[:, 0] += box[0]
    c[:, 1] += box[1]
    return [round(float(v), 2) for v in c.reshape(-1)]


def generate_film(
    seed: int,
    *,
    size: str = "small",
    legs: str = "both",
    spacing_mm: float | None = None,
    alignment: dict | None = None,
    distractors: bool = True,
) -> SyntheticFilm:
    """Make one film.  Deterministic in all arguments (see the module docstring).

    ``size``: "native" (about 0.125-0.175 mm/px, a bilateral film ~2500 x 7000 px, 12-16
    bit) or "small" (1 mm/px); ``spacing_mm`` overrides the preset.  ``alignment``:
    per side ("right"/"left") any three of hka/mpta/mldfa/jlca_deg (the fourth follows
    from HKA = MPTA - mLDFA - JLCA) and femur/tibia_length_mm, and ``"scale"`` (the
    patient's overall bone size factor, 0.7-1.4, default random 0.85-1.15); the rest
    is random.
    ``distractors=False`` leaves out ruler, ball, markers, grid, implants, seams,
    collimation and mirroring (anatomy, exposure, blur and noise stay).
    """
    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if legs not in LEGS:
        raise InputError(f"legs must be one of {', '.join(LEGS)}, got {legs!r}")
    alignment = dict(alignment or {})
    bad = sorted(set(alignment) - {"right", "left", "scale"})
    if bad:
        raise InputError(f"alignment keys must be 'right', 'left' or 'scale', got {', '.join(bad)}")
    want_scale = alignment.pop("scale", None)
    if want_scale is not None and not (
        isinstance(want_scale, int | float) and 0.7 <= want_scale <= 1.4
    ):
        raise InputError(f"alignment scale must be a number from 0.7 to 1.4, got {want_scale!r}")
    sp_rng = _rng(seed, _S_SPACING)
    native_sp = float(sp_rng.choice(NATIVE_SPACINGS))
    bits = int(sp_rng.choice(BITS, p=[0.3, 0.3, 0.4]))
    if spacing_mm is not None:
        sp = float(spacing_mm)
        if not (math.isfinite(sp) and 0.02 <= sp <= 10.0):
            raise InputError(f"spacing_mm must be between 0.02 and 10 mm, got {spacing_mm!r}")
    else:
        sp = SIZES[size] or native_sp

    pr = _rng(seed, _S_PATIENT)
    scale = float(np.clip(pr.normal(1.0, 0.06), 0.85, 1.15))
    if want_scale is not None:
        scale = float(want_scale)
    hip_half = float(scale * np.clip(pr.normal(88.0, 5.0), 76.0, 100.0))
    obliquity = float(pr.normal(0.0, 3.0))
    sides = ["right", "left"] if legs == "both" else [legs]
    models: dict[str, LegModel] = {}
    for side in ("right", "left"):
        r = _rng(seed, _S_RIGHT if side == "right" else _S_LEFT)
        al = resolve_alignment(alignment.get(side), r, scale)
        sh = LegShape.draw(r, scale * float(np.clip(r.normal(1.0, 0.01), 0.97, 1.03)))
        # standing: the ankle sits 40-115 mm from the midline; the femur leans to suit
        ankle_half = scale * float(r.uniform(40.0, 115.0))
        sh.femoral_inclination_deg = stance_inclination(al, hip_half - ankle_half)
        if side in sides:
            models[side] = build_leg(al, sh)

    # ---------------------------------------------------------------- layout (mm)
    lay = _rng(seed, _S_LAYOUT)
    xm = 0.0
    hips = {"right": (xm - hip_half, 0.0), "left": (xm + hip_half, obliquity)}
    m_lat = [float(lay.uniform(75, 150)) * scale for _ in range(2)]
    m_med = float(lay.uniform(90, 200)) * scale
    if legs == "both":
        x_lo, x_hi = hips["right"][0] - m_lat[0], hips["left"][0] + m_lat[1]
    elif legs == "right":
        x_lo, x_hi = hips["right"][0] - m_lat[0], hips["right"][0] + m_med
    else:
        x_lo, x_hi = hips["left"][0] - m_med, hips["left"][0] + m_lat[1]
    # every landmark at least 12 mm inside the film (matters only for extreme alignments)
    for s_ in sides:
        sign = 1.0 if s_ == "right" else -1.0
        xs = [hips[s_][0] + sign * float(p[0]) for p in models[s_].landmarks.values()]
        x_lo, x_hi = min(x_lo, min(xs) - 12.0), max(x_hi, max(xs) + 12.0)
    top_margin = float(lay.uniform(50, 220)) * scale
    bottom_margin = float(lay.uniform(35, 150)) * scale
    mirrored = bool(lay.random() < 0.15) and distractors
    y_top = min(hips[s_][1] for s_ in sides) - top_margin
    y_bot = max(hips[s_][1] + float(models[s_].landmarks["ankle_centre"][1]) for s_ in sides)
    y_bot += bottom_margin
    W = int(math.floor((x_hi - x_lo) / sp)) + 1
    H = int(math.floor((y_bot - y_top) / sp)) + 1
    shape = (H, W)
    placers = {
        s_: _Placer(hips[s_][0], hips[s_][1], 1 if s_ == "right" else -1, x_lo, y_top, sp)
        for s_ in sides
    }

    # ---------------------------------------------------------------- render
    tex_rng = _rng(seed, _S_EXPOSE)
    # cancellous texture: band-limited noise, about a millimetre grain
    cell = 0.9 / sp
    th, tw = max(int(H / cell), 4), max(int(W / cell), 4)
    tex = cv2.GaussianBlur(tex_rng.standard_normal((th, tw)).astype(np.float32), (0, 0), 0.8)
    tex = _resize_to(tex / (tex.std() + 1e-6), shape)
    tex_amp = float(tex_rng.uniform(0.05, 0.12))
    bone_gain = float(tex_rng.uniform(0.5, 1.0))  # bone / soft-tissue contrast (kVp)
    bone = np.zeros(shape, np.float32)
    soft_prims: list[Primitive] = []
    metal_prims: list[Primitive] = []
    implants_used: dict[str, list[dict]] = {}
    outlines: dict[str, dict[str, list[float]]] = {}
    imp_rng = _rng(seed, _S_IMPLANT)
    for side in sides:
        m, pl = models[side], placers[side]
        outlines[side] = {}
        for name, prims in m.bones.items():
            prims = list(prims)
            if name == "pelvis" and legs == "both":
                prims += pubis(hip_half, m.shape.scale)
            buf, box = render_group([pl.prim(p) for p in prims], shape, tex, tex_amp)
            if buf is None:
                continue
            bone[box[1] : box[3], box[0] : box[2]] += buf
            if name in ("femur", "tibia"):
                outlines[side][name] = _outline(buf, box)
        soft_prims += [pl.prim(p) for p in m.soft]
        if distractors:
            mp, used = _implants(m, imp_rng)
            metal_prims += [pl.prim(p) for p in mp]
            if used:
                implants_used[side] = used
    fat = float(np.mean([models[s_].shape.fat for s_ in sides]))
    pelvis_soft = Ellipsoid(
        np.array([xm - x_lo, -60.0 * scale - y_top]),
        np.array([1.0, 0.0]),
        hip_half + 150.0 * scale * fat,
        200.0 * scale,
        115.0 * scale * fat,
        0.0,
        MU_SOFT,
        MU_SOFT,
    )
    soft_prims.append(pelvis_soft.scaled(sp))
    if legs == "both":  # sacrum
        sac = Ellipsoid(
            np.array([xm - x_lo, -100.0 * scale - y_top]),
            np.array([0.0, 1.0]),
            62.0 * scale,
            45.0 * scale,
            12.0 * scale,
            1.2 * scale,
            MU_CORTEX * 0.6,
            0.008,
        )
        # pelvic brim (arcuate lines): a thin oval ring around the inlet
        brim = Ellipsoid(
            np.array([xm - x_lo, -8.0 * scale - y_top]),
            np.array([1.0, 0.0]),
            hip_half - 22.0 * scale,
            52.0 * scale,
            9.0 * scale,
            3.5 * scale,
            MU_CORTEX,
            0.0,
        )
        for part in (sac, brim):
            buf, box = render_group([part.scaled(sp)], shape, tex, tex_amp)
            if buf is not None:
                bone[box[1] : box[3], box[0] : box[2]] += buf
    bone_cols = np.flatnonzero(bone.max(axis=0) > 0.05)
    soft_buf, box = render_group(soft_prims, shape)
    bone *= bone_gain
    L = bone
    if soft_buf is not None:
        L[box[1] : box[3], box[0] : box[2]] += soft_buf
    # metal and lead (implants, ball, markers, ruler ticks): kept apart as well, so that
    # image processing and the display window follow the anatomy, not the metal
    foreign = np.zeros(shape, np.float32)
    if metal_prims:
        buf, box = render_group(metal_prims, shape)
        if buf is not None:
            L[box[1] : box[3], box[0] : box[2]] += buf
            foreign[box[1] : box[3], box[0] : box[2]] += buf

    dis_rng = _rng(seed, _S_DISTRACT)
    distractors_used: list[dict] = []
    if distractors:
        distractors_used = _distractors(L, foreign, sp, dis_rng, legs)

    # ---------------------------------------------------------------- exposure
    ex = tex_rng
    v: np.ndarray = L
    n_seg = int(ex.choice([1, 2, 3], p=[0.25, 0.35, 0.4])) if distractors else 1
    bounds = [0]
    for k in range(1, n_seg):
        bounds.append(int(H * (k / n_seg + float(ex.uniform(-0.08, 0.08)))))
    bounds.append(H)
    yy = np.linspace(-0.5, 0.5, H, dtype=np.float32)[:, None]
    for k in range(n_seg):
        a, b = bounds[k], bounds[k + 1]
        v[a:b] += float(ex.uniform(-0.25, 0.25)) + float(ex.uniform(-0.3, 0.3)) * yy[a:b]
    blur_mm = float(ex.uniform(0.2, 0.8))
    if blur_mm / sp > 0.3:
        v = cv2.GaussianBlur(v, (0, 0), blur_mm / sp)
    noise = float(ex.uniform(0.002, 0.009)) * math.sqrt(max(0.15 / sp, 0.02))
    scale_noise = np.exp(0.5 * np.minimum(v, 7.0))
    v = v + noise * scale_noise * ex.standard_normal(shape, dtype=np.float32)
    # processing: dynamic range compression + mild edge enhancement
    drc = float(ex.uniform(0.5, 0.8))
    v = v - drc * _lowpass(v - foreign, float(ex.uniform(25, 45)) / sp)
    step_y, step_x = max(H // 400, 1), max(W // 200, 1)
    sub = v[::step_y, ::step_x]
    sub = sub[foreign[::step_y, ::step_x] < 0.05]
    lo, hi = (
        float(q)
        for q in np.percentile(sub, [float(ex.uniform(0.2, 3.0)), float(ex.uniform(99.3, 99.95))])
    )
    hi += float(ex.uniform(0.0, 0.35)) * (hi - lo)  # headroom: bone not always saturated
    t = np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    t **= float(ex.uniform(0.75, 1.25))
    t = float(ex.uniform(0.0, 0.04)) + float(ex.uniform(0.85, 0.96)) * t

    extras: dict = {"segments": n_seg}
    if distractors and n_seg > 1:
        seams = []
        for yb in bounds[1:-1]:
            w = max(int(round(float(ex.uniform(0.3, 1.5)) / sp)), 1)
            t[yb : yb + w] += float(ex.choice([-1.0, 1.0])) * float(ex.uniform(0.04, 0.2))
            seams.append(round(yb * sp, 1))
        extras["seams_mm"] = seams
    coll = None
    if distractors and ex.random() < 0.5:
        left_room = int(bone_cols[0]) if bone_cols.size else 0
        right_room = W - 1 - int(bone_cols[-1]) if bone_cols.size else 0
        cl = int(ex.uniform(0, 0.8) * left_room)
        cr = W - int(ex.uniform(0, 0.8) * right_room)
        top_room = int(
            min(placers[s_].point(models[s_].landmarks["femoral_head"])[1] for s_ in sides)
            - 60.0 / sp
        )
        ct = int(ex.uniform(0, 0.6) * max(top_room, 0))
        level = float(ex.choice([ex.uniform(0.85, 1.0), ex.uniform(0.0, 0.05)]))
        outside = np.ones(shape, bool)
        outside[ct:, cl:cr] = False
        t[outside] = level + 0.01 * ex.standard_normal(int(outside.sum()), dtype=np.float32)
        coll = {"left_px": cl, "right_px": int(cr), "top_px": ct}
        extras["collimation"] = coll
    t = np.clip(t, 0.0, 1.0)
    image = np.round(t * (2**bits - 1)).astype(np.uint16)

    # ---------------------------------------------------------------- labels

    leg_objs = []
    align_out: dict[str, dict] = {}
    for side in sides:
        m, pl = models[side], placers[side]
        pts = {}
        for name in LANDMARK_NAMES:
            x, y = pl.point(m.landmarks[name])
            if mirrored:
                x = (W - 1.0) - x
            pts[name] = (float(x), float(y))
        leg_objs.append(LegLandmarks(side=Side(side), points=pts, mirrored=mirrored))
        align_out[side] = m.params()
        if mirrored:
            for bone_name, poly in outlines[side].items():
                arr = np.asarray(poly, float).reshape(-1, 2)
                arr[:, 0] = (W - 1.0) - arr[:, 0]
                outlines[side][bone_name] = [round(float(q), 2) for q in arr.reshape(-1)]
    if mirrored:
        image = np.ascontiguousarray(image[:, ::-1])
    params = {
        "seed": int(seed),
        "size": size,
        "legs": legs,
        "spacing_mm": sp,
        "bits_stored": bits,
        "mirrored": mirrored,
        "scale": round(scale, 4),
        "hip_half_distance_mm": round(hip_half, 2),
        "alignment": align_out,
        "implants": implants_used,
        "distractors": distractors_used,
        "exposure": {
            "blur_mm": round(blur_mm, 3),
            "drc": round(drc, 3),
            "bone_gain": round(bone_gain, 3),
            **extras,
        },
    }
    return SyntheticFilm(
        image=image,
        bits_stored=bits,
        spacing_mm=sp,
        legs=leg_objs,
        mirrored=mirrored,
        params=params,
        outlines=outlines,
    )
