"""Study 1 — do accumulated training gradients follow gradient fan-in?

**Hypothesis (GFA).** In a Pre-LN residual stack the gradient reaching branch ``i`` is the sum of
one identity path and one path per downstream branch, so the number of first-order gradient
paths, the fan-in, is ``F(i) = N - i + 1`` with one loss head and ``(N-i+1)(N-i+2)/2`` under
deep supervision. If gradient paths carry comparable signal, a unit's accumulated training
gradient ``A = sum_t ||grad||`` should fall with depth like ``F``.

**Prediction.** Within every run, ``A`` decreases with depth and rank-correlates positively with
``F`` (Spearman rho > 0); under deep supervision the profile is steeper (quadratic fan-in).

**Method.** Train Transformers (char-level, the CPython docs corpus) at several depths and
seeds, with one head and with a head on every block, and pre-activation ResNets on digits,
recording ``A`` with the tracker at no extra cost. Per run: Spearman rho(A, F) over blocks; across
runs: the mean rho with a t-interval over runs, OLS of normalized A on normalized F with
cluster-robust errors by run, and the log-log slope of A on F (an exponent near 1 means A is
proportional to F). Deep-supervision runs are tested against both the linear and the quadratic
fan-in: the better-fitting profile is reported, not assumed.

**Reading the result.** ``summary`` has one row per (family, supervision) and test. A positive
mean rho whose CI excludes 0 supports "A follows fan-in"; the log-log slope says how strongly.
The per-unit table (``units.csv``) has A and F normalized by their mean within each run, which
is what figures F2-F4 plot against depth.
"""
from __future__ import annotations

import pandas as pd

from gfa_theory.instrument import stats
from gfa_theory.theory.layout import Layout

from .common import (
    SUMMARY_COLUMNS,
    Context,
    block_fan_in,
    finish,
    gpt_run,
    resnet_run,
    start,
    unit_table,
)
from .profiles import sizes

NAME = "fanin_vs_gradients"


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig) of every run this study needs."""
    s = sizes(profile)
    out = []
    for sup in ("final", "all"):
        for B in s["depths"]:
            for seed in s["seeds"]:
                out.append(({"family": "transformer", "supervision": sup, "depth_B": B},
                            gpt_run(s, n_blocks=B, seed=seed, supervision=sup)))
        for bps in s["resnet_depths"]:
            for seed in s["seeds"]:
                out.append(({"family": "resnet", "supervision": sup, "depth_B": sum(bps)},
                            resnet_run(s, blocks_per_stage=bps, seed=seed, supervision=sup)))
    return out


def _with_linear_fan_in(df: pd.DataFrame, run) -> pd.DataFrame:
    """Add ``F_linear``: the single-head fan-in of the same architecture (for deep-supervision
    runs, so both profiles can be tested)."""
    lay = run.model.layout()
    single = Layout(lay.blocks, (), lay.shared)
    fan = block_fan_in(single)
    df["F_linear"] = [sum(fan[a] for a in u.applications) for u in run.model.units("block")]
    return df


def summarize(units: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (family, sup), d in units.groupby(["family", "supervision"], sort=False):
        tag = f"{family}/{sup}"
        fan_cols = ["F"] if sup == "final" else ["F", "F_linear"]
        for fcol in fan_cols:
            label = "quadratic F" if (sup == "all" and fcol == "F") else "linear F"
            r = stats.per_run_correlation(d, fcol, "A", test=f"{tag}: per-run Spearman A vs {label}")
            rows.append(r)
            d = d.assign(_Fn=d[fcol] / d.groupby("run_id")[fcol].transform("mean"))
            rows.append(stats.ols_slope(d, "A_norm", "_Fn", cluster="run_id",
                                        test=f"{tag}: OLS A_norm ~ {label}_norm"))
            rows.append(stats.loglog_slope(d, "A", fcol, cluster="run_id",
                                           test=f"{tag}: log-log slope A ~ {label}"))
        rows.append(stats.per_run_correlation(d, "F", "A_rms", test=f"{tag}: per-run Spearman A_rms vs F"))
        if "A_stream" in d:
            rows.append(stats.per_run_correlation(d, "F", "A_stream",
                                                  test=f"{tag}: per-run Spearman A_stream vs F"))
    return pd.DataFrame(rows)[SUMMARY_COLUMNS]


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    ctx, started, s, plan, results = start(NAME, configs, profile, ctx)
    frames = []
    for (desc, _), res in zip(plan, results):
        df = unit_table(res, "block", **desc)
        frames.append(_with_linear_fan_in(df, res))
    units = pd.concat(frames, ignore_index=True)
    summary = summarize(units)
    branch = pd.concat([unit_table(res, "branch", **desc) for (desc, _), res in zip(plan, results)
                        if desc["family"] == "transformer"], ignore_index=True)
    return finish(ctx, NAME, units, summary, results, started, branch_units=branch)

