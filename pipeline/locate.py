"""Coarse-to-fine landmark localisation: ``Radiograph`` -> ``list[LegLandmarks]``.

Stages (each exposed so a batch engine can batch them across films):

1. ``coarse_input(radiograph)`` -> float32 (1, Hc, Wc): the whole film letterboxed into a
   small canvas.  Cheap, computable in a worker process.
2. ``predict_coarse(batch)`` -> heatmaps (N, Kc, h, w): class-agnostic joint channels
   (every femoral head on the film shows in one channel).
3. ``decode_coarse(heatmaps, radiograph)`` -> ``CoarseResult``: up to two legs, grouped
   from the peaks (knee -> the head above it -> the ankle below it); each leg's medial
   direction from anatomy (the greater trochanter is lateral of the femoral head); its
   side from DICOM orientation/laterality when known, else assuming standard AP display.
4. ``fine_inputs(radiograph, coarse)`` -> ``FineInputs``: square crops around hip, knee
   and ankle of each leg, of a size proportional to the leg's femur length, mirrored so
   that medial is +x (each leg looks like a right leg), at ``fine_size`` pixels.
5. ``predict_fine(crops)`` -> heatmaps; ``decode_fine(...)`` -> ``list[LegLandmarks]``
   with sub-pixel positions and a per-landmark confidence in [0, 1].

``locate`` / ``locate_batch`` run all of it.  The device is passed in; the caller owns
torch's thread settings (no global state is changed here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.radiograph import Radiograph

# below this coarse peak the trochanter is not trusted to give the medial direction
_TROCHANTER_MIN_CONF = 0.2
# a fine answer below this confidence falls back to the coarse answer (when there is one)
_FINE_MIN_CONF = 0.1


@dataclass
class CoarseLeg:
    """One leg found on the whole-film pass, in image pixels."""

    points: dict[str, tuple[float, float]]
    confidence: dict[str, float]
    medial_sign: int  # +1: medial is +x in the image
    femur_px: float  # head-knee distance (the leg's scale), image pixels
    side: str = "right"
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


class Locator:
    """Coarse-to-fine locator around two heatmap networks and a ``LocatorSpec``."""

    def __init__(self, spec, coarse_net, fine_net, device="cpu", batch_size: int = 32) -> None:
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.coarse_net = coarse_net.to(self.device).eval()
        self.fine_net = fine_net.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.coarse_index = {n: i for i, n in enumerate(spec.coarse_landmarks)}
        self.fine_index = {n: i for i, n in enumerate(spec.fine_landmarks)}
        self.crops = {c.name: c for c in spec.crops}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device="cpu") -> Locator:
        """Load a checkpoint (``None``: the shipped default in ``models/weights/``)."""
        from legalign.models.checkpoint import load_checkpoint, nets_from_checkpoint

        spec, coarse, fine = nets_from_checkpoint(load_checkpoint(path))
        return cls(spec, coarse, fine, device=device)

    # ------------------------------------------------------------------ coarse
    def coarse_matrix(self, height: int, width: int) -> np.ndarray:
        from legalign.models.crops import letterbox_matrix

        return letterbox_matrix(height, width, self.spec.coarse_height, self.spec.coarse_width)

    def coarse_input(self, radiograph: Radiograph) -> np.ndarray:
        """The whole film letterboxed into the coarse canvas: float32 (1, Hc, Wc)."""
        from legalign.models.crops import warp

        A = self.coarse_matrix(radiograph.height, radiograph.width)
        size = (self.spec.coarse_height, self.spec.coarse_width)
        source = getattr(radiograph, "source", None)  # a progressive read decodes on demand
        img = source.whole(A, size) if source is not None else warp(radiograph.pixels, A, size)
        return img[None].astype(np.float32, copy=False)

    def _run(self, net, batch: np.ndarray) -> np.ndarray:
        import torch

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

    def decode_coarse(self, heatmaps: np.ndarray, radiograph: Radiograph) -> CoarseResult:
        """Legs from one film's coarse heatmaps (K, h, w).

        Uses only the film's size and its DICOM ``mirrored``/``laterality``.
        """
        from legalign.models import heatmap_codec as hc
        from legalign.models.crops import apply_affine, invert_affine

        spec = self.spec
        stride = spec.coarse_net.out_stride
        to_image = invert_affine(self.coarse_matrix(radiograph.height, radiograph.width))
        thr = spec.peak_threshold
        ci = self.coarse_index

        def peaks(name: str) -> list[tuple[int, int, float]]:
            return hc.find_peaks(heatmaps[ci[name]], thr, min_distance=3, max_peaks=4)

        heads, knees, ankles = peaks("femoral_head"), peaks("knee_centre"), peaks("ankle_centre")
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
            if "femoral_head" in pts_hm:
                femur = float(np.hypot(*(pts_hm["knee_centre"] - pts_hm["femoral_head"])))
            elif "ankle_centre" in pts_hm:
                femur = 1.15 * float(np.hypot(*(pts_hm["ankle_centre"] - pts_hm["knee_centre"])))
            else:
                continue  # a knee alone is not a leg
            femur = max(femur, 4.0)
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
            img_pts = {
                n: tuple(float(v) for v in apply_affine(to_image, hc.from_heatmap(xy, stride)))
                for n, xy in pts_hm.items()
            }
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
        from legalign.models.crops import crop_matrix

        out = []
        for crop in self.spec.crops:
            pts = [
                (leg.points[a], w)
                for a, w in zip(crop.anchors, crop.weights, strict=True)
                if a in leg.points
            ]
            if not pts:
                continue
            wsum = sum(w for _, w in pts)
            cx = sum(p[0] * w for p, w in pts) / wsum
            cy = sum(p[1] * w for p, w in pts) / wsum
            for scale in self.spec.fine_scales:
                side = crop.side * leg.femur_px * scale
                A = crop_matrix((cx, cy), side, self.spec.fine_size, leg.medial_sign < 0)
                out.append((crop.name, A))
        return out

    def fine_inputs(self, radiograph: Radiograph, coarse: CoarseResult) -> FineInputs:
        """Crops around each joint of each coarse leg."""
        from legalign.models.crops import warp

        s = self.spec.fine_size
        source = getattr(radiograph, "source", None)  # a progressive read: regions decoded
        crops, mats, items = [], [], []
        for li, leg in enumerate(coarse.legs):
            for name, A in self.crop_matrices(leg):
                crops.append(
                    source.crop(A, (s, s))
                    if source is not None
                    else warp(radiograph.pixels, A, (s, s))
                )
                mats.append(A)
                items.append((li, name))
        arr = np.stack(crops)[:, None] if crops else np.zeros((0, 1, s, s), np.float32)
        return FineInputs(crops=arr.astype(np.float32, copy=False), matrices=mats, items=items)

    def predict_fine(self, crops: np.ndarray) -> np.ndarray:
        """Fine heatmaps for crops (M, 1, S, S) (from one or many films)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.spec.fine_landmarks), 1, 1), np.float32)
        return self._run(self.fine_net, crops)

    def _fine_points(
        self, inputs: FineInputs, heatmaps: np.ndarray
    ) -> dict[int, dict[str, tuple[tuple[float, float], float, float]]]:
        """(leg index) -> name -> ((x, y) image px, confidence, spread in image px)."""
        from legalign.models import heatmap_codec as hc
        from legalign.models.crops import apply_affine, invert_affine

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

    def _recentre(
        self, coarse: CoarseResult, inputs: FineInputs, heatmaps: np.ndarray
    ) -> CoarseResult:
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

    # ------------------------------------------------------------------ all stages
    def locate(self, radiograph: Radiograph) -> list[LegLandmarks]:
        return self.locate_batch([radiograph])[0]

    def locate_batch(self, radiographs: list[Radiograph]) -> list[list[LegLandmarks]]:
        """Locate every film; both networks run batched across the films."""
        if not radiographs:
            return []
        batch = np.stack([self.coarse_input(rg) for rg in radiographs])
        heat = self.predict_coarse(batch)
        coarse = [self.decode_coarse(heat[i], rg) for i, rg in enumerate(radiographs)]
        for it in range(self.spec.fine_iterations):
            inputs = [self.fine_inputs(rg, c) for rg, c in zip(radiographs, coarse, strict=True)]
            counts = [len(fi.items) for fi in inputs]
            allcrops = np.concatenate([fi.crops for fi in inputs], axis=0)
            fheat = self.predict_fine(allcrops)
            per_film = (
                np.split(fheat, np.cumsum(counts)[:-1]) if len(fheat) else [fheat] * len(inputs)
            )
            if it + 1 < self.spec.fine_iterations:
                coarse = [
                    self._recentre(c, fi, fh)
                    for c, fi, fh in zip(coarse, inputs, per_film, strict=True)
                ]
                continue
            return [
                self.decode_fine(c, fi, fh)
                for c, fi, fh in zip(coarse, inputs, per_film, strict=True)
            ]
        raise AssertionError("unreachable")  # pragma: no cover


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


def _assign_sides(legs: list[CoarseLeg], radiograph: Radiograph) -> None:
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
        leg.side = "right" if leg.medial_sign * (-1 if mirrored else 1) > 0 else "left"
