"""training/label_audit.py on outlines made here (no ../shared needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legalign.training.label_audit import audit, fit_circle, head_arc_fit, main


def _head_outline(rng, n, noise):
    t = np.linspace(-0.2 * np.pi, 1.2 * np.pi, n)  # an arc, open below like a femoral head
    pts = np.c_[60 + 20 * np.cos(t), 100 - 20 * np.sin(t)]
    shaft = np.c_[np.full(6, 45.0), np.linspace(130, 300, 6)]  # far from the head
    return np.r_[pts + rng.normal(0, noise, pts.shape), shaft]


def test_fit_circle_is_exact_on_a_circle():
    t = np.linspace(0, 2, 9)
    centre, r = fit_circle(np.c_[3 + 7 * np.cos(t), -2 + 7 * np.sin(t)])
    assert np.allclose(centre, [3, -2]) and r == pytest.approx(7)


def test_centre_error_grows_with_drawing_noise_and_fewer_vertices():
    rng = np.random.default_rng(0)
    label = np.array([60.0, 100.0])
    exact = head_arc_fit(_head_outline(rng, 24, 0.0), label)
    assert exact.centre_se_px < 1e-9 and exact.label_offset_px < 1e-9
    dense = np.median(
        [head_arc_fit(_head_outline(rng, 24, 1.5), label).centre_se_px for _ in range(30)]
    )
    coarse = np.median(
        [head_arc_fit(_head_outline(rng, 10, 1.5), label).centre_se_px for _ in range(30)]
    )
    assert 0.2 < dense < coarse < 3.0


def test_audit_file_and_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    names = ["femoral_head", "knee_centre"]
    anns = []
    for i in range(3):
        femur = _head_outline(rng, 16, 1.0)
        anns.append(
            {
                "id": i,
                "image_id": i,
                "keypoints": [60, 100, 2, 0, 0, 0],
                "outlines": {"femur": femur.ravel().tolist(), "tibia": [0, 0, 1, 1]},
            }
        )
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"categories": [{"keypoints": names}], "annotations": anns}))
    rep = audit(f)
    assert rep["head_arcs_fitted"] == 3 and rep["femur_vertices_p10_p50_p90"][1] == 22
    assert main([str(f)]) == 0
    assert json.loads(capsys.readouterr().out)["annotations"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main([str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
