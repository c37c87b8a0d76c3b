"""The training engine: batches, loss, learning-rate schedule and one stage's steps.

``training.train`` (the configs and the ``train`` sequence) calls :func:`train_stage` for
each stage, as torchvision's references split ``engine.py`` (one epoch) from
``train.py`` (the run).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from legalign.models.checkpoint import make_checkpoint, save_checkpoint
from legalign.models.spec import LocatorSpec
from legalign.pipeline.errors import ConfigError
from legalign.training.datasets import AnnotatedFilm
from legalign.training.samples import SampleAug, coarse_sample, fine_sample


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


class Sampler:
    """Draws batches for one stage from weighted datasets; reproducible from its seed."""

    def __init__(
        self,
        stage: str,
        data: list[tuple[list[AnnotatedFilm], float]],
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

    def one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        for _ in range(100):
            films = self.datasets[int(rng.choice(len(self.datasets), p=self.ds_p))][0]
            film = films[int(rng.integers(len(films)))]
            if self.film_augment is not None:
                film = self.film_augment(film, rng)
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

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, ts, ms = zip(*(self.one() for _ in range(n)), strict=True)
        return np.stack(xs)[:, None], np.stack(ts), np.stack(ms)


class Prefetcher:
    """Makes batches in a background thread (OpenCV and NumPy release the GIL)."""

    def __init__(self, sampler: Sampler, batch_size: int, depth: int = 2) -> None:
        self.q: queue.Queue[tuple[np.ndarray, np.ndarray, np.ndarray] | Exception] = queue.Queue(
            maxsize=depth
        )
        self.stop = threading.Event()
        self.sampler, self.batch_size = sampler, batch_size
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while not self.stop.is_set():
            item: tuple[np.ndarray, np.ndarray, np.ndarray] | Exception
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

    def get(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local}")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available")
    return dev


@dataclass
class RunContext:
    """Where and how a training run runs (one process of a torchrun job, or alone)."""

    out: Path
    device: torch.device
    rank: int = 0
    distributed: bool = False
    log: Callable[..., None] = print
    progress: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def write_metrics(self, rec: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (rank 0 only)."""
        if self.is_main:
            with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")


@dataclass
class StageState:
    """Where a (resumed) run stands: the stage to run next and its first step, with the
    optimiser and sampler state of a stage interrupted in the middle."""

    stage_index: int = 0
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # "opt", "rng"

    def to_dict(self) -> dict[str, Any]:
        return {"stage_index": self.stage_index, "step": self.step, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageState:
        extra = {k: v for k, v in d.items() if k not in ("stage_index", "step")}
        return cls(int(d.get("stage_index", 0)), int(d.get("step", 0)), extra)


class ExtraTarget(Protocol):
    """A second kind of sample trained together with the heatmap samples (the weak HKA
    target of ``training.angle_target``): its inputs join each batch, so one forward
    pass serves both (as DDP needs), and its loss is added to the heatmap loss.  Its
    ``rng`` state is saved with a resumable checkpoint."""

    rng: np.random.Generator

    def batch(self) -> Any:
        """The next extra batch; it has ``crops`` (N, 1, S, S)."""
        ...

    def loss(self, heatmaps: torch.Tensor, batch: Any) -> tuple[torch.Tensor, float]:
        """(loss to add, a figure to log) for the network's output on ``batch.crops``."""
        ...


def _freeze_batchnorm(net: torch.nn.Module) -> None:
    """Keep the BatchNorm statistics of a trained network (fine-tuning)."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_stage(
    run: RunContext,
    stage: str,
    si: int,
    nets: dict[str, torch.nn.Module],
    spec: LocatorSpec,
    scfg: StageConfig,
    sampler: Sampler,
    state: StageState,
    *,
    amp: bool,
    log_every: int,
    checkpoint_every: int,
    config: dict[str, Any],
    net_name: str | None = None,
    extra: ExtraTarget | None = None,
    freeze_batchnorm: bool = False,
) -> list[float]:
    """Train ``nets[net_name or stage]`` for the stage's remaining steps; returns the
    step losses.

    ``extra``: a second target trained in the same batches (its figure is logged as
    ``extra``); ``freeze_batchnorm``: keep the network's BatchNorm statistics.
    Writes ``metrics.jsonl`` every ``log_every`` steps and the resumable ``last.pt``
    every ``checkpoint_every`` steps and at the end of the stage (rank 0 only).
    """
    device = run.device
    net = nets[net_name or stage]
    net.train()
    if freeze_batchnorm:
        _freeze_batchnorm(net)
    model = net
    if run.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(net.parameters(), lr=scfg.lr, weight_decay=scfg.weight_decay)
    start = state.step if si == state.stage_index else 0
    if start > 0 and "opt" in state.extra:
        opt.load_state_dict(state.extra["opt"])
        sampler.rng.bit_generator.state = state.extra["rng"]
        if extra is not None and "extra_rng" in state.extra:
            extra.rng.bit_generator.state = state.extra["extra_rng"]
    use_amp = bool(amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    prefetch = Prefetcher(sampler, scfg.batch_size)
    losses: list[float] = []
    figures: list[float] = []
    t0 = time.time()
    bar = None
    if run.progress and run.is_main:
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
            x, t, m = (torch.from_numpy(a).to(device) for a in prefetch.get())
            xb = extra.batch() if extra is not None else None
            if xb is not None:
                x = torch.cat([x, torch.from_numpy(xb.crops).to(device)])
            with torch.autocast(device_type=device.type, enabled=use_amp):
                y = model(x)
            loss = heatmap_loss(y[: len(t)].float(), t, m, scfg.pos_weight)
            if extra is not None:
                extra_loss, figure = extra.loss(y[len(t) :], xb)
                loss = loss + extra_loss
                figures.append(figure)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lv = float(loss.detach())
            losses.append(lv)
            if bar is not None:
                bar.update(1)
                shown = {"extra": f"{figures[-1]:.3f}"} if figures else {}
                bar.set_postfix(loss=f"{lv:.5f}", lr=f"{lr:.2e}", **shown)
            done = step + 1
            if done % log_every == 0 or done == scfg.steps:
                el = time.time() - t0
                run.write_metrics(
                    {
                        "stage": stage,
                        "step": done,
                        "loss": float(np.mean(losses[-log_every:])),
                        "lr": lr,
                        "samples_per_s": (done - start) * scfg.batch_size / max(el, 1e-9),
                        "elapsed_s": el,
                        **({"extra": float(np.mean(figures[-log_every:]))} if figures else {}),
                    }
                )
            if run.is_main and (done % checkpoint_every == 0 or done == scfg.steps):
                if done == scfg.steps:
                    nxt = StageState(si + 1, 0)
                else:
                    saved = {"opt": opt.state_dict(), "rng": sampler.rng.bit_generator.state}
                    if extra is not None:
                        saved["extra_rng"] = extra.rng.bit_generator.state
                    nxt = StageState(si, done, saved)
                save_checkpoint(
                    make_checkpoint(
                        spec, nets["coarse"], nets["fine"], config, train_state=nxt.to_dict()
                    ),
                    run.out / "last.pt",
                )
    finally:
        prefetch.close()
        if bar is not None:
            bar.close()
    net.eval()
    return losses
