"""``legalign train CONFIG.yaml``: train the coarse and fine locator networks."""

from __future__ import annotations

import argparse
import time

from legalign.training.train import load_train_config, train

NAME = "train"
HELP = "train the landmark networks from a YAML config (see configs/train_default.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML (e.g. configs/train_default.yaml)")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument(
        "--device", default=None, help="override the config's device (cpu, cuda, cuda:N, auto)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument(
        "--no-export", action="store_true", help="do not write the config's export.path weights"
    )


def run(args: argparse.Namespace) -> int:

    cfg = load_train_config(args.config)
    if args.device:
        cfg.device = args.device
    if args.no_export:
        cfg.export.path = None
    t0 = time.time()
    train(cfg, output_dir=args.output_dir, resume=args.resume, progress=not args.no_progress)
    print(f"training finished in {time.time() - t0:.0f} s")
    return 0
