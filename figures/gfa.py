"""Builders of F1-F7 and T5: the fan-in theory and the four GFA studies.

Each builder takes the study tables (``{study: {table: frame}}``), computes what its panels show
(fan-in and path counts from :mod:`gfa_theory.theory`, means with 95 % t-intervals over seeds,
the study's own slopes) and hands the finished numbers to :mod:`figures.plots`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.summary import pick
from gfa_theory.instrument.stats import format_interval, format_p, mean_ci
from gfa_theory.theory.layout import Block, Layout
from gfa_theory.theory.path_counts import first_order
from gfa_theory.theory.symbolic import analyze, closed_form_profile

from . import names, plots

THEORY_N = 24  # F1: branches of the stack whose fan-in profile is drawn
REPETITION_B = 6  # F1: blocks of the Transformer whose last block is repeated
REPEATS = (1, 2, 3)  # F1: applications of that block


def _fig(n: int, width: float = 4.2, height: float = 3.3):
    fig, axs = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axs[0])


def bands(frame: pd.DataFrame, by: str, col: str) -> pd.DataFrame:
    """Mean of ``col`` over the rows of each ``by`` value with its t-interval: x, mean, lo, hi."""
    rows = [(k, *mean_ci(g[col])) for k, g in frame.groupby(by)]
    return pd.DataFrame(rows, columns=["x", "mean", "lo", "hi"])


def importance_share(units: pd.DataFrame) -> pd.Series:
    """Each block's share of its run's positive ablation importance (negative values count as 0)."""
    return units["imp_ablation"].clip(lower=0) / units.groupby("run_id")["imp_ablation"].transform(
        lambda s: s.clip(lower=0).sum())


# ---- F1: theory --------------------------------------------------------------------------------

def fanin_profiles(N: int) -> pd.DataFrame:
    """Fan-in of every branch of an N-branch stack, one head and deep supervision: the sympy
    closed form and the autograd path count."""
    rows = []
    for sup in ("final", "all"):
        counted = first_order(Layout.sequential(N, sup)).fan_in
        rows += [{"supervision": sup, "i": i, "closed": c, "counted": a}
                 for i, c, a in zip(range(1, N + 1), closed_form_profile(N, sup), counted)]
    return pd.DataFrame(rows)


def repetition_fanin(B: int, repeats=REPEATS) -> pd.DataFrame:
    """Group fan-in of each unique block of a B-block Transformer whose last block is applied r
    times: symbolic, and counted by autograd (block b sums its two branches; the shared group's
    probe sums its applications)."""
    rows = []
    for r in repeats:
        layout = Layout(tuple([Block(2)] * (B + r - 1)), (), (tuple(range(B, B + r)),) if r > 1 else ())
        fan = {row["block"]: row["fan_in"] for row in analyze(layout, max_order=1).to_dict()["blocks"]}
        symbolic = [fan[b] for b in range(1, B)] + [sum(fan[b] for b in range(B, B + r))]
        auto = first_order(layout)
        counted = [auto.fan_in[2 * b - 2] + auto.fan_in[2 * b - 1] for b in range(1, B)]
        counted.append(next(f for g, f in zip(auto.groups, auto.group_fan_in) if B in g))
        rows += [{"r": r, "block": b, "symbolic": s, "counted": c}
                 for b, s, c in zip(range(1, B + 1), symbolic, counted)]
    return pd.DataFrame(rows)


def f1(_tables):
    fig, (a, b) = _fig(2)
    plots.plot_fanin_theory(fanin_profiles(THEORY_N), ax=a)
    plots.plot_repetition_theory(repetition_fanin(REPETITION_B), ax=b)
    return fig


# ---- F2-F4: accumulated gradients vs fan-in ----------------------------------------------------

def gradient_curves(units: pd.DataFrame, family: str, supervision: str, quantity: str = "A_norm",
                    fan: str = "F_norm") -> pd.DataFrame:
    """Per network depth B and relative block depth: the band of ``quantity`` over seeds and the
    mean normalized fan-in."""
    d = units[(units.family == family) & (units.supervision == supervision)]
    parts = []
    for B, g in d.groupby("depth_B"):
        band = bands(g, "depth", quantity)
        band["fan"] = g.groupby("depth")[fan].mean().to_numpy()
        parts.append(band.assign(depth_B=B))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["x", "mean", "lo", "hi", "fan", "depth_B"])


def _gradient_panel(units, family, supervision, quantity, ax):
    return plots.plot_gradient_profile(gradient_curves(units, family, supervision, quantity), family, supervision,
                                       quantity, ax=ax)


def f2(t):
    u = t["fanin_vs_gradients"]["units"]
    fig, (a, b) = _fig(2)
    _gradient_panel(u, "transformer", "final", "A_norm", a)
    _gradient_panel(u, "transformer", "final", "A_stream_norm", b)
    b.set_title("transformer, one head: stream gradient at the branch output")
    return fig


def f3(t):
    u = t["fanin_vs_gradients"]["units"]
    fig, (a, b) = _fig(2)
    _gradient_panel(u, "resnet", "final", "A_norm", a)
    _gradient_panel(u, "resnet", "final", "A_rms_norm", b)
    return fig


def deep_supervision_curves(units: pd.DataFrame, family: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The deepest deep-supervision network of ``family``: the band of normalized A, the mean
    quadratic and linear fan-in (each normalized within run), and its depth B."""
    d = units[(units.family == family) & (units.supervision == "all")].copy()
    d["F_linear_norm"] = d["F_linear"] / d.groupby("run_id")["F_linear"].transform("mean")
    B = d["depth_B"].max()
    g = d[d.depth_B == B]
    fans = g.groupby("depth")[["F_norm", "F_linear_norm"]].mean().rename_axis("x").reset_index()
    return bands(g, "depth", "A_norm"), fans, B


def f4(t):
    u = t["fanin_vs_gradients"]["units"]
    fig, axs = _fig(2)
    for family, ax in zip(("transformer", "resnet"), axs):
        band, fans, B = deep_supervision_curves(u, family)
        plots.plot_deep_supervision(band, fans, B, family, ax=ax)
    return fig


# ---- F5: gradients vs importance ---------------------------------------------------------------

def importance_line(units: pd.DataFrame, summary: pd.DataFrame, family: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The blocks of ``family`` with both values, and C5's slope as the study measured it (OLS of
    normalized ablation importance on normalized A with a relative-depth control, cluster-robust by
    run): a line through the blocks' mean point, where the fitted plane meets the mean depth, and
    the estimate [95 % CI] as text. Nothing is fitted here: the figure shows the study's number."""
    d = units[units.family == family].dropna(subset=["A_norm", "imp_ablation_norm"])
    r = pick(summary, family=family, quantity="ols_depth", arm="ablation", subset="all")  # C5's tested row
    if r is None:
        return d, pd.DataFrame(columns=["x", "mean"]), "n/a"
    xs = np.array([d["A_norm"].min(), d["A_norm"].max()])
    line = pd.DataFrame({"x": xs, "mean": d["imp_ablation_norm"].mean() + r["estimate"] * (xs - d["A_norm"].mean())})
    return d, line, format_interval(r["estimate"], r["ci_low"], r["ci_high"], ".2f")


def f5(t):
    study = t["gradients_vs_importance"]
    fig, axs = _fig(2)
    for family, ax in zip(("transformer", "resnet"), axs):
        plots.plot_importance_vs_gradient(*importance_line(study["units"], study["summary"], family), family, ax=ax)
    return fig


# ---- F6, F7: equalization and repetition -------------------------------------------------------

def _equalization_label(arm: str) -> str:
    opt, inter = arm.split("/")
    label = names.intervention(inter)
    if opt == "adamw" and inter == "equalize":
        label += " (placebo)"
    return label + (" no-clip" if "no-clip" in opt else "")


def equalization_bands(units: pd.DataFrame, optimizer: str, col: str) -> list[tuple[str, pd.DataFrame]]:
    """Per block, ``col`` over seeds (mean, t-interval) for every arm of ``optimizer`` at its tuned
    learning rate; ``col="share"`` is the block's share of its run's positive ablation importance."""
    d = units[(units.optimizer == optimizer) & units.tuned.astype(bool)].copy()
    d["share"] = importance_share(d)
    return [(_equalization_label(arm), bands(g, "order", col)) for arm, g in d.groupby("arm", sort=False)]


def f6(t):
    u = t["equalization"]["units"]
    fig, axs = plt.subplots(3, 2, figsize=(4.2 * 2, 3.3 * 3), squeeze=False)  # two columns: README width
    for row, optimizer in zip(axs.T, ("adamw", "sgd")):
        name = names.OPTIMIZERS[optimizer]
        plots.plot_arm_profiles(equalization_bands(u, optimizer, "imp_ablation"), "ablation delta-loss (nats, symlog)",
                                f"{name}: block ablation delta-loss", ax=row[0], symlog=1e-2)
        plots.plot_arm_profiles(equalization_bands(u, optimizer, "share"), "share of ablation importance (symlog)",
                                f"{name}: share of importance", ax=row[1], symlog=1e-2)
        if "U_norm" in u:
            plots.plot_arm_profiles(equalization_bands(u, optimizer, "U_norm"), "U / mean over blocks",
                                    f"{name}: manipulation check (summed update norms)", ax=row[2], reference=1.0)
        else:
            plots.plot_note("no update norms (U) recorded", ax=row[2])
    fig.tight_layout()
    return fig


def _repetition_label(variant: str) -> str:
    """A variant with its role: the parameter-matched and the compute-matched controls named."""
    if variant == "baseline":
        return "baseline (parameter-matched)"
    return f"{variant} (compute-matched)" if variant.startswith("control") else variant


def _arm_order(variants) -> list[str]:
    """Baseline first, then the repeated models, then the compute-matched controls."""
    return sorted(variants, key=lambda v: (v != "baseline", v.startswith("control"), v))


def repetition_application_bands(apps: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per arm, each block application's ablation delta-loss (skipped alone; nats) over seeds,
    x = the application's position."""
    return [(_repetition_label(v), bands(apps[apps.variant == v], "application", "imp_application"))
            for v in _arm_order(apps.variant.unique())]


def repetition_joint_bands(joint: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per arm, the delta-loss of skipping its last m applications together, over seeds, x = m."""
    return [(_repetition_label(v), bands(joint[joint.variant == v], "m", "delta_loss"))
            for v in _arm_order(joint.variant.unique())]


def repetition_fanin_shares(fanin: pd.DataFrame) -> pd.DataFrame:
    """Each parameter group's share of its arm's total group fan-in (autograd path counts)."""
    d = fanin.copy()
    d["variant"] = d["variant"].map(_repetition_label)
    return d[["order", "F_share", "variant"]]


def f7(t):
    rep = t["repetition"]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(6.0, 3.2 * 3))  # stacked: readable at README width
    if rep.get("applications") is None or rep.get("joint") is None or rep.get("fanin") is None:
        for ax in (a, b, c):
            plots.plot_note("rerun the repetition study: per-application tables missing", ax=ax)
        return fig
    plots.plot_importance_shares(repetition_application_bands(rep["applications"]), "block application (position)",
                                 "Per-application importance", ax=a)
    a.set_ylabel("delta-loss, skipped alone (nats, symlog)")
    a.set_xticks(sorted(rep["applications"]["application"].unique()))
    plots.plot_repetition_fanin(repetition_fanin_shares(rep["fanin"]), ax=b)
    b.set_title("Manipulation: fan-in of each parameter group")
    plots.plot_joint_ablation(repetition_joint_bands(rep["joint"]), ax=c)
    return fig


# ---- T5 ----------------------------------------------------------------------------------------

def t5(t):
    """Regression statistics of studies 1 and 2: every test, every importance metric, the exponents
    of A on fan-in (with and without the first block) and the absolute ablation delta-loss.
    Intervals: 95 %, cluster-robust ones with t at G - 1 df; p-values floored at 1e-4."""
    s1 = t["fanin_vs_gradients"]["summary"].assign(study="fan-in vs A")
    s2 = t["gradients_vs_importance"]["summary"].assign(study="A vs importance")
    s = pd.concat([s1, s2], ignore_index=True)
    return pd.DataFrame({
        "study": s["study"], "test": s["test"].str.replace(" | run", " (run intercepts)", regex=False),
        "estimate [CI95]": [format_interval(r.estimate, r.ci_low, r.ci_high, ".3g", n=int(r.n_groups))
                            for r in s.itertuples()],
        "p": [format_p(p) for p in s["p"]], "runs": s["n_groups"].astype(int), "method": s["method"]})
