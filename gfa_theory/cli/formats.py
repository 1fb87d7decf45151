"""The one output vocabulary of every ``gfa`` subcommand that prints results, and the check that
no two given options contradict each other.

``--format table`` is the human-readable text, ``json`` the full result, ``csv`` and ``latex``
the result's main table (through pandas: ``DataFrame.to_csv`` / ``DataFrame.to_latex``).
"""
from __future__ import annotations

import argparse
from typing import Any

from gfa_theory.errors import ConfigError

FORMATS = ("table", "json", "csv", "latex")


def add_format_argument(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help=f"how {what} is printed: a text table, JSON (everything), or its table as CSV or LaTeX")


def render_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` (one dict per table row) as CSV or a LaTeX tabular."""
    import pandas as pd  # noqa: PLC0415  (start-up: pandas takes ~0.5 s to import)

    frame = pd.DataFrame(rows)
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "latex":
        return frame.to_latex(index=False).rstrip("\n")
    raise ValueError(f"render_rows renders csv or latex, not {fmt!r}")


def given(args: argparse.Namespace, dest: str) -> bool:
    """Whether option ``dest`` was given (options that can conflict default to ``None``)."""
    value = getattr(args, dest, None)
    return value not in (None, False, [])


def refuse_conflicts(args: argparse.Namespace, pairs: list[tuple[str, str, str]]) -> None:
    """One line naming both options of the first pair ``(option, option, why)`` given together."""
    for a, b, why in pairs:
        if given(args, a.lstrip("-").replace("-", "_")) and given(args, b.lstrip("-").replace("-", "_")):
            raise ConfigError(f"{a} and {b} conflict: {why}")


def fill_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Set options left at ``None`` (so that a conflict could be seen) to their real default."""
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
