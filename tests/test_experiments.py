"""Each study's smoke profile runs end to end and produces the expected, finite columns."""
import json

import numpy as np
import pytest
import torch

from experiments import STUDIES
from experiments.runner import Context
from experiments.study_io import load_study

EXPECTED = {
    "fanin_vs_gradients": ({"run_id", "seed", "unit", "F", "A", "A_rms", "A_norm", "F_norm", "family",
                            "supervision", "depth_B", "F_linear"}, ["A", "F", "A_norm", "F_norm"]),
    "gradients_vs_importance": ({"imp_ablation", "imp_bi", "imp_angular", "imp_taylor", "imp_magnitude",
                                 "imp_random", "A", "F"}, ["imp_ablation", "imp_bi", "imp_taylor", "A"]),
    "equalization": ({"optimizer", "intervention", "arm", "lr", "tuned", "imp_ablation", "val_loss", "A", "U",
                      "displacement"}, ["imp_ablation", "val_loss", "U", "displacement"]),
    "repetition": ({"variant", "arm", "applications", "imp_ablation", "F", "A"}, ["imp_ablation", "F", "A"]),
    "cascadeformer": ({"run_id", "seed", "schedule", "label", "params", "flops_per_token", "val_loss", "val_ppl"},
                      ["val_loss", "val_ppl", "params"]),
    "pruning": ({"run_id", "seed", "model", "family", "method", "k", "stage", "loss", "perplexity", "accuracy"},
                ["loss", "perplexity", "accuracy"]),
    "mechanism": ({"run_id", "arm", "A", "F", "jacobian_gain", "stream_rms", "pred_counts", "pred_product",
                   "pred_final_aligned"}, ["A", "F", "jacobian_gain", "stream_rms", "pred_counts", "pred_product"]),
}
SUMMARY_COLUMNS = {"test", "family", "quantity", "arm", "against", "estimate", "se", "df", "ci_low", "ci_high", "p", "r2",
                   "n", "n_groups", "method"}
# studies whose summary has its own layout (one row per schedule / per model and method), and the
# tables each study writes besides its summary
OWN_SUMMARY = {
    "cascadeformer": {"label", "schedule", "val_ppl", "ppl_gap_pct", "latency_ratio", "throughput_ratio",
                      "loss_gap_ci_high"},
    "pruning": {"model", "method", "metric", "pruned", "healed", "pruned_acc", "healed_acc", "tau_seeds",
                "tau_calibration", "tau_checkpoints", "fwd", "bwd", "seconds"},
    "mechanism": {"arm", "depth_B", "account", "gains", "mean", "ci_low", "ci_high", "n", "best"},
}
MAIN_TABLE = {"cascadeformer": "runs", "pruning": "results"}


@pytest.mark.parametrize("name", STUDIES)
def test_study_smoke(name, smoke_root):
    import importlib
    mod = importlib.import_module(f"experiments.{name}")
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    df = mod.run(ctx=ctx)
    cols, finite = EXPECTED[name]
    assert cols <= set(df.columns), cols - set(df.columns)
    assert len(df) > 0
    for c in finite:
        assert np.isfinite(df[c].to_numpy(float)).all(), c
    summary = df.attrs["summary"]
    assert OWN_SUMMARY.get(name, SUMMARY_COLUMNS) <= set(summary.columns) and len(summary) > 0
    # written atomically with its stamp, and readable back
    tables = load_study(ctx, name)
    assert tables is not None and {MAIN_TABLE.get(name, "units"), "summary"} <= set(tables)
    meta = json.loads((ctx.study_dir(name) / "meta.json").read_text())
    assert meta["profile"] == "smoke" and meta["seeds"] and meta["data_sha256"] and meta["package_version"]
    # the study's takeaway: predicted, measured, verdict, for every rule that reads it
    from experiments.verdicts import for_study
    from experiments.verdicts.render import study_takeaways
    rules = for_study(name)
    lines = study_takeaways(name, {s: load_study(ctx, s) for r in rules for s in r.studies}, "smoke").splitlines()
    assert [ln.split(" ", 2)[1] for ln in lines if ln] == ["predicted:", "measured:", "verdict:"] * len(rules)
    assert rules, name  # every study is judged by some claim or hypothesis


def test_fan_in_column_matches_symbolic(smoke_root):
    from experiments import fanin_vs_gradients
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    units = fanin_vs_gradients.run(ctx=ctx)
    single = units[(units.family == "transformer") & (units.supervision == "final")]
    for _, d in single.groupby("run_id"):
        B = len(d)
        # block b of a B-block, 2-branch stack: F = (2B-2b+2) + (2B-2b+1)
        assert d.sort_values("order")["F"].tolist() == [4 * (B - b) + 3 for b in range(1, B + 1)]
    deep = units[(units.family == "transformer") & (units.supervision == "all")]
    assert (deep.groupby("run_id")["F"].max() > deep.groupby("run_id")["F_linear"].max()).all()


def test_unknown_study_and_profile_are_clear_errors(smoke_root):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "experiments", "nope", "--profile", "smoke"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'nope'" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "experiments", "repetition", "--profile", "huge"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_run_many_trains_once_then_reads_back(tmp_path):
    from experiments.plans import gpt_run, plan
    from experiments.runner import run_many

    ctx = Context("smoke", tmp_path, jobs=1, progress=False)
    cfg = gpt_run(plan("smoke"), n_blocks=2, seed=0)
    threads = torch.get_num_threads()
    first = run_many([cfg, cfg], ctx)
    assert [r.trained for r in first] == [True, True] and first[0].run_dir == first[1].run_dir
    assert torch.get_num_threads() == threads  # training in this process leaves its thread count alone
    again = run_many([cfg], ctx)
    assert not again[0].trained and again[0].gradients.equals(first[0].gradients)


def test_run_many_refuses_a_run_trained_with_other_settings(tmp_path):
    # a run of the same config trained elsewhere on 2 threads: its numbers differ from a study run's
    # (one thread), so the study must not silently reuse it
    from experiments.plans import gpt_run, plan
    from experiments.runner import run_many
    from gfa_theory.errors import RunStoreError
    from gfa_theory.train.lifecycle import train

    cfg = gpt_run(plan("smoke"), n_blocks=2, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RunStoreError, match="num_threads=2"):
        run_many([cfg], Context("smoke", tmp_path, jobs=1, progress=False))


def _threads_and(x: int) -> tuple[int, int]:
    return torch.get_num_threads(), x


def test_map_in_workers_keeps_order_on_one_thread():
    from experiments.runner import map_in_workers

    threads = torch.get_num_threads()
    ctx = Context("smoke", jobs=1, progress=False)
    assert map_in_workers(_threads_and, [(3,), (1,), (2,)], ctx, "test") == [(1, 3), (1, 1), (1, 2)]
    assert torch.get_num_threads() == threads


def test_cli_prints_the_takeaway_before_the_table(monkeypatch, capsys, tmp_path):
    """``python -m experiments NAME`` prints each rule's three-line takeaway, then the key table."""
    import pandas as pd

    from experiments import __main__ as cli

    class Study:
        @staticmethod
        def run(ctx):
            df = pd.DataFrame({"x": [1]})
            df.attrs["summary"] = pd.DataFrame({"test": ["a row"], "estimate": [1.0]})
            return df
    monkeypatch.setattr(cli, "study_module", lambda name: Study)
    monkeypatch.setattr(cli, "load_study", lambda ctx, name: {"summary": None})
    monkeypatch.setattr(cli, "study_takeaways", lambda name, tables, profile: "C2 predicted: p\nC2 measured: m\n"
                        "C2 verdict: v")
    assert cli.main(["fanin_vs_gradients", "--profile", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["C2 predicted: p", "C2 measured: m", "C2 verdict: v"] and out[3] == ""
    assert "a row" in "\n".join(out[4:6])
