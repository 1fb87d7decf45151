"""The pruning study (experiments/pruning.py): smoke run, stability helpers, checkpoint rankings,
T2-T4 / F12 builders and the C9-C11 verdict rules."""
import json
import math
from dataclasses import replace

import matplotlib
import numpy as np
import pandas as pd
import pytest

from experiments import pruning as pr
from experiments.plans import gpt_run, plan
from experiments.runner import Context
from experiments.study_io import load_study
from gfa_theory.errors import ConfigError
from gfa_theory.train.lifecycle import train
from gfa_theory.train.store import load_run, snapshots

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def study(smoke_root):
    ctx = Context("smoke", smoke_root, jobs=1, progress=False)
    results = pr.run(ctx=ctx)
    return ctx, results, load_study(ctx, pr.NAME)


# ---- the smoke study -------------------------------------------------------------------------

def test_smoke_study_tables(study):
    ctx, results, tables = study
    p = plan("smoke")
    assert {"model", "family", "depth_B", "run_id", "seed", "method", "k", "stage", "loss", "perplexity",
            "accuracy", "params", "n_draws", "removed"} <= set(results.columns)
    for c in ("loss", "perplexity", "accuracy", "params"):
        assert np.isfinite(results[c].to_numpy(float)).all(), c
    assert set(results["model"]) == {f"transformer B={B}" for B in p.prune.depths} | {
        f"resnet B={sum(b)}" for b in p.prune.resnet_depths}
    assert results.groupby("model")["seed"].nunique().eq(len(p.seeds)).all()
    assert set(results["stage"]) == set(pr.STAGES)
    # k = 0 is the unpruned model only; every method at every k >= 1, both stages
    assert set(results.loc[results.k == 0, "method"]) == {"none"}
    pruned = results[results.k > 0]
    counts = pruned.groupby(["run_id", "k", "stage"])["method"].apply(set)
    assert all(m == set(pr.METHODS) for m in counts)
    det = pruned[pruned.method != "random"]
    np.testing.assert_allclose(det["perplexity"], np.exp(det["loss"]))
    assert (det["removed"].str.split(";").str.len() == det["k"]).all()
    assert (pruned.loc[pruned.method == "random", "n_draws"] == p.prune.random_draws).all()
    base = results[results.k == 0].set_index(["run_id", "stage"])["params"]
    assert (pruned["params"].to_numpy() < base.loc[list(zip(pruned.run_id, pruned.stage))].to_numpy()).all()

    assert {"results", "raw", "rankings", "stability", "stability_summary", "cost", "comparisons",
            "summary", "depth_order", "depth_order_cases"} <= set(tables)
    raw = tables["raw"]
    assert (raw[raw.method == "random"].groupby(["run_id", "k", "stage"])["draw"].nunique()
            == p.prune.random_draws).all()
    meta = json.loads((ctx.study_dir(pr.NAME) / "meta.json").read_text())
    assert meta["prune_heal_steps"] == p.prune.heal_steps and meta["seeds"] == list(p.seeds)
    assert meta["checkpoint_steps"] == []  # smoke runs keep only their final snapshot


def test_smoke_stability_and_cost(study):
    _, _, tables = study
    stab = tables["stability"]
    assert set(stab["context"]) == {"seeds", "calibration"}  # no earlier checkpoints in smoke runs
    assert stab["tau"].between(-1, 1).all() and stab["overlap"].between(0, 1).all()
    calib = stab[stab.context == "calibration"]
    free = calib[calib.method.isin(pr.CALIBRATION_FREE)]
    # no calibration data: identical across subsets by construction, and flagged as such
    assert (free["tau"] == 1).all() and free["by_construction"].all()
    assert not calib.loc[~calib.method.isin(pr.CALIBRATION_FREE), "by_construction"].any()
    assert stab.loc[stab.method == "last", "by_construction"].all()
    cost = tables["cost"].set_index(["model", "method"])
    for model in cost.index.get_level_values(0).unique():
        c = cost.loc[model]
        assert c.loc["cascadeflow", "forward_passes"] == 0 and c.loc["cascadeflow", "backward_passes"] == 0
        assert c.loc["taylor", "backward_passes"] > 0 and c.loc["bi", "forward_passes"] > 0
        assert c.loc["ablation", "forward_passes"] > c.loc["bi", "forward_passes"]
    comp = tables["comparisons"]
    assert {"loss", "accuracy", "accuracy_vs_best", "tau", "overlap"} <= set(comp["quantity"])
    assert not (comp["method"] == pr.CASCADEFLOW).any()
    summary = tables["summary"]
    assert len(summary) == len(pr.METHODS) * summary["model"].nunique()
    assert np.isfinite(summary[["pruned", "healed", "pruned_acc", "tau_seeds"]].to_numpy(float)).all()


def test_configs_reuse_study_one_runs():
    from experiments import fanin_vs_gradients

    ours = {c.hash() for _, c in pr.configs("default")}
    theirs = {c.hash() for d, c in fanin_vs_gradients.configs("default") if d["supervision"] == "final"}
    assert ours <= theirs and len(ours) == 2 * len(plan("default").seeds)


# ---- pure helpers ------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b,tau", [
    (["a", "b", "c", "d"], ["a", "b", "c", "d"], 1.0),
    (["a", "b", "c", "d"], ["d", "c", "b", "a"], -1.0),
    (["a", "b", "c", "d"], ["b", "a", "c", "d"], 2 / 3),  # one discordant pair of six
], ids=["identical", "reversed", "one-swap"])
def test_kendall_tau_known_rankings(a, b, tau):
    assert pr.kendall_tau(a, b) == pytest.approx(tau)


def test_top_k_overlap_known_rankings():
    a, b = ["a", "b", "c", "d"], ["b", "d", "a", "c"]
    assert pr.top_k_overlap(a, b, 1) == 0.0
    assert pr.top_k_overlap(a, b, 2) == 0.5
    assert pr.top_k_overlap(a, b, 3) == pytest.approx(2 / 3)
    assert pr.top_k_overlap(a, b, 4) == 1.0
    assert pr.mean_overlap(a, b, 2) == 0.25
    assert pr.top_k_overlap(a, a, 2) == 1.0
    with pytest.raises(ConfigError, match="same blocks"):
        pr.kendall_tau(a, ["a", "b", "c", "x"])
    with pytest.raises(ConfigError, match="k must be"):
        pr.top_k_overlap(a, b, 0)


def test_gradients_until_sums_the_series():
    # unit u: windows ending at steps 2, 4, 5 with mean norms 1, 2, 4 (the last window has 1 step)
    rows = [("u", "block", "grad_norm", s, v) for s, v in ((2, 1.0), (4, 2.0), (5, 4.0))]
    rows += [("u", "block", "numel", None, 4.0), ("u", "block", "A", None, 2 + 4 + 4.0)]
    g = pd.DataFrame(rows, columns=["unit", "kind", "quantity", "step", "value"])
    g["step"] = g["step"].astype("Int64")
    A = lambda step: pr.gradients_until(g, step).set_index("quantity").loc["A", "value"]  # noqa: E731
    assert A(2) == 2.0 and A(4) == 6.0 and A(5) == 10.0
    assert A(3) == 4.0  # inside a window: its mean stands in for the step
    assert pr.gradients_until(g, 4).set_index("quantity").loc["A_rms", "value"] == 3.0  # 6 / sqrt(4)
    with pytest.raises(ConfigError, match="step must be"):
        pr.gradients_until(g, 6)


def test_gradients_until_final_step_is_the_tracker_total(study):
    _, results, _ = study
    run = load_run(study[0].root / results["run_id"].iloc[0])
    steps = run.config.train.steps
    mine = pr.gradients_until(run.gradients, steps).set_index(["quantity", "unit"])["value"]
    g = run.gradients
    tot = g[(g.kind == "block") & g.step.isna()].set_index(["quantity", "unit"])["value"]
    for q in ("A", "A_rms"):
        np.testing.assert_allclose(mine.loc[q].sort_index(), tot.loc[q].sort_index(), rtol=1e-9)


def test_checkpoint_rankings_use_snapshots_and_partial_gradients(tmp_path):
    # a tiny run that keeps a snapshot at step 4 of 8 (smoke runs only keep the final one)
    p = plan("smoke")
    cfg = gpt_run(replace(p, train=replace(p.train, checkpoint_interval=4)), n_blocks=3, seed=0)
    res = train(cfg, tmp_path, progress=False)
    assert sorted(snapshots(res.run_dir)) == [4, 8]
    desc = {"family": "transformer", "depth_B": 3, "model": "transformer B=3"}
    out = pr.analyze_run(desc, str(res.run_dir), "smoke")
    rk = pd.DataFrame(out["rankings"])
    ck = rk[rk.context == "checkpoint"]
    assert set(ck["step"]) == {4} and set(ck["method"]) == set(pr.METHODS)
    # CascadeFlow at step 4: blocks ordered by A accumulated over the first 4 steps
    A4 = pr.gradients_until(res.gradients, 4).query("quantity == 'A'").set_index("unit")["value"]
    assert ck.set_index("method").loc["cascadeflow", "order"] == ";".join(A4.sort_values().index)
    pairs = pr.stability_pairs(rk)
    cp = pairs[pairs.context == "checkpoints"]
    assert set(cp["method"]) == set(pr.METHODS) and cp["tau"].between(-1, 1).all()
    assert (cp.loc[cp.method == "last", "tau"] == 1).all()


def _results_frame(losses: dict, seeds=(0, 1, 2), K: int = 2) -> pd.DataFrame:
    """Synthetic per-run results: ``losses[method]`` is the loss at every k (+ 0.01 * seed)."""
    rows = []
    for seed in seeds:
        for k in range(0, K + 1):
            for m, loss in ({"none": 1.0} if k == 0 else losses).items():
                for stage in pr.STAGES:
                    rows.append({"model": "transformer B=4", "family": "transformer", "depth_B": 4,
                                 "run_id": f"r{seed}", "seed": seed, "method": m, "k": k, "stage": stage,
                                 "loss": loss + 0.01 * seed, "perplexity": math.exp(loss), "accuracy": 0.5 - loss / 10})
    return pd.DataFrame(rows)


def test_comparisons_signs_and_pairing():
    losses = {m: 2.0 for m in pr.METHODS}
    losses["bi"] = 2.5  # CascadeFlow 0.5 nats better than BI at every k and seed
    comp = pr.comparisons(_results_frame(losses), pd.DataFrame(columns=["model", "context"]))
    row = comp[(comp.quantity == "loss") & (comp.method == "bi") & (comp.stage == "pruned")].iloc[0]
    assert row["estimate"] == pytest.approx(-0.5) and row["n"] == 3
    acc = comp[(comp.quantity == "accuracy_vs_best") & (comp.k == 1) & (comp.stage == "healed")].iloc[0]
    assert acc["estimate"] == pytest.approx(0.0) and acc["method"] != "bi"  # BI is the worst heuristic here


def test_stability_pairs_on_known_rankings():
    rows = []
    orders = {0: "a;b;c;d", 1: "d;c;b;a"}  # CascadeFlow reverses between seeds; BI agrees
    for seed in (0, 1):
        base = {"run_id": f"r{seed}", "seed": seed, "family": "transformer", "depth_B": 4, "model": "m", "K": 2,
                "context": "final", "draw": 0, "subset": 0, "step": 10}
        rows.append({**base, "method": "cascadeflow", "order": orders[seed]})
        rows.append({**base, "method": "bi", "order": "a;b;c;d"})
    pairs = pr.stability_pairs(pd.DataFrame(rows)).set_index("method")
    assert pairs.loc["cascadeflow", "tau"] == -1.0 and pairs.loc["bi", "tau"] == 1.0
    assert pairs.loc["cascadeflow", "overlap"] == 0.0 and pairs.loc["bi", "overlap"] == 1.0
    assert (pairs["context"] == "seeds").all()


# ---- CascadeFlow vs depth order -------------------------------------------------------------------

def _depth_inputs(cf_orders: dict, cf_losses: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic ``results`` and ``rankings`` of a 4-block model (blocks a..d, depth order d;c;b;a):
    ``cf_orders[seed]`` is CascadeFlow's ranking, ``cf_losses[(seed, k)]`` its loss (last-k: 2.0)."""
    last = ["d", "c", "b", "a"]
    res, rk = [], []
    for seed, order in cf_orders.items():
        base = {"model": "transformer B=4", "family": "transformer", "depth_B": 4, "run_id": f"r{seed}", "seed": seed}
        for m, o in ((pr.CASCADEFLOW, order), (pr.DEPTH_ORDER, last)):
            rk.append({**base, "method": m, "context": "final", "draw": 0, "order": ";".join(o)})
            for k in (1, 2):
                for stage in pr.STAGES:
                    loss = cf_losses.get((seed, k), 2.0) if m == pr.CASCADEFLOW else 2.0
                    res.append({**base, "method": m, "k": k, "stage": stage, "loss": loss,
                                "removed": ";".join(o[:k])})
    return pd.DataFrame(res), pd.DataFrame(rk)


def test_depth_order_tau_of_identical_and_reversed_orders():
    res, rk = _depth_inputs({0: ["d", "c", "b", "a"], 1: ["a", "b", "c", "d"]}, {})
    cases = pr.depth_order_cases(res, rk).groupby("seed")["tau"].first()
    assert cases[0] == 1.0 and cases[1] == -1.0


def test_depth_order_counts_differing_cases_and_compares_only_them():
    # seed 0 = depth order; seed 1 swaps the last two (differs at k = 1 only: same set {d, c} at k = 2);
    # seeds 2 and 3 pick other blocks at every k
    orders = {0: ["d", "c", "b", "a"], 1: ["c", "d", "b", "a"], 2: ["a", "b", "c", "d"], 3: ["b", "a", "d", "c"]}
    losses = {(1, 1): 1.9, (2, 1): 1.8, (2, 2): 2.2, (3, 1): 1.7, (3, 2): 2.4,
              (0, 1): 9.9, (1, 2): 9.9}  # the last two are never compared: same set as last-k
    res, rk = _depth_inputs(orders, losses)
    for r in res.itertuples():  # identical sets prune the same model: the same loss
        if r.method == pr.CASCADEFLOW and not pr.removed_sets_differ(r.removed, ";".join(["d", "c", "b"][:r.k])):
            res.loc[r.Index, "loss"] = 2.0
    cases = pr.depth_order_cases(res, rk)
    assert len(cases) == 4 * 2 * 2
    table = pr.depth_order_table(cases).set_index(["stage", "k"])
    k1, k2 = table.loc[("pruned", 1)], table.loc[("pruned", 2)]
    assert (k1["n_runs"], k1["n_differ"], k2["n_differ"]) == (4, 3, 2)
    assert k1["estimate"] == pytest.approx(-0.2) and k1["n"] == 3  # (-0.1 - 0.2 - 0.3) / 3 over the differing runs
    assert k1["ci_low"] < k1["estimate"] < k1["ci_high"] and np.isfinite(k1["p"])
    assert k2["estimate"] == pytest.approx(0.3) and k2["n"] == 2
    assert table.loc[("healed", 1), "n_differ"] == 3
    assert pr.removed_sets_differ("a;b", "b;a") is False and pr.removed_sets_differ("a;b", "a;c") is True


def test_depth_order_without_differing_cases_has_no_statistic():
    res, rk = _depth_inputs({0: ["d", "c", "b", "a"], 1: ["d", "c", "a", "b"]}, {})  # k <= 2: same sets
    table = pr.depth_order_table(pr.depth_order_cases(res, rk))
    assert (table["n_differ"] == 0).all() and table["estimate"].isna().all() and (table["n"] == 0).all()
    # one differing run: its difference, with no interval (a statistic with no spread)
    t1 = pr.depth_order_table(pr.depth_order_cases(*_depth_inputs(
        {0: ["d", "c", "b", "a"], 1: ["a", "c", "b", "d"]}, {(1, 1): 1.5, (1, 2): 1.5})))
    assert (t1["n_differ"] == 1).all() and t1["estimate"].eq(-0.5).all() and t1["ci_low"].isna().all()


def test_t6_table(study):
    from figures import efficiency as ef

    _, results, tables = study
    t6 = ef.t6({pr.NAME: tables})
    assert {"model", "k", "stage", "tau vs depth order [min, max]", "runs differing",
            "loss CascadeFlow - last-k [CI95]", "perplexity ratio", "p"} <= set(t6.columns)
    assert len(t6) == results.loc[results.k > 0].groupby("model")["k"].max().sum() * len(pr.STAGES)
    none = t6["runs differing"].str.startswith("0 of")
    assert (t6.loc[none, "loss CascadeFlow - last-k [CI95]"] == "no differing cases").all()
    assert "%" not in t6.to_csv()
    cases = tables["depth_order_cases"]
    assert cases["tau"].between(-1, 1).all() and set(cases["stage"]) == set(pr.STAGES)
    assert (cases.loc[~cases["differs"], "loss_diff"] == 0).all()  # the same blocks: the same pruned model


# ---- outputs -----------------------------------------------------------------------------------

def test_t2_t3_t4_tables(study):
    from figures import efficiency as ef
    from figures import names

    ctx, results, tables = study
    t = {pr.NAME: tables}
    n_k = results.groupby("model")["k"].max().sum()  # pruned k values over models
    t2 = ef.t2(t)
    assert {"model", "metric", "k", "method", "seeds", "no healing [CI95]", "healed [CI95]"} <= set(t2.columns)
    assert len(t2) == results["model"].nunique() + n_k * len(pr.METHODS)
    assert set(t2.loc[t2.model.str.startswith("resnet"), "metric"]) == {"loss"}
    t3 = ef.t3(t)
    choice = f"{pr.CHOICES}-way continuation choice pct (chance {100 / pr.CHOICES:g})"
    assert set(t3["task"]) == {"next-token accuracy pct", "top-1 accuracy pct", choice}
    # every Transformer row twice (the continuation task C11 counts, and next-token accuracy)
    assert len(t3) == len(t2) + int(t2.model.str.startswith("transformer").sum())
    t4 = ef.t4(t)
    assert len(t4) == results["model"].nunique() * len(pr.METHODS)
    assert "cascadeflow" not in set(t4.method) and "bi" not in set(t2.method)  # methods named in words
    cf_row = t4[t4.method == names.method("cascadeflow")].iloc[0]
    assert cf_row["tau calibration [min, max]"].endswith("(by construction)") and cf_row["forward passes"] == "0"
    assert (t4["tau checkpoints [min, max]"] == "n/a").all()  # not measured in smoke
    for df in (t2, t3, t4):
        assert "%" not in df.to_csv()  # a bare % would comment out the rest of a LaTeX row


def test_f12_and_pruning_panels(study):
    import matplotlib.pyplot as plt

    from figures import efficiency as ef

    ctx, _, tables = study
    t = {pr.NAME: tables}
    for stage in pr.STAGES:
        ax = ef.pruning_panel(t, stage)
        assert ax.has_data() and ax.get_yscale() == "log"
        assert len(ax.get_legend_handles_labels()[1]) == len(pr.METHODS)
    ax = ef.pruning_panel(t, "healed", model=f"resnet B={sum(plan('smoke').prune.resnet_depths[0])}",
                          metric="accuracy")
    assert ax.get_ylabel() == "top-1 accuracy"
    assert not ef.pruning_panel({}).axison  # a missing study draws a note, not an error
    fig = ef.f12(t)
    assert len(fig.axes) == 2 and fig.legends and all(ax.axison for ax in fig.axes)
    fig = ef.f8(t)  # the CascadeFormer panels note their missing study
    assert len(fig.axes) == 2 and not any(ax.axison for ax in fig.axes)
    plt.close("all")


def test_f8_f12_t1_to_t4_and_claims_are_listed():
    from figures import efficiency as ef
    from experiments.verdicts import CLAIMS
    from figures.outputs import OUTPUTS

    assert OUTPUTS["F12"].build is ef.f12 and OUTPUTS["F12"].studies == ("pruning",)
    for key in ("T2", "T3", "T4"):
        assert OUTPUTS[key].studies == ("pruning",) and OUTPUTS[key].kind == "table"
        assert "%" not in OUTPUTS[key].title  # the title is the LaTeX caption
    assert OUTPUTS["T1"].studies == ("cascadeformer",)
    assert [OUTPUTS[k].build for k in ("T1", "F8", "F12", "T2", "T3", "T4")] == [ef.t1, ef.f8, ef.f12, ef.t2, ef.t3,
                                                                                 ef.t4]
    keys = [c.key for c in CLAIMS]
    assert all(keys.count(k) == 1 for k in ("C8", "C9", "C10", "C11"))


def test_claims_measure_the_smoke_study(study):
    """C9-C11 on the smoke study's real comparisons: the registered rules' findings are the rules'
    own on these tables (the rules themselves are tested verdict by verdict in tests/test_claims.py)."""
    from experiments.verdicts import BY_KEY, judge
    from experiments.verdicts import pruning as prr

    _, _, tables = study
    comp = tables["comparisons"]
    assert {"se", "df"} <= set(comp.columns) and {"se", "df"} <= set(tables["depth_order"].columns)
    for key, rule in (("C9", lambda c: prr.c9(c, tables["depth_order"])), ("C10", prr.c10), ("C11", prr.c11)):
        found, direct = judge(BY_KEY[key], {pr.NAME: tables}), rule(comp)
        assert (found.verdict, repr(found.primary), found.why) == (direct.verdict, repr(direct.primary),
                                                                   direct.why), key  # repr: NaN != NaN
    c9 = judge(BY_KEY["C9"], {pr.NAME: tables})
    assert {"floor", "oracle"} <= {e.note for e in c9.secondary} and set(c9.arms["stage"]) == set(pr.STAGES)


def test_choice_task_is_deterministic_and_scores_an_oracle(monkeypatch):
    """C11's Transformer task: items from the validation split only, the same every call; a model
    that predicts the text exactly picks every true continuation, one that predicts nothing none."""
    import torch

    from gfa_theory.instrument import evaluation
    from gfa_theory.instrument.evaluation import continuation_accuracy
    from gfa_theory.train.data import make_text_data

    text = "abcdefghijklmnopqrstuvwxyz" * 160  # every character has one successor
    data = make_text_data(text, 0.25, "synthetic")
    ctx, cands = pr.choice_items(data, 16)
    again = pr.choice_items(data, 16)
    assert torch.equal(ctx, again[0]) and torch.equal(cands, again[1])
    assert ctx.shape == (pr.CHOICE_ITEMS, 12) and cands.shape == (pr.CHOICE_ITEMS, pr.CHOICES, 4)
    val = data.split("val").tolist()
    window = ctx[0].tolist() + cands[0, 0].tolist()
    assert any(val[i:i + 16] == window for i in range(len(val) - 15))  # a real validation window

    class Lookup(torch.nn.Module):
        """Logits peaked on the corpus' own successor (exact), or flat (blind)."""

        def __init__(self, exact: bool):
            super().__init__()
            self.exact, self.w = exact, torch.nn.Parameter(torch.zeros(1))
            nxt = {}
            for a, b in zip(val, val[1:]):
                nxt.setdefault(a, b)
            self.nxt = nxt

        def forward(self, x):
            out = torch.full((*x.shape, data.vocab_size), -20.0 if self.exact else 0.0)
            for i, row in enumerate(x.tolist()):
                for t, a in enumerate(row):
                    out[i, t, self.nxt.get(a, 0)] = 0.0
            return out

    monkeypatch.setattr(evaluation, "logits_and_loss", lambda model, x, y, final_only=True: (model(x), None))
    exact = continuation_accuracy(Lookup(True), (ctx[:16], cands[:16]))
    blind = continuation_accuracy(Lookup(False), (ctx[:16], cands[:16]))
    assert exact > 0.8 and blind == 0.0  # ties count as wrong: a model that sees nothing gets none
