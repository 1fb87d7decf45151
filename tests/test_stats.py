"""Statistics recover known answers on synthetic data."""
import numpy as np
import pandas as pd
import pytest

from gfa_theory.instrument import stats


@pytest.fixture
def clustered():
    # 6 runs x 12 layers, y = 2.5 x + run intercept + noise: the slope is known.
    rng = np.random.default_rng(0)
    rows = []
    for run in range(6):
        u = rng.normal(0, 1.0)
        for layer in range(12):
            x = rng.uniform(0, 4)
            rows.append({"run": f"r{run}", "x": x, "depth": layer / 11,
                         "y": 2.5 * x + u + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def test_ols_recovers_slope_with_cluster_ci(clustered):
    row = stats.ols_slope(clustered, "y", "x", cluster="run")
    assert row["ci_low"] < 2.5 < row["ci_high"]
    assert abs(row["estimate"] - 2.5) < 0.2
    assert row["p"] < 1e-6 and row["n"] == 72 and row["n_groups"] == 6
    assert "cluster" in row["method"]


def test_ols_with_depth_control(clustered):
    row = stats.ols_slope(clustered, "y", "x", cluster="run", controls=["depth"])
    assert row["ci_low"] < 2.5 < row["ci_high"]


def test_mixed_model_recovers_slope(clustered):
    row = stats.mixed_slope(clustered, "y", "x", group="run")
    assert row["ci_low"] < 2.5 < row["ci_high"]
    # the random intercept absorbs the run offsets: tighter than the plain OLS interval
    ols = stats.ols_slope(clustered, "y", "x")
    assert row["ci_high"] - row["ci_low"] < ols["ci_high"] - ols["ci_low"]


def test_loglog_recovers_exponent():
    x = np.linspace(1, 50, 40)
    y = 3.0 * x ** 1.7 * np.exp(np.random.default_rng(1).normal(0, 0.05, x.size))
    row = stats.loglog_slope(pd.DataFrame({"x": x, "y": y}), "y", "x")
    assert row["ci_low"] < 1.7 < row["ci_high"]
    assert row["r2"] > 0.99


def test_no_relation_gives_ci_covering_zero():
    rng = np.random.default_rng(2)
    d = pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200)})
    row = stats.ols_slope(d, "y", "x")
    assert row["ci_low"] < 0 < row["ci_high"] and row["p"] > 0.01


def test_rank_correlations_known_cases():
    x = np.arange(10.0)
    rho, tau = stats.rank_correlations(x, x ** 3)
    assert rho["estimate"] == pytest.approx(1.0) and tau["estimate"] == pytest.approx(1.0)
    rho, tau = stats.rank_correlations(x, -x)
    assert rho["estimate"] == pytest.approx(-1.0) and tau["estimate"] == pytest.approx(-1.0)
    rho, _ = stats.rank_correlations([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert rho["estimate"] == pytest.approx(1 - 6 * 6 / (6 * 35))  # sum d^2 = 6
    assert rho["ci_low"] < rho["estimate"] < rho["ci_high"]


def test_per_run_correlation_t_interval():
    rows = []
    for run, noise in enumerate([0.0, 0.5, 1.0]):
        rng = np.random.default_rng(run)
        for k in range(10):
            rows.append({"run": run, "x": k, "y": k + noise * rng.normal() * 5})
    row = stats.per_run_correlation(pd.DataFrame(rows), "x", "y", run="run")
    per = [float(v) for v in row["per_run"].split(";")]
    assert row["estimate"] == pytest.approx(np.mean(per), abs=1e-4)
    assert row["n_groups"] == 3 and row["ci_low"] <= row["estimate"] <= row["ci_high"]


def test_paired_difference_and_mean_ci():
    a = [1.0, 2.0, 3.0, 4.0]
    b = [0.5, 1.5, 2.5, 3.5]
    row = stats.paired_difference(a, b)
    assert row["estimate"] == pytest.approx(0.5)
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi
    assert stats.normalize(np.array([1.0, 3.0])).tolist() == [0.5, 1.5]
