"""Claims C1-C4: the fan-in theory (C1) and whether accumulated gradients follow it (study 1,
:mod:`experiments.fanin_vs_gradients`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.path_counts import count_paths
from gfa_theory.theory.symbolic import analyze, closed_form_profile

from ..summary import need, pick
from .toolkit import (FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS as T, Estimate, Finding, combine, defined,
                      significant, tost, undefined)

C1_RULE = ("holds if the sympy closed forms equal the general layout computation and the autograd path counts "
           f"for every stack of N = 1..{T.theory_max_n} branches, one head and deep supervision")


def c1() -> Finding:
    """The sympy closed forms against the general layout computation and autograd path counts."""
    ok, checked, agree = True, 0, 0
    for N in range(1, T.theory_max_n + 1):
        for sup in ("final", "all"):
            lay = Layout.sequential(N, sup)
            sym = analyze(lay, max_order=1).fan_in
            auto = count_paths(lay, max_order=1).fan_in
            same = list(sym) == closed_form_profile(N, sup) and all(
                abs(a - s) < T.theory_tol for a, s in zip(auto, sym))
            ok &= same
            checked += N
            agree += N if same else 0
    primary = Estimate("branches where closed form, layout and autograd agree", agree, n=checked, unit="branches",
                       fmt=".0f")
    why = (f"closed forms N-i+1 and (N-i+1)(N-i+2)/2 match autograd on all {checked} branches" if ok else
           f"the closed forms disagree with autograd on {checked - agree} of {checked} branches")
    return Finding(HOLDS if ok else FAILS, primary, why=why)


# wording only (never the verdict): "the decay is mostly the first block" when the exponent without
# it is at most this fraction of the exponent with it
FIRST_BLOCK_CARRIES = 0.5


def proportional(rows) -> np.ndarray:
    """Holm-adjusted TOST: is each exponent equivalent to 1 within +-exponent_margin?"""
    return significant(stats.holm([tost(r, T.exponent_margin, centre=1.0)["p"] for r in rows]))


C2_RULE = (f"Order: the mean per-run Spearman rho(A, F) is >= {T.min_rho:g} with its t-interval over runs "
           f"above 0. Shape: the within-run exponent of A on F (log-log OLS with an intercept per run, "
           f"cluster-robust by run, t with G - 1 df), with and without the first block, is 'proportional' if a "
           f"Holm-adjusted TOST puts it within 1 +- {T.exponent_margin:g}. Holds if the order follows and A is "
           f"proportional to F with and without the first block; mixed if the order follows but A is not shown "
           f"proportional (or rho > 0 but below {T.min_rho:g}); does not hold if rho's interval lies below "
           f"{T.min_rho:g} and reaches 0; inconclusive otherwise or if a statistic is undefined. The exponent "
           f"with a relative-depth control (what fan-in explains beyond position) is reported")


def follows(summary: pd.DataFrame, family: str) -> Finding:
    """C2/C3: the order (per-run Spearman) and the shape (within-run exponent) of A on the linear F."""
    key = {"family": family, "setting": "final", "predictor": "linear"}
    r = need(summary, quantity="spearman", **key)
    e = need(summary, quantity="exponent", **key)
    e1 = need(summary, quantity="exponent", subset="no_first_block", **key)
    ed = need(summary, quantity="exponent_depth", **key)
    pooled = need(summary, quantity="exponent_pooled", **key)
    primary = Estimate.of(r, "mean per-run Spearman rho(A, F)")
    secondary = (exponent(e, "exponent of A on F (A ~ F^k), within runs"),
                 exponent(e1, "exponent, without the first block"),
                 Estimate.of(ed, "exponent with a relative-depth control (F and depth nearly collinear in a run)",
                             ".2f"),
                 Estimate.of(pooled, "exponent pooled across runs (depths mixed)", ".2f"))
    found = {"primary": primary, "margin": T.min_rho, "secondary": secondary}
    if not defined(r, e, e1):
        return Finding(INCONCLUSIVE, why="a statistic is undefined", **found)
    prop = proportional([e, e1])
    rho = f"rho {r.estimate:.2f}"
    if r.ci_low > 0 and r.estimate >= T.min_rho:
        if prop.all():
            return Finding(HOLDS, why=f"A falls with F ({rho}) and in proportion: exponent {e.estimate:.2f}, "
                                      f"{e1.estimate:.2f} without the first block", **found)
        if e1.estimate <= FIRST_BLOCK_CARRIES * e.estimate:
            why = (f"the order follows ({rho}), but the decay is mostly the first block: exponent "
                   f"{e1.estimate:.2f} without it, {e.estimate:.2f} with it")
        else:
            why = (f"the order follows ({rho}), but A falls more slowly than F: exponent {e.estimate:.2f}, "
                   f"{e1.estimate:.2f} without the first block")
        return Finding(MIXED, why=why, **found)
    if r.ci_low > 0:
        return Finding(MIXED, why=f"{rho} is above 0 but below {T.min_rho:g}", **found)
    if r.ci_high < T.min_rho:
        return Finding(FAILS, why=f"{rho}: its interval lies below {T.min_rho:g} and reaches 0", **found)
    return Finding(INCONCLUSIVE, why=f"{rho}: its interval reaches both 0 and {T.min_rho:g}", **found)


def c2(summary: pd.DataFrame) -> Finding:
    return follows(summary, "transformer")


def c3(summary: pd.DataFrame) -> Finding:
    return follows(summary, "resnet")


C4_RULE = (f"Deep supervision, each family: the quadratic and the linear fan-in compared on the same data by (a) the "
           f"AIC of log A = log F + c_run (exponent fixed at 1; equal parameter counts, so the AIC difference is a "
           f"likelihood ratio; beyond {T.aic_threshold:g} prefers a profile) and (b) the within-run exponent on "
           f"each fan-in, with and without the first block (proportional = Holm-adjusted TOST within 1 +- "
           f"{T.exponent_margin:g}). 'Quadratic' if the AIC prefers the quadratic profile and A is proportional "
           f"to the quadratic fan-in with and without the first block; 'linear' if the AIC prefers the linear profile "
           f"or A is proportional to the linear fan-in (and not the quadratic) with and without the first block; "
           f"'mixed' if the evidence splits. Holds if every family is quadratic; does not hold if every family is "
           f"linear; mixed otherwise; inconclusive if a statistic is undefined or no AIC difference exceeds "
           f"{T.aic_threshold:g} and no exponent is proportional")

_PROFILES = ("quadratic", "quadratic without the first block", "linear", "linear without the first block")


def exponent(r, label: str) -> Estimate:
    """An exponent of A on F with its TOST p of 'within 1 +- exponent_margin' (unadjusted)."""
    return Estimate.of(r, label, ".2f", p=tost(r, T.exponent_margin, centre=1.0)["p"],
                       p_name=f"TOST p (1 +- {T.exponent_margin:g})")


def deep_family(summary: pd.DataFrame, family: str) -> tuple[Finding, str]:
    """One family's C4 verdict and its short why."""
    key = {"family": family, "setting": "all"}
    aic = need(summary, quantity="aic_quadratic_minus_linear", **key)
    rows = [need(summary, quantity="exponent", predictor=p, subset=s, **key)
            for p in ("quadratic", "linear") for s in ("all", "no_first_block")]
    primary = Estimate(f"{family}: AIC(quadratic) - AIC(linear) (negative favours quadratic)", float(aic.estimate),
                       n=int(aic.n_groups), fmt="+.1f")
    secondary = tuple(exponent(r, f"{family}: exponent on the {p} fan-in" + (", without the first block" if s else ""))
                      for r, (p, s) in zip(rows, [("quadratic", 0), ("quadratic", 1), ("linear", 0), ("linear", 1)]))
    found = {"primary": primary, "margin": T.aic_threshold, "secondary": secondary}
    if not (defined(*rows) and np.isfinite(aic.estimate)):
        return Finding(INCONCLUSIVE, why="a statistic is undefined", **found), "a statistic is undefined"
    prop = proportional(rows)
    quad_aic, lin_aic = aic.estimate < -T.aic_threshold, aic.estimate > T.aic_threshold
    quad = quad_aic and prop[:2].all()
    lin = lin_aic or (prop[2:].all() and not prop[:2].any())
    if quad and not lin:
        return Finding(HOLDS, **found), f"decays like the quadratic count (AIC {aic.estimate:+.1f})"
    if lin and not (quad_aic or prop[:2].any()):
        return Finding(FAILS, **found), f"decays like the linear count (AIC {aic.estimate:+.1f})"
    if quad_aic or lin_aic or prop.any():
        shown = ", ".join(n for n, ok in zip(_PROFILES, prop) if ok) or "none"
        return Finding(MIXED, **found), f"AIC {aic.estimate:+.1f}, proportional: {shown}"
    return Finding(INCONCLUSIVE, **found), "no profile fits or is preferred"


def c4(summary: pd.DataFrame) -> Finding:
    """Deep supervision: does A decay like the quadratic or like the linear fan-in (every family)?"""
    fams = [f for f in ("transformer", "resnet")
            if pick(summary, family=f, setting="all", quantity="exponent", predictor="quadratic") is not None]
    if not fams:
        return undefined("no deep-supervision runs")
    found = [deep_family(summary, f) for f in fams]
    first = found[0][0]
    return Finding(combine([f.verdict for f, _ in found]), first.primary, T.aic_threshold,
                   "; ".join(f"{fam}: {why}" for fam, (_, why) in zip(fams, found)),
                   tuple(e for f, _ in found for e in ((f.primary,) if f is not first else ()) + f.secondary))
