"""CascadeFormer schedules: sizes, rounding, budgets, and the model they configure."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfa_theory.cli import main as gfa
from gfa_theory.errors import ConfigError
from gfa_theory.methods.taper import (
    SCHEDULES,
    SHRINKING,
    TaperConfig,
    budget_ratio,
    count_params,
    gradient_profile,
    match,
    plan,
    uniform_plan,
)
from gfa_theory.models import GPT, GPTConfig


PROFILE = (8.0, 4.0, 3.0, 2.5, 2.0, 1.8, 1.5, 1.0)  # a measured per-block gradient profile, falling


@pytest.mark.parametrize("schedule", SHRINKING)
def test_schedule_sizes_are_rounded_and_monotone(schedule):
    cfg = TaperConfig(B=8, schedule=schedule, r=0.4, quantum=32, profile=PROFILE if schedule == "measured" else None)
    p = plan(cfg)
    assert len(p.n_head) == len(p.d_ff) == 8
    assert all(f % 32 == 0 and 32 <= f <= cfg.d_ff for f in p.d_ff)
    assert all(1 <= h <= cfg.n_head for h in p.n_head)
    assert list(p.d_ff) == sorted(p.d_ff, reverse=True)  # never wider with depth
    assert p.n_head[0] == cfg.n_head and p.d_ff[0] == cfg.d_ff  # the first block is full width
    if schedule == "uniform":
        assert p.params() == uniform_plan(cfg).params()
    else:
        assert p.params() < uniform_plan(cfg).params()


def test_linear_endpoints_and_fanin_follows_symbolic_fan_in():
    p = plan(TaperConfig(B=5, schedule="linear", r=0.5))
    assert p.multipliers[0] == 1.0 and p.multipliers[-1] == pytest.approx(0.5)
    f = plan(TaperConfig(B=4, schedule="fanin", alpha=1.0, r=0.01))
    # 4 two-branch blocks, N = 8: block fan-in 8+7, 6+5, 4+3, 2+1
    assert f.fan_in == (15, 11, 7, 3)
    assert f.multipliers == pytest.approx((1.0, 11 / 15, 7 / 15, 3 / 15))


@pytest.mark.parametrize("budget,target", [("params", 0.8), ("flops", 0.9)])
def test_match_hits_budget_from_below(budget, target):
    cfg = TaperConfig(B=8, schedule="linear", quantum=16)
    p = match(cfg, target, budget)
    base = uniform_plan(cfg)
    ratio = p.params() / base.params() if budget == "params" else p.flops_per_token() / base.flops_per_token()
    assert ratio <= target + 1e-9 and ratio > target - 0.05


def test_plan_configures_a_gpt_with_exactly_those_params():
    cfg = TaperConfig(B=4, n_embd=64, n_head=4, d_ff=256, schedule="cosine", r=0.25, quantum=16,
                      vocab_size=50, block_size=16)
    p = plan(cfg)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, **p.model_overrides()))
    assert sum(q.numel() for q in model.parameters()) == p.params()
    x = torch.randint(0, 50, (2, 16))
    assert model(x, x)[1].isfinite()
    assert count_params(64, (4,) * 4, 16, (256,) * 4, 50, 16) == uniform_plan(cfg).params()


def test_inverse_widens_narrow_is_uniform_and_measured_follows_the_profile():
    inv = plan(TaperConfig(B=5, schedule="inverse", r=0.5))
    assert inv.multipliers[0] == pytest.approx(0.5) and inv.multipliers[-1] == 1.0
    assert list(inv.d_ff) == sorted(inv.d_ff) and inv.d_ff[-1] == 512  # wider with depth
    nar = plan(TaperConfig(B=4, schedule="narrow", r=0.5))
    assert set(nar.n_head) == {2} and set(nar.d_ff) == {256}
    m = plan(TaperConfig(B=8, schedule="measured", r=0.1, alpha=1.0, profile=PROFILE))
    assert m.multipliers == pytest.approx([max(0.1, g / 8) for g in PROFILE])
    assert set(SCHEDULES) - set(SHRINKING) == {"inverse", "narrow"}


@pytest.mark.parametrize("schedule", ["narrow", "inverse", "linear", "measured"])
def test_every_arm_matches_one_budget(schedule):
    base = TaperConfig(B=8, n_embd=64, n_head=4, d_ff=256, quantum=32, vocab_size=65)
    target = budget_ratio(plan(TaperConfig(**{**base.__dict__, "schedule": "fanin", "r": 0.5})))
    cfg = TaperConfig(**{**base.__dict__, "schedule": schedule, "r": 0.5,
                         "profile": PROFILE if schedule == "measured" else None})
    below, nearest = match(cfg, target), match(cfg, target, nearest=True)
    assert budget_ratio(below) <= target + 1e-9
    assert abs(budget_ratio(nearest) - target) <= abs(budget_ratio(below) - target)
    assert abs(budget_ratio(nearest) - target) < 0.03  # whole heads / FFN quanta: within 3 % of the budget


def test_gradient_profile_reads_block_A_and_refuses_missing_blocks():
    import pandas as pd
    rows = [{"unit": f"h.{b}", "kind": "block", "quantity": q, "step": s, "value": v}
            for b, g in enumerate((5.0, 3.0, 1.0)) for q, s, v in (("A", None, g), ("A", 10, 99.0), ("A_sq", None, 7.0))]
    rows.append({"unit": "h.0.attn", "kind": "branch", "quantity": "A", "step": None, "value": 42.0})
    g = pd.DataFrame(rows)
    assert gradient_profile(g, 3) == (5.0, 3.0, 1.0)  # final A of block units only
    with pytest.raises(ConfigError, match="h.3"):
        gradient_profile(g, 4)
    with pytest.raises(ConfigError, match="profile"):
        TaperConfig(B=3, schedule="measured")
    with pytest.raises(ConfigError, match="positive"):
        TaperConfig(B=3, schedule="measured", profile=(1.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished 3-block GPT run with its gradients."""
    from gfa_theory.train.lifecycle import train
    from gfa_theory.train.run_config import RunConfig, TrainConfig

    cfg = RunConfig("gpt", GPTConfig.tiny(n_blocks=3, block_size=16, n_embd=16, n_head=2, d_ff=32),
                    train=TrainConfig(steps=4, batch_size=4, eval_interval=0, eval_batches=1,
                                      checkpoint_interval=0, warmup_steps=1, series_points=2))
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir


def test_cli_from_run_derives_a_matched_measured_schedule(finished_run, capsys):
    assert gfa(["taper", "--from-run", str(finished_run), "--quantum", "8", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["schedule"] == "measured" and len(d["blocks"]) == 3 and d["config"]["n_embd"] == 16
    fanin = plan(TaperConfig(B=3, n_embd=16, n_head=2, d_ff=32, quantum=8, schedule="fanin", r=0.5,
                             vocab_size=d["config"]["vocab_size"], block_size=16))
    assert d["params_ratio"] == pytest.approx(budget_ratio(fanin), abs=0.1)  # the fan-in schedule's budget
    assert gfa(["taper", "--from-run", str(finished_run), "--quantum", "8", "--match", "params=0.9"]) == 0
    assert "'measured'" in capsys.readouterr().out


def test_cli_from_run_errors_are_one_line(finished_run, tmp_path, capsys):
    import shutil
    no_grads = tmp_path / "no-grads"
    shutil.copytree(finished_run, no_grads)
    (no_grads / "gradients.csv").unlink()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "DONE").unlink()
    for args, msg in ((["--from-run", str(tmp_path / "nope")], "no such directory"),
                      (["--from-run", str(tmp_path)], "not a finished gfa run"),
                      (["--from-run", str(unfinished)], "not a finished gfa run"),
                      (["--from-run", str(no_grads)], "no gradients.csv"),
                      (["--from-run", str(finished_run), "--schedule", "linear"], "conflict"),
                      (["--from-run", str(finished_run), "--blocks", "4"], "conflict"),
                      (["--blocks", "4", "--schedule", "measured"], "--from-run")):
        assert gfa(["taper", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gfa: error: ") and msg in err[0], (args, err)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(r=0.0), "strength"), (dict(n_head=3), "does not divide"), (dict(B=0), "positive"),
    (dict(schedule="zigzag"), "unknown schedule")])
def test_bad_configs(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        TaperConfig(**kwargs)


def test_cli_table_json_and_errors():
    run = lambda *a: subprocess.run([sys.executable, "-m", "gfa_theory.cli", "taper", *a],  # noqa: E731
                                    capture_output=True, text=True)
    out = run("--blocks", "6", "--schedule", "step", "--format", "json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert len(d["blocks"]) == 6 and d["params_ratio"] < 1
    table = run("--blocks", "6", "--schedule", "fanin")
    assert table.returncode == 0 and "fan-in" in table.stdout
    bad = run("--blocks", "6", "--match", "latency=0.5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "budget" in bad.stderr
    bad = run("--blocks", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_unreachable_budget_says_why_and_what_to_change(capsys):
    """At a GPT-2 vocabulary and width 128 the embedding and head dominate the FLOPs: no fan-in
    taper with floor r=0.5 reaches 0.85, and the error gives the strongest taper's budget; that
    budget itself is reachable, and so is 0.85 at sizes where the blocks dominate."""
    args = ["taper", "--blocks", "8", "--schedule", "fanin", "--vocab", "50257", "--context", "1024"]
    assert gfa([*args, "--match", "flops=0.85"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedding and head" in err[0] and "lower --r" in err[0], err
    reached = float(err[0].split("ask for at least ")[1].split(",")[0])
    assert 0.85 < reached < 1
    assert gfa([*args, "--match", f"flops={reached}", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["flops_ratio"] <= reached + 1e-9
    wide = ["--n-embd", "768", "--heads", "12", "--d-ff", "3072"]
    assert gfa([*args[:2], "12", *args[3:], *wide, "--match", "flops=0.85", "--format", "json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["flops_ratio"] - 0.85) < 0.01


def test_readme_conflict_example_is_the_error_it_describes(capsys):
    """The README's example of contradicting options: --match solves alpha, so --alpha conflicts."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = "gfa taper --blocks 8 --schedule fanin --alpha 0.5 --match flops=0.85"
    assert f"`{example}`" in readme
    assert gfa(example.split()[1:]) == 2
    err = capsys.readouterr().err
    assert "--match and --alpha conflict: --match solves alpha" in err and len(err.strip().splitlines()) == 1, err
