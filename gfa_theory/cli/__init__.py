"""The ``gfa`` command: one subcommand per module of this package (fanin, train, taper, prune, bench, plot).

Every subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. A user
mistake (:class:`~gfa_theory.errors.GFAError`) becomes one line on stderr and exit code 2.

Start-up: ``gfa --help`` lists the subcommands from :data:`COMMANDS` alone and imports none of
their modules (each pulls in torch, pandas or sympy: seconds); ``gfa NAME ...`` imports only
module NAME.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from gfa_theory import __version__
from gfa_theory.errors import report_user_errors

# Subcommand modules and their one-line help, in the order ``gfa --help`` lists them (each
# module's add_parser reads its line from here).
COMMANDS = {
    "fanin": "gradient fan-in of a residual layout",
    "train": "train a model and compare its accumulated gradients with fan-in",
    "taper": "per-block heads and FFN width of a CascadeFormer schedule",
    "prune": "remove the k least important blocks of a trained run or a Hugging Face checkpoint",
    "bench": "timing benchmarks",
    "plot": "draw one run's accumulated gradient A against fan-in F (PNG)",
}

# The studies and the figures live in a checkout of the repository, not in the installed
# package: these names get a one-line pointer instead of "invalid choice".
CHECKOUT_ONLY = {"study": "python -m experiments NAME", "reproduce": "make reproduce (or python -m figures)"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"gfa: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand listed, and with ``only`` that subcommand's own options
    (its module imported); without ``only`` no subcommand module is imported."""
    parser = _Parser(prog="gfa", description="Gradient Fan-in Asymmetry toolkit.")
    parser.add_argument("--version", action="version", version=f"gfa-theory {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, summary in COMMANDS.items():
        if name == only:
            importlib.import_module(f"gfa_theory.cli.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


# Exit status when stdout is a pipe closed early (``gfa fanin --branches 2000 | head -1``): what
# a process killed by SIGPIPE reports (128 + 13), like ``cat`` or ``yes``; nothing on stderr.
EXIT_BROKEN_PIPE = 141



def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no real file descriptor (captured in tests)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run ``gfa`` with ``argv``; returns the exit status. A user error is one line on stderr
    and status 2; a reader of stdout that goes away early ends it quietly with status 141."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in CHECKOUT_ONLY:
        print(f"gfa: error: '{argv[0]}' runs from a checkout of the gfa-theory repository: "
              f"clone it and run {CHECKOUT_ONLY[argv[0]]} there", file=sys.stderr)
        return 2
    parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    return report_user_errors("gfa", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
