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
The exponent rows differ in what they hold fixed: *within runs* fits each run's depth profile (an
intercept per run); *first block excluded* leaves out block 1, which carries most of A in small
models; *pooled* fits across runs of every depth; *+ depth* adds relative depth as a regressor,
and since the run intercept absorbs ``log N``, what is left of ``log F = log(N - i + 1)`` is its
bend: it falls slowly over the early blocks and steeply at the end. That exponent reads only
whether A's profile bends the same way; a negative value says it bends the other way (A falls
steeply over the first block and is nearly flat after it), not that A is larger where fan-in is smaller.
The per-unit table (``units.csv``) has A and F normalized by their mean within each run, which
is what figures F2-F4 plot against relative depth: F2 (Transformers) and F3 (ResNets) draw the
normalized A per block, one curve per network depth with its interval over seeds, and the
normalized fan-in of the same network dashed; if A follows fan-in, each solid curve falls with
its dashed one. F4 plots the deep-supervision runs against both the quadratic and the linear
fan-in: the closer line is the better-fitting profile. T5 lists the regression rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.symbolic import block_fan_in

from .plans import gpt_run, plan, resnet_run
from .runner import Context, start
from .study_io import finish
from .summary import keyed, table
from .units import unit_table

NAME = "fanin_vs_gradients"


def configs(profile: str) -> list[tuple[dict, object]]:
    """(descriptors, RunConfig) of every run this study needs."""
    p = plan(profile)
    out = []
    for sup in ("final", "all"):
        for B in p.depths:
            for seed in p.seeds:
                out.append(({"family": "transformer", "supervision": sup, "depth_B": B},
                            gpt_run(p, n_blocks=B, seed=seed, supervision=sup)))
        for bps in p.resnet_depths:
            for seed in p.seeds:
                out.append(({"family": "resnet", "supervision": sup, "depth_B": sum(bps)},
                            resnet_run(p, blocks_per_stage=bps, seed=seed, supervision=sup)))
    return out


def _with_linear_fan_in(df: pd.DataFrame, run) -> pd.DataFrame:
    """Add ``F_linear``: the single-head fan-in of the same architecture (for deep-supervision
    runs, so both profiles can be tested)."""
    lay = run.model.layout()
    single = Layout(lay.blocks, (), lay.shared)
    fan = block_fan_in(single)
    df["F_linear"] = [sum(fan[a] for a in u.applications) for u in run.model.units("block")]
    return df


def _exponents(d: pd.DataFrame, fcol: str, tag: str, label: str, key: dict) -> list[dict]:
    """The exponent of A on a fan-in profile (log-log, cluster-robust by run, t with G - 1 df):
    pooled; within runs (an intercept per run, so only the depth profile counts); within runs with
    the first block left out (it carries most of A in small models); and within runs controlling
    for relative depth (what fan-in explains beyond position, where depths differ across runs)."""
    rest = d[d["order"] > 1]
    return [keyed(stats.loglog_slope(d, "A", fcol, cluster="run_id", test=f"{tag}: log-log slope A ~ {label}"),
                  quantity="exponent_pooled", **key),
            keyed(stats.loglog_slope(d, "A", fcol, cluster="run_id", fixed="run_id",
                                     test=f"{tag}: within-run exponent A ~ {label}"), quantity="exponent", **key),
            keyed(stats.loglog_slope(rest, "A", fcol, cluster="run_id", fixed="run_id",
                                     test=f"{tag}: within-run exponent A ~ {label}, first block excluded"),
                  quantity="exponent", subset="no_first_block", **key),
            keyed({**stats.ols_slope(d.assign(_lA=np.log(d["A"]), _lF=np.log(d[fcol])), "_lA", "_lF",
                                     cluster="run_id", controls=["depth"], fixed="run_id"),
                   "test": f"{tag}: within-run exponent A ~ {label} + depth"}, quantity="exponent_depth", **key)]


def _profile_aic(d: pd.DataFrame, tag: str, key: dict) -> dict:
    """Deep supervision: which fan-in is A proportional to? AIC of ``log A = log F + c_run`` with the
    quadratic minus with the linear fan-in (same rows, same parameter count): negative favours the
    quadratic profile, positive the linear one; |difference| > 2 is the usual threshold."""
    logs = d.assign(_lA=np.log(d["A"]), _lq=np.log(d["F"]), _ll=np.log(d["F_linear"]))
    diff = (stats.offset_aic(logs, "_lA", "_lq", "run_id") - stats.offset_aic(logs, "_lA", "_ll", "run_id"))
    return keyed({"test": f"{tag}: AIC(A proportional to quadratic F) - AIC(A proportional to linear F)",
                  "estimate": diff, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "r2": np.nan, "n": len(d),
                  "n_groups": d["run_id"].nunique(), "method": "OLS on logs with run intercepts, exponent fixed at 1"},
                 quantity="aic_quadratic_minus_linear", **key)


def summarize(units: pd.DataFrame) -> pd.DataFrame:
    """Per (family, supervision): per-run Spearman, OLS and the exponents of A on each fan-in.
    Rows are keyed by ``family``, ``setting`` (the supervision), ``quantity``, ``predictor`` (the
    fan-in profile: ``linear`` or ``quadratic``) and ``subset``."""
    rows = []
    for (family, sup), d in units.groupby(["family", "supervision"], sort=False):
        tag = f"{family}/{sup}"
        base = {"family": family, "setting": sup}
        fan_cols = ["F"] if sup == "final" else ["F", "F_linear"]
        for fcol in fan_cols:
            profile = "quadratic" if (sup == "all" and fcol == "F") else "linear"
            label = f"{profile} F"
            key = {**base, "predictor": profile}
            rows.append(keyed(stats.per_run_correlation(d, fcol, "A", test=f"{tag}: per-run Spearman A vs {label}"),
                              quantity="spearman", **key))
            d = d.assign(_Fn=d[fcol] / d.groupby("run_id")[fcol].transform("mean"))
            rows.append(keyed(stats.ols_slope(d, "A_norm", "_Fn", cluster="run_id",
                                              test=f"{tag}: OLS A_norm ~ {label}_norm"), quantity="ols_norm", **key))
            rows += _exponents(d, fcol, tag, label, key)
        if sup == "all":
            rows.append(_profile_aic(d, tag, base))
        rows.append(keyed(stats.per_run_correlation(d, "F", "A_rms", test=f"{tag}: per-run Spearman A_rms vs F"),
                          quantity="spearman_A_rms", **base))
        if "A_stream" in d:
            rows.append(keyed(stats.per_run_correlation(d, "F", "A_stream",
                                                        test=f"{tag}: per-run Spearman A_stream vs F"),
                              quantity="spearman_A_stream", **base))
    return table(rows)


def run(profile: str = "default", ctx: Context | None = None) -> pd.DataFrame:
    """Train (or read back) the runs, tabulate every block and branch, test, write."""
    ctx, started, _, runs, results = start(NAME, configs, profile, ctx)
    units = pd.concat([_with_linear_fan_in(unit_table(res, "block", **desc), res)
                       for (desc, _), res in zip(runs, results)], ignore_index=True)
    branch = pd.concat([unit_table(res, "branch", **desc) for (desc, _), res in zip(runs, results)
                        if desc["family"] == "transformer"], ignore_index=True)
    return finish(ctx, NAME, units, summarize(units), results, started, branch_units=branch)

