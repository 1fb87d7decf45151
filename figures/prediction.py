"""Builder of F14: the prediction study (beyond the paper: the profile of A before training).

* left, one panel per arm: the trained profile of ``A`` (mean over seeds, normalized by its mean)
  and the product account with norm gains fed with the arm's best early window (the study's
  ``profiles`` table picks it) and with the training-averaged gains;
* right: that account's profile error against the window its gains were measured in, one line
  per arm, with the t-intervals over seeds of the study's ``summary`` rows.

Verdicts (H6, H7) are not drawn here: :mod:`experiments.verdicts.prediction` computes them.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.gridspec import GridSpec

from experiments import prediction as pred

from . import names

ACCOUNT, NORMS = "product", "with_norms"
DRAWN_WINDOWS = ("init", "1%", "5%", "25%", "training")


def _arms(frame: pd.DataFrame) -> list[str]:
    return [a for a in (*pred.ARMS, pred.RESNET_ARM) if (frame["arm"] == a).any()]


def f14(t):
    tabs = t[pred.NAME]
    prof, summary = tabs["profiles"], tabs["summary"]
    arms = _arms(prof)
    colors = dict(zip(arms, sns.color_palette("colorblind", len(arms))))
    ncols = 4
    nrows = max(2, -(-len(arms) // ncols))
    fig = plt.figure(figsize=(15.5, 2.7 * nrows + 0.6))
    gs = GridSpec(nrows, ncols + 3, figure=fig, wspace=0.45, hspace=0.55)
    for k, arm in enumerate(arms):
        ax = fig.add_subplot(gs[k // ncols, k % ncols])
        d = prof[prof["arm"] == arm]
        early = d[d["prediction"] == "early"].sort_values("order")
        train = d[d["prediction"] == "training"].sort_values("order")
        ax.plot(early["depth"], early["A_norm"], "o-", color="black", ms=2.5, lw=1.5, label="trained $A$")
        ax.plot(early["depth"], early["pred_norm"], "--", color=colors[arm], lw=1.4,
                label="predicted, best early window")
        ax.plot(train["depth"], train["pred_norm"], ":", color="0.5", lw=1.2, label="predicted, training-averaged")
        ax.set_yscale("log")
        ax.set_title(f"{names.arm(arm)} (gains: {names.window(early['window'].iat[0])})", fontsize=8)
        ax.tick_params(labelsize=7)
        if k % ncols == 0:
            ax.set_ylabel("profile / mean", fontsize=8)
        if k // ncols == nrows - 1 or k + ncols >= len(arms):
            ax.set_xlabel("relative depth of the branch", fontsize=7)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    spare = len(arms) % ncols
    if spare:  # the legend fills the first empty small-multiple cell
        lax = fig.add_subplot(gs[len(arms) // ncols, spare])
        lax.set_axis_off()
        lax.legend(handles, labels, fontsize=7, loc="center", frameon=False)
    else:
        fig.axes[0].legend(fontsize=6, loc="best")
    ax = fig.add_subplot(gs[:, ncols:])
    rows = summary[(summary["quantity"] == ACCOUNT) & (summary["subset"] == NORMS)]
    xs = np.arange(len(DRAWN_WINDOWS))
    width = 0.5 / max(1, len(arms))
    for j, arm in enumerate(arms):
        d = rows[rows["arm"] == arm].set_index("setting").reindex(list(DRAWN_WINDOWS))
        m = d["estimate"].to_numpy(float)
        lo = np.where(np.isfinite(d["ci_low"]), m - d["ci_low"], 0.0)
        hi = np.where(np.isfinite(d["ci_high"]), d["ci_high"] - m, 0.0)
        ax.errorbar(xs - 0.25 + (j + 0.5) * width, m, yerr=[lo, hi], fmt="o-", ms=3.5, lw=1.2, capsize=2,
                    color=colors[arm], label=names.arm(arm))
    ax.set_xticks(xs, [names.window(w) for w in DRAWN_WINDOWS], fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("log-profile error of the full product with norm gains", fontsize=8)
    ax.set_xlabel("gains measured over", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
