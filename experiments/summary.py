"""Summary rows: the one shape every study's ``summary.csv`` row has, and its two builders.

A row is :mod:`gfa_theory.instrument.stats`'s tidy row (``test``, ``estimate``, ``ci_low``,
``ci_high``, ``p``, ...). :func:`mean_row` summarizes values over seeds, :func:`paired_row` a
paired difference. One rule for both: a single value or pair has no interval (``mean_ci`` would
collapse it onto the estimate), so its bounds are NaN and reports print "n/a", not a false [m, m].
Intervals are formatted in one place: :func:`gfa_theory.instrument.stats.format_interval`.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gfa_theory.instrument import stats

SUMMARY_COLUMNS = ["test", "estimate", "ci_low", "ci_high", "p", "r2", "n", "n_groups", "method"]


def mean_row(test: str, values: Iterable[float], method: str = "mean over seeds, t-interval") -> dict:
    """A summary row holding the mean of ``values`` with its t-interval."""
    values = list(values)
    m, lo, hi = stats.mean_ci(values)
    return {"test": test, "estimate": m, "ci_low": lo, "ci_high": hi, "p": np.nan, "r2": np.nan,
            "n": len(values), "n_groups": len(values), "method": method}


def without_single_interval(row: dict) -> dict:
    """``row`` with NaN bounds when it rests on fewer than two values (see the module note)."""
    if row["n"] < 2:
        return {**row, "ci_low": float("nan"), "ci_high": float("nan")}
    return row


def paired_row(test: str, a: Iterable[float], b: Iterable[float], **extra) -> dict:
    """Mean of ``a - b`` over pairs with a t-interval and a paired t-test (NaN bounds for one
    pair), and ``extra`` columns."""
    diff = without_single_interval(stats.paired_difference(a, b))
    return {"test": test, "estimate": diff["estimate"], "ci_low": diff["ci_low"], "ci_high": diff["ci_high"],
            "p": diff["p"], "n": diff["n"], **extra}
