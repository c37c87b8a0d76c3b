"""legalign.pipeline.api: typed results, low-confidence dropping with null reasons, analyse()."""

from __future__ import annotations

import numpy as np
import pytest
from leg_builder import legs_with_confidence

from legalign.pipeline.api import FilmInfo, ImageResult, LegResult, analyse, load_config
from legalign.pipeline.assemble import result_from_legs
from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LegLandmarks


@pytest.fixture(scope="module")
def film():
    from legalign.training.synth.film import generate_film

    return generate_film(3, size="small", legs="both", distractors=False)


def _info(film, spacing=1.0, mirrored=None, laterality=None):
    h, w = film.image.shape
    return FilmInfo(
        "f.png",
        w,
        h,
        spacing,
        "user" if spacing else None,
        mirrored,
        laterality,
        None,
        12,
        None,
        None,
        None,
    )


def test_complete_legs_are_ok_and_typed(film):
    r = result_from_legs(_info(film), legs_with_confidence(film), load_config())
    assert isinstance(r, ImageResult) and r.status == "ok"
    assert all(isinstance(leg, LegResult) for leg in r.legs)
    assert {leg.side for leg in r.legs} == {"right", "left"}
    right = r.leg("right")
    assert right.status == "ok" and right.null_reasons == {}
    truth = film.params["alignment"]["right"]["hka_deg"]
    assert right.measurements.hka_deg == pytest.approx(truth, abs=0.05)
    assert r.lld_mm == pytest.approx(
        r.leg("left").measurements.leg_length_mm - right.measurements.leg_length_mm
    )
    d = r.to_dict()
    assert d["legs"][0]["landmarks"]["femoral_head"]["used"] is True
    assert "Planning support only" in d["disclaimer"]


def test_low_confidence_landmark_is_flagged_but_measured(film):
    r = result_from_legs(
        _info(film),
        legs_with_confidence(film, low=("left", "tibial_plateau_lateral", 0.31)),
        load_config(),
    )
    left = r.leg("left")
    assert left.status == "ok" and r.status == "ok"
    lm = left.landmarks["tibial_plateau_lateral"]
    assert lm.used is True and lm.flag == "low_confidence"
    assert left.low_confidence == {"tibial_plateau_lateral": pytest.approx(0.31)}
    for key in ("mpta_deg", "jlca_deg", "wbl_ratio_pct"):
        assert getattr(left.measurements, key) is not None
    assert any("low landmark confidence" in w for w in left.plan.warnings)
    assert left.to_dict()["landmarks"]["tibial_plateau_lateral"]["flag"] == "low_confidence"


def test_a_dim_landmark_widens_the_interval_and_flags_the_leg_for_review(film):
    cfg = load_config()
    sharp = result_from_legs(_info(film), legs_with_confidence(film, spread=2.0), cfg)
    dim = result_from_legs(
        _info(film), legs_with_confidence(film, low=("right", "knee_centre", 0.15), spread=2.0), cfg
    )
    a, b = sharp.leg("right"), dim.leg("right")
    lo, hi = a.intervals["hka_deg"]
    assert lo < a.measurements.hka_deg < hi and a.interval_level == 0.9
    assert (b.intervals["hka_deg"][1] - b.intervals["hka_deg"][0]) > 2 * (hi - lo)
    assert b.measurements.hka_deg == pytest.approx(a.measurements.hka_deg)  # still measured
    assert a.review is False and b.review is True
    assert b.review_reasons[0].startswith("HKA interval")
    assert b.landmarks["knee_centre"].error_radius_px > a.landmarks["knee_centre"].error_radius_px
    assert a.landmarks["knee_centre"].error_radius_mm == pytest.approx(
        a.landmarks["knee_centre"].error_radius_px * 1.0
    )
    d = b.to_dict()
    assert d["review"] is True and d["intervals"]["hka_deg"] == list(b.intervals["hka_deg"])
    # without heatmap spreads (landmarks from a file) there are no intervals and no review
    plain = result_from_legs(_info(film), legs_with_confidence(film), cfg).leg("right")
    assert plain.intervals == {} and plain.review is False


def test_unusable_core_landmark_fails_the_leg(film):
    r = result_from_legs(
        _info(film), legs_with_confidence(film, low=("right", "knee_centre", 0.05)), load_config()
    )
    right = r.leg("right")
    assert right.status == "failed" and right.landmarks["knee_centre"].flag == "unusable"
    assert right.measurements.hka_deg is None
    assert (
        right.null_reasons["hka_deg"] == "knee_centre unusable (no heatmap peak, confidence 0.05)"
    )
    assert "plan" in right.null_reasons
    assert r.status == "partial"  # the other leg is fine
    assert r.lld_mm is not None  # leg length (head to ankle) does not need the knee


def test_landmark_outside_the_film_is_null_with_the_reason(film):
    legs = legs_with_confidence(film)
    leg = next(g for g in legs if g.side == "left")
    pts = dict(leg.points)
    pts["ankle_centre"] = (pts["ankle_centre"][0], film.image.shape[0] + 3.0)
    legs = [
        g if g is not leg else LegLandmarks(g.side, pts, g.confidence, g.mirrored) for g in legs
    ]
    r = result_from_legs(_info(film), legs, load_config())
    left = r.leg("left")
    assert left.landmarks["ankle_centre"].used is False
    assert left.landmarks["ankle_centre"].flag == "outside_film"
    assert left.measurements.hka_deg is None
    assert left.null_reasons["hka_deg"] == "ankle_centre outside the film"
    assert left.measurements.mldfa_deg is not None  # the femur is still measured


def test_no_spacing_gives_angles_only(film):
    r = result_from_legs(_info(film, spacing=None), legs_with_confidence(film), load_config())
    right = r.leg("right")
    assert right.measurements.mad_mm is None and right.measurements.hka_deg is not None
    assert right.null_reasons["mad_mm"].startswith("no pixel spacing")
    assert right.status == "ok"  # nothing missing that the film could give
    assert r.lld_mm is None and r.null_reasons["lld_mm"].startswith("no pixel spacing")


def test_no_legs_is_a_failed_result(film):
    r = result_from_legs(_info(film), [], load_config())
    assert r.status == "failed" and r.error_reason == "no_legs_found"


def test_side_source(film):
    legs = legs_with_confidence(film)
    assert (
        result_from_legs(_info(film, mirrored=False), legs, load_config()).legs[0].side_source
        == "dicom_orientation"
    )
    assert result_from_legs(_info(film), legs, load_config()).legs[0].side_source == "anatomy"
    one = [legs[0]]
    assert (
        result_from_legs(_info(film, laterality="R"), one, load_config()).legs[0].side_source
        == "dicom_laterality"
    )


def test_analyse_array_and_path(tmp_path, film):
    """analyse() runs the real locator (a tiny random checkpoint here: no accuracy is
    asserted, only the typed result and its consistency)."""
    import cv2
    from tiny_checkpoint import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    r = analyse(film.image, model=ckpt, spacing_mm=1.0)
    assert isinstance(r, ImageResult)
    assert r.width == film.image.shape[1] and r.spacing_source == "user"
    assert r.status in ("ok", "partial", "failed")
    if r.status == "failed":
        assert r.error_reason == "no_legs_found"
    png = tmp_path / "f.png"
    cv2.imwrite(str(png), film.image)
    r2 = analyse(png, model=ckpt)
    assert r2.file == str(png) and r2.spacing_mm is None
    with pytest.raises(InputError):
        analyse(np.zeros((10, 10)), model=ckpt)
