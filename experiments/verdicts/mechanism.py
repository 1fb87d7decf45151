"""Beyond the paper: hypotheses H1-H5 of the mechanism study (:mod:`experiments.mechanism`).

The paper's account of the gradient profile is a path *count* (fan-in). The mechanism study
measures the rivals: path *gains* (gain-weighted path sums), *stream growth* (Pre-LN branch gains
fall like ``1 / RMS(x)``) and gradient *rank* (how aligned the paths' contributions are). H1-H5
were written, with their margins in :data:`~experiments.verdicts.toolkit.THRESHOLDS`, before the
default profile's tables were read, and are judged with the claims' toolkit.

Profile error: per run, the RMS over branches of ``log(pred / mean pred) - log(A / mean A)``;
gains are those averaged over the training samples (:data:`GAINS`). The gain-weighted account H1
and H2 test is chosen on the Pre-LN runs (the smallest mean error there) and carried to the other
arms unchanged: there they are held-out runs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

from .. import mechanism as mech
from ..summary import without_single_interval
from .importance import association, judge_association
from .toolkit import (FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS as T, Estimate, Finding, combine, defined,
                      missing, noninferior_p, signed, superiority, undefined)

GAINS = "training"  # the gain source of the tested accounts (the final model's is reported)
CHOSEN_ON = "pre"  # the arm the gain-weighted account is selected on


def _errors(tables: dict) -> pd.DataFrame:
    e = tables["errors"]
    return e[e["gains"] == GAINS]


def chosen_account(errors: pd.DataFrame) -> str:
    """The gain-weighted account with the smallest mean profile error on the Pre-LN runs."""
    pre = errors[(errors["arm"] == CHOSEN_ON) & errors["account"].isin(mech.GAIN_ACCOUNTS)]
    return str(pre.groupby("account")["log_error"].mean().idxmin())


def paired_error(errors: pd.DataFrame, rival: str) -> pd.Series:
    """Paired by run (the same run scored twice): error(counts) - error(rival), t-interval over runs."""
    w = errors.pivot_table(index="run_id", columns="account", values="log_error")
    return pd.Series(without_single_interval(stats.paired_difference(w["counts"], w[rival])))


H1_RULE = (f"Pre-LN runs at every depth, paired by run: d = error(counts) - error(best gain-weighted account, chosen on "
           f"these runs, which favours the rival), mean with a t-interval over runs. Non-inferior if the one-sided "
           f"test of d >= {T.error_margin:g} rejects at alpha = {T.alpha:g}. Holds if non-inferior pooled "
           f"over depths and at no depth does d's interval lie above the margin; mixed if non-inferior pooled but "
           f"above the margin at some depth; does not hold if the pooled interval lies above the margin; "
           f"inconclusive otherwise")


def h1(tables: dict) -> Finding:
    e = _errors(tables)
    pre = e[e["arm"] == CHOSEN_ON]
    if pre.empty:
        return missing("no Pre-LN runs")
    best = chosen_account(e)
    pooled = paired_error(pre, best)
    by_depth = {B: paired_error(d, best) for B, d in pre.groupby("depth_B")}
    label = f"error(counts) - error({best}), pooled over depths"
    secondary = tuple(Estimate.of(r, f"B = {B}: error(counts) - error({best})", unit="seeds")
                      for B, r in by_depth.items())
    if not defined(pooled):
        return undefined(primary=Estimate.of(pooled, label), secondary=secondary)
    p = noninferior_p(pooled, T.error_margin)
    primary = Estimate.of(pooled, label, p=p, p_name="non-inferiority p")
    found = {"primary": primary, "margin": T.error_margin, "secondary": secondary}
    above = [B for B, r in by_depth.items() if np.isfinite(r.ci_low) and r.ci_low > T.error_margin]
    if pooled.ci_low > T.error_margin:
        return Finding(FAILS, why=f"counts fit the Pre-LN profile worse than {best} by {pooled.estimate:.3f}, beyond "
                                  f"the margin {T.error_margin:g}", **found)
    if p < T.alpha:
        return Finding(MIXED if above else HOLDS, why=(f"worse beyond the margin at B = {above}" if above else
                                                       f"counts within {T.error_margin:g} of {best}"), **found)
    return Finding(INCONCLUSIVE, why="neither within nor beyond the margin", **found)


H2_RULE = ("On each held-out arm whose placement changes the gains but not the wiring (" + ", ".join(mech.GAIN_ARMS)
           + "), paired by seed: d = error(counts) - error(the gain-weighted account chosen on Pre-LN), two-sided "
           "paired t, Holm across arms. Holds if the gain account is better (d > 0, significant) on every arm; mixed "
           "if on some; does not hold if on none and counts are significantly better on some; inconclusive otherwise")


def h2(tables: dict) -> Finding:
    e = _errors(tables)
    arms = [a for a in mech.GAIN_ARMS if (e["arm"] == a).any()]
    if not arms or not (e["arm"] == CHOSEN_ON).any():
        return missing("no placement arms")
    best = chosen_account(e)
    rows = [paired_error(e[e["arm"] == a], best) for a in arms]
    p, better, worse = signed(rows)
    est = tuple(Estimate.of(r, f"{a}: error(counts) - error({best})", unit="seeds", p=q, p_name="Holm p")
                for a, r, q in zip(arms, rows, p))
    why = f"{best} fits better on {int(better.sum())} of {len(arms)} arms, counts on {int(worse.sum())}"
    return Finding(superiority(better, worse, defined(*rows)), est[0], why=why, secondary=est[1:])


H3_RULE = ("Transformer runs of every arm: what counts leave unexplained, the log-slope of A / F over relative depth, "
           "against the log-slope of the (training-mean) stream RMS over relative depth. Predicted sign positive (a "
           "faster-growing stream shrinks late gains, so early branches collect less than counts say: a flatter A). "
           "OLS across runs (t with n - 2 df) and Spearman across runs (Fisher-z interval), Holm over the two. Holds "
           "if both are positive and significant; mixed if one; does not hold if none is and some is "
           "negative-significant; inconclusive otherwise")


def across_runs(runs: pd.DataFrame, y: str, x: str, sign: int, why_sign: str) -> Finding:
    """H3/H4: OLS and Spearman of ``y`` on ``x`` across runs, Holm over the two, predicted sign ``sign``."""
    runs = runs[np.isfinite(runs[[x, y]].to_numpy(float)).all(axis=1)]
    if len(runs) < 4:
        return undefined(f"{len(runs)} runs with {x} and {y} defined")
    ols = pd.Series(stats.ols_slope(runs, y, x))
    sp = pd.Series(stats.rank_correlations(runs[x], runs[y])[0])
    rows = [ols, sp]
    p, pos, neg = signed(rows, sign)
    primary = Estimate(f"OLS slope of {y} on {x} across runs", ols.estimate, ols.ci_low, ols.ci_high, int(ols.n),
                       p[0], "Holm p", fmt=".3g")
    spearman = Estimate(f"Spearman rho({x}, {y}) across runs", sp.estimate, sp.ci_low, sp.ci_high, int(sp.n), p[1],
                        "Holm p", fmt=".2f")
    verdict = superiority(pos, neg, defined(*rows))
    why = (f"{why_sign} in {int(pos.sum())} of 2 tests" if pos.any() else
           f"the opposite sign in {int(neg.sum())} of 2 tests (slope {ols.estimate:.3g}, rho {sp.estimate:.2f})"
           if neg.any() else "no test significant after Holm")
    return Finding(verdict, primary, why=why, secondary=(spearman,))


def _transformer_runs(tables: dict) -> pd.DataFrame:
    r = tables["runs"]
    return r[r["family"] == "transformer"]


def _per_arm(runs: pd.DataFrame, col: str, label: str) -> tuple[Estimate, ...]:
    return tuple(Estimate(f"{a}: {label} (mean over seeds)", g, n=int((runs["arm"] == a).sum()), unit="seeds",
                          fmt=".2f") for a, g in runs.groupby("arm", sort=False)[col].mean().items())


def h3(tables: dict) -> Finding:
    runs = _transformer_runs(tables)
    if len(runs) < 4:
        return missing("fewer than 4 Transformer runs")
    f = across_runs(runs, "excess_slope", "stream_growth", +1, "a faster-growing stream flattens A")
    return Finding(f.verdict, f.primary, f.margin, f.why, f.secondary + _per_arm(runs, "stream_growth",
                                                                                   "stream growth (log-slope)"))


H4_RULE = ("Transformer runs of every arm (the small-batch and large-learning-rate Pre-LN settings move the rank): the "
           "within-run exponent of A on F against the mean relative window effective rank of the blocks' gradients "
           "(effective rank of held-out minibatch gradients / window size). Predicted sign negative (more directions: "
           "contributions nearer orthogonal, A nearer sqrt(F)). OLS and Spearman across runs, Holm over the two. "
           "Holds if both are negative and significant; mixed if one; does not hold if none is and some is "
           "positive-significant; inconclusive otherwise")


def h4(tables: dict) -> Finding:
    runs = _transformer_runs(tables)
    if len(runs) < 4:
        return missing("fewer than 4 Transformer runs")
    f = across_runs(runs, "exponent", "mean_window_relative_rank", -1, "more gradient directions, a flatter A")
    return Finding(f.verdict, f.primary, f.margin, f.why, f.secondary + _per_arm(runs, "mean_window_relative_rank",
                                                                                   "mean relative window rank"))


H5_RULE = ("Claim C5's rule per proxy (" + ", ".join(mech.PROXIES) + "; A_signal = A - noise_floor) on the Pre-LN "
           "runs: the OLS slope of normalized ablation importance on the normalized proxy with a depth control "
           "(cluster-robust, t with G - 1 df) and the mean per-run Spearman without the first block, Holm over the "
           "two; per proxy C5's verdicts (holds if both are positive-significant, mixed if one, does not hold if none is "
           "and one is negative-significant, inconclusive otherwise). Holds if every proxy holds, does not hold if "
           "every proxy does not; inconclusive if some proxy is inconclusive; mixed otherwise (verdicts printed)")


def proxy_finding(summary: pd.DataFrame, proxy: str) -> Finding:
    """C5's rule (study 2's rows, Holm over the two) for one proxy's rows."""
    rows, shown = association(summary, f"transformer[{proxy}]")
    if not defined(*rows):
        return undefined(primary=shown[0], secondary=shown[1:])
    verdict, _, why = judge_association(rows, ["slope with a depth control", "Spearman without the first block"])
    return Finding(verdict, shown[0], why=why, secondary=shown[1:2])


def h5(tables: dict) -> Finding:
    summary = tables.get("proxies")
    if summary is None or summary.empty:
        return missing("no proxy rows")
    found = {px: proxy_finding(summary, px) for px in mech.PROXIES if (summary["proxy"] == px).any()}
    verdicts = [f.verdict for f in found.values()]
    whys = {f.why for f in found.values()}
    why = (f"every proxy {verdicts[0].value}: {whys.pop()}" if len(set(verdicts)) == 1 and len(whys) == 1 else
           ", ".join(f"{px} {f.verdict.value}" for px, f in found.items()))
    shown = tuple(Estimate(**{**e.__dict__, "note": f.verdict.value if e is f.primary else e.note})
                  for f in found.values() for e in (f.primary, *f.secondary))
    return Finding(combine(verdicts), shown[0], why=why, secondary=shown[1:])
