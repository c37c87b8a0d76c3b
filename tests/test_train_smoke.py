"""CI smoke test: a few training steps on tiny synthetic films; the loss must fall.

Also: checkpoints load with weights_only=True, resume continues where it stopped, the
metrics log is written, and config errors name the offending key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from legalign.pipeline.config_schema import ConfigError
from legalign.pipeline.locate import Locator
from legalign.training import engine as train_engine
from legalign.training.train import load_train_config, train

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train_smoke.yaml"


@pytest.mark.slow
def test_smoke_training_loss_falls(tmp_path):
    cfg = load_train_config(SMOKE)
    torch.set_num_threads(2)
    res = train(cfg, output_dir=tmp_path, log=lambda *a: None, progress=False)
    for stage in ("coarse", "fine"):
        losses = np.asarray(res["stages"][stage])
        assert len(losses) == getattr(cfg, stage).steps
        first, last = losses[:5].mean(), losses[-5:].mean()
        assert last < 0.8 * first, (stage, first, last)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in lines} == {"coarse", "fine"}
    assert all(np.isfinite(r["loss"]) for r in lines)
    ck = torch.load(tmp_path / "final.pt", weights_only=True)
    assert ck["config"]["seed"] == cfg.seed and "train_state" not in ck
    loc = Locator.from_checkpoint(tmp_path / "final.pt")
    film = np.random.default_rng(0).random((300, 120), dtype=np.float32)
    from legalign.pipeline.coarse_to_fine import locate_radiographs
    from legalign.pipeline.radiograph import Radiograph

    assert isinstance(locate_radiographs(loc, [Radiograph(path="r", pixels=film)])[0], list)


@pytest.mark.slow
def test_resume_continues_after_interruption(tmp_path, monkeypatch):
    cfg = load_train_config(SMOKE)
    cfg.stages = ["coarse"]
    cfg.coarse.steps = 6
    cfg.checkpoint_every = 3
    real_get = train_engine.Prefetcher.get
    calls = {"n": 0}

    def flaky_get(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_get(self)

    monkeypatch.setattr(train_engine.Prefetcher, "get", flaky_get)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, output_dir=tmp_path, log=lambda *a: None, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)["train_state"]
    assert (state["stage_index"], state["step"]) == (0, 3)
    monkeypatch.setattr(train_engine.Prefetcher, "get", real_get)
    res = train(cfg, output_dir=tmp_path, resume=True, log=lambda *a: None, progress=False)
    assert len(res["stages"]["coarse"]) == 3  # steps 3, 4, 5
    assert (tmp_path / "final.pt").exists()


def test_config_errors_name_the_key(tmp_path):
    data = yaml.safe_load(SMOKE.read_text())
    data["coarse"]["steps"] = "many"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"coarse\.steps"):
        load_train_config(bad)
    data = yaml.safe_load(SMOKE.read_text())
    data["model"]["fine_net"]["arch"] = "resnet999_fpn"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"model\.fine_net.*resnet999_fpn"):
        load_train_config(bad)
    data = yaml.safe_load(SMOKE.read_text())
    data["model"]["crops"][0]["anchors"] = ["tibial_shaft_distal"]
    data["model"]["crops"][0]["weights"] = [1.0]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"model.*crops\[0\]\.anchors"):
        load_train_config(bad)


def test_default_config_is_valid():
    cfg = load_train_config(SMOKE.parent / "train_default.yaml")
    assert cfg.export.path is None and cfg.export.half  # shipping is `export --as-default`
    assert cfg.stages == ["coarse", "fine"]
