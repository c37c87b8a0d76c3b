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


@dataclass(frozen=True)
class LocatorRules:
    """Run-time rules of the coarse stage (``configs/locator.yaml``)."""

    # a coarse leg counts when its joint peaks (head + knee + ankle, one not found: 0) sum
    # to at least this
    min_leg_score: float

    def validate(self) -> None:
        if not 0.0 < self.min_leg_score < len(JOINTS):
            raise ConfigError(
                f"min_leg_score: must be in (0, {len(JOINTS)}), got {self.min_leg_score}"
            )


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

    def decode_coarse(self, heatmaps: np.ndarray, radiograph: FilmShape) -> CoarseResult:
        """Legs from one film's coarse heatmaps (K, h, w).

        Uses only the film's size and its DICOM ``mirrored``/``laterality``.  A leg
        counts when its joint peaks sum to ``rules.min_leg_score`` (a film of noise gives
        the shipped model "legs" of weak, scattered peaks: ``configs/locator.yaml``).
        """

        spec = self.spec
        stride = spec.coarse_net.out_stride
        to_image = invert_affine(self.coarse_matrix(radiograph.height, radiograph.width))
        thr = spec.peak_threshold
        ci = self.coarse_index

        def peaks(name: str) -> list[tuple[int, int, float]]:
            return hc.find_peaks(heatmaps[ci[name]], thr, min_distance=3, max_peaks=4)

        heads, knees, ankles = (peaks(name) for name in JOINTS)
        candidates = []
        for k in knees:
            best_h = _best_along(heads, k, above=True)
            best_a = _best_along(ankles, k, above=False)
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
            if sum(conf.get(n, 0.0) for n in JOINTS) < self.rules.min_leg_score:
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
        _assign_sides(legs, radiograph)
        return CoarseResult(legs=legs)

    # ------------------------------------------------------------------ fine
    def crop_matrices(self, leg: CoarseLeg) -> list[tuple[str, np.ndarray]]:
        """(crop name, image->crop matrix) for each crop this leg's anchors allow.

        With several ``spec.fine_scales`` each joint is cropped at each scale (test-time
        augmentation); the answers are averaged in ``decode_fine``.
        """
        out = []
        for crop in self.spec.crops:
            for scale in self.spec.fine_scales:
                A = joint_crop_matrix(
                    leg.points,
                    crop.anchors,
                    crop.weights,
                    crop.side,
                    leg.femur_px,
                    self.spec.fine_size,
                    leg.medial_sign < 0,
                    scale=scale,
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
            legs.append(
                LegLandmarks(
                    side=leg.side,
                    points=pts,
                    confidence={n: float(min(1.0, max(0.0, conf.get(n, 0.0)))) for n in pts},
                    mirrored=leg.mirrored,
                    spread={n: float(spread[n]) for n in pts if n in spread},
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
        return CoarseResult(legs)


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
    ) -> None:

        super().__init__(spec, rules)
        self.device = torch.device(device)
        self.coarse_net = coarse_net.to(self.device).eval()
        self.fine_net = fine_net.to(self.device).eval()
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device="cpu", rules: LocatorRules | None = None
    ) -> Locator:
        """Load a checkpoint (``None``: the shipped default in ``models/weights/``)."""

        spec, coarse, fine = nets_from_checkpoint(load_checkpoint(path))
        return cls(spec, coarse, fine, device=device, rules=rules)

    # ------------------------------------------------------------------ networks
    def _run(self, net, batch: np.ndarray) -> np.ndarray:

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
        return self._run(self.coarse_net, batch)

    def predict_fine(self, crops: np.ndarray) -> np.ndarray:
        """Fine heatmaps for crops (M, 1, S, S) (from one or many films)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.spec.fine_landmarks), 1, 1), np.float32)
        return self._run(self.fine_net, crops)


def _best_along(cands, knee, above: bool):
    """The strongest peak roughly in line with the knee, above (head) or below (ankle) it."""
    kx, ky = knee[0], knee[1]
    best, best_score = None, -np.inf
    for p in cands:
        dy = (ky - p[1]) if above else (p[1] - ky)
        if dy <= 2 or abs(p[0] - kx) > 0.4 * dy:
            continue
        score = p[2] - 2.0 * abs(p[0] - kx) / dy  # strong and in line with the knee
        if score > best_score:
            best, best_score = p, score
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
