"""Statistics for the GFA studies, with statsmodels and scipy.

Every function returns a *tidy row*: a dict with ``test``, ``estimate``, ``ci_low``,
``ci_high``, ``p``, ``r2`` (NaN where it has no meaning), ``n`` (observations) and ``n_groups``
(runs or clusters), so rows from different tests stack into one table (T5).

Conventions: ``A`` accumulated gradient, ``F`` fan-in, ``run`` the cluster (one training run),
``depth`` the relative depth of a unit in its network (0 = first, 1 = last).
"""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

ALPHA = 0.05


def _row(test: str, estimate: float, ci: tuple[float, float], p: float, n: int,
         r2: float = float("nan"), n_groups: int = 1, **extra) -> dict:
    return {"test": test, "estimate": float(estimate), "ci_low": float(ci[0]),
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
        return model.fit(cov_type="cluster", cov_kwds={"groups": groups})
    return model.fit()


def ols_slope(data: pd.DataFrame, y: str, x: str, cluster: str | None = None,
              controls: Iterable[str] = (), test: str | None = None) -> dict:
    """OLS slope of ``y`` on ``x`` (plus ``controls``), errors clustered by ``cluster`` when given."""
    cols = [y, x, *controls] + ([cluster] if cluster else [])
    d = data[cols].replace([np.inf, -np.inf], np.nan).dropna()
    rhs = " + ".join([f"Q('{x}')", *[f"Q('{c}')" for c in controls]])
    fit = _ols(f"Q('{y}') ~ {rhs}", d, cluster)
    term = f"Q('{x}')"
    lo, hi = fit.conf_int(alpha=ALPHA).loc[term]
    n_groups = d[cluster].nunique() if cluster else 1
    name = test or f"OLS {y} ~ {x}" + (f" + {' + '.join(controls)}" if controls else "")
    return _row(name, fit.params[term], (lo, hi), fit.pvalues[term], len(d), fit.rsquared, n_groups,
                method="OLS" + (" (cluster-robust by run)" if cluster and n_groups > 1 else ""))


def loglog_slope(data: pd.DataFrame, y: str, x: str, cluster: str | None = None,
                 test: str | None = None) -> dict:
    """Power-law exponent: slope of ``log y`` on ``log x`` with a CI (positive values only)."""
    d = data[(data[y] > 0) & (data[x] > 0)].copy()
    d["_log_y"], d["_log_x"] = np.log(d[y]), np.log(d[x])
    row = ols_slope(d, "_log_y", "_log_x", cluster=cluster, test=test or f"log-log slope {y} ~ {x}")
    row["method"] = row["method"].replace("OLS", "OLS on logs")
    return row


def mixed_slope(data: pd.DataFrame, y: str, x: str, group: str, controls: Iterable[str] = (),
                test: str | None = None) -> dict:
    """Linear mixed model ``y ~ x (+ controls)`` with a random intercept per ``group`` (run)."""
    cols = [y, x, group, *controls]
    d = data[cols].replace([np.inf, -np.inf], np.nan).dropna().rename(
        columns={y: "_y", x: "_x", **{c: f"_c{k}" for k, c in enumerate(controls)}})
    rhs = " + ".join(["_x", *[f"_c{k}" for k in range(len(tuple(controls)))]])
    with warnings.catch_warnings():  # convergence chatter on tiny data; the CI says enough
        warnings.simplefilter("ignore")
        fit = smf.mixedlm(f"_y ~ {rhs}", d, groups=d[group]).fit(reml=True)
    lo, hi = fit.conf_int(alpha=ALPHA).loc["_x"]
    name = test or f"MixedLM {y} ~ {x}" + (f" + {' + '.join(controls)}" if controls else "") + f" | {group}"
    return _row(name, fit.params["_x"], (lo, hi), fit.pvalues["_x"], len(d), n_groups=d[group].nunique(),
                method="MixedLM (random intercept per run)")


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
    if k > 1 and r.std(ddof=1) > 0:
        lo, hi = sps.t.interval(1 - ALPHA, k - 1, loc=mean, scale=sps.sem(r))
        ci = (max(lo, -1.0), min(hi, 1.0))  # a correlation lives in [-1, 1]
        p = float(sps.ttest_1samp(r, 0.0).pvalue)
    else:
        ci, p = (mean, mean), float("nan")
    return _row(test or f"mean per-run {kind} {x} vs {y}", mean, ci, p, len(data), n_groups=k,
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


def paired_difference(a: Iterable[float], b: Iterable[float], test: str = "paired difference") -> dict:
    """Mean of ``a - b`` over paired seeds with a t interval and a paired t-test."""
    a, b = np.asarray(list(a), float), np.asarray(list(b), float)
    d = a - b
    mean, lo, hi = mean_ci(d)
    p = float(sps.ttest_rel(a, b).pvalue) if len(d) > 1 and d.std(ddof=1) > 0 else float("nan")
    return _row(test, mean, (lo, hi), p, len(d), n_groups=len(d), method="paired t")


def format_interval(m: float, lo: float, hi: float, fmt: str = ".3f", missing: str = "n/a",
                    no_interval: str = "") -> str:
    """``m [lo, hi]`` for reports; ``missing`` when ``m`` is not finite, ``m`` followed by
    ``no_interval`` when the interval is undefined. The one place intervals are formatted."""
    if not np.isfinite(m):
        return missing
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:{fmt}}{no_interval}"
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
