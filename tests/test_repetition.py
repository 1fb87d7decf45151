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
