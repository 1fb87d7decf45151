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
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from experiments import prediction as pred

from . import names

ACCOUNT, NORMS = "product", "with_norms"
DRAWN_WINDOWS = ("init", "1%", "5%", "25%", "training")


def _arms(frame: pd.DataFrame) -> list[str]:
    return [a for a in (*pred.ARMS, pred.RESNET_ARM) if (frame["arm"] == a).any()]


def _log_ticks(ax) -> None:
    """Plain labels on a log axis (the minor ticks unlabelled: a profile spans less than a decade)."""
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def f14(t):
    tabs = t[pred.NAME]
    prof, summary = tabs["profiles"], tabs["summary"]
    arms = _arms(prof)
    colors = dict(zip(arms, sns.color_palette("colorblind", len(arms))))
    ncols = 4
    nrows = max(2, -(-len(arms) // ncols))
    cells = [f"a{k}" for k in range(nrows * ncols)]
    mosaic = [[*cells[r * ncols:(r + 1) * ncols], ".", "E"] for r in range(nrows)]
    fig, axd = plt.subplot_mosaic(mosaic, figsize=(16, 2.9 * nrows + 0.4),
                                  width_ratios=[1] * ncols + [0.25, 2.2])
    for k, arm in enumerate(arms):
        ax = axd[cells[k]]
        d = prof[prof["arm"] == arm]
        early = d[d["prediction"] == "early"].sort_values("order")
        train = d[d["prediction"] == "training"].sort_values("order")
        ax.plot(early["depth"], early["A_norm"], "o-", color="black", ms=2.5, lw=1.5, label="trained $A$")
        ax.plot(early["depth"], early["pred_norm"], "--", color=colors[arm], lw=1.4,
                label="predicted: best early window\n(full product, norm gains)")
        ax.plot(train["depth"], train["pred_norm"], ":", color="0.45", lw=1.3, label="predicted: gains averaged\nover training")
        ax.set_yscale("log")
        _log_ticks(ax)
        ax.set_title(f"{names.arm(arm)}\ngains: {names.window(early['window'].iat[0])}", fontsize=8)
        ax.tick_params(labelsize=7)
        if k % ncols == 0:
            ax.set_ylabel("profile / its mean", fontsize=8)
        if k + ncols >= len(arms):
            ax.set_xlabel("relative depth of the branch", fontsize=7)
    handles = [Line2D([], [], color="black", marker="o", ms=2.5, lw=1.5),
               Line2D([], [], color="0.2", ls="--", lw=1.4), Line2D([], [], color="0.45", ls=":", lw=1.3)]
    labels = ["trained $A$ (mean over seeds)", "predicted: best early window\n(full product, norm gains;\ncolour: the arm's)",
              "predicted: gains averaged\nover training"]
    for k in range(len(arms), len(cells)):
        axd[cells[k]].set_axis_off()
    if len(arms) < len(cells):  # the legend fills the first empty small-multiple cell
        axd[cells[len(arms)]].legend(handles, labels, fontsize=7, loc="center", frameon=False)
    else:
        axd[cells[0]].legend(handles, labels, fontsize=6, loc="best")
    ax = axd["E"]
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
    ax.set_xticks(xs, [names.window(w) for w in DRAWN_WINDOWS], fontsize=7)
    ax.set_ylabel("log-profile error (full product, norm gains)", fontsize=8)
    ax.set_xlabel("window the gains were measured in", fontsize=8)
    ax.set_title("error vs how early the gains were measured (t-intervals over seeds)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
