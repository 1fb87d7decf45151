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


def test_mixed_model_singular_fit_is_a_row_without_estimate(clustered, monkeypatch):
    """A singular MixedLM fit (no between-run variance, as with per-run normalized values at one
    depth) is reported as a row with no estimate, not an exception that stops the study."""
    import statsmodels.regression.mixed_linear_model as mlm

    def singular(self, *a, **k):
        raise np.linalg.LinAlgError("Singular matrix")
    monkeypatch.setattr(mlm.MixedLM, "fit", singular)
    row = stats.mixed_slope(clustered, "y", "x", group="run")
    assert np.isnan(row["estimate"]) and np.isnan(row["ci_low"]) and "singular" in row["method"]
    assert row["n"] == 72 and row["n_groups"] == 6


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


# ---- few-cluster inference, equivalence, multiplicity, power, formatting ---------------------------

def test_cluster_robust_interval_uses_t_with_groups_minus_one_df(clustered):
    from scipy import stats as sps

    row = stats.ols_slope(clustered, "y", "x", cluster="run")
    half = (row["ci_high"] - row["ci_low"]) / 2
    assert half / row["se"] == pytest.approx(sps.t.ppf(0.975, 6 - 1))  # 6 runs: df = 5, not the normal
    assert "t with 5 df" in row["method"]


def test_within_run_exponent_recovers_a_power_law():
    rng = np.random.default_rng(1)
    scale = np.exp(rng.normal(0, 1, 5))  # one scale per run: only the within-run profile is a power law
    d = pd.DataFrame([{"run": r, "F": f, "A": scale[r] * f ** 0.5 * np.exp(rng.normal(0, 0.02))}
                      for r in range(5) for f in range(1, 9)])
    row = stats.loglog_slope(d, "A", "F", cluster="run", fixed="run")
    assert row["ci_low"] < 0.5 < row["ci_high"] and row["ci_high"] - row["ci_low"] < 0.1


def test_offset_aic_prefers_the_true_profile():
    f_lin = np.tile(np.arange(1, 9), 4).astype(float)
    d = pd.DataFrame({"run": np.repeat(range(4), 8), "lF_lin": np.log(f_lin),
                      "lF_quad": np.log(f_lin * (f_lin + 1) / 2)})
    d["lA"] = d["lF_lin"] + np.random.default_rng(2).normal(0, 0.05, len(d)) + d["run"]
    assert stats.offset_aic(d, "lA", "lF_lin", "run") < stats.offset_aic(d, "lA", "lF_quad", "run") - 2


def test_tost_matches_statsmodels_and_rejects_only_inside_the_margin():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.1, 12)
    b = a + rng.normal(0.0, 0.01, 12)
    ref = stats.tost_paired(a, b, 0.02)
    d = a - b
    mine = stats.tost(d.mean(), d.std(ddof=1) / np.sqrt(len(d)), len(d) - 1, 0.02)
    assert mine["p"] == pytest.approx(ref["p"]) and mine["p"] < 0.05
    assert stats.tost(d.mean() + 0.05, d.std(ddof=1) / np.sqrt(12), 11, 0.02)["p"] > 0.5  # outside
    assert stats.tost(0.0, 0.0, 2, 0.02)["p"] == 0.0 and stats.tost(0.05, 0.0, 2, 0.02)["p"] == 1.0


def test_se_from_interval_inverts_mean_ci():
    v = [0.1, 0.3, 0.2, 0.5]
    m, lo, hi = stats.mean_ci(v)
    assert stats.se_from_interval(lo, hi, 4) == pytest.approx(np.std(v, ddof=1) / 2)


def test_holm_and_power():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.isnan(stats.holm([np.nan, 0.01])[0])
    assert stats.tost_power(0.05, 0.01, 3) > 0.9 > stats.tost_power(0.05, 0.1, 3)
    n = stats.tost_n_for_power(0.05, 0.1)
    assert stats.tost_power(0.05, 0.1, int(n)) >= 0.8 > stats.tost_power(0.05, 0.1, int(n) - 1)


def test_p_values_print_with_a_floor_and_no_spread_prints_as_such():
    assert stats.format_p(0.0) == "p < 1e-4" and stats.format_p(0.0123) == "p = 0.012"
    assert stats.format_p(np.nan) == "p n/a"
    assert stats.format_interval(1.0, 1.0, 1.0, n=9) == "all 9 runs: 1.000"
    assert stats.format_interval(0.0, 0.0, 0.0, "+.2f", n=3, unit="seed pairs") == "all 3 seed pairs: +0.00"
    assert stats.format_interval(0.5, 0.4, 0.6) == "0.500 [0.400, 0.600]"
    # ends that print the same: no interval is shown, and the text says the spread is below precision
    assert stats.format_interval(1e-9, -1e-9, 3e-9, n=3, unit="seeds") == \
        "all 3 seeds: 0.000 (spread below the printed precision)"
    assert stats.format_interval(0.5, 0.49999, 0.50001) == "0.500 (spread below the printed precision)"


def test_rows_keep_the_standard_error_and_df_behind_their_interval(clustered):
    """The SE and df a row's interval was built from travel with it (equivalence tests read them,
    never the interval ends): an OLS slope's cluster-robust SE with G - 1 df, a per-run correlation's
    SE over runs even where its interval is clipped to [-1, 1], a paired difference's SE with n - 1."""
    from scipy import stats as sps

    r = stats.ols_slope(clustered, "y", "x", cluster="run")
    q = sps.t.ppf(0.975, r["df"])
    assert r["df"] == r["n_groups"] - 1 and r["ci_low"] == pytest.approx(r["estimate"] - q * r["se"])
    d = pd.DataFrame({"run_id": np.repeat(np.arange(4), 5), "x": np.tile(np.arange(5.0), 4)})
    d["y"] = d["x"] + np.where(d["run_id"] == 3, np.array([0, 3, -3, 3, 0] * 4), 0)  # three perfect runs, one not
    c = stats.per_run_correlation(d, "x", "y")
    per_run = np.array([1.0, 1.0, 1.0, sps.spearmanr(np.arange(5.0), np.arange(5.0) + [0, 3, -3, 3, 0]).statistic])
    assert c["ci_high"] == 1.0 and c["se"] == pytest.approx(sps.sem(per_run)) and c["df"] == 3
    assert c["ci_high"] < c["estimate"] + sps.t.ppf(0.975, 3) * c["se"]  # clipped: the end is not est + t * se
    a, b = np.array([1.0, 1.2, 0.9, 1.1]), np.array([1.0, 1.0, 1.0, 1.0])
    p = stats.paired_difference(a, b)
    assert p["df"] == 3 and stats.tost(p["estimate"], p["se"], p["df"], 0.3)["p"] == pytest.approx(
        stats.tost_paired(a, b, 0.3)["p"])
