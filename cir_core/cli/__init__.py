"""The `cir` console command.

Each subcommand lives in its own module of this package and exposes
`register(subparsers)`, which adds its parser and sets `handler` to a function
taking the parsed arguments and returning an exit code. Modules import the heavy
library code inside their handlers so that `cir --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order here is the order shown by `cir --help`.
COMMAND_MODULES = [
    "data",
    "train",
    "eval",
    "submit",
    "convert",
    "build_index",
    "bench",
    "space_export",
]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cir", description="SPRC composed image retrieval toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except CommandError as error:
        print(f"cir {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as error:
        # Library errors are written for users already; show them without a traceback.
        print(f"cir {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
