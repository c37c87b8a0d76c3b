"""Landmark error radii, propagated measurement intervals, their calibration, review."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from leg_builder import build_leg

from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.landmark_use import OUTSIDE_FILM, UNUSABLE, review_reasons, usable_landmarks
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.measure import measure_leg
from legalign.pipeline.uncertainty import (
    landmark_sd_px,
    leg_uncertainty,
    load_uncertainty_config,
    measurement_sds,
)
from legalign.training.calibration import conformal_scale, landmark_scales
from legalign.training.readers_eval import readers_part


@pytest.fixture(scope="module")
def cfg():
    return load_uncertainty_config()


def _with_spread(leg: LegLandmarks, spread: float = 2.0, conf: float = 0.8) -> LegLandmarks:
    return LegLandmarks(
        leg.side,
        dict(leg.points),
        dict.fromkeys(leg.points, conf),
        leg.mirrored,
        dict.fromkeys(leg.points, spread),
    )


def test_shipped_config_is_fitted_and_validated(cfg, tmp_path):
    assert cfg.level == 0.9 and cfg.z == pytest.approx(1.6449, abs=1e-4)
    assert cfg.radius_factor == pytest.approx(math.sqrt(-2 * math.log(0.1)))
    assert {"femoral_head", "knee_centre", "ankle_centre"} <= set(cfg.landmark_scale)
    assert "calibration" in cfg.fitted_by
    bad = tmp_path / "u.yaml"
    bad.write_text("landmark_scale: {kneecap: 1.0}\n")
    with pytest.raises(ConfigError, match="landmark_scale.kneecap: unknown landmark"):
        load_uncertainty_config(bad)
    bad.write_text("level: 1.5\n")
    with pytest.raises(ConfigError, match="level"):
        load_uncertainty_config(bad)


def test_landmark_sd_grows_with_spread_and_falls_with_confidence(cfg):
    leg = _with_spread(build_leg(hka=-4.0, femur_px=450, tibia_px=380))
    sd = landmark_sd_px(leg, cfg)
    wide = landmark_sd_px(_with_spread(leg, spread=4.0), cfg)
    dim = landmark_sd_px(_with_spread(leg, conf=0.4), cfg)
    k = cfg.landmark_scale["knee_centre"]
    assert sd["knee_centre"] == pytest.approx(cfg.scale * k * 2.0 / 0.8**cfg.confidence_exponent)
    assert wide["knee_centre"] == pytest.approx(2 * sd["knee_centre"])
    assert dim["knee_centre"] > sd["knee_centre"]
    # landmarks without a heatmap spread (e.g. read from a file) get no radius
    assert landmark_sd_px(LegLandmarks(leg.side, leg.points), cfg) == {}


def test_hka_sd_matches_the_analytic_propagation_for_a_straight_leg():
    L1, L2, s = 400.0, 350.0, 1.5
    leg = LegLandmarks(
        "right",
        {
            "femoral_head": (100.0, 50.0),
            "knee_centre": (100.0, 50 + L1),
            "ankle_centre": (100.0, 50 + L1 + L2),
        },
    )
    sd = measurement_sds(leg, None, dict.fromkeys(leg.points, s))
    # HKA (rad) ~ (xA - xK)/L2 - (xK - xH)/L1 for a straight leg; y does not enter
    expect = s * math.sqrt(1 / L1**2 + (1 / L1 + 1 / L2) ** 2 + 1 / L2**2)
    assert sd["hka_deg"] == pytest.approx(math.degrees(expect), rel=1e-3)
    assert "mpta_deg" not in sd  # needs the plateau points, which have no SD here


@pytest.mark.slow
def test_propagation_agrees_with_monte_carlo():
    leg = build_leg(hka=-6.0, mpta=84.0, jlca=1.5, femur_px=450, tibia_px=380)
    sds = dict.fromkeys(leg.points, 2.0)
    sds["femoral_head"] = 3.0
    prop = measurement_sds(leg, 0.8, sds)
    rng = np.random.default_rng(0)
    samples: dict[str, list[float]] = {k: [] for k in ("hka_deg", "mpta_deg", "mad_mm")}
    names = list(leg.points)
    for _ in range(3000):
        pts = {
            n: (
                leg.points[n][0] + sds[n] * rng.standard_normal(),
                leg.points[n][1] + sds[n] * rng.standard_normal(),
            )
            for n in names
        }
        m = measure_leg(LegLandmarks(leg.side, pts, mirrored=leg.mirrored), 0.8)
        for k in samples:
            samples[k].append(getattr(m, k))
    for k, v in samples.items():
        assert np.std(v) == pytest.approx(prop[k], rel=0.06), k


def test_leg_intervals_and_radii(cfg):
    leg = _with_spread(build_leg(hka=3.0, femur_px=450, tibia_px=380))
    m = measure_leg(leg, 0.7)
    u = leg_uncertainty(leg, {"hka_deg": m.hka_deg, "mad_mm": m.mad_mm}, 0.7, cfg)
    lo, hi = u.intervals["hka_deg"]
    assert lo < m.hka_deg < hi
    assert hi - lo == pytest.approx(2 * cfg.z * u.measurement_sd["hka_deg"])
    assert set(u.intervals) == {"hka_deg", "mad_mm"}  # only the values given
    r = u.landmark_radius_px["femoral_head"]
    assert r == pytest.approx(u.landmark_sd_px["femoral_head"] * cfg.radius_factor)


def test_outside_film_and_unusable_landmarks_are_not_used():
    leg = _with_spread(build_leg(hka=0.0, femur_px=450, tibia_px=380, origin=(300.0, 30.0)))
    pts = dict(leg.points)
    pts["femoral_head"] = (pts["femoral_head"][0], -4.0)  # above the film
    conf = dict(leg.confidence)
    conf["tibial_plateau_lateral"] = 0.03
    conf["knee_centre"] = 0.3  # dim but usable
    leg = LegLandmarks(leg.side, pts, conf, leg.mirrored, leg.spread)
    use = usable_landmarks(leg, 600, 1200, 0.1)
    assert use.flags == {"femoral_head": OUTSIDE_FILM, "tibial_plateau_lateral": UNUSABLE}
    assert use.reasons["femoral_head"] == "femoral_head outside the film"
    assert "knee_centre" in use.leg.points and "femoral_head" not in use.leg.points
    assert "tibial_plateau_lateral" not in use.leg.spread


def test_review_when_the_hka_interval_is_wide():
    class Cfg:
        class review:  # noqa: N801 - mimics the config's attribute
            max_hka_interval_deg = 3.0

    assert review_reasons({"hka_deg": (1.0, 3.5)}, 2.2, Cfg) == []
    why = review_reasons({"hka_deg": (0.0, 3.5)}, 2.2, Cfg)
    assert why == ["HKA interval 3.5 deg wide (> 3)"]
    assert (
        review_reasons({}, 2.2, Cfg) == [] and review_reasons({"hka_deg": (0, 9)}, None, Cfg) == []
    )


def test_landmark_scales_recover_a_known_error_model():
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(400):
        spread, conf = rng.uniform(1.5, 4.0), rng.uniform(0.3, 1.0)
        sd = 0.7 * spread / conf
        t = LegLandmarks("right", {"knee_centre": (100.0, 200.0)})
        p = LegLandmarks(
            "right",
            {"knee_centre": (100 + sd * rng.standard_normal(), 200 + sd * rng.standard_normal())},
            {"knee_centre": conf},
            spread={"knee_centre": spread},
        )
        pairs.append((t, p))
    s = landmark_scales(pairs, gamma=1.0, min_confidence=0.05)
    assert s["knee_centre"]["scale"] == pytest.approx(0.7, rel=0.08)
    assert s["knee_centre"]["n"] == 400


def test_conformal_scale_gives_the_stated_coverage_on_new_data():
    rng = np.random.default_rng(2)
    sd = rng.uniform(0.2, 1.0, 2000)
    d = np.abs(1.3 * sd * rng.standard_normal(2000))
    scale = conformal_scale(d[:1000], sd[:1000], 0.9)
    assert scale == pytest.approx(1.3, rel=0.1)
    cover = np.mean(d[1000:] <= 1.6449 * scale * sd[1000:])
    assert 0.87 <= cover <= 0.93


def test_readers_parts_split_every_film_once():
    cal = readers_part(114, "calibration", 0.5, 0)
    held = readers_part(114, "heldout", 0.5, 0)
    assert len(cal) == 57 and sorted(cal + held) == list(range(114))
    assert cal == readers_part(114, "calibration", 0.5, 0)
    with pytest.raises(ValueError):
        readers_part(10, "train", 0.5, 0)
    # with an angle part: the not-held-out films shared between the angle stage and the
    # conformal calibration, the held-out films unchanged
    angle = readers_part(114, "angle", 0.5, 0, 0.5)
    conformal = readers_part(114, "calibration", 0.5, 0, 0.5)
    assert readers_part(114, "heldout", 0.5, 0, 0.5) == held
    assert len(angle) == 28 and sorted(angle + conformal) == cal
    assert readers_part(114, "angle", 0.5, 0) == []


def test_config_override_changes_the_scale(cfg, tmp_path):
    p = tmp_path / "u.yaml"
    p.write_text("scale: 2.0\n")
    other = load_uncertainty_config(p)
    assert other.scale == 2.0 and other.landmark_scale == cfg.landmark_scale
    assert replace(other, scale=cfg.scale) == cfg


def test_knee_conventions_table_uses_the_measured_hka():
    from legalign.training.knee_conventions import DEFINITIONS, compare

    legs = []
    for hka in (-6.0, -2.0, 0.5, 3.0, 7.0):
        leg = build_leg(hka=hka, femur_px=450, tibia_px=380)
        legs.append((leg, measure_leg(leg, None).hka_deg + 0.2))
    rows = compare(legs)
    assert set(rows) == set(DEFINITIONS)
    # knee_centre is the definition pipeline.measure uses: the reference is it + 0.2
    assert rows["knee_centre"]["bias"] == pytest.approx(-0.2, abs=1e-9)
    assert rows["knee_centre"]["sd"] == pytest.approx(0.0, abs=1e-9)
    assert rows["plateau midpoint"]["n"] == 5
