"""CascadeFormer schedules: sizes, rounding, budgets, and the model they configure."""
import json
import subprocess
import sys

import pytest
import torch

from gfa_theory.errors import ConfigError
from gfa_theory.methods.taper import (
    SCHEDULES,
    TaperConfig,
    count_params,
    match,
    plan,
    uniform_plan,
)
from gfa_theory.models import GPT, GPTConfig


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_sizes_are_rounded_and_monotone(schedule):
    cfg = TaperConfig(B=8, schedule=schedule, r=0.4, quantum=32)
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
