"""Angle-only ground truth (file, side, hka_deg): CSV, pairing, figures, outputs, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from leg_builder import legs_with_confidence

from legalign.pipeline.api import FilmInfo, load_config
from legalign.pipeline.assemble import result_from_legs
from legalign.pipeline.errors import InputError
from legalign.training.readers_eval import (
    AngleLeg,
    angle_summary,
    format_angle_report,
    is_angle_csv,
    load_angle_truth,
    predict_angles,
    write_outputs,
)


def _write_csv(path, rows, header=("file", "side", "hka_deg")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def films():
    from legalign.training.synth.film import generate_film

    return [generate_film(s, size="small", legs="both", distractors=False) for s in (3, 4)]


def _truth_hka(film, side):
    return float(film.params["alignment"][side]["hka_deg"])


def test_csv_is_read_with_images_in_an_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    p = _write_csv(tmp_path / "r.csv", [["a.jpg", "right", "-0.8"], ["a.jpg", "left", "1.5"]])
    rows = load_angle_truth(p)
    assert [(r.side, r.hka_deg) for r in rows] == [("right", -0.8), ("left", 1.5)]
    assert rows[0].path == tmp_path / "images" / "a.jpg"
    assert is_angle_csv(p)
    landmark_csv = _write_csv(
        tmp_path / "l.csv",
        [["a.jpg", "right", "knee_centre", 1, 2]],
        ("image", "side", "landmark", "x", "y"),
    )
    assert not is_angle_csv(landmark_csv)


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["a.jpg", "right", "1"]], ("file", "side"), "missing column(s) hka_deg"),
        (
            [["a.jpg", "up", "1"]],
            ("file", "side", "hka_deg"),
            "r.csv:2: side must be right or left",
        ),
        (
            [["a.jpg", "right", "x"]],
            ("file", "side", "hka_deg"),
            "r.csv:2: hka_deg is not a number",
        ),
        (
            [["a.jpg", "right", "1"], ["a.jpg", "right", "2"]],
            ("file", "side", "hka_deg"),
            "r.csv:3:",
        ),
        ([], ("file", "side", "hka_deg"), "no legs listed"),
    ],
)
def test_bad_csv_names_the_file_and_line(tmp_path, rows, header, message):
    p = _write_csv(tmp_path / "r.csv", rows, header)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_angle_truth(p)


def test_summary_figures_on_known_differences():
    truth = [-5.0, -2.0, 0.0, 1.0, 3.0, 6.0]
    diff = [0.5, -0.5, 1.5, 0.0, 2.5, 0.5]
    legs = [
        AngleLeg(f"f{i}.png", "right", t, t + d)
        for i, (t, d) in enumerate(zip(truth, diff, strict=True))
    ]
    legs.append(AngleLeg("g.png", "left", 2.0, None, "femoral_head outside the film"))
    s = angle_summary(legs)
    d = np.array(diff)
    assert s["n_legs"] == 7 and s["n_measured"] == 6 and s["n_without_value"] == 1
    assert s["without_value"] == [
        {"file": "g.png", "side": "left", "reason": "femoral_head outside the film"}
    ]
    assert s["bias"] == pytest.approx(d.mean())
    assert s["mad"] == pytest.approx(np.abs(d).mean())
    assert s["within_1"] == pytest.approx(4 / 6) and s["within_2"] == pytest.approx(5 / 6)
    assert s["max_abs"] == pytest.approx(2.5)
    assert s["pearson_r"] == pytest.approx(np.corrcoef(truth, np.add(truth, diff))[0, 1])
    assert s["sd"] == pytest.approx(d.std(ddof=1))
    assert "interval" not in s
    text = format_angle_report(s)
    assert "without a value 1" in text and "g.png [left]: femoral_head outside the film" in text


def test_interval_coverage_is_reported():
    legs = [
        AngleLeg("a", "right", 0.0, 0.2, lo=-0.5, hi=0.9),  # inside
        AngleLeg("b", "right", 1.0, 0.0, lo=-0.5, hi=0.5),  # outside
        AngleLeg("c", "right", 2.0, 2.1, lo=1.5, hi=2.7, review=True),
        AngleLeg("d", "right", 3.0, 3.0, lo=2.0, hi=4.0, review=False),
    ]
    for leg in legs[:2]:
        leg.review = False
    s = angle_summary(legs)
    assert s["interval"]["n"] == 4 and s["interval"]["coverage"] == pytest.approx(0.75)
    assert s["review"]["n_flagged"] == 1
    assert s["review"]["mad_flagged"] == pytest.approx(0.1)


def test_pipeline_results_are_paired_by_side_on_synthetic_films(tmp_path, films):
    """The pipeline's result path (result_from_legs) on exact synthetic landmarks: the
    reference is the generator's HKA + a known offset, so the bias is minus that offset."""
    cfg = load_config()
    paths = {}
    rows = []
    for i, film in enumerate(films):
        paths[f"f{i}.png"] = film
        for side in ("right", "left"):
            rows.append([f"f{i}.png", side, f"{_truth_hka(film, side) + 0.3:.4f}"])
    rows.append(["missing.png", "right", "0.0"])
    truths = load_angle_truth(_write_csv(tmp_path / "r.csv", rows))

    def analyse(path):
        if path.name == "missing.png":
            raise InputError(f"{path}: file not found")
        film = paths[path.name]
        h, w = film.image.shape
        info = FilmInfo(str(path), w, h, 1.0, "user", None, None, None, 12, None, None, None)
        return result_from_legs(info, legs_with_confidence(film), cfg)

    legs = predict_angles(truths, analyse)
    s = angle_summary(legs)
    assert s["n_measured"] == 4 and s["n_without_value"] == 1
    assert "file not found" in s["without_value"][0]["reason"]
    assert s["bias"] == pytest.approx(-0.3, abs=0.06)
    assert s["within_1"] == 1.0
    out = write_outputs(s, legs, tmp_path / "out")
    assert out["bland_altman"].stat().st_size > 1000
    assert "reliability" not in out
    report = json.loads(out["report"].read_text())
    assert report["n_measured"] == 4 and "bland_altman" in report["outputs"]
    with open(out["legs"]) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 5 and table[-1]["reason"].endswith("file not found")


def test_a_leg_side_not_found_is_a_leg_without_value(tmp_path, films):
    cfg = load_config()
    film = films[0]
    right_only = [leg for leg in legs_with_confidence(film) if leg.side == "right"]
    p = tmp_path / "a.png"
    p.write_bytes(b"x")
    truths = load_angle_truth(
        _write_csv(tmp_path / "r.csv", [["a.png", "right", "0"], ["a.png", "left", "0"]])
    )
    h, w = film.image.shape
    info = FilmInfo(str(p), w, h, None, None, None, None, None, 12, None, None, None)
    legs = predict_angles(truths, lambda path: result_from_legs(info, right_only, cfg))
    assert legs[0].pred is not None and legs[1].pred is None
    assert legs[1].reason.startswith("no left leg found")


def test_cli_evaluates_an_angle_csv_with_the_shipped_model(tmp_path, films, capsys):
    import cv2

    from legalign.pipeline.cli import main

    rows = []
    for i, film in enumerate(films):
        assert cv2.imwrite(str(tmp_path / f"f{i}.png"), film.image)
        for side in ("right", "left"):
            rows.append([f"f{i}.png", side, f"{_truth_hka(film, side):.2f}"])
    csv_path = _write_csv(tmp_path / "readers.csv", rows)
    from legalign.models.checkpoint import DEFAULT_WEIGHTS

    rc = main(["evaluate", str(DEFAULT_WEIGHTS), str(csv_path), "--out", str(tmp_path / "ev")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "legs 4: HKA for" in text and "mean abs diff" in text
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n_legs"] == 4 and report["ground_truth"].startswith("angles")
    assert (tmp_path / "ev" / "bland_altman_hka.png").is_file()
    # the shipped model on clean synthetic films: HKA close to the generator's
    assert report["n_measured"] >= 3 and report["mad"] < 1.5
