"""`python -m figures --profile smoke` writes every output, each non-empty and stamped; the
outputs and the claims are static lists; the plotting module only draws."""
import ast
import inspect
import json
import subprocess
import sys

import pandas as pd
import pytest

import figures.plots
from figures import build, efficiency, gfa
from experiments.verdicts import CLAIMS, judge_all
from figures.outputs import OUTPUTS
from gfa_theory.errors import ConfigError


def test_reproduce_smoke_writes_every_stamped_output(smoke_root, tmp_path):
    out = tmp_path / "figs"
    cmd = [sys.executable, "-m", "figures", "--profile", "smoke", "--results",
           str(smoke_root), "--out", str(out), "--jobs", "1", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for key, o in OUTPUTS.items():
        exts = ("png", "pdf") if o.kind == "figure" else ("csv", "md", "tex")
        for ext in exts:
            f = out / f"{key}.{ext}"
            assert f.is_file() and f.stat().st_size > 0, f
            stamp = json.loads((out / f"{key}.{ext}.stamp.json").read_text())
            assert stamp["profile"] == "smoke" and stamp["package_version"] and stamp["output"] == key
            if o.studies:
                assert stamp["seeds"] and stamp["config_hashes"] and stamp["data_sha256"]
            if ext in ("png", "pdf"):  # embedded in the file itself too
                assert b'"profile": "smoke"' in f.read_bytes()
            elif ext == "csv":  # plain: the stamp lives only in the sidecar, pandas reads it as is
                assert not f.read_text().startswith("#")
                assert len(pd.read_csv(f)) > 0
            else:
                assert "profile smoke" in f.read_text() or '"profile": "smoke"' in f.read_text()
    report = (out / "REPORT.md").read_text()
    table = report.split("\n\n")[2].splitlines()  # the first thing after the title and one line: the table
    assert table[0].startswith("|") and len(table) == 2 + 11 + 7  # header, rule, C1-C11, H1-H7
    assert [row.split("|")[1].strip() for row in table[2:]] == [f"C{i}" for i in range(1, 12)] + [
        f"H{i}" for i in range(1, 8)]
    for claim in ("C1", "C2", "C5", "C6", "C7", "H1"):
        assert f"<summary><b>{claim}." in report
    assert "profile smoke" in report and "## Thresholds" in report
    assert "## Where the time goes" in report and "| total" in report
    assert "## Beyond the paper" in report
    assert (out / "F14.png").is_file() and "From prediction to design (exploratory)" in report  # the prediction study
    found = pd.read_csv(out / "claims.csv")  # the findings as numbers
    assert list(found["claim"]) == [r.key for r in judge_all({})] and {"estimate", "ci_low", "margin", "why",
                                                                      "tokens_per_param_max"} <= set(found.columns)
    # warm cache: a second build only redraws (no study reruns), and --only limits the outputs; a study
    # cached by an older table layout (no structured key, no se) is upgraded from its saved tables
    study = smoke_root / "studies" / "smoke" / "fanin_vs_gradients"
    summary, meta = pd.read_csv(study / "summary.csv"), json.loads((study / "meta.json").read_text())
    t5 = (out / "T5.csv").read_bytes()
    summary.drop(columns=["family", "quantity", "se", "df"]).to_csv(study / "summary.csv", index=False)
    (study / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "layout"}))
    res = subprocess.run(cmd + ["--only", "F1,T5"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert pd.read_csv(study / "summary.csv").equals(summary) and (out / "T5.csv").read_bytes() == t5
    assert json.loads((study / "meta.json").read_text())["layout"] == meta["layout"]
    bad = subprocess.run(cmd + ["--only", "F99"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown output" in bad.stderr and "Traceback" not in bad.stderr


def test_outputs_and_claims_are_static_lists():
    assert list(OUTPUTS) == ([f"F{i}" for i in range(1, 9)] + ["F12"] + [f"T{i}" for i in range(1, 7)]
                             + ["F9", "F10", "F11", "B1"])
    assert all(o.kind == ("figure" if k.startswith("F") else "table") and callable(o.build)
               for k, o in OUTPUTS.items())
    assert OUTPUTS["F8"].build is efficiency.f8 and OUTPUTS["F8"].studies == ("cascadeformer",)
    assert OUTPUTS["F12"].build is efficiency.f12 and OUTPUTS["F12"].studies == ("pruning",)
    assert OUTPUTS["T1"].studies == ("cascadeformer",) and OUTPUTS["T5"].build is gfa.t5
    assert [c.key for c in CLAIMS] == [f"C{i}" for i in range(1, 12)]
    assert all("%" not in o.title for o in OUTPUTS.values())  # the title is the LaTeX caption


def test_unknown_output_is_a_user_error():
    assert build.selected("f1, t5") == ["F1", "T5"]
    with pytest.raises(ConfigError, match="unknown output 'F99'"):
        build.selected("F1,F99")


def test_plots_only_draw():
    """The plotting module imports no statistics, theory or study code: it draws finished numbers."""
    tree = ast.parse(inspect.getsource(figures.plots))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= {"__future__", "matplotlib", "numpy", "pandas", "seaborn"}, imported
    for name, fn in inspect.getmembers(figures.plots, inspect.isfunction):
        if name.startswith("plot_"):
            sig = inspect.signature(fn)
            assert "ax" in sig.parameters and sig.parameters["ax"].default is None, name


def test_f5_draws_the_studys_slope_and_no_builder_fits_one():
    """F5's line and legend are C5's depth-controlled slope from the study summary, not a fit of
    the figure's own; the builders import no regression library."""
    units = pd.DataFrame({"family": "transformer", "A_norm": [0.5, 1.0, 1.5, 1.0], "imp_ablation_norm": [0.2, 1.0, 1.8, 1.0]})
    key = {"family": "transformer", "arm": "ablation", "subset": "all"}
    summary = pd.DataFrame([{**key, "quantity": "ols", "estimate": 1.6, "ci_low": 1.0, "ci_high": 2.2},
                            {**key, "quantity": "ols_depth", "estimate": 2.36, "ci_low": 2.23, "ci_high": 2.48},
                            {**key, "quantity": "ols_depth", "subset": "no_first_block", "estimate": 9.0,
                             "ci_low": 8.0, "ci_high": 10.0}])
    points, line, text = gfa.importance_line(units, summary, "transformer")
    assert text == "2.36 [2.23, 2.48]" and len(points) == 4
    assert (line["mean"].iloc[1] - line["mean"].iloc[0]) / (line["x"].iloc[1] - line["x"].iloc[0]) == pytest.approx(2.36)
    assert line["mean"].mean() == pytest.approx(1.0)  # through the blocks' mean point
    for module in (gfa, efficiency):
        assert "statsmodels" not in inspect.getsource(module), module.__name__


def test_every_rules_evidence_is_an_output_that_reads_its_studies():
    """The figure and table ids a claim or hypothesis cites exist, and each reads one of the rule's
    studies (F8 was split: C8 cites F8, the CascadeFormer figure; C9 cites F12, the pruning one)."""
    from experiments.verdicts import RULES

    for rule in RULES:
        for key in (k.strip() for k in rule.evidence.split(",") if k.strip() not in ("", "as C2")):
            assert key in build.ALL, (rule.key, key)  # F14: the prediction study's, drawn where it runs
            assert not build.ALL[key].studies or set(build.ALL[key].studies) & set(rule.studies), (rule.key, key)


def test_arms_and_methods_have_display_names_in_one_place():
    """Every arm, schedule, intervention and method a reader meets has its words in figures.names,
    and no builder keeps a second map."""
    from experiments import mechanism, pruning
    from figures import mechanism as mech_figures
    from figures import names
    from gfa_theory.methods.taper import SCHEDULES

    from experiments import prediction
    from figures import prediction as prediction_figures

    for code in (*mechanism.ARMS, *mechanism.SETTINGS, *prediction.ARMS, prediction.RESNET_ARM):
        assert code in names.ARMS
    assert set(prediction.WINDOWS) <= set(names.WINDOWS)
    assert set(SCHEDULES) <= set(names.SCHEDULES) and set(pruning.METHODS) <= set(names.METHODS)
    assert names.arm("post") == "Post-LN" and names.arm("ln_scaling") == "LayerNorm Scaling"
    for module in (figures.plots, gfa, efficiency, mech_figures, prediction_figures):
        src = inspect.getsource(module)
        assert "_LABELS = {" not in src and '"Post-LN"' not in src, module.__name__


# ---- where the time goes -------------------------------------------------------------------------

def test_stamp_records_runs_trained_and_cached(tmp_path):
    from types import SimpleNamespace

    from experiments.study_io import stamp

    runs = []
    for i, trained in enumerate((True, False, False)):
        d = tmp_path / f"gpt-{i:012d}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"data": {"sha256": "abc"}}))
        runs.append(SimpleNamespace(run_dir=d, config=SimpleNamespace(train=SimpleNamespace(seed=i)), trained=trained))
    ctx = SimpleNamespace(profile="smoke", usage=lambda: {"executor": "dask", "workers": 2})
    meta = stamp(ctx, runs, "synthetic", started=0.0)
    assert (meta["runs_trained"], meta["runs_cached"]) == (1, 2) and meta["wall_seconds"] > 0
    assert (meta["executor"], meta["workers"]) == ("dask", 2)


def test_time_table_and_report_section(tmp_path):
    from figures import report

    metas = {"b_study": {"study": "b_study", "wall_seconds": 12.5, "runs_trained": 2, "runs_cached": 4,
                         "executor": "dask", "workers": 2},
             "a_study": {"study": "a_study", "wall_seconds": 30.0, "runs_trained": 0, "runs_cached": 6,
                         "executor": "local", "workers": None}}
    t = report.time_table(metas)
    assert list(t["study"]) == ["a_study", "b_study", "total"]
    assert list(t["executor x workers"]) == ["local", "dask x 2", ""]
    total = t.iloc[-1]
    assert (total["wall seconds (last run)"], total["runs trained"], total["runs read from cache"]) == ("42.5", "2", "10")
    # a meta written before the run counts were recorded: its counts and the totals' are n/a, seconds still add
    old = report.time_table({**metas, "c_study": {"study": "c_study", "wall_seconds": 7.5}})
    assert tuple(old.iloc[-1][1:4]) == ("50.0", "n/a", "n/a") and tuple(old.iloc[-2][2:]) == ("n/a", "n/a", "n/a")
    assert report.time_table({}).empty
    claims = judge_all({}, rules=CLAIMS[:1])
    st = report.stamps.merge(metas.values(), "smoke", "REPORT")
    text = report.report_text(claims, st, "smoke", tmp_path, metas)
    section = text.split("## Where the time goes", 1)[1]
    assert "| a_study" in section and "| total" in section and "42.5" in section
    assert "## Where the time goes" not in report.report_text(claims, st, "smoke", tmp_path)


def test_equalization_arms_are_named_in_words():
    """F6's legend: the intervention in words, the optimizer's placebo and no-clip variants marked
    (a second helper of the same name once shadowed this one and left code names in the legend)."""
    units = pd.DataFrame({"optimizer": "sgd", "tuned": True, "arm": ["sgd/none", "sgd no-clip/equalize"] * 2,
                          "run_id": ["a", "b", "a", "b"], "order": [1, 1, 2, 2], "imp_ablation": [1.0, 2.0, 3.0, 4.0]})
    labels = [label for label, _ in gfa.equalization_bands(units, "sgd", "imp_ablation")]
    assert labels == ["baseline", "equalized gradients no-clip"]
    placebo = gfa.equalization_bands(units.assign(optimizer="adamw", arm="adamw/equalize"), "adamw", "imp_ablation")
    assert [label for label, _ in placebo] == ["equalized gradients (placebo)"]
