"""One plotting function per figure panel: each takes finished numbers and ``ax=None``, draws,
and returns ``ax``.

Nothing here computes a result: the builders (:mod:`figures.gfa`, :mod:`figures.efficiency`)
read the study tables and compute every curve, band, fit and path count (bands are 95 %
t-intervals over seeds); these functions only lay them out, label and colour them.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
PALETTE = sns.color_palette("colorblind")

from . import names  # noqa: E402

# pruning methods: CascadeFlow bold, the oracle black dashed, the chance floor grey
METHOD_STYLE = {
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
# taper schedules: colour and marker order of the tapered families, uniform dark grey
TAPER_FAMILIES = ("linear", "fanin", "cosine", "step", "inverse", "narrow", "measured")
TAPER_MARKERS = {"uniform": "s", "linear": "o", "fanin": "D", "cosine": "^", "step": "v", "inverse": "<",
                 "narrow": "P", "measured": "X"}


def _ax(ax):
    return ax if ax is not None else plt.subplots(figsize=(4.2, 3.2))[1]


def _band(ax, band: pd.DataFrame, label: str, color, marker="o", ls="-"):
    """A mean line with its interval band; ``band`` has columns x, mean, lo, hi (one row per x)."""
    xs = band["x"].to_numpy(float)
    ax.plot(xs, band["mean"].to_numpy(float), marker=marker, ls=ls, color=color, label=label, ms=3.5, lw=1.4)
    ax.fill_between(xs, band["lo"].to_numpy(float), band["hi"].to_numpy(float), color=color, alpha=0.2, lw=0)
    return ax


def plot_note(text: str, ax=None):
    """A panel whose data is missing: the reason, centred, no axes."""
    ax = _ax(ax)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
    ax.set_axis_off()
    return ax


# ---- F1: theory ------------------------------------------------------------------------------

def plot_fanin_theory(profiles: pd.DataFrame, ax=None):
    """F(i) of an N-branch stack: symbolic closed forms (lines) and autograd counts (points).
    ``profiles``: columns supervision (final, all), i, closed, counted."""
    ax = _ax(ax)
    N = int(profiles["i"].max())
    for sup, color, label in (("final", PALETTE[0], "single head: $N-i+1$"),
                              ("all", PALETTE[1], "deep supervision: $(N-i+1)(N-i+2)/2$")):
        p = profiles[profiles.supervision == sup]
        ax.plot(p["i"].to_numpy(), p["closed"].to_numpy(), color=color, lw=1.6, label=label)
        ax.plot(p["i"].to_numpy(), p["counted"].to_numpy(), "o", color=color, ms=3.5, mfc="none",
                label=f"autograd count ({sup})")
    ax.set_yscale("log")
    ax.set_xlabel("branch index $i$ (depth)")
    ax.set_ylabel("fan-in $F(i)$ (first-order paths)")
    ax.set_title(f"Gradient fan-in, $N={N}$ branches")
    ax.legend(fontsize=7)
    return ax


def plot_repetition_theory(groups: pd.DataFrame, ax=None):
    """Parameter-group fan-in of a B-block Transformer whose last block is applied r times, one
    bar group per r. ``groups``: columns r, block, symbolic, counted."""
    ax = _ax(ax)
    repeats = list(dict.fromkeys(groups["r"]))
    width = 0.8 / len(repeats)
    for k, r in enumerate(repeats):
        g = groups[groups.r == r]
        x = g["block"].to_numpy() + (k - (len(repeats) - 1) / 2) * width
        ax.bar(x, g["symbolic"].to_numpy(), width=width, color=PALETTE[k],
               label=f"last block x{r}" if r > 1 else "baseline")
        ax.plot(x, g["counted"].to_numpy(), "k.", ms=4, label="autograd count" if k == 0 else None)
    ax.set_xlabel("unique block (parameter group)")
    ax.set_ylabel("group fan-in $F(P)$")
    ax.set_title("Shared repetition raises late fan-in")
    ax.legend(fontsize=7)
    return ax


# ---- F2-F4: accumulated gradients vs fan-in ----------------------------------------------------

def plot_gradient_profile(curves: pd.DataFrame, family: str, supervision: str, quantity: str = "A_norm", ax=None):
    """Normalized accumulated gradient per block vs relative depth, one curve per network depth,
    with the normalized fan-in of the same network dashed. ``curves``: columns depth_B, x (relative
    depth), mean, lo, hi (the band of ``quantity``) and fan (mean normalized fan-in)."""
    ax = _ax(ax)
    for k, (B, g) in enumerate(curves.groupby("depth_B")):
        color = PALETTE[k % len(PALETTE)]
        _band(ax, g, f"A, {B} blocks", color)
        ax.plot(g["x"].to_numpy(float), g["fan"].to_numpy(float), ls="--", color=color, lw=1, label=f"F, {B} blocks")
    ax.set_xlabel("relative depth of the block (0 = first, 1 = last)")
    ax.set_ylabel("value / mean over blocks")
    what = {"A_norm": "accumulated gradient $A$", "A_rms_norm": "per-parameter RMS $A$"}.get(quantity, quantity)
    ax.set_title(f"{family}, {'one head' if supervision == 'final' else 'deep supervision'}: {what}")
    ax.legend(fontsize=6, ncol=2)
    return ax


def plot_deep_supervision(band: pd.DataFrame, fans: pd.DataFrame, B: int, family: str = "transformer", ax=None):
    """Deep-supervision runs of ``B`` blocks: normalized A (``band``: x, mean, lo, hi) against the
    quadratic and the linear fan-in (``fans``: x, F_norm, F_linear_norm)."""
    ax = _ax(ax)
    _band(ax, band, f"A (deep supervision, {B} blocks)", PALETTE[0])
    for col, color, label in (("F_norm", PALETTE[1], "quadratic $F$ (deep supervision)"),
                              ("F_linear_norm", PALETTE[2], "linear $F$ (single head)")):
        ax.plot(fans["x"].to_numpy(float), fans[col].to_numpy(float), ls="--", color=color, lw=1.2, label=label)
    ax.set_xlabel("relative depth of the block")
    ax.set_ylabel("value / mean over blocks")
    ax.set_title(f"{family}: deep supervision")
    ax.legend(fontsize=7)
    return ax


# ---- F5: gradients vs importance ---------------------------------------------------------------

def plot_importance_vs_gradient(points: pd.DataFrame, line: pd.DataFrame, slope: str, family: str, ax=None):
    """Ablation importance (normalized within run) against normalized A, one point per block
    (``points``: A_norm, imp_ablation_norm, depth_B), with the study's slope as a line (``line``:
    x, mean) and, formatted, in the legend (``slope``)."""
    ax = _ax(ax)
    sns.scatterplot(data=points, x="A_norm", y="imp_ablation_norm", hue="depth_B", palette="viridis",
                    s=14, ax=ax, legend="full")
    if len(line):
        ax.plot(line["x"], line["mean"], color="k", lw=1.2,
                label=f"C5's slope, depth-controlled:\n{slope}")
    ax.set_xlabel("accumulated gradient $A$ / mean over blocks")
    ax.set_ylabel("ablation importance / mean over blocks")
    ax.set_title(f"{family}: gradients vs importance")
    ax.legend(fontsize=6, title="blocks", title_fontsize=6)
    return ax


# ---- F6, F7: equalization and repetition -------------------------------------------------------

def plot_importance_shares(bands: list[tuple[str, pd.DataFrame]], xlabel: str, title: str, ax=None):
    """Share of ablation importance per block, one band per variant (``bands``: (label, x/mean/lo/hi
    frame)); compute-matched controls (labels starting ``control``) dotted. Symlog: the first block
    dominates and the late blocks need resolution."""
    ax = _ax(ax)
    for k, (label, band) in enumerate(bands):
        _band(ax, band, label, PALETTE[k], ls=":" if label.startswith("control") else "-")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of ablation importance (symlog)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax


def plot_repetition_fanin(shares: pd.DataFrame, ax=None):
    """Fan-in share of each unique block per variant (``shares``: order, F_share, variant), what
    the structure predicts."""
    ax = _ax(ax)
    sns.barplot(data=shares, x="order", y="F_share", hue="variant", ax=ax, palette="colorblind")
    ax.set_xlabel("unique block")
    ax.set_ylabel("share of group fan-in $F(P)$")
    ax.set_title("Fan-in of each parameter group")
    ax.legend(fontsize=6)
    return ax


# ---- F8: CascadeFormer -------------------------------------------------------------------------

def _taper_color(schedule: str):
    return "0.25" if schedule == "uniform" else PALETTE[TAPER_FAMILIES.index(schedule) % len(PALETTE)]


def plot_cascade_tradeoff(summary: pd.DataFrame, margin_pct: float, paper_throughput: float, aa_band=None, ax=None):
    """Perplexity change vs throughput ratio against the full uniform model, one point per arm of
    the main comparison (error bars: 95 % paired CI and IQR); hollow markers: the same arms in the
    token sweep (longer training), joined to their main point; the A/A control's throughput IQR
    shaded (a ratio inside it is timing noise); the paper's result and the margin dashed."""
    ax = _ax(ax)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(1, color="0.6", lw=0.8)
    if aa_band is not None and np.isfinite(aa_band).all():
        ax.axvspan(*aa_band, color="0.85", zorder=0, label="A/A timing IQR")
    ax.axhline(margin_pct, color="0.3", ls="--", lw=0.9, label=f"+{margin_pct:g} % margin")
    ax.axvline(paper_throughput, color="0.3", ls=":", lw=0.9)
    ax.plot([paper_throughput], [0], marker="*", ms=11, color="gold", mec="k", ls="none",
            label="paper: +9.4 % throughput")
    main_steps = summary["steps"].min()
    sweep_steps = sorted(int(v) for v in summary.loc[summary["steps"] != main_steps, "steps"].unique())
    for _, r in summary[summary["steps"] == main_steps].iterrows():
        sched = r["schedule"]
        x, y = r["throughput_ratio"], r["ppl_gap_pct"]
        xerr = [[abs(x - r["throughput_ratio_q25"])], [abs(r["throughput_ratio_q75"] - x)]]
        yerr = np.nan_to_num([[abs(y - r["ppl_gap_pct_ci_low"])], [abs(r["ppl_gap_pct_ci_high"] - y)]])
        c = _taper_color(sched)
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, color=c, marker=TAPER_MARKERS.get(sched, "o"), ms=5,
                    capsize=2, elinewidth=0.8, ls="none", label=f"{names.schedule(r['label'])} ({r['role']})")
        for _, t in summary[(summary["steps"] != main_steps) & (summary["label"] == r["label"])].iterrows():
            # the sweep point sits at its arm's main throughput (timed once): no text label, the
            # legend says what hollow markers are, so nothing overlaps
            ax.plot([x, x], [y, t["ppl_gap_pct"]], color=c, lw=0.7, ls=":")
            ax.plot([x], [t["ppl_gap_pct"]], marker=TAPER_MARKERS.get(sched, "o"), mfc="none", color=c, ms=6,
                    ls="none")
    if sweep_steps:
        ax.plot([], [], marker="o", mfc="none", color="0.3", ls=":", lw=0.7,
                label=f"same arm trained {', '.join(map(str, sweep_steps))} steps (token sweep)")
    ax.set_xlabel("throughput ratio vs full uniform (tokens/s, large batch)")
    ax.set_ylabel("perplexity change vs full uniform (%)")
    ax.set_title(f"Perplexity vs throughput ({int(main_steps)} training steps)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return ax


def plot_cascade_speed(tapered: pd.DataFrame, paper_latency: float, paper_throughput: float, ax=None):
    """Per arm (the main comparison without the full uniform model): perplexity relative to the
    full uniform (95 % CI) and to the narrow uniform model, and latency / throughput ratios of
    inference and of a training step (IQR), each with the A/A control's IQR as a grey band (one
    per quantity, drawn across the group); the paper's latency and throughput ratios dotted."""
    ax = _ax(ax)
    d = tapered
    x = np.arange(len(d))
    bars = [("perplexity vs uniform", 1 + d["ppl_gap_pct"] / 100, 1 + d["ppl_gap_pct_ci_low"] / 100,
             1 + d["ppl_gap_pct_ci_high"] / 100, None),
            ("perplexity vs narrow", 1 + d["ppl_gap_narrow_pct"] / 100, 1 + d["ppl_gap_narrow_pct_ci_low"] / 100,
             1 + d["ppl_gap_narrow_pct_ci_high"] / 100, None)]
    for mode, name in (("latency", "latency (batch 1)"), ("throughput", "throughput (batch)"),
                       ("train_latency", "train step latency (batch 1)"), ("train_throughput", "train throughput")):
        if f"{mode}_ratio" in d:
            bars.append((name, d[f"{mode}_ratio"], d[f"{mode}_ratio_q25"], d[f"{mode}_ratio_q75"], mode))
    w = 0.8 / len(bars)
    for k, (label, m, lo, hi, mode) in enumerate(bars):
        m, lo, hi = (np.asarray(v, float) for v in (m, lo, hi))
        err = np.nan_to_num(np.abs(np.vstack([m - lo, hi - m])))
        pos = x + (k - (len(bars) - 1) / 2) * w
        c = PALETTE[k % len(PALETTE)]
        ax.bar(pos, m, width=w, color=c, label=label, yerr=err, capsize=1.5, error_kw={"elinewidth": 0.7})
        if mode is not None and f"aa_{mode}_ratio_q25" in d:
            a25, a75 = d[f"aa_{mode}_ratio_q25"].iloc[0], d[f"aa_{mode}_ratio_q75"].iloc[0]
            for p in pos:
                ax.plot([p - w / 2, p + w / 2], [a25, a25], color="0.35", lw=0.6)
                ax.plot([p - w / 2, p + w / 2], [a75, a75], color="0.35", lw=0.6)
    ax.plot(x, d["params_ratio"], "k_", ms=14, mew=1.2, label="params (matched budget)")
    ax.axhline(1, color="0.3", lw=0.8)
    ax.axhline(paper_latency, color=PALETTE[2], ls=":", lw=1, label=f"paper latency {paper_latency:.3f}")
    ax.axhline(paper_throughput, color=PALETTE[3], ls=":", lw=1, label=f"paper throughput {paper_throughput:.3f}")
    top = max(float(np.nanmax(np.asarray(b[3], float))) for b in bars)
    ax.set_ylim(min(0.5, float(np.nanmin(d["params_ratio"])) - 0.05), 1.05 * top)
    ax.set_xticks(x, [f"{names.schedule(lab)}\n({role})" for lab, role in zip(d["label"], d["role"])], fontsize=7)
    ax.set_ylabel("ratio (grey ticks: A/A control IQR)")
    ax.set_title("Perplexity and speed per arm, vs full uniform")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return ax


# ---- F12: pruning ------------------------------------------------------------------------------

def _pruning_ylabel(metric: str, family: str, relative: bool) -> str:
    names = {"perplexity": "held-out perplexity", "loss": "held-out loss (nats)",
             "accuracy": "next-token accuracy" if family == "transformer" else "top-1 accuracy"}
    ratio = metric == "perplexity"
    if relative:
        return f"{names[metric]}\n/ unpruned model's" if ratio else f"{names[metric]}\n- unpruned model's"
    return names[metric] + (" (log scale)" if ratio else "")


def plot_pruning_curve(curves: pd.DataFrame, model: str, family: str, metric: str, depth_B: int,
                       stage: str = "pruned", heal_steps: int | None = None, relative: bool = False,
                       clip_random: bool = True, ax=None):
    """``metric`` against the number of removed blocks ``k``, one line per method with 95 %
    t-interval bars (``curves``: method, k, mean, lo, hi, the unpruned model at ``k = 0`` of every
    method). ``relative``: the values are each seed's over (perplexity) or minus (loss, accuracy)
    its unpruned model's. ``clip_random``: the y range follows the other methods and random (far
    worse) runs off the top, with its values written in the panel. Lines are nudged sideways so
    that methods removing the same blocks stay visible."""
    ax = _ax(ax)
    ratio = metric == "perplexity"
    methods = list(dict.fromkeys(curves["method"]))
    lows, highs = [], []
    for i, m in enumerate(methods):
        c = curves[curves.method == m]
        k, mean, lo, hi = (c[col].to_numpy(float) for col in ("k", "mean", "lo", "hi"))
        x = k + (i - (len(methods) - 1) / 2) * 0.035
        err = np.nan_to_num(np.abs(np.vstack([mean - lo, hi - mean])))
        if m == "random" and clip_random:
            err = None  # its values are written in the panel; its bars would span it
        # error bars, not bands: nine overlapping bands would hide every line
        ax.errorbar(x, mean, yerr=err, label=names.method(m), ms=4 if m != "ablation" else 6.5, capsize=1.5,
                    elinewidth=0.7, **METHOD_STYLE[m])
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
        ax.set_ylim(bottom - pad, top + 5 * pad)  # headroom for the line that names random's values
        if any(v > top + 5 * pad for kk, v in zip(*rand) if kk > 0):
            ax.text(0.02, 0.97, "random (runs off the top): " + ", ".join(
                f"k={int(kk)}: {v:.3g}" for kk, v in zip(*rand) if kk > 0),
                transform=ax.transAxes, ha="left", va="top", fontsize=6.5, color="0.35",
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5))
    ax.set_xticks(range(int(curves["k"].max()) + 1))
    ax.set_xlabel(f"blocks removed $k$ (of {depth_B})")
    ax.set_ylabel(_pruning_ylabel(metric, family, relative))
    what = "no healing" if stage == "pruned" else (f"healed ({heal_steps} AdamW steps)" if heal_steps else "healed")
    ax.set_title(f"Pruning, {model}: {what}")
    return ax


# ---- F7: equal-applications ablation -------------------------------------------------------------

def plot_joint_ablation(bands: list[tuple[str, pd.DataFrame]], ax=None):
    """Delta-loss (nats) of skipping the last m block applications together, one band per arm
    (``bands``: (label, x/mean/lo/hi frame), x = m); compute-matched controls dotted. Arms compare
    at equal m: each loses the same number of applications."""
    ax = _ax(ax)
    for k, (label, band) in enumerate(bands):
        _band(ax, band, label, PALETTE[k], ls=":" if "compute-matched" in label else "-")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xticks(sorted({int(x) for _, b in bands for x in b["x"]}))
    ax.set_xlabel("last m applications skipped together")
    ax.set_ylabel("delta-loss (nats)")
    ax.set_title("Equal-applications ablation")


def plot_arm_profiles(bands: list[tuple[str, pd.DataFrame]], ylabel: str, title: str, ax=None,
                      symlog: float | None = None, reference: float | None = None):
    """One per-block profile per arm of the equalization study (``bands``: (label, x/mean/lo/hi
    frame)); no-clip variants dashed, placebos dotted; ``symlog``: linear threshold of a symlog
    axis; ``reference``: a horizontal line (e.g. 1 for profiles normalized to their mean)."""
    ax = _ax(ax)
    if reference is not None:
        ax.axhline(reference, color="0.6", lw=0.8)
    for k, (label, band) in enumerate(bands):
        ls = ":" if "placebo" in label else "--" if "no-clip" in label else "-"
        _band(ax, band, label, PALETTE[k % len(PALETTE)], ls=ls)
    if symlog is not None:
        ax.set_yscale("symlog", linthresh=symlog)
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    return ax


# ---- F13: along scale --------------------------------------------------------------------------

def plot_along_scale(series: list[tuple[str, pd.DataFrame]], xlabel: str, ylabel: str, ref: float | None = None,
                     ax=None):
    """One statistic along one ladder: per series, the point means with their interval (columns x,
    mean, lo, hi), on a log x axis; ``ref``: a reference line (0 for a gap)."""
    ax = _ax(ax)
    for i, (label, band) in enumerate(series):
        xs, m = band["x"].to_numpy(float), band["mean"].to_numpy(float)
        err = np.vstack([m - band["lo"].to_numpy(float), band["hi"].to_numpy(float) - m])
        ax.errorbar(xs, m, yerr=np.nan_to_num(np.abs(err)), marker="o", ms=3.5, lw=1.2, capsize=2,
                    color=f"C{i}", label=label)
    if ref is not None:
        ax.axhline(ref, color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(series) > 1:
        ax.legend(fontsize=6)
    return ax
