"""training.shift_stability: the fine stage re-run with its crops moved, answers in film px."""

from __future__ import annotations

import numpy as np
import pytest

from legalign.pipeline.api import load_locator
from legalign.training.datasets.synthetic import film_from_synthetic
from legalign.training.shift_stability import crop_offsets, shifted_answers, spread, summarise
from legalign.training.synth.film import generate_film


@pytest.fixture(scope="module")
def film():
    return film_from_synthetic(generate_film(11, size="small"), 11)


@pytest.fixture(scope="module")
def locator():
    return load_locator(None)


def test_offsets_cover_one_period_per_axis():
    offs = crop_offsets(16)
    assert len(offs) == 33 and offs[0] == (0.0, 0.0)
    assert {dx for dx, dy in offs if dy == 0} == set(map(float, range(17)))
    assert {dy for dx, dy in offs if dx == 0} == set(map(float, range(17)))


def test_spread_of_points():
    answers = [{(0, "a"): (0.0, 0.0)}, {(0, "a"): (3.0, 4.0)}, {(0, "a"): (0.0, 4.0)}]
    got = spread(answers)[(0, "a")]
    assert got["range_px"] == pytest.approx(5.0)
    assert got["sd_px"] == pytest.approx(np.sqrt(np.var([0, 3, 0]) + np.var([0, 4, 4])))


def test_answers_come_back_in_film_coordinates(film, locator):
    """Moving a crop by 8 px moves its content, not the answer: read back through the moved
    crop's own matrix, a landmark stays within a few pixels (an answer read through the
    unmoved matrix would be 8 px off)."""
    got = shifted_answers(
        locator, film.to_radiograph(), [(0.0, 0.0), (0.0, 0.0), (8.0, 0.0), (0.0, 8.0)]
    )
    assert all(v["range_px"] == 0.0 for v in spread(got[:2]).values())  # deterministic
    ranges = [v["range_px"] for v in spread(got).values()]
    assert len(ranges) == 2 * len(locator.spec.fine_landmarks)  # both legs
    assert 0.0 < max(ranges) < 5.0, ranges


def test_summary_per_landmark_and_overall():
    per_leg = {
        "knee_centre": [{"range_px": 1.0, "sd_px": 0.2}, {"range_px": 3.0, "sd_px": 0.6}],
        "ankle_centre": [{"range_px": 0.5, "sd_px": 0.1}],
    }
    rows = summarise(per_leg)
    assert rows["knee_centre"] == {
        "legs": 2,
        "range_mean_px": 2.0,
        "range_max_px": 3.0,
        "sd_mean_px": pytest.approx(0.4),
    }
    assert rows["all"]["legs"] == 3 and rows["all"]["range_max_px"] == 3.0
    assert rows["all"]["range_mean_px"] == pytest.approx(4.5 / 3)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from legalign.training.shift_stability import main

    assert main(["default", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"shift_stability: error: {tmp_path / 'missing.json'}: file not found"]
    assert main([str(tmp_path / "no.pt"), "synthetic:1:small"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["default", "synthetic:1:small", "--period", "0"])
