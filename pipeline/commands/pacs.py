"""``legalign pacs``: the pipeline over a DICOMweb archive (QIDO-RS, WADO-RS, STOW-RS)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import urllib3

from legalign.pipeline.commands.run import (
    _positive_float,
    _positive_int,
    add_engine_arguments,
    engine_options,
)
from legalign.pipeline.errors import LegalignError
from legalign.pipeline.pacs import retry as rt
from legalign.pipeline.pacs.auth import load_credentials
from legalign.pipeline.pacs.client import ClientOptions, check_url
from legalign.pipeline.pacs.query import QueryFilters, read_study_list
from legalign.pipeline.pacs.run import PacsOptions, PacsRun, dry_run

NAME = "pacs"
HELP = (
    "Find DX/CR films in a DICOMweb archive (QIDO-RS), retrieve them (WADO-RS), run the "
    "same pipeline as `legalign run` and store the SR + Secondary Capture back into each "
    "study (STOW-RS).  Re-running resumes; see docs/pacs.md.  Exit 0: all succeeded; "
    "3: some failed; 2: usage error."
)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "url",
        metavar="URL",
        help="DICOMweb service root, e.g. http://pacs:8042/dicom-web (no credentials in it)",
    )
    q = p.add_argument_group("what to process (QIDO-RS)")
    q.add_argument("--date-from", metavar="YYYYMMDD", help="studies on or after this date")
    q.add_argument("--date-to", metavar="YYYYMMDD", help="studies on or before this date")
    q.add_argument(
        "--modality",
        type=_csv,
        default=("DX", "CR"),
        metavar="M[,M]",
        help="series modalities to process (default DX,CR)",
    )
    q.add_argument(
        "--body-part",
        type=_csv,
        default=(),
        metavar="PAT[,PAT]",
        help="BodyPartExamined patterns (shell wildcards, case-insensitive), e.g. 'LEG,LOWER*'",
    )
    q.add_argument(
        "--series-description",
        type=_csv,
        default=(),
        metavar="PAT[,PAT]",
        help="SeriesDescription patterns (shell wildcards, case-insensitive)",
    )
    q.add_argument(
        "--study-list",
        metavar="FILE",
        help="only these studies: a file with one StudyInstanceUID a line",
    )
    q.add_argument(
        "--dry-run", action="store_true", help="list what would be processed; no changes"
    )
    q.add_argument(
        "--watch",
        type=_positive_float,
        metavar="S",
        help="keep going: after each pass wait S seconds and query again; new instances "
        "are processed as they arrive, done ones skipped (Ctrl-C stops)",
    )
    q.add_argument(
        "--watch-passes",
        type=_positive_int,
        metavar="N",
        help="with --watch: stop after N passes (default: until interrupted)",
    )
    c = p.add_argument_group("connection")
    c.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="WADO-RS retrievals at once (default 4)",
    )
    c.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="connect / read timeout per request (default 30)",
    )
    c.add_argument(
        "--retries",
        type=_positive_int,
        default=6,
        metavar="N",
        help="tries per request on connection errors, timeouts and 5xx (default 6; "
        "backoff 0.5, 1, 2, 4, 8 s)",
    )
    c.add_argument(
        "--auth-env",
        metavar="VAR",
        help="environment variable holding 'basic USER:PASSWORD' or 'bearer TOKEN' "
        "(default: LEGALIGN_PACS_AUTH when set)",
    )
    c.add_argument("--auth-file", metavar="FILE", help="file holding the same (first line)")
    c.add_argument("--ca-bundle", metavar="FILE", help="CA certificates to verify TLS with")
    c.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    c.add_argument(
        "--no-store",
        action="store_true",
        help="do not STOW-RS the results back (local outputs only)",
    )
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> int:

    url = check_url(args.url)
    creds = load_credentials(args.auth_env, args.auth_file)
    filters = QueryFilters(
        date_from=args.date_from,
        date_to=args.date_to,
        modalities=tuple(m.upper() for m in args.modality),
        body_parts=args.body_part,
        series_descriptions=args.series_description,
        study_uids=read_study_list(args.study_list) if args.study_list else None,
    )
    if args.insecure:
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        print(
            "legalign pacs: warning: TLS certificates are not verified (--insecure)",
            file=sys.stderr,
        )
    popts = PacsOptions(
        client=ClientOptions(
            url=url,
            credentials=creds,
            verify_tls=not args.insecure,
            ca_bundle=args.ca_bundle,
            timeout_s=args.timeout,
            retry=rt.RetryPolicy(attempts=args.retries),
            pool_size=args.concurrency + 2,
        ),
        filters=filters,
        concurrency=args.concurrency,
        store=not (args.no_store or args.no_dicom),
        retry_failed=args.retry_failed,
    )
    out = Path(args.out)
    if args.dry_run:
        counts = dry_run(popts, out)
        print(
            f"{counts.candidates} instances in {counts.studies} studies; "
            f"{counts.candidates - counts.skipped_done} to do",
            file=sys.stderr,
        )
        for err in counts.query_errors:
            print(f"legalign pacs: query failed: {err}", file=sys.stderr)
        return 3 if counts.query_errors else 0
    if args.watch_passes and not args.watch:
        raise LegalignError("--watch-passes needs --watch")
    eopts = engine_options(args)
    passes = 0
    while True:
        job = PacsRun(popts, eopts)
        code, summary = job.run()
        passes += 1
        c = job.counts
        if summary is not None and (not args.watch or summary.processed_this_run):
            print(summary.format_text())
        print(
            f"pacs{f' pass {passes}' if args.watch else ''}: {c.candidates} instances in "
            f"{c.studies} studies, {c.skipped_done} already done, {c.retrieved} retrieved "
            f"({c.retrieve_failed} failed), {c.stored} stored ({c.store_failed} failed)",
            flush=True,
        )
        for err in c.query_errors:
            print(f"legalign pacs: query failed: {err}", file=sys.stderr)
        if not args.watch or code == 130 or (args.watch_passes and passes >= args.watch_passes):
            break
        time.sleep(args.watch)
    print(f"results: {out / 'results.parquet'}, {out / 'pacs.csv'}, {out / 'pacs_summary.json'}")
    return code
