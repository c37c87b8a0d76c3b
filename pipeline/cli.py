"""The ``legalign`` command line: one tool, one module per subcommand.

Each module in ``COMMANDS`` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``.  Modules import heavy dependencies (torch, pydicom) inside
``run`` so that ``legalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import typing

from legalign.pipeline import __version__
from legalign.pipeline.errors import LegalignError

COMMANDS: tuple[str, ...] = (
    "legalign.pipeline.commands.measure",
    "legalign.pipeline.commands.train",
    "legalign.pipeline.commands.run",
    "legalign.pipeline.commands.pacs",
    "legalign.pipeline.commands.evaluate",
    "legalign.pipeline.commands.export",
    "legalign.pipeline.commands.synth",
    "legalign.pipeline.commands.review",
    "legalign.pipeline.commands.framing",
)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line naming the problem (no usage block before it); the
    subcommand parsers inherit this class."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="legalign",
        description="Lower-limb alignment on full-leg radiographs (planning support only).",
    )
    parser.add_argument("--version", action="version", version=f"legalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # On a shared CPU, OpenMP threads that spin while waiting slow torch down several times
    # (training, and the run engine's worker processes, which inherit this); passive
    # waiting costs nothing when the cores are free.  Must precede the torch import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except LegalignError as exc:
        print(f"legalign {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"legalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
