"""Evaluate a locator against annotated films.

Reports, per landmark, the mean radial error (pixels, and mm where the spacing is known)
and the success rates at 2, 2.5, 3 and 4 mm; the errors of HKA, MPTA, mLDFA and the WBL
ratio computed from predicted landmarks against those computed from the ground-truth
landmarks (``pipeline.measure.measure_leg`` on both); and the failures (films or legs
with no prediction, landmarks the prediction lacks, radial errors above a threshold,
sides predicted wrong), listed by file.  Writes ``report.json``, a Bland-Altman plot
of HKA and a histogram of radial errors as PNG.

The metric code is pure (``evaluate_leg``, ``summarise``, ...) and works on
``LegLandmarks``; ``evaluate_locator`` runs a locator over a dataset and feeds them.

Spacing: a film's own ``spacing_mm`` is used; ``assumed_spacing_mm`` fills in for films
without one (e.g. the oai-sample films, roughly 1 mm per pixel) and the report says how
many films used it.  Films without any spacing count in the pixel statistics only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from legalign.pipeline.coarse_to_fine import locate_radiographs
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.geometry_config import load_geometry_config
from legalign.pipeline.landmarks import LANDMARK_NAMES, LegLandmarks
from legalign.pipeline.locate import Locator
from legalign.pipeline.measure import measure_leg
from legalign.training.datasets import load_dataset

SUCCESS_THRESHOLDS_MM: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
MEASURES: tuple[str, ...] = ("hka_deg", "mpta_deg", "mldfa_deg", "wbl_ratio_pct")
EXTRA_MEASURES: tuple[str, ...] = ("jlca_deg", "mad_mm")


@dataclass
class LegEvaluation:
    """One ground-truth leg against its matched prediction (if any)."""

    source: str
    side: str
    spacing_mm: float | None
    spacing_assumed: bool = False
    predicted: bool = False
    pred_side: str | None = None
    errors_px: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # in the truth, not predicted
    gt_measures: dict[str, float | None] = field(default_factory=dict)
    pred_measures: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def errors_mm(self) -> dict[str, float]:
        if self.spacing_mm is None:
            return {}
        return {n: e * self.spacing_mm for n, e in self.errors_px.items()}


@dataclass
class Failure:
    source: str
    side: str | None
    reason: str


# ---------------------------------------------------------------- matching


def _mean_point(leg: LegLandmarks) -> np.ndarray | None:
    if not leg.points:
        return None
    return np.mean(np.array(list(leg.points.values()), dtype=np.float64), axis=0)


def _leg_distance(a: LegLandmarks, b: LegLandmarks) -> float:
    common = [n for n in a.points if n in b.points]
    if common:
        d = [math.dist(a.points[n], b.points[n]) for n in common]
        return float(np.mean(d))
    ma, mb = _mean_point(a), _mean_point(b)
    if ma is None or mb is None:
        return math.inf
    return float(np.hypot(*(ma - mb)))


def match_legs(
    truth: Sequence[LegLandmarks], pred: Sequence[LegLandmarks]
) -> tuple[list[tuple[LegLandmarks, LegLandmarks | None]], list[LegLandmarks]]:
    """Pair each ground-truth leg with a predicted leg by position (mean distance of the
    landmarks both have, else of their centroids; greedy, closest pairs first), the side
    breaking ties.  Position, not the side label, decides, so a leg whose side was
    predicted wrong is still compared with its own truth (and reported as a wrong
    side).  Returns ``(pairs, unmatched_predictions)``."""
    cand = sorted(
        (_leg_distance(t, p), t.side != p.side, i, j)
        for i, t in enumerate(truth)
        for j, p in enumerate(pred)
    )
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for d, _, i, j in cand:
        if i in pairs or j in used or not math.isfinite(d):
            continue
        pairs[i] = j
        used.add(j)
    out = [(t, pred[pairs[i]] if i in pairs else None) for i, t in enumerate(truth)]
    return out, [p for j, p in enumerate(pred) if j not in used]


# ---------------------------------------------------------------- per leg


def radial_errors(truth: LegLandmarks, pred: LegLandmarks) -> dict[str, float]:
    """Euclidean distance in pixels for every landmark present in both."""
    return {
        n: math.dist(truth.points[n], pred.points[n])
        for n in LANDMARK_NAMES
        if n in truth.points and n in pred.points
    }


def _measures(leg: LegLandmarks, spacing_mm: float | None, cfg: Any) -> dict[str, float | None]:
    m = measure_leg(leg, spacing_mm, cfg)
    return {k: getattr(m, k, None) for k in (*MEASURES, *EXTRA_MEASURES)}


def evaluate_leg(
    source: str,
    truth: LegLandmarks,
    pred: LegLandmarks | None,
    spacing_mm: float | None,
    *,
    spacing_assumed: bool = False,
    fail_mm: float = 10.0,
    fail_px: float = 20.0,
    geometry_cfg: Any = None,
    measure: Callable[[LegLandmarks, float | None, Any], dict] | None = None,
) -> LegEvaluation:
    """Compare one leg.  A landmark's radial error above ``fail_mm`` (when the spacing
    is known) or ``fail_px`` (when not) makes the leg a failure, as does no prediction,
    a predicted side that differs from the truth, or a landmark the prediction lacks."""

    measure = measure or _measures
    ev = LegEvaluation(source, truth.side, spacing_mm, spacing_assumed)
    try:
        ev.gt_measures = measure(truth, spacing_mm, geometry_cfg)
    except LegalignError as exc:
        ev.failures.append(f"ground truth not measurable: {exc}")
    if pred is None:
        ev.failures.append("no prediction")
        ev.missing = [n for n in LANDMARK_NAMES if n in truth.points]
        return ev
    ev.predicted = True
    ev.pred_side = pred.side
    if pred.side != truth.side:
        ev.failures.append(f"predicted side {pred.side!r}")
    ev.errors_px = radial_errors(truth, pred)
    ev.missing = [n for n in LANDMARK_NAMES if n in truth.points and n not in pred.points]
    if ev.missing:
        ev.failures.append("not predicted: " + ", ".join(ev.missing))
    if spacing_mm is not None:
        unit, limit, scale = "mm", fail_mm, spacing_mm
    else:
        unit, limit, scale = "px", fail_px, 1.0
    off = sorted(
        ((e * scale, n) for n, e in ev.errors_px.items() if e * scale > limit), reverse=True
    )
    if len(off) <= 2:
        for d, n in off:
            ev.failures.append(f"{n} off by {d:.1f} {unit} (> {limit:g} {unit})")
    else:
        d, n = off[0]
        ev.failures.append(
            f"{len(off)} landmarks off by > {limit:g} {unit} (worst {n}, {d:.1f} {unit})"
        )
    try:
        ev.pred_measures = measure(pred, spacing_mm, geometry_cfg)
    except LegalignError as exc:
        ev.failures.append(f"prediction not measurable: {exc}")
    return ev


# ---------------------------------------------------------------- summaries


def _stats(values: Iterable[float]) -> dict[str, float | int | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "max": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "median": float(np.median(v)),
        "max": float(v.max()),
    }


def landmark_summary(legs: Sequence[LegEvaluation]) -> dict[str, dict[str, Any]]:
    """Per landmark (and ``"all"``): MRE in px and mm, success rates at 2/2.5/3/4 mm.

    Success rates are over the landmarks with a known spacing; a landmark the prediction
    lacks counts as a miss there (and in ``n_missing``)."""
    out: dict[str, dict[str, Any]] = {}
    for name in (*LANDMARK_NAMES, "all"):
        names = LANDMARK_NAMES if name == "all" else (name,)
        px = [e for ev in legs for n, e in ev.errors_px.items() if n in names]
        mm = [e for ev in legs for n, e in ev.errors_mm.items() if n in names]
        missing_mm = sum(
            1 for ev in legs if ev.spacing_mm is not None for n in ev.missing if n in names
        )
        n_missing = sum(1 for ev in legs for n in ev.missing if n in names)
        if not px and not n_missing:
            continue
        s_px, s_mm = _stats(px), _stats(mm)
        denom = len(mm) + missing_mm
        out[name] = {
            "n": len(px),
            "n_missing": n_missing,
            "mre_px": s_px["mean"],
            "sd_px": s_px["sd"],
            "median_px": s_px["median"],
            "max_px": s_px["max"],
            "n_mm": len(mm),
            "mre_mm": s_mm["mean"],
            "sd_mm": s_mm["sd"],
            "median_mm": s_mm["median"],
            "max_mm": s_mm["max"],
            "success_rate": {
                f"{t:g}mm": (sum(1 for e in mm if e <= t) / denom if denom else None)
                for t in SUCCESS_THRESHOLDS_MM
            },
        }
    return out


def measurement_summary(legs: Sequence[LegEvaluation]) -> dict[str, dict[str, Any]]:
    """Per measurement: predicted minus ground truth over legs where both exist:
    bias (mean), SD, MAE, max |error|, 95 % limits of agreement, and the ground truth's
    own values for context."""
    out: dict[str, dict[str, Any]] = {}
    for name in (*MEASURES, *EXTRA_MEASURES):
        pairs = [
            (ev.gt_measures.get(name), ev.pred_measures.get(name))
            for ev in legs
            if ev.gt_measures.get(name) is not None and ev.pred_measures.get(name) is not None
        ]
        if not pairs and name in EXTRA_MEASURES:
            continue
        d = np.array([p - g for g, p in pairs], dtype=np.float64)  # type: ignore[operator]
        if d.size == 0:
            out[name] = {"n": 0}
            continue
        sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
        bias = float(d.mean())
        out[name] = {
            "n": int(d.size),
            "bias": bias,
            "sd": sd,
            "mae": float(np.abs(d).mean()),
            "max_abs": float(np.abs(d).max()),
            "loa_low": bias - 1.96 * sd,
            "loa_high": bias + 1.96 * sd,
            "within_1": float(np.mean(np.abs(d) <= 1.0)),
            "within_2": float(np.mean(np.abs(d) <= 2.0)),
        }
    return out


def summarise(
    legs: Sequence[LegEvaluation],
    failures: Sequence[Failure] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report: landmarks, measurements, failures (by file), counts."""
    leg_failures = [
        Failure(ev.source, ev.side, "; ".join(ev.failures)) for ev in legs if ev.failures
    ]
    all_failures = [*leg_failures, *failures]
    sources = sorted({ev.source for ev in legs} | {f.source for f in failures})
    report: dict[str, Any] = {
        "n_films": len(sources),
        "n_legs": len(legs),
        "n_legs_predicted": sum(ev.predicted for ev in legs),
        "side_accuracy": (
            sum(ev.pred_side == ev.side for ev in legs if ev.predicted)
            / sum(ev.predicted for ev in legs)
            if any(ev.predicted for ev in legs)
            else None
        ),
        "n_films_with_spacing": len({ev.source for ev in legs if ev.spacing_mm is not None}),
        "n_films_assumed_spacing": len({ev.source for ev in legs if ev.spacing_assumed}),
        "success_thresholds_mm": list(SUCCESS_THRESHOLDS_MM),
        "landmarks": landmark_summary(legs),
        "measurements": measurement_summary(legs),
        "n_failures": len(all_failures),
        "failures": [asdict(f) for f in all_failures],
        "legs": [
            {
                "source": ev.source,
                "side": ev.side,
                "spacing_mm": ev.spacing_mm,
                "spacing_assumed": ev.spacing_assumed,
                "predicted": ev.predicted,
                "pred_side": ev.pred_side,
                "errors_px": ev.errors_px,
                "gt": ev.gt_measures,
                "pred": ev.pred_measures,
                "failures": ev.failures,
            }
            for ev in legs
        ],
    }
    if extra:
        report.update(extra)
    return report


# ---------------------------------------------------------------- text and plots


def _f(v: Any, nd: int = 2, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}"
    return f"{v:.{nd}f}"


def format_report(report: dict[str, Any], max_failures: int = 20) -> str:
    """A readable text table of the report."""
    lines = [
        f"films {report['n_films']}, legs {report['n_legs']} "
        f"({report['n_legs_predicted']} predicted, side right in "
        f"{_f(report['side_accuracy'], pct=True)} %), films with spacing "
        f"{report['n_films_with_spacing']} ({report['n_films_assumed_spacing']} assumed)",
        "",
        f"{'landmark':<24}{'n':>5}{'miss':>5}{'MRE px':>8}{'MRE mm':>8}{'SD mm':>7}"
        + "".join(f"{'SR' + format(t, 'g'):>7}" for t in SUCCESS_THRESHOLDS_MM),
    ]
    for name, s in report["landmarks"].items():
        sr = "".join(f"{_f(v, pct=True):>7}" for v in s["success_rate"].values())
        lines.append(
            f"{name:<24}{s['n']:>5}{s['n_missing']:>5}{_f(s['mre_px']):>8}"
            f"{_f(s['mre_mm']):>8}{_f(s['sd_mm']):>7}{sr}"
        )
    lines += [
        "",
        f"{'measurement (pred - gt)':<24}{'n':>5}{'bias':>8}{'SD':>7}{'MAE':>7}{'max':>7}"
        f"{'LoA low':>9}{'LoA high':>9}",
    ]
    for name, s in report["measurements"].items():
        if not s.get("n"):
            lines.append(f"{name:<24}{0:>5}")
            continue
        lines.append(
            f"{name:<24}{s['n']:>5}{_f(s['bias']):>8}{_f(s['sd']):>7}{_f(s['mae']):>7}"
            f"{_f(s['max_abs']):>7}{_f(s['loa_low']):>9}{_f(s['loa_high']):>9}"
        )
    lines += ["", f"failures: {report['n_failures']}"]
    for f in report["failures"][:max_failures]:
        side = f" [{f['side']}]" if f["side"] else ""
        lines.append(f"  {f['source']}{side}: {f['reason']}")
    if report["n_failures"] > max_failures:
        lines.append(f"  ... {report['n_failures'] - max_failures} more in report.json")
    return "\n".join(lines)


def bland_altman_plot(
    truth: Sequence[float], pred: Sequence[float], path: str | Path, label: str = "HKA (deg)"
) -> Path:
    """Bland-Altman plot (difference pred - truth against their mean) as PNG."""

    matplotlib.use("Agg", force=False)

    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    try:
        if t.size:
            mean, diff = (t + p) / 2, p - t
            bias = float(diff.mean())
            sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
            ax.scatter(mean, diff, s=14, alpha=0.7)
            ax.axhline(bias, color="k", lw=1, label=f"bias {bias:+.2f}")
            for v in (bias - 1.96 * sd, bias + 1.96 * sd):
                ax.axhline(v, color="r", ls="--", lw=1)
            ax.plot(
                [],
                [],
                "r--",
                lw=1,
                label=f"95% LoA {bias - 1.96 * sd:+.2f} / {bias + 1.96 * sd:+.2f}",
            )
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no legs measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"mean of prediction and ground truth, {label}")
        ax.set_ylabel(f"prediction - ground truth, {label}")
        ax.set_title(f"Bland-Altman: {label} (n={t.size})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def error_histogram(errors: Sequence[float], path: str | Path, unit: str = "mm") -> Path:
    """Histogram of radial errors (all landmarks) as PNG, with the success thresholds."""

    matplotlib.use("Agg", force=False)

    e = np.asarray(errors, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    try:
        if e.size:
            hi = float(np.percentile(e, 99)) if e.size > 10 else float(e.max())
            bins = np.linspace(0, max(hi, 1e-6) * 1.05, 40)
            ax.hist(np.clip(e, 0, bins[-1]), bins=bins, color="tab:blue", alpha=0.8)  # type: ignore[arg-type]
            if unit == "mm":
                for t in SUCCESS_THRESHOLDS_MM:
                    ax.axvline(t, color="r", ls=":", lw=1)
        else:
            ax.text(0.5, 0.5, "no errors", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"radial error ({unit}); last bin holds everything above")
        ax.set_ylabel("landmarks")
        ax.set_title(
            f"Radial error, all landmarks (n={e.size}, mean {e.mean():.2f} {unit})"
            if e.size
            else "Radial error"
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_outputs(
    report: dict[str, Any], legs: Sequence[LegEvaluation], out_dir: str | Path
) -> dict[str, Path]:
    """``report.json``, ``bland_altman_hka.png`` and ``error_histogram.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json"}
    paths["report"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    hka: list[tuple[float, float]] = []
    for ev in legs:
        g, p = ev.gt_measures.get("hka_deg"), ev.pred_measures.get("hka_deg")
        if g is not None and p is not None:
            hka.append((g, p))
    paths["bland_altman"] = bland_altman_plot(
        [g for g, _ in hka], [p for _, p in hka], out / "bland_altman_hka.png"
    )
    with_mm = all(ev.spacing_mm is not None for ev in legs if ev.errors_px)
    errs = [e for ev in legs for e in (ev.errors_mm if with_mm else ev.errors_px).values()]
    paths["histogram"] = error_histogram(
        errs, out / "error_histogram.png", "mm" if with_mm else "px"
    )
    return paths


# ---------------------------------------------------------------- running a locator


def evaluate_films(
    films: Iterable[Any],
    predict: Callable[[Any], list[LegLandmarks]],
    *,
    assumed_spacing_mm: float | None = None,
    fail_mm: float = 10.0,
    fail_px: float = 20.0,
    geometry_cfg: Any = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[LegEvaluation], list[Failure], dict[str, Any]]:
    """Run ``predict(radiograph)`` on every ``AnnotatedFilm`` and evaluate each leg.

    A ``LegalignError`` from the predictor is recorded as a failure of that film (every
    leg then counts as not predicted); other exceptions propagate."""

    legs: list[LegEvaluation] = []
    failures: list[Failure] = []
    seconds: list[float] = []
    for i, film in enumerate(films):
        spacing, assumed = film.spacing_mm, False
        if spacing is None and assumed_spacing_mm is not None:
            spacing, assumed = float(assumed_spacing_mm), True
        radiograph = film.to_radiograph(spacing, "assumed" if assumed else None)
        t0 = time.perf_counter()
        try:
            pred = list(predict(radiograph))
        except LegalignError as exc:
            failures.append(Failure(film.source, None, f"prediction failed: {exc}"))
            pred = []
        seconds.append(time.perf_counter() - t0)
        pairs, extra = match_legs(film.legs, pred)
        for truth, p in pairs:
            legs.append(
                evaluate_leg(
                    film.source,
                    truth,
                    p,
                    spacing,
                    spacing_assumed=assumed,
                    fail_mm=fail_mm,
                    fail_px=fail_px,
                    geometry_cfg=geometry_cfg,
                )
            )
        for p in extra:
            failures.append(Failure(film.source, p.side, "predicted a leg that is not annotated"))
        if progress is not None:
            progress(i + 1)
    timing = {
        "seconds_per_film_mean": float(np.mean(seconds)) if seconds else None,
        "seconds_per_film_max": float(np.max(seconds)) if seconds else None,
    }
    return legs, failures, timing


def evaluate_locator(
    checkpoint: str | Path | None,
    dataset: str | Path,
    out_dir: str | Path | None = None,
    *,
    assumed_spacing_mm: float | None = None,
    device: str = "cpu",
    fail_mm: float = 10.0,
    fail_px: float = 20.0,
    limit: int | None = None,
    geometry_config: str | Path | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load the locator from ``checkpoint``, evaluate it on ``dataset`` (a
    ``load_dataset`` spec, opened with ``dataset_options``), write the outputs to
    ``out_dir`` when given; returns the report (with ``"outputs"`` naming the files
    written)."""

    geometry_cfg = load_geometry_config(geometry_config)
    ds = load_dataset(dataset, **(dataset_options or {}))
    n = len(ds) if limit is None else min(len(ds), int(limit))

    locator = Locator.from_checkpoint(checkpoint, torch.device(device))
    with tqdm(total=n, desc="evaluate", unit="film", disable=None, leave=False) as bar:
        legs, failures, timing = evaluate_films(
            (ds[i] for i in range(n)),
            lambda radiograph: locate_radiographs(locator, [radiograph])[0],
            assumed_spacing_mm=assumed_spacing_mm,
            fail_mm=fail_mm,
            fail_px=fail_px,
            geometry_cfg=geometry_cfg,
            progress=lambda k: bar.update(1),
        )
    report = summarise(
        legs,
        failures,
        extra={
            "checkpoint": str(checkpoint) if checkpoint is not None else "default",
            "dataset": str(dataset),
            "dataset_options": dict(dataset_options or {}),
            "assumed_spacing_mm": assumed_spacing_mm,
            "fail_mm": fail_mm,
            "fail_px": fail_px,
            "device": device,
            **timing,
        },
    )
    if out_dir is not None:
        report["outputs"] = {k: str(v) for k, v in write_outputs(report, legs, out_dir).items()}
        # rewrite with the output list included
        Path(report["outputs"]["report"]).write_text(
            json.dumps(report, indent=2, allow_nan=False) + "\n"
        )
    return report
