"""The overlay picture of one film: landmarks, mechanical axes, weight-bearing line,
joint lines, the planned wedge and the values, on a reduced copy of the film.

The film is reduced in the worker process (``thumbnail``) so only a small uint8 array
crosses the process boundary; landmark coordinates (full-resolution pixels, centre
origin) are mapped onto it here.  A panel at the right lists the values per leg.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import cv2
import numpy as np

from legalign.pipeline.results import DISCLAIMER
from legalign.pipeline.safe_text import ascii_text

MAX_OVERLAY_HEIGHT = 2048
PANEL_WIDTH = 460
WRAP = 56  # characters per panel line (0.5-scale Hershey text in PANEL_WIDTH)

# BGR colours (cv2)
WHITE = (255, 255, 255)
GREEN = (80, 220, 80)
YELLOW = (0, 220, 255)
CYAN = (255, 220, 0)
MAGENTA = (220, 80, 255)
RED = (40, 40, 255)
ORANGE = (0, 150, 255)
GREY = (170, 170, 170)

_AXES = (("femoral_head", "knee_centre"), ("knee_centre", "ankle_centre"))
_JOINT_LINES = (
    ("femoral_condyle_medial", "femoral_condyle_lateral", CYAN),
    ("tibial_plateau_medial", "tibial_plateau_lateral", MAGENTA),
)
_SHORT = {
    "femoral_head": "FH",
    "femoral_condyle_medial": "FCm",
    "femoral_condyle_lateral": "FCl",
    "tibial_plateau_medial": "TPm",
    "tibial_plateau_lateral": "TPl",
    "knee_centre": "K",
    "ankle_centre": "A",
    "greater_trochanter": "GT",
    "femoral_shaft_proximal": "FSp",
    "femoral_shaft_distal": "FSd",
    "tibial_shaft_proximal": "TSp",
    "tibial_shaft_distal": "TSd",
}


def thumbnail(pixels: np.ndarray, max_height: int = MAX_OVERLAY_HEIGHT) -> np.ndarray:
    """uint8 copy of a [0, 1] film, reduced (area interpolation) to at most max_height
    rows and the same aspect ratio."""

    h, w = pixels.shape[:2]
    scale = min(1.0, max_height / float(h))
    img = pixels
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(pixels.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def render_overlay(result: dict[str, Any], thumb: np.ndarray) -> np.ndarray:
    """RGB uint8 overlay image (H x (W + panel) x 3) for an image result dict."""

    th, tw = thumb.shape[:2]
    full_w = (result.get("image") or {}).get("width") or tw
    full_h = (result.get("image") or {}).get("height") or th
    sx, sy = tw / float(full_w), th / float(full_h)
    canvas = np.zeros((th, tw + PANEL_WIDTH, 3), dtype=np.uint8)
    canvas[:, :tw] = cv2.cvtColor(thumb, cv2.COLOR_GRAY2BGR)
    thick = max(1, round(th / 700))
    radius = max(3, round(th / 250))

    def pt(xy: Any) -> tuple[int, int]:
        # centre-origin full-res pixels -> centre-origin thumbnail pixels
        return (round((xy[0] + 0.5) * sx - 0.5), round((xy[1] + 0.5) * sy - 0.5))

    for leg in result.get("legs") or []:
        lms = leg.get("landmarks") or {}
        used = {n: (v["x"], v["y"]) for n, v in lms.items() if v.get("used", True)}
        for a, b in _AXES:
            if a in used and b in used:
                cv2.line(canvas, pt(used[a]), pt(used[b]), GREEN, thick, cv2.LINE_AA)
        if "femoral_head" in used and "ankle_centre" in used:
            _dashed(canvas, pt(used["femoral_head"]), pt(used["ankle_centre"]), YELLOW, thick)
        for a, b, colour in _JOINT_LINES:
            if a in used and b in used:
                p, q = np.array(pt(used[a]), float), np.array(pt(used[b]), float)
                d = q - p
                p2, q2 = p - 0.35 * d, q + 0.35 * d
                cv2.line(canvas, _ip(p2), _ip(q2), colour, thick, cv2.LINE_AA)
        plan = leg.get("plan") or {}
        for step in _plan_steps(plan):
            _draw_wedge(canvas, step, pt, thick, radius)
        for name, v in lms.items():
            c = pt((v["x"], v["y"]))
            if v.get("used", True):
                cv2.circle(canvas, c, radius, WHITE, -1, cv2.LINE_AA)
                cv2.circle(canvas, c, radius, (0, 0, 0), 1, cv2.LINE_AA)
            else:
                r = radius + 2
                cv2.line(canvas, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), RED, thick + 1)
                cv2.line(canvas, (c[0] - r, c[1] + r), (c[0] + r, c[1] - r), RED, thick + 1)
                conf = v.get("confidence")
                _text(
                    canvas,
                    f"{_SHORT.get(name, name)} {_fmt(conf, '', 2)}?",
                    (c[0] + r + 2, c[1] + 4),
                    RED,
                    0.4,
                )
    _panel(canvas, result, tw)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def _ip(p: np.ndarray) -> tuple[int, int]:
    return (round(float(p[0])), round(float(p[1])))


def _dashed(
    img: np.ndarray, p: tuple[int, int], q: tuple[int, int], colour: Any, thick: int
) -> None:
    a, b = np.array(p, float), np.array(q, float)
    length = float(np.hypot(*(b - a)))
    n = max(1, int(length // 12))
    for i in range(0, n, 2):
        s, e = a + (b - a) * (i / n), a + (b - a) * (min(i + 1, n) / n)
        cv2.line(img, _ip(s), _ip(e), colour, thick, cv2.LINE_AA)


def _plan_steps(plan: dict[str, Any]) -> list[dict[str, Any]]:
    steps = [s for s in plan.get("steps") or [] if s.get("hinge") and s.get("cut_start")]
    if steps:
        return steps
    if plan.get("hinge") and plan.get("cut_start") and plan.get("correction_deg") is not None:
        return [
            {
                "level": plan.get("level"),
                "wedge": "opening",
                "hinge": plan["hinge"],
                "cut_start": plan["cut_start"],
                "correction_deg": plan["correction_deg"],
            }
        ]
    return []


def _draw_wedge(img: np.ndarray, step: dict[str, Any], pt: Any, thick: int, radius: int) -> None:
    """The cut (hinge -> cut start) and the wedge: the cut start rotated about the hinge
    by the correction angle, distally for an opening wedge (the gap opens below the cut)
    and proximally for a closing wedge (the bone removed above it)."""

    hinge = np.array(pt(step["hinge"]), float)
    start = np.array(pt(step["cut_start"]), float)
    a = math.radians(float(step.get("correction_deg") or 0.0))
    v = start - hinge
    cands = []
    for sgn in (1.0, -1.0):
        c, s = math.cos(sgn * a), math.sin(sgn * a)
        cands.append(hinge + np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]]))
    distal = max(cands, key=lambda p: p[1])
    proximal = min(cands, key=lambda p: p[1])
    other = proximal if step.get("wedge") == "closing" else distal
    poly = np.array([_ip(hinge), _ip(start), _ip(other)], dtype=np.int32)
    layer = img.copy()
    cv2.fillPoly(layer, [poly], ORANGE)
    cv2.addWeighted(layer, 0.45, img, 0.55, 0, dst=img)
    cv2.polylines(img, [poly], True, ORANGE, thick, cv2.LINE_AA)
    cv2.circle(img, _ip(hinge), radius, ORANGE, -1, cv2.LINE_AA)
    label = f"{step.get('level') or ''} {_fmt(step.get('correction_deg'), ' deg')}"
    _text(img, label.strip(), (_ip(start)[0] + 6, _ip(start)[1]), ORANGE, 0.45)


def _text(img: np.ndarray, s: str, org: tuple[int, int], colour: Any, scale: float = 0.5) -> None:
    s = ascii_text(s)  # the Hershey font draws ASCII only; names may hold any bytes
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


# what each drawing means (docs/results-schema.md, overlays)
LEGEND: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("legend", WHITE),
    ("  o landmark used for measurement", WHITE),
    ("  - mechanical axes (hip-knee, knee-ankle)", GREEN),
    ("  - - weight-bearing line", YELLOW),
    ("  - femoral joint line", CYAN),
    ("  - tibial joint line", MAGENTA),
    ("  - planned wedge and hinge", ORANGE),
    ("  x landmark not used (outside the film, no peak)", RED),
)


def _wrapped(
    text: str, colour: tuple[int, int, int], indent: str = " "
) -> list[tuple[str, tuple[int, int, int]]]:
    """``text`` as panel lines of at most WRAP characters, never cut mid-sentence."""
    parts = textwrap.wrap(ascii_text(text), WRAP - len(indent), break_long_words=True)
    return [(indent + p, colour) for p in parts] or [(indent, colour)]


def panel_lines(result: dict[str, Any]) -> list[tuple[str, tuple[int, int, int]]]:
    """The text of the values panel, one (line, colour) per row."""
    lines: list[tuple[str, tuple[int, int, int]]] = []
    name = str(result.get("file") or "").replace("\\", "/").rsplit("/", 1)[-1]
    lines.extend(_wrapped(f"legalign  {name}", WHITE, ""))
    sp = result.get("spacing_mm")
    lines.append((f"spacing {_fmt(sp, ' mm/px', 4)}", GREY))
    lines.extend(_wrapped(f"from {result.get('spacing_source') or 'none (angles only)'}", GREY))
    if result.get("status") == "failed":
        lines.append((f"FAILED: {result.get('error_reason')}", RED))
        lines.extend(_wrapped(str(result.get("error") or ""), RED))
    for w in result.get("warnings") or []:
        lines.extend(_wrapped("! " + w, RED))
    for leg in result.get("legs") or []:
        m = leg.get("measurements") or {}
        lines.append(("", WHITE))
        lines.append(
            (f"{leg['side'].upper()} leg  [{leg.get('status')}]  {m.get('category') or ''}", WHITE)
        )
        lines.append(
            (f" HKA {_fmt(m.get('hka_deg'), ' deg')}   MAD {_fmt(m.get('mad_mm'), ' mm')}", GREEN)
        )
        lines.append(
            (
                f" WBL {_fmt(m.get('wbl_ratio_pct'), ' %')}   JLCA {_fmt(m.get('jlca_deg'), ' deg')}",
                YELLOW,
            )
        )
        lines.append(
            (
                f" mLDFA {_fmt(m.get('mldfa_deg'), ' deg')}   MPTA {_fmt(m.get('mpta_deg'), ' deg')}",
                CYAN,
            )
        )
        lines.append(
            (
                f" mLPFA {_fmt(m.get('mlpfa_deg'), ' deg')}   aTFA {_fmt(m.get('atfa_deg'), ' deg')}",
                GREY,
            )
        )
        lines.append((f" leg {_fmt(m.get('leg_length_mm'), ' mm')}", GREY))
        low = leg.get("low_confidence") or {}
        if low:
            lines.append((" low confidence: " + ", ".join(_SHORT.get(n, n) for n in low), RED))
        plan = leg.get("plan") or {}
        if plan.get("level"):
            lines.append(
                (
                    f" plan {plan['level']} {_fmt(plan.get('correction_deg'), ' deg')}"
                    f"  gap {_fmt(plan.get('gap_mm'), ' mm')}",
                    ORANGE,
                )
            )
            post = plan.get("post") or {}
            lines.append(
                (
                    f"  post HKA {_fmt(post.get('hka_deg'), ' deg')}  WBL {_fmt(post.get('wbl_ratio_pct'), ' %')}",
                    ORANGE,
                )
            )
        elif plan:
            lines.extend(_wrapped(str(plan.get("reason") or ""), GREY))
        for w in plan.get("warnings") or []:
            lines.extend(_wrapped("! " + w, RED))
    if result.get("lld_mm") is not None:
        lines.append(("", WHITE))
        lines.append((f"LLD (left - right) {_fmt(result['lld_mm'], ' mm')}", WHITE))
    return lines


def footer_lines() -> list[tuple[str, tuple[int, int, int]]]:
    """Legend and disclaimer: drawn at the bottom of the panel, always visible."""
    return [*LEGEND, ("", WHITE), *_wrapped(DISCLAIMER, RED, "")]


def _panel(img: np.ndarray, result: dict[str, Any], x0: int) -> None:
    step = 22
    footer = footer_lines()
    bottom = img.shape[0] - 6 - step * len(footer)
    y = 24
    lines = panel_lines(result)
    for i, (s, colour) in enumerate(lines):
        if y > bottom - step and i < len(lines) - 1:
            _text(img, "... (see the JSON for the rest)", (x0 + 10, y), GREY, 0.5)
            break
        if s:
            _text(img, s, (x0 + 10, y), colour, 0.5)
        y += step
    y = max(y + step, bottom + step)
    for s, colour in footer:
        if s:
            _text(img, s, (x0 + 10, y), colour, 0.5)
        y += step


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB image."""

    # compression level 1: about twice as fast as the default 3, files ~15 % larger
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()
