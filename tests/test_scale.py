"""The scale study: its smoke variant end to end, the trend rule and the regime statement on
synthetic tables (every outcome), the lr-tuning rule, and its separation from the default profile."""
import dataclasses
import math

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from experiments import scale as sc
from experiments.plans import gpt_run, plan
from experiments.runner import Context
from experiments.study_io import load_study
from experiments.tuning import lowest_loss_lr
from experiments.verdicts import render
from experiments.verdicts import scale as vs
from experiments.verdicts.toolkit import FAILS, HOLDS, INCONCLUSIVE, MIXED, THRESHOLDS, Finding
from gfa_theory.errors import ConfigError


# ---- the smoke variant, end to end ------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_tables(tmp_path_factory):
    ctx = Context("smoke", tmp_path_factory.mktemp("scale"), jobs=1, progress=False)
    df = sc.run(ctx=ctx)
    tables = load_study(ctx, sc.NAME)
    return ctx, df, tables, vs.along_scale(tables)


def test_smoke_study_end_to_end(smoke_tables):
    ctx, df, tables, found = smoke_tables
    sp = sc.scale_plan("smoke")
    pts = sc.points(sp)
    assert {"c8", "fanin", "importance", "seed_stats", "point_means", "tuning", "summary", "runs"} <= set(tables)
    assert set(df["point"]) == {p.key for p in pts} and (df["epochs"] <= sc.MAX_EPOCHS).all()
    # every point: the C8 arms (inverse only on the short half), every seed, stdlib corpus
    for pt in pts:
        d = df[df["point"] == pt.key]
        assert set(d["schedule"]) == set(sc.arms(sp, pt)) and set(d["seed"]) == set(sp.seeds)
    assert "inverse" in set(df["schedule"]) and "inverse" not in set(df.loc[df["target_tokens_per_param"] >
                                                                            sp.inverse_up_to, "schedule"])
    # each arm trains at its tuned lr (the rule's choice at the nearest tuning point)
    tuned = tables["tuning"][tables["tuning"]["tuned"]]
    assert len(tuned) == len(tuned[["tune_width", "tune_point", "arm"]].drop_duplicates())
    assert {"at_sweep_edge"} <= set(tables["tuning"].columns)
    summary = tables["summary"]
    assert set(summary["quantity"]) == set(sc.STATISTICS) and set(summary["predictor"]) == set(sc.AXES.values())
    assert [f.key for f in found] == list(vs.CLAIMS)
    for f in found:
        assert set(f.regimes) == {"tokens", "size"} and all(isinstance(t.outcome, vs.Trend) for t in f.trends)
        assert len(f.points["tokens"]) == len(sp.tokens_per_param) and len(f.points["size"]) == len(sp.widths)
    section = "\n".join(render.along_scale_section(found, "smoke"))
    assert section.startswith("## Along scale") and "C8" in section and "not measured" not in section.lower()
    from figures.scale import f13
    assert isinstance(f13({sc.NAME: tables}), matplotlib.figure.Figure)


def test_per_point_verdicts_are_the_claim_rules_unchanged(smoke_tables):
    _, _, tables, found = smoke_tables
    from experiments.verdicts import cascadeformer, fanin
    key = sc.points(sc.scale_plan("smoke"))[0].key
    by = {f.key: f for f in found}
    c8 = tables["c8"][tables["c8"]["point"] == key].reset_index(drop=True)
    first = by["C8"].points["tokens"][0]
    assert first.point == key and first.finding == cascadeformer.c8(c8)
    c2 = by["C2"].points["tokens"][0].finding
    assert c2 == fanin.c2(tables["fanin"][tables["fanin"]["point"] == key].reset_index(drop=True))
    from experiments.verdicts import pruning as vp
    c9 = by["C9"].points["tokens"][0].finding
    again = vp.c9_vs_depth_order(tables["depth_order"][tables["depth_order"]["point"] == key].reset_index(drop=True))
    assert (c9.verdict, c9.why, c9.primary.estimate) == (again.verdict, again.why, again.primary.estimate)


def test_c9_cases_compare_cascadeflow_with_last_k_on_every_uniform_run(smoke_tables):
    """C9 along scale: per uniform run and k = 1..B/2, the two pruned models' held-out losses; the
    difference is exactly 0 where both remove the same blocks (the same pruned model)."""
    _, _, tables, _ = smoke_tables
    cases, sp = tables["c9_cases"], sc.scale_plan("smoke")
    assert set(cases["k"]) == set(range(1, sp.depth // 2 + 1)) and set(cases["stage"]) == {"pruned"}
    n_uniform = len(sc.points(sp)) * len(sp.seeds)
    assert len(cases) == n_uniform * (sp.depth // 2)
    same = ~cases["differs"].astype(bool)
    assert (cases.loc[same, "loss_diff"] == 0).all()
    for _, d in cases.groupby("run_id"):  # each method removes k distinct blocks, nested in k
        for col in ("removed_last", "removed_cascadeflow"):
            sets = [r.split(";") for r in d.sort_values("k")[col]]
            assert [len(set(r)) for r in sets] == list(range(1, len(sets) + 1))
            assert all(a == b[:len(a)] for a, b in zip(sets, sets[1:]))
    stats_ = tables["seed_stats"]
    c9 = stats_[stats_["statistic"] == "c9_gap_last_mean"]
    assert len(c9) == n_uniform and np.isfinite(c9["value"]).all()


# ---- the trend rule on synthetic rows: every outcome ---------------------------------------------

def _row(slopes):
    """A summary row as the study writes it, from per-seed slopes."""
    return sc.trend_row(pd.DataFrame([{"seed": s, "point": f"p{x}", "x": x, "value": b * x}
                                      for s, b in enumerate(slopes) for x in (0.0, 1.0)]), "x", "c2_rho", "tokens")


@pytest.mark.parametrize("slopes, sign, expected", [
    ((0.50, 0.52, 0.48, 0.51), 1.0, vs.Trend.STRENGTHENS),
    ((0.50, 0.52, 0.48, 0.51), -1.0, vs.Trend.FADES),
    ((-0.50, -0.52, -0.48, -0.51), 1.0, vs.Trend.FADES),
    ((0.01, -0.01, 0.005, -0.004), 1.0, vs.Trend.STEADY),
    ((0.9, -0.8, 0.5, -0.7), 1.0, vs.Trend.INCONCLUSIVE),
    ((0.3,), 1.0, vs.Trend.INCONCLUSIVE),  # one seed: no interval
], ids=["strengthens", "fades-sign", "fades", "steady", "wide", "one-seed"])
def test_trend_rule_reaches_every_outcome(slopes, sign, expected):
    row = _row(slopes)
    assert math.isclose(row["estimate"], float(np.mean(slopes)), abs_tol=1e-12)
    assert row["n"] == len(slopes) and row["df"] == len(slopes) - 1
    assert vs.trend(row, sign, THRESHOLDS.trend_margin_rho) is expected


def test_trend_findings_read_the_summary_by_key_with_holm():
    rows = []
    for stat, slopes in (("c2_rho", (0.5, 0.52, 0.48)), ("c2_exponent", (0.01, -0.01, 0.0)),
                         ("c2_exponent_no_first", (-0.4, -0.42, -0.39))):
        for axis in ("tokens", "size"):
            r = sc.trend_row(pd.DataFrame([{"seed": s, "point": f"p{x}", "x": x, "value": b * x}
                                           for s, b in enumerate(slopes) for x in (0.0, 1.0)]), "x", stat, axis)
            rows.append(r)
    from experiments.summary import table
    found = {(t.statistic, t.axis): t.outcome for t in vs.trend_findings(table(rows), "C2")}
    assert found[("c2_rho", "tokens")] is vs.Trend.STRENGTHENS
    assert found[("c2_exponent", "size")] is vs.Trend.STEADY
    assert found[("c2_exponent_no_first", "tokens")] is vs.Trend.FADES


# ---- the regime statement --------------------------------------------------------------------------

def _pts(*verdicts, xs=(1.0, 3.0, 10.0, 20.0)):
    return tuple(vs.PointVerdict(f"p{x:g}", x, Finding(v)) for x, v in zip(xs, verdicts))


@pytest.mark.parametrize("verdicts, kind, text", [
    ((HOLDS, HOLDS, HOLDS, HOLDS), "throughout", "holds at every point (1 tokens/param to 20 tokens/param)"),
    ((HOLDS, HOLDS, FAILS, FAILS), "boundary",
     "holds up to 3 tokens/param; does not hold at this scale from 10 tokens/param on"),
    ((HOLDS, MIXED, HOLDS, INCONCLUSIVE), "varies", "no single boundary: holds at 1 tokens/param"),
], ids=["throughout", "boundary", "varies"])
def test_regime_statement(verdicts, kind, text):
    r = vs.regime_of("tokens", _pts(*verdicts))
    assert r.kind == kind
    assert render.regime_statement(r).startswith(text)


def test_regime_of_no_points_and_section_when_not_run():
    assert vs.regime_of("size", ()).kind == "empty"
    assert vs.along_scale(None) is None
    assert "Not measured for this profile (`default`)" in "\n".join(render.along_scale_section(None, "default"))


# ---- tuning, the epoch guard and the default profile ------------------------------------------------

def test_tuning_rule_ties_to_smaller_and_diverged_is_inf():
    t = pd.DataFrame({"arm": ["a", "a", "a", "b", "b"], "lr": [3e-3, 1e-3, 1e-2, 1e-3, 3e-3],
                      "final_val_loss": [1.0, 1.0, 2.0, float("inf"), 1.5]})
    tuned, table = lowest_loss_lr(t)
    assert tuned == {"a": 1e-3, "b": 3e-3} and table["tuned"].sum() == 2


def test_lr_for_uses_the_nearest_tuning_point_in_log_width_then_log_tokens():
    sp = sc.scale_plan("scale")
    tuned = {(32, 1.0, "uniform"): 1e-3, (32, 10.0, "uniform"): 3e-3, (32, 1.0, "inverse"): 1e-2,
             (96, 1.0, "uniform"): 3e-4}
    assert sc.lr_for(sp, tuned, sc.Point(32, 3.0), "uniform") == 1e-3  # log 3 is nearer log 1 than log 10
    assert sc.lr_for(sp, tuned, sc.Point(32, 20.0), "uniform") == 3e-3
    assert sc.lr_for(sp, tuned, sc.Point(32, 20.0), "inverse") == 1e-2  # the nearest point that has the arm
    assert sc.lr_for(sp, tuned, sc.Point(96, 1.0), "uniform") == 3e-4  # its own width's rate
    assert sc.lr_for(sp, tuned, sc.Point(64, 1.0), "uniform") == 3e-4  # log 64/96 is nearer than log 64/32
    with pytest.raises(ConfigError, match="tuned at no tuning point"):
        sc.lr_for(sp, tuned, sc.Point(32, 1.0), "narrow")


def test_every_width_of_the_size_ladder_is_tuned():
    sp = sc.scale_plan("scale")
    pts = sc.tuning_points(sp)
    assert {p.width for p in pts} == set(sp.widths) | {sp.base_width}
    assert {p.tokens_per_param for p in pts if p.width == sp.base_width} == set(sp.tune_at)


def test_a_point_beyond_about_one_epoch_is_refused():
    sp = dataclasses.replace(sc.scale_plan("smoke"), tokens_per_param=(2000.0,), tune_at=(2000.0,))
    with pytest.raises(ConfigError, match="epochs of the corpus"):
        sc.arm_run(sp, sc.Point(sp.base_width, 2000.0), "uniform", 0, 1e-3)


def test_scale_is_its_own_study_not_part_of_the_default_profile():
    from figures import build
    with pytest.raises(ConfigError, match="scale and prediction studies"):
        plan("scale")
    with pytest.raises(ConfigError, match="not part of the default profile"):
        sc.scale_plan("default")
    assert gpt_run(plan("default"), n_blocks=8, seed=0).data.corpus is None  # default configs unchanged
    assert "F13" not in build.selected(None, "default") and "F13" not in build.selected(None, "smoke")
    assert build.selected(None, "scale") == ["F13", "F14"] and "F13" in build.selected(None, "full")
    sp = sc.scale_plan("scale")
    assert sp.tokens_per_param == (1.0, 3.0, 10.0, 20.0) and sp.base_width == 32 and sp.depth == 8
    assert sp.widths == (32, 64, 96) and sp.size_tokens_per_param == 1.0 and len(sp.seeds) == 3
    assert min(sp.tune_at) == min(sp.tokens_per_param) and max(sp.tune_at) >= 10 and len(sp.lrs) >= 3
    params = [sc.uniform_params(sp, sc.Point(w, sp.size_tokens_per_param)) for w in sp.widths]
    assert max(params) / min(params) >= 8


def test_report_of_the_scale_only_profile(smoke_tables, tmp_path):
    """`python -m figures --profile scale` judges every other claim "not measured" and renders the
    scale findings (here the smoke study's) in "Along scale"."""
    from experiments.verdicts import judge_all
    from figures import report, stamp
    _, _, _, found = smoke_tables
    text = report.report_text(judge_all({}, "scale"), stamp.merge([], "scale", "REPORT"), "scale", tmp_path, {},
                              found)
    assert "only the scale and prediction studies" in text and "## Along scale" in text and "| C8 " in text


def test_other_studies_refuse_the_scale_profile_in_one_line(tmp_path, capsys):
    from experiments.__main__ import main
    assert main(["fanin_vs_gradients", "--profile", "scale", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "only the scale and prediction studies" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cached_tables_of_another_plan_are_stale(smoke_tables, tmp_path):
    """`python -m figures` recomputes a cached study whose plan now lists a run it did not use
    (a changed grid), instead of drawing the old tables; the runs themselves stay cached."""
    import json
    import shutil

    from experiments.upgrade import stale
    ctx, *_ = smoke_tables
    assert not stale(ctx, sc.NAME)
    copy = Context("smoke", tmp_path, jobs=1, progress=False)
    shutil.copytree(ctx.study_dir(sc.NAME), copy.study_dir(sc.NAME))
    meta = json.loads((copy.study_dir(sc.NAME) / "meta.json").read_text())
    assert not stale(copy, sc.NAME)
    meta["config_hashes"] = meta["config_hashes"][1:]
    (copy.study_dir(sc.NAME) / "meta.json").write_text(json.dumps(meta))
    dropped = set(json.loads((ctx.study_dir(sc.NAME) / "meta.json").read_text())["config_hashes"]) - set(
        meta["config_hashes"])
    from gfa_theory.train.run_config import run_key
    sweep = {run_key(c).split("-", 1)[1] for _, c in sc.configs("smoke")}
    assert stale(copy, sc.NAME) == bool(dropped & sweep)
    meta["config_hashes"] = []
    (copy.study_dir(sc.NAME) / "meta.json").write_text(json.dumps(meta))
    assert stale(copy, sc.NAME)
