"""legalign.pipeline.api: typed results, low-confidence dropping with null reasons, analyse()."""

from __future__ import annotations

import numpy as np
import pytest
from leg_builder import legs_with_confidence

from legalign.pipeline.api import FilmInfo, ImageResult, LegResult, analyse, load_config
from legalign.pipeline.assemble import result_from_legs
from legalign.pipeline.errors import InputError


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


def test_low_confidence_landmark_is_dropped_with_reasons(film):
    r = result_from_legs(
        _info(film),
        legs_with_confidence(film, low=("left", "tibial_plateau_lateral", 0.31)),
        load_config(),
    )
    left = r.leg("left")
    assert left.status == "partial" and r.status == "partial"
    assert left.landmarks["tibial_plateau_lateral"].used is False
    assert left.low_confidence == {"tibial_plateau_lateral": pytest.approx(0.31)}
    for key in ("mpta_deg", "jlca_deg", "wbl_ratio_pct"):
        assert getattr(left.measurements, key) is None
        assert left.null_reasons[key] == "tibial_plateau_lateral low confidence (0.31)"
    # what does not depend on it is still measured
    assert left.measurements.hka_deg is not None and left.measurements.mldfa_deg is not None
    # the threshold is the configured one: at 0.3 the same landmark is used
    cfg = load_config()
    import dataclasses

    lower = dataclasses.replace(
        cfg, landmarks=dataclasses.replace(cfg.landmarks, low_confidence=0.3)
    )
    r2 = result_from_legs(
        _info(film), legs_with_confidence(film, low=("left", "tibial_plateau_lateral", 0.31)), lower
    )
    assert r2.leg("left").status == "ok"


def test_low_confidence_core_landmark_fails_the_leg(film):
    r = result_from_legs(
        _info(film), legs_with_confidence(film, low=("right", "knee_centre", 0.1)), load_config()
    )
    right = r.leg("right")
    assert right.status == "failed"
    assert right.measurements.hka_deg is None
    assert right.null_reasons["hka_deg"] == "knee_centre low confidence (0.10)"
    assert "plan" in right.null_reasons
    assert r.status == "partial"  # the other leg is fine
    assert r.lld_mm is not None  # leg length (head to ankle) does not need the knee


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
