"""`flagstack` command line: one entry point, a subcommand group per layer.

Each layer adds its subcommands in its own `add_*_commands` function below; the heavy imports
happen inside the handlers so `flagstack --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys


def _ops_list(args: argparse.Namespace) -> int:
    from flagstack import ops

    for entry in ops.all_ops():
        print(f"{entry.name:24s} {', '.join(entry.backends()):32s} {entry.doc}")
    return 0


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    ops = sub.add_parser("ops", help="operator library").add_subparsers(dest="ops_cmd", required=True)
    ops.add_parser("list", help="every op with the backends it has").set_defaults(func=_ops_list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flagstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_ops_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input: a clear message and a non-zero exit, no traceback
        print(f"flagstack: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
