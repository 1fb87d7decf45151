"""The equalization study's design without training: its runs, the declared tuning rule, and the
per-run measures (late-half delta-loss, shares, the manipulation check on U)."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from experiments import equalization as eq
from experiments.plans import plan


def test_runs_per_profile():
    p = plan("default")
    e = p.equalization
    first = eq.configs("default")
    # AdamW: every arm on every seed; SGD: every arm at every lr on the tuning seed
    assert len(first) == len(eq.ADAMW_ARMS) * len(p.seeds) + len(eq.SGD_ARMS) * len(e.sgd_lrs)
    assert len(e.sgd_lrs) >= 3
    tuned = {f"sgd/{a}": e.sgd_lrs[k % len(e.sgd_lrs)] for k, a in enumerate(eq.SGD_ARMS)}
    full = eq.configs("default", tuned)
    assert full[:len(first)] == first
    rest = full[len(first):]
    assert len(rest) == len(eq.SGD_ARMS) * (len(p.seeds) - 1) + len(eq.NOCLIP_ARMS) * len(e.noclip_seeds)
    for d, c in rest:  # confirmation and no-clip runs train at their arm's tuned lr
        assert c.train.lr == tuned[f"sgd/{d['intervention']}"] and c.train.optimizer == "sgd"
        assert (c.train.grad_clip == 0) == d["arm"].startswith("sgd no-clip")
    # every run records U and displacement; the hashes are distinct
    assert all(c.train.track_updates for _, c in full)
    assert len({c.hash() for _, c in full}) == len(full)
    assert len(eq.configs("smoke", {f"sgd/{a}": 0.1 for a in eq.SGD_ARMS})) <= 20  # smoke stays tiny


def _result(losses):
    return SimpleNamespace(metrics=pd.DataFrame({"split": ["val"] * len(losses), "loss": losses}))


def test_tuning_rule_lowest_final_loss_diverged_is_inf_ties_to_smaller():
    runs = eq.configs("smoke")
    sgd = [(k, d) for k, (d, c) in enumerate(runs) if d["optimizer"] == "sgd"]
    final = {("sgd/none", 0.1): 3.0, ("sgd/none", 0.3): 2.5,  # the larger lr is better
             ("sgd/equalize", 0.1): 3.0, ("sgd/equalize", 0.3): None,  # diverged
             ("sgd/global_rescale", 0.1): 2.0, ("sgd/global_rescale", 0.3): 2.0}  # a tie
    results = [None] * len(runs)
    for k, d in sgd:
        v = final[(d["arm"], d["lr"])]
        results[k] = None if v is None else _result([9.0, v])
    for k, (d, _) in enumerate(runs):
        if d["optimizer"] == "adamw":
            results[k] = _result([1.0])
    tuned, table = eq.tune(runs, results, plan("smoke").equalization.tune_seed)
    assert tuned == {"sgd/none": 0.3, "sgd/equalize": 0.1, "sgd/global_rescale": 0.1}
    assert math.isinf(table.set_index(["arm", "lr"]).loc[("sgd/equalize", 0.3), "final_val_loss"])
    assert table.tuned.sum() == 3


def _units(dloss, U):
    n = len(dloss)
    return pd.DataFrame({"run_id": "r", "seed": 0, "optimizer": "sgd", "intervention": "equalize",
                         "arm": "sgd/equalize", "lr": 0.1, "grad_clip": 1.0, "tuned": True, "val_loss": 2.0,
                         "order": np.arange(1, n + 1), "imp_ablation": dloss, "U": U,
                         "displacement": U})


def test_run_measures():
    m = eq.run_measures(_units([1.0, 0.3, -0.1, 0.2], [2.0, 2.0, 2.0, 2.0])).iloc[0]
    assert m.late_dloss == pytest.approx(0.1)  # signed, no denominator
    assert m.late_half_share == pytest.approx(0.2 / 1.5)  # negatives count as 0 in shares
    assert m.last_block_share == pytest.approx(0.2 / 1.5) and m.first_dloss == 1.0
    assert m.cv_U == 0.0 and m.late_share_U == 0.5  # equal update norms: CV 0, half of U late
    m = eq.run_measures(_units([1.0, 0.3, 0.1, 0.2], [3.0, 1.0, 1.0, 3.0])).iloc[0]
    assert m.cv_U == pytest.approx(1.0 / 2.0) and m.cv_displacement == pytest.approx(0.5)


def test_adamw_baseline_is_the_fan_in_studys_run():
    """The AdamW control arm is study 1's run of the same depth and seed (trained once, read by
    both): its recordings (U, displacement) are on in every study Transformer."""
    from experiments import fanin_vs_gradients
    study1 = {c.hash() for d, c in fanin_vs_gradients.configs("smoke") if d["supervision"] == "final"}
    base = [c for d, c in eq.configs("smoke") if d["optimizer"] == "adamw" and d["intervention"] == "none"]
    assert base and {c.hash() for c in base} <= study1
    assert all(c.train.track_updates for _, c in eq.configs("smoke"))
