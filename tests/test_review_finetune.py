"""Corrections flow back: fine-tuning the shipped model (configs/finetune.yaml) on a
`legalign review --export` moves its predictions towards the reviewers' amended points.

The reviewers here relabel every knee centre 7 px lateral-to-the-image-right of where the
films' exact landmarks put it (as a site whose convention differs would); the test
accepts every leg with that amendment through the review service, exports, fine-tunes the
fine network from the shipped weights with the finetune recipe (shortened), and compares
the model's knee-centre predictions on those films before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from review_run import make_review_run

from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.review.config import load_review_config
from legalign.pipeline.review.export import export_reviewed
from legalign.pipeline.review.service import ReviewService

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIFT = np.array([7.0, 0.0])


def _knee_predictions(locator, films):
    from legalign.pipeline.read import read_radiograph

    out = {}
    for path in films:
        for leg in locate_radiographs(locator, [read_radiograph(path)])[0]:
            out[(str(path), leg.side)] = np.array(leg.points["knee_centre"])
    return out


@pytest.mark.slow
def test_finetune_on_amended_points_moves_the_model_towards_them(tmp_path):
    import torch

    from legalign.pipeline.locate import Locator
    from legalign.training.train import load_train_config, train

    torch.set_num_threads(2)
    run = make_review_run(tmp_path, n=3, fmt="dicom", seed=31)
    svc = ReviewService.open(run.results, load_review_config(), load_geometry_config())
    amended = {}
    for leg_id in svc.folder.leg_ids():
        film, leg = svc.folder.leg(leg_id)
        truth = np.array(run.truth[str(film.source)][leg["side"]]["knee_centre"])
        target = truth + SHIFT
        amended[(str(film.source), leg["side"])] = target
        st = svc.change(
            leg_id,
            {
                "action": "points",
                "version": 0,
                "reviewer": "t",
                "points": {"knee_centre": list(target)},
            },
        )
        svc.change(leg_id, {"action": "accept", "version": st.version, "reviewer": "t"})
    export = tmp_path / "export"
    summary = export_reviewed(svc, export)
    assert summary["legs_exported"] == len(amended) == 6

    base = Locator.from_checkpoint(None)
    before = _knee_predictions(base, run.films)
    cfg = load_train_config(REPO_ROOT / "configs" / "finetune.yaml")
    assert cfg.init_from == "default"
    cfg.train_data = cfg.train_data[:1]
    cfg.train_data[0].spec = str(export / "annotations.json")
    cfg.stages = ["fine"]
    cfg.fine.steps, cfg.fine.batch_size, cfg.fine.lr, cfg.fine.warmup_steps = 60, 8, 1e-3, 5
    cfg.threads = 2
    t0 = time.time()
    train(cfg, output_dir=tmp_path / "ft", log=lambda *a: None, progress=False)
    tuned = Locator.from_checkpoint(tmp_path / "ft" / "final.pt")
    after = _knee_predictions(tuned, run.films)
    d_before = np.mean([np.linalg.norm(before[k] - amended[k]) for k in amended])
    d_after = np.mean([np.linalg.norm(after[k] - amended[k]) for k in amended])
    report = {"before_px": d_before, "after_px": d_after, "train_s": time.time() - t0}
    (tmp_path / "finetune.json").write_text(json.dumps(report))
    print(report)
    assert d_before > 5.0  # the shipped model follows the films' own landmarks
    assert d_after < 0.6 * d_before, report


def test_init_from_needs_a_checkpoint_with_the_same_networks(tmp_path):
    from legalign.pipeline.config_schema import ConfigError
    from legalign.training.train import load_train_config, train

    cfg = load_train_config(REPO_ROOT / "configs" / "train_smoke.yaml")  # tiny networks
    cfg.init_from = "default"  # the shipped model's networks are larger
    with pytest.raises(ConfigError, match=r"init_from: .*spec differs"):
        train(cfg, output_dir=tmp_path, log=lambda *a: None, progress=False)
    cfg.init_from = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match=r"init_from: .*not found"):
        train(cfg, output_dir=tmp_path, log=lambda *a: None, progress=False)
