"""The tracker's opt-in totals wired into training (TrainConfig.accumulate / track_updates):
recorded in gradients.csv, exact under resume, in the unit tables, and hash-neutral when off."""
import numpy as np
import pytest

from experiments.units import unit_table
from gfa_theory.train.loop import Trainer
from gfa_theory.train.lifecycle import train
from gfa_theory.train.run_config import build_run_config, resolve, run_key

TINY = ["model.n_blocks=3", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
        "train.batch_size=8", "train.steps=12", "train.eval_interval=6", "train.eval_batches=2",
        "train.checkpoint_interval=4", "train.log_interval=3", "train.warmup_steps=2"]
EXTRA = ("G_norm", "noise_floor", "U", "displacement")

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*extra: str):
    return build_run_config("gpt", overrides=[*TINY, *extra])


def test_off_is_hash_neutral_and_on_changes_the_hash():
    base = run_key(_cfg())
    assert run_key(_cfg("train.accumulate=false", "train.track_updates=false")) == base
    assert "accumulate" not in _cfg().to_dict()["train"]
    assert run_key(_cfg("train.accumulate=true")) != base
    assert run_key(_cfg("train.track_updates=true")) != base


def test_opt_in_totals_are_recorded_and_consistent(tmp_path):
    plain = train(_cfg(), tmp_path, progress=False)
    on = train(_cfg("train.accumulate=true", "train.track_updates=true"), tmp_path, progress=False)
    g = on.gradients[on.gradients["step"].isna()]
    assert set(EXTRA) <= set(g["quantity"])
    assert not set(EXTRA) & set(plain.gradients["quantity"])
    # recording more leaves what was trained, and A, unchanged
    a = plain.gradients.set_index(["unit", "quantity", "step"])["value"]
    b = on.gradients.set_index(["unit", "quantity", "step"])["value"]
    common = a.index.intersection(b.index)
    np.testing.assert_array_equal(a[common].to_numpy(), b[common].to_numpy())
    w = g.pivot_table(index="unit", columns="quantity", values="value")
    assert (w["G_norm"] <= w["A"] * (1 + 1e-6)).all()  # ||sum g|| <= sum ||g||
    assert (w["displacement"] <= w["U"] * (1 + 1e-6)).all()  # triangle inequality
    assert (w["U"] > 0).all() and (w["noise_floor"] >= 0).all()
    units = unit_table(on, "block")
    assert set(EXTRA) <= set(units.columns) and units["U"].gt(0).all()


def test_resume_keeps_the_opt_in_totals_exact():
    cfg, data = resolve(_cfg("train.accumulate=true", "train.track_updates=true"))
    whole = Trainer(cfg, data)
    for _ in range(12):
        whole.train_step()
    first = Trainer(cfg, data)
    for _ in range(6):
        first.train_step()
    state = first.state_dict()
    second = Trainer(cfg, data)  # a fresh process: a new init, then the checkpoint
    second.load_state_dict(state)
    for _ in range(6):
        second.train_step()
    a, b = whole.tracker.accumulated(), second.tracker.accumulated()
    assert set(a) == set(EXTRA)
    for q in EXTRA:
        np.testing.assert_array_equal(a[q], b[q], err_msg=q)
