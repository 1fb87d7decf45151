"""Study 4 (parameter-shared repetition): skipping single block applications, and the study's
per-application, equal-applications and fan-in tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import importance
from gfa_theory.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(schedule, n_blocks=3, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_blocks=n_blocks, n_head=2, d_ff=32,
                    block_schedule=schedule)
    return GPT(cfg).eval()


def _batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 11, (3, 8), generator=g), torch.randint(0, 11, (3, 8), generator=g))
            for _ in range(n)]


SCHEDULE = [0, 1, 2, 2, 2]  # the last block applied r = 3 times


def test_skipping_every_application_of_a_group_equals_ablating_the_group():
    model, batches = _model(SCHEDULE), _batches()
    with model.ablate(["h.2"]):
        group = importance.evaluate(model, batches)
    with model.skip_applications([3, 4, 5]):
        apps = importance.evaluate(model, batches)
    assert apps == group
    base = importance.evaluate(model, batches)
    assert importance.joint_ablation(model, batches, [3, 4, 5]) == pytest.approx(group - base, abs=0)


@pytest.mark.parametrize("position", [1, 2, 3, 4, 5, 6])
def test_skipping_one_application_equals_the_schedule_without_it(position):
    # the same weights run on the schedule with that application left out
    model, batches = _model([0, 0, 1, 1, 2, 2], n_blocks=3), _batches()
    shorter = [u for a, u in enumerate(model.schedule, start=1) if a != position]
    other = _model(shorter, n_blocks=3, seed=5)
    other.load_state_dict(model.state_dict())
    with model.skip_applications([position]):
        skipped = importance.evaluate(model, batches)
    assert skipped == pytest.approx(importance.evaluate(other, batches), rel=1e-6)
    assert skipped != importance.evaluate(model, batches)  # the application did something
    assert model.skipped == frozenset()  # restored on exit


def test_application_ablation_rows_and_unshared_equals_block_ablation():
    model, batches = _model(SCHEDULE), _batches()
    apps = importance.application_ablation(model, batches)
    assert apps["index"].tolist() == [1, 2, 3, 4, 5] and apps["unit"].tolist() == ["h.0", "h.1", "h.2", "h.2", "h.2"]
    assert (apps["kind"] == "application").all() and np.isfinite(apps["score"]).all()
    plain = _model(None, n_blocks=4)
    per_app = importance.application_ablation(plain, batches)["score"].to_numpy()
    per_block = importance.ablation(plain, batches)["score"].to_numpy()
    assert np.array_equal(per_app, per_block)


def test_skipping_an_application_out_of_range_is_a_config_error():
    model = _model(SCHEDULE)
    with pytest.raises(ConfigError, match="out of range 1..5"), model.skip_applications([6]):
        pass
    assert model.skipped == frozenset()


def test_a_model_that_cannot_skip_applications_says_so():
    from gfa_theory.models.base import ResidualModel
    with pytest.raises(ConfigError, match="cannot skip single block applications"), \
            ResidualModel().skip_applications([1]):
        pass


# ---- the study (smoke profile: seconds) --------------------------------------------------------

@pytest.fixture(scope="module")
def study(smoke_root):
    from experiments import repetition
    from experiments.runner import Context
    from experiments.study_io import load_study
    repetition.run(ctx=Context("smoke", smoke_root, jobs=1, progress=False))
    return load_study(Context("smoke", smoke_root, jobs=1, progress=False), repetition.NAME)


def test_study_tables_cover_every_application_and_equal_removals(study, smoke_root):
    from experiments.plans import plan
    p = plan("smoke").repetition
    apps, joint, units = study["applications"], study["joint"], study["units"]
    for rid, d in apps.groupby("run_id"):
        n = d["n_applications"].iloc[0]
        assert sorted(d["application"]) == list(range(1, n + 1))
        assert sorted(joint[joint.run_id == rid]["m"]) == list(range(1, min(max(p.repeats), n) + 1))
    # every arm loses the same number of applications at each m
    assert (joint.groupby("m")["removed"].apply(lambda s: s.str.split().str.len().nunique()) == 1).all()
    # the study reuses block ablations for equal skipped sets: recompute some directly
    from experiments import repetition
    from experiments.runner import Context, run_many
    from experiments.units import heldout_batches
    runs = repetition.configs("smoke")
    results = run_many([c for _, c in runs], Context("smoke", smoke_root, jobs=1, progress=False))
    imp = plan("smoke").importance
    for (desc, _), res in list(zip(runs, results))[:3]:
        rid, batches = res.run_dir.name, heldout_batches(res, imp.batches, imp.batch_size)
        n = len(res.model.schedule)
        for m in range(1, min(max(p.repeats), n) + 1):
            direct = importance.joint_ablation(res.model, batches, list(range(n - m + 1, n + 1)))
            table = joint[(joint.run_id == rid) & (joint.m == m)]["delta_loss"].item()
            assert direct == pytest.approx(table, abs=1e-6), (desc, m)
        per = importance.application_ablation(res.model, batches)["score"].to_numpy()
        assert np.allclose(per, apps[apps.run_id == rid].sort_values("application")["imp_application"], atol=1e-6)
    assert set(units["arm"]) == {"parameter-matched control", "repetition", "compute-matched control (of r=2)"}


def test_manipulation_check_counts_agree_and_repetition_raises_the_last_fan_in(study):
    fan = study["fanin"]
    assert np.array_equal(fan["F"].to_numpy(float), fan["F_paths"].to_numpy(float))
    last = fan[fan.order == fan.n_units].set_index("variant")["F_paths"]
    assert last["repeat r=2"] > max(last["baseline"], last["control +1"])
    s = study["summary"].set_index("test")
    assert s.loc["repeat r=2: last_F (autograd paths)", "estimate"] == last["repeat r=2"]


def test_summary_leads_with_the_primary_comparisons(study):
    from experiments import repetition as rep
    tests = study["summary"]["test"].tolist()
    primary = [rep.comparison(2, rep.BASELINE, rep.PRIMARY), rep.comparison(2, "control", rep.PRIMARY)]
    assert primary == ["repeat r=2 - baseline (parameter-matched): joint_delta_loss m=2",
                       "repeat r=2 - control +1 (compute-matched): joint_delta_loss m=2"]
    first = [t for t in tests if " - " in t][:2]
    assert first == primary
    assert {"baseline: joint_delta_loss m=2", "repeat r=2: application_importance from_end=1",
            rep.comparison(2, "control", "late_application_importance")} <= set(tests)


def test_f7_and_c7_read_the_study(study):
    from experiments import repetition as rep
    from experiments.summary import need
    from experiments.verdicts import repetition as c7r
    from figures import gfa
    fig = gfa.f7({"repetition": study})
    assert len(fig.axes) == 3 and all(ax.has_data() for ax in fig.axes)
    s = study["summary"]  # keyed rows: the rule selects by fields, never by the label
    row = need(s, arm=rep.repeat(2), against=rep.BASELINE, quantity=rep.PRIMARY, m=2)
    assert row["test"] == rep.comparison(2, rep.BASELINE, rep.PRIMARY) and row["setting"] == "parameter-matched"
    assert row["df"] == row["n_groups"] - 1 and row["se"] >= 0
    found = c7r.c7(s)
    assert found.arms["fan-in raised"].all() and found.primary.estimate == row["estimate"]
