"""What a first-time user meets: one-line argument errors, "not found" for a missing
INPUT, a warning for an empty folder, nothing created for an unusable --model,
``evaluate default``, the export extra's fix, synth seeds that are not training seeds,
and (slow) the README's quick start exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=120, **kw):
    cmd = [sys.executable, "-m", "legalign.pipeline.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def _main(capsys, *args):
    """``legalign ARGS`` in this process (the console script's own ``main``): exit code,
    stdout, stderr.  Argument errors exit through argparse's SystemExit."""
    from legalign.pipeline.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_argument_errors_are_one_line(tmp_path, capsys):
    for args in (
        ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "zero"],
        ["run", str(tmp_path)],  # --out missing
        ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--mode", "gpu"],
        ["nosuchcommand"],
    ):
        code, _, err = _main(capsys, *args)
        assert code == 2, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and "usage:" not in err, lines


def test_argument_error_from_the_console_entry_point(tmp_path):
    """The same through ``python -m legalign.pipeline.cli`` (a fresh process)."""
    proc = _cli("run", tmp_path, "--out", tmp_path / "o", "--workers", "zero")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "usage:" not in proc.stderr, lines


def test_missing_input_is_not_found_exit_2_quickly(tmp_path, capsys):
    t0 = time.monotonic()
    code, _, err = _main(capsys, "run", tmp_path / "no" / "such" / "path", "--out", tmp_path / "r")
    assert code == 2
    assert "not found" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "r").exists()


def test_empty_input_folder_warns_and_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "annotations.json").write_text("{}")
    code, _, err = _main(capsys, "run", tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 2
    assert "no input files found" in err
    assert not (tmp_path / "r").exists()


def test_unusable_model_fails_before_creating_output(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"x")
    code, _, err = _main(
        capsys, "run", tmp_path / "in", "--out", tmp_path / "r", "--model", "/nope.pt"
    )
    assert code == 2
    assert "/nope.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    code, _, err = _main(capsys, "run", tmp_path / "in", "--out", tmp_path / "r", "--spacing", "40")
    assert code == 2 and "implausible" in err
    assert not (tmp_path / "r").exists()


def test_evaluate_accepts_default_and_warns_on_training_seeds(tmp_path, capsys):
    code, _, err = _main(capsys, "evaluate", "default", "synthetic:1:small", "--limit", "1")
    assert code == 0, err[-2000:]
    assert "training data" in err  # seeds 0.. are the default model's training films
    code, _, err = _main(
        capsys, "evaluate", "default", "synthetic:1:small", "--seed", "1000000", "--limit", "1"
    )
    assert code == 0, err[-2000:]
    assert "training data" not in err


def test_synth_default_seed_films_are_not_training_films():
    """`legalign synth` derives each film's generator seed from (--seed, index) by
    hashing; the default model's synthetic training films are generator seeds 0-99
    (configs/train_default.yaml: synthetic:100:small, seed 0)."""
    import yaml

    from legalign.pipeline.commands.synth import film_seed

    cfg = yaml.safe_load((REPO / "configs" / "train_default.yaml").read_text())
    used: set[int] = set()
    for entry in cfg["train_data"]:
        if str(entry["spec"]).startswith("synthetic:"):
            n = int(entry["spec"].split(":")[1])
            s0 = int((entry.get("options") or {}).get("seed", 0))
            used |= set(range(s0, s0 + n))
    assert used
    assert not {film_seed(0, i) for i in range(10_000)} & used


@pytest.mark.slow
def test_export_without_its_extra_names_the_fix(tmp_path):
    """With onnxscript missing (hidden by a sitecustomize that blocks its import), the
    ONNX export refuses up front with the pip command, and writes nothing."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['onnxscript'] = None\n")
    env = dict(os.environ, PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = tmp_path / "exp"
    proc = _cli("export", "default", "--out", out, "--format", "onnx", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pip install 'legalign[export]'" in proc.stderr
    assert "onnxscript" in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_quick_start_is_what_the_test_runs():
    cmds = _quick_start_commands()
    assert cmds[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e")
    assert "legalign run demo/archive --out demo/results" in cmds[0]
    assert cmds[1] == ".venv/bin/python -m pytest -q"


@pytest.mark.slow
def test_readme_quick_start_runs_exactly_as_written(tmp_path):
    """The first quick-start command, parsed from README.md and run verbatim in a copy of
    the repository.  The copy's .venv is prepared to see this environment's packages (a
    .pth file), so that `pip install` finds everything installed instead of downloading
    7 GB: pip runs offline (PIP_NO_INDEX=1) without build isolation
    (PIP_NO_BUILD_ISOLATION=0: pip reads its "no-" options' environment variables
    inverted), and the venv's own bundled setuptools (65 on Python 3.11, older than the
    PEP 639 `license = "MIT"` the build needs, >= 77) is removed so the build uses this
    environment's.  The second command is this test suite."""
    import torch

    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    copy = tmp_path / "repo"
    for f in filter(None, files):
        src, dst = REPO / os.fsdecode(f), copy / os.fsdecode(f)
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    base = str(Path(torch.__file__).resolve().parents[1])
    subprocess.run(["python3", "-m", "venv", ".venv"], cwd=copy, check=True)
    sp = subprocess.run(
        [".venv/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(sp, "zz_base_env.pth").write_text(base + "\n")
    subprocess.run(
        [".venv/bin/python", "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
        cwd=copy,
        capture_output=True,
        check=False,  # Python >= 3.12 venvs have none
    )
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0")
    env.pop("VIRTUAL_ENV", None)
    cmd = _quick_start_commands()[0]
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=copy, capture_output=True, text=True, timeout=1800, env=env
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    results = copy / "demo" / "results"
    for name in ("results.parquet", "results.csv", "summary.json"):
        assert (results / name).is_file()
    assert len(list((results / "dicom").glob("*_sr.dcm"))) == 4
    assert re.search(r"files: 4 in results", proc.stdout)
