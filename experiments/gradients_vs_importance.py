"""Study 2 — are accumulated training gradients associated with post hoc layer importance?

**Hypothesis.** If a unit's learning is limited by the gradient it receives, units with a larger
accumulated training gradient ``A`` should end up mattering more to the trained network.

**Prediction.** Across layers, seeds and depths, post hoc importance rises with ``A``: a
positive per-run rank correlation and a positive regression slope, which should survive a
control for relative depth (otherwise the association could be depth alone).

**Method.** Reuse the single-head runs of study 1 (Transformers at several depths, ResNets).
Score every block on fixed held-out batches with ablation (the oracle: loss without the block
minus the full loss), Block Influence, angular distance, Taylor, weight magnitude and random.
For each metric: the mean per-run Spearman and Kendall correlation with ``A`` (t-interval over
runs). For ablation importance (normalized by its mean within the run): OLS on normalized ``A``
with errors clustered by run, the same with relative depth as a control, and a linear mixed
model with a random intercept per run.

**Reading the result.** ``summary`` lists every test; the first rows (ablation) answer the claim.
In small models the first block often carries most of the importance and most of ``A``; the
rows marked "first block excluded" check that the association is not that one block alone.
A slope whose CI excludes 0 after the depth control means ``A`` carries information beyond
position. ``random`` is the floor every metric should beat. Figure F5 plots, per family, every
block's normalized ablation importance against its normalized ``A`` with the OLS fit: points
along a rising line support the claim; T5 lists the regression rows.
"""
from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from gfa_theory.instrument import importance, stats

from . import fanin_vs_gradients
from .plans import ImportancePlan
from .runner import Context, start
from .study_io import finish
from .summary import keyed, mean_row, table
from .units import heldout_batches, unit_table

NAME = "gradients_vs_importance"


def configs(profile: str):
    """The single-head runs of study 1 (read back from the result cache)."""
    return [(d, c) for d, c in fanin_vs_gradients.configs(profile) if d["supervision"] == "final"]


def score_run(res, imp: ImportancePlan, desc: dict, seed: int = 0) -> pd.DataFrame:
    """Unit table of one run joined with every importance metric (wide: one column per metric)."""
    units = unit_table(res, "block", **desc)
    batches = heldout_batches(res, imp.batches, imp.batch_size)
    scores = importance.score_all(res.model, batches, kind="block", seed=seed)
    wide = scores.pivot_table(index="unit", columns="metric", values="score", aggfunc="first")
    for m in wide.columns:
        units[f"imp_{m}"] = units["unit"].map(wide[m])
    costs = scores.groupby("metric")[["forward_passes", "backward_passes", "seconds"]].first()
    for m in costs.index:
        units[f"cost_fwd_{m}"] = int(costs.loc[m, "forward_passes"])
    units["imp_ablation_norm"] = units["imp_ablation"] / units["imp_ablation"].mean()
    return units


def _absolute(d: pd.DataFrame, family: str) -> list[dict]:
    """The numbers behind the shares: per run, the first block's share of ablation importance and
    of A, and the ablation loss increase (nats) of the first block and of the mean later block,
    each as a mean over runs with its t-interval."""
    per_run = []
    for _, g in d.groupby("run_id"):
        first, rest = g[g["order"] == 1], g[g["order"] > 1]
        imp = g["imp_ablation"].clip(lower=0)
        per_run.append({"first_share_ablation": float(imp[g["order"] == 1].sum() / imp.sum()) if imp.sum() > 0
                        else float("nan"), "first_share_A": float(first["A"].sum() / g["A"].sum()),
                        "first_dloss": float(first["imp_ablation"].mean()),
                        "rest_dloss": float(rest["imp_ablation"].mean())})
    t = pd.DataFrame(per_run)
    names = {"first_share_ablation": "first block's share of ablation importance",
             "first_share_A": "first block's share of A",
             "first_dloss": "ablation delta-loss, first block (nats)",
             "rest_dloss": "ablation delta-loss, mean later block (nats)"}
    return [mean_row(f"{family}: {text}", t[col], method="mean over runs, t-interval", family=family, quantity=col)
            for col, text in names.items()]


def summarize(units: pd.DataFrame) -> pd.DataFrame:
    """Per family: OLS and mixed-model slopes of ablation importance on A (with and without the
    depth control and the first block), and every metric's per-run rank correlation with A. Rows
    are keyed by ``family``, ``quantity`` (``ols``, ``ols_depth``, ``mixed``, ``mixed_depth``,
    ``spearman``, ``kendall``, the first block's shares), ``arm`` (the importance metric) and
    ``subset``."""
    rows = []
    for family, d in units.groupby("family", sort=False):
        d = d.copy()
        abl = {"family": family, "arm": "ablation"}
        rows.append(keyed(stats.ols_slope(d, "imp_ablation_norm", "A_norm", cluster="run_id",
                                          test=f"{family}: OLS ablation_norm ~ A_norm"), quantity="ols", **abl))
        rows.append(keyed(stats.ols_slope(d, "imp_ablation_norm", "A_norm", cluster="run_id", controls=["depth"],
                                          test=f"{family}: OLS ablation_norm ~ A_norm + depth"),
                          quantity="ols_depth", **abl))
        rows.append(keyed(stats.mixed_slope(d, "imp_ablation_norm", "A_norm", group="run_id",
                                            test=f"{family}: MixedLM ablation_norm ~ A_norm | run"),
                          quantity="mixed", **abl))
        rows.append(keyed(stats.mixed_slope(d, "imp_ablation_norm", "A_norm", group="run_id", controls=["depth"],
                                            test=f"{family}: MixedLM ablation_norm ~ A_norm + depth | run"),
                          quantity="mixed_depth", **abl))
        # robustness: the first block often dominates importance in small models; does the
        # association survive without it?
        rest = d[d["order"] > 1].copy()
        rest["imp_ablation_norm"] = rest["imp_ablation"] / rest.groupby("run_id")["imp_ablation"].transform("mean")
        rest["A_norm"] = rest["A"] / rest.groupby("run_id")["A"].transform("mean")
        rows.append(keyed(stats.ols_slope(rest, "imp_ablation_norm", "A_norm", cluster="run_id", controls=["depth"],
                                          test=f"{family}: OLS ablation_norm ~ A_norm + depth, first block excluded"),
                          quantity="ols_depth", subset="no_first_block", **abl))
        rows.append(keyed(stats.per_run_correlation(
            rest, "A", "imp_ablation", test=f"{family}: per-run spearman ablation vs A, first block excluded"),
            quantity="spearman", subset="no_first_block", **abl))
        rows += _absolute(d, family)
        for m in importance.METRICS:
            col = f"imp_{m}"
            if col not in d:
                continue
            for kind in ("spearman", "kendall"):
                rows.append(keyed(stats.per_run_correlation(d, "A", col, kind=kind,
                                                            test=f"{family}: per-run {kind} {m} vs A"),
                                  family=family, quantity=kind, arm=m))
    return table(rows)


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Read back study 1's runs, score every block with every metric, test, write."""
    ctx, started, p, runs, results = start(NAME, configs, profile, ctx)
    frames = [score_run(res, p.importance, desc, seed=res.config.train.seed)
              for (desc, _), res in tqdm(list(zip(runs, results)), desc="importance", disable=not ctx.progress)]
    units = pd.concat(frames, ignore_index=True)
    return finish(ctx, NAME, units, summarize(units), results, started)

