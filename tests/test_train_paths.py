"""User files stay the user's: a training config's dataset paths are relative to the
config's folder, its outputs to the working directory, and nothing in the installed
package changes (replacing the shipped model is `legalign export --as-default`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from legalign.models import checkpoint as ckpt_mod
from legalign.pipeline import cli
from legalign.pipeline.config_schema import CONFIG_DIR
from legalign.pipeline.errors import InputError
from legalign.training.train import load_train_config, train

PACKAGES = (
    "legalign",
    "legalign.models",
    "legalign.pipeline",
    "legalign.training",
    "legalign.configs",
)


def _package_files() -> dict[str, str]:
    """sha256 of every file of the installed packages (not byte code)."""
    import importlib

    out = {}
    for name in PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_training_from_a_copied_config_writes_nothing_in_the_package(tmp_path, monkeypatch):
    data = tmp_path / "data"
    assert cli.main(["synth", "--n", "1", "--out", str(data), "--size", "small"]) == 0
    cfg = yaml.safe_load((CONFIG_DIR / "train_smoke.yaml").read_text())
    cfg["train_data"] = [{"spec": "../data/annotations.json", "weight": 1.0, "options": {}}]
    cfg["val_data"] = []
    cfg["output_dir"] = "runs/smoke"  # relative to the working directory
    cfg["export"] = {"path": "weights/mine.pt", "half": True}
    for stage in ("coarse", "fine"):
        cfg[stage]["steps"] = 2
        cfg[stage]["batch_size"] = 2
    cfg_file = tmp_path / "configs" / "train.yaml"
    cfg_file.parent.mkdir()
    cfg_file.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    before = _package_files()
    loaded = load_train_config(cfg_file)
    assert loaded.train_data[0].spec == str(cfg_file.parent / "../data/annotations.json")
    res = train(loaded, log=lambda *a: None, progress=False)
    assert (work / "runs" / "smoke" / "final.pt").is_file()
    assert (work / "weights" / "mine.pt").is_file() and res["export"] == "weights/mine.pt"
    assert _package_files() == before


def test_shipped_training_recipe_does_not_replace_the_default():
    cfg = load_train_config(CONFIG_DIR / "train_default.yaml")
    assert cfg.export.path is None
    assert not Path(cfg.output_dir).is_absolute()


@pytest.mark.parametrize("checkout", [True, False])
def test_install_as_default(tmp_path, monkeypatch, checkout):
    """`export --as-default` writes the shipped weights (float16, no training state) in a
    development checkout and refuses in an installed package."""
    import torch

    from legalign.models.checkpoint import build_nets, make_checkpoint, save_checkpoint
    from legalign.training.train import load_train_config as load

    spec = load(CONFIG_DIR / "train_smoke.yaml").model
    coarse, fine = build_nets(spec)
    src = tmp_path / "trained.pt"
    save_checkpoint(make_checkpoint(spec, coarse, fine, train_state={"step": 3}), src)
    target = tmp_path / "weights" / "legalign_default.pt"
    # a stand-in package folder, so the real shipped weights are never touched here
    monkeypatch.setattr(ckpt_mod, "DEFAULT_WEIGHTS", target)
    monkeypatch.setattr(ckpt_mod, "development_checkout", lambda: tmp_path if checkout else None)
    if not checkout:
        with pytest.raises(InputError, match="development checkout"):
            ckpt_mod.install_as_default(src)
        assert not target.exists()
        return
    assert ckpt_mod.install_as_default(src) == target
    shipped = torch.load(target, weights_only=True)
    assert "train_state" not in shipped
    assert all(
        v.dtype == torch.float16 for v in shipped["coarse"].values() if v.is_floating_point()
    )
