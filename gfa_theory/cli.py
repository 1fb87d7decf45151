"""The ``gfa`` command: one subcommand per module in :mod:`gfa_theory.commands`.

Every subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. A user
mistake (:class:`~gfa_theory.errors.GFAError`) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import GFAError

# Subcommand modules, in the order ``gfa --help`` lists them. A module that is not present
# yet (a feature still being built) is skipped rather than breaking the whole CLI.
COMMANDS = ["fanin", "train", "study", "taper", "prune", "bench", "reproduce"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"gfa: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` just that subcommand (so ``gfa fanin`` does not pay
    for importing torch through the training commands)."""
    parser = _Parser(prog="gfa", description="Gradient Fan-in Asymmetry toolkit.")
    parser.add_argument("--version", action="version", version=f"gfa-theory {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(f"gfa_theory.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gfa_theory.commands.{name}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except GFAError as exc:
        print(f"gfa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gfa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
