"""Coarse framing of the locator: exposed region, the two halves of a wide film, legs
cut off by the film's edge.  Heatmaps are the training targets (no trained model)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from legalign.models import heatmap_codec as hc
from legalign.models.checkpoint import build_nets
from legalign.models.crops import apply_affine, warp
from legalign.pipeline.assemble import build_leg
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.locate import (
    CoarseLeg,
    CoarseResult,
    CoarseView,
    FineInputs,
    Locator,
    LocatorRules,
    box_matrix,
    complete_leg,
    crop_angle,
    exposed_box,
)
from legalign.pipeline.radiograph import Radiograph
from legalign.training.train import load_train_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train_smoke.yaml"


@pytest.fixture(scope="module")
def locator():
    spec = dataclasses.replace(load_train_config(SMOKE).model, coarse_height=256, coarse_width=128)
    torch.manual_seed(0)
    coarse, fine = build_nets(spec)
    return Locator(spec, coarse, fine, device="cpu")


def leg_points(x0: float, y0: float, femur: float, medial: int) -> dict[str, tuple[float, float]]:
    m = medial
    k = (x0 + m * 0.05 * femur, y0 + femur)
    a = (x0 + m * 0.08 * femur, y0 + 1.85 * femur)
    return {
        "femoral_head": (x0, y0),
        "greater_trochanter": (x0 - m * 0.14 * femur, y0 + 0.01 * femur),
        "femoral_shaft_proximal": (x0, y0 + 0.3 * femur),
        "femoral_shaft_distal": (x0 + m * 0.03 * femur, y0 + 0.7 * femur),
        "knee_centre": k,
        "ankle_centre": a,
        "tibial_shaft_proximal": (k[0], k[1] + 0.2 * femur),
        "tibial_shaft_distal": (k[0] + m * 0.02 * femur, k[1] + 0.65 * femur),
    }


def targets(locator, legs: list[dict], A: np.ndarray) -> np.ndarray:
    """Coarse heatmaps a perfect network gives for ``legs`` seen through ``A``."""
    spec = locator.spec
    stride = spec.coarse_net.out_stride
    shape = (spec.coarse_height // stride, spec.coarse_width // stride)
    out = np.zeros((len(spec.coarse_landmarks), *shape), np.float32)
    for pts in legs:
        xy = np.array([pts[n] for n in spec.coarse_landmarks])
        hm = hc.to_heatmap(apply_affine(A, xy), stride)
        out = np.maximum(out, hc.encode(hm, np.ones(len(xy), bool), shape, spec.coarse_net.sigma))
    return out


def test_exposed_box_and_box_matrix():
    img = np.zeros((200, 60), np.float32)
    img[40:160, 10:30] = 0.5
    assert exposed_box(img) == (10, 40, 30, 160)
    assert exposed_box(np.zeros((10, 10))) == (0, 0, 10, 10)
    A = box_matrix((10, 40, 30, 160), 256, 128)
    # the box's pixel edges land on the canvas's top and bottom pixel edges
    top, bottom = apply_affine(A, np.array([[19.5, 39.5], [19.5, 159.5]]))
    assert top[1] == pytest.approx(-0.5) and bottom[1] == pytest.approx(255.5)
    assert top[0] == pytest.approx((128 - 1) / 2.0)


def test_a_leg_on_black_borders_is_framed_to_its_exposed_region(locator):
    h, w = 1024, 128
    film = np.zeros((h, w), np.float32)
    film[256:768, 32:96] = 0.4  # a leg filling half of the frame, letterboxed on black
    view = locator.coarse_view(h, w, lambda A: _warp(film, A, locator))
    assert len(view.frames) == 1 and not view.halves
    ys = apply_affine(view.frames[0], np.array([[64.0, 255.5], [64.0, 767.5]]))[:, 1]
    assert ys[0] == pytest.approx(-0.5 + 256 * 0.03, abs=6)  # the margin only
    assert ys[1] - ys[0] > 0.9 * 256
    # a film exposed to its edges keeps the whole-film letterbox
    full = np.full((h, w), 0.4, np.float32)
    view = locator.coarse_view(h, w, lambda A: _warp(full, A, locator))
    np.testing.assert_allclose(view.frames[0], locator.coarse_matrix(h, w))


def _warp(img, A, locator):
    return warp(img, A, (locator.spec.coarse_height, locator.spec.coarse_width))


def _bilateral(h=1000, w=300):
    film = np.zeros((h, w), np.float32)
    film[20:980, 5:140] = 0.4
    film[20:980, 160:295] = 0.4
    right = leg_points(70.0, 150.0, 400.0, +1)
    left = leg_points(230.0, 170.0, 380.0, -1)
    return film, right, left


def test_a_wide_film_is_also_seen_half_by_half(locator):
    film, _, _ = _bilateral()
    view = locator.coarse_view(*film.shape, lambda A: _warp(film, A, locator))
    assert view.images.shape == (3, 1, 256, 128)
    assert 140 <= view.split <= 160
    # each half alone: the other leg's columns are black on its canvas
    for i in range(len(view.halves)):
        A = view.frames[1 + i]
        other_x = 230.0 if i == 0 else 70.0
        cx = int(round(apply_affine(A, np.array([other_x, 500.0]))[0]))
        if 0 <= cx < 128:
            assert view.images[1 + i, 0, :, cx].max() == 0.0


def test_a_leg_lost_on_the_whole_film_is_found_in_its_half(locator):
    film, right, left = _bilateral()
    rg = Radiograph(path="x", pixels=film)
    view = locator.coarse_view(*film.shape, lambda A: _warp(film, A, locator))
    heat = np.stack(
        [
            targets(locator, [right], view.frames[0]),  # the whole film shows one leg only
            targets(locator, [right], view.frames[1]),
            targets(locator, [left], view.frames[2]),
        ]
    )
    res = locator.decode_coarse(heat, rg, view)
    assert sorted(leg.side for leg in res.legs) == ["left", "right"]
    by_side = {leg.side: leg for leg in res.legs}
    assert np.hypot(*np.subtract(by_side["left"].points["knee_centre"], left["knee_centre"])) < 4
    assert (res.height, res.width) == film.shape


def test_a_half_leg_must_score_the_halves_own_minimum(locator):
    """A half of a wide film is seen enlarged, where noise peaks higher than on the whole
    film: a leg seen in a half alone must reach ``min_half_leg_score``."""
    film, right, left = _bilateral()
    rg = Radiograph(path="x", pixels=film)
    strict = Locator(
        locator.spec,
        locator.coarse_net,
        locator.fine_net,
        rules=LocatorRules(min_leg_score=1.0, min_half_leg_score=2.0),
    )
    view = strict.coarse_view(*film.shape, lambda A: _warp(film, A, strict))

    def sides(peak: float) -> list[str]:
        half = targets(strict, [left], view.frames[2])
        for name in ("femoral_head", "knee_centre", "ankle_centre"):
            ch = strict.coarse_index[name]
            half[ch] *= peak / float(half[ch].max())
        heat = np.stack(
            [
                targets(strict, [right], view.frames[0]),
                targets(strict, [right], view.frames[1]),
                half,
            ]
        )
        return sorted(leg.side for leg in strict.decode_coarse(heat, rg, view).legs)

    assert sides(0.6) == ["right"]  # 1.8: a leg on the whole film, not in a half
    assert sides(0.7) == ["left", "right"]  # 2.1


def test_the_halves_legs_win_over_a_whole_film_leg_with_a_borrowed_joint(locator):
    """Two legs side by side: on the whole film the weaker leg can take its head from
    between the legs (a complete-looking leg); each half alone shows the true leg."""
    film, right, left = _bilateral()
    rg = Radiograph(path="x", pixels=film)
    view = locator.coarse_view(*film.shape, lambda A: _warp(film, A, locator))
    borrowed = dict(left, femoral_head=(175.0, 190.0))  # 55 px towards the right leg
    assert complete_leg(
        CoarseLeg(points=borrowed, confidence={}, medial_sign=-1, femur_px=380.0)
    )  # the whole film alone cannot tell
    heat = np.stack(
        [
            targets(locator, [right, borrowed], view.frames[0]),
            targets(locator, [right], view.frames[1]),
            targets(locator, [left], view.frames[2]),
        ]
    )
    res = locator.decode_coarse(heat, rg, view)
    by_side = {leg.side: leg for leg in res.legs}
    assert sorted(by_side) == ["left", "right"]
    head = by_side["left"].points["femoral_head"]
    assert np.hypot(*np.subtract(head, left["femoral_head"])) < 4, head


def test_two_good_legs_on_the_whole_film_stand(locator):
    film, right, left = _bilateral()
    rg = Radiograph(path="x", pixels=film)
    view = locator.coarse_view(*film.shape, lambda A: _warp(film, A, locator))
    whole = targets(locator, [right, left], view.frames[0])
    zero = np.zeros_like(whole)
    res = locator.decode_coarse(np.stack([whole, zero, zero]), rg, view)
    assert sorted(leg.side for leg in res.legs) == ["left", "right"]


def test_a_single_leg_across_the_split_is_kept(locator):
    film, right, _ = _bilateral()
    rg = Radiograph(path="x", pixels=film)
    # a rotated single leg: head on the left of the split, ankle on the right
    tilted = dict(right)
    tilted["femoral_head"] = (120.0, 150.0)
    tilted["ankle_centre"] = (200.0, 890.0)
    tilted["knee_centre"] = (160.0, 550.0)
    view = CoarseView(
        np.zeros((3, 1, 256, 128), np.float32),
        [
            locator.coarse_matrix(*film.shape),
            box_matrix((0, 0, 180, 1000), 256, 128),
            box_matrix((130, 0, 300, 1000), 256, 128),
        ],
        halves=[(0.0, 180.0), (130.0, 300.0)],
        split=150.0,
    )
    heat = np.stack(
        [targets(locator, [tilted], A) for A in view.frames[:1]]
        + [np.zeros_like(targets(locator, [tilted], view.frames[0]))] * 2
    )
    res = locator.decode_coarse(heat, rg, view)
    assert len(res.legs) == 1
    assert complete_leg(res.legs[0])


def test_complete_leg_rejects_joints_of_two_legs():
    good = CoarseLeg(leg_points(70, 150, 400, +1), {}, 1, 400.0)
    assert complete_leg(good)
    mixed = dict(good.points)
    mixed["femoral_head"] = (300.0, 150.0)  # the other leg's head, far to the side
    assert not complete_leg(CoarseLeg(mixed, {}, 1, 400.0))
    short_femur = dict(good.points)
    short_femur["knee_centre"] = (70.0, 250.0)  # a "knee" at the hip
    assert not complete_leg(CoarseLeg(short_femur, {}, 1, 400.0))


def test_a_joint_cut_off_by_the_film_is_outside_with_its_reason(locator):
    pts = leg_points(60.0, 6.0, 300.0, +1)  # the head centre at the top edge
    coarse = CoarseResult([CoarseLeg(pts, {n: 0.9 for n in pts}, 1, 300.0)], height=700, width=128)
    empty = FineInputs(np.zeros((0, 1, 8, 8), np.float32), [], [])
    (leg,) = locator.decode_fine(coarse, empty, np.zeros((0, 8, 4, 4), np.float32))
    assert leg.outside == ("femoral_head",)
    # the located place is kept (reported) but not measured from
    assert "femoral_head" in leg.points and "knee_centre" in leg.points
    res = build_leg(leg, None, load_geometry_config(None), film_size=(128, 700))
    assert res.measurements.hka_deg is None
    assert res.null_reasons["hka_deg"] == "femoral_head outside the film"
    head = res.landmarks["femoral_head"]
    assert not head.used and head.flag == "outside_film"
    assert res.landmarks["knee_centre"].used
    # a head well inside the film is not
    inside = CoarseResult(
        [CoarseLeg(leg_points(60.0, 80.0, 300.0, +1), {}, 1, 300.0)], height=700, width=128
    )
    (leg,) = locator.decode_fine(inside, empty, np.zeros((0, 8, 4, 4), np.float32))
    assert leg.outside == () and "femoral_head" in leg.points
    assert LegLandmarks("right", {}, outside=("ankle_centre",)).as_other_leg(10).outside == (
        "ankle_centre",
    )


def test_a_joint_the_coarse_stage_sees_at_the_edge_is_outside_whatever_the_fine_answer(
    locator, monkeypatch
):
    """A fine crop that reaches past the film's bottom edge can put a cut-off ankle on
    the last structure inside the film; the coarse answer, at the edge, still says the
    film cuts it off (the framing set's no-ankle films)."""
    pts = leg_points(60.0, 100.0, 300.0, +1)
    height = int(pts["ankle_centre"][1]) + 3  # the coarse ankle 3 px from the bottom edge
    coarse = CoarseResult([CoarseLeg(pts, {n: 0.9 for n in pts}, 1, 300.0)], height, 128)
    inside = (pts["ankle_centre"][0], pts["ankle_centre"][1] - 30.0)  # 0.1 femur inside
    monkeypatch.setattr(
        locator, "_fine_points", lambda inputs, heatmaps: {0: {"ankle_centre": (inside, 0.9, 1.0)}}
    )
    empty = FineInputs(np.zeros((0, 1, 8, 8), np.float32), [], [])
    (leg,) = locator.decode_fine(coarse, empty, np.zeros((0, 8, 4, 4), np.float32))
    assert leg.points["ankle_centre"] == inside  # the fine answer is reported
    assert leg.outside == ("ankle_centre",)
    # with the coarse ankle well inside too, the joint is on the film
    high = dict(pts, ankle_centre=(pts["ankle_centre"][0], pts["ankle_centre"][1] - 40.0))
    coarse = CoarseResult([CoarseLeg(high, {n: 0.9 for n in high}, 1, 300.0)], height, 128)
    (leg,) = locator.decode_fine(coarse, empty, np.zeros((0, 8, 4, 4), np.float32))
    assert leg.outside == ()


def _decoded_outside(locator, pts, height):
    coarse = CoarseResult([CoarseLeg(pts, {n: 0.9 for n in pts}, 1, 300.0)], height, 128)
    empty = FineInputs(np.zeros((0, 1, 8, 8), np.float32), [], [])
    (leg,) = locator.decode_fine(coarse, empty, np.zeros((0, 8, 4, 4), np.float32))
    return leg.outside


def test_a_cut_off_head_placed_on_the_neck_is_outside_by_the_legs_proportions(locator):
    """A film cut through the hip: the network puts the head on what is left of the
    femur, 0.15 femur lengths inside the edge, too far in for the edge rule.  The femur
    it makes is too short for the tibia (0.9 x, against 1.18 x in real legs) and a leg
    of typical proportions would have its head beyond the top edge: it is cut off."""
    pts = leg_points(60.0, -25.0, 300.0, +1)  # femur 300, tibia 255: 1.18 x; head cut off
    knee = pts["knee_centre"]
    neck = dict(pts, femoral_head=(60.0, knee[1] - 0.9 * 255.0))  # 0.9 x the tibia
    assert neck["femoral_head"][1] > 0.09 * 300.0  # inside the edge rule's reach
    assert _decoded_outside(locator, neck, height=700) == ("femoral_head",)
    # the same short femur well inside the film: its head would be on the film too
    low = {n: (x, y + 120.0) for n, (x, y) in neck.items()}
    assert _decoded_outside(locator, low, height=900) == ()
    # the mirror case: an ankle on the last bone above a bottom edge that cuts it off
    whole = leg_points(60.0, 60.0, 300.0, +1)
    knee = whole["knee_centre"]
    tibia_cut = dict(whole, ankle_centre=(whole["ankle_centre"][0], knee[1] + 300.0 / 1.5))
    bottom = int(knee[1] + 300.0 / 1.18) - 5  # a typical tibia would end below the film
    assert tibia_cut["ankle_centre"][1] < bottom - 0.03 * 300.0
    assert _decoded_outside(locator, tibia_cut, height=bottom) == ("ankle_centre",)
    # a leg of normal proportions near neither edge is whole
    assert _decoded_outside(locator, whole, height=700) == ()


@pytest.mark.parametrize("flip", [False, True])
def test_crops_follow_a_tilted_leg(locator, flip):
    """An upright leg's crops are not turned; a leg tilted by 8 deg is seen through crops
    that leave it tilted by only the upright tolerance (2 deg), mirrored or not."""
    upright = leg_points(100.0, 100.0, 400.0, +1)
    upright["ankle_centre"] = (100.0 + 20.0, 840.0)  # tilted 1.5 deg: upright enough
    assert crop_angle(upright, flip) == 0.0
    tilt = math.radians(8.0)
    tilted = {
        "femoral_head": (100.0, 100.0),
        "knee_centre": (100.0 + 400.0 * math.tan(tilt), 500.0),
        "ankle_centre": (100.0 + 800.0 * math.tan(tilt), 900.0),
    }
    leg = CoarseLeg(tilted, {}, -1 if flip else 1, 400.0)
    mats = locator.crop_matrices(leg)
    assert mats
    for _, A in mats:
        h, a = apply_affine(A, np.array([tilted["femoral_head"], tilted["ankle_centre"]]))
        seen = math.degrees(math.atan2(a[0] - h[0], a[1] - h[1]))
        assert abs(seen) == pytest.approx(2.0, abs=1e-6)
    # an upright leg's crops are the axis-aligned ones of training
    for _, A in locator.crop_matrices(CoarseLeg(upright, {}, 1, 400.0)):
        assert A[0, 1] == 0.0 and A[1, 0] == 0.0
