"""Builders of F9-F11: the mechanism study (beyond the paper: counts, gains, stream growth, rank).

* F9: per arm, the measured branch profile of ``A`` (mean over seeds, with its 95 % t-band) and
  each account's predicted profile, all normalized by their mean (a shape: 1 = the branch mean).
* F10: per arm and account, the scale-free log-profile error with its t-interval over seeds
  (gains averaged over training; the final model's gains as open markers).
* F11: what the rivals measure, per run: stream-RMS growth against the profile left unexplained by
  counts (H3), the mean branch gain over relative depth per arm, and the gradients' relative window
  rank against the exponent of ``A`` on ``F`` (H4).

Verdicts are not drawn here: :mod:`experiments.verdicts.mechanism` computes them from the same
tables; :func:`b1` lists them (rendered by :mod:`experiments.verdicts.render`).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from experiments import mechanism as mech
from experiments.verdicts import HYPOTHESES, judge_all, render
from gfa_theory.instrument.stats import mean_ci

from . import names

PALETTE = dict(zip(("A", *mech.ACCOUNTS), sns.color_palette("colorblind")))


def _panels(keys: list, ncols: int, w: float = 3.4, h: float = 2.8):
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig, axs = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    flat = list(axs.flat)
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    return fig, flat


def _arm_order(frame: pd.DataFrame) -> list[tuple[str, int]]:
    keys = frame[["arm", "depth_B"]].drop_duplicates()
    known = ["pre", *mech.ARMS, *mech.SETTINGS, "resnet_preact", "resnet_post"]
    rank = {a: k for k, a in enumerate(dict.fromkeys(known))}
    return sorted(map(tuple, keys.to_numpy()), key=lambda t: (rank.get(t[0], 99), t[1]))


def _label(arm: str, B: int) -> str:
    return f"{names.arm(arm)} (B={B})"


def profile_bands(units: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, depth, branch order, series): the mean over seeds of the normalized profile of A
    and of each account's prediction (training-mean gains), with the t-interval of A."""
    rows = []
    for (arm, B, order), g in units.groupby(["arm", "depth_B", "order"]):
        a = g["A"] / g["A_mean"]
        m, lo, hi = mean_ci(a)
        rows.append({"arm": arm, "depth_B": B, "depth": g["depth"].mean(), "series": "A", "mean": m, "lo": lo, "hi": hi})
        for acc in mech.ACCOUNTS:
            rows.append({"arm": arm, "depth_B": B, "depth": g["depth"].mean(), "series": acc,
                         "mean": g[f"pred_{acc}"].mean(), "lo": np.nan, "hi": np.nan})
    return pd.DataFrame(rows)


def f9(t):
    u = t[mech.NAME]["units"].copy()
    u["A_mean"] = u.groupby("run_id")["A"].transform("mean")
    bands = profile_bands(u)
    keys = _arm_order(bands)
    fig, axs = _panels(keys, 2)  # two columns: readable at README width
    for (arm, B), ax in zip(keys, axs):
        d = bands[(bands.arm == arm) & (bands.depth_B == B)]
        for s in ("A", *mech.ACCOUNTS):
            c = d[d.series == s].sort_values("depth")
            if s == "A":
                # a t-band can reach below 0 with few seeds: cut at a tenth of the mean on the log axis
                ax.fill_between(c.depth, np.maximum(c.lo, c["mean"] / 10), c.hi, color=PALETTE[s], alpha=0.25, lw=0)
                ax.plot(c.depth, c["mean"], "o-", color=PALETTE[s], ms=3, lw=1.6, label="measured $A$")
            else:
                ax.plot(c.depth, c["mean"], "--", color=PALETTE[s], lw=1.2, label=names.ACCOUNTS[s])
        ax.set_yscale("log")
        ax.set_title(_label(arm, B), fontsize=9)
        ax.set_xlabel("relative depth of the branch", fontsize=8)
        ax.set_ylabel("profile / branch mean", fontsize=8)
        ax.tick_params(labelsize=7)
    axs[0].legend(fontsize=6, loc="best")
    return fig


def error_bands(errors: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, depth, account, gains): mean log-profile error with its t-interval over seeds."""
    rows = [(arm, B, acc, src, *mean_ci(g["log_error"]), len(g))
            for (arm, B, acc, src), g in errors.groupby(["arm", "depth_B", "account", "gains"])]
    return pd.DataFrame(rows, columns=["arm", "depth_B", "account", "gains", "mean", "lo", "hi", "n"])


def f10(t):
    b = error_bands(t[mech.NAME]["errors"])
    keys = _arm_order(b)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(keys) + 1.5), 4.2))
    width = 0.8 / len(mech.ACCOUNTS)
    for k, acc in enumerate(mech.ACCOUNTS):
        for src, marker, fill in (("training", "o", True), ("final", "o", False)):
            d = b[(b.account == acc) & (b.gains == src)].set_index(["arm", "depth_B"])
            xs, ms, lo, hi = [], [], [], []
            for j, key in enumerate(keys):
                if key in d.index:
                    r = d.loc[key]
                    xs.append(j - 0.4 + (k + 0.5) * width + (0.06 if src == "final" else 0))
                    ms.append(r["mean"])
                    lo.append(r["mean"] - r["lo"] if np.isfinite(r["lo"]) else 0)
                    hi.append(r["hi"] - r["mean"] if np.isfinite(r["hi"]) else 0)
            if acc == "counts" and src == "final":
                continue  # counts have no gains: one marker
            ax.errorbar(xs, ms, yerr=[lo, hi], fmt=marker, ms=4, capsize=2, lw=1, color=PALETTE[acc],
                        mfc=PALETTE[acc] if fill else "none",
                        label=names.ACCOUNTS[acc] + ("" if fill else " (final-model gains)"))
    ax.set_xticks(range(len(keys)), [_label(*k) for k in keys], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("log-profile error (RMS over branches)", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # off the data and the ticks
    ax.grid(axis="y", alpha=0.3)
    return fig


def f11(t):
    tabs = t[mech.NAME]
    runs = tabs["runs"][tabs["runs"]["family"] == "transformer"]
    units = tabs["units"][tabs["units"]["family"] == "transformer"]
    fig, axs = plt.subplots(3, 1, figsize=(7.5, 10.2))  # stacked: readable at README width
    order = [a for a, _ in _arm_order(runs)]
    hue_order = [names.arm(a) for a in dict.fromkeys(order)]
    runs = runs.assign(arm=runs["arm"].map(names.arm), blocks=runs["depth_B"])  # legend titles in words
    sns.scatterplot(data=runs, x="stream_growth", y="excess_slope", hue="arm", hue_order=hue_order, style="blocks",
                    ax=axs[0], s=30, palette="tab10")
    axs[0].axhline(0, color="0.6", lw=0.8)
    axs[0].set_xlabel("stream growth: log-slope of RMS($x$) over depth", fontsize=8)
    axs[0].set_ylabel("log-slope of $A / F$ over depth", fontsize=8)
    axs[0].set_title("H3: stream growth vs what counts leave", fontsize=9)
    g = (units.groupby(["arm", "depth_B", "order"]).agg(depth=("depth", "mean"), gain=("jacobian_gain", "mean"))
         .reset_index())
    g["label"] = g["arm"].map(names.arm) + " B=" + g["depth_B"].astype(str)
    sns.lineplot(data=g, x="depth", y="gain", hue="label", ax=axs[1], lw=1, palette="tab20", legend="brief")
    axs[1].set_yscale("log")
    axs[1].set_xlabel("relative depth of the branch", fontsize=8)
    axs[1].set_ylabel("branch Jacobian gain $g$ (training mean)", fontsize=8)
    axs[1].set_title("Measured gains per arm", fontsize=9)
    sns.scatterplot(data=runs, x="mean_window_relative_rank", y="exponent", hue="arm", hue_order=hue_order,
                    style="blocks", ax=axs[2], s=30, palette="tab10", legend=False)
    for y, name in ((1.0, "aligned: $A \\propto F$"), (0.5, "orthogonal: $A \\propto \\sqrt{F}$")):
        axs[2].axhline(y, color="0.6", lw=0.8, ls=":")
        axs[2].text(axs[2].get_xlim()[0], y, name, fontsize=6, va="bottom", color="0.4")
    axs[2].set_xlabel("relative window effective rank of block gradients", fontsize=8)
    axs[2].set_ylabel("within-run exponent of $A$ on $F$", fontsize=8)
    for ax in axs[:2]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axs[2].set_title("H4: gradient rank vs agreement with counts (colours and markers as in the top panel)", fontsize=9)
    for ax in axs:
        ax.tick_params(labelsize=7)
    return fig


def b1(tables: dict) -> pd.DataFrame:
    """Output B1: the mechanism study's hypotheses H1-H5, their verdicts, primary estimates and why."""
    rules = tuple(r for r in HYPOTHESES if mech.NAME in r.studies)
    return render.summary_table(judge_all(tables, rules=rules)).replace(r"\*\*(.*)\*\*", r"\1", regex=True)
