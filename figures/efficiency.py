"""Builders of F8, F12, T1-T4 and T6: CascadeFormer (``experiments/cascadeformer.py``) and CascadeFlow
Pruning (``experiments/pruning.py``).

Read from the study tables:

* CascadeFormer ``summary.csv`` (one row per schedule) and ``timing_summary.csv`` (with the A/A
  timing control);
* pruning ``results.csv`` (held-out loss / perplexity / accuracy per run, method, ``k``, stage),
  ``stability_summary.csv`` (Kendall tau and top-k overlap of rankings), ``cost.csv`` and
  ``depth_order.csv`` (CascadeFlow vs last-k, T6).

The claims these outputs are evidence for (C8-C11) are judged in :mod:`experiments.verdicts`; T1
prints C8's per-arm tests from its finding.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments import cascadeformer as cf
from experiments import pruning as pr
from experiments.verdicts import cascadeformer as c8_rule
from experiments.verdicts.toolkit import THRESHOLDS
from gfa_theory.instrument.stats import format_interval, format_p, mean_ci

from . import names, plots


def _table(tables, study: str, name: str) -> pd.DataFrame | None:
    """Table ``name`` of ``study`` from the ``{study: {table: frame}}`` dict (None if not run)."""
    found = (tables or {}).get(study)
    return None if found is None else found.get(name)


def _models(results: pd.DataFrame) -> list[str]:
    """Model labels of the pruning study, Transformers first, by depth."""
    m = results.drop_duplicates("model")
    m = m.assign(_t=m["family"] != "transformer").sort_values(["_t", "depth_B"])
    return m["model"].tolist()


# ---- T1 and the CascadeFormer panels of F8 ----------------------------------------------------

def _t1_interval(m: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    return format_interval(m, lo, hi, fmt, missing="nan", no_interval=" [undefined]")


SPEED_MODES = (("latency", "latency ratio [IQR]"), ("throughput", "throughput ratio [IQR]"),
               ("train_latency", "train-step latency ratio [IQR]"),
               ("train_throughput", "train throughput ratio [IQR]"))


def _c8_short(row) -> str:
    """What C8 reads from this arm (its verdict itself is in the claims table)."""
    if row["role"] in ("reference", "control"):
        return row["role"]
    speed = [m for m in ("latency", "throughput") if row[f"{m}_counts"]]
    parts = [f"{'primary' if row['role'] == 'primary' else 'exploratory'}",
             "comparable" if row["p_comparable"] < THRESHOLDS.alpha else "not shown comparable",
             "beats narrow" if row["p_better"] < THRESHOLDS.alpha else "not shown better than narrow",
             f"speed beyond A/A: {', '.join(speed) or 'none'}"]
    return "; ".join(parts)


def _t1_row(r) -> dict:
    row = {
        "arm": names.schedule(r["label"]), "role": r["role"], "steps": int(r["steps"]), "seeds": int(r["n_seeds"]),
        "tokens/param": r["tokens_per_param"], "params": int(r["params"]), "params vs uniform": r["params_ratio"],
        "FLOPs vs uniform": r["flops_ratio"],
        "held-out loss [CI95]": _t1_interval(r["val_loss"], r["val_loss_ci_low"], r["val_loss_ci_high"]),
        "perplexity [CI95]": _t1_interval(r["val_ppl"], r["val_ppl_ci_low"], r["val_ppl_ci_high"], ".2f"),
        "loss gap vs uniform [paired CI95]": _t1_interval(r["loss_gap"], r["loss_gap_ci_low"], r["loss_gap_ci_high"],
                                                          "+.4f"),
        "loss gap vs narrow [paired CI95]": _t1_interval(r["loss_gap_narrow"], r["loss_gap_narrow_ci_low"],
                                                         r["loss_gap_narrow_ci_high"], "+.4f"),
        "perplexity change pct vs uniform [CI95]": _t1_interval(r["ppl_gap_pct"], r["ppl_gap_pct_ci_low"],
                                                                r["ppl_gap_pct_ci_high"], "+.2f"),
    }
    for mode, col in SPEED_MODES:
        if f"{mode}_ratio" in r:
            row[col] = _t1_interval(r[f"{mode}_ratio"], r[f"{mode}_ratio_q25"], r[f"{mode}_ratio_q75"])
    if r["role"] == "reference":  # the reference: its gaps and ratios are 0 and 1 by definition
        for c in ("loss gap vs uniform [paired CI95]", "perplexity change pct vs uniform [CI95]",
                  *(c for _, c in SPEED_MODES if c in row)):
            row[c] = "reference"
    if r["role"] == "control":
        row["loss gap vs narrow [paired CI95]"] = "reference"
    main = r["arm"] == "main"
    row["non-inferior vs uniform p"] = format_p(r["p_comparable"]) if np.isfinite(r["p_comparable"]) else ""
    row["better than narrow p"] = format_p(r["p_better"]) if np.isfinite(r["p_better"]) else ""
    row["C8 reads"] = _c8_short(r) if main else "token sweep (reported, not counted)"
    return row


def t1(tables) -> pd.DataFrame:
    """CascadeFormer arms, every one matched to the primary's parameter budget except the full
    uniform reference; the main comparison, then the token sweep (same arms trained longer).
    Intervals: loss and perplexity 95 % t over seeds; gaps to the full and the narrow uniform
    model paired by seed (no interval from one seed); speed ratios vs the full uniform model
    median [IQR] over interleaved repeats (inference and training step). Non-inferiority and
    'better than narrow' p: C8's tests (raw for the primary, Holm over the exploratory arms). A
    last row gives the A/A timing control (a copy of the uniform model): the noise band a speed
    ratio must clear."""
    s = _table(tables, cf.NAME, "summary").reset_index(drop=True)
    s = s.join(c8_rule.c8(s).arms[list(c8_rule.TESTS)])
    rows = [_t1_row(r) for _, r in s.iterrows()]
    timing = _table(tables, cf.NAME, "timing_summary")
    if timing is not None and (timing["model"] == cf.AA_CONTROL).any():
        # a copy of the uniform model timed alongside: the timing noise floor of the ratios above
        a = timing[timing["model"] == cf.AA_CONTROL].iloc[0]
        aa = {k: "" for k in rows[0]} | {"arm": "A/A control (uniform copy)", "role": "timing control"}
        for mode, col in SPEED_MODES:
            if f"{mode}_ratio" in a:
                aa[col] = _t1_interval(a[f"{mode}_ratio"], a[f"{mode}_ratio_q25"], a[f"{mode}_ratio_q75"])
        rows.append(aa)
    return pd.DataFrame(rows)


CASCADE_NOT_RUN = "CascadeFormer study not run for this profile"


def cascade_tradeoff_panel(tables, ax=None):
    """Perplexity change vs throughput ratio, every schedule, against C8's margin and the paper."""
    s = _table(tables, cf.NAME, "summary")
    if s is None or s.empty:
        return plots.plot_note(CASCADE_NOT_RUN, ax=ax)
    aa = s.iloc[0] if "aa_throughput_ratio_q25" in s else None
    band = (aa["aa_throughput_ratio_q25"], aa["aa_throughput_ratio_q75"]) if aa is not None else None
    return plots.plot_cascade_tradeoff(s, THRESHOLDS.ppl_margin_pct, THRESHOLDS.paper_throughput_ratio, aa_band=band, ax=ax)


def cascade_speed_panel(tables, ax=None):
    """Perplexity, latency and throughput ratios of every tapered schedule, against the paper's."""
    s = _table(tables, cf.NAME, "summary")
    if s is None or s.empty:
        return plots.plot_note(CASCADE_NOT_RUN, ax=ax)
    main_steps = s["steps"].min()
    tapered = s[(s.schedule != "uniform") & (s["steps"] == main_steps)]
    if tapered.empty:
        return plots.plot_note("no tapered schedule in the study", ax=ax)
    return plots.plot_cascade_speed(tapered, THRESHOLDS.paper_latency_ratio,
                                    THRESHOLDS.paper_throughput_ratio, ax=ax)


# ---- the pruning panels of F12 ----------------------------------------------------------------

def pruning_curves(results: pd.DataFrame, stage: str, metric: str, relative: bool) -> pd.DataFrame:
    """One model's ``metric`` at each ``k`` and ``stage`` for every method: mean with 95 %
    t-interval over seeds, the unpruned model at ``k = 0`` of each (random: mean of draws).

    ``relative``: each seed's value over (perplexity) or minus (loss, accuracy) its unpruned,
    unhealed model's, so the seed-to-seed spread of the base model drops out; the same reference
    in both stages, so healing gains stay visible."""
    d = results.copy()
    if relative:
        ref = d[(d["method"] == "none") & (d["stage"] == "pruned")].set_index("run_id")[metric]
        d[metric] = d[metric] / d["run_id"].map(ref) if metric == "perplexity" else d[metric] - d["run_id"].map(ref)
    d = d[d["stage"] == stage]
    base = d[d["method"] == "none"]
    rows = []
    for m in [m for m in pr.METHODS if m in set(d["method"])]:
        dm = pd.concat([base, d[d["method"] == m]])
        rows += [(m, k, *mean_ci(g[metric])) for k, g in dm.groupby("k")]
    return pd.DataFrame(rows, columns=["method", "k", "mean", "lo", "hi"])


def pruning_panel(tables, stage: str = "pruned", model: str | None = None, metric: str | None = None,
                  relative: bool = False, clip_random: bool = True, ax=None):
    """Held-out perplexity (Transformer; ResNet: loss; or ``metric``) against the number of removed
    blocks ``k``, one line per method, for ``model`` (default: the first Transformer) at ``stage``
    (``pruned``: no healing, or ``healed``); see :func:`pruning_curves` and
    :func:`figures.plots.plot_pruning_curve`."""
    res = _table(tables, pr.NAME, "results")
    if res is None or res.empty:
        return plots.plot_note("pruning study not run for this profile", ax=ax)
    model = model or _models(res)[0]
    d = res[res["model"] == model]
    family = d["family"].iloc[0]
    metric = metric or ("perplexity" if family == "transformer" else "loss")
    staged = d[d["stage"] == stage]
    heal_steps = int(staged["heal_steps"].iloc[0]) if "heal_steps" in staged else None
    return plots.plot_pruning_curve(pruning_curves(d, stage, metric, relative), model, family, metric,
                                    int(staged["depth_B"].iloc[0]), stage=stage, heal_steps=heal_steps,
                                    relative=relative, clip_random=clip_random, ax=ax)


def f8(tables):
    """F8: CascadeFormer, perplexity against throughput (top) and every arm's perplexity and speed
    ratios (bottom), each legend beside its panel."""
    fig, axs = plt.subplots(2, 1, figsize=(8.0, 7.6))
    cascade_tradeoff_panel(tables, ax=axs[0])
    cascade_speed_panel(tables, ax=axs[1])
    return fig


def f12(tables):
    """F12: pruning perplexity vs k without and with healing (each seed relative to its unpruned
    model, one y range for both), one legend for the methods under the figure."""
    fig, axs = plt.subplots(1, 2, figsize=(8.0, 4.0), sharey=True)
    pruning_panel(tables, "pruned", relative=True, ax=axs[0])
    pruning_panel(tables, "healed", relative=True, ax=axs[1])
    if axs[0].axison and axs[1].axison:  # one y range: healing gains read across the panels
        lo = min(axs[0].get_ylim()[0], axs[1].get_ylim()[0])
        hi = max(axs[0].get_ylim()[1], axs[1].get_ylim()[1])
        axs[0].set_ylim(lo, hi)
        axs[1].set_ylabel("")
    handles, labels = axs[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=7.5,
                   frameon=False, title="pruning method (error bars: 95 % CI over seeds)", title_fontsize=7.5)
    return fig


# ---- T2-T4 -------------------------------------------------------------------------------------

def _interval(m: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    return format_interval(m, lo, hi, fmt, missing="n/a")


def _per_k(results: pd.DataFrame, metric: str, scale: float = 1.0, fmt: str = ".3f") -> pd.DataFrame:
    rows = []
    for model in _models(results):
        d = results[results["model"] == model]
        for k in sorted(d["k"].unique()):
            for m in ["none", *pr.METHODS]:
                dm = d[(d["k"] == k) & (d["method"] == m)]
                if dm.empty:
                    continue
                row = {"model": model, "k": int(k), "method": names.method(m),
                       "seeds": int(dm["seed"].nunique())}
                for stage in pr.STAGES:
                    v = dm.loc[dm["stage"] == stage, metric] * scale
                    row[stage] = _interval(*mean_ci(v), fmt=fmt)
                rows.append(row)
    return pd.DataFrame(rows)


def t2(tables) -> pd.DataFrame:
    """Held-out perplexity (Transformer; ResNet: loss in nats) after removing k blocks, every
    method, without and with healing: mean [95 % t-interval] over seeds; random: mean of draws."""
    res = _table(tables, pr.NAME, "results")
    parts = []
    for family, metric, fmt in (("transformer", "perplexity", ".2f"), ("resnet", "loss", ".3f")):
        d = res[res["family"] == family]
        if not d.empty:
            t = _per_k(d, metric, fmt=fmt)
            t.insert(1, "metric", metric)
            parts.append(t)
    out = pd.concat(parts, ignore_index=True)
    return out.rename(columns={"pruned": "no healing [CI95]", "healed": "healed [CI95]"})


def t3(tables) -> pd.DataFrame:
    """Downstream accuracy after pruning, in percent: ResNet top-1 on held-out digits; Transformer
    multiple-choice continuation on held-out text (the task C11 counts) and next-token accuracy
    (the training objective, reported); mean [95 % t-interval] over seeds."""
    res = _table(tables, pr.NAME, "results")
    t = _per_k(res, "accuracy", scale=100.0, fmt=".1f")
    task = res.drop_duplicates("model").set_index("model")["family"].map(
        {"transformer": "next-token accuracy pct", "resnet": "top-1 accuracy pct"})
    t.insert(1, "task", t["model"].map(task))
    text = res[res["family"] == "transformer"]
    if "choice_accuracy" in res and np.isfinite(text["choice_accuracy"].to_numpy(float)).any():
        c = _per_k(text, "choice_accuracy", scale=100.0, fmt=".1f")
        c.insert(1, "task", f"{pr.CHOICES}-way continuation choice pct (chance {100 / pr.CHOICES:g})")
        t = pd.concat([c, t], ignore_index=True)
    return t.rename(columns={"pruned": "no healing [CI95]", "healed": "healed [CI95]"})


def _stability_cells(stab: pd.DataFrame, model: str, method: str) -> dict:
    row = {}
    for context in pr.CONTEXTS:
        hit = stab[(stab["model"] == model) & (stab["method"] == method) & (stab["context"] == context)]
        col = f"tau {context} [min, max]"
        if hit.empty:
            row[col] = row[f"overlap {context}"] = "n/a"
            continue
        h = hit.iloc[0]
        tau = _interval(h["tau_mean"], h["tau_min"], h["tau_max"], ".2f")
        row[col] = f"{tau} (by construction)" if bool(h["by_construction"]) else tau
        row[f"overlap {context}"] = f"{h['overlap_mean']:.2f}"
    return row


def t4(tables) -> pd.DataFrame:
    """Rank stability of every method's layer ranking: Kendall tau, mean [min, max] over compared
    pairs, and mean top-k overlap (k = 1..K) across training seeds, calibration subsets and training
    checkpoints (each earlier checkpoint vs the final model); plus scoring cost (extra forward /
    backward passes over calibration batches, seconds on one CPU thread). 'by construction': the
    method's ranking cannot vary there (no calibration data, or a fixed order); it is not a result."""
    stab = _table(tables, pr.NAME, "stability_summary")
    cost = _table(tables, pr.NAME, "cost")
    rows = []
    for model in _models(_table(tables, pr.NAME, "results")):
        for m in pr.METHODS:
            row = {"model": model, "method": names.method(m), **_stability_cells(stab, model, m)}
            c = cost[(cost["model"] == model) & (cost["method"] == m)]
            if not c.empty:
                c = c.iloc[0]
                row.update({"forward passes": f"{c['forward_passes']:.0f}",
                            "backward passes": f"{c['backward_passes']:.0f}",
                            "scoring seconds": f"{c['seconds']:.3g}", "needs": c["needs"]})
            rows.append(row)
    return pd.DataFrame(rows)


def _depth_loss(r) -> str:
    """The loss difference on the differing runs: interval, one run without spread, or none."""
    if r["n_differ"] == 0:
        return "no differing cases"
    if r["n_differ"] == 1 or not np.isfinite(r["ci_low"]):
        return f"{r['estimate']:+.4f} (one run, no spread)"
    return format_interval(r["estimate"], r["ci_low"], r["ci_high"], "+.4f", n=int(r["n_differ"]))


def t6(tables) -> pd.DataFrame:
    """CascadeFlow vs depth order (last-k, C9's primary baseline), per model, k and stage: Kendall tau
    between CascadeFlow's ranking and depth order (last block first; mean [min, max] over runs), in how
    many runs the two remove different blocks, and on exactly those runs the held-out loss CascadeFlow
    minus last-k (mean [95 % t-interval, G - 1 df over the G differing runs]), its perplexity ratio and
    two-sided p (not multiplicity-adjusted; C9 applies Holm). 'no differing cases': both pruned the same
    model, nothing separates them there."""
    d = _table(tables, pr.NAME, "depth_order")
    if d is None or d.empty:
        return pd.DataFrame([{"model": "depth-order table missing: rerun the pruning study"}])
    rows = []
    for model in _models(d):
        for _, r in d[d["model"] == model].sort_values(["k", "stage"], ascending=[True, False]).iterrows():
            ratio = (format_interval(np.exp(r["estimate"]), np.exp(r["ci_low"]), np.exp(r["ci_high"]), ".3f",
                                     missing="n/a", no_interval=" (no spread)") if r["n_differ"] else "n/a")
            rows.append({"model": model, "k": int(r["k"]), "stage": "no healing" if r["stage"] == "pruned" else "healed",
                         "tau vs depth order [min, max]": _interval(r["tau_mean"], r["tau_min"], r["tau_max"], ".2f"),
                         "runs differing": f"{int(r['n_differ'])} of {int(r['n_runs'])}",
                         "loss CascadeFlow - last-k [CI95]": _depth_loss(r),
                         "perplexity ratio": ratio, "p": format_p(r["p"]) if r["n_differ"] >= 2 else ""})
    return pd.DataFrame(rows)
