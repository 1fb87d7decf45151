"""Beyond the paper: the pre-declared hypotheses of the mechanism study and the rules that judge them.

The paper's account of the gradient profile is a path *count* (fan-in). The mechanism study
(:mod:`experiments.mechanism`) measures the rivals: path *gains* (gain-weighted path sums),
*stream growth* (Pre-LN branch gains fall like ``1 / RMS(x)``) and gradient *rank* (how aligned
the paths' contributions are). H1-H5 below were written, with their margins in
:data:`BEYOND`, before the default profile's tables were read. Verdicts, vocabulary and helpers
are those of the paper's claims (:mod:`figures.claims`: holds / mixed / does not hold /
inconclusive; Holm within a hypothesis; non-inferiority as the one-sided half of TOST;
"does not hold" needs evidence against, never a non-significant difference).

Profile error: per run, the RMS over branches of ``log(pred / mean pred) - log(A / mean A)``;
gains are those averaged over the training samples (``gains == "training"``). The gain-weighted
account H1 and H2 test is chosen on the Pre-LN runs (the smallest mean error there) and carried
to the other arms unchanged: there they are held-out runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from experiments import mechanism as mech
from experiments.summary import without_single_interval
from gfa_theory.instrument import stats
from gfa_theory.instrument.stats import format_p

from .claims import FAILS, HOLDS, INCONCLUSIVE, MIXED, MISSING, UNDEFINED, Finding
from .claims import _association, _ci, _combine, _exact_p, _superiority


@dataclass(frozen=True)
class BeyondRules:
    alpha: float = 0.05  # family-wise, Holm within each hypothesis
    # H1: counts are "no worse" if their profile error exceeds the best gain-weighted account's by
    # less than 0.05 (an RMS log-shape error of 0.05 is about a 5 % misfit per branch)
    error_margin: float = 0.05
    gains: str = "training"  # the gain source of the tested accounts (the final model's is reported)


BEYOND = BeyondRules()
_CHOSEN_ON = "pre"  # the arm the gain-weighted account is selected on


@dataclass(frozen=True)
class Hypothesis:
    key: str
    statement: str
    rule: str
    measure: Callable[[dict], Finding]  # the mechanism study's tables -> finding


def _errors(tables: dict) -> pd.DataFrame:
    e = tables["errors"]
    return e[e["gains"] == BEYOND.gains]


def chosen_account(errors: pd.DataFrame) -> str:
    """The gain-weighted account with the smallest mean profile error on the Pre-LN runs."""
    pre = errors[(errors["arm"] == _CHOSEN_ON) & errors["account"].isin(mech.GAIN_ACCOUNTS)]
    return str(pre.groupby("account")["log_error"].mean().idxmin())


def _paired(errors: pd.DataFrame, rival: str, test: str) -> pd.Series:
    """Paired by run (the same run scored twice): error(counts) - error(rival), t-interval over runs."""
    w = errors.pivot_table(index="run_id", columns="account", values="log_error")
    return pd.Series(without_single_interval(stats.paired_difference(w["counts"], w[rival], test)))


def _noninferior(r: pd.Series, margin: float) -> float:
    """One-sided p of H0 ``difference >= margin`` (the upper half of TOST)."""
    se = stats.se_from_interval(r.ci_low, r.ci_high, int(r.n))
    if r.ci_low == r.ci_high and np.isfinite(r.estimate):  # no spread: decided exactly
        return 0.0 if r.estimate < margin else 1.0
    return stats.tost(r.estimate, se, int(r.n) - 1, margin)["p_upper"]


def _defined(*rows: pd.Series) -> bool:
    return all(np.isfinite([r.estimate, r.ci_low, r.ci_high]).all() for r in rows)


# ---- H1: counts on Pre-LN ------------------------------------------------------------------------

H1_RULE = (f"Pre-LN runs at every depth, paired by run: d = error(counts) - error(best gain-weighted account, chosen on "
           f"these runs, which favours the rival), mean with a t-interval over runs. Non-inferior if the one-sided "
           f"test of d >= {BEYOND.error_margin:g} rejects at alpha = {BEYOND.alpha:g}. Holds if non-inferior pooled "
           f"over depths and at no depth does d's interval lie above the margin; mixed if non-inferior pooled but "
           f"above the margin at some depth; does not hold if the pooled interval lies above the margin; "
           f"inconclusive otherwise")


def h1(tables: dict) -> Finding:
    e = _errors(tables)
    pre = e[e["arm"] == _CHOSEN_ON]
    if pre.empty:
        return Finding(MISSING, "no Pre-LN runs")
    best = chosen_account(e)
    pooled = _paired(pre, best, "pooled")
    by_depth = {B: _paired(d, best, f"B={B}") for B, d in pre.groupby("depth_B")}
    text = (f"best gain-weighted account on Pre-LN: {best}; error(counts) - error({best}) = {_ci(pooled)} "
            f"(n = {int(pooled.n)} runs; margin {BEYOND.error_margin:g}); by depth: "
            + ", ".join(f"B = {B}: {_ci(r, unit='seeds')}" for B, r in by_depth.items())
            + f"; mean errors: counts {pre[pre.account == 'counts'].log_error.mean():.3f}, "
            f"{best} {pre[pre.account == best].log_error.mean():.3f}")
    if not _defined(pooled):
        return Finding(UNDEFINED, text)
    p = _noninferior(pooled, BEYOND.error_margin)
    text += f"; non-inferiority {format_p(p)}"
    above = [B for B, r in by_depth.items() if np.isfinite(r.ci_low) and r.ci_low > BEYOND.error_margin]
    if pooled.ci_low > BEYOND.error_margin:
        return Finding(FAILS, text + ": counts fit the Pre-LN profile worse by more than the margin")
    if p < BEYOND.alpha:
        return Finding(MIXED if above else HOLDS, text + (f" (worse beyond the margin at B = {above})" if above else ""))
    return Finding(INCONCLUSIVE, text)


# ---- H2: gains where the placement changes them -------------------------------------------------

H2_RULE = ("On each held-out arm whose placement changes the gains but not the wiring (" + ", ".join(mech.GAIN_ARMS)
           + "), paired by seed: d = error(counts) - error(the gain-weighted account chosen on Pre-LN), two-sided "
           "paired t, Holm across arms. Holds if the gain account is better (d > 0, significant) on every arm; mixed "
           "if on some; does not hold if on none and counts are significantly better on some; inconclusive otherwise")


def h2(tables: dict) -> Finding:
    e = _errors(tables)
    arms = [a for a in mech.GAIN_ARMS if (e["arm"] == a).any()]
    if not arms or not (e["arm"] == _CHOSEN_ON).any():
        return Finding(MISSING, "no placement arms")
    best = chosen_account(e)
    rows = [_paired(e[e["arm"] == a], best, a) for a in arms]
    p = stats.holm([_exact_p(r) for r in rows])
    est = np.array([r.estimate for r in rows])
    better, worse = (p < BEYOND.alpha) & (est > 0), (p < BEYOND.alpha) & (est < 0)
    text = (f"error(counts) - error({best}) per arm: " + "; ".join(
        f"{a} {_ci(r, unit='seeds')} (Holm {format_p(q)})" for a, r, q in zip(arms, rows, p))
        + f". {best} better on {int(better.sum())} of {len(arms)} arms, counts better on {int(worse.sum())}")
    return Finding(_superiority(better, worse, _defined(*rows)), text)


# ---- H3: stream growth ---------------------------------------------------------------------------

H3_RULE = ("Transformer runs of every arm: what counts leave unexplained, the log-slope of A / F over relative depth, "
           "against the log-slope of the (training-mean) stream RMS over relative depth. Predicted sign positive (a "
           "faster-growing stream shrinks late gains, so early branches collect less than counts say: a flatter A). "
           "OLS across runs (t with n - 2 df) and Spearman across runs (Fisher-z interval), Holm over the two. Holds "
           "if both are positive and significant; mixed if one; does not hold if none is and some is "
           "negative-significant; inconclusive otherwise")


def _across_runs(runs: pd.DataFrame, y: str, x: str, sign: int) -> tuple[str, np.ndarray, np.ndarray, bool]:
    runs = runs[np.isfinite(runs[[x, y]].to_numpy(float)).all(axis=1)]
    if len(runs) < 4:
        return f"{len(runs)} runs with {x} and {y} defined", np.zeros(2, bool), np.zeros(2, bool), False
    ols = pd.Series(stats.ols_slope(runs, y, x, test=f"OLS {y} ~ {x}"))
    sp = pd.Series(stats.rank_correlations(runs[x], runs[y])[0])
    rows = [ols, sp]
    p = stats.holm([_exact_p(r) for r in rows])
    est = sign * np.array([r.estimate for r in rows])
    text = (f"OLS slope of {y} on {x} {_ci(ols, '.3g')} ({format_p(p[0])} Holm), Spearman {_ci(sp, '.2f')} "
            f"({format_p(p[1])} Holm), n = {int(ols.n)} runs")
    return text, (p < BEYOND.alpha) & (est > 0), (p < BEYOND.alpha) & (est < 0), _defined(*rows)


def _transformer_runs(tables: dict) -> pd.DataFrame:
    r = tables["runs"]
    return r[r["family"] == "transformer"]


def h3(tables: dict) -> Finding:
    runs = _transformer_runs(tables)
    if len(runs) < 4:
        return Finding(MISSING, "fewer than 4 Transformer runs")
    text, pos, neg, ok = _across_runs(runs, "excess_slope", "stream_growth", +1)
    text += ("; stream growth per arm (log-slope, mean over seeds): "
             + ", ".join(f"{a} {g:.2f}" for a, g in runs.groupby("arm", sort=False)["stream_growth"].mean().items()))
    return Finding(_superiority(pos, neg, ok), text)


# ---- H4: rank ------------------------------------------------------------------------------------

H4_RULE = ("Transformer runs of every arm (the small-batch and large-learning-rate Pre-LN settings move the rank): the "
           "within-run exponent of A on F against the mean relative window effective rank of the blocks' gradients "
           "(effective rank of held-out minibatch gradients / window size). Predicted sign negative (more directions: "
           "contributions nearer orthogonal, A nearer sqrt(F)). OLS and Spearman across runs, Holm over the two. "
           "Holds if both are negative and significant; mixed if one; does not hold if none is and some is "
           "positive-significant; inconclusive otherwise")


def h4(tables: dict) -> Finding:
    runs = _transformer_runs(tables)
    if len(runs) < 4:
        return Finding(MISSING, "fewer than 4 Transformer runs")
    text, pos, neg, ok = _across_runs(runs, "exponent", "mean_window_relative_rank", -1)
    text += ("; mean relative window rank per arm: " + ", ".join(
        f"{a} {g:.2f}" for a, g in runs.groupby("arm", sort=False)["mean_window_relative_rank"].mean().items()))
    return Finding(_superiority(pos, neg, ok), text)


# ---- H5: accumulation proxies ------------------------------------------------------------------------

H5_RULE = ("Claim C5's rule per proxy (" + ", ".join(mech.PROXIES) + "; A_signal = A - noise_floor) on the Pre-LN "
           "runs: the OLS slope of normalized ablation importance on the normalized proxy with a depth control "
           "(cluster-robust, t with G - 1 df) and the mean per-run Spearman without the first block, Holm over the "
           "two; per proxy C5's verdicts (holds if both are positive-significant, mixed if one, does not hold if none is "
           "and one is negative-significant, inconclusive otherwise). Holds if every proxy holds, does not hold if "
           "every proxy does not; inconclusive if some proxy is inconclusive; mixed otherwise (verdicts printed)")


def proxy_finding(summary: pd.DataFrame, proxy: str) -> Finding:
    """C5's rule (study 2's rows, Holm over the two) for one proxy's rows."""
    rows, text = _association(summary, f"transformer[{proxy}]")
    if not _defined(*rows):
        return Finding(UNDEFINED, text)
    p = stats.holm([_exact_p(r) for r in rows])
    est = np.array([r.estimate for r in rows])
    return Finding(_superiority((p < BEYOND.alpha) & (est > 0), (p < BEYOND.alpha) & (est < 0), True), text)


def h5(tables: dict) -> Finding:
    summary = tables.get("proxies")
    if summary is None or summary.empty:
        return Finding(MISSING, "no proxy rows")
    found = {px: proxy_finding(summary, px) for px in mech.PROXIES if (summary["proxy"] == px).any()}
    text = "; ".join(f"[{px}: {f.verdict}] {f.measured.split(': ', 1)[1]}" for px, f in found.items())
    return Finding(_combine([f.verdict for f in found.values()]), text)


HYPOTHESES: tuple[Hypothesis, ...] = (
    Hypothesis("H1", "Path counts predict the Pre-LN profile of A no worse than the best gain-weighted account",
               H1_RULE, h1),
    Hypothesis("H2", "Gain-weighted accounts beat counts where the norm placement changes the gains", H2_RULE, h2),
    Hypothesis("H3", "Stream growth flattens the profile of A beyond what counts predict", H3_RULE, h3),
    Hypothesis("H4", "The more directions the gradients spread over (rank), the less A follows F", H4_RULE, h4),
    Hypothesis("H5", "Every accumulation proxy (A, net gradient, A beyond noise, updates, displacement) tracks "
                     "held-out ablation importance under claim C5's rule", H5_RULE, h5),
)


def evaluate(tables: dict | None) -> pd.DataFrame:
    """One row per hypothesis: key, statement, measured, verdict, rule (``tables``: the mechanism
    study's tables; None when it has not been run)."""
    rows = []
    for h in HYPOTHESES:
        f = h.measure(tables) if tables is not None else Finding(MISSING, "the mechanism study has not been run")
        rows.append({"hypothesis": h.key, "statement": h.statement, "measured here": f.measured,
                     "verdict": f.verdict, "rule": h.rule})
    return pd.DataFrame(rows)


def b1(tables: dict) -> pd.DataFrame:
    """Output B1: the hypotheses and their verdicts (read by the report's "Beyond the paper")."""
    return evaluate(tables.get(mech.NAME))


__all__ = ["BEYOND", "HYPOTHESES", "HOLDS", "MIXED", "FAILS", "INCONCLUSIVE", "evaluate", "b1"]
