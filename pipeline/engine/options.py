"""What a ``legalign run`` is asked to do (options shared by both engines) and its exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Exit codes of `legalign run` (docs/results-schema.md)
EXIT_OK = 0  # every file succeeded (status ok or partial)
EXIT_USAGE = 2  # usage or configuration error: nothing was processed
EXIT_SOME_FAILED = 3  # the run completed; at least one file failed (see its error_reason)
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C); re-run the same command to resume
EXIT_TERMINATED = 143  # terminated (SIGTERM, 128 + 15); re-run the same command to resume


@dataclass
class EngineOptions:
    out_dir: Path
    model: str | None = None
    config: str | None = None
    workers: int = 2
    device: str = "cpu"
    spacing_mm: float | None = None
    require_spacing: bool = False
    max_pixels: int = 80_000_000
    batch_size: int = 8
    mode: str = "auto"  # "worker", "main" or "auto" (main on cuda, worker on cpu)
    overlay: bool = True
    dicom_outputs: bool = True
    overlay_height: int = 2048
    retry_failed: bool = False
    progress: bool = True
    torch_threads: int | None = None
    max_in_flight: int | None = None
    file_timeout_s: float | None = 900.0  # a file still running after this is killed
    limit: int | None = None  # stop after this many newly processed files (benchmarks)
    # how compressed DICOM is read: "auto"/"cpu"/"gpu" progressive (docs/progressive.md),
    # "full" every film decoded whole; the overview (coarse canvas, overlay) has at
    # least overview_height rows
    decoder: str = "auto"
    overview_height: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "main" if str(self.device).startswith("cuda") else "worker"

    @property
    def model_name(self) -> str:
        """The ``model`` of the results: the checkpoint's file name, or "default"."""
        return Path(self.model).name if self.model else "default"
