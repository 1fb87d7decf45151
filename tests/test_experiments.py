"""Each study's smoke profile runs end to end and produces the expected, finite columns."""
import json

import numpy as np
import pytest

from experiments import STUDIES
from experiments.runner import Context
from experiments.study_io import load_study

EXPECTED = {
    "fanin_vs_gradients": ({"run_id", "seed", "unit", "F", "A", "A_rms", "A_norm", "F_norm", "family",
                            "supervision", "depth_B", "F_linear"}, ["A", "F", "A_norm", "F_norm"]),
    "gradients_vs_importance": ({"imp_ablation", "imp_bi", "imp_angular", "imp_taylor", "imp_magnitude",
                                 "imp_random", "A", "F"}, ["imp_ablation", "imp_bi", "imp_taylor", "A"]),
    "equalization": ({"optimizer", "intervention", "imp_ablation", "val_loss", "A"}, ["imp_ablation", "val_loss"]),
    "repetition": ({"variant", "applications", "imp_ablation", "F", "A"}, ["imp_ablation", "F", "A"]),
    "cascadeformer": ({"run_id", "seed", "schedule", "label", "params", "flops_per_token", "val_loss", "val_ppl"},
                      ["val_loss", "val_ppl", "params"]),
    "pruning": ({"run_id", "seed", "model", "family", "method", "k", "stage", "loss", "perplexity", "accuracy"},
                ["loss", "perplexity", "accuracy"]),
}
SUMMARY_COLUMNS = {"test", "estimate", "ci_low", "ci_high", "p", "r2", "n", "n_groups", "method"}
# studies whose summary has its own layout (one row per schedule / per model and method), and the
# tables each study writes besides its summary
OWN_SUMMARY = {
    "cascadeformer": {"label", "schedule", "val_ppl", "ppl_gap_pct", "latency_ratio", "throughput_ratio",
                      "matches_paper"},
    "pruning": {"model", "method", "metric", "pruned", "healed", "pruned_acc", "healed_acc", "tau_seeds",
                "tau_calibration", "tau_checkpoints", "fwd", "bwd", "seconds"},
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
