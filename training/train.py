"""Training of the coarse and fine locator networks (``legalign train CONFIG.yaml``).

One process trains the coarse network, then the fine one (``stages`` in the config),
on films held in memory (real datasets and synthetic films from ``load_dataset``).
Samples are made in a background thread while the network trains.  Each stage uses
AdamW with a linear warm-up and a cosine decay, weighted MSE on Gaussian heatmaps
(positive pixels weighted ``1 + pos_weight * target``; channels of missing landmarks
masked).  Mixed precision on CUDA when ``amp: true``; several GPUs with torchrun (DDP,
one process per GPU, rank 0 logs and saves); CPU otherwise.

``train`` reads as its steps: ``start_run`` (torchrun, output folder, device, seed),
``build_networks`` (or resume), ``load_films``, ``train_stage`` per stage
(``training.engine``: sampler, prefetcher, loss, schedule, checkpoints), ``save_final``,
``evaluate_validation`` (``training.evaluate``, the path of ``legalign evaluate``).

Paths: dataset paths relative to the config file's folder; ``output_dir`` and
``export.path`` relative to the working directory.  Training never writes inside the
installed package (``legalign export CKPT --as-default`` replaces the shipped model).

Outputs in ``output_dir``: ``metrics.jsonl`` (one JSON object per log line: stage, step,
loss, lr, samples/s; and evaluation results), ``last.pt`` (resumable: weights, config,
landmark names, version, optimiser and RNG state), ``final.pt`` and ``eval.json``; with
``export.path`` set, a half-precision copy without training state.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from legalign.models.checkpoint import (
    build_nets,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    shipped_copy,
)
from legalign.models.spec import LocatorSpec
from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.config_schema import (
    ConfigError,
    deep_merge,
    from_mapping,
    read_yaml,
)
from legalign.pipeline.errors import InputError
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmarks import LegLandmarks
from legalign.pipeline.locate import Locator
from legalign.pipeline.radiograph import Radiograph
from legalign.training.angle_target import AngleStageConfig, AngleTarget, load_target_legs
from legalign.training.augment import augmentation_config, build_augmentation
from legalign.training.datasets import (
    AnnotatedFilm,
    SubsetFilms,
    in_memory,
    load_dataset,
    split_indices,
)
from legalign.training.engine import (
    RunContext,
    Sampler,
    StageConfig,
    StageState,
    pick_device,
    train_stage,
)
from legalign.training.evaluate import evaluate_films, format_report, summarise

STAGES = ("coarse", "fine", "angle")
# The network each stage trains (the angle stage tunes the fine network).
STAGE_NET = {"coarse": "coarse", "fine": "fine", "angle": "fine"}


@dataclass
class HoldoutConfig:
    """A reproducible split of one dataset's films (``training.datasets.split_indices``):
    the same ``fraction`` and ``seed`` give the same held-out films in every config, so a
    training entry with ``part: train`` and a validation entry with ``part: heldout``
    never share a film."""

    fraction: float  # share of the films held out, in (0, 1)
    seed: int
    part: Literal["train", "heldout"]

    def validate(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"fraction: must be in (0, 1), got {self.fraction}")


@dataclass
class DatasetEntry:
    spec: str  # COCO .json, LabelMe folder, .csv or synthetic:N[:small|native]
    weight: float  # relative sampling weight of this dataset's films
    options: dict[str, Any]  # keyword arguments for training.datasets.load_dataset
    holdout: HoldoutConfig | None = None  # use only one part of a split of the films

    def validate(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"weight: must be >= 0, got {self.weight}")

    @property
    def label(self) -> str:
        """The name of this entry in logs and ``eval.json``."""
        if self.holdout is None:
            return self.spec
        return f"{self.spec}#{self.holdout.part}"


@dataclass
class ExportConfig:
    path: str | None  # also write the final weights here (relative: to the working directory)
    half: bool  # store them as float16


@dataclass
class TrainConfig:
    seed: int
    output_dir: str
    device: str  # auto, cpu, cuda, cuda:N
    threads: int  # torch CPU threads; 0 leaves torch's default
    amp: bool  # mixed precision (CUDA only)
    pretrained: bool  # ImageNet backbone weights (needs internet; never in the default)
    log_every: int
    checkpoint_every: int
    stages: list[str]
    train_data: list[DatasetEntry]
    val_data: list[DatasetEntry]
    model: LocatorSpec
    coarse: StageConfig
    fine: StageConfig
    export: ExportConfig
    # The weak HKA target (training/angle_target.py): the fine network tuned on the
    # fine stage's samples plus an angle-only reference; needed when ``stages`` lists
    # ``angle``.
    angle: AngleStageConfig | None = None
    # Optional film-level albumentations augmentation (training/augment.py), applied to
    # each drawn film before the stage cuts its sample: overrides merged over
    # configs/augmentation_default.yaml.  Absent or null: only the sampler's own
    # matrix-based augmentation (``coarse.augment`` / ``fine.augment``) is used.
    augmentation: dict[str, Any] | None = None
    # Fine-tuning: start from this checkpoint's weights instead of a fresh initialisation:
    # "default" (the shipped model) or a checkpoint path (relative: the working
    # directory).  Its network spec must equal ``model`` (configs/finetune.yaml extends
    # the default recipe, so it does).
    init_from: str | None = None

    def validate(self) -> None:
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("init_from: must be 'default' or a checkpoint path")
        if self.augmentation is not None:
            augmentation_config(self.augmentation)  # raises ConfigError naming the key
        for s in self.stages:
            if s not in STAGES:
                raise ConfigError(f"stages: unknown stage {s!r} (allowed: {', '.join(STAGES)})")
        if "angle" in self.stages and self.angle is None:
            raise ConfigError("angle: missing required key (stages lists angle)")
        if not self.train_data:
            raise ConfigError("train_data: needs at least one dataset")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("log_every/checkpoint_every: must be >= 1")


def _read_with_extends(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config's mapping with ``extends: OTHER.yaml`` (relative to the config's folder)
    resolved: the other file's mapping with this one merged over it (mappings merge key
    by key, lists and values replace)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: extends: circular ({' -> '.join(p.name for p in chain)})")
    data = read_yaml(path)
    _resolve_dataset_paths(data, path.parent)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: must be a file name, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends: {base_path} not found")
    return deep_merge(_read_with_extends(base_path, (*chain, path)), data)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config; errors name the file and the key.

    ``extends: OTHER.yaml`` at the top level starts from that config (see
    ``configs/train_crossval.yaml``)."""
    data = _read_with_extends(Path(path))
    try:
        return from_mapping(TrainConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _resolve_dataset_paths(data: dict[str, Any], folder: Path) -> None:
    """Dataset paths of one config file (``train_data`` / ``val_data`` ``spec``) relative
    to that file's folder, made absolute (``synthetic:N`` specs are not paths)."""
    target = (
        (data.get("angle") or {}).get("target") if isinstance(data.get("angle"), dict) else None
    )
    if isinstance(target, dict) and isinstance(target.get("data"), str):
        target["data"] = str(folder / Path(target["data"]).expanduser())
    for key in ("train_data", "val_data"):
        entries = data.get(key)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            spec = entry.get("spec") if isinstance(entry, dict) else None
            if isinstance(spec, str) and not spec.startswith("synthetic:"):
                entry["spec"] = str(folder / Path(spec).expanduser())


def load_films(
    entries: list[DatasetEntry], log: Callable[..., None] = print
) -> list[tuple[list[AnnotatedFilm], float]]:
    """Load every dataset into memory: [(films, weight)]."""
    out = []
    for e in entries:
        t0 = time.time()
        ds = load_dataset(e.spec, **e.options)
        what = e.spec
        if e.holdout is not None:
            train, held = split_indices(len(ds), e.holdout.fraction, e.holdout.seed)
            ds = SubsetFilms(ds, train if e.holdout.part == "train" else held)
            what = f"{e.label} (holdout seed {e.holdout.seed})"
        films = [in_memory(ds[i]) for i in range(len(ds))]
        log(f"loaded {len(films)} films from {what} in {time.time() - t0:.1f} s")
        out.append((films, e.weight))
    return out


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def train(
    cfg: TrainConfig,
    output_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[..., None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the configured stages; returns {"stages": {name: [losses...]}, "output_dir",
    "export" (when written), "eval": {dataset: report} (when ``val_data``)}."""
    run = start_run(cfg, output_dir, log, progress)
    nets, state = build_networks(cfg, run, resume)
    data = load_films(cfg.train_data, log=log if run.is_main else (lambda *_: None))
    film_augment = build_augmentation(cfg.augmentation) if cfg.augmentation is not None else None
    history: dict[str, list[float]] = {}
    for si in range(state.stage_index, len(cfg.stages)):
        stage = cfg.stages[si]
        scfg: StageConfig = getattr(cfg, stage)
        net_name = STAGE_NET[stage]
        sampler = Sampler(
            net_name,
            data,
            cfg.model,
            scfg,
            seed=cfg.seed * 1000 + si * 100 + run.rank,
            film_augment=film_augment,
        )
        history[stage] = train_stage(
            run,
            stage,
            si,
            nets,
            cfg.model,
            scfg,
            sampler,
            state,
            amp=cfg.amp,
            log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every,
            config=config_to_dict(cfg),
            net_name=net_name,
            extra=angle_target(cfg, run, nets, si) if stage == "angle" else None,
            freeze_batchnorm=stage == "angle",
        )
    result: dict[str, Any] = {"stages": history, "output_dir": str(run.out)}
    if run.is_main:
        result.update(save_final(cfg, run, nets))
        if cfg.val_data:
            result["eval"] = evaluate_validation(cfg, run, nets)
    end_run(run)
    return result


def start_run(
    cfg: TrainConfig, output_dir: str | Path | None, log: Callable[..., None], progress: bool
) -> RunContext:
    """Join a torchrun job when there is one; the output folder (relative: to the working
    directory), threads, device, seed."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
    out = Path(output_dir or cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    return RunContext(out, device, rank, distributed, log, progress)


def build_networks(
    cfg: TrainConfig, run: RunContext, resume: bool
) -> tuple[dict[str, torch.nn.Module], StageState]:
    """Both networks on the run's device, from ``last.pt`` when resuming."""
    coarse_net, fine_net = build_nets(cfg.model, pretrained=cfg.pretrained)
    nets = {"coarse": coarse_net.to(run.device), "fine": fine_net.to(run.device)}
    state = StageState()
    if cfg.init_from is not None and not resume:
        init_weights(nets, cfg.model, cfg.init_from, log=run.log if run.is_main else _quiet)
    if resume:
        last = run.out / "last.pt"
        if not last.exists():
            raise ConfigError(f"--resume: no checkpoint at {last}")
        ck = load_checkpoint(last)
        nets["coarse"].load_state_dict(ck["coarse"])
        nets["fine"].load_state_dict(ck["fine"])
        state = StageState.from_dict(dict(ck.get("train_state", {})))
        run.log(f"resumed from {last}: stage {state.stage_index}, step {state.step}")
    return nets, state


def angle_target(
    cfg: TrainConfig, run: RunContext, nets: dict[str, torch.nn.Module], si: int
) -> AngleTarget:
    """The angle stage's reference legs, found with the run's coarse network."""
    assert cfg.angle is not None  # TrainConfig.validate
    locator = Locator(cfg.model, nets["coarse"], nets["fine"], device=run.device)
    legs = load_target_legs(cfg.angle.target, locator, log=run.log if run.is_main else _quiet)
    return AngleTarget(
        legs,
        cfg.model,
        cfg.angle.target,
        cfg.angle.augment,
        seed=cfg.seed * 1000 + si * 100 + 50 + run.rank,
    )


def _quiet(*_: Any) -> None:
    pass


def init_weights(
    nets: dict[str, torch.nn.Module],
    spec: LocatorSpec,
    init_from: str,
    log: Callable[..., None] = print,
) -> None:
    """Load a checkpoint's coarse and fine weights into ``nets`` (fine-tuning)."""
    path = None if init_from == "default" else Path(init_from)
    try:
        ck = load_checkpoint(path)
    except InputError as exc:
        raise ConfigError(f"init_from: {exc}") from None
    theirs, ours = LocatorSpec.from_dict(ck["spec"]).to_dict(), spec.to_dict()
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(
            f"init_from: the checkpoint's network spec differs from model ({', '.join(diff)})"
        )
    for stage in ("coarse", "fine"):
        weights = {k: v.float() if v.is_floating_point() else v for k, v in ck[stage].items()}
        nets[stage].load_state_dict(weights)
    log(f"initialised from {'the shipped default model' if path is None else path}")


def save_final(
    cfg: TrainConfig, run: RunContext, nets: dict[str, torch.nn.Module]
) -> dict[str, Any]:
    """``final.pt`` in the output folder and, with ``export.path``, a half-precision copy
    without training state there (relative: to the working directory)."""
    config = config_to_dict(cfg)
    final = make_checkpoint(cfg.model, nets["coarse"], nets["fine"], config)
    save_checkpoint(final, run.out / "final.pt")
    if not cfg.export.path:
        return {}
    dest = Path(cfg.export.path)
    save_checkpoint(shipped_copy(final, half=cfg.export.half), dest)
    run.log(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return {"export": str(dest)}


def evaluate_validation(
    cfg: TrainConfig, run: RunContext, nets: dict[str, torch.nn.Module]
) -> dict[str, Any]:
    """Each ``val_data`` set through ``training.evaluate`` (the path of ``legalign
    evaluate``); the reports go to ``eval.json`` and ``metrics.jsonl``."""
    locator = Locator(cfg.model, nets["coarse"].cpu(), nets["fine"].cpu(), device="cpu")
    geometry = load_geometry_config()

    def predict(radiograph: Radiograph) -> list[LegLandmarks]:
        return locate_radiographs(locator, [radiograph])[0]

    evals = {}
    for entry, (films, _) in zip(cfg.val_data, load_films(cfg.val_data, log=run.log), strict=True):
        legs, failures, timing = evaluate_films(films, predict, geometry_cfg=geometry)
        evals[entry.label] = summarise(legs, failures, extra={"dataset": entry.label, **timing})
        run.log(f"eval {entry.label}:\n{format_report(evals[entry.label])}")
    (run.out / "eval.json").write_text(json.dumps(evals, indent=2), encoding="utf-8")
    run.write_metrics({"eval": evals})
    return evals


def end_run(run: RunContext) -> None:
    if run.distributed:
        dist.destroy_process_group()
