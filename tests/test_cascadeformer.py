"""CascadeFormer: the study's smoke profile, the timing summary, `gfa bench taper`, T1, F8 panels, C8."""
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from experiments import cascadeformer as cf
from experiments.plans import plan
from experiments.runner import Context
from experiments.study_io import load_study
from gfa_theory.cli import main as gfa
from gfa_theory.methods.taper_timing import timing_summary

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def study(smoke_root):
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    runs = cf.run(ctx=ctx)
    return ctx, runs


def test_smoke_study_columns_values_and_files(study):
    ctx, runs = study
    p = plan("smoke")
    c = p.cascade
    arms = cf.schedules("smoke")
    assert arms[:3] == ["uniform", "narrow", cf.PRIMARY] and c.primary.schedule == cf.PRIMARY
    assert {"run_id", "seed", "schedule", "label", "role", "arm", "params", "params_analytic", "flops_per_token",
            "val_loss", "val_ppl", "steps", "tokens", "tokens_per_param", "n_head", "d_ff"} <= set(runs.columns)
    main = runs[runs.arm == "main"]
    assert len(main) == len(arms) * len(p.seeds)
    assert len(runs[runs.arm == "sweep"]) == 3 * len(c.sweep_seeds)  # uniform, narrow, primary trained longer
    assert set(runs[runs.arm == "sweep"]["steps"]) == {c.sweep_factor * c.steps}
    for col in ("val_loss", "val_ppl", "params", "flops_per_token"):
        assert np.isfinite(runs[col].to_numpy(float)).all(), col
    np.testing.assert_allclose(runs["val_ppl"], np.exp(runs["val_loss"]))
    # the analytic parameter count is the built model's, and every main arm has the same budget
    assert (runs["params"] == runs["params_analytic"]).all()
    assert main[["steps", "batch_size", "tokens", "optimizer", "lr"]].drop_duplicates().shape[0] == 1
    assert runs.groupby("label")["params"].first()["uniform"] == runs["params"].max()
    # one budget: every arm but the full uniform within a few % of the primary's parameters
    target = cf.budget_target(p)
    ratio = main.groupby("schedule")["params"].mean() / main[main.schedule == "uniform"]["params"].iloc[0]
    assert (abs(ratio.drop("uniform") - target) < 0.1).all(), ratio
    measured = main[main.schedule == "measured"]
    uniform_ids = set(main[main.schedule == "uniform"]["run_id"])
    assert len(measured) == len(p.seeds) and set(measured["source_run"]) <= uniform_ids  # its gradients' source

    summary = runs.attrs["summary"]
    assert summary[summary.arm == "main"]["label"].tolist() == arms
    assert summary["arm"].tolist() == sorted(summary["arm"].tolist())  # main first, then the sweep
    for col in ("ppl_gap_pct", "ppl_gap_pct_ci_high", "loss_gap_narrow", "latency_ratio", "throughput_ratio",
                "train_latency_ratio", "train_throughput_ratio_q75", "aa_throughput_ratio_q25", "flops_ratio",
                "tokens_per_param", "val_ppl_ci_low"):
        assert np.isfinite(summary.loc[summary.arm == "main", col].to_numpy(float)).all(), col
    sweep = summary[summary.arm == "sweep"]
    assert np.isfinite(sweep["loss_gap"]).all() and (sweep["n_seeds"] == len(c.sweep_seeds)).all()
    if len(c.sweep_seeds) == 1:  # one seed: an estimate, no interval
        assert sweep.loc[sweep.role != "reference", "loss_gap_ci_low"].isna().all()
    uni = summary[(summary.label == "uniform") & (summary.arm == "main")].iloc[0]
    assert uni.latency_ratio == 1 and uni.throughput_ratio == 1 and uni.loss_gap == 0 and uni.role == "reference"
    nar = summary[(summary.label == "narrow") & (summary.arm == "main")].iloc[0]
    assert nar.loss_gap_narrow == 0 and nar.role == "control"
    assert (summary.loc[summary.schedule != "uniform", "params_ratio"] < 1).all()
    assert set(summary[summary.arm == "main"]["role"]) == {"reference", "control", "primary", "exploratory"}
    assert not {"comparable", "speedup", "matches_paper"} & set(summary.columns)  # verdicts live in claims

    tables = load_study(ctx, cf.NAME)
    assert {"runs", "summary", "timing", "timing_summary", "schedules"} <= set(tables)
    timing = tables["timing"]
    assert set(timing["mode"]) == {"latency", "throughput", "train_latency", "train_throughput"}
    assert (timing["threads"] == 1).all()
    assert timing.groupby(["model", "mode"]).size().eq(c.timing.repeats).all()
    widths = tables["schedules"]
    assert (widths.groupby(["label", "seed"], dropna=False).size() == c.depth).all()
    assert (widths["d_ff"] % c.quantum == 0).all()
    assert cf.AA_CONTROL in set(tables["timing_summary"]["model"])  # timed, but not an arm
    assert cf.AA_CONTROL not in set(summary["label"])
    meta = json.loads((ctx.study_dir(cf.NAME) / "meta.json").read_text())
    assert meta["timing"]["threads"] == 1 and meta["seeds"] == list(p.seeds) and meta["data_sha256"]
    assert meta["primary"] == cf.PRIMARY and meta["budget"] == "params"
    assert meta["aa_control"]["latency_ratio"] > 0 and meta["aa_control"]["train_throughput_ratio"] > 0


def test_the_primary_is_declared_and_fan_in_derived():
    # declared in code, not chosen from results: every profile's plan names the same primary
    for profile in ("smoke", "default", "full"):
        c = plan(profile).cascade
        assert c.primary.schedule == cf.PRIMARY == "fanin" and cf.MEASURED in c.exploratory
        assert "inverse" in c.exploratory and c.budget in ("params", "flops")


def test_timing_summary_pairs_repeats_against_the_baseline():
    # repeat r: uniform takes 2 s, the tapered model 1 s (latency) / 4 s (throughput)
    rows = []
    for r, drift in enumerate((1.0, 3.0, 1.5)):  # machine drift hits both models of a repeat alike
        rows += [{"model": "uniform", "mode": m, "repeat": r, "seconds": 2 * drift, "tokens_per_s": 8 / (2 * drift),
                  "threads": 1} for m in ("latency", "throughput")]
        rows += [{"model": "tapered", "mode": "latency", "repeat": r, "seconds": 1 * drift,
                  "tokens_per_s": 8 / drift, "threads": 1},
                 {"model": "tapered", "mode": "throughput", "repeat": r, "seconds": 4 * drift,
                  "tokens_per_s": 8 / (4 * drift), "threads": 1}]
    s = timing_summary(pd.DataFrame(rows)).set_index("model")
    assert s.loc["tapered", "latency_ratio"] == pytest.approx(0.5)
    assert s.loc["tapered", "latency_ratio_q25"] == s.loc["tapered", "latency_ratio_q75"] == pytest.approx(0.5)
    assert s.loc["tapered", "throughput_ratio"] == pytest.approx(0.5)
    assert s.loc["uniform", "latency_ratio"] == 1.0
    assert s.loc["uniform", "latency_ms"] == pytest.approx(3000.0)  # median of 2, 6, 3 s


def test_bench_taper_json_and_text(capsys):
    small = ["--repeats", "2", "--warmup", "1", "--batch", "2", "--context", "8", "--blocks", "3"]
    assert gfa(["bench", "taper", "--format", "json", *small]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["latency_ratio"] > 0 and result["throughput_ratio"] > 0
    assert result["repeats"] == 2 and result["threads"] == 1 and result["blocks"] == 3
    assert result["params_tapered"] < result["params_uniform"] and 0 < result["flops_ratio"] < 1
    assert len(result["n_head"].split(",")) == 3
    assert gfa(["bench", "taper", *small, "--schedule", "fanin"]) == 0
    out = capsys.readouterr().out
    assert "latency_ratio: " in out and "throughput_ratio: " in out and "schedule: fanin" in out


@pytest.mark.parametrize("args,message", [(["--r", "1.5"], "taper strength"),
                                          (["--warmup", "-1"], "warmup")], ids=["bad-r", "bad-warmup"])
def test_bench_taper_user_errors_are_one_line(capsys, args, message):
    assert gfa(["bench", "taper", "--repeats", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gfa: error: ") and message in err[0]


def test_t1_and_f8_panels(study):
    from experiments.verdicts import BY_KEY, judge
    from experiments.verdicts import cascadeformer as c8r
    from experiments.verdicts.toolkit import MISSING
    from figures import names
    from figures import efficiency as ef

    ctx, _ = study
    tables = {cf.NAME: load_study(ctx, cf.NAME)}
    t1 = ef.t1(tables)
    arms = cf.schedules("smoke")
    assert t1["arm"].tolist()[:len(arms)] == [names.schedule(a) for a in arms]  # in words: "fan-in taper"
    assert t1["arm"].iloc[-1] == "A/A control (uniform copy)"
    assert {"params", "params vs uniform", "FLOPs vs uniform", "tokens/param", "perplexity [CI95]",
            "loss gap vs uniform [paired CI95]", "loss gap vs narrow [paired CI95]", "latency ratio [IQR]",
            "throughput ratio [IQR]", "train-step latency ratio [IQR]", "train throughput ratio [IQR]",
            "better than narrow p", "C8 reads"} <= set(t1.columns)
    assert t1.iloc[0]["C8 reads"] == "reference" and t1.iloc[0]["latency ratio [IQR]"] == "reference"
    assert "token sweep" in set(t1["C8 reads"].str.split(" \\(").str[0])
    assert "%" not in t1.to_csv()  # a bare % would comment out the rest of a LaTeX row
    for panel in (ef.cascade_tradeoff_panel, ef.cascade_speed_panel):
        ax = panel(tables)
        assert ax.has_data()
        assert not panel({}).axison  # a missing study draws a note, not an error
    fig = ef.f8(tables)
    labels = [t.get_text() for ax in fig.axes for t in (ax.get_legend().get_texts() if ax.get_legend() else [])]
    assert names.schedule("fanin") + " (primary)" in labels and not any("fanin" in t for t in labels)
    assert not [t for ax in fig.axes for t in ax.texts]  # no free-floating labels to collide
    found = judge(BY_KEY["C8"], tables)
    direct = c8r.c8(tables[cf.NAME]["summary"])
    assert (found.verdict, repr(found.primary), found.why) == (direct.verdict, repr(direct.primary), direct.why)
    assert found.primary.label.startswith("fanin") and found.regime.tokens_per_param_min > 0
    # T1 prints C8's own tests, read from the finding (the main comparison's primary row)
    from gfa_theory.instrument.stats import format_p
    p = direct.arms["p_comparable"][direct.arms["label"] == "fanin"].iloc[0]
    assert t1.loc[t1["arm"] == names.schedule("fanin"), "non-inferior vs uniform p"].iloc[0] == format_p(p)
    assert judge(BY_KEY["C9"], tables).verdict == MISSING  # the pruning study is not in these tables


def test_t1_f8_and_c8_are_listed():
    from figures import efficiency as ef
    from experiments.verdicts import CLAIMS
    from figures.outputs import OUTPUTS

    assert OUTPUTS["T1"].studies == (cf.NAME,) and OUTPUTS["T1"].build is ef.t1
    assert OUTPUTS["F8"].studies == (cf.NAME,) and OUTPUTS["F8"].build is ef.f8
    assert [c.key for c in CLAIMS].count("C8") == 1
    assert next(c for c in CLAIMS if c.key == "C8").studies == (cf.NAME,)
