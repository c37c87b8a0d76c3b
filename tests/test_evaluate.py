"""Evaluation metrics on hand-made predictions (no network)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from legalign.pipeline.errors import InputError
from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks
from legalign.training.datasets import AnnotatedFilm
from legalign.training.evaluate import (
    Failure,
    LegEvaluation,
    evaluate_films,
    evaluate_leg,
    format_report,
    landmark_summary,
    match_legs,
    measurement_summary,
    radial_errors,
    summarise,
    write_outputs,
)


def _right_leg(dx: float = 0.0, knee_shift: float = 0.0) -> LegLandmarks:
    """A straight right leg (medial +x): H (100, 50), K (100, 450), A (100, 850)."""
    x = 100.0 + dx
    pts = {
        "femoral_head": (x, 50.0),
        "greater_trochanter": (x - 40.0, 45.0),
        "femoral_shaft_proximal": (x - 5.0, 170.0),
        "femoral_shaft_distal": (x - 2.0, 330.0),
        "femoral_condyle_medial": (x + 20.0 + knee_shift, 445.0),
        "femoral_condyle_lateral": (x - 20.0 + knee_shift, 445.0),
        "knee_centre": (x + knee_shift, 450.0),
        "tibial_plateau_medial": (x + 25.0 + knee_shift, 455.0),
        "tibial_plateau_lateral": (x - 25.0 + knee_shift, 455.0),
        "tibial_shaft_proximal": (x, 550.0),
        "tibial_shaft_distal": (x, 750.0),
        "ankle_centre": (x, 850.0),
    }
    return LegLandmarks("right", pts)


def _left_of(leg: LegLandmarks, width: float = 400.0) -> LegLandmarks:
    return leg.as_other_leg(width)


def test_radial_errors_only_for_common_landmarks():
    t = _right_leg()
    p = LegLandmarks(
        "right",
        {"femoral_head": (103.0, 54.0), "knee_centre": (100.0, 450.0), "ankle_centre": (99, 850)},
    )
    e = radial_errors(t, p)
    assert e == {"femoral_head": 5.0, "knee_centre": 0.0, "ankle_centre": 1.0}


def test_match_legs_by_side_then_by_position():
    r, lf = _right_leg(), _left_of(_right_leg())
    pairs, extra = match_legs([r, lf], [lf, r])
    assert pairs == [(r, r), (lf, lf)] and extra == []
    # predicted sides swapped: matched by position, the wrong side is kept for the report
    p_r = LegLandmarks("left", r.points)
    p_l = LegLandmarks("right", lf.points)
    pairs, extra = match_legs([r, lf], [p_l, p_r])
    assert pairs == [(r, p_r), (lf, p_l)] and extra == []
    pairs, extra = match_legs([r], [lf, r])
    assert pairs == [(r, r)] and extra == [lf]
    pairs, extra = match_legs([r, lf], [])
    assert pairs == [(r, None), (lf, None)] and extra == []


def test_perfect_prediction_has_zero_errors_and_no_failures():
    t = _right_leg()
    ev = evaluate_leg("a.png", t, _right_leg(), 0.5)
    assert ev.failures == [] and ev.missing == []
    assert all(e == 0.0 for e in ev.errors_px.values()) and len(ev.errors_px) == 12
    for k in ("hka_deg", "mpta_deg", "mldfa_deg", "wbl_ratio_pct"):
        assert ev.gt_measures[k] is not None
        assert ev.pred_measures[k] == pytest.approx(ev.gt_measures[k], abs=1e-9)


def test_knee_moved_medially_reads_as_valgus_hka_error():
    t = _right_leg()
    ev = evaluate_leg("a.png", t, _right_leg(knee_shift=10.0), 1.0)
    assert ev.gt_measures["hka_deg"] == pytest.approx(0.0, abs=1e-9)
    err = ev.pred_measures["hka_deg"] - ev.gt_measures["hka_deg"]
    # knee 10 px medial at half of an 800 px leg: 2 * atan(10 / 400), valgus positive
    assert err == pytest.approx(2 * math.degrees(math.atan(10 / 400)), abs=1e-6)
    summary = measurement_summary([ev])
    assert summary["hka_deg"]["bias"] == pytest.approx(err)
    assert summary["hka_deg"]["n"] == 1


def test_failure_reasons():
    t = _right_leg()
    far = dict(_right_leg().points)
    far["ankle_centre"] = (100.0, 880.0)  # 30 px
    del far["greater_trochanter"]
    ev = evaluate_leg("a.png", t, LegLandmarks("left", far), 0.5, fail_mm=10.0)
    text = "; ".join(ev.failures)
    assert "predicted side 'left'" in text
    assert summarise([ev])["side_accuracy"] == 0.0
    assert "not predicted: greater_trochanter" in text
    assert "ankle_centre off by 15.0 mm" in text
    ev = evaluate_leg("a.png", t, LegLandmarks("right", far), 0.5, fail_mm=20.0)
    assert not any("off by" in f for f in ev.failures)
    ev = evaluate_leg("a.png", t, LegLandmarks("right", far), None, fail_px=25.0)
    assert any("ankle_centre off by 30.0 px" in f for f in ev.failures)
    ev = evaluate_leg("a.png", t, None, 0.5)
    assert ev.failures == ["no prediction"] and ev.missing == list(LANDMARK_NAMES)


def test_landmark_summary_success_rates():
    legs = []
    for i, err in enumerate([2.0, 4.0, 6.0, 8.0]):  # px; at 0.5 mm/px: 1, 2, 3, 4 mm
        ev = LegEvaluation(f"f{i}", "right", 0.5, predicted=True)
        ev.errors_px = {"knee_centre": err}
        legs.append(ev)
    s = landmark_summary(legs)["knee_centre"]
    assert s["n"] == 4 and s["mre_px"] == pytest.approx(5.0) and s["mre_mm"] == pytest.approx(2.5)
    assert s["success_rate"] == {"2mm": 0.5, "2.5mm": 0.5, "3mm": 0.75, "4mm": 1.0}
    # a landmark the prediction lacks is a miss in the success rate
    miss = LegEvaluation("f9", "right", 0.5, predicted=True, missing=["knee_centre"])
    s = landmark_summary([*legs, miss])["knee_centre"]
    assert s["n_missing"] == 1 and s["success_rate"]["4mm"] == pytest.approx(0.8)
    # a film without spacing counts in px only
    nosp = LegEvaluation("g", "right", None, predicted=True, errors_px={"knee_centre": 11.0})
    s = landmark_summary([*legs, nosp])["knee_centre"]
    assert s["n"] == 5 and s["n_mm"] == 4 and s["mre_px"] == pytest.approx(31 / 5)
    assert s["success_rate"]["4mm"] == 1.0
    assert landmark_summary(legs)["all"]["n"] == 4


def _film(source: str, legs, spacing=None) -> AnnotatedFilm:
    return AnnotatedFilm(source, np.zeros((900, 400), np.float32), legs, spacing)


def test_evaluate_films_end_to_end_with_fake_predictor(tmp_path):
    r, lf = _right_leg(), _left_of(_right_leg())
    films = [
        _film("both.png", [r, lf], spacing=0.5),
        _film("right_only.png", [r]),
        _film("broken.png", [r], spacing=0.5),
        _film("missed.png", [lf], spacing=0.5),
    ]
    shifted = LegLandmarks("right", {n: (x + 3.0, y + 4.0) for n, (x, y) in r.points.items()})

    def predict(radiograph):
        assert radiograph.pixels.dtype == np.float32
        if radiograph.path == "broken.png":
            raise InputError("broken.png: cannot decode")
        if radiograph.path == "missed.png":
            return []
        if radiograph.path == "right_only.png":
            assert radiograph.spacing_mm == 1.0  # the assumed spacing was passed on
            return [shifted]
        return [lf, shifted]

    legs, failures, timing = evaluate_films(films, predict, assumed_spacing_mm=1.0, fail_mm=4.0)
    assert len(legs) == 5
    report = summarise(legs, failures)
    assert report["n_films"] == 4 and report["n_legs"] == 5 and report["n_legs_predicted"] == 3
    assert report["n_films_assumed_spacing"] == 1
    knee = report["landmarks"]["knee_centre"]
    assert knee["n"] == 3 and knee["mre_px"] == pytest.approx(10 / 3)
    # errors 5 px -> 2.5 mm (both.png), 5 mm (right_only.png at 1 mm), 0 (left leg)
    assert knee["mre_mm"] == pytest.approx((2.5 + 5.0 + 0.0) / 3)
    # broken.png and missed.png legs missed every landmark
    assert knee["n_missing"] == 2
    assert knee["success_rate"]["2.5mm"] == pytest.approx(2 / 5)
    reasons = {(f["source"], f["reason"]) for f in report["failures"]}
    assert ("broken.png", "prediction failed: broken.png: cannot decode") in reasons
    assert ("missed.png", "no prediction") in reasons
    assert any(
        s == "right_only.png"
        and why.startswith("12 landmarks off by > 4 mm (worst ")
        and why.endswith(", 5.0 mm)")
        for s, why in reasons
    )
    assert report["side_accuracy"] == 1.0
    assert not any(s == "both.png" for s, _ in reasons)
    hka = report["measurements"]["hka_deg"]
    assert hka["n"] == 3 and hka["bias"] == pytest.approx(0.0, abs=1e-9)
    text = format_report(report)
    assert "knee_centre" in text and "hka_deg" in text and "missed.png" in text
    paths = write_outputs(report, legs, tmp_path / "out")
    doc = json.loads(paths["report"].read_text())
    assert doc["n_legs"] == 5
    for key in ("bland_altman", "histogram"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert timing["seconds_per_film_mean"] is not None


def test_write_outputs_with_nothing_measured(tmp_path):
    ev = LegEvaluation("x.png", "right", None)
    ev.failures = ["no prediction"]
    report = summarise([ev], [Failure("y.png", None, "prediction failed: boom")])
    paths = write_outputs(report, [ev], tmp_path)
    assert report["n_failures"] == 2
    assert paths["bland_altman"].stat().st_size > 0 and paths["histogram"].stat().st_size > 0


def test_cli_evaluate_reports_missing_checkpoint(tmp_path):
    import argparse

    from legalign.pipeline.commands import evaluate as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    args = parser.parse_args([str(tmp_path / "none.pt"), str(ann), "--spacing", "0.2"])
    with pytest.raises(InputError, match=r"none\.pt: checkpoint not found"):
        cmd.run(args)
    args = parser.parse_args([str(tmp_path / "none.pt"), str(ann), "--spacing", "-1"])
    with pytest.raises(InputError, match="--spacing must be positive"):
        cmd.run(args)
    args = parser.parse_args([str(tmp_path / "none.pt"), str(ann), "--seed", "5"])
    with pytest.raises(InputError, match=r"--seed applies to synthetic:N datasets only"):
        cmd.run(args)


def test_evaluate_locator_passes_the_seed_to_synthetic_films(monkeypatch):
    """``--seed`` picks the synthetic films (unseen seeds for a model trained on 0-99)."""
    from legalign.training import evaluate as ev_mod

    opened = []

    def fake_load(spec, **kw):
        opened.append((spec, kw))
        return []

    class FakeLocator:
        @classmethod
        def from_checkpoint(cls, *a, **k):
            return cls()

        def locate(self, rg):  # pragma: no cover - no films
            return []

    monkeypatch.setattr(ev_mod, "load_dataset", fake_load)
    monkeypatch.setattr(ev_mod, "Locator", FakeLocator)
    rep = ev_mod.evaluate_locator("x.pt", "synthetic:3:native", dataset_options={"seed": 7})
    assert opened == [("synthetic:3:native", {"seed": 7})]
    assert rep["dataset_options"] == {"seed": 7}


@pytest.mark.slow
def test_evaluate_command_runs_a_real_locator(tmp_path, capsys):
    """Plumbing with a small random locator: predictions are poor, the report is whole."""
    import argparse

    import cv2

    pytest.importorskip("torch")
    from tiny_checkpoint import tiny_checkpoint

    from legalign.pipeline.commands import evaluate as cmd

    tiny_checkpoint(tmp_path / "c.pt", peak_threshold=0.01)
    leg = _right_leg()
    kp = []
    for n in LANDMARK_NAMES:
        kp += [*leg.points[n], 2]
    images, anns = [], []
    for i in range(2):
        cv2.imwrite(
            str(tmp_path / f"{i}.png"),
            (np.random.default_rng(i).random((900, 400)) * 255).astype(np.uint8),
        )
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 400, "height": 900})
        anns.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "side": "right", "keypoints": kp}
        )
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "keypoints": list(LANDMARK_NAMES)}],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            str(tmp_path / "c.pt"),
            str(tmp_path / "a.json"),
            "--out",
            str(tmp_path / "o"),
            "--spacing",
            "0.5",
        ]
    )
    assert cmd.run(args) == 0
    printed = capsys.readouterr().out
    assert "knee_centre" in printed and "failures:" in printed
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["n_films"] == 2 and report["n_legs"] == 2
    assert report["n_films_assumed_spacing"] == 2
    assert report["n_failures"] >= 1  # a random network does not find these landmarks
    assert (tmp_path / "o" / "bland_altman_hka.png").stat().st_size > 0
    assert (tmp_path / "o" / "error_histogram.png").stat().st_size > 0
