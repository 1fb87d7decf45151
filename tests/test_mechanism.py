"""The mechanism study (experiments/mechanism.py): arms, accounts, scoring, and a smoke run."""
import numpy as np
import pandas as pd
import pytest

from experiments import fanin_vs_gradients, mechanism
from experiments.runner import Context
from gfa_theory.theory.layout import Layout
from gfa_theory.train.run_config import RunConfig


def test_arms_are_distinct_runs_and_pre_ln_shares_study_1s_cache():
    cfgs = [c for _, c in mechanism.configs("smoke")]
    hashes = [c.hash() for c in cfgs]
    assert len(set(hashes)) == len(hashes)
    study1 = {c.hash() for d, c in fanin_vs_gradients.configs("smoke") if d["supervision"] == "final"}
    pre = [c for d, c in mechanism.configs("smoke") if d["arm"] in ("pre", "resnet_preact")]
    assert {c.hash() for c in pre} <= study1  # today's Pre-LN runs are reused, not retrained
    deep = next(c for d, c in mechanism.configs("smoke") if d["arm"] == "deepnorm")
    assert deep.model.norms().alpha == pytest.approx((4 * deep.model.n_blocks) ** 0.25)
    assert RunConfig.from_dict(deep.to_dict()) == deep


def test_accounts_at_unit_and_small_gains():
    lay = Layout.sequential(4)
    p = mechanism.predictions(lay, np.ones(4))
    assert p["counts"].tolist() == p["aligned"].tolist() == [4, 3, 2, 1]
    assert p["product"].tolist() == [8, 4, 2, 1]
    flat = mechanism.predictions(lay, np.full(4, 1e-9))
    for acc in ("aligned", "orthogonal", "product"):
        np.testing.assert_allclose(flat[acc], 1.0, atol=1e-8)  # vanishing gains: a flat profile


def test_profile_error_is_zero_only_for_the_right_shape():
    A = np.array([8.0, 4.0, 2.0, 1.0])
    d = pd.DataFrame({"run_id": "r", "arm": "pre", "depth_B": 4, "A": 3 * A,
                      "pred_counts": [4, 3, 2, 1], "pred_aligned": A / A.mean(),
                      "pred_orthogonal": [1, 1, 1, 1], "pred_product": A / A.mean()})
    err = mechanism.profile_errors(d).set_index("account")["log_error"]
    assert err["aligned"] == pytest.approx(0.0, abs=1e-12) and err["product"] == pytest.approx(0.0, abs=1e-12)
    assert err["orthogonal"] > err["counts"] > 0.1
    s = mechanism.summarize(mechanism.profile_errors(d))
    assert set(s[s["best"]]["account"]) <= {"aligned", "product"} and s["best"].sum() == 1


@pytest.mark.slow
def test_mechanism_smoke(smoke_root):
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    units = mechanism.run(ctx=ctx)
    summary = units.attrs["summary"]
    assert set(summary["account"]) == set(mechanism.ACCOUNTS)
    assert set(summary["arm"]) == set(mechanism.ARMS) | {"resnet_preact", "resnet_post"}
    assert np.isfinite(summary["mean"]).all() and (summary.groupby(["arm", "depth_B"])["best"].sum() == 1).all()
    for q in ("jacobian_gain", "stream_rms", "branch_rms", "pred_product"):
        assert (units[q] > 0).all(), q
    assert (ctx.study_dir("mechanism") / "meta.json").is_file()
