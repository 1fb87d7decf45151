"""Every claim of the abstract (C1-C11) and the rule that judges it, in one module.

Each rule is a small pure function from the study tables to a :class:`Finding` (verdict, measured
text), with every threshold and margin declared once, in :data:`RULES` at the top of this module,
and printed in the rule's text. Verdicts are computed, never written by hand: **holds** /
**mixed** / **does not hold** (at this scale) / **inconclusive**, or **not measured** when the
study behind a claim has not been run for this profile. The studies compute numbers only; what
counts as "comparable", "better" or "proportional" is decided here.

Shared conventions, stated once (each rule's text repeats what it uses):

* several comparisons inside one claim are Holm-adjusted (family-wise alpha = 0.05);
* "does not change", "comparable" and "competitive" are equivalence (TOST) or non-inferiority
  tests (the relevant one-sided half of TOST) at a margin declared in :data:`RULES`; a
  non-significant difference is never support for them;
* a positive claim with no significant evidence either way is **inconclusive**; **does not hold**
  needs evidence against it (an effect in the wrong direction, or an equivalence it rules out);
* intervals are 95 % t-intervals (cluster-robust ones use t with G - 1 df, G runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from experiments import cascadeformer as cf
from experiments import equalization as eq
from experiments import pruning as pr
from gfa_theory.instrument import stats
from gfa_theory.instrument.stats import format_interval, format_p
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.path_counts import count_paths
from gfa_theory.theory.symbolic import analyze, closed_form_profile

HOLDS, MIXED, FAILS, MISSING = "holds", "mixed", "does not hold at this scale", "not measured"
INCONCLUSIVE = "inconclusive"
UNDEFINED = "inconclusive (a statistic is undefined)"


# ---- every threshold and margin, declared before the results are read -----------------------------

@dataclass(frozen=True)
class Rules:
    alpha: float = 0.05  # family-wise, Holm within each claim
    theory_max_n: int = 40  # C1: every stack of N = 1..40 branches, one head and deep supervision
    theory_tol: float = 1e-9  # C1: autograd path counts vs the symbolic fan-in
    min_rho: float = 0.5  # C2, C3: mean per-run Spearman rho(A, F) for "the order follows fan-in"
    exponent_margin: float = 0.2  # C2-C4: "A proportional to F" = exponent equivalent to 1 within +-0.2
    aic_threshold: float = 2.0  # C4: an AIC difference beyond 2 prefers one fan-in profile
    share_margin: float = 0.05  # C6: a change in the late-half importance share within +-5 points = none (reported)
    # C6, primary: a change in the late-half ablation delta-loss (nats, summed over the last half of the
    # blocks) within +-25 % of the control's mean = "does not restore" (restoring the late blocks means
    # closing a several-fold gap to the first block; a quarter is well inside that)
    eq_late_margin_pct: float = 25.0
    # C6 manipulation check: an arm equalized what the blocks learned if its mean coefficient of
    # variation of U (summed update norms) across blocks is at most half its control's
    eq_cv_ratio: float = 0.5
    ppl_margin_pct: float = 2.0  # C8: perplexity at most 2 % above uniform = comparable
    paper_latency_ratio: float = 1 - 0.086  # C8: the paper's latency -8.6 %
    paper_throughput_ratio: float = 1 + 0.094  # C8: the paper's throughput +9.4 %
    acc_margin: float = 0.02  # C11: digits top-1 at most 2 points below the best heuristic = competitive
    # C11: the Transformer's 4-way continuation task at most 5 points below: its 256 items resolve an
    # accuracy near 0.35 to about +-3 points (binomial SD), so 2 points would be below its resolution
    choice_margin: float = 0.05
    power: float = 0.8  # the power the seed counts are checked against (TOST at true difference 0)


RULES = Rules()
PPL_TOLERANCE_PCT = RULES.ppl_margin_pct  # figures draw the margin and the paper's point
PAPER_LATENCY_RATIO, PAPER_THROUGHPUT_RATIO = RULES.paper_latency_ratio, RULES.paper_throughput_ratio
# C9: the heuristics CascadeFlow must beat (last-k is the ranking fan-in itself predicts); random
# is the chance floor and the greedy ablation oracle the ceiling, both reported, not counted
C9_RIVALS = ("bi", "angular", "taylor", "magnitude", "last")
C9_REPORTED = ("random", pr.ORACLE)
# C10: the heuristics compared on rank stability; last-k's ranking is one fixed order (tau = 1
# whatever the model): the stability ceiling, which CascadeFlow can at best match
STABILITY_RIVALS = ("bi", "angular", "taylor", "magnitude", "last")
STABILITY_CONTEXTS = ("seeds",)  # independent training runs; checkpoints of one run are nested
# C11: per family, the accuracy counted (a task distinct from the training loss) and its margin:
# ResNet top-1 on digits; Transformer multiple-choice continuation (the pruning study's choice task)
C11_TASKS = {"resnet": ("accuracy_vs_best", "digits top-1", RULES.acc_margin),
             "transformer": ("choice_accuracy_vs_best",
                             f"{pr.CHOICES}-way continuation choice (chance {1 / pr.CHOICES:.2f})", RULES.choice_margin)}


class Finding(NamedTuple):
    verdict: str
    measured: str


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str  # the paper's words (abstract)
    rule: str  # how the verdict is computed, in words
    evidence: str  # figure / table
    studies: tuple[str, ...]
    measure: Callable[[dict], Finding]  # study tables -> finding


# ---- helpers -------------------------------------------------------------------------------------

def _row(summary: pd.DataFrame, test: str) -> pd.Series:
    hit = summary[summary.test == test]
    if hit.empty:
        raise KeyError(test)
    return hit.iloc[0]


def _defined(*rows: pd.Series) -> bool:
    """Every estimate and interval bound is a number (a NaN verdict is never 'holds')."""
    return all(np.isfinite([r.estimate, r.ci_low, r.ci_high]).all() for r in rows)


def _finite_ci(d: pd.DataFrame) -> pd.Series:
    return np.isfinite(d[["estimate", "ci_low", "ci_high"]].to_numpy(float)).all(axis=1)


def _n(r) -> int:
    for col in ("n_groups", "n"):
        v = getattr(r, col, None)
        if v is not None and np.isfinite(v):
            return int(v)
    return 0


def _ci(r, fmt: str = ".3f", unit: str = "runs") -> str:
    """``estimate [ci_low, ci_high]`` of a summary row; ``all n runs: m`` without spread."""
    nan = f"{float('nan'):{fmt}}"
    return format_interval(r.estimate, r.ci_low, r.ci_high, fmt, missing=f"{nan} [{nan}, {nan}]",
                           no_interval=f" [{nan}, {nan}]", n=_n(r), unit=unit)


def _runs(r: pd.Series) -> str:
    return f"{_ci(r)}, {format_p(r.p)} (n = {_n(r)} runs)"


def _se(r) -> float:
    """The standard error behind a row's 95 % t-interval (df = n - 1; G - 1 for clustered rows)."""
    return stats.se_from_interval(r.ci_low, r.ci_high, _n(r))


def _exact_p(r) -> float:
    """Two-sided p of a row; a difference with no spread is exact: 0 if nonzero, 1 if zero."""
    if np.isfinite(r.p):
        return float(r.p)
    if np.isfinite(r.estimate) and np.isfinite(r.ci_low) and r.ci_low == r.ci_high:
        return 0.0 if r.estimate != 0 else 1.0
    return float("nan")


def _tost(r, margin: float, centre: float = 0.0) -> dict:
    return stats.tost(r.estimate - centre, _se(r), _n(r) - 1, margin)


def _power(r, margin: float) -> str:
    """Achieved TOST power at true difference 0 with the observed SD, and the n 80 % power needs."""
    sd = _se(r) * math.sqrt(_n(r))
    pw, need = stats.tost_power(margin, sd, _n(r)), stats.tost_n_for_power(margin, sd, RULES.power)
    if not np.isfinite(pw):
        return "power n/a (no spread)"
    return f"TOST power {pw:.2f} at n = {_n(r)} (SD {sd:.3g}; {need:.0f} needed for {RULES.power:.0%})"


def _superiority(better: np.ndarray, worse: np.ndarray, defined: bool) -> str:
    """Holds if better in every comparison, mixed if in some, does not hold if in none and worse
    in some, inconclusive if neither (no significant difference is evidence of neither)."""
    if not defined:
        return UNDEFINED
    if better.all():
        return HOLDS
    if better.any():
        return MIXED
    return FAILS if worse.any() else INCONCLUSIVE


def _combine(verdicts: list[str]) -> str:
    """One verdict from the per-family / per-part verdicts: the common one, else mixed (an
    undefined part makes the whole inconclusive)."""
    if any(v.startswith(INCONCLUSIVE) for v in verdicts):
        return verdicts[0] if len(set(verdicts)) == 1 else INCONCLUSIVE
    return verdicts[0] if len(set(verdicts)) == 1 else MIXED


# ---- C1-C7: the fan-in theory and the four GFA studies -------------------------------------------

def c1() -> Finding:
    """The sympy closed forms against the general layout computation and autograd path counts."""
    ok, checked = True, 0
    for N in range(1, RULES.theory_max_n + 1):
        for sup in ("final", "all"):
            lay = Layout.sequential(N, sup)
            sym = analyze(lay, max_order=1).fan_in
            auto = count_paths(lay, max_order=1).fan_in
            ok &= list(sym) == closed_form_profile(N, sup) and all(
                abs(a - s) < RULES.theory_tol for a, s in zip(auto, sym))
            checked += N
    text = (f"closed forms $N-i+1$ and $(N-i+1)(N-i+2)/2$ derived by sympy; equal to the general "
            f"layout computation and to autograd path counts for {checked} branches (N = 1..{RULES.theory_max_n}, "
            f"both supervisions)")
    return Finding(HOLDS if ok else FAILS, text)


def _proportional(rows: list[pd.Series]) -> np.ndarray:
    """Holm-adjusted TOST: is each exponent equivalent to 1 within +-exponent_margin?"""
    p = stats.holm([_tost(r, RULES.exponent_margin, centre=1.0)["p"] for r in rows])
    return p < RULES.alpha


def _exponent_text(rows: list[pd.Series], names: list[str], label: str = "F") -> str:
    return ", ".join(f"{n} {_ci(r, '.2f')}" for r, n in zip(rows, names)) + f" (A ~ {label}^exponent)"


C2_RULE = (f"Order: the mean per-run Spearman rho(A, F) is >= {RULES.min_rho:g} with its t-interval over runs "
           f"above 0. Shape: the within-run exponent of A on F (log-log OLS with an intercept per run, "
           f"cluster-robust by run, t with G - 1 df), with and without the first block, is 'proportional' if a "
           f"Holm-adjusted TOST puts it within 1 +- {RULES.exponent_margin:g}. Holds if the order follows and A is "
           f"proportional to F with and without the first block; mixed if the order follows but A is not shown "
           f"proportional (or rho > 0 but below {RULES.min_rho:g}); does not hold if rho's interval lies below "
           f"{RULES.min_rho:g} and reaches 0; inconclusive otherwise or if a statistic is undefined. The exponent "
           f"with a relative-depth control (what fan-in explains beyond position) is reported")


def _follows(summary: pd.DataFrame, family: str) -> Finding:
    """C2/C3: the order (per-run Spearman) and the shape (within-run exponent) of A on the linear F."""
    tag = f"{family}/final"
    r = _row(summary, f"{tag}: per-run Spearman A vs linear F")
    e = _row(summary, f"{tag}: within-run exponent A ~ linear F")
    e1 = _row(summary, f"{tag}: within-run exponent A ~ linear F, first block excluded")
    ed = _row(summary, f"{tag}: within-run exponent A ~ linear F + depth")
    pooled = _row(summary, f"{tag}: log-log slope A ~ linear F")
    prop = _proportional([e, e1]) if _defined(e, e1) else np.array([False, False])
    text = (f"mean per-run Spearman rho(A, F) = {_runs(r)}; exponent of A on F: "
            + _exponent_text([e, e1, ed, pooled], ["within runs", "without the first block",
                                                   "with a depth control", "pooled across runs"])
            + "; " + ("A is proportional to F" if prop.all() else
                      "the depth order follows fan-in, but A is not shown proportional to F"))
    if not _defined(r, e, e1):
        return Finding(UNDEFINED, text)
    order = r.ci_low > 0 and r.estimate >= RULES.min_rho
    if order:
        return Finding(HOLDS if prop.all() else MIXED, text)
    if r.ci_low > 0:
        return Finding(MIXED, text)
    return Finding(FAILS if r.ci_high < RULES.min_rho else INCONCLUSIVE, text)


def c2(summary: pd.DataFrame) -> Finding:
    return _follows(summary, "transformer")


def c3(summary: pd.DataFrame) -> Finding:
    return _follows(summary, "resnet")


C4_RULE = (f"Deep supervision, each family: the quadratic and the linear fan-in compared on the same data by (a) the "
           f"AIC of log A = log F + c_run (exponent fixed at 1; equal parameter counts, so the AIC difference is a "
           f"likelihood ratio; beyond {RULES.aic_threshold:g} prefers a profile) and (b) the within-run exponent on "
           f"each fan-in, with and without the first block (proportional = Holm-adjusted TOST within 1 +- "
           f"{RULES.exponent_margin:g}). 'Quadratic' if the AIC prefers the quadratic profile and A is proportional "
           f"to the quadratic fan-in with and without the first block; 'linear' if the AIC prefers the linear profile "
           f"or A is proportional to the linear fan-in (and not the quadratic) with and without the first block; "
           f"'mixed' if the evidence splits. Holds if every family is quadratic; does not hold if every family is "
           f"linear; mixed otherwise; inconclusive if a statistic is undefined or no AIC difference exceeds "
           f"{RULES.aic_threshold:g} and no exponent is proportional")


def _deep_family(summary: pd.DataFrame, family: str) -> Finding:
    tag = f"{family}/all"
    aic = _row(summary, f"{tag}: AIC(A proportional to quadratic F) - AIC(A proportional to linear F)")
    q, q1 = (_row(summary, f"{tag}: within-run exponent A ~ quadratic F{x}") for x in ("", ", first block excluded"))
    li, l1 = (_row(summary, f"{tag}: within-run exponent A ~ linear F{x}") for x in ("", ", first block excluded"))
    text = (f"{family}: AIC(quadratic) - AIC(linear) = {aic.estimate:+.1f}; exponent on the quadratic fan-in "
            + _exponent_text([q, q1], ["within runs", "without the first block"], "F_quad")
            + "; on the linear fan-in " + _exponent_text([li, l1], ["within runs", "without the first block"], "F_lin"))
    if not (_defined(q, q1, li, l1) and np.isfinite(aic.estimate)):
        return Finding(UNDEFINED, text)
    prop = _proportional([q, q1, li, l1])
    quad_aic, lin_aic = aic.estimate < -RULES.aic_threshold, aic.estimate > RULES.aic_threshold
    quad = quad_aic and prop[:2].all()
    lin = lin_aic or (prop[2:].all() and not prop[:2].any())
    if quad and not lin:
        return Finding(HOLDS, text + ": decays like the quadratic count")
    if lin and not (quad_aic or prop[:2].any()):
        return Finding(FAILS, text + ": decays like the linear count")
    if quad_aic or lin_aic or prop.any():
        return Finding(MIXED, text + ": the profiles disagree (" + ", ".join(
            n for n, ok in zip(["quadratic", "quadratic without the first block", "linear",
                                "linear without the first block"], prop) if ok) + " proportional)")
    return Finding(INCONCLUSIVE, text)


def c4(summary: pd.DataFrame) -> Finding:
    """Deep supervision: does A decay like the quadratic or like the linear fan-in (every family)?"""
    fams = [f for f in ("transformer", "resnet")
            if (summary.test == f"{f}/all: within-run exponent A ~ quadratic F").any()]
    if not fams:
        return Finding(UNDEFINED, "no deep-supervision runs")
    found = [_deep_family(summary, f) for f in fams]
    return Finding(_combine([f.verdict for f in found]), "; ".join(f.measured for f in found))


C5_RULE = ("Per family: the OLS slope of normalized ablation importance on normalized A with a relative-depth "
           "control (cluster-robust by run, t with G - 1 df), and the mean per-run Spearman rho(ablation, A) without "
           "the first block (which carries most of both); the 4 two-sided p-values Holm-adjusted. Holds if all four "
           "are positive and significant; mixed if some; does not hold if none is positive-significant and some is "
           "negative-significant; inconclusive otherwise. The first block's shares and the absolute ablation "
           "delta-loss are reported")


def _association(summary: pd.DataFrame, family: str) -> tuple[list[pd.Series], str]:
    b = _row(summary, f"{family}: OLS ablation_norm ~ A_norm + depth")
    ex = _row(summary, f"{family}: per-run spearman ablation vs A, first block excluded")
    sp = _row(summary, f"{family}: per-run spearman ablation vs A")
    shares = [_row(summary, f"{family}: {t}") for t in (
        "first block's share of ablation importance", "first block's share of A",
        "ablation delta-loss, first block (nats)", "ablation delta-loss, mean later block (nats)")]
    text = (f"{family}: OLS slope with a depth control {_ci(b, '.2f')} ({format_p(b.p)}); per-run Spearman "
            f"{_ci(sp, '.2f')}, without the first block {_ci(ex, '.2f')} ({format_p(ex.p)}); the first block holds "
            f"{_ci(shares[0], '.2f')} of ablation importance and {_ci(shares[1], '.2f')} of A; ablation "
            f"delta-loss {_ci(shares[2], '.3f')} nats (first block) vs {_ci(shares[3], '.3f')} (mean later block)")
    return [b, ex], text


def c5(summary: pd.DataFrame) -> Finding:
    """Ablation importance on A, with a depth control and without the first block, both families."""
    rows, texts = [], []
    for fam in ("transformer", "resnet"):
        r, t = _association(summary, fam)
        rows += r
        texts.append(t)
    if not _defined(*rows):
        return Finding(UNDEFINED, "; ".join(texts))
    p = stats.holm([_exact_p(r) for r in rows])
    est = np.array([r.estimate for r in rows])
    pos, neg = (p < RULES.alpha) & (est > 0), (p < RULES.alpha) & (est < 0)
    text = "; ".join(texts) + f". Holm-adjusted: {int(pos.sum())} of {len(rows)} positive-significant"
    return Finding(_superiority(pos, neg, True), text)


C6_RULE = (f"Per optimizer, the primary comparison (SGD: gradient equalize vs its effective-lr control global_rescale, "
           f"each at its tuned lr; AdamW: per-block update equalization vs baseline), paired by seed: the change in "
           f"the late-half ablation delta-loss (nats), TOST against +-{RULES.eq_late_margin_pct:g} % of the "
           f"control's mean, Holm over the two optimizers. Manipulation check first: the arm's mean CV of U "
           f"across blocks must be at most {RULES.eq_cv_ratio:g} x its control's, else that comparison is "
           f"inconclusive (it did not equalize what the blocks learned). Holds if both are equivalent; mixed if one "
           f"is and the other rises significantly (Holm, above 0); does not hold if none is equivalent and some "
           f"rises; inconclusive otherwise (a non-significant change is not 'does not restore'). Reported, not "
           f"counted: the late-half share change (TOST +-{RULES.share_margin:g}), the AdamW gradient placebo, SGD "
           f"vs baseline and without clipping, validation loss. Power: a paired TOST at true change 0 has power "
           f"2 * P1 - 1, P1 the one-sided t-test power at effect margin / SD (statsmodels TTestPower), with the "
           f"observed SD; the seeds needed for {RULES.power:.0%} power are printed")


def _opt_row(summary: pd.DataFrame, test: str) -> pd.Series | None:
    hit = summary[summary.test == test]
    return None if hit.empty else hit.iloc[0]


def _c6_arm(summary: pd.DataFrame, opt: str) -> tuple[pd.Series, float, bool, str]:
    """One optimizer's primary comparison: its late delta-loss difference row, the margin in nats,
    whether the manipulation check passed, and the text."""
    arm, ctl = eq.PRIMARY[opt]
    d = _row(summary, f"{arm} - {ctl}: late_dloss")
    base = _row(summary, f"{ctl}: late_dloss")
    cv_a, cv_c = _row(summary, f"{arm}: cv_U"), _row(summary, f"{ctl}: cv_U")
    margin = RULES.eq_late_margin_pct / 100 * abs(base.estimate)
    manipulated = bool(np.isfinite([cv_a.estimate, cv_c.estimate]).all()
                       and cv_a.estimate <= RULES.eq_cv_ratio * cv_c.estimate)
    lrs = [_opt_row(summary, f"{a}: tuned lr") for a in (arm, ctl)]
    tuned = (f" (tuned lr {lrs[0].estimate:g} vs {lrs[1].estimate:g})" if all(r is not None for r in lrs) else "")
    text = (f"{arm} vs {ctl}{tuned}: manipulation check CV of U across blocks {_ci(cv_a, '.3f', 'seeds')} vs "
            f"{_ci(cv_c, '.3f', 'seeds')} ({'passed' if manipulated else 'FAILED: the comparison cannot test the claim'}); "
            f"late-half ablation delta-loss {_ci(base, '.4f', 'seeds')} nats (control), change {_ci(d, '+.4f', 'seeds')}, "
            f"margin +-{margin:.4f}, TOST {format_p(_tost(d, margin)['p']) if margin > 0 else 'n/a'}; "
            f"{_power(d, margin) if margin > 0 else 'power n/a'}")
    share = _opt_row(summary, f"{arm} - {ctl}: late_half_share")
    if share is not None:
        text += f"; late-half share change {_ci(share, '+.3f', 'seeds')}"
    losses = [_opt_row(summary, f"{a}: val_loss") for a in (arm, ctl)]
    if all(r is not None for r in losses):
        text += f"; validation loss {_ci(losses[0], '.3f', 'seeds')} vs {_ci(losses[1], '.3f', 'seeds')}"
    return d, margin, manipulated, text


def c6(summary: pd.DataFrame) -> Finding:
    """Equalizing what each block learns must leave the late blocks' delta-loss unchanged, in the
    comparisons whose manipulation worked (SGD against its effective-lr control; AdamW per update)."""
    rows, margins, valid, parts = [], [], [], []
    for opt in ("adamw", "sgd"):
        d, margin, ok, text = _c6_arm(summary, opt)
        rows.append(d)
        margins.append(margin)
        valid.append(ok)
        parts.append(text)
    placebo = _opt_row(summary, "adamw/equalize: cv_U")
    if placebo is not None:
        parts.append(f"AdamW gradient-equalization placebo: CV of U {_ci(placebo, '.3f', 'seeds')}")
    text = "; ".join(parts)
    if not _defined(*rows) or not all(m > 0 for m in margins):
        return Finding(UNDEFINED, text)
    valid = np.array(valid)
    equiv = valid & (stats.holm([_tost(r, m)["p"] for r, m in zip(rows, margins)]) < RULES.alpha)
    rises = valid & (stats.holm([_exact_p(r) for r in rows]) < RULES.alpha) & np.array([r.estimate > 0 for r in rows])
    if equiv.all():
        return Finding(HOLDS, text)
    if equiv.any() and rises.any():
        return Finding(MIXED, text)
    return Finding(FAILS if rises.any() and not equiv.any() else INCONCLUSIVE, text)


C7_RULE = ("For every r: the paired change of the last group's importance share vs the baseline (restores) and vs "
           "the compute-matched control (elevates); all two-sided p-values Holm-adjusted. Holds if every change "
           "is positive-significant; mixed if some; does not hold if none is and some is negative-significant; "
           "inconclusive otherwise")


def c7(summary: pd.DataFrame) -> Finding:
    """Repetition must raise the last group's importance share vs baseline and vs the control."""
    repeats = sorted({int(x.split("r=")[1].split(" ")[0]) for x in summary.test
                      if x.startswith("repeat r=") and " - " in x})
    rows, names = [], []
    for r in repeats:
        rows.append(_row(summary, f"repeat r={r} - baseline: last_share"))
        names.append(f"r = {r} vs baseline")
        ctl = summary[summary.test == f"repeat r={r} - control +{r - 1}: last_share"]
        if not ctl.empty:
            rows.append(ctl.iloc[0])
            names.append(f"r = {r} vs compute-matched control")
    if not rows or not _defined(*rows):
        return Finding(UNDEFINED, "last-group importance share undefined")
    p = stats.holm([_exact_p(r) for r in rows])
    est = np.array([r.estimate for r in rows])
    pos, neg = (p < RULES.alpha) & (est > 0), (p < RULES.alpha) & (est < 0)
    text = "last-group importance share change: " + "; ".join(
        f"{n} {_ci(r, '+.3f', 'seeds')} (Holm p = {q:.2g})" for n, r, q in zip(names, rows, p))
    arms = [(v, summary[summary.test == f"{v}: {c}"]) for v in ("baseline", *(f"repeat r={r}" for r in repeats))
            for c in ("last_importance", "val_loss")]
    if all(len(a) for _, a in arms):
        text += ". Absolute: " + "; ".join(
            f"{arms[i][0]}: last-group ablation delta-loss {_ci(arms[i][1].iloc[0], '.3f', 'seeds')} nats, "
            f"validation loss {_ci(arms[i + 1][1].iloc[0], '.3f', 'seeds')}" for i in range(0, len(arms), 2))
    return Finding(_superiority(pos, neg, True), text)


# ---- C8: CascadeFormer ---------------------------------------------------------------------------

PPL_MARGIN = math.log1p(RULES.ppl_margin_pct / 100)  # the perplexity margin as a loss (log-perplexity) gap

C8_RULE = (f"Comparable = non-inferior: the paired (by seed) loss gap to uniform is below log(1 + "
           f"{RULES.ppl_margin_pct:g} %) by the upper one-sided test of a TOST at +-{RULES.ppl_margin_pct:g} % "
           f"perplexity (a schedule better by more than the margin is comparable-or-better), Holm-adjusted over the "
           f"tapered schedules. Holds if some comparable schedule has median latency ratio <= "
           f"{RULES.paper_latency_ratio:.3f} and median throughput ratio >= {RULES.paper_throughput_ratio:.3f}; mixed "
           f"if some comparable schedule has a smaller but measured speedup (IQR of the per-repeat latency ratio "
           f"below 1 or of the throughput ratio above 1); does not hold if no comparable schedule is faster and some "
           f"schedule is comparable or shown worse than the margin; inconclusive otherwise (no schedule decided) or "
           f"if no tapered schedule has defined statistics. Power as in C6, at the perplexity margin")
_C8_NEEDED = ("loss_gap", "loss_gap_ci_low", "loss_gap_ci_high", "latency_ratio", "throughput_ratio",
              "latency_ratio_q75", "throughput_ratio_q25")


def _gap_row(r) -> pd.Series:
    return pd.Series({"estimate": r["loss_gap"], "ci_low": r["loss_gap_ci_low"], "ci_high": r["loss_gap_ci_high"],
                      "p": r.get("loss_gap_p", np.nan), "n": r.get("n_seeds", np.nan)})


def has_paper_speedup(row) -> bool:
    """Median latency ratio <= the paper's and median throughput ratio >= the paper's."""
    return bool(np.isfinite([row["latency_ratio"], row["throughput_ratio"]]).all()
                and row["latency_ratio"] <= RULES.paper_latency_ratio
                and row["throughput_ratio"] >= RULES.paper_throughput_ratio)


def has_speedup(row) -> bool:
    """A measured speedup of any size: the latency IQR lies below 1 or the throughput IQR above 1."""
    return bool(row["latency_ratio_q75"] < 1 or row["throughput_ratio_q25"] > 1)


def comparable(summary: pd.DataFrame) -> pd.Series:
    """Per schedule: the Holm-adjusted non-inferiority p of the perplexity change (NaN for uniform)."""
    out = pd.Series(np.nan, index=summary.index)
    tapered = summary[summary.schedule != "uniform"]
    p = [_tost(_gap_row(r), PPL_MARGIN)["p_upper"] for _, r in tapered.iterrows()]
    out[tapered.index] = stats.holm(p)
    return out


def _describe_schedule(r, p_ni: float) -> str:
    ci = format_interval(r["ppl_gap_pct"], r["ppl_gap_pct_ci_low"], r["ppl_gap_pct_ci_high"], "+.2f")
    return (f"{r['label']}: perplexity {ci} % vs uniform (non-inferiority Holm {format_p(p_ni)}; "
            f"{_power(_gap_row(r), PPL_MARGIN)}), validation loss {r['val_loss']:.3f} vs uniform "
            f"{r['_uniform_loss']:.3f}, latency ratio {r['latency_ratio']:.3f} (IQR {r['latency_ratio_q25']:.3f}-"
            f"{r['latency_ratio_q75']:.3f}), throughput ratio {r['throughput_ratio']:.3f} (IQR "
            f"{r['throughput_ratio_q25']:.3f}-{r['throughput_ratio_q75']:.3f}), params x{r['params_ratio']:.2f}, "
            f"FLOPs x{r['flops_ratio']:.2f}")


def c8(summary: pd.DataFrame) -> Finding:
    """C8 from the CascadeFormer study's per-schedule summary (:data:`C8_RULE`)."""
    uni = summary[summary.schedule == "uniform"]
    summary = summary.assign(_p=comparable(summary),
                             _uniform_loss=float(uni["val_loss"].iloc[0]) if len(uni) else np.nan)
    d = summary[summary.schedule != "uniform"]
    d = d[np.isfinite(d[list(_C8_NEEDED) + ["_p"]].to_numpy(float)).all(axis=1)]
    if d.empty:
        return Finding(UNDEFINED, "no tapered schedule with defined statistics (at least 2 seeds and finite "
                                  "timings are needed)")
    comp = d[d["_p"] < RULES.alpha]
    worse = d[[_tost(_gap_row(r), PPL_MARGIN)["p_lower"] >= RULES.alpha and r["loss_gap_ci_low"] > PPL_MARGIN
               for _, r in d.iterrows()]]
    match = comp[[has_paper_speedup(r) for _, r in comp.iterrows()]]
    faster = comp[[has_speedup(r) for _, r in comp.iterrows()]]
    if not match.empty:
        best, verdict = match.loc[match["throughput_ratio"].idxmax()], HOLDS
    elif not faster.empty:
        best, verdict = faster.loc[faster["throughput_ratio"].idxmax()], MIXED
    elif not comp.empty or not worse.empty:
        best, verdict = d.loc[d["ppl_gap_pct"].idxmin()], FAILS
    else:
        best, verdict = d.loc[d["ppl_gap_pct"].idxmin()], INCONCLUSIVE
    text = (f"{len(comp)} of {len(d)} tapered schedules have comparable perplexity (non-inferior at "
            f"+{RULES.ppl_margin_pct:g} %), {len(match)} of them also match the paper's speedups; best: "
            f"{_describe_schedule(best, best['_p'])}")
    return Finding(verdict, text)


# ---- C9-C11: CascadeFlow Pruning, from the study's comparisons (CascadeFlow minus each method) ----

C9_RULE = ("Transformer runs, CascadeFlow ranked by A. For each heuristic (bi, angular, taylor, magnitude, and "
           "last-k, the ranking fan-in itself predicts) and each stage (no healing, healed): the per-seed mean "
           "held-out loss (log-perplexity) over k = 1..B/2, CascadeFlow minus the heuristic, paired over seeds; the "
           "two-sided paired-t p-values Holm-adjusted over all these comparisons. Better = adjusted p < 0.05 and "
           "negative. Holds if better in every comparison; mixed if in some; does not hold if in none and worse in "
           "some; inconclusive otherwise. Random (the chance floor) and the greedy ablation oracle (the ceiling) "
           "are reported, not counted")
C10_RULE = ("Kendall tau of the layer ranking across training seeds (every pair of seeds; the only independent "
            "units here: checkpoints of one run are nested and not counted, and CascadeFlow's ranking uses no "
            "calibration data, so calibration subsets cannot separate it), CascadeFlow (A) minus each heuristic "
            "(bi, angular, taylor, magnitude, last-k), paired over seed pairs, p-values Holm-adjusted over the "
            "comparisons; a difference with no spread is exact. Better = adjusted p < 0.05 and positive. last-k is "
            "one fixed order (tau = 1 whatever the model): it is the stability ceiling, which CascadeFlow can at "
            "best match, so C10 holds only if nothing is less stable than A. Holds if better than every "
            "model-dependent heuristic and identical to last-k; mixed if better in some; does not hold if in none "
            "and worse in some; inconclusive otherwise. Caveat: the 3 pairs of 3 seeds share seeds")
C11_RULE = (f"Tasks distinct from the training loss: ResNet top-1 classification accuracy on the digits validation "
            f"split; Transformer multiple-choice continuation built deterministically from the validation split "
            f"(in a window of the model's context length, the true last 1/{pr.CHOICE_FRACTION} after the rest, "
            f"among {pr.CHOICES} candidates taken from elsewhere in the split, by total log-likelihood; "
            f"{pr.CHOICE_ITEMS} items, chance "
            f"{1 / pr.CHOICES:.2f}). At every k = 1..B/2 and stage: CascadeFlow's accuracy minus that of the "
            f"heuristic with the highest mean accuracy there, paired over seeds. Competitive = non-inferior (the "
            f"lower one-sided test of a TOST) at {100 * RULES.acc_margin:g} accuracy points (digits) or "
            f"{100 * RULES.choice_margin:g} points (continuation choice), Holm-adjusted over all (model, k, stage) "
            f"comparisons; a difference with no spread is exact. Holds if competitive everywhere; mixed if "
            f"competitive somewhere and shown inferior (95 % upper bound below minus the margin) elsewhere; does "
            f"not hold if nowhere competitive and inferior somewhere; inconclusive otherwise. Next-token accuracy "
            f"(the training objective) is reported, not counted. Power as in C6, at each task's margin")


def _stage(stage: str) -> str:
    return "no healing" if stage == "pruned" else "healed"


def _perplexity_ratio(r) -> str:
    """CascadeFlow's perplexity over the method's: exp of the paired loss difference and its interval."""
    return format_interval(np.exp(r.estimate), np.exp(r.ci_low), np.exp(r.ci_high), missing="nan", n=_n(r),
                           unit="seeds")


def _holm_rows(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm-adjusted p (exact for rows without spread), and better/worse masks by sign (positive)."""
    p = stats.holm([_exact_p(r) for r in d.itertuples()])
    est = d["estimate"].to_numpy(float)
    return p, (p < RULES.alpha) & (est > 0), (p < RULES.alpha) & (est < 0)


def c9(comp: pd.DataFrame) -> Finding:
    """C9 from the pruning study's ``comparisons`` rows (:data:`C9_RULE`)."""
    d = comp[(comp["quantity"] == "loss") & (comp["family"] == "transformer")]
    rivals = d[d["method"].isin(C9_RIVALS)]
    if rivals.empty:
        return Finding(UNDEFINED, "no Transformer comparisons")
    p, worse, better = _holm_rows(rivals)  # loss: negative = CascadeFlow better
    parts = []
    for (model, stage), g in d.groupby(["model", "stage"], sort=False):
        items = [f"{r.method}{' (floor)' if r.method == 'random' else ' (oracle)' if r.method == pr.ORACLE else ''} "
                 f"x{_perplexity_ratio(r)}" for r in g.itertuples() if r.method in (*C9_RIVALS, *C9_REPORTED)]
        parts.append(f"{model}, {_stage(stage)}: " + ", ".join(items))
    text = ("CascadeFlow's perplexity (geometric mean over k) relative to each method: " + "; ".join(parts)
            + f". Holm-adjusted over {len(rivals)} heuristic comparisons: better in {int(better.sum())}, worse in "
              f"{int(worse.sum())}")
    return Finding(_superiority(better, worse, bool(_finite_ci(rivals).all())), text)


def c10(comp: pd.DataFrame) -> Finding:
    """C10 from the ``comparisons`` rows (:data:`C10_RULE`)."""
    tau = comp[comp["quantity"] == "tau"]
    d = tau[tau["context"].isin(STABILITY_CONTEXTS) & tau["method"].isin(STABILITY_RIVALS)]
    if d.empty:
        return Finding(UNDEFINED, "no rank-stability comparison across seeds")
    p, better, worse = _holm_rows(d)
    ceiling = d["method"].to_numpy() == "last"
    parts = []
    for model, g in d.groupby("model", sort=False):
        items = [f"{r.method}{' (ceiling)' if r.method == 'last' else ''} {_ci(r, '+.2f', 'seed pairs')}"
                 for r in g.itertuples()]
        parts.append(f"{model} across seeds: " + ", ".join(items))
    others = tau[~tau["context"].isin(STABILITY_CONTEXTS) & tau["method"].isin(STABILITY_RIVALS)]
    text = ("Kendall tau, CascadeFlow minus: " + "; ".join(parts)
            + f". Holm-adjusted over {len(d)} comparisons: better in {int(better.sum())}, worse in "
              f"{int(worse.sum())}; identical to the last-k ceiling in "
              f"{int((ceiling & (d['estimate'].to_numpy(float) == 0)).sum())} of {int(ceiling.sum())} models "
              f"(a match counts as success in that comparison)"
            + (f". Not counted: {', '.join(sorted(set(others['context'])))}" if len(others) else ""))
    ok = bool(_finite_ci(d).all())
    counted = better | (ceiling & (d["estimate"].to_numpy(float) == 0) & (d["ci_low"].to_numpy(float) == 0))
    return Finding(_superiority(counted, worse, ok), text)


def _c11_rows(comp: pd.DataFrame) -> pd.DataFrame:
    """The counted comparisons: each family's task row (``<quantity>_vs_best``) with its margin."""
    parts = [comp[(comp["family"] == fam) & (comp["quantity"] == q)].assign(task=name, margin=margin)
             for fam, (q, name, margin) in C11_TASKS.items()]
    d = pd.concat(parts, ignore_index=True)
    return d[np.isfinite(d["estimate"].to_numpy(float))]


def c11(comp: pd.DataFrame) -> Finding:
    """C11 from the ``comparisons`` rows (:data:`C11_RULE`)."""
    d = _c11_rows(comp)
    if d.empty:
        return Finding(UNDEFINED, "no task-accuracy comparison")
    p = stats.holm([_tost(r, r.margin)["p_lower"] for r in d.itertuples()])
    ok = p < RULES.alpha
    inferior = d["ci_high"].to_numpy(float) < -d["margin"].to_numpy(float)
    parts = []
    for (model, task), g in d.groupby(["model", "task"], sort=False):
        m = d.index.isin(g.index)
        worst = g.loc[g["estimate"].idxmin()]
        short = format_interval(100 * worst["estimate"], 100 * worst["ci_low"], 100 * worst["ci_high"], "+.1f",
                                n=_n(worst), unit="seeds")
        parts.append(f"{model} {task}: non-inferior (Holm) at {int(ok[m].sum())} of {len(g)} (k, stage), shown "
                     f"inferior at {int(inferior[m].sum())}; largest shortfall {short} points vs {worst['method']} at "
                     f"k = {int(worst['k'])} ({_stage(worst['stage'])}), {_power(pd.Series(worst), worst['margin'])}")
    other = comp[(comp["quantity"] == "accuracy_vs_best") & (comp["family"] == "transformer")]
    if len(other):
        w = other.loc[other["estimate"].idxmin()]
        parts.append(f"reported only: {w['model']} next-token accuracy, largest shortfall "
                     f"{100 * w['estimate']:+.1f} points vs {w['method']} at k = {int(w['k'])} ({_stage(w['stage'])})")
    if not bool(_finite_ci(d).all()):
        return Finding(UNDEFINED, "; ".join(parts))
    if ok.all():
        verdict = HOLDS
    elif ok.any():
        verdict = MIXED if inferior.any() else INCONCLUSIVE
    else:
        verdict = FAILS if inferior.any() else INCONCLUSIVE
    return Finding(verdict, "; ".join(parts))


# ---- the list ------------------------------------------------------------------------------------

def _reads(study: str, table: str, rule: Callable[[pd.DataFrame], Finding], empty: str | None = None):
    """A claim's measure: ``rule`` on table ``table`` of ``study``; ``empty``: the finding's text
    when that table has no rows (the verdict is then inconclusive)."""
    def measure(tables: dict) -> Finding:
        frame = tables[study].get(table)
        if empty is not None and (frame is None or frame.empty):
            return Finding(UNDEFINED, empty)
        return rule(frame)
    return measure


NO_COMPARISONS = "no comparisons in the pruning study"

CLAIMS: list[Claim] = [
    Claim("C1", "In Pre-LayerNorm residual stacks, the gradient at a layer is the sum of an identity path and all "
          "downstream functional paths, producing a gradient fan-in that decays linearly with depth (and "
          "quadratically under deep supervision).",
          "holds if the sympy closed forms equal the general layout computation and the autograd path counts "
          "everywhere",
          "F1", (), lambda _tables: c1()),
    Claim("C2", "Accumulated training gradients follow the theoretical fan-in (Transformers).",
          C2_RULE,
          "F2, T5", ("fanin_vs_gradients",), _reads("fanin_vs_gradients", "summary", c2)),
    Claim("C3", "Accumulated training gradients follow the theoretical fan-in (ResNets).",
          "as C2", "F3, T5", ("fanin_vs_gradients",), _reads("fanin_vs_gradients", "summary", c3)),
    Claim("C4", "Under deep supervision the fan-in, and the accumulated gradient, decay quadratically.",
          C4_RULE,
          "F4, T5", ("fanin_vs_gradients",), _reads("fanin_vs_gradients", "summary", c4)),
    Claim("C5", "Accumulated training gradients are associated with post hoc layer importance.",
          C5_RULE,
          "F5, T5", ("gradients_vs_importance",), _reads("gradients_vs_importance", "summary", c5)),
    Claim("C6", "Equalizing per-layer gradient norms does not restore late-layer value.",
          C6_RULE,
          "F6", ("equalization",), _reads("equalization", "summary", c6)),
    Claim("C7", "Increasing downstream path counts via parameter-shared repetition restores and elevates "
                "late-layer value.",
          C7_RULE,
          "F7", ("repetition",), _reads("repetition", "summary", c7)),
    Claim("C8", "CascadeFormer: width tapered with depth gives perplexity comparable to a uniform baseline at the same "
                "training budget while reducing latency by 8.6% and increasing throughput by 9.4%.",
          C8_RULE, "T1, F8", (cf.NAME,), _reads(cf.NAME, "summary", c8)),
    Claim("C9", "CascadeFlow Pruning (remove the blocks with the smallest accumulated training gradient) outperforms "
                "standard pruning heuristics on perplexity.", C9_RULE, "F8, T2", (pr.NAME,),
          _reads(pr.NAME, "comparisons", c9, NO_COMPARISONS)),
    Claim("C10", "CascadeFlow Pruning outperforms standard heuristics on rank stability.", C10_RULE, "T4", (pr.NAME,),
          _reads(pr.NAME, "comparisons", c10, NO_COMPARISONS)),
    Claim("C11", "CascadeFlow Pruning stays competitive on downstream accuracy.", C11_RULE, "T3", (pr.NAME,),
          _reads(pr.NAME, "comparisons", c11, NO_COMPARISONS)),
]


def evaluate_claims(tables: dict) -> pd.DataFrame:
    """One row per claim: the paper's words, what was measured here, the evidence, the verdict and
    its rule (``not measured`` where a study behind the claim has not been run)."""
    rows = []
    for c in CLAIMS:
        if any(tables.get(s) is None for s in c.studies):
            found = Finding(MISSING, f"study {', '.join(c.studies)} not run for this profile")
        else:
            found = c.measure(tables)
        rows.append({"claim": c.key, "paper": c.statement, "measured here": found.measured, "evidence": c.evidence,
                     "verdict": found.verdict, "rule": c.rule})
    return pd.DataFrame(rows)
