"""Training of the coarse and fine locator networks (``legalign train CONFIG.yaml``).

One process trains the coarse network, then the fine one (``stages`` in the config),
on films held in memory (real datasets and synthetic films from ``load_dataset``).
Samples are made in a background thread while the network trains.  Each stage uses
AdamW with a linear warm-up and a cosine decay, weighted MSE on Gaussian heatmaps
(positive pixels weighted ``1 + pos_weight * target``; channels of missing landmarks
masked).  Mixed precision on CUDA when ``amp: true``; several GPUs with torchrun (DDP,
one process per GPU, rank 0 logs and saves); CPU otherwise.

Outputs in ``output_dir``: ``metrics.jsonl`` (one JSON object per log line: stage, step,
loss, lr, samples/s; and evaluation results), ``last.pt`` (resumable: weights, config,
landmark names, version, optimiser and RNG state), ``final.pt`` and ``eval.json``; with
``export.path`` set, a half-precision copy without training state (the shipped weights).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from legalign.models.spec import LocatorSpec
from legalign.pipeline.config_schema import (
    REPO_ROOT,
    ConfigError,
    deep_merge,
    from_mapping,
    read_yaml,
)
from legalign.training.samples import (
    SampleAug,
    TrainFilm,
    coarse_sample,
    film_from_annotated,
    fine_sample,
)

STAGES = ("coarse", "fine")


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
class StageConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    pos_weight: float
    augment: SampleAug

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps: must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")


@dataclass
class ExportConfig:
    path: str | None  # write the final weights here (relative: to the repository root)
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
    # Optional film-level albumentations augmentation (training/augment.py), applied to
    # each drawn film before the stage cuts its sample: overrides merged over
    # configs/augmentation_default.yaml.  Absent or null: only the sampler's own
    # matrix-based augmentation (``coarse.augment`` / ``fine.augment``) is used.
    augmentation: dict[str, Any] | None = None
    # Fine-tuning: start from this checkpoint's weights instead of a fresh initialisation:
    # "default" (the shipped model) or a checkpoint path (relative: working directory,
    # else the repository root).  Its network spec must equal ``model``
    # (configs/finetune.yaml extends the default recipe, so it does).
    init_from: str | None = None

    def validate(self) -> None:
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("init_from: must be 'default' or a checkpoint path")
        if self.augmentation is not None:
            from legalign.training.augment import augmentation_config

            augmentation_config(self.augmentation)  # raises ConfigError naming the key
        for s in self.stages:
            if s not in STAGES:
                raise ConfigError(f"stages: unknown stage {s!r} (allowed: {', '.join(STAGES)})")
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


def resolve_path(p: str) -> Path:
    """A relative path: from the working directory if it exists there, else the repository root."""
    path = Path(p)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def _resolve_spec(spec: str) -> str:
    if spec.startswith("synthetic:"):
        return spec
    return str(resolve_path(spec))


def load_films(entries: list[DatasetEntry], log=print) -> list[tuple[list[TrainFilm], float]]:
    """Load every dataset into memory: [(films, weight)]."""
    from legalign.training.datasets import SubsetFilms, load_dataset, split_indices

    out = []
    for e in entries:
        t0 = time.time()
        ds = load_dataset(_resolve_spec(e.spec), **e.options)
        what = e.spec
        if e.holdout is not None:
            train, held = split_indices(len(ds), e.holdout.fraction, e.holdout.seed)
            ds = SubsetFilms(ds, train if e.holdout.part == "train" else held)
            what = f"{e.label} (holdout seed {e.holdout.seed})"
        films = [film_from_annotated(ds[i]) for i in range(len(ds))]
        log(f"loaded {len(films)} films from {what} in {time.time() - t0:.1f} s")
        out.append((films, e.weight))
    return out


class Sampler:
    """Draws batches for one stage from weighted datasets; reproducible from its seed."""

    def __init__(
        self,
        stage: str,
        data,
        spec: LocatorSpec,
        cfg: StageConfig,
        seed: int,
        film_augment=None,
    ) -> None:
        self.stage, self.spec, self.cfg = stage, spec, cfg
        # augment(AnnotatedFilm, rng) -> AnnotatedFilm (training.augment.build_augmentation)
        self.film_augment = film_augment
        self.datasets = [(f, w) for f, w in data if f and w > 0]
        if not self.datasets:
            raise ConfigError("train_data: no films to sample from")
        w = np.array([wt for _, wt in self.datasets], dtype=np.float64)
        self.ds_p = w / w.sum()
        self.rng = np.random.default_rng(seed)

    def one(self):
        rng = self.rng
        for _ in range(100):
            films = self.datasets[int(rng.choice(len(self.datasets), p=self.ds_p))][0]
            film = films[int(rng.integers(len(films)))]
            if self.film_augment is not None:
                film = self._augmented(film, rng)
            if self.stage == "coarse":
                return coarse_sample(film, self.spec, self.cfg.augment, rng)
            if not film.legs:
                continue
            leg = film.legs[int(rng.integers(len(film.legs)))]
            crop = self.spec.crops[int(rng.integers(len(self.spec.crops)))]
            s = fine_sample(film, leg, crop, self.spec, self.cfg.augment, rng)
            if s is not None:
                return s
        raise RuntimeError("could not draw a usable training sample in 100 tries")

    def _augmented(self, film: TrainFilm, rng: np.random.Generator) -> TrainFilm:
        from legalign.training.datasets import AnnotatedFilm

        out = self.film_augment(
            AnnotatedFilm(
                source=film.source,
                image=film.image,
                legs=list(film.legs),
                spacing_mm=film.spacing_mm,
                mirrored=film.mirrored,
            ),
            rng,
        )
        return TrainFilm(
            image=out.image,
            legs=list(out.legs),
            source=out.source,
            spacing_mm=out.spacing_mm,
            mirrored=out.mirrored,
        )

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ts, ms = zip(*(self.one() for _ in range(n)), strict=True)
        return np.stack(xs)[:, None], np.stack(ts), np.stack(ms)


class Prefetcher:
    """Makes batches in a background thread (OpenCV and NumPy release the GIL)."""

    def __init__(self, sampler: Sampler, batch_size: int, depth: int = 2) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.sampler, self.batch_size = sampler, batch_size
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.sampler.batch(self.batch_size)
            except Exception as exc:  # noqa: BLE001 - surfaced in the main thread
                item = exc
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def get(self):
        item = self.q.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def heatmap_loss(pred, target, mask, pos_weight: float):
    """Masked, positive-weighted MSE (mean over batch, channels and pixels)."""
    w = 1.0 + pos_weight * target
    err = (pred - target) ** 2 * w
    m = mask[:, :, None, None]
    return (err * m).sum() / (m.sum() * pred.shape[-1] * pred.shape[-2]).clamp_min(1.0)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def pick_device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local}")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available")
    return dev


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def train(
    cfg: TrainConfig,
    output_dir: str | Path | None = None,
    resume: bool = False,
    log=print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the configured stages; returns {"stages": {name: [losses...]}, "eval": {...}}."""
    import torch
    import torch.distributed as dist

    from legalign.models.checkpoint import (
        build_nets,
        load_checkpoint,
        make_checkpoint,
        save_checkpoint,
    )

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
    is_main = rank == 0
    out = resolve_path(output_dir or cfg.output_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    spec = cfg.model
    coarse_net, fine_net = build_nets(spec, pretrained=cfg.pretrained)
    nets = {"coarse": coarse_net.to(device), "fine": fine_net.to(device)}
    cfg_dict = config_to_dict(cfg)

    state: dict[str, Any] = {"stage_index": 0, "step": 0}
    last = out / "last.pt"
    if cfg.init_from is not None and not resume:
        init_weights(nets, spec, cfg.init_from, log=log if is_main else (lambda *_: None))
    if resume:
        if not last.exists():
            raise ConfigError(f"--resume: no checkpoint at {last}")
        ck = load_checkpoint(last)
        nets["coarse"].load_state_dict(ck["coarse"])
        nets["fine"].load_state_dict(ck["fine"])
        state = dict(ck.get("train_state", state))
        log(f"resumed from {last}: stage {state['stage_index']}, step {state['step']}")

    data = load_films(cfg.train_data, log=log if is_main else (lambda *_: None))
    film_augment = None
    if cfg.augmentation is not None:
        from legalign.training.augment import build_augmentation

        film_augment = build_augmentation(cfg.augmentation)
    metrics_path = out / "metrics.jsonl"

    def write_metrics(rec: dict) -> None:
        if is_main:
            with metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")

    history: dict[str, list[float]] = {}
    for si in range(int(state["stage_index"]), len(cfg.stages)):
        stage = cfg.stages[si]
        scfg: StageConfig = getattr(cfg, stage)
        net = nets[stage]
        net.train()
        model = net
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None
            )
        opt = torch.optim.AdamW(net.parameters(), lr=scfg.lr, weight_decay=scfg.weight_decay)
        start = int(state["step"]) if si == int(state["stage_index"]) else 0
        sampler = Sampler(
            stage,
            data,
            spec,
            scfg,
            seed=cfg.seed * 1000 + si * 100 + rank,
            film_augment=film_augment,
        )
        if start > 0 and "opt" in state:
            opt.load_state_dict(state["opt"])
            sampler.rng.bit_generator.state = state["rng"]
        use_amp = bool(cfg.amp and device.type == "cuda")
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        prefetch = Prefetcher(sampler, scfg.batch_size)
        losses: list[float] = []
        t0 = time.time()
        bar = None
        if progress and is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=scfg.steps,
                initial=start,
                desc=f"train {stage}",
                unit="step",
                dynamic_ncols=True,
            )
        try:
            for step in range(start, scfg.steps):
                lr = scfg.lr * lr_factor(step, scfg.steps, scfg.warmup_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                x, t, m = prefetch.get()
                x = torch.from_numpy(x).to(device)
                t = torch.from_numpy(t).to(device)
                m = torch.from_numpy(m).to(device)
                with torch.autocast(device_type=device.type, enabled=use_amp):
                    y = model(x)
                loss = heatmap_loss(y.float(), t, m, scfg.pos_weight)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                lv = float(loss.detach())
                losses.append(lv)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.5f}", lr=f"{lr:.2e}")
                done = step + 1
                if done % cfg.log_every == 0 or done == scfg.steps:
                    el = time.time() - t0
                    recent = losses[-cfg.log_every :]
                    write_metrics(
                        {
                            "stage": stage,
                            "step": done,
                            "loss": float(np.mean(recent)),
                            "lr": lr,
                            "samples_per_s": (done - start) * scfg.batch_size / max(el, 1e-9),
                            "elapsed_s": el,
                        }
                    )
                if is_main and (done % cfg.checkpoint_every == 0 or done == scfg.steps):
                    nxt = {"stage_index": si, "step": done}
                    if done == scfg.steps:
                        nxt = {"stage_index": si + 1, "step": 0}
                    else:
                        nxt["opt"] = opt.state_dict()
                        nxt["rng"] = _rng_state(sampler.rng)
                    save_checkpoint(
                        make_checkpoint(
                            spec, nets["coarse"], nets["fine"], cfg_dict, train_state=nxt
                        ),
                        last,
                    )
        finally:
            prefetch.close()
            if bar is not None:
                bar.close()
        net.eval()
        history[stage] = losses
        state = {"stage_index": si + 1, "step": 0}

    result: dict[str, Any] = {"stages": history, "output_dir": str(out)}
    if is_main:
        final = make_checkpoint(spec, nets["coarse"], nets["fine"], cfg_dict)
        save_checkpoint(final, out / "final.pt")
        if cfg.export.path:
            dest = (
                resolve_path(cfg.export.path)
                if Path(cfg.export.path).is_absolute()
                else REPO_ROOT / cfg.export.path
            )
            save_checkpoint(
                make_checkpoint(spec, nets["coarse"], nets["fine"], cfg_dict, half=cfg.export.half),
                dest,
            )
            log(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
            result["export"] = str(dest)
        if cfg.val_data:
            from legalign.pipeline.locate import Locator

            loc = Locator(spec, nets["coarse"].cpu(), nets["fine"].cpu(), device="cpu")
            evals = {}
            for entry, (films, _) in zip(
                cfg.val_data, load_films(cfg.val_data, log=log), strict=True
            ):
                evals[entry.label] = evaluate_films(loc, films)
                log(format_eval(entry.label, evals[entry.label]))
            result["eval"] = evals
            (out / "eval.json").write_text(json.dumps(evals, indent=2), encoding="utf-8")
            write_metrics({"eval": evals})
    if distributed:
        dist.destroy_process_group()
    return result


def init_weights(nets: dict[str, Any], spec: LocatorSpec, init_from: str, log=print) -> None:
    """Load a checkpoint's coarse and fine weights into ``nets`` (fine-tuning)."""
    from legalign.models.checkpoint import load_checkpoint
    from legalign.pipeline.errors import InputError

    path = None if init_from == "default" else resolve_path(init_from)
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


def _match_legs(pred, gt):
    """Pairs (gt leg, predicted leg) by nearest knee (or any shared landmark)."""
    pairs = []
    used: set[int] = set()
    for g in gt:
        best, bd = None, float("inf")
        for j, p in enumerate(pred):
            if j in used:
                continue
            common = [
                n
                for n in ("knee_centre", "femoral_head", "ankle_centre")
                if n in g.points and n in p.points
            ]
            if not common:
                continue
            d = float(np.mean([np.hypot(*np.subtract(g.points[n], p.points[n])) for n in common]))
            if d < bd:
                best, bd = j, d
        if best is not None:
            used.add(best)
            pairs.append((g, pred[best]))
        else:
            pairs.append((g, None))
    return pairs


def evaluate_films(locator, films: list[TrainFilm], batch: int = 8) -> dict[str, Any]:
    """Landmark errors (px, and mm where the film has a spacing), HKA errors, side accuracy."""
    from legalign.pipeline.landmarks import LANDMARK_NAMES
    from legalign.pipeline.measure import measure_leg
    from legalign.pipeline.radiograph import Radiograph

    err_px: dict[str, list[float]] = {n: [] for n in LANDMARK_NAMES}
    err_mm: dict[str, list[float]] = {n: [] for n in LANDMARK_NAMES}
    hka_err: list[float] = []
    side_ok, legs_total, legs_found = 0, 0, 0
    t_total = 0.0
    for i in range(0, len(films), batch):
        chunk = films[i : i + batch]
        # the film's orientation as its DICOM header would give it (None when unknown)
        rgs = [
            Radiograph(path=f.source, pixels=f.image, spacing_mm=f.spacing_mm, mirrored=f.mirrored)
            for f in chunk
        ]
        t0 = time.perf_counter()
        preds = locator.locate_batch(rgs)
        t_total += time.perf_counter() - t0
        for f, pred in zip(chunk, preds, strict=True):
            for g, p in _match_legs(pred, f.legs):
                legs_total += 1
                if p is None:
                    continue
                legs_found += 1
                side_ok += int(p.side == g.side)
                for n, gxy in g.points.items():
                    if n in p.points:
                        e = float(np.hypot(*np.subtract(p.points[n], gxy)))
                        err_px[n].append(e)
                        if f.spacing_mm:
                            err_mm[n].append(e * f.spacing_mm)
                if g.has("femoral_head", "knee_centre", "ankle_centre") and p.has(
                    "femoral_head", "knee_centre", "ankle_centre"
                ):
                    hg = measure_leg(g, None).hka_deg
                    hp = measure_leg(p, None).hka_deg
                    if hg is not None and hp is not None:
                        hka_err.append(abs(hp - hg))

    def stats(v: list[float]) -> dict[str, float] | None:
        if not v:
            return None
        a = np.asarray(v)
        return {
            "mean": float(a.mean()),
            "median": float(np.median(a)),
            "max": float(a.max()),
            "n": len(v),
        }

    return {
        "films": len(films),
        "legs": legs_total,
        "legs_found": legs_found,
        "side_accuracy": side_ok / max(1, legs_found),
        "mre_px": {n: stats(v) for n, v in err_px.items()},
        "mre_mm": {n: stats(v) for n, v in err_mm.items() if v},
        "hka_abs_err_deg": stats(hka_err),
        "seconds_per_film": t_total / max(1, len(films)),
    }


def format_eval(name: str, ev: dict[str, Any]) -> str:
    lines = [
        f"eval {name}: {ev['films']} films, legs found {ev['legs_found']}/{ev['legs']}, "
        f"side accuracy {ev['side_accuracy']:.3f}, {ev['seconds_per_film']:.3f} s/film"
    ]
    for n, s in ev["mre_px"].items():
        if s:
            mm = ev["mre_mm"].get(n)
            extra = f"  ({mm['mean']:.2f} mm mean, {mm['max']:.2f} max)" if mm else ""
            lines.append(
                f"  {n:24s} {s['mean']:7.2f} px mean {s['median']:7.2f} median {s['max']:7.2f} max{extra}"
            )
    h = ev["hka_abs_err_deg"]
    if h:
        lines.append(
            f"  HKA abs error: {h['mean']:.3f} deg mean, {h['median']:.3f} median, {h['max']:.3f} max"
        )
    return "\n".join(lines)
