"""Claim C5: accumulated gradients and post hoc importance (study 2,
:mod:`experiments.gradients_vs_importance`); the association rule H5 reuses."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..summary import need
from .toolkit import Estimate, Finding, defined, signed, superiority, undefined

C5_RULE = ("Per family: the OLS slope of normalized ablation importance on normalized A with a relative-depth "
           "control (cluster-robust by run, t with G - 1 df), and the mean per-run Spearman rho(ablation, A) without "
           "the first block (which carries most of both); the 4 two-sided p-values Holm-adjusted. Holds if all four "
           "are positive and significant; mixed if some; does not hold if none is positive-significant and some is "
           "negative-significant; inconclusive otherwise. The first block's shares and the absolute ablation "
           "delta-loss are reported")

_SHARES = (("first_share_ablation", "first block's share of ablation importance", ".2f"),
           ("first_share_A", "first block's share of A", ".2f"),
           ("first_dloss", "ablation delta-loss, first block (nats)", ".3f"),
           ("rest_dloss", "ablation delta-loss, mean later block (nats)", ".3f"))
TESTED = ("OLS slope with a depth control", "per-run Spearman without the first block")


def association(summary: pd.DataFrame, family: str) -> tuple[list[pd.Series], tuple[Estimate, ...]]:
    """The two tested rows of one family (slope with a depth control; Spearman without the first
    block) and everything reported beside them."""
    abl = {"family": family, "arm": "ablation"}
    b = need(summary, quantity="ols_depth", **abl)
    ex = need(summary, quantity="spearman", subset="no_first_block", **abl)
    sp = need(summary, quantity="spearman", **abl)
    shown = (Estimate.of(b, f"{family}: {TESTED[0]}", ".2f"), Estimate.of(ex, f"{family}: {TESTED[1]}", ".2f"),
             Estimate.of(sp, f"{family}: per-run Spearman rho(ablation, A)", ".2f"),
             *(Estimate.of(need(summary, family=family, quantity=q), f"{family}: {label}", fmt)
               for q, label, fmt in _SHARES))
    return [b, ex], shown


def judge_association(rows: list[pd.Series], names: list[str]) -> tuple[object, np.ndarray, str]:
    """Holm over ``rows``: the verdict, the positive-significant mask and why."""
    _, pos, neg = signed(rows)
    verdict = superiority(pos, neg, True)
    if pos.all():
        why = f"importance rises with A in all {len(rows)} tests (Holm), also without the first block"
    elif pos.any():
        why = "not shown: " + ", ".join(n for n, ok in zip(names, pos) if not ok)
    elif neg.any():
        why = "importance falls with A: " + ", ".join(n for n, bad in zip(names, neg) if bad)
    else:
        why = "no test significant after Holm"
    return verdict, pos, why


def c5(summary: pd.DataFrame) -> Finding:
    """Ablation importance on A, with a depth control and without the first block, both families."""
    rows, shown, names = [], [], []
    for fam in ("transformer", "resnet"):
        r, s = association(summary, fam)
        rows += r
        shown += s
        names += [f"{fam} {t}" for t in TESTED]
    primary, secondary = shown[0], tuple(shown[1:])
    if not defined(*rows):
        return undefined(primary=primary, secondary=secondary)
    verdict, _, why = judge_association(rows, names)
    return Finding(verdict, primary, why=why, secondary=secondary)
