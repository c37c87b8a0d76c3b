"""Coarse-to-fine landmark localisation: ``Radiograph`` -> ``list[LegLandmarks]``.

The loop over these stages is ``pipeline.coarse_to_fine`` (the one implementation the API
and both engines call); this module holds the geometry (``LocatorGeometry``, spec only, no
networks) and the networks (``Locator``).

1. ``coarse_to_fine.coarse_input`` -> float32 (1, Hc, Wc): the whole film letterboxed into
   a small canvas (``LocatorGeometry.coarse_matrix``).  Cheap, computable in a worker.
2. ``predict_coarse(batch)`` -> heatmaps (N, Kc, h, w): class-agnostic joint channels
   (every femoral head on the film shows in one channel).
3. ``decode_coarse(heatmaps, radiograph)`` -> ``CoarseResult``: up to two legs, grouped
   from the peaks (knee -> the head above it -> the ankle below it); each leg's medial
   direction from anatomy (the greater trochanter is lateral of the femoral head); its
   side from DICOM orientation/laterality when known, else assuming standard AP display.
4. ``coarse_to_fine.fine_inputs`` -> ``FineInputs`` (``LocatorGeometry.crop_matrices``): square crops around hip, knee
   and ankle of each leg, of a size proportional to the leg's femur length, mirrored so
   that medial is +x (each leg looks like a right leg), at ``fine_size`` pixels.
5. ``predict_fine(crops)`` -> heatmaps; ``decode_fine(...)`` -> ``list[LegLandmarks]``
   with sub-pixel positions and a per-landmark confidence in [0, 1].

``coarse_to_fine.locate_films`` runs all of it.  The device is passed in; the caller owns
torch's thread settings (no global state is changed here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from legalign.models import heatmap_codec as hc
from legalign.models.checkpoint import load_checkpoint, nets_from_checkpoint
from legalign.models.crops import (
    apply_affine,
    invert_affine,
    joint_crop_matrix,
    leg_scale,
    letterbox_matrix,
)
from legalign.models.inference import inference_copy
from legalign.pipeline.config_schema import ConfigError, load_config
from legalign.pipeline.enums import Side
from legalign.pipeline.landmarks import LegLandmarks

DEFAULT_LOCATOR_RULES = "locator.yaml"
# the joints a coarse leg is grouped from (knee -> head above it -> ankle below it)
JOINTS = ("femoral_head", "knee_centre", "ankle_centre")

# below this coarse peak the trochanter is not trusted to give the medial direction
_TROCHANTER_MIN_CONF = 0.2
# a fine answer below this confidence falls back to the coarse answer (when there is one)
_FINE_MIN_CONF = 0.1
# Coarse framing (``coarse_view``).  A canvas column/row is exposed when its 90th
# percentile exceeds _EXPOSED_LEVEL; an exposed region covering at least _FULL_FRAME of
# the canvas is framed as the whole film, a smaller one is grown by _FRAME_MARGIN of its
# size on each side and letterboxed alone.  A film is wide enough for two legs when its
# exposed width exceeds _TWO_LEGS_WIDTH x its exposed height (two legs side by side are
# about 0.6 femur lengths wide, a femur about 0.35 of a full-leg film's height); then
# each half (split at the darkest column, overlapping by _TILE_OVERLAP of the width) is
# also seen alone.  A leg from a half whose knee is within _SAME_LEG femur lengths of a
# leg already found is that leg again.  Femur / tibia length ratio of a plausible leg:
# _FEMUR_TIBIA; its head and ankle within _IN_LINE x their height above/below the knee.
_EXPOSED_LEVEL = 0.05
_FULL_FRAME = 0.85
_FRAME_MARGIN = 0.03
_TWO_LEGS_WIDTH = 0.21
_TILE_OVERLAP = 0.1
_SAME_LEG = 0.3
_FEMUR_TIBIA = (0.8, 1.7)
_IN_LINE = 0.45
# Choosing a knee's head and ankle among the coarse peaks (``_pick_joints``): a peak's
# height, less _OFF_LINE x its distance from the line it should lie on over its distance
# from the knee (the head: above the knee; the ankle: the femur's head -> knee line carried
# on, so the ankle of a tilted film is sought where its femur points), less _PROPORTION x
# ((ln(femur / tibia) - ln _FEMUR_TIBIA_TYPICAL) / _PROPORTION_SD)^2.  The femur is
# 1.18 x the tibia (knee -> ankle centre) in the 267 oai-sample legs (SD 0.035, range
# 1.09-1.29), 1.19 on synthetic films; the soft SD (0.1 in log) leaves room for coarse
# error and growth disturbances, while a bright structure half a femur above the head, or
# a heel below the ankle, loses to the peak where a leg's proportions put it.
_OFF_LINE = 2.0
_FEMUR_TIBIA_TYPICAL = 1.18
_PROPORTION_SD = 0.1
_PROPORTION = 0.1
# a femoral head / ankle centre closer than this share of the femur length to the film's
# top or bottom edge (or beyond it) is outside the film: the joint is cut off, whatever
# the network answered there.  The network places a cut-off head on what is left of it,
# 0.02-0.08 femur lengths inside the edge (a head's radius is about 0.055); a cut-off
# ankle right at the edge, while a whole ankle (the talus below the plafond) can be as
# close as 0.08 (a native synthetic film)
_EDGE = {"femoral_head": 0.09, "ankle_centre": 0.03}
# ... and a head (ankle) is cut off, wherever the network put it, when the femur it makes
# is shorter than _CUT_FEMUR_TIBIA[0] x the tibia (longer than [1] x) and the head (ankle)
# that a leg of typical proportions (_FEMUR_TIBIA_TYPICAL) would have lies beyond the
# film's top (bottom) edge: the network placed a cut-off head on the neck or the
# trochanter, 0.1-0.15 femur lengths inside the edge.  The bounds are 4-5 SD of the
# oai-sample legs' ratio from its mean.
_CUT_FEMUR_TIBIA = (1.0, 1.4)
# Fine crops follow a tilted leg (``crop_angle``).  The mechanical axis (head -> ankle)
# of a leg on an upright film is within about 4 deg of vertical (oai-sample labels:
# mean +0.3, SD 1.1, range -2.1..+3.9 deg towards medial); the fine network was
# trained on such legs with +-6 deg of rotation.  A crop is turned by the axis's tilt
# beyond _UPRIGHT_DEG (soft threshold: no turn for an upright leg, continuous in the
# tilt), so the joint of a film rotated by up to 8 deg is seen nearly as trained.
_UPRIGHT_DEG = 2.0


@dataclass(frozen=True)
class LocatorRules:
    """Run-time rules of the coarse stage (``configs/locator.yaml``)."""

    # a coarse leg counts when its joint peaks (head + knee + ankle, one not found: 0) sum
    # to at least this on the whole film's canvas ...
    min_leg_score: float
    # ... and to at least this on the canvas of one half of a wide film (a half alone is
    # seen enlarged: its noise peaks differently from the whole film's)
    min_half_leg_score: float

    def validate(self) -> None:
        for key in ("min_leg_score", "min_half_leg_score"):
            value = getattr(self, key)
            if not 0.0 < value < len(JOINTS):
                raise ConfigError(f"{key}: must be in (0, {len(JOINTS)}), got {value}")


@lru_cache(maxsize=1)
def default_locator_rules() -> LocatorRules:
    """The shipped rules (read once per process; immutable)."""
    return load_config(LocatorRules, DEFAULT_LOCATOR_RULES)


class FilmShape(Protocol):
    """What the coarse decode reads of a film: its full-resolution size and its DICOM
    orientation (``Radiograph`` and ``pipeline.results.FilmInfo`` both are one)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def mirrored(self) -> bool | None: ...

    @property
    def laterality(self) -> str | None: ...


@dataclass
class CoarseLeg:
    """One leg found on the whole-film pass, in image pixels."""

    points: dict[str, tuple[float, float]]
    confidence: dict[str, float]
    medial_sign: int  # +1: medial is +x in the image
    femur_px: float  # head-knee distance (the leg's scale), image pixels
    side: Side = Side.RIGHT
    mirrored: bool = False
    spread: dict[str, float] = field(default_factory=dict)  # heatmap spread, image px


@dataclass
class CoarseResult:
    legs: list[CoarseLeg] = field(default_factory=list)
    # the film's size (pixels), when known: landmarks at or beyond its edge are outside
    height: int | None = None
    width: int | None = None


@dataclass
class CoarseView:
    """What the coarse network sees of one film: ``images`` (V, 1, Hc, Wc) float32 and,
    per image, the 2x3 image -> canvas map.  Image 0 is the film's exposed region;
    images 1 and 2 (films wide enough for two legs only) its left and right halves,
    each alone on the canvas (the rest black); ``halves`` are their (x0, x1) image
    columns, ``split`` the column between the legs."""

    images: np.ndarray
    frames: list[np.ndarray]
    halves: list[tuple[float, float]] = field(default_factory=list)
    split: float | None = None

    def half_columns(self) -> list[tuple[float, float]]:
        """Per half, the image columns [lo, hi) its own leg's knee lies in: from the
        half's outer edge to the split (the overlap belongs to the other half)."""
        split = self.split if self.split is not None else 0.0
        return [(a, split) if i == 0 else (split, b) for i, (a, b) in enumerate(self.halves)]


@dataclass
class FineInputs:
    """Crops of one film: ``crops`` (M, 1, S, S) float32, one 2x3 image->crop matrix and
    one (leg index, crop name) per crop."""

    crops: np.ndarray
    matrices: list[np.ndarray]
    items: list[tuple[int, str]]


class LocatorGeometry:
    """The locator's geometry from a ``LocatorSpec`` alone (no networks, no torch): the
    coarse canvas, the coarse decode, the crop matrices, the fine decode.  Usable in any
    worker process.

    ``rules``: the coarse stage's run-time rules (default: ``configs/locator.yaml``)."""

    def __init__(self, spec, rules: LocatorRules | None = None) -> None:
        self.spec = spec
        self.rules = rules or default_locator_rules()
        self.coarse_index = {n: i for i, n in enumerate(spec.coarse_landmarks)}
        self.fine_index = {n: i for i, n in enumerate(spec.fine_landmarks)}
        self.crops = {c.name: c for c in spec.crops}

    # ------------------------------------------------------------------ coarse
    def coarse_matrix(self, height: int, width: int) -> np.ndarray:

        return letterbox_matrix(height, width, self.spec.coarse_height, self.spec.coarse_width)

    def coarse_view(
        self, height: int, width: int, whole: Callable[[np.ndarray], np.ndarray]
    ) -> CoarseView:
        """The canvases the coarse network sees of a ``height x width`` film.
        ``whole(matrix)`` gives the film through a 2x3 image -> canvas map at the canvas
        size (``FilmPixels.whole``).

        The whole film letterboxed shows where it is exposed; a film with black borders
        (a leg filling half the frame) is framed to its exposed region so the leg is seen
        at the scale the network was trained at; a film wide enough for two legs adds
        each half alone, so that one leg cannot hide or borrow joints from the other.
        """

        hc_, wc = self.spec.coarse_height, self.spec.coarse_width
        A0 = self.coarse_matrix(height, width)
        first = whole(A0)
        box_c = exposed_box(first)
        x0, y0, x1, y1 = box_c
        # the film's own rectangle on the canvas
        (fx0, fy0), (fx1, fy1) = apply_affine(
            A0, np.array([[-0.5, -0.5], [width - 0.5, height - 0.5]])
        )
        film_area = max((fx1 - fx0) * (fy1 - fy0), 1.0)
        if (x1 - x0) * (y1 - y0) >= _FULL_FRAME * film_area:
            frames, images = [A0], [first]
        else:
            A = box_matrix(_box_to_image(box_c, A0), hc_, wc, _FRAME_MARGIN)
            frames, images = [A], [whole(A)]
        halves: list[tuple[float, float]] = []
        split = None
        if (x1 - x0) > _TWO_LEGS_WIDTH * (y1 - y0) and x1 - x0 >= 8:
            sc = _split_column(first, box_c)
            inv = invert_affine(A0)
            ix0, iy0, ix1, iy1 = _box_to_image(box_c, A0)
            split = float(apply_affine(inv, np.array([sc, 0.0]))[0])
            over = _TILE_OVERLAP * (ix1 - ix0)
            for a, b in ((ix0, split + over), (split - over, ix1)):
                A = box_matrix((a, iy0, b, iy1), hc_, wc, _FRAME_MARGIN)
                img = whole(A)
                # only this half: the canvas beyond its columns is black
                ca, cb = (float(apply_affine(A, np.array([v, 0.0]))[0]) for v in (a - 0.5, b - 0.5))
                cols = np.arange(wc)
                img[..., (cols < math.floor(ca)) | (cols > math.ceil(cb))] = 0.0
                frames.append(A)
                images.append(img)
                halves.append((a, b))
        arr = np.stack([np.asarray(i, np.float32) for i in images])[:, None]
        return CoarseView(arr, frames, halves, split)

    def decode_coarse(
        self, heatmaps: np.ndarray, radiograph: FilmShape, view: CoarseView | None = None
    ) -> CoarseResult:
        """Legs from one film's coarse heatmaps: (V, K, h, w) for the V canvases of
        ``view`` (``coarse_view``), or (K, h, w) for the whole film letterboxed.

        Uses only the view's maps, the film's size and its DICOM ``mirrored``/``laterality``.
        A leg counts when its joint peaks sum to ``rules.min_leg_score`` on the whole
        film's canvas, ``rules.min_half_leg_score`` on a half's (a film of noise gives the
        shipped model "legs" of weak, scattered peaks: ``configs/locator.yaml``).
        """
        if view is None:
            view = CoarseView(
                np.zeros((1, 1, 1, 1), np.float32),
                [self.coarse_matrix(radiograph.height, radiograph.width)],
            )
        if heatmaps.ndim == 3:
            heatmaps = heatmaps[None]
        legs = self.canvas_legs(heatmaps[0], view.frames[0], self.rules.min_leg_score)
        if view.halves:
            legs = self._with_halves(legs, heatmaps, view)
        _assign_sides(legs, radiograph)
        return CoarseResult(legs=legs, height=radiograph.height, width=radiograph.width)

    def _with_halves(
        self, legs: list[CoarseLeg], heatmaps: np.ndarray, view: CoarseView
    ) -> list[CoarseLeg]:
        """Combine the whole-film legs with the legs seen in each half alone.

        When each half alone shows a complete leg (and they are two legs), those two: a
        half cannot lend one leg's joints to the other (on the whole film of two legs
        side by side, the weaker leg can take its head from between the legs or from the
        other leg).  Otherwise two complete whole-film legs on both sides of the split
        stand; otherwise each half without a complete whole-film leg gets its own leg, if
        it shows one.
        """
        split = view.split if view.split is not None else 0.0

        def half_of(leg: CoarseLeg) -> int:
            return 0 if leg.points["knee_centre"][0] < split else 1

        own: list[CoarseLeg | None] = []
        for i, (columns, frame) in enumerate(
            zip(view.half_columns(), view.frames[1:], strict=True)
        ):
            cands = self.half_legs(heatmaps[1 + i], frame, columns)
            own.append(max(cands, key=_leg_score) if cands else None)
        if own[0] is not None and own[1] is not None and not _same_leg(own[0], own[1]):
            return [own[0], own[1]]
        good = [leg for leg in legs if complete_leg(leg)]
        if len(good) == 2 and half_of(good[0]) != half_of(good[1]):
            return legs
        out = list(good)
        for leg in own:
            if leg is not None and len(out) < 2 and not any(_same_leg(leg, g) for g in out):
                out.append(leg)
        if not out:
            return legs
        # an incomplete whole-film leg stays where no complete leg replaced it
        for leg in legs:
            if len(out) < 2 and leg not in out and not any(_same_leg(leg, g) for g in out):
                out.append(leg)
        return out

    def half_legs(
        self,
        heatmaps: np.ndarray,
        frame: np.ndarray,
        columns: tuple[float, float],
        min_score: float | None = None,
    ) -> list[CoarseLeg]:
        """The complete legs (``complete_leg``) one half's canvas shows with their knee
        in the image ``columns`` [lo, hi), scoring ``min_score`` (default
        ``rules.min_half_leg_score``)."""
        score = self.rules.min_half_leg_score if min_score is None else min_score
        lo, hi = columns
        return [
            leg
            for leg in self.canvas_legs(heatmaps, frame, score)
            if complete_leg(leg) and lo <= leg.points["knee_centre"][0] < hi
        ]

    def canvas_legs(
        self, heatmaps: np.ndarray, frame: np.ndarray, min_score: float
    ) -> list[CoarseLeg]:
        """Up to two legs from one canvas's heatmaps (K, h, w), each with joint peaks
        summing to ``min_score``; ``frame``: its image -> canvas map.  Sides are not
        assigned here."""

        spec = self.spec
        stride = spec.coarse_net.out_stride
        to_image = invert_affine(frame)
        thr = spec.peak_threshold
        ci = self.coarse_index

        def peaks(name: str) -> list[tuple[int, int, float]]:
            return hc.find_peaks(heatmaps[ci[name]], thr, min_distance=3, max_peaks=4)

        heads, knees, ankles = (peaks(name) for name in JOINTS)
        candidates = []
        for k in knees:
            best_h, best_a = _pick_joints(heads, k, ankles)
            score = k[2] + (best_h[2] if best_h else 0.0) + (best_a[2] if best_a else 0.0)
            candidates.append((score, k, best_h, best_a))
        candidates.sort(key=lambda c: -c[0])
        chosen = []
        used: set[tuple[int, int]] = set()
        for _, k, h, a in candidates:
            members = [p[:2] for p in (k, h, a) if p is not None]
            if any(m in used for m in members):
                continue
            used.update(members)
            chosen.append((k, h, a))
            if len(chosen) == 2:
                break

        legs: list[CoarseLeg] = []
        for k, h, a in chosen:
            pts_hm: dict[str, np.ndarray] = {}
            conf: dict[str, float] = {}
            spread_hm: dict[str, float] = {}

            def refine(
                name: str, centre, radius: float, pts_hm=pts_hm, conf=conf, spread_hm=spread_hm
            ) -> None:
                if name not in ci:
                    return
                mask = hc.disk_mask(
                    heatmaps.shape[-2:], (float(centre[0]), float(centre[1])), radius
                )
                xy, c = hc.decode(heatmaps[ci[name]], mask=mask)
                pts_hm[name] = xy
                conf[name] = float(c)
                spread_hm[name] = float(hc.spread(heatmaps[ci[name]], xy))

            refine("knee_centre", k[:2], 2.0)
            if h is not None:
                refine("femoral_head", h[:2], 2.0)
            if a is not None:
                refine("ankle_centre", a[:2], 2.0)
            if sum(conf.get(n, 0.0) for n in JOINTS) < min_score:
                continue  # weak scattered peaks (a film of noise) are not a leg
            femur_hm = leg_scale(pts_hm)
            if femur_hm is None:
                continue  # a knee alone is not a leg
            femur = max(femur_hm, 4.0)
            H = pts_hm.get("femoral_head")
            K = pts_hm["knee_centre"]
            A_ = pts_hm.get("ankle_centre")
            if H is not None:
                refine("greater_trochanter", H, 0.35 * femur)
                refine("femoral_shaft_proximal", H + 0.3 * (K - H), 0.15 * femur)
                refine("femoral_shaft_distal", H + 0.7 * (K - H), 0.15 * femur)
            if A_ is not None:
                refine("tibial_shaft_proximal", K + 0.25 * (A_ - K), 0.15 * femur)
                refine("tibial_shaft_distal", K + 0.75 * (A_ - K), 0.15 * femur)
            img_pts: dict[str, tuple[float, float]] = {}
            for n, xy in pts_hm.items():
                x, y = apply_affine(to_image, hc.from_heatmap(xy, stride))
                img_pts[n] = (float(x), float(y))
            scale = math.sqrt(abs(np.linalg.det(to_image[:, :2])))
            legs.append(
                CoarseLeg(
                    points=img_pts,
                    confidence=conf,
                    medial_sign=0,
                    femur_px=femur * stride * scale,
                    spread={n: v * stride * scale for n, v in spread_hm.items()},
                )
            )
        return legs

    # ------------------------------------------------------------------ fine
    def crop_matrices(self, leg: CoarseLeg) -> list[tuple[str, np.ndarray]]:
        """(crop name, image->crop matrix) for each crop this leg's anchors allow.

        With several ``spec.fine_scales`` each joint is cropped at each scale (test-time
        augmentation); the answers are averaged in ``decode_fine``.
        """
        out = []
        flip = leg.medial_sign < 0
        angle = crop_angle(leg.points, flip)
        for crop in self.spec.crops:
            for scale in self.spec.fine_scales:
                A = joint_crop_matrix(
                    leg.points,
                    crop.anchors,
                    crop.weights,
                    crop.side,
                    leg.femur_px,
                    self.spec.fine_size,
                    flip,
                    scale=scale,
                    angle_deg=angle,
                )
                if A is None:
                    break  # the leg has none of this crop's anchors
                out.append((crop.name, A))
        return out

    def _fine_points(
        self, inputs: FineInputs, heatmaps: np.ndarray
    ) -> dict[int, dict[str, tuple[tuple[float, float], float, float]]]:
        """(leg index) -> name -> ((x, y) image px, confidence, spread in image px)."""

        stride = self.spec.fine_net.out_stride
        found: dict[int, dict[str, tuple[tuple[float, float], float, float]]] = {}
        if len(inputs.items) == 0:
            return found
        xy_all, conf_all = hc.decode(heatmaps)
        answers: dict[tuple[int, str], list[tuple[np.ndarray, float, float]]] = {}
        for m, (li, cname) in enumerate(inputs.items):
            inv = invert_affine(inputs.matrices[m])
            px = stride * math.sqrt(abs(np.linalg.det(inv[:, :2])))  # heatmap px -> image px
            for name in self.crops[cname].landmarks:
                k = self.fine_index[name]
                p = apply_affine(inv, hc.from_heatmap(xy_all[m, k], stride))
                sp = float(hc.spread(heatmaps[m, k], xy_all[m, k])) * px
                answers.setdefault((li, name), []).append((p, float(conf_all[m, k]), sp))
        for (li, name), got in answers.items():
            # confidence-weighted mean of the crops that saw the landmark well
            best = max(c for _, c, _ in got)
            keep = [(p, c, s) for p, c, s in got if c >= 0.5 * best]
            w = np.array([max(c, 1e-6) for _, c, _ in keep])
            p = np.sum([pp * wi for (pp, _, _), wi in zip(keep, w, strict=True)], axis=0) / w.sum()
            conf = float(np.mean([c for _, c, _ in keep]))
            sp = float(np.mean([s for _, _, s in keep]))
            found.setdefault(li, {})[name] = ((float(p[0]), float(p[1])), conf, sp)
        return found

    def decode_fine(
        self, coarse: CoarseResult, inputs: FineInputs, heatmaps: np.ndarray
    ) -> list[LegLandmarks]:
        """Final legs: fine answers where the crops saw the landmark, coarse ones elsewhere."""
        found = self._fine_points(inputs, heatmaps)
        legs = []
        for li, leg in enumerate(coarse.legs):
            pts = dict(leg.points)
            conf = dict(leg.confidence)
            spread = dict(leg.spread)
            for name, (p, c, sp) in found.get(li, {}).items():
                if c >= _FINE_MIN_CONF or name not in pts:
                    pts[name] = p
                    conf[name] = c
                    spread[name] = sp
            # a joint is cut off when the fine answer or the coarse one (which saw the
            # whole film) lies at the edge: a fine crop that reaches past the edge can
            # place the joint on the last structure inside the film
            cut = set(_outside_the_film(pts, coarse.height, coarse.width))
            cut |= set(_outside_the_film(leg.points, coarse.height, coarse.width))
            outside = tuple(n for n in _EDGE if n in cut)
            legs.append(
                LegLandmarks(
                    side=leg.side,
                    points=pts,
                    confidence={n: float(min(1.0, max(0.0, conf.get(n, 0.0)))) for n in pts},
                    mirrored=leg.mirrored,
                    spread={n: float(spread[n]) for n in pts if n in spread},
                    outside=outside,
                )
            )
        legs.sort(key=lambda leg: leg.points.get("knee_centre", (0.0, 0.0))[0])
        return legs

    def recentre(
        self, coarse: CoarseResult, inputs: FineInputs, heatmaps: np.ndarray
    ) -> CoarseResult:
        """The legs for the next fine pass: each anchor moved to the fine answer where the
        crops saw it; the leg's scale from the new head-knee distance."""
        found = self._fine_points(inputs, heatmaps)
        legs = []
        for li, leg in enumerate(coarse.legs):
            pts = dict(leg.points)
            for name, (p, c, _) in found.get(li, {}).items():
                if c >= _FINE_MIN_CONF and name in pts:
                    pts[name] = p
            new = CoarseLeg(
                pts,
                dict(leg.confidence),
                leg.medial_sign,
                leg.femur_px,
                leg.side,
                leg.mirrored,
                dict(leg.spread),
            )
            if "femoral_head" in pts and "knee_centre" in pts:
                new.femur_px = float(
                    np.hypot(*np.subtract(pts["knee_centre"], pts["femoral_head"]))
                )
            legs.append(new)
        return CoarseResult(legs, coarse.height, coarse.width)


class Locator(LocatorGeometry):
    """The geometry with its two heatmap networks on a device."""

    def __init__(
        self,
        spec,
        coarse_net,
        fine_net,
        device="cpu",
        batch_size: int = 32,
        rules: LocatorRules | None = None,
        optimise: bool = True,
    ) -> None:

        super().__init__(spec, rules)
        self.device = torch.device(device)
        self.coarse_net = coarse_net.to(self.device).eval()
        self.fine_net = fine_net.to(self.device).eval()
        self.batch_size = int(batch_size)
        # what runs: inference copies made now (``models.inference``: BatchNorm folded,
        # channels_last; the nets passed in are left as they are, a training run keeps
        # its modules), or the nets themselves (``optimise=False``: the reference the
        # copies are tested against)
        self.optimised = bool(optimise)
        self._coarse_run = inference_copy(self.coarse_net) if optimise else self.coarse_net
        self._fine_run = inference_copy(self.fine_net) if optimise else self.fine_net

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device="cpu",
        rules: LocatorRules | None = None,
        optimise: bool = True,
    ) -> Locator:
        """Load a checkpoint (``None``: the shipped default in ``models/weights/``)."""

        spec, coarse, fine = nets_from_checkpoint(load_checkpoint(path))
        return cls(spec, coarse, fine, device=device, rules=rules, optimise=optimise)

    # ------------------------------------------------------------------ networks
    def _run(self, net, batch: np.ndarray) -> np.ndarray:
        """``net`` (an inference copy or the plain network) over ``batch`` in chunks of
        ``batch_size``."""
        outs = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(batch[i : i + self.batch_size]))
                outs.append(net(x.to(self.device, torch.float32)).float().cpu().numpy())
        if not outs:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate(outs, axis=0)

    def predict_coarse(self, batch: np.ndarray) -> np.ndarray:
        """Coarse heatmaps for a batch (N, 1, Hc, Wc) of ``coarse_input`` arrays."""
        return self._run(self._coarse_run, batch)

    def predict_fine(self, crops: np.ndarray) -> np.ndarray:
        """Fine heatmaps for crops (M, 1, S, S) (from one or many films)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.spec.fine_landmarks), 1, 1), np.float32)
        return self._run(self._fine_run, crops)


def crop_angle(points: dict[str, tuple[float, float]], flip: bool) -> float:
    """The rotation (``crop_matrix``'s ``angle_deg``) that turns the leg's mechanical
    axis (femoral head -> ankle centre, seen through the crop's mirror ``flip``) towards
    vertical, by its tilt beyond ``_UPRIGHT_DEG``; 0 without both joints."""
    if "femoral_head" not in points or "ankle_centre" not in points:
        return 0.0
    dx = points["ankle_centre"][0] - points["femoral_head"][0]
    dy = points["ankle_centre"][1] - points["femoral_head"][1]
    if dy <= 0:
        return 0.0
    tilt = math.degrees(math.atan2(-dx if flip else dx, dy))
    return math.copysign(max(0.0, abs(tilt) - _UPRIGHT_DEG), tilt)


def exposed_box(canvas: np.ndarray, threshold: float = _EXPOSED_LEVEL) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), ends exclusive: the exposed part of an image (its black borders,
    from letterboxing or collimation, left out).  A row or column is exposed when its
    90th percentile exceeds ``threshold``; all of it when nothing is."""
    img = np.asarray(canvas, dtype=np.float32)
    h, w = img.shape[-2:]
    img = img.reshape(h, w)
    rows = np.flatnonzero(np.percentile(img, 90, axis=1) > threshold)
    cols = np.flatnonzero(np.percentile(img, 90, axis=0) > threshold)
    if len(rows) < 2 or len(cols) < 2:
        return 0, 0, int(w), int(h)
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _box_to_image(box, A: np.ndarray) -> tuple[float, float, float, float]:
    """A canvas box (pixel index edges, ends exclusive) in image pixels (same convention)
    through the inverse of the image -> canvas map ``A``."""

    x0, y0, x1, y1 = box
    inv = invert_affine(A)
    (ax, ay), (bx, by) = apply_affine(inv, np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5]]))
    return float(ax + 0.5), float(ay + 0.5), float(bx + 0.5), float(by + 0.5)


def box_matrix(box, out_h: int, out_w: int, margin: float = 0.0) -> np.ndarray:
    """Letterbox the image region ``box`` (x0, y0, x1, y1: pixel index edges, ends
    exclusive) grown by ``margin`` of its size on each side into ``out_h x out_w``,
    aspect kept, centred."""
    x0, y0, x1, y1 = box
    bw, bh = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    s = min(out_h / max(bh, 1e-6), out_w / max(bw, 1e-6))
    cx, cy = (x0 + x1) / 2.0 - 0.5, (y0 + y1) / 2.0 - 0.5  # pixel-centre coordinates
    return np.array([[s, 0.0, (out_w - 1) / 2.0 - s * cx], [0.0, s, (out_h - 1) / 2.0 - s * cy]])


def _split_column(canvas: np.ndarray, box) -> int:
    """The darkest column (mean over the box's rows) in the middle 40 % of ``box``: the
    gap, or the soft tissue, between two legs."""
    img = np.asarray(canvas, dtype=np.float32).reshape(np.shape(canvas)[-2:])
    x0, y0, x1, y1 = box
    prof = img[y0:y1, x0:x1].mean(axis=0)
    lo = int(0.3 * len(prof))
    hi = max(int(0.7 * len(prof)), lo + 1)
    return x0 + lo + int(np.argmin(prof[lo:hi]))


def complete_leg(leg: CoarseLeg) -> bool:
    """Head above the knee above the ankle, roughly in line, femur / tibia in a human
    range: not a leg assembled from the wrong peaks or from joints of both legs."""
    p = leg.points
    if not all(n in p for n in ("femoral_head", "knee_centre", "ankle_centre")):
        return False
    (hx, hy), (kx, ky), (ax, ay) = p["femoral_head"], p["knee_centre"], p["ankle_centre"]
    if not (ky - hy > 0 and ay - ky > 0):
        return False
    if abs(hx - kx) > _IN_LINE * (ky - hy) or abs(ax - kx) > _IN_LINE * (ay - ky):
        return False
    ratio = math.hypot(hx - kx, hy - ky) / math.hypot(ax - kx, ay - ky)
    return _FEMUR_TIBIA[0] <= ratio <= _FEMUR_TIBIA[1]


def _same_leg(a: CoarseLeg, b: CoarseLeg) -> bool:
    ka, kb = a.points["knee_centre"], b.points["knee_centre"]
    return abs(ka[0] - kb[0]) < _SAME_LEG * max(a.femur_px, b.femur_px)


def _leg_score(leg: CoarseLeg) -> float:
    return sum(leg.confidence.get(n, 0.0) for n in ("femoral_head", "knee_centre", "ankle_centre"))


def _outside_the_film(
    points: dict[str, tuple[float, float]], height: int | None, width: int | None
) -> tuple[str, ...]:
    """The femoral head / ankle centre when it lies at the film's top or bottom edge or
    beyond: that joint is cut off by the film (the leg is still there; its other
    landmarks stand)."""
    if height is None or width is None or "knee_centre" not in points:
        return ()
    if "femoral_head" in points:
        femur = math.hypot(*np.subtract(points["knee_centre"], points["femoral_head"]))
    elif "ankle_centre" in points:
        femur = 1.15 * math.hypot(*np.subtract(points["knee_centre"], points["ankle_centre"]))
    else:
        return ()
    out = []
    for name, share in _EDGE.items():
        if name not in points:
            continue
        y = points[name][1]
        # along the leg only: a narrow film's side edges pass close to a joint that is
        # fully on it
        if min(y, (height - 1) - y) < share * femur:
            out.append(name)
    for name in _cut_by_proportions(points, height):
        if name not in out:
            out.append(name)
    return tuple(out)


def _cut_by_proportions(points: dict[str, tuple[float, float]], height: int) -> list[str]:
    """The head or ankle that the leg's proportions place beyond the film's top or bottom
    edge while the network placed it inside (see _CUT_FEMUR_TIBIA)."""
    if not all(n in points for n in JOINTS):
        return []
    H, K, A = (np.asarray(points[n], dtype=float) for n in JOINTS)
    femur, tibia = float(np.hypot(*(K - H))), float(np.hypot(*(A - K)))
    if femur <= 0 or tibia <= 0:
        return []
    ratio = femur / tibia
    if ratio < _CUT_FEMUR_TIBIA[0]:
        expected = K + (H - K) / femur * (_FEMUR_TIBIA_TYPICAL * tibia)
        if expected[1] < -0.5:
            return ["femoral_head"]
    elif ratio > _CUT_FEMUR_TIBIA[1]:
        expected = K + (A - K) / tibia * (femur / _FEMUR_TIBIA_TYPICAL)
        if expected[1] > height - 0.5:
            return ["ankle_centre"]
    return []


def _in_line(cands, knee, direction) -> list[tuple[tuple[int, int, float], float]]:
    """(peak, in-line score) of the peaks near the ray from the knee along ``direction``
    (a unit vector; at most 0.4 x their distance along it from the ray, about 22 deg):
    the peak's height less _OFF_LINE x its distance from the ray over its distance
    along it."""
    kx, ky = knee[0], knee[1]
    out = []
    for p in cands:
        v = np.array([p[0] - kx, p[1] - ky], dtype=float)
        along = float(v @ direction)
        off = abs(float(v[0] * direction[1] - v[1] * direction[0]))
        if along <= 2 or off > 0.4 * along:
            continue
        out.append((p, p[2] - _OFF_LINE * off / along))
    return out


def _pick_joints(heads, knee, ankles):
    """The head and the ankle peak of the leg through ``knee`` (either None when no peak
    lies in line): the head above the knee, the ankle on the femur's line carried on,
    both strong and, together, in a leg's proportions (see _OFF_LINE)."""
    up, down = np.array([0.0, -1.0]), np.array([0.0, 1.0])
    kxy = np.array(knee[:2], dtype=float)
    best, best_score = (None, None), -np.inf
    for h, sh in _in_line(heads, knee, up) or [(None, 0.0)]:
        if h is None:
            axis = down
        else:
            axis = kxy - np.array(h[:2], dtype=float)
            axis /= np.linalg.norm(axis)
        for a, sa in _in_line(ankles, knee, axis) or [(None, 0.0)]:
            score = sh + sa
            if h is not None and a is not None:
                femur = math.hypot(knee[0] - h[0], knee[1] - h[1])
                tibia = math.hypot(a[0] - knee[0], a[1] - knee[1])
                z = (math.log(femur / tibia) - math.log(_FEMUR_TIBIA_TYPICAL)) / _PROPORTION_SD
                score -= _PROPORTION * z * z
            if score > best_score:
                best, best_score = (h, a), score
    return best


def _assign_sides(legs: list[CoarseLeg], radiograph: FilmShape) -> None:
    """Medial direction from anatomy, then side and mirroring (see the module docstring)."""
    for i, leg in enumerate(legs):
        sign = 0
        h = leg.points.get("femoral_head")
        gt = leg.points.get("greater_trochanter")
        if (
            h is not None
            and gt is not None
            and leg.confidence.get("greater_trochanter", 0) >= _TROCHANTER_MIN_CONF
        ):
            dx = h[0] - gt[0]
            if abs(dx) > 0.02 * leg.femur_px:
                sign = 1 if dx > 0 else -1
        if sign == 0 and len(legs) == 2:
            other = legs[1 - i]
            dx = other.points["knee_centre"][0] - leg.points["knee_centre"][0]
            sign = 1 if dx > 0 else -1
        leg.medial_sign = sign
    if len(legs) == 2 and legs[0].medial_sign != 0 and legs[0].medial_sign == legs[1].medial_sign:
        # anatomy contradicts itself: medial is towards the other leg on any AP film
        for i, leg in enumerate(legs):
            dx = legs[1 - i].points["knee_centre"][0] - leg.points["knee_centre"][0]
            leg.medial_sign = 1 if dx > 0 else -1
    lat = (radiograph.laterality or "").upper()
    for leg in legs:
        if leg.medial_sign == 0:
            # no anatomy to go by: DICOM laterality on a standard film, else a right leg
            leg.medial_sign = (
                -1
                if (lat == "L" and not radiograph.mirrored) or (lat == "R" and radiograph.mirrored)
                else 1
            )
        if radiograph.mirrored is not None:
            mirrored = bool(radiograph.mirrored)
        elif lat in ("R", "L") and len(legs) == 1:
            mirrored = leg.medial_sign != (1 if lat == "R" else -1)
        else:
            mirrored = False
        leg.mirrored = mirrored
        leg.side = Side.RIGHT if leg.medial_sign * (-1 if mirrored else 1) > 0 else Side.LEFT
