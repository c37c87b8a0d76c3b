"""``legalign review RESULTS_DIR``: review a run in the browser; ``--export OUT`` writes
the reviewed legs as training labels, an updated results table and DICOM SR."""

from __future__ import annotations

import argparse
import sys

NAME = "review"
HELP = (
    "review a run's legs in the browser (accept / reject / amend), or export the reviewed "
    "legs (--export OUT) as COCO keypoints, results table and DICOM SR"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="output folder of legalign run")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    parser.add_argument(
        "--reviewer", default=None, help="reviewer name recorded with each change (default: login)"
    )
    parser.add_argument("--config", default=None, help="YAML merged over configs/review.yaml")
    parser.add_argument(
        "--geometry-config",
        default=None,
        help="YAML merged over configs/geometry.yaml (use the run's --config, if it had one)",
    )
    parser.add_argument(
        "--export",
        default=None,
        metavar="OUT",
        help="write the reviewed legs to OUT (COCO keypoints, results table, DICOM SR) and exit",
    )
    parser.add_argument(
        "--no-prefetch",
        action="store_true",
        help="do not render the films' previews in the background at start-up",
    )


def run(args: argparse.Namespace) -> int:
    import getpass
    import threading
    from pathlib import Path

    from legalign.pipeline.errors import InputError
    from legalign.pipeline.geometry_config import load_geometry_config
    from legalign.pipeline.review.config import load_review_config
    from legalign.pipeline.review.service import ReviewService

    config = load_review_config(args.config)
    geometry = load_geometry_config(args.geometry_config)
    results = Path(args.results_dir)
    if not results.is_dir():
        raise InputError(f"{results}: results folder not found")
    service = ReviewService.open(results, config, geometry)
    for line in service.folder.problems:
        print(f"legalign review: skipped {line}", file=sys.stderr)

    if args.export:
        from legalign.pipeline.review.export import export_reviewed

        summary = export_reviewed(service, Path(args.export))
        print(
            f"exported {summary['legs_exported']} reviewed leg(s) on {summary['films']} film(s) "
            f"({summary['legs_rejected']} rejected, {summary['legs_unreviewed']} not reviewed) "
            f"to {args.export}"
        )
        return 0

    import uvicorn

    from legalign.pipeline.review.app import LOOPBACK_NAMES, create_app, is_loopback

    reviewer = args.reviewer or getpass.getuser()
    loopback = is_loopback(args.host)
    warning = host_warning(args.host)
    if warning:
        print(f"legalign review: {warning}", file=sys.stderr)
    allowed = [h.strip("[]") for h in LOOPBACK_NAMES] + list(LOOPBACK_NAMES) if loopback else None
    app = create_app(service, reviewer=reviewer, allowed_hosts=allowed)
    if not args.no_prefetch:
        threading.Thread(target=_prefetch, args=(service,), daemon=True).start()
    print(
        f"legalign review: {len(service.folder.films)} film(s); open "
        f"http://{'127.0.0.1' if loopback and args.host != 'localhost' else args.host}:"
        f"{args.port}/  (Ctrl-C to stop; planning support only)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
    return 0


def host_warning(host: str) -> str | None:
    """The warning printed for a non-loopback ``--host`` (None for loopback)."""
    from legalign.pipeline.review.app import is_loopback

    if is_loopback(host):
        return None
    return (
        f"WARNING: listening on {host}, not loopback: anyone who can reach this address can "
        "see the films (the session token only guards changes). Use it only on a trusted "
        "network."
    )


def _prefetch(service) -> None:
    """Render every film's preview once, so that each first view is a small file read."""
    for film_id, film in list(service.folder.films.items()):
        if film.source is None:
            continue
        try:
            service.pixels.preview_png(film_id, film.source, keep=False)
        except Exception:  # noqa: BLE001 - the viewer reports the error when the film is opened
            continue
