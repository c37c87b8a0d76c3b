"""`legalign measure`: the JSON contract and one-line errors for bad input."""

import json
from pathlib import Path

import pytest
from leg_builder import build_leg

from legalign.pipeline.cli import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "bilateral_landmarks.json"


def run_cli(args, capsys):
    code = main(["measure", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def write_doc(tmp_path, doc, name="in.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


def leg_doc(leg):
    return {"side": leg.side, "landmarks": {n: list(xy) for n, xy in leg.points.items()}}


def test_example_output_contract(capsys):
    code, out, err = run_cli([EXAMPLE], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["spacing_source"] == "input file" and doc["spacing_mm"] == 0.15
    assert isinstance(doc["lld_mm"], float)
    sides = [leg["side"] for leg in doc["legs"]]
    assert sides == ["right", "left"]
    for leg in doc["legs"]:
        for key in (
            "hka_deg",
            "mad_mm",
            "wbl_ratio_pct",
            "mldfa_deg",
            "mpta_deg",
            "jlca_deg",
            "mlpfa_deg",
            "femur_length_mm",
            "tibia_length_mm",
            "leg_length_mm",
        ):
            assert isinstance(leg["measurements"][key], float), key
        plan = leg["plan"]
        for key in (
            "indicated",
            "level",
            "correction_deg",
            "gap_mm",
            "hinge",
            "cut_start",
            "post",
            "warnings",
        ):
            assert key in plan
        assert plan["level"] in ("HTO", "DFO", "DLO", None)
    right = doc["legs"][0]
    assert right["measurements"]["hka_deg"] == pytest.approx(-7.5, abs=0.01)
    assert right["plan"]["level"] == "HTO"
    assert set(right["plan"]["post"]) == {
        "hka_deg",
        "mad_mm",
        "wbl_ratio_pct",
        "mpta_deg",
        "mldfa_deg",
    }


def test_spacing_flag_overrides_and_uncalibrated_is_null(tmp_path, capsys):
    leg = build_leg(hka=-6.0, mpta=83.0)
    p = write_doc(tmp_path, {"spacing_mm": None, "legs": [leg_doc(leg)]})
    code, out, _ = run_cli([p], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["spacing_source"] is None
    m = doc["legs"][0]["measurements"]
    assert (
        m["mad_mm"] is None and m["leg_length_mm"] is None and m["hka_deg"] == pytest.approx(-6.0)
    )
    assert doc["legs"][0]["plan"]["gap_mm"] is None
    code, out, _ = run_cli([p, "--spacing", "0.2"], capsys)
    doc = json.loads(out)
    assert doc["spacing_source"] == "user"
    assert doc["legs"][0]["measurements"]["femur_length_mm"] == pytest.approx(600.0)


def test_config_override(tmp_path, capsys):
    leg = build_leg(hka=-6.0, mpta=83.0)
    p = write_doc(tmp_path, {"spacing_mm": 0.15, "legs": [leg_doc(leg)]})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("planning:\n  target_wbl_pct:\n    varus: 55.0\n")
    code, out, _ = run_cli([p, "--config", cfg], capsys)
    assert code == 0
    assert json.loads(out)["legs"][0]["plan"]["post"]["wbl_ratio_pct"] == pytest.approx(55.0)


def test_missing_landmark_as_null(tmp_path, capsys):
    d = leg_doc(build_leg(hka=-6.0, mpta=83.0))
    d["landmarks"]["tibial_plateau_lateral"] = None
    p = write_doc(tmp_path, {"spacing_mm": 0.15, "legs": [d]})
    code, out, _ = run_cli([p], capsys)
    leg = json.loads(out)["legs"][0]
    assert code == 0
    assert leg["measurements"]["mpta_deg"] is None and leg["measurements"]["hka_deg"] is not None
    assert leg["plan"]["level"] is None and "cannot be chosen" in leg["plan"]["reason"]


def _bad_docs():
    good = leg_doc(build_leg(hka=-6.0, mpta=83.0))
    unknown = json.loads(json.dumps(good))
    unknown["landmarks"]["patella_centre"] = [1, 2]
    bad_side = dict(good, side="middle")
    nan = json.loads(json.dumps(good))
    nan["landmarks"]["knee_centre"] = [float("nan"), 3.0]
    coincident = json.loads(json.dumps(good))
    coincident["landmarks"]["ankle_centre"] = coincident["landmarks"]["knee_centre"]
    wrong_anatomy = dict(good, side="left")
    return {
        "malformed": ('{"legs": [', "malformed JSON"),
        "unknown": (
            {"spacing_mm": 0.15, "legs": [unknown]},
            "unknown landmark name 'patella_centre'",
        ),
        "side": ({"spacing_mm": 0.15, "legs": [bad_side]}, "side must be 'right' or 'left'"),
        "anatomy": ({"spacing_mm": 0.15, "legs": [wrong_anatomy]}, "contradicts the landmarks"),
        "nan": (json.dumps({"spacing_mm": 0.15, "legs": [nan]}), "non-finite"),
        "coincident": (
            {"spacing_mm": 0.15, "legs": [coincident]},
            "coincident points: knee_centre and ankle_centre",
        ),
        "spacing": ({"spacing_mm": 0, "legs": [good]}, "spacing_mm must be a positive"),
        "twice": ({"spacing_mm": 0.15, "legs": [good, good]}, "two legs with the same side"),
    }


@pytest.mark.parametrize("case", list(_bad_docs()))
def test_bad_input_is_one_line_error(case, tmp_path, capsys):
    doc, expected = _bad_docs()[case]
    p = write_doc(tmp_path, doc)
    code, out, err = run_cli([p], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err and str(p) in err


def test_unreachable_target_is_an_error(tmp_path, capsys):
    p = write_doc(tmp_path, {"spacing_mm": 0.15, "legs": [leg_doc(build_leg(hka=-9.0, mpta=82.0))]})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("planning:\n  solver:\n    max_angle_deg: 2.0\n")
    code, out, err = run_cli([p, "--config", cfg], capsys)
    assert code == 2 and out == ""
    assert "cannot reach the target" in err and "right leg" in err and err.count("\n") == 1


def test_missing_file_and_bad_config_key(tmp_path, capsys):
    code, _, err = run_cli([tmp_path / "nope.json"], capsys)
    assert code == 2 and "no such file" in err
    p = write_doc(tmp_path, {"spacing_mm": 0.15, "legs": [leg_doc(build_leg())]})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("planning:\n  hto:\n    hinge_distal: 12\n")
    code, _, err = run_cli([p, "--config", cfg], capsys)
    assert code == 2 and "planning.hto.hinge_distal: unknown key" in err
    cfg.write_text("planning:\n  hto:\n    hinge_inset_mm: ten\n")
    code, _, err = run_cli([p, "--config", cfg], capsys)
    assert code == 2 and "planning.hto.hinge_inset_mm: must be a number" in err
