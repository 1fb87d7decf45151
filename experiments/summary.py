"""Summary rows: the one shape every study's ``summary.csv`` row has, and its builders.

A row is :mod:`gfa_theory.instrument.stats`'s tidy row (``estimate``, its ``se`` and ``df``,
``ci_low``, ``ci_high``, ``p``, ...) under a structured key (:data:`KEY_COLUMNS`: ``family``,
``setting``, ``quantity``, ``predictor``, ``subset``, ``arm``, ``against``, ``m``) that the claim
rules select rows by (:func:`pick`). ``test`` is a readable label for tables and the console,
never a key. :func:`mean_row` summarizes values over seeds, :func:`paired_row` a paired
difference. One rule for both: a single value or pair has no interval (``mean_ci`` would collapse
it onto the estimate), so its bounds are NaN and reports print "n/a", not a false [m, m].
Intervals are formatted in one place: :func:`gfa_theory.instrument.stats.format_interval`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

# what a row is about: a study fills the fields that apply, the rest stay empty ("" / NaN for m)
KEY_COLUMNS = ["family", "setting", "quantity", "predictor", "subset", "arm", "against", "m"]
KEY_DEFAULTS = {"family": "", "setting": "", "quantity": "", "predictor": "", "subset": "all", "arm": "",
                "against": "", "m": math.nan}
SUMMARY_COLUMNS = ["test", *KEY_COLUMNS, "estimate", "se", "df", "ci_low", "ci_high", "p", "r2", "n", "n_groups",
                   "method"]


def keyed(row: dict, **key) -> dict:
    """``row`` under the structured key ``key`` (unknown key fields are an error)."""
    unknown = set(key) - set(KEY_DEFAULTS)
    if unknown:
        raise KeyError(f"not a summary key field: {', '.join(sorted(unknown))}")
    return {**row, **KEY_DEFAULTS, **key}


def table(rows: Iterable[dict]) -> pd.DataFrame:
    """Summary rows as a frame with :data:`SUMMARY_COLUMNS` (missing statistics NaN)."""
    return pd.DataFrame(list(rows)).reindex(columns=SUMMARY_COLUMNS)


def pick(summary: pd.DataFrame, **key) -> pd.Series | None:
    """The one row of ``summary`` whose key fields equal ``key`` (empty fields read back from CSV
    as NaN match ""); None when there is none."""
    mask = np.ones(len(summary), bool)
    for col, want in key.items():
        if col not in summary:
            raise KeyError(f"the summary has no {col!r} column: an old study layout (rerun the study)")
        v = summary[col]
        if col == "m":
            mask &= v.to_numpy(float) == float(want)
        else:
            mask &= (v.fillna("").astype(str) == str(want)).to_numpy()
    hit = summary[mask]
    return None if hit.empty else hit.iloc[0]


def need(summary: pd.DataFrame, **key) -> pd.Series:
    """:func:`pick`, raising KeyError when the row is missing."""
    row = pick(summary, **key)
    if row is None:
        raise KeyError(f"no summary row {key}")
    return row


def mean_row(test: str, values: Iterable[float], method: str = "mean over seeds, t-interval", **key) -> dict:
    """A summary row holding the mean of ``values`` with its t-interval."""
    values = list(values)
    m, lo, hi = stats.mean_ci(values)
    return keyed({"test": test, "estimate": m, "se": stats.mean_se(values), "df": len(values) - 1, "ci_low": lo,
                  "ci_high": hi, "p": np.nan, "r2": np.nan, "n": len(values), "n_groups": len(values),
                  "method": method}, **key)


def without_single_interval(row: dict) -> dict:
    """``row`` with NaN bounds when it rests on fewer than two values (see the module note)."""
    if row["n"] < 2:
        return {**row, "ci_low": float("nan"), "ci_high": float("nan")}
    return row


def paired_row(test: str, a: Iterable[float], b: Iterable[float], **extra) -> dict:
    """Mean of ``a - b`` over pairs with a t-interval and a paired t-test (NaN bounds for one
    pair), and ``extra`` columns."""
    diff = without_single_interval(stats.paired_difference(a, b))
    return {"test": test, "estimate": diff["estimate"], "se": diff["se"], "df": diff["df"], "ci_low": diff["ci_low"],
            "ci_high": diff["ci_high"], "p": diff["p"], "n": diff["n"], **extra}
