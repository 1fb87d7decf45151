"""Study 3 — intervention: does equalizing per-block gradient norms restore late layers?

**Hypothesis (GFA: structure, not magnitude).** If late layers contribute little only because
their gradients are *small*, rescaling every block's gradient to a common norm before each update
should restore their value. If the bottleneck is structural (few gradient paths, so the
gradient's *direction* carries less diverse signal), equalizing magnitudes should not help.

**Prediction (the paper's claim).** Late-layer importance under equalization is not higher than
in the baseline.

**Method.** Transformers of one depth, several seeds, trained with AdamW and with SGD (Adam is
largely invariant to per-tensor gradient scale, so SGD is the sharper test), each with and
without equalization (every block's gradient rescaled to the mean block norm after backward,
before clipping and the update; the tracker records the raw gradient). After training: per-block
ablation importance on held-out data. The late-layer measure is the share of total ablation
importance held by the last half of the blocks (and the last block's share); equalized minus
baseline is a paired difference over seeds with a t-interval.

**Reading the result.** ``summary`` has, per optimizer, the baseline and equalized late shares
and their paired difference. A difference whose CI lies above 0 means equalization *did*
restore late layers (against the claim); a CI covering 0 or below 0 supports the claim. Figure
F6 plots, for AdamW and for SGD, each block's share of ablation importance (mean over seeds with
its interval), baseline against equalized: the claim holds where the equalized curve does not
rise above the baseline in the late blocks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .plans import gpt_run, plan
from .runner import Context, start
from .study_io import finish
from .summary import SUMMARY_COLUMNS, mean_row
from .units import ablation_units

NAME = "equalization"


def configs(profile: str):
    """(descriptors, RunConfig): each optimizer, with and without equalization, every seed."""
    p = plan(profile)
    B = p.equalization.depth
    out = []
    for opt in ("adamw", "sgd"):
        for inter in ("none", "equalize"):
            for seed in p.seeds:
                out.append(({"optimizer": opt, "intervention": inter, "depth_B": B},
                            gpt_run(p, n_blocks=B, seed=seed, optimizer=opt, intervention=inter)))
    return out


def late_shares(units: pd.DataFrame, score: str = "imp_ablation") -> pd.DataFrame:
    """Per run: share of (clipped-at-0) importance in the last half of the blocks and last block."""
    rows = []
    for rid, d in units.groupby("run_id", sort=False):
        d = d.sort_values("order")
        imp = d[score].clip(lower=0).to_numpy()
        total = imp.sum()
        half = len(imp) // 2
        rows.append({"run_id": rid, "seed": d["seed"].iloc[0], "optimizer": d["optimizer"].iloc[0],
                     "intervention": d["intervention"].iloc[0],
                     "late_half_share": imp[half:].sum() / total if total > 0 else np.nan,
                     "last_block_share": imp[-1] / total if total > 0 else np.nan,
                     "val_loss": d["val_loss"].iloc[0]})
    return pd.DataFrame(rows)


def summarize(shares: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and measure: baseline and equalized means, and their paired difference."""
    rows = []
    for opt, d in shares.groupby("optimizer", sort=False):
        base = d[d.intervention == "none"].set_index("seed")
        eq = d[d.intervention == "equalize"].set_index("seed")
        seeds = sorted(set(base.index) & set(eq.index))
        for col in ("late_half_share", "last_block_share", "val_loss"):
            for name, frame in (("baseline", base), ("equalized", eq)):
                rows.append(mean_row(f"{opt}: {col} ({name})", frame.loc[seeds, col]))
            rows.append(stats.paired_difference(eq.loc[seeds, col], base.loc[seeds, col],
                                                test=f"{opt}: {col} equalized - baseline"))
    return pd.DataFrame(rows)[SUMMARY_COLUMNS]


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) the runs, score block importance, compare late shares, write."""
    ctx, started, p, runs, results = start(NAME, configs, profile, ctx)
    units = ablation_units(runs, results, p.importance)
    shares = late_shares(units)
    summary = summarize(shares)
    return finish(ctx, NAME, units, summary, results, started, shares=shares)

