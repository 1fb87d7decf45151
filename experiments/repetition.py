"""Study 4 — intervention: does parameter-shared repetition restore late-layer value?

**Hypothesis (GFA: structure is the lever).** Applying the last block ``r`` times with shared
weights makes its parameter group collect gradient from ``r`` positions, so its fan-in is the sum
over applications (:mod:`gfa_theory.theory.symbolic`); the group gains downstream paths (each
application is downstream of the previous ones). If fan-in limits what late layers learn,
repetition should raise the last block's value.

**Prediction (the paper's claim).** The last parameter group matters more after repetition than
in the baseline ("restores"), and more than the last block of a compute-matched control that
adds unshared blocks instead ("elevates").

**Method.** A Transformer of ``B`` unique blocks (baseline); the same with the last block applied
``r = 2, 3`` times (``block_schedule = [0, .., B-1, B-1, ..]``); and controls with ``B + r - 1``
unshared blocks (the same compute per token). Several seeds each. After training: ablation
importance of every unique block (ablating a shared block removes all of its applications), the
group fan-in and the accumulated gradient. The late-layer measure is the last parameter group's
share of total ablation importance; differences to the baseline and to the matched control are
paired over seeds.

**Reading the result.** ``summary`` gives, per variant, the last group's importance share and
fan-in share, and the paired differences. Repetition "restores/elevates" only if the difference
to the baseline (and to the control) has a CI above 0. Figure F7 plots, per variant, each unique
block's share of ablation importance (left) next to its share of fan-in (right, what the
structure predicts): repetition should lift the last group on the right; the claim is that it
lifts it on the left too.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .plans import gpt_run, plan
from .runner import Context, start
from .study_io import finish
from .summary import SUMMARY_COLUMNS, mean_row
from .units import ablation_units

NAME = "repetition"


def configs(profile: str):
    """(descriptors, RunConfig): baseline, each repetition and each control, every seed."""
    p = plan(profile)
    B = p.repetition.base
    out = []
    for seed in p.seeds:
        out.append(({"variant": "baseline", "r": 1, "extra_blocks": 0},
                    gpt_run(p, n_blocks=B, seed=seed)))
        for r in p.repetition.repeats:
            sched = list(range(B)) + [B - 1] * (r - 1)
            out.append(({"variant": f"repeat r={r}", "r": r, "extra_blocks": 0},
                        gpt_run(p, n_blocks=B, seed=seed, block_schedule=sched)))
        for c in p.repetition.controls:
            out.append(({"variant": f"control +{c}", "r": 1, "extra_blocks": c},
                        gpt_run(p, n_blocks=B + c, seed=seed)))
    return out


def last_group(units: pd.DataFrame) -> pd.DataFrame:
    """Per run: the last parameter group's importance, its shares of importance, F and A."""
    rows = []
    for rid, d in units.groupby("run_id", sort=False):
        d = d.sort_values("order")
        imp = d["imp_ablation"].clip(lower=0)
        last = d.iloc[-1]
        rows.append({"run_id": rid, "seed": last["seed"], "variant": last["variant"],
                     "applications": last["applications"],
                     "last_importance": last["imp_ablation"],
                     "last_share": imp.iloc[-1] / imp.sum() if imp.sum() > 0 else np.nan,
                     "last_F_share": last["F"] / d["F"].sum(), "last_A_share": last["A"] / d["A"].sum(),
                     "val_loss": last["val_loss"]})
    return pd.DataFrame(rows)


def summarize(groups: pd.DataFrame, repeats: Sequence[int]) -> pd.DataFrame:
    """Per variant: means over seeds; per repetition: paired differences to the baseline and to
    the compute-matched control."""
    rows = []
    by = {v: d.set_index("seed") for v, d in groups.groupby("variant")}
    for v, d in by.items():
        for col in ("last_share", "last_F_share", "last_A_share", "last_importance", "val_loss"):
            rows.append(mean_row(f"{v}: {col}", d[col]))
    base = by["baseline"]
    for r in repeats:
        rep = by[f"repeat r={r}"]
        seeds = sorted(set(rep.index) & set(base.index))
        for col in ("last_share", "last_importance"):
            rows.append(stats.paired_difference(rep.loc[seeds, col], base.loc[seeds, col],
                                                test=f"repeat r={r} - baseline: {col}"))
        c = r - 1  # compute-matched control: the same number of block applications
        if f"control +{c}" in by:
            ctl = by[f"control +{c}"]
            seeds = sorted(set(rep.index) & set(ctl.index))
            for col in ("last_share", "last_importance", "val_loss"):
                rows.append(stats.paired_difference(rep.loc[seeds, col], ctl.loc[seeds, col],
                                                    test=f"repeat r={r} - control +{c}: {col}"))
    return pd.DataFrame(rows)[SUMMARY_COLUMNS]


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) the runs, score block importance, compare the last group, write."""
    ctx, started, p, runs, results = start(NAME, configs, profile, ctx)
    units = ablation_units(runs, results, p.importance)
    groups = last_group(units)
    summary = summarize(groups, p.repetition.repeats)
    return finish(ctx, NAME, units, summary, results, started, last_group=groups)

