"""The efficiency outputs: F8 (CascadeFormer and CascadeFlow Pruning), T2-T4, claims C9-C11.

:func:`register` (called by ``figures.make_all``) first registers the CascadeFormer outputs of
:mod:`figures.efficiency_cascade` (T1, claim C8), then the full F8 and the pruning tables and
claims, all built from the tables of ``experiments/pruning.py``:

* ``results.csv``: held-out loss / perplexity / accuracy per run, method, ``k``, stage;
* ``stability.csv`` / ``stability_summary.csv``: Kendall tau and top-k overlap of rankings;
* ``cost.csv``: scoring cost; ``comparisons.csv``: CascadeFlow minus every other method with
  paired t-intervals, which the claim rules below read (each rule is stated in words next to it).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments import cascadeformer as cf
from experiments import pruning as pr
from gfa_theory.instrument.stats import mean_ci

from . import efficiency_cascade as ec
from .plots import PALETTE, _ax
from .report import FAILS, HOLDS, MIXED, UNDEFINED, Claim, register_claim

STUDY = pr.NAME
LABELS = {"cascadeflow": "CascadeFlow ($A$)", "cascadeflow_rms": "CascadeFlow ($A_{rms}$)",
          "bi": "Block Influence", "angular": "angular distance (span)", "taylor": "Taylor",
          "magnitude": "weight magnitude", "random": "random (mean of draws)", "last": "last-$k$",
          "ablation": "greedy ablation (oracle)", "none": "unpruned"}
STYLE = {  # CascadeFlow bold, the oracle black dashed, the chance floor grey
    "cascadeflow": dict(color=PALETTE[0], lw=2.4, marker="o", ls="-", zorder=5),
    "cascadeflow_rms": dict(color=PALETTE[0], lw=1.4, marker="o", ls="--", mfc="white", zorder=4),
    "bi": dict(color=PALETTE[1], lw=1.3, marker="s", ls="-"),
    "angular": dict(color=PALETTE[2], lw=1.3, marker="^", ls="-"),
    "taylor": dict(color=PALETTE[3], lw=1.3, marker="D", ls="-"),
    "magnitude": dict(color=PALETTE[4], lw=1.3, marker="v", ls="-"),
    "random": dict(color="0.55", lw=1.3, marker="x", ls=":"),
    "last": dict(color=PALETTE[5], lw=1.3, marker="<", ls="-"),
    "ablation": dict(color="black", lw=1.3, marker="*", ls="--"),
}
# C10: the heuristics whose ranking depends on the model (last is one fixed order, tau = 1 by
# construction; random is a fresh draw, the chance floor): only these are meaningful rivals.
STABILITY_RIVALS = ("bi", "angular", "taylor", "magnitude")
STABILITY_CONTEXTS = ("seeds", "checkpoints")  # calibration subsets: CascadeFlow uses none
ACC_TOLERANCE = 0.02  # C11: within 2 accuracy points (absolute) of the best heuristic


def _tables(tables, name: str) -> pd.DataFrame | None:
    """Table ``name`` of the pruning study from the ``{study: {table: frame}}`` dict (or a frame)."""
    if isinstance(tables, pd.DataFrame):
        return tables
    study = (tables or {}).get(STUDY)
    return None if study is None else study.get(name)


def _models(results: pd.DataFrame) -> list[str]:
    """Model labels, Transformers first, by depth."""
    m = results.drop_duplicates("model")
    m = m.assign(_t=m["family"] != "transformer").sort_values(["_t", "depth_B"])
    return m["model"].tolist()


def _ci(m: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    if not np.isfinite(m):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:{fmt}}"
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


# ---- F8 pruning panels -----------------------------------------------------------------------

def plot_pruning_curve(tables, stage: str = "pruned", model: str | None = None, metric: str | None = None,
                       relative: bool = False, clip_random: bool = True, ax=None):
    """Held-out perplexity (Transformer; ResNet: loss; or ``metric``) against the number of removed
    blocks ``k``, one line per method (mean over seeds, 95 % t-interval bars), ``k = 0`` the
    unpruned model. ``stage``: ``pruned`` (no healing) or ``healed``.

    ``relative``: each seed's value over (perplexity) or minus (loss, accuracy) its unpruned,
    unhealed model's, so the seed-to-seed spread of the base model drops out and the bars show how
    much methods differ; the same reference in both stages, so healing gains stay visible.
    ``clip_random``: the y range follows the other methods and random (far worse) runs off the top,
    with its values written in the panel. Lines are nudged sideways so that methods removing the
    same blocks stay visible."""
    ax = _ax(ax)
    res = _tables(tables, "results")
    if res is None or res.empty:
        return ec._missing(ax, "pruning study not run for this profile")
    model = model or _models(res)[0]
    d = res[res["model"] == model].copy()
    text = d["family"].iloc[0] == "transformer"
    metric = metric or ("perplexity" if text else "loss")
    ratio = metric == "perplexity"
    if relative:
        ref = d[(d["method"] == "none") & (d["stage"] == "pruned")].set_index("run_id")[metric]
        d[metric] = d[metric] / d["run_id"].map(ref) if ratio else d[metric] - d["run_id"].map(ref)
    d = d[d["stage"] == stage]
    base = d[d["method"] == "none"]
    methods = [m for m in pr.METHODS if m in set(d["method"])]
    lows, highs = [], []
    for i, m in enumerate(methods):
        dm = pd.concat([base, d[d["method"] == m]])
        rows = [(k, *mean_ci(g[metric])) for k, g in dm.groupby("k")]
        k, mean, lo, hi = (np.array([r[j] for r in rows], float) for j in range(4))
        x = k + (i - (len(methods) - 1) / 2) * 0.035
        st = STYLE[m]
        err = np.nan_to_num(np.abs(np.vstack([mean - lo, hi - mean])))
        if m == "random" and clip_random:
            err = None  # its values are written in the panel; its bars would span it
        # error bars, not bands: nine overlapping bands would hide every line
        ax.errorbar(x, mean, yerr=err, label=LABELS[m], ms=4 if m != "ablation" else 6.5, capsize=1.5,
                    elinewidth=0.7, **st)
        if m != "random":
            lows.append(np.nanmin(np.fmin(lo, mean)))
            highs.append(np.nanmax(np.fmax(hi, mean)))
        else:
            rand = (k, mean)
    if ratio and not relative:
        ax.set_yscale("log")
    if clip_random and "random" in methods and highs:
        top, bottom = max(highs), min(lows)
        pad = 0.08 * (top - bottom or abs(top) or 1.0)
        ax.set_ylim(bottom - pad, top + 3 * pad)
        if any(v > top + 3 * pad for kk, v in zip(*rand) if kk > 0):
            ax.text(0.02, 0.97, "random (runs off the top): " + ", ".join(
                f"k={int(kk)}: {v:.3g}" for kk, v in zip(*rand) if kk > 0),
                transform=ax.transAxes, ha="left", va="top", fontsize=6.5, color="0.35")
    K = int(d["k"].max())
    ax.set_xticks(range(K + 1))
    ax.set_xlabel(f"blocks removed $k$ (of {int(d['depth_B'].iloc[0])})")
    names = {"perplexity": "held-out perplexity", "loss": "held-out loss (nats)",
             "accuracy": "next-token accuracy" if text else "top-1 accuracy"}
    if relative:
        ylabel = (f"{names[metric]} / unpruned model's" if ratio else f"{names[metric]} - unpruned model's")
    else:
        ylabel = names[metric] + (" (log scale)" if ratio else "")
    ax.set_ylabel(ylabel)
    steps = int(d["heal_steps"].iloc[0]) if "heal_steps" in d else None
    what = "no healing" if stage == "pruned" else (f"healed ({steps} AdamW steps)" if steps else "healed")
    ax.set_title(f"Pruning, {model}: {what}")
    return ax


def f8(tables):
    """F8: the two CascadeFormer panels (top) and pruning perplexity vs k without and with healing
    (bottom; each seed relative to its unpruned model, one y range for both), one legend for the
    pruning methods under the figure."""
    fig, axs = plt.subplots(2, 2, figsize=(10.5, 8.2))
    ec.plot_cascade_tradeoff(tables, ax=axs[0][0])
    ec.plot_cascade_speed(tables, ax=axs[0][1])
    plot_pruning_curve(tables, "pruned", relative=True, ax=axs[1][0])
    plot_pruning_curve(tables, "healed", relative=True, ax=axs[1][1])
    if axs[1][0].axison and axs[1][1].axison:  # one y range: healing gains read across the panels
        lo = min(axs[1][0].get_ylim()[0], axs[1][1].get_ylim()[0])
        hi = max(axs[1][0].get_ylim()[1], axs[1][1].get_ylim()[1])
        for a in axs[1]:
            a.set_ylim(lo, hi)
    handles, labels = axs[1][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=5, fontsize=7.5,
                   frameon=False, title="pruning method (error bars: 95 % CI over seeds)", title_fontsize=7.5)
    return fig


# ---- tables ---------------------------------------------------------------------------------------

def _per_k(results: pd.DataFrame, metric: str, scale: float = 1.0, fmt: str = ".3f") -> pd.DataFrame:
    rows = []
    for model in _models(results):
        d = results[results["model"] == model]
        for k in sorted(d["k"].unique()):
            for m in ["none", *pr.METHODS]:
                dm = d[(d["k"] == k) & (d["method"] == m)]
                if dm.empty:
                    continue
                row = {"model": model, "k": int(k), "method": "unpruned" if m == "none" else m,
                       "seeds": int(dm["seed"].nunique())}
                for stage in pr.STAGES:
                    v = dm.loc[dm["stage"] == stage, metric] * scale
                    row[stage] = _ci(*mean_ci(v), fmt=fmt)
                rows.append(row)
    return pd.DataFrame(rows)


def t2(tables) -> pd.DataFrame:
    """Held-out perplexity (Transformer; ResNet: loss in nats) after removing k blocks, every
    method, without and with healing: mean [95 % t-interval] over seeds; random: mean of draws."""
    res = _tables(tables, "results")
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
    """Downstream accuracy after pruning, in percent: ResNet top-1 on held-out digits, Transformer
    next-token accuracy on held-out text; mean [95 % t-interval] over seeds."""
    res = _tables(tables, "results")
    t = _per_k(res, "accuracy", scale=100.0, fmt=".1f")
    task = res.drop_duplicates("model").set_index("model")["family"].map(
        {"transformer": "next-token accuracy pct", "resnet": "top-1 accuracy pct"})
    t.insert(1, "task", t["model"].map(task))
    return t.rename(columns={"pruned": "no healing [CI95]", "healed": "healed [CI95]"})


def t4(tables) -> pd.DataFrame:
    """Rank stability of every method's layer ranking: Kendall tau, mean [min, max] over compared
    pairs, and mean top-k overlap (k = 1..K) across training seeds, calibration subsets and training
    checkpoints (each earlier checkpoint vs the final model); plus scoring cost (extra forward /
    backward passes over calibration batches, seconds on one CPU thread). 'by construction': the
    method's ranking cannot vary there (no calibration data, or a fixed order); it is not a result."""
    stab = _tables(tables, "stability_summary")
    cost = _tables(tables, "cost")
    res = _tables(tables, "results")
    rows = []
    for model in _models(res):
        for m in pr.METHODS:
            row = {"model": model, "method": m}
            for context in pr.CONTEXTS:
                hit = stab[(stab["model"] == model) & (stab["method"] == m) & (stab["context"] == context)]
                col = f"tau {context} [min, max]"
                if hit.empty:
                    row[col] = row[f"overlap {context}"] = "n/a"
                    continue
                h = hit.iloc[0]
                tau = _ci(h["tau_mean"], h["tau_min"], h["tau_max"], ".2f")
                row[col] = f"{tau} (by construction)" if bool(h["by_construction"]) else tau
                row[f"overlap {context}"] = f"{h['overlap_mean']:.2f}"
            c = cost[(cost["model"] == model) & (cost["method"] == m)]
            if not c.empty:
                c = c.iloc[0]
                row.update({"forward passes": f"{c['forward_passes']:.0f}",
                            "backward passes": f"{c['backward_passes']:.0f}",
                            "scoring seconds": f"{c['seconds']:.3g}", "needs": c["needs"]})
            rows.append(row)
    return pd.DataFrame(rows)


# ---- claims -------------------------------------------------------------------------------------

C9_RULE = ("Transformer runs, CascadeFlow ranked by A. For each heuristic (bi, angular, taylor, magnitude, random, "
           "last) and each stage (no healing, healed): the per-seed mean held-out loss (log-perplexity) over "
           "k = 1..B/2, CascadeFlow minus the heuristic, paired over seeds with a 95 % t-interval. Better = the "
           "interval lies below 0. Holds if better in every comparison; mixed if better in some; does not hold "
           "if in none; inconclusive if a comparison has no interval. The greedy ablation oracle is reported, "
           "not a heuristic to beat.")
C10_RULE = ("Kendall tau of the layer ranking, CascadeFlow (A) minus each model-dependent heuristic (bi, angular, "
            "taylor, magnitude), paired over the compared pairs with a 95 % t-interval, across training seeds "
            "(every pair of seeds) and across checkpoints (each earlier checkpoint vs the final model), for every "
            "pruned model. Better = the interval lies above 0. Holds if better in every comparison; mixed if "
            "better in some; does not hold if in none; inconclusive if a comparison has no interval (one pair). "
            "Not counted: "
            "calibration subsets (CascadeFlow uses no calibration data, tau = 1 by construction), last-k (one "
            "fixed order, tau = 1 by construction) and random (fresh draws, the chance floor).")
C11_RULE = (f"At every pruned model, k = 1..B/2 and stage (no healing, healed): CascadeFlow's (A) mean accuracy over "
            f"seeds (ResNet top-1, Transformer next-token) minus that of the heuristic with the highest mean "
            f"accuracy there. Competitive = the difference is at least -{100 * ACC_TOLERANCE:g} accuracy points. "
            f"Holds if competitive everywhere; mixed if somewhere; does not hold if nowhere; inconclusive if "
            f"no comparison is defined.")


def _comparisons(tables) -> pd.DataFrame | None:
    return _tables(tables, "comparisons")


def _finite_ci(d: pd.DataFrame) -> pd.Series:
    return np.isfinite(d[["estimate", "ci_low", "ci_high"]].to_numpy(float)).all(axis=1)


def c9_verdict(comp: pd.DataFrame) -> tuple[str, str]:
    """(measured text, verdict) of C9 from the study's ``comparisons`` rows (:data:`C9_RULE`)."""
    d = comp[(comp["quantity"] == "loss") & (comp["family"] == "transformer")]
    rivals = d[d["method"].isin(pr.HEURISTICS)]
    if rivals.empty:
        return "no Transformer comparisons", UNDEFINED
    ok = _finite_ci(rivals)
    better = ok & (rivals["ci_high"] < 0)
    worse = ok & (rivals["ci_low"] > 0)
    parts = []
    for (model, stage), g in d.groupby(["model", "stage"], sort=False):
        items = [f"{r.method} x{np.exp(r.estimate):.3f} [{np.exp(r.ci_low):.3f}, {np.exp(r.ci_high):.3f}]"
                 if np.isfinite(r.ci_low) else f"{r.method} x{np.exp(r.estimate):.3f}"
                 for r in g.itertuples() if r.method in (*pr.HEURISTICS, pr.ORACLE)]
        parts.append(f"{model}, {'no healing' if stage == 'pruned' else 'healed'}: " + ", ".join(items))
    text = ("CascadeFlow's perplexity (geometric mean over k) relative to each method: " + "; ".join(parts)
            + f". Better with CI in {int(better.sum())} of {len(rivals)} heuristic comparisons, worse with CI in "
              f"{int(worse.sum())}")
    if not ok.all():
        return text, UNDEFINED
    if better.all():
        return text, HOLDS
    return text, MIXED if better.any() else FAILS


def c10_verdict(comp: pd.DataFrame) -> tuple[str, str]:
    """(measured text, verdict) of C10 from the ``comparisons`` rows (:data:`C10_RULE`)."""
    tau = comp[comp["quantity"] == "tau"]
    d = tau[tau["context"].isin(STABILITY_CONTEXTS) & tau["method"].isin(STABILITY_RIVALS) & ~tau["by_construction"]]
    ok = _finite_ci(d)
    better = ok & (d["ci_low"] > 0)
    worse = ok & (d["ci_high"] < 0)
    parts = []
    for (model, context), g in d.groupby(["model", "context"], sort=False):
        items = [f"{r.method} {r.estimate:+.2f}" + (f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if np.isfinite(r.ci_low)
                                                    else "") for r in g.itertuples()]
        parts.append(f"{model} across {context}: " + ", ".join(items))
    absent = [c for c in STABILITY_CONTEXTS if c not in set(d["context"])]
    text = ("Kendall tau, CascadeFlow minus: " + ("; ".join(parts) if parts else "no comparison")
            + f". Better with CI in {int(better.sum())} of {len(d)} comparisons, worse with CI in "
              f"{int(worse.sum())}"
            + (f"; not measured here: {', '.join(absent)}" if absent else "")
            + ". Calibration subsets are not counted: CascadeFlow's ranking uses no calibration data, so it is "
              "identical across them by construction")
    if d.empty or not ok.all():
        return text, UNDEFINED
    if better.all():
        return text, HOLDS
    return text, MIXED if better.any() else FAILS


def c11_verdict(comp: pd.DataFrame) -> tuple[str, str]:
    """(measured text, verdict) of C11 from the ``comparisons`` rows (:data:`C11_RULE`)."""
    d = comp[comp["quantity"] == "accuracy_vs_best"]
    d = d[np.isfinite(d["estimate"].to_numpy(float))]
    if d.empty:
        return "no accuracy comparison", UNDEFINED
    competitive = d["estimate"] >= -ACC_TOLERANCE
    parts = []
    for model, g in d.groupby("model", sort=False):
        worst = g.loc[g["estimate"].idxmin()]
        parts.append(f"{model}: competitive at {int((g['estimate'] >= -ACC_TOLERANCE).sum())} of {len(g)} (k, stage); "
                     f"largest shortfall {100 * worst['estimate']:+.1f} points vs {worst['method']} at k = "
                     f"{int(worst['k'])} ({'no healing' if worst['stage'] == 'pruned' else 'healed'})")
    text = "; ".join(parts)
    if competitive.all():
        return text, HOLDS
    return text, MIXED if competitive.any() else FAILS


def _measure(verdict):
    def measure(tables) -> tuple[str, str]:
        comp = _comparisons(tables)
        if comp is None or comp.empty:
            return "no comparisons in the pruning study", UNDEFINED
        return verdict(comp)
    return measure


CLAIMS = [
    Claim("C9", "CascadeFlow Pruning (remove the blocks with the smallest accumulated training gradient) outperforms "
                "standard pruning heuristics on perplexity.", C9_RULE, "F8, T2", (STUDY,), _measure(c9_verdict)),
    Claim("C10", "CascadeFlow Pruning outperforms standard heuristics on rank stability.", C10_RULE, "T4", (STUDY,),
          _measure(c10_verdict)),
    Claim("C11", "CascadeFlow Pruning stays competitive on downstream accuracy.", C11_RULE, "T3", (STUDY,),
          _measure(c11_verdict)),
]


def register(OUTPUTS: dict, Output) -> None:
    """Add T1 and claim C8 (CascadeFormer), the full F8, T2-T4 and claims C9-C11 to ``OUTPUTS``."""
    ec.register(OUTPUTS, Output)
    OUTPUTS["F8"] = Output("F8", "figure",
                           "CascadeFormer vs uniform; CascadeFlow Pruning: perplexity vs blocks removed",
                           (cf.NAME, STUDY), f8)
    OUTPUTS["T2"] = Output("T2", "table", "Pruning: held-out perplexity (ResNet: loss) at each k, every method, "
                                          "without and with healing", (STUDY,), t2)
    OUTPUTS["T3"] = Output("T3", "table", "Pruning: downstream accuracy (ResNet top-1, Transformer next-token)",
                           (STUDY,), t3)
    OUTPUTS["T4"] = Output("T4", "table", "Pruning: rank stability (Kendall tau, mean [min, max] over compared "
                                          "pairs, and mean top-k overlap) across seeds, calibration subsets and "
                                          "checkpoints; scoring cost", (STUDY,), t4)
    for claim in CLAIMS:
        register_claim(claim)
