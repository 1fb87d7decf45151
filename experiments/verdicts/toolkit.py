"""The verdict toolkit: verdicts, findings, the one declaration of every threshold, and the tests
the rules share. Numbers only: what a finding says in words is written by
:mod:`experiments.verdicts.render`.

Shared conventions, stated once:

* several comparisons inside one claim are Holm-adjusted (family-wise alpha, :data:`THRESHOLDS`);
* "does not change", "comparable" and "competitive" are equivalence (TOST) or non-inferiority
  tests (the relevant one-sided half of TOST) at a declared margin, from a row's estimate, its
  standard error and degrees of freedom (as the study computed them, never rebuilt from printed
  interval ends); a non-significant difference is never support for them;
* a positive claim with no significant evidence either way is **inconclusive**; **does not hold**
  needs evidence against it (an effect in the wrong direction, or an equivalence it rules out);
* intervals are 95 % t-intervals (cluster-robust ones use t with G - 1 df, G runs).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from gfa_theory.instrument import stats

NAN = float("nan")


class Verdict(str, enum.Enum):
    """What a rule concludes. The value is what tables print."""

    HOLDS = "holds"
    MIXED = "mixed"
    FAILS = "does not hold at this scale"
    INCONCLUSIVE = "inconclusive"
    MISSING = "not measured"

    def __str__(self) -> str:
        return self.value


HOLDS, MIXED, FAILS, INCONCLUSIVE, MISSING = (Verdict.HOLDS, Verdict.MIXED, Verdict.FAILS, Verdict.INCONCLUSIVE,
                                              Verdict.MISSING)


# ---- every threshold and margin, declared before the results are read -----------------------------

@dataclass(frozen=True)
class Thresholds:
    """Every threshold and margin of every rule (claims C1-C11 and hypotheses H1-H7), with its
    meaning in ``metadata["means"]`` (the report's threshold table prints it)."""

    alpha: float = field(default=stats.ALPHA, metadata={"means": "family-wise, Holm within each claim"})
    theory_max_n: int = field(default=40, metadata={"means": "C1: stacks of N = 1..40 branches checked"})
    theory_tol: float = field(default=1e-9, metadata={"means": "C1: autograd path counts vs the symbolic fan-in"})
    min_rho: float = field(default=0.5, metadata={"means": "C2, C3: mean per-run Spearman rho(A, F) for "
                                                           "'the order follows fan-in'"})
    exponent_margin: float = field(default=0.2, metadata={"means": "C2-C4: 'A proportional to F' = exponent "
                                                                   "equivalent to 1 within +-margin"})
    aic_threshold: float = field(default=2.0, metadata={"means": "C4: an AIC difference beyond this prefers "
                                                                 "one fan-in profile"})
    share_margin: float = field(default=0.05, metadata={"means": "C6: late-half share change within +-margin "
                                                                 "(reported)"})
    rep_margin_nats: float = field(default=0.02, metadata={"means": "C7: joint delta-loss change within "
                                                                    "+-margin nats = no difference"})
    eq_late_margin_pct: float = field(default=25.0, metadata={"means": "C6: late-half delta-loss change within "
                                                                       "+-margin % of the control's mean"})
    eq_cv_ratio: float = field(default=0.5, metadata={"means": "C6 manipulation check: arm's CV of U at most "
                                                               "this x its control's"})
    ppl_margin_pct: float = field(default=2.0, metadata={"means": "C8: perplexity at most margin % above "
                                                                  "uniform = comparable"})
    paper_latency_ratio: float = field(default=1 - 0.086, metadata={"means": "C8: the paper's latency (-8.6 %)"})
    paper_throughput_ratio: float = field(default=1 + 0.094, metadata={"means": "C8: the paper's throughput "
                                                                                "(+9.4 %)"})
    taper_gain_margin_pct: float = field(default=0.0, metadata={"means": "C8: the taper must beat the narrow "
                                                                         "uniform by more than this % perplexity"})
    aa_margin: float = field(default=0.01, metadata={"means": "C8: a speed ratio's IQR must clear the A/A "
                                                              "control's IQR by this"})
    acc_margin: float = field(default=0.02, metadata={"means": "C11: digits top-1 at most this below the best "
                                                               "heuristic = competitive"})
    choice_margin: float = field(default=0.05, metadata={"means": "C11: continuation choice at most this below "
                                                                  "(256 items resolve about +-3 points)"})
    power: float = field(default=0.8, metadata={"means": "the power seed counts are checked against (TOST at "
                                                         "true difference 0)"})
    error_margin: float = field(default=0.05, metadata={"means": "H1: counts' profile error at most this above "
                                                                 "the best gain account (about 5 % per branch)"})
    prediction_margin: float = field(default=0.05, metadata={"means": "H6: an early window's profile error at most "
                                                                       "this above the training-averaged one; H7: "
                                                                       "Post-LN's within +-margin of Pre-LN's (H1's "
                                                                       "scale: about 5 % per branch)"})
    trend_margin_pct: float = field(default=1.0, metadata={"means": "along scale: a C8 perplexity-gap slope within "
                                                                     "+-margin % per decade (TOST) = holds steady"})
    trend_margin_rho: float = field(default=0.1, metadata={"means": "along scale: a rank-correlation slope within "
                                                                     "+-margin per decade (TOST) = holds steady"})
    trend_margin_exponent: float = field(default=0.1, metadata={"means": "along scale: an exponent slope within "
                                                                          "+-margin per decade (TOST) = holds steady"})
    trend_margin_loss: float = field(default=0.01, metadata={"means": "along scale: a C9 loss-gap slope within "
                                                                      "+-margin nats per decade (TOST) = holds steady"})

    def rows(self) -> list[tuple[str, float, str]]:
        """(name, value, meaning) of every threshold, in declaration order."""
        return [(f.name, getattr(self, f.name), f.metadata["means"]) for f in fields(self)]


THRESHOLDS = Thresholds()


# ---- findings ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """One number a finding reports: a statistic with its interval, n (``unit``: what n counts),
    two-sided or test p (``p_name`` says which), and how it prints (``fmt``; ``scale`` multiplies
    it, e.g. 100 for points). ``label`` is a short display key, never parsed."""

    label: str
    estimate: float
    ci_low: float = NAN
    ci_high: float = NAN
    n: int = 0
    p: float = NAN
    p_name: str = "p"
    unit: str = "runs"
    fmt: str = ".3f"
    note: str = ""

    @classmethod
    def of(cls, row, label: str, fmt: str = ".3f", unit: str = "runs", p: float | None = None,
           p_name: str = "p", note: str = "", scale: float = 1.0) -> "Estimate":
        """From a summary row (``estimate``, ``ci_low``, ``ci_high``, ``p``, ``n_groups`` or ``n``)."""
        return cls(label, scale * float(row["estimate"]), scale * float(row["ci_low"]),
                   scale * float(row["ci_high"]), n_of(row), float(row["p"]) if p is None else float(p),
                   p_name, unit, fmt, note)


@dataclass(frozen=True)
class Regime:
    """Where a verdict was measured: the models' parameter range and the training tokens per
    parameter, from the study's config (so a scale study can say "holds below 3 tokens/param")."""

    family: str
    params_min: int
    params_max: int
    tokens_per_param_min: float = NAN  # NaN where the data are not tokens (images)
    tokens_per_param_max: float = NAN


@dataclass(frozen=True)
class Finding:
    """A rule's result: the verdict, the primary estimate (with its interval, n and the margin it
    is judged against), why (short, computed from the numbers), secondary results and, where the
    rule compares several arms, their numbers as one table (``arms``)."""

    verdict: Verdict
    primary: Estimate | None = None
    margin: float = NAN
    why: str = ""
    secondary: tuple[Estimate, ...] = ()
    arms: pd.DataFrame | None = field(default=None, compare=False)
    regime: Regime | None = None
    key: str = ""  # the claim or hypothesis judged (filled by experiments.verdicts.judge)
    claim: str = ""  # its short statement

    @property
    def n(self) -> int:
        return self.primary.n if self.primary is not None else 0


def missing(why: str) -> Finding:
    return Finding(MISSING, why=why)


def undefined(why: str = "a statistic is undefined", primary: Estimate | None = None,
              secondary: tuple[Estimate, ...] = ()) -> Finding:
    return Finding(INCONCLUSIVE, primary, why=why, secondary=secondary)


# ---- the tests rules share -----------------------------------------------------------------------

def n_of(r) -> int:
    """The number of independent units behind a row: its groups (runs, seeds), else its n."""
    for col in ("n_groups", "n"):
        v = r.get(col) if hasattr(r, "get") else getattr(r, col, None)
        if v is not None and np.isfinite(v):
            return int(v)
    return 0


def defined(*rows) -> bool:
    """Every estimate and interval bound is a number (a NaN verdict is never 'holds')."""
    return all(np.isfinite([float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"])]).all() for r in rows)


def finite_ci(d: pd.DataFrame) -> np.ndarray:
    return np.isfinite(d[["estimate", "ci_low", "ci_high"]].to_numpy(float)).all(axis=1)


def exact_p(r) -> float:
    """Two-sided p of a row; a difference with no spread is exact: 0 if nonzero, 1 if zero."""
    p = float(r["p"])
    if np.isfinite(p):
        return p
    est, lo, hi = float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"])
    if np.isfinite(est) and np.isfinite(lo) and lo == hi:
        return 0.0 if est != 0 else 1.0
    return NAN


def se_df(r) -> tuple[float, float]:
    """The standard error and degrees of freedom the study computed for a row."""
    return float(r["se"]), float(r["df"])


def tost(r, margin: float, centre: float = 0.0) -> dict:
    """TOST of ``estimate - centre`` within +-``margin`` from the row's own SE and df."""
    se, df = se_df(r)
    return stats.tost(float(r["estimate"]) - centre, se, df, margin)


def noninferior_p(r, margin: float) -> float:
    """One-sided p of H0 ``difference >= margin`` (the upper half of TOST); a row without spread
    is decided exactly."""
    est, lo, hi = float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"])
    if lo == hi and np.isfinite(est):
        return 0.0 if est < margin else 1.0
    return tost(r, margin)["p_upper"]


@dataclass(frozen=True)
class Power:
    """Achieved TOST power at true difference 0 with the observed SD, and the n that
    :data:`THRESHOLDS`.power needs."""

    power: float
    n: int
    sd: float
    needed: float


def tost_power(r, margin: float) -> Power:
    se, _ = se_df(r)
    n = n_of(r)
    sd = se * math.sqrt(n)
    return Power(stats.tost_power(margin, sd, n), n, sd, stats.tost_n_for_power(margin, sd, THRESHOLDS.power))


def significant(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, float) < THRESHOLDS.alpha


def signed(rows, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm-adjusted two-sided p over ``rows`` (exact for rows without spread) and the masks of
    significantly positive / negative (times ``sign``) estimates."""
    p = stats.holm([exact_p(r) for r in rows])
    est = sign * np.array([float(r["estimate"]) for r in rows])
    return p, significant(p) & (est > 0), significant(p) & (est < 0)


def superiority(better: np.ndarray, worse: np.ndarray, is_defined: bool = True) -> Verdict:
    """Holds if better in every comparison, mixed if in some, does not hold if in none and worse
    in some, inconclusive if neither (no significant difference is evidence of neither)."""
    if not is_defined:
        return INCONCLUSIVE
    if better.all():
        return HOLDS
    if better.any():
        return MIXED
    return FAILS if worse.any() else INCONCLUSIVE


def combine(verdicts: list[Verdict]) -> Verdict:
    """One verdict from per-family / per-part verdicts: the common one, else mixed (an
    inconclusive part makes the whole inconclusive)."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return INCONCLUSIVE if INCONCLUSIVE in verdicts else MIXED
