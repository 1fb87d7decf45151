"""One plotting function per figure panel: each takes ``ax=None``, draws, and returns ``ax``.

Inputs are the tidy tables the studies write (``results/studies/<profile>/<study>/*.csv``);
nothing here computes a result. Confidence bands are 95% t-intervals over seeds.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import statsmodels.formula.api as smf  # noqa: E402

from gfa_theory.instrument.stats import mean_ci  # noqa: E402
from gfa_theory.theory.layout import Block, Layout  # noqa: E402
from gfa_theory.theory.path_counts import first_order  # noqa: E402
from gfa_theory.theory.symbolic import analyze, closed_form_profile  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
PALETTE = sns.color_palette("colorblind")


def _ax(ax):
    return ax if ax is not None else plt.subplots(figsize=(4.2, 3.2))[1]


def _band(ax, x, groups: pd.core.groupby.DataFrameGroupBy, col: str, label: str, color, marker="o", ls="-"):
    """Mean over seeds with a t-interval band, one point per x."""
    rows = [(k, *mean_ci(g[col])) for k, g in groups]
    xs = np.array([r[0] for r in rows], float)
    m, lo, hi = (np.array([r[i] for r in rows]) for i in (1, 2, 3))
    ax.plot(xs, m, marker=marker, ls=ls, color=color, label=label, ms=3.5, lw=1.4)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)
    return ax


# ---- F1: theory ------------------------------------------------------------------------------

def plot_fanin_theory(N: int = 24, ax=None):
    """F(i) of an N-branch stack: symbolic closed forms (lines) and autograd counts (points)."""
    ax = _ax(ax)
    i = np.arange(1, N + 1)
    for sup, color, label in (("final", PALETTE[0], "single head: $N-i+1$"),
                              ("all", PALETTE[1], "deep supervision: $(N-i+1)(N-i+2)/2$")):
        ax.plot(i, closed_form_profile(N, sup), color=color, lw=1.6, label=label)
        counted = first_order(Layout.sequential(N, sup)).fan_in
        ax.plot(i, counted, "o", color=color, ms=3.5, mfc="none", label=f"autograd count ({sup})")
    ax.set_yscale("log")
    ax.set_xlabel("branch index $i$ (depth)")
    ax.set_ylabel("fan-in $F(i)$ (first-order paths)")
    ax.set_title(f"Gradient fan-in, $N={N}$ branches")
    ax.legend(fontsize=7)
    return ax


def plot_repetition_theory(B: int = 6, repeats: Sequence[int] = (1, 2, 3), ax=None):
    """Parameter-group fan-in of a B-block Transformer whose last block is applied r times."""
    ax = _ax(ax)
    width = 0.8 / len(repeats)
    for k, r in enumerate(repeats):
        layout = Layout(tuple([Block(2)] * (B + r - 1)), (), (tuple(range(B, B + r)),) if r > 1 else ())
        fan = {row["block"]: row["fan_in"] for row in analyze(layout, max_order=1).to_dict()["blocks"]}
        symbolic = [fan[b] for b in range(1, B)] + [sum(fan[b] for b in range(B, B + r))]
        # autograd: block b sums its two branches; the shared group's probe sums its applications
        auto = first_order(layout)
        counted = [auto.fan_in[2 * b - 2] + auto.fan_in[2 * b - 1] for b in range(1, B)]
        counted.append(next(f for g, f in zip(auto.groups, auto.group_fan_in) if B in g))
        x = np.arange(1, B + 1) + (k - (len(repeats) - 1) / 2) * width
        ax.bar(x, symbolic, width=width, color=PALETTE[k], label=f"last block x{r}" if r > 1 else "baseline")
        ax.plot(x, counted, "k.", ms=4, label="autograd count" if k == 0 else None)
    ax.set_xlabel("unique block (parameter group)")
    ax.set_ylabel("group fan-in $F(P)$")
    ax.set_title("Shared repetition raises late fan-in")
    ax.legend(fontsize=7)
    return ax


# ---- F2-F4: accumulated gradients vs fan-in ----------------------------------------------------

def plot_gradient_profile(units: pd.DataFrame, family: str, supervision: str, quantity: str = "A_norm",
                          fan: str = "F_norm", ax=None):
    """Normalized accumulated gradient per block vs relative depth, one curve per network depth,
    with the normalized fan-in of the same network dashed."""
    ax = _ax(ax)
    d = units[(units.family == family) & (units.supervision == supervision)]
    for k, (B, g) in enumerate(sorted(d.groupby("depth_B"), key=lambda kv: kv[0])):
        color = PALETTE[k % len(PALETTE)]
        _band(ax, None, g.groupby("depth"), quantity, f"A, {B} blocks", color)
        f = g.groupby("depth")[fan].mean()
        ax.plot(f.index, f.values, ls="--", color=color, lw=1, label=f"F, {B} blocks")
    ax.set_xlabel("relative depth of the block (0 = first, 1 = last)")
    ax.set_ylabel("value / mean over blocks")
    what = {"A_norm": "accumulated gradient $A$", "A_rms_norm": "per-parameter RMS $A$"}.get(quantity, quantity)
    ax.set_title(f"{family}, {'one head' if supervision == 'final' else 'deep supervision'}: {what}")
    ax.legend(fontsize=6, ncol=2)
    return ax


def plot_deep_supervision(units: pd.DataFrame, family: str = "transformer", ax=None):
    """Deep-supervision runs: normalized A against the quadratic and the linear fan-in."""
    ax = _ax(ax)
    d = units[(units.family == family) & (units.supervision == "all")].copy()
    d["F_linear_norm"] = d["F_linear"] / d.groupby("run_id")["F_linear"].transform("mean")
    B = d["depth_B"].max()
    g = d[d.depth_B == B]
    _band(ax, None, g.groupby("depth"), "A_norm", f"A (deep supervision, {B} blocks)", PALETTE[0])
    for col, color, label in (("F_norm", PALETTE[1], "quadratic $F$ (deep supervision)"),
                              ("F_linear_norm", PALETTE[2], "linear $F$ (single head)")):
        f = g.groupby("depth")[col].mean()
        ax.plot(f.index, f.values, ls="--", color=color, lw=1.2, label=label)
    ax.set_xlabel("relative depth of the block")
    ax.set_ylabel("value / mean over blocks")
    ax.set_title(f"{family}: deep supervision")
    ax.legend(fontsize=7)
    return ax


# ---- F5: gradients vs importance ---------------------------------------------------------------

def plot_importance_vs_gradient(units: pd.DataFrame, family: str, ax=None):
    """Ablation importance (normalized within run) against normalized A, with the OLS fit."""
    ax = _ax(ax)
    d = units[units.family == family].dropna(subset=["A_norm", "imp_ablation_norm"])
    sns.scatterplot(data=d, x="A_norm", y="imp_ablation_norm", hue="depth_B", palette="viridis",
                    s=14, ax=ax, legend="full")
    fit = smf.ols("imp_ablation_norm ~ A_norm", data=d).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(d["run_id"])[0]})
    xs = np.linspace(d["A_norm"].min(), d["A_norm"].max(), 50)
    pred = fit.get_prediction(pd.DataFrame({"A_norm": xs})).summary_frame(alpha=0.05)
    ax.plot(xs, pred["mean"], color="k", lw=1.2,
            label=f"OLS slope {fit.params['A_norm']:.2f} [{fit.conf_int().loc['A_norm', 0]:.2f}, "
                  f"{fit.conf_int().loc['A_norm', 1]:.2f}]")
    ax.fill_between(xs, pred["mean_ci_lower"], pred["mean_ci_upper"], color="k", alpha=0.12, lw=0)
    ax.set_xlabel("accumulated gradient $A$ / mean over blocks")
    ax.set_ylabel("ablation importance / mean over blocks")
    ax.set_title(f"{family}: gradients vs importance")
    ax.legend(fontsize=6, title="blocks", title_fontsize=6)
    return ax


# ---- F6: equalization --------------------------------------------------------------------------

def plot_equalization(units: pd.DataFrame, optimizer: str, ax=None):
    """Share of ablation importance per block, baseline vs gradient-norm equalized."""
    ax = _ax(ax)
    d = units[units.optimizer == optimizer].copy()
    d["share"] = d["imp_ablation"].clip(lower=0) / d.groupby("run_id")["imp_ablation"].transform(
        lambda s: s.clip(lower=0).sum())
    for k, (inter, label) in enumerate((("none", "baseline"), ("equalize", "equalized gradient norms"))):
        _band(ax, None, d[d.intervention == inter].groupby("order"), "share", label, PALETTE[k])
    ax.set_yscale("symlog", linthresh=1e-2)  # the first block dominates; late blocks need resolution
    ax.set_xlabel("block")
    ax.set_ylabel("share of ablation importance (symlog)")
    ax.set_title(f"Gradient-norm equalization ({optimizer.upper() if optimizer == 'sgd' else 'AdamW'})")
    ax.legend(fontsize=7)
    return ax


# ---- F7: repetition ----------------------------------------------------------------------------

def plot_repetition(units: pd.DataFrame, ax=None):
    """Share of ablation importance per unique block for baseline, repeated and control models."""
    ax = _ax(ax)
    d = units.copy()
    d["share"] = d["imp_ablation"].clip(lower=0) / d.groupby("run_id")["imp_ablation"].transform(
        lambda s: s.clip(lower=0).sum())
    variants = sorted(d.variant.unique(), key=lambda v: (v != "baseline", v.startswith("control"), v))
    for k, v in enumerate(variants):
        ls = ":" if v.startswith("control") else "-"
        _band(ax, None, d[d.variant == v].groupby("order"), "share", v, PALETTE[k], ls=ls)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("unique block (the last one is shared in 'repeat')")
    ax.set_ylabel("share of ablation importance (symlog)")
    ax.set_title("Parameter-shared repetition")
    ax.legend(fontsize=7)
    return ax


def plot_repetition_fanin(units: pd.DataFrame, ax=None):
    """Fan-in share of each unique block per variant (what the structure predicts)."""
    ax = _ax(ax)
    d = units.drop_duplicates(["variant", "order"]).copy()
    d["F_share"] = d["F"] / d.groupby("variant")["F"].transform("sum")
    sns.barplot(data=d, x="order", y="F_share", hue="variant", ax=ax, palette="colorblind")
    ax.set_xlabel("unique block")
    ax.set_ylabel("share of group fan-in $F(P)$")
    ax.set_title("Fan-in of each parameter group")
    ax.legend(fontsize=6)
    return ax
