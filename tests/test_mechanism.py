"""The mechanism study (experiments/mechanism.py): arms, accounts, scoring, and a smoke run."""

import numpy as np
import pandas as pd
import pytest

from experiments import fanin_vs_gradients, mechanism
from experiments.plans import plan
from experiments.runner import Context
from experiments.study_io import load_study
from gfa_theory.theory.layout import Layout
from gfa_theory.train.run_config import RunConfig


def test_arms_are_distinct_runs_and_pre_ln_is_study_1s_run_with_recordings():
    cfgs = [c for _, c in mechanism.configs("smoke")]
    hashes = [c.hash() for c in cfgs]
    assert len(set(hashes)) == len(hashes)
    assert all(c.train.accumulate and c.train.track_updates and c.train.gain_every == plan("smoke").train.gain_every
               for c in cfgs)
    study1 = {c.hash() for d, c in fanin_vs_gradients.configs("smoke") if d["supervision"] == "final"}
    pre = [c for d, c in mechanism.configs("smoke") if d["arm"] == "pre"]
    assert {c.hash() for c in pre} <= study1  # the very runs of study 1: trained once, read by both
    for d, c in mechanism.configs("smoke"):
        assert RunConfig.from_dict(c.to_dict()) == c
        assert (c.model.norms().placement == "post") == (d["arm"] == "post")
    small = next(c for d, c in mechanism.configs("smoke") if d["arm"] == "pre_small_batch")
    assert small.train.batch_size == mechanism.PLANS["smoke"].small_batch


def test_accounts_at_unit_and_small_gains():
    lay = Layout.sequential(4)
    p = mechanism.predictions(lay, np.ones(4))
    assert p["counts"].tolist() == p["aligned"].tolist() == [4, 3, 2, 1]
    assert p["product"].tolist() == [8, 4, 2, 1]
    flat = mechanism.predictions(lay, np.full(4, 1e-9))
    for acc in ("aligned", "orthogonal", "product"):
        np.testing.assert_allclose(flat[acc], 1.0, atol=1e-8)  # vanishing gains: a flat profile


def test_skip_gains_enter_the_accounts():
    lay = Layout.sequential(3)
    p = mechanism.predictions(lay, np.ones(3), identity=[2.0] * lay.n_positions)
    assert p["counts"].tolist() == [3, 2, 1]  # counts ignore gains
    assert p["product"].tolist() == [9, 3, 1]  # (a + g)^k with a = 2, g = 1


def _profile_table(A, **preds):
    d = pd.DataFrame({"run_id": "r", "seed": 0, "family": "transformer", "arm": "pre", "depth_B": 4, "A": A})
    for k, v in preds.items():
        d[k] = v
    return d


def test_profile_error_is_zero_only_for_the_right_shape():
    A = np.array([8.0, 4.0, 2.0, 1.0])
    shape = A / A.mean()
    d = _profile_table(3 * A, pred_counts=[4, 3, 2, 1], pred_aligned=shape, pred_orthogonal=[1, 1, 1, 1],
                       pred_product=shape, pred_final_aligned=[1, 1, 1, 1], pred_final_orthogonal=shape,
                       pred_final_product=shape)
    e = mechanism.profile_errors(d)
    err = e[e.gains == "training"].set_index("account")["log_error"]
    assert err["aligned"] == pytest.approx(0.0, abs=1e-12) and err["product"] == pytest.approx(0.0, abs=1e-12)
    assert err["orthogonal"] > err["counts"] > 0.1
    fin = e[e.gains == "final"].set_index("account")["log_error"]
    assert fin["counts"] == err["counts"] and fin["orthogonal"] == pytest.approx(0.0, abs=1e-12)
    s = mechanism.summarize(e)
    tr = s[s.gains == "training"]
    assert set(tr[tr["best"]]["account"]) <= {"aligned", "product"}
    assert (s["n"] == 1).all() and np.isfinite(s["mean"]).all()


def test_summary_intervals_over_seeds():
    rows = [{"run_id": f"r{k}", "seed": k, "family": "transformer", "arm": "pre", "depth_B": 4, "account": acc,
             "gains": "training", "log_error": v + 0.01 * k}
            for k in range(3) for acc, v in (("counts", 0.3), ("aligned", 0.1), ("orthogonal", 0.2), ("product", 0.4))]
    s = mechanism.summarize(pd.DataFrame(rows)).set_index("account")
    assert s.loc["aligned", "best"] and not s.loc["counts", "best"]
    assert s.loc["counts", "ci_low"] < 0.31 < s.loc["counts", "ci_high"] and s.loc["counts", "n"] == 3


def test_run_shape_reads_exponent_and_growth():
    F = np.array([4.0, 3.0, 2.0, 1.0])
    units = pd.DataFrame({"A": 2 * np.sqrt(F), "F": F, "depth": np.linspace(0, 1, 4),
                          "stream_rms": np.exp(np.linspace(0, 1, 4)), "jacobian_gain": 0.5, "alignment": 0.1})
    r = mechanism.run_shape(units)
    assert r["exponent"] == pytest.approx(0.5) and r["rho_AF"] == pytest.approx(1.0)
    assert r["stream_growth"] == pytest.approx(1.0) and r["mean_gain"] == 0.5


@pytest.mark.slow
def test_mechanism_smoke(smoke_root):
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    units = mechanism.run(ctx=ctx)
    summary = units.attrs["summary"]
    assert set(summary["account"]) == set(mechanism.ACCOUNTS) and set(summary["gains"]) == set(mechanism.GAIN_SOURCES)
    assert set(summary["arm"]) == set(mechanism.ARMS) | set(mechanism.SETTINGS)
    tr = summary[summary.gains == "training"]
    assert np.isfinite(tr["mean"]).all() and (tr.groupby(["arm", "depth_B"])["best"].sum() >= 1).all()
    for q in ("jacobian_gain", "stream_rms", "branch_rms", "pred_product", "final_jacobian_gain"):
        assert (units[q] > 0).all(), q
    tables = load_study(ctx, "mechanism")
    runs, blocks, proxies = tables["runs"], tables["blocks"], tables["proxies"]
    assert len(runs) == units["run_id"].nunique() and np.isfinite(runs["stream_growth"]).all()
    assert (blocks["window_effective_rank"] >= 1 - 1e-9).all() and (blocks["stable_rank"] >= 1 - 1e-9).all()
    assert blocks.loc[blocks.arm == "pre", "imp_ablation"].notna().all()
    assert set(proxies["proxy"]) == set(mechanism.PROXIES)
    assert (ctx.study_dir("mechanism") / "meta.json").is_file()
