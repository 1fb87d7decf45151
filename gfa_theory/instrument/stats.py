"""Statistics for the GFA studies, with statsmodels and scipy.

Every function returns a *tidy row*: a dict with ``test``, ``estimate``, its standard error
``se`` and degrees of freedom ``df`` (what an equivalence test needs; NaN where the interval is
not a t-interval), ``ci_low``, ``ci_high``, ``p``, ``r2`` (NaN where it has no meaning), ``n``
(observations) and ``n_groups`` (runs or clusters), so rows from different tests stack into one
table (T5).

Conventions: ``A`` accumulated gradient, ``F`` fan-in, ``run`` the cluster (one training run),
``depth`` the relative depth of a unit in its network (0 = first, 1 = last).

Inference fits the design: with few runs, cluster-robust intervals and p-values use Student's t
with G - 1 degrees of freedom (G clusters), never the normal; equivalence is a TOST with a margin
fixed by the caller; several comparisons in one claim are Holm-adjusted; p-values print with a
floor (:func:`format_p`) and a statistic without spread prints as what it is
(:func:`format_interval` with ``n``).
"""
from __future__ import annotations

import gc

import warnings
from typing import Iterable

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

ALPHA = 0.05
P_FLOOR = 1e-4  # smaller p-values print as "p < 1e-4": the tails of t with few df are not that exact


def _row(test: str, estimate: float, ci: tuple[float, float], p: float, n: int,
         r2: float = float("nan"), n_groups: int = 1, se: float = float("nan"), df: float = float("nan"),
         **extra) -> dict:
    return {"test": test, "estimate": float(estimate), "se": float(se), "df": float(df), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "p": float(p), "r2": float(r2), "n": int(n),
            "n_groups": int(n_groups), **extra}


def normalize(values: pd.Series | np.ndarray, by: pd.Series | None = None) -> pd.Series:
    """Divide by the mean (within each ``by`` group): profiles of different scale compare."""
    s = pd.Series(np.asarray(values, dtype=float)) if not isinstance(values, pd.Series) else values.astype(float)
    if by is None:
        return s / s.mean()
    return s / s.groupby(np.asarray(by)).transform("mean")


def _ols(formula: str, data: pd.DataFrame, cluster: str | None):
    model = smf.ols(formula, data=data)
    if cluster is not None and data[cluster].nunique() > 1:
        groups = pd.factorize(data[cluster])[0]
        return model.fit(cov_type="cluster", cov_kwds={"groups": groups, "use_correction": True,
                                                       "df_correction": True}, use_t=True)
    return model.fit()


def _t_inference(fit, term: str, df: float) -> tuple[float, float, float, float]:
    """Estimate, CI and two-sided p of ``term`` from its (cluster-robust) SE with Student's t at
    ``df`` degrees of freedom: G - 1 for G clusters, set here rather than trusted to a default."""
    est, se = float(fit.params[term]), float(fit.bse[term])
    if not (np.isfinite(se) and se > 0 and df > 0):
        return est, float("nan"), float("nan"), float("nan")
    q = sps.t.ppf(1 - ALPHA / 2, df)
    return est, est - q * se, est + q * se, float(2 * sps.t.sf(abs(est / se), df))


def ols_slope(data: pd.DataFrame, y: str, x: str, cluster: str | None = None,
              controls: Iterable[str] = (), test: str | None = None, fixed: str | None = None) -> dict:
    """OLS slope of ``y`` on ``x`` (plus ``controls``; ``fixed``: a categorical column whose levels
    get their own intercept, e.g. the run), errors clustered by ``cluster`` when given, inference
    with t at G - 1 df (G clusters)."""
    cols = list(dict.fromkeys([y, x, *controls] + ([cluster] if cluster else []) + ([fixed] if fixed else [])))
    d = data[cols].replace([np.inf, -np.inf], np.nan).dropna()
    rhs = " + ".join([f"Q('{x}')", *[f"Q('{c}')" for c in controls]] + ([f"C(Q('{fixed}'))"] if fixed else []))
    fit = _ols(f"Q('{y}') ~ {rhs}", d, cluster)
    term = f"Q('{x}')"
    n_groups = d[cluster].nunique() if cluster else 1
    clustered = bool(cluster) and n_groups > 1
    df = n_groups - 1 if clustered else fit.df_resid
    est, lo, hi, p = _t_inference(fit, term, df)
    name = test or f"OLS {y} ~ {x}" + (f" + {' + '.join(controls)}" if controls else "")
    method = "OLS" + (f" (cluster-robust by run, t with {n_groups - 1} df)" if clustered else "")
    return _row(name, est, (lo, hi), p, len(d), fit.rsquared, n_groups, method=method + (
        f", {fixed} intercepts" if fixed else ""), se=float(fit.bse[term]), df=float(df), aic=float(fit.aic))


def offset_aic(data: pd.DataFrame, y: str, offset: str, fixed: str) -> float:
    """AIC of ``y = offset + intercept per fixed level + noise``: the model with the exponent fixed
    at 1 in log space (``log A = log F + c_run``). Two such fits on the same rows have the same
    number of parameters, so their AIC difference is a likelihood ratio between the two profiles."""
    d = data[[y, offset, fixed]].replace([np.inf, -np.inf], np.nan).dropna()
    fit = smf.ols(f"I(Q('{y}') - Q('{offset}')) ~ C(Q('{fixed}'))", d).fit()
    return float(fit.aic)


def loglog_slope(data: pd.DataFrame, y: str, x: str, cluster: str | None = None,
                 test: str | None = None, fixed: str | None = None) -> dict:
    """Power-law exponent: slope of ``log y`` on ``log x`` with a CI (positive values only);
    ``fixed`` (the run): a separate intercept per level, so the exponent is estimated within runs."""
    d = data[(data[y] > 0) & (data[x] > 0)].copy()
    d["_log_y"], d["_log_x"] = np.log(d[y]), np.log(d[x])
    row = ols_slope(d, "_log_y", "_log_x", cluster=cluster, test=test or f"log-log slope {y} ~ {x}", fixed=fixed)
    row["method"] = row["method"].replace("OLS", "OLS on logs")
    return row


def mixed_slope(data: pd.DataFrame, y: str, x: str, group: str, controls: Iterable[str] = (),
                test: str | None = None) -> dict:
    """Linear mixed model ``y ~ x (+ controls)`` with a random intercept per ``group`` (run)."""
    cols = [y, x, group, *controls]
    d = data[cols].replace([np.inf, -np.inf], np.nan).dropna().rename(
        columns={y: "_y", x: "_x", **{c: f"_c{k}" for k, c in enumerate(controls)}})
    rhs = " + ".join(["_x", *[f"_c{k}" for k in range(len(tuple(controls)))]])
    name = test or f"MixedLM {y} ~ {x}" + (f" + {' + '.join(controls)}" if controls else "") + f" | {group}"
    with warnings.catch_warnings():  # convergence chatter on tiny data; the CI says enough
        warnings.simplefilter("ignore")
        try:
            fit = smf.mixedlm(f"_y ~ {rhs}", d, groups=d[group]).fit(reml=True)
        except np.linalg.LinAlgError:  # e.g. per-run normalized values: no between-run variance to fit
            return _row(name, np.nan, (np.nan, np.nan), np.nan, len(d), n_groups=d[group].nunique(), se=np.nan,
                        method="MixedLM (random intercept per run): singular fit, no estimate")
    lo, hi = fit.conf_int(alpha=ALPHA).loc["_x"]
    return _row(name, fit.params["_x"], (lo, hi), fit.pvalues["_x"], len(d), n_groups=d[group].nunique(),
                se=float(fit.bse["_x"]), method="MixedLM (random intercept per run)")


def _corr_ci(r: float, n: int, kind: str) -> tuple[float, float]:
    """Fisher-z interval; Spearman uses the Bonett-Wright variance, Kendall the Fieller one."""
    if n < 4 or not np.isfinite(r) or abs(r) >= 1:
        return (float("nan"), float("nan")) if abs(r) < 1 or not np.isfinite(r) else (r, r)
    var = {"spearman": (1 + r * r / 2) / (n - 3), "kendall": 0.437 / (n - 4) if n > 4 else np.nan,
           "pearson": 1 / (n - 3)}[kind]
    z, half = np.arctanh(r), sps.norm.ppf(1 - ALPHA / 2) * np.sqrt(var)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def rank_correlations(x: Iterable[float], y: Iterable[float], label: str = "") -> list[dict]:
    """Spearman rho and Kendall tau (scipy, with p-values and Fisher-z CIs)."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    rows = []
    for kind, fn in (("spearman", sps.spearmanr), ("kendall", sps.kendalltau)):
        res = fn(x, y)
        r, p = float(res.statistic), float(res.pvalue)
        rows.append(_row(f"{kind} {label}".strip(), r, _corr_ci(r, len(x), kind), p, len(x),
                         method=kind.capitalize()))
    return rows


def per_run_correlation(data: pd.DataFrame, x: str, y: str, run: str = "run_id",
                        kind: str = "spearman", test: str | None = None) -> dict:
    """Correlation within each run, then the mean across runs with a t interval over runs.

    The p-value is a one-sample t-test of the per-run coefficients against 0 (runs are the
    independent replicates; layers within a run are not).
    """
    fn = {"spearman": sps.spearmanr, "kendall": sps.kendalltau, "pearson": sps.pearsonr}[kind]
    per_run = []
    for _, g in data.groupby(run):
        g = g[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
        if len(g) >= 3 and g[x].nunique() > 1 and g[y].nunique() > 1:
            per_run.append(float(fn(g[x], g[y]).statistic))
    r = np.asarray(per_run)
    k = len(r)
    if k == 0:
        return _row(test or f"mean per-run {kind} {x} vs {y}", np.nan, (np.nan, np.nan), np.nan, 0, n_groups=0)
    mean = r.mean()
    se = float(sps.sem(r)) if k > 1 else float("nan")  # kept: the interval below is clipped, its ends are not mean +- t*se
    if k > 1 and r.std(ddof=1) > 0:
        lo, hi = sps.t.interval(1 - ALPHA, k - 1, loc=mean, scale=se)
        ci = (max(lo, -1.0), min(hi, 1.0))  # a correlation lives in [-1, 1]
        p = float(sps.ttest_1samp(r, 0.0).pvalue)
    else:
        ci, p = (mean, mean), float("nan")
    return _row(test or f"mean per-run {kind} {x} vs {y}", mean, ci, p, len(data), n_groups=k, se=se, df=k - 1,
                method=f"{kind} per run; t-interval over runs", per_run=";".join(f"{v:.4f}" for v in r))


def mean_ci(values: Iterable[float]) -> tuple[float, float, float]:
    """Mean and t-interval (over seeds)."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1 or v.std(ddof=1) == 0:
        return float(v.mean()), float(v.mean()), float(v.mean())
    lo, hi = sps.t.interval(1 - ALPHA, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
    return float(v.mean()), float(lo), float(hi)


def mean_se(values: Iterable[float]) -> float:
    """Standard error of the mean of the finite ``values`` (NaN for fewer than two; 0 without spread)."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def paired_difference(a: Iterable[float], b: Iterable[float], test: str = "paired difference") -> dict:
    """Mean of ``a - b`` over paired seeds with a t interval and a paired t-test."""
    a, b = np.asarray(list(a), float), np.asarray(list(b), float)
    d = a - b
    mean, lo, hi = mean_ci(d)
    p = float(sps.ttest_rel(a, b).pvalue) if len(d) > 1 and d.std(ddof=1) > 0 else float("nan")
    return _row(test, mean, (lo, hi), p, len(d), n_groups=len(d), se=mean_se(d), df=len(d) - 1, method="paired t")


def _prints_same(a: float, b: float, fmt: str) -> bool:
    """Whether ``a`` and ``b`` print as the same number in ``fmt`` (-0.000 and 0.000 do)."""
    sa, sb = f"{a:{fmt}}", f"{b:{fmt}}"
    try:
        return float(sa) == float(sb)
    except ValueError:  # a format with a unit (%): compare the text
        return sa == sb


def format_interval(m: float, lo: float, hi: float, fmt: str = ".3f", missing: str = "n/a",
                    no_interval: str = "", n: int | None = None, unit: str = "runs") -> str:
    """``m [lo, hi]`` for reports; ``missing`` when ``m`` is not finite, ``m`` followed by
    ``no_interval`` when the interval is undefined, and ``all n units: m`` (or ``m (no spread)``
    without ``n``) when the interval has zero width: a statistic with no spread is not an
    interval. An interval whose ends print the same (a spread below the printed precision) is
    printed the same way, marked so. The one place intervals are formatted."""
    if not np.isfinite(m):
        return missing
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:{fmt}}{no_interval}"
    if lo == hi or _prints_same(lo, hi, fmt):
        why = "no spread" if lo == hi else "spread below the printed precision"
        if n is None:
            return f"{m:{fmt}} ({why})"
        return f"all {n} {unit}: {m:{fmt}}" + ("" if lo == hi else f" ({why})")
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def format_p(p: float, floor: float = P_FLOOR) -> str:
    """``p = 0.012`` / ``p < 1e-4`` / ``p n/a``: never ``p = 0``."""
    if not np.isfinite(p):
        return "p n/a"
    return f"p < {floor:.0e}".replace("e-0", "e-") if p < floor else f"p = {p:.2g}"


# ---- equivalence, multiplicity, power ------------------------------------------------------------

def se_from_interval(lo: float, hi: float, n: int) -> float:
    """The standard error behind a 95 % t-interval over ``n`` paired values (df = n - 1)."""
    if n < 2 or not (np.isfinite(lo) and np.isfinite(hi)):
        return float("nan")
    return float((hi - lo) / (2 * sps.t.ppf(1 - ALPHA / 2, n - 1)))


def tost(estimate: float, se: float, df: float, margin: float) -> dict:
    """Two one-sided t-tests of ``|true difference| < margin`` from a mean difference, its SE and
    df (the same numbers statsmodels' ``ttost_paired`` uses). ``p`` = max of the two one-sided
    p-values (equivalent at level alpha iff the 90 % interval lies inside +-margin); ``p_upper``
    alone is the non-inferiority test (difference < +margin). A zero SE with a nonzero mean is
    decided exactly; NaN where undefined."""
    if not (np.isfinite(estimate) and np.isfinite(se) and df > 0):
        return {"p": float("nan"), "p_lower": float("nan"), "p_upper": float("nan")}
    if se == 0:
        lo_p, up_p = float(estimate <= -margin), float(estimate >= margin)
    else:
        lo_p = float(sps.t.sf((estimate + margin) / se, df))  # H0: diff <= -margin
        up_p = float(sps.t.cdf((estimate - margin) / se, df))  # H0: diff >= +margin
    return {"p": max(lo_p, up_p), "p_lower": lo_p, "p_upper": up_p}


def tost_paired(a: Iterable[float], b: Iterable[float], margin: float) -> dict:
    """TOST of the paired difference ``a - b`` within +-``margin`` (statsmodels ``ttost_paired``)."""
    a, b = np.asarray(list(a), float), np.asarray(list(b), float)
    p, lower, upper = ttost_paired(a, b, -margin, margin)
    return {"p": float(p), "p_lower": float(lower[1]), "p_upper": float(upper[1])}


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error control); NaN stays NaN."""
    p = np.asarray(list(pvalues), float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        # multipletests' Holm path calls gc.collect(), which walks the whole heap (about 1 s per call in
        # a process holding torch and the studies); frozen objects are skipped, the numbers are the same
        gc.freeze()
        try:
            out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
        finally:
            gc.unfreeze()
    return out


def tost_power(margin: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a paired TOST at true difference 0: 2 * (power of one one-sided t-test at effect
    margin / sd) - 1 (the usual approximation), with statsmodels' ``TTestPower``."""
    if not (np.isfinite(sd) and sd > 0 and n >= 2):
        return float("nan")
    one = TTestPower().power(effect_size=margin / sd, nobs=n, alpha=alpha, alternative="larger")
    return float(max(0.0, 2 * one - 1))


def tost_n_for_power(margin: float, sd: float, power: float = 0.8, alpha: float = ALPHA,
                     max_n: int = 10_000) -> float:
    """Smallest number of pairs whose paired TOST reaches ``power`` at true difference 0 (see
    :func:`tost_power`); NaN when no spread or beyond ``max_n``."""
    if not (np.isfinite(sd) and sd > 0):
        return float("nan")
    return float(next((n for n in range(2, max_n + 1) if tost_power(margin, sd, n, alpha) >= power), np.nan))
