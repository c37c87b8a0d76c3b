"""The run summary: counts, failures by reason, throughput, written as summary.json and
printed as text.  Counts are over the whole results (this run and resumed earlier ones);
throughput is for the files processed in this invocation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from legalign.pipeline.results import DISCLAIMER
from legalign.pipeline.safe_text import printable

EXAMPLES_PER_REASON = 5  # file names listed per failure reason (terminal and summary.json)


@dataclass
class RunSummary:
    files_total: int = 0  # distinct files in the results
    files_ok: int = 0
    files_partial: int = 0
    files_failed: int = 0
    legs_total: int = 0
    legs_by_status: Counter = field(default_factory=Counter)
    failures_by_reason: Counter = field(default_factory=Counter)
    processed_this_run: int = 0
    skipped_done: int = 0  # already in the results from an earlier run (resume)
    skipped_duplicate: int = 0  # listed more than once in the inputs
    elapsed_s: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_counts: dict[str, int] = field(default_factory=dict)
    # this run's films by storage ("jpeg2000", "uncompressed", ...; the ``read`` entry of
    # each result): count, worker seconds (all stages) and the decoders that read them
    syntax_films: Counter = field(default_factory=Counter)
    syntax_seconds: dict[str, float] = field(default_factory=dict)
    syntax_decoders: dict[str, Counter] = field(default_factory=dict)
    rows: int = 0
    failure_examples: dict[str, list[str]] = field(default_factory=dict)
    outputs_failed: Counter = field(default_factory=Counter)  # output kind -> films
    output_failure_examples: dict[str, list[str]] = field(default_factory=dict)
    angles_only: int = 0  # films measured without a pixel spacing (no mm values)
    angles_only_examples: list[str] = field(default_factory=list)

    def add_result(self, d: dict[str, Any]) -> None:
        self.files_total += 1
        status = d.get("status")
        name = printable(d.get("file") or "?")
        if status == "ok":
            self.files_ok += 1
        elif status == "partial":
            self.files_partial += 1
        else:
            self.files_failed += 1
            reason = d.get("error_reason") or "unknown"
            self.failures_by_reason[reason] += 1
            examples = self.failure_examples.setdefault(reason, [])
            if len(examples) < EXAMPLES_PER_REASON:
                examples.append(name)
        for kind, err in (d.get("output_errors") or {}).items():
            self.outputs_failed[kind] += 1
            examples = self.output_failure_examples.setdefault(kind, [])
            if len(examples) < EXAMPLES_PER_REASON:
                examples.append(f"{name} ({printable(err)})")
        if status != "failed" and d.get("spacing_mm") is None:
            self.angles_only += 1
            if len(self.angles_only_examples) < EXAMPLES_PER_REASON:
                self.angles_only_examples.append(name)
        for leg in d.get("legs") or []:
            self.legs_total += 1
            self.legs_by_status[leg.get("status") or "unknown"] += 1

    def add_timing(self, stage: str, seconds: float, count: int = 1) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + float(seconds)
        self.stage_counts[stage] = self.stage_counts.get(stage, 0) + int(count)

    def add_processed(self, d: dict[str, Any]) -> None:
        """Count one file processed in this run by its transfer syntax (``d["read"]``).
        A file that was never read (refused before its pixels) has no syntax and no rate
        worth stating: it is counted under its failure reason only."""
        read = d.get("read") or {}
        label = read.get("syntax")
        if not label:
            return
        self.syntax_films[label] += 1
        seconds = sum(float(v) for v in (d.get("timings_s") or {}).values())
        self.syntax_seconds[label] = self.syntax_seconds.get(label, 0.0) + seconds
        self.syntax_decoders.setdefault(label, Counter())[read.get("decoder") or "none"] += 1

    def by_syntax(self) -> dict[str, dict[str, Any]]:
        """Per syntax: films, worker seconds per film and films/s.  The run's wall time is
        shared out by each syntax's share of the worker seconds (for a run of one syntax
        this is the run's own files/s)."""
        total = sum(self.syntax_seconds.values())
        out: dict[str, dict[str, Any]] = {}
        for label, n in sorted(self.syntax_films.items()):
            secs = self.syntax_seconds.get(label, 0.0)
            wall = self.elapsed_s * secs / total if total > 0 else 0.0
            out[label] = {
                "films": n,
                "worker_seconds_per_film": round(secs / n, 4) if n else None,
                "films_per_s": round(n / wall, 3) if wall > 0 else None,
                "decoders": dict(sorted(self.syntax_decoders.get(label, {}).items())),
            }
        return out

    @property
    def files_per_s(self) -> float | None:
        if self.processed_this_run == 0 or self.elapsed_s <= 0:
            return None
        return self.processed_this_run / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        per_stage = {
            k: {
                "seconds_total": round(v, 3),
                "films": self.stage_counts.get(k, 0),
                "seconds_per_film": round(v / self.stage_counts[k], 4)
                if self.stage_counts.get(k)
                else None,
            }
            for k, v in sorted(self.stage_seconds.items())
        }
        fps = self.files_per_s
        return {
            "files_total": self.files_total,
            "files_ok": self.files_ok,
            "files_partial": self.files_partial,
            "files_failed": self.files_failed,
            "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
            "failure_examples": {k: list(v) for k, v in sorted(self.failure_examples.items())},
            "outputs_failed": dict(sorted(self.outputs_failed.items())),
            "output_failure_examples": {
                k: list(v) for k, v in sorted(self.output_failure_examples.items())
            },
            "angles_only": self.angles_only,
            "angles_only_examples": list(self.angles_only_examples),
            "legs_total": self.legs_total,
            "legs_by_status": dict(sorted(self.legs_by_status.items())),
            "processed_this_run": self.processed_this_run,
            "skipped_already_done": self.skipped_done,
            "skipped_duplicate_inputs": self.skipped_duplicate,
            "elapsed_s": round(self.elapsed_s, 3),
            "files_per_s": None if fps is None else round(fps, 3),
            "stages": per_stage,
            "by_syntax": self.by_syntax(),
            "table_rows": self.rows,
            "disclaimer": DISCLAIMER,
        }

    def format_text(self) -> str:
        d = self.to_dict()
        lines = [
            f"files: {d['files_total']} in results ({d['files_ok']} ok, {d['files_partial']} partial, "
            f"{d['files_failed']} failed); legs: {d['legs_total']} "
            + (
                "(" + ", ".join(f"{k} {v}" for k, v in d["legs_by_status"].items()) + ")"
                if d["legs_by_status"]
                else ""
            ),
            f"this run: {d['processed_this_run']} processed, {d['skipped_already_done']} already done, "
            f"{d['skipped_duplicate_inputs']} duplicate inputs skipped, {d['elapsed_s']:.1f} s"
            + (f", {d['files_per_s']:.2f} files/s" if d["files_per_s"] is not None else ""),
        ]
        if d["by_syntax"]:
            lines.append(
                "per syntax: "
                + ", ".join(
                    f"{k} {v['films']} films"
                    + (f" {v['films_per_s']:.2f} films/s" if v["films_per_s"] is not None else "")
                    + f" ({'/'.join(v['decoders'])})"
                    for k, v in d["by_syntax"].items()
                )
            )
        if d["failures_by_reason"]:
            lines.append(
                "failures by reason: "
                + ", ".join(f"{k} {v}" for k, v in d["failures_by_reason"].items())
            )
            for reason, n in d["failures_by_reason"].items():
                names = d["failure_examples"].get(reason, [])
                more = f" (+{n - len(names)} more)" if n > len(names) else ""
                lines.append(f"  {reason}: " + ", ".join(names) + more)
        for kind, n in d["outputs_failed"].items():
            names = d["output_failure_examples"].get(kind, [])
            more = f" (+{n - len(names)} more)" if n > len(names) else ""
            lines.append(
                f"warning: {kind} output not written for {n} film(s) (status partial): "
                + ", ".join(names)
                + more
            )
        if d["angles_only"]:
            n = d["angles_only"]
            names = d["angles_only_examples"]
            more = f" (+{n - len(names)} more)" if n > len(names) else ""
            lines.append(
                f"warning: {n} film(s) without pixel spacing: angles only, no mm values "
                "(give --spacing MM, or --require-spacing to fail them): " + ", ".join(names) + more
            )
        if d["stages"]:
            lines.append(
                "stage time per film: "
                + ", ".join(
                    f"{k} {v['seconds_per_film']:.3f} s"
                    for k, v in d["stages"].items()
                    if v["seconds_per_film"] is not None
                )
            )
        lines.append(DISCLAIMER)
        return "\n".join(lines)
