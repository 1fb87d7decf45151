"""The training loop: determinism, caching, non-finite losses, interventions, exact resume
after a real SIGKILL, and DDP (2 CPU processes) against one process."""
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from gfa_theory.errors import ConfigError, TrainingError
from gfa_theory.train.data import eval_batches, load_data
from gfa_theory.train.loop import Trainer, lr_multiplier
from gfa_theory.train.lifecycle import get_or_train, train
from gfa_theory.train.run_config import (
    RunConfig,
    TrainConfig,
    build_run_config,
    resolve,
    run_key,
)
from gfa_theory.train.store import (
    CHECKPOINT_FILE,
    DONE_FILE,
    is_complete,
    load_run,
    results_root,
    run_dir,
)

TINY = ["model.n_blocks=2", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
        "train.batch_size=8", "train.steps=12", "train.eval_interval=6", "train.eval_batches=2",
        "train.checkpoint_interval=4", "train.log_interval=3", "train.warmup_steps=2"]
FILES = ("config.json", "metrics.csv", "gradients.csv")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(*extra: str, model: str = "gpt") -> RunConfig:
    base = TINY if model == "gpt" else [
        "model.blocks_per_stage=[1,1]", "model.widths=[4,8]", "train.batch_size=16", "train.steps=8",
        "train.eval_interval=4", "train.checkpoint_interval=4", "train.log_interval=2"]
    return build_run_config(model, overrides=[*base, *extra])


def test_lr_schedule():
    tc = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lr = [lr_multiplier(tc, k) for k in range(10)]
    assert lr[:2] == [0.5, 1.0]
    assert lr[2] == pytest.approx(1.0) and lr[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(lr[1:], lr[2:]))
    const = TrainConfig(steps=10, warmup_steps=0, schedule="constant")
    assert {lr_multiplier(const, k) for k in range(10)} == {1.0}


def test_run_config_roundtrip_and_family_defaults():
    cfg = tiny("train.seed=3")
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash() == cfg.hash()
    res = RunConfig.from_dict({"model_name": "resnet", "train": {"steps": 5}})
    assert res.data.dataset == "digits" and res.train.optimizer == "sgd" and res.train.steps == 5
    with pytest.raises(ConfigError, match="trains on text data"):
        RunConfig.from_dict({"model_name": "gpt", "data": {"dataset": "digits"}})


def test_run_key_covers_the_data(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    cfg = tiny(f"data.text_file={p}")
    k1 = run_key(cfg)
    p.write_text("the quick brown fox jumps over the lazy cat. " * 20, encoding="utf-8")
    assert run_key(cfg) != k1  # same config, different corpus: a different run
    assert run_dir(cfg, tmp_path) == tmp_path / run_key(cfg)


def test_results_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GFA_RESULTS", str(tmp_path))
    assert results_root() == tmp_path and results_root("x") == type(tmp_path)("x")


def test_same_seed_gives_byte_identical_results(tmp_path):
    a = train(tiny(), tmp_path / "a", progress=False)
    b = train(tiny(), tmp_path / "b", progress=False)
    assert a.run_dir.name == b.run_dir.name
    for name in FILES:
        assert (a.run_dir / name).read_bytes() == (b.run_dir / name).read_bytes(), name
    c = train(tiny("train.seed=1"), tmp_path / "a", progress=False)
    assert (c.run_dir / "gradients.csv").read_bytes() != (a.run_dir / "gradients.csv").read_bytes()
    g = a.gradients
    assert set(g["run_id"]) == {a.run_dir.name} and set(g["seed"]) == {0}
    assert {"A", "A_sq", "A_rms", "A_stream", "numel", "grad_norm"} <= set(g["quantity"])
    m = a.metrics
    assert list(m.columns) == ["step", "split", "loss", "accuracy", "lr"]
    assert list(m[m["split"] == "val"]["step"]) == [0, 6, 12]
    assert list(m[m["split"] == "train"]["step"]) == [3, 6, 9, 12]


def test_get_or_train_never_trains_twice(tmp_path):
    first = get_or_train(tiny(), tmp_path)
    stamp = {n: (first.run_dir / n).stat().st_mtime_ns for n in (*FILES, CHECKPOINT_FILE, DONE_FILE)}
    second = get_or_train(tiny(), tmp_path)
    assert first.trained and not second.trained
    assert stamp == {n: (first.run_dir / n).stat().st_mtime_ns for n in stamp}
    # the loaded model has the final weights: its held-out loss is the last logged one
    cfg, model, metrics, gradients = load_run(first.run_dir)
    data = load_data(cfg.data)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(data, "val", cfg.train.batch_size, cfg.train.eval_batches,
                                 cfg.model.block_size, seed=cfg.data.split_seed):
            total += float(model(x, y, final_only=True)[1]) * y.numel()
            count += y.numel()
    assert total / count == pytest.approx(metrics[metrics["split"] == "val"]["loss"].iloc[-1], rel=1e-6)
    assert gradients.equals(first.gradients)


def _poison_at_step_6(model, step):
    if step == 6:
        with torch.no_grad():
            model.wpe.weight.fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"non-finite training loss at step 7 .*checkpoint \(step 4\)"):
        train(tiny(), tmp_path, progress=False, on_after_backward=[_poison_at_step_6])
    (rdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not is_complete(rdir)
    state = torch.load(rdir / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert rdir.name != run_key(tiny())  # user hooks are part of the run's identity


def test_equalize_gives_equal_block_updates():
    # plain SGD, no clipping / decay / momentum: the update of each block is -lr * its gradient
    cfg, data = resolve(tiny("train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0",
                             "train.grad_clip=0.0", "train.warmup_steps=0", "train.intervention=equalize",
                             "model.n_blocks=3"))
    tr = Trainer(cfg, data)
    units = tr.raw_model.units("block")
    before = [[p.detach().clone() for p in u.params] for u in units]
    tr.train_step()
    moved = [float(torch.cat([(p.detach() - q).reshape(-1) for p, q in zip(u.params, b)]).norm())
             for u, b in zip(units, before)]
    # the tracker recorded the raw gradients (before the intervention), which differ between
    # blocks; every block then moved by lr times their mean
    raw = tr.tracker.totals("A", kind="block")["A"].to_numpy()
    assert raw.max() > 1.01 * raw.min()
    assert moved == pytest.approx([cfg.train.lr * raw.mean()] * 3, rel=1e-4)


def _block_steps(tr):
    """Each block's applied update norm in one training step of ``tr``, and the trainer."""
    units = tr.raw_model.units("block")
    before = [[p.detach().clone() for p in u.params] for u in units]
    tr.train_step()
    return np.array([float(torch.cat([(p.detach() - q).reshape(-1) for p, q in zip(u.params, b)]).norm())
                     for u, b in zip(units, before)])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_equalize_update_gives_equal_block_steps(optimizer):
    # with momentum, clipping and decay on: whatever the optimizer made of the gradients, every
    # block's applied step ends at the mean block step, and the tracker's U records that step
    cfg, data = resolve(tiny(f"train.optimizer={optimizer}", "train.intervention=equalize_update",
                             "train.track_updates=true", "model.n_blocks=3"))
    tr = Trainer(cfg, data)
    for _ in range(2):
        steps = _block_steps(tr)
        assert steps == pytest.approx([steps.mean()] * 3, rel=1e-4)
    U = tr.tracker.totals("U", kind="block")["U"].to_numpy()
    assert U == pytest.approx([U.mean()] * 3, rel=1e-4)
    # without the intervention the same run's block steps differ (barely under Adam, whose first
    # step is lr * sign(g) per coordinate, so ~lr * sqrt(numel) in every block of equal size)
    plain = _block_steps(Trainer(*resolve(tiny(f"train.optimizer={optimizer}", "model.n_blocks=3"))))
    assert plain.max() > 1.001 * plain.min()


def test_global_rescale_keeps_block_ratios_at_the_equalized_total():
    # plain SGD: each block moves by lr * its (rescaled) gradient. global_rescale keeps the raw
    # ratios between blocks; its joint norm is the one equalization gives (the mean norm in every block)
    common = ("train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0", "train.grad_clip=0.0",
              "train.warmup_steps=0", "model.n_blocks=3")
    cfg, data = resolve(tiny(*common, "train.intervention=global_rescale"))
    tr = Trainer(cfg, data)
    moved = _block_steps(tr)
    raw = tr.tracker.totals("A", kind="block")["A"].to_numpy()
    assert raw.max() > 1.01 * raw.min()
    assert moved / moved.sum() == pytest.approx(raw / raw.sum(), rel=1e-4)
    assert np.linalg.norm(moved) == pytest.approx(cfg.train.lr * raw.mean() * math.sqrt(3), rel=1e-4)
    eq = _block_steps(Trainer(*resolve(tiny(*common, "train.intervention=equalize"))))
    assert np.linalg.norm(eq) == pytest.approx(np.linalg.norm(moved), rel=1e-4)


def test_interventions_enter_the_hash_and_none_keeps_it():
    keys = {i: run_key(tiny(f"train.intervention={i}")) for i in ("none", "equalize", "global_rescale",
                                                                    "equalize_update")}
    assert len(set(keys.values())) == 4 and keys["none"] == run_key(tiny())
    with pytest.raises(ConfigError, match="intervention"):
        tiny("train.intervention=rescale")


def test_resnet_on_digits(tmp_path):
    r = train(tiny(model="resnet"), tmp_path, progress=False)
    val = r.metrics[r.metrics["split"] == "val"]
    assert val["loss"].iloc[-1] < val["loss"].iloc[0]
    assert ((val["accuracy"] >= 0) & (val["accuracy"] <= 1)).all()
    a = r.gradients[(r.gradients["quantity"] == "A") & (r.gradients["kind"] == "branch")]
    assert list(a["fan_in"]) == [2, 1]


def test_restart_retrains(tmp_path):
    first = train(tiny(), tmp_path, progress=False)
    again = train(tiny(), tmp_path, resume=False, progress=False)
    assert again.trained and again.metrics.equals(first.metrics)


# ---- multi-process tests ------------------------------------------------------------------------

def _cli(root, *overrides, launcher=()):
    return [sys.executable, *launcher, "-m", "gfa_theory.cli", "train", "--model", "gpt",
            "--no-progress", "--out", str(root), "--set", *overrides]


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path):
    args = [*TINY, "train.steps=150", "train.checkpoint_interval=10", "train.log_interval=5",
            "train.eval_interval=50"]
    subprocess.run(_cli(tmp_path / "ref", *args), check=True, capture_output=True, timeout=300, env=ONE_THREAD)
    root = tmp_path / "killed"
    proc = subprocess.Popen(_cli(root, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ONE_THREAD)
    deadline = time.monotonic() + 240
    found = []
    while not found and time.monotonic() < deadline and proc.poll() is None:
        found = list(root.glob(f"*/{CHECKPOINT_FILE}"))
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert found, "no checkpoint was written before the run ended"
    assert proc.returncode == -signal.SIGKILL
    rdir = found[0].parent
    killed_at = torch.load(found[0], weights_only=True)["step"]
    assert 0 < killed_at < 150 and not is_complete(rdir)
    subprocess.run(_cli(root, *args), check=True, capture_output=True, timeout=300, env=ONE_THREAD)
    ref = tmp_path / "ref" / rdir.name
    for name in FILES:
        assert (rdir / name).read_bytes() == (ref / name).read_bytes(), name
    w1 = torch.load(rdir / CHECKPOINT_FILE, weights_only=True)["model"]
    w2 = torch.load(ref / CHECKPOINT_FILE, weights_only=True)["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w2)
    assert not list(rdir.glob(".*.tmp"))


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    args = [*TINY, "train.steps=8", "train.log_interval=1", "train.eval_interval=4"]
    env = ONE_THREAD
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    done = subprocess.run(_cli(tmp_path / "ddp", *args, launcher=launcher), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one = train(build_run_config("gpt", overrides=args), tmp_path / "one", progress=False)
    ddp = tmp_path / "ddp" / one.run_dir.name
    assert is_complete(ddp)
    m2 = pd.read_csv(ddp / "metrics.csv")
    assert list(m2["step"]) == list(one.metrics["step"]) and list(m2["split"]) == list(one.metrics["split"])
    np.testing.assert_allclose(m2["loss"], one.metrics["loss"], rtol=1e-4, atol=1e-6)
    g2 = pd.read_csv(ddp / "gradients.csv")
    assert list(g2["unit"]) == list(one.gradients["unit"])
    np.testing.assert_allclose(g2["value"], one.gradients["value"], rtol=1e-3, atol=1e-7)
    import json
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
