"""CascadeFormer outputs: table T1, the two CascadeFormer panels of F8, and claim C8.

Everything is built from the tables of ``experiments/cascadeformer.py`` (``summary.csv``: one row
per schedule). :func:`register` adds them to ``figures.make_all.OUTPUTS`` and to the report's
claims; ``figures/efficiency.py`` (the efficiency studies' module, which assembles F8 with the
pruning panel) calls it. Until a full F8 is registered, :func:`register` provides a
CascadeFormer-only F8, so the panels are drawn even without the pruning study.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments import cascadeformer as cf

from .plots import PALETTE, _ax
from .report import FAILS, HOLDS, MIXED, UNDEFINED, Claim, register_claim

STUDY = cf.NAME
FAMILIES = ("linear", "fanin", "cosine", "step")  # colour and marker order of the tapered schedules
MARKERS = {"uniform": "s", "linear": "o", "fanin": "D", "cosine": "^", "step": "v"}


def _summary(tables) -> pd.DataFrame | None:
    """The study's per-schedule summary from the ``{study: {table: frame}}`` dict (or the frame)."""
    if isinstance(tables, pd.DataFrame):
        return tables
    study = (tables or {}).get(STUDY)
    return None if study is None else study.get("summary")


def _missing(ax, what: str = "CascadeFormer study not run for this profile"):
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
    ax.set_axis_off()
    return ax


def _color(schedule: str):
    return "0.25" if schedule == "uniform" else PALETTE[FAMILIES.index(schedule) % len(PALETTE)]


# ---- T1 ------------------------------------------------------------------------------------

def _ci(m: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    if not np.isfinite(m):
        return "nan"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:{fmt}} [undefined]"
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _match_short(row) -> str:
    if row["schedule"] == "uniform":
        return "baseline"
    missing = [w for w, ok in (("perplexity", cf.is_comparable(row)), ("speed", cf.has_paper_speedup(row))) if not ok]
    return "yes" if not missing else f"no ({', '.join(missing)})"


def t1(tables) -> pd.DataFrame:
    """CascadeFormer vs uniform, one row per schedule. Intervals: loss and perplexity 95 % t over
    seeds; the gap to uniform paired by seed; latency and throughput ratios median [IQR] over
    interleaved repeats. 'matches paper': comparable perplexity (upper bound of the change <= +2 pct)
    and latency ratio <= 0.914 and throughput ratio >= 1.094. A last row gives the ratios of the A/A
    timing control (a copy of the uniform model), when the study timed one."""
    s = _summary(tables)
    rows = []
    for _, r in s.iterrows():
        rows.append({
            "schedule": r["label"], "seeds": int(r["n_seeds"]), "params": int(r["params"]),
            "params vs uniform": r["params_ratio"], "FLOPs/token": r["flops_per_token"],
            "FLOPs vs uniform": r["flops_ratio"],
            "held-out loss [CI95]": _ci(r["val_loss"], r["val_loss_ci_low"], r["val_loss_ci_high"]),
            "perplexity [CI95]": _ci(r["val_ppl"], r["val_ppl_ci_low"], r["val_ppl_ci_high"], ".2f"),
            "loss gap vs uniform [paired CI95]": _ci(r["loss_gap"], r["loss_gap_ci_low"], r["loss_gap_ci_high"],
                                                     "+.4f"),
            "perplexity change pct [CI95]": _ci(r["ppl_gap_pct"], r["ppl_gap_pct_ci_low"], r["ppl_gap_pct_ci_high"],
                                                "+.2f"),
            "latency ratio [IQR]": _ci(r["latency_ratio"], r["latency_ratio_q25"], r["latency_ratio_q75"]),
            "throughput ratio [IQR]": _ci(r["throughput_ratio"], r["throughput_ratio_q25"], r["throughput_ratio_q75"]),
            "matches paper": _match_short(r),
        })
    timing = (tables.get(STUDY) or {}).get("timing_summary") if isinstance(tables, dict) else None
    if timing is not None and (timing["model"] == cf.AA_CONTROL).any():
        # a copy of the uniform model timed alongside: the timing noise floor of the ratios above
        a = timing[timing["model"] == cf.AA_CONTROL].iloc[0]
        rows.append({**{k: "" for k in rows[0]}, "schedule": "A/A control (uniform copy)",
                     "latency ratio [IQR]": _ci(a["latency_ratio"], a["latency_ratio_q25"], a["latency_ratio_q75"]),
                     "throughput ratio [IQR]": _ci(a["throughput_ratio"], a["throughput_ratio_q25"],
                                                   a["throughput_ratio_q75"]),
                     "matches paper": "timing control"})
    return pd.DataFrame(rows)


# ---- F8 panels --------------------------------------------------------------------------------

def plot_cascade_tradeoff(tables, ax=None):
    """Perplexity change vs throughput ratio against uniform, one point per schedule (error bars:
    95 % paired CI and IQR), each family's taper-strength sweep joined; the paper's result and
    the +2 % comparability margin dashed."""
    ax = _ax(ax)
    s = _summary(tables)
    if s is None or s.empty:
        return _missing(ax)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(1, color="0.6", lw=0.8)
    ax.axhline(cf.PPL_TOLERANCE_PCT, color="0.3", ls="--", lw=0.9, label=f"+{cf.PPL_TOLERANCE_PCT:g} % margin")
    ax.axvline(cf.PAPER_THROUGHPUT_RATIO, color="0.3", ls=":", lw=0.9)
    ax.plot([cf.PAPER_THROUGHPUT_RATIO], [0], marker="*", ms=11, color="gold", mec="k", ls="none",
            label="paper: +9.4 % throughput")
    for sched, d in s.groupby("schedule", sort=False):
        d = d.sort_values("r", ascending=False)
        x, y = d["throughput_ratio"].to_numpy(), d["ppl_gap_pct"].to_numpy()
        xerr = np.abs(np.vstack([x - d["throughput_ratio_q25"], d["throughput_ratio_q75"] - x]))
        yerr = np.abs(np.vstack([y - d["ppl_gap_pct_ci_low"], d["ppl_gap_pct_ci_high"] - y]))
        c = _color(sched)
        ax.errorbar(x, y, xerr=xerr, yerr=np.nan_to_num(yerr), color=c, marker=MARKERS.get(sched, "o"), ms=4.5,
                    lw=1.1, capsize=2, elinewidth=0.8, ls="-" if len(d) > 1 else "none", label=sched)
        if sched != "uniform":
            for xi, yi, r in zip(x, y, d["r"]):
                ax.annotate(f"r={r:g}", (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color=c)
    ax.set_xlabel("throughput ratio vs uniform (tokens/s, large batch)")
    ax.set_ylabel("held-out perplexity change vs uniform (%)")
    ax.set_title("CascadeFormer: loss vs throughput")
    ax.legend(fontsize=6, loc="best")
    return ax


def plot_cascade_speed(tables, ax=None):
    """Perplexity, latency and throughput of every tapered schedule relative to uniform (1 = equal),
    with the paper's latency (0.914) and throughput (1.094) ratios dotted."""
    ax = _ax(ax)
    s = _summary(tables)
    if s is None or s.empty:
        return _missing(ax)
    d = s[s.schedule != "uniform"]
    if d.empty:
        return _missing(ax, "no tapered schedule in the study")
    x = np.arange(len(d))
    ppl = 1 + d["ppl_gap_pct"].to_numpy() / 100
    bars = [("perplexity", ppl, 1 + d["ppl_gap_pct_ci_low"] / 100, 1 + d["ppl_gap_pct_ci_high"] / 100, PALETTE[0]),
            ("latency (batch 1)", d["latency_ratio"].to_numpy(), d["latency_ratio_q25"], d["latency_ratio_q75"],
             PALETTE[1]),
            ("throughput (large batch)", d["throughput_ratio"].to_numpy(), d["throughput_ratio_q25"],
             d["throughput_ratio_q75"], PALETTE[2])]
    w = 0.26
    for k, (label, m, lo, hi, c) in enumerate(bars):
        err = np.nan_to_num(np.abs(np.vstack([m - np.asarray(lo), np.asarray(hi) - m])))
        ax.bar(x + (k - 1) * w, m, width=w, color=c, label=label, yerr=err, capsize=1.5,
               error_kw={"elinewidth": 0.7})
    ax.plot(x, d["flops_ratio"], "k_", ms=12, mew=1.2, label="FLOPs/token (analytic)")
    ax.axhline(1, color="0.3", lw=0.8)
    ax.axhline(cf.PAPER_LATENCY_RATIO, color=PALETTE[1], ls=":", lw=1, label="paper latency 0.914")
    ax.axhline(cf.PAPER_THROUGHPUT_RATIO, color=PALETTE[2], ls=":", lw=1, label="paper throughput 1.094")
    lo = min(0.5, float(np.nanmin(d["flops_ratio"])) - 0.05)
    ax.set_ylim(lo, None)
    ax.set_xticks(x, d["label"], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("ratio vs uniform")
    ax.set_title("CascadeFormer vs uniform (same depth and budget)")
    ax.legend(fontsize=6, ncol=2)
    return ax


def f8_cascade(tables):
    """F8 without the pruning panel (used until figures/efficiency.py registers the full F8)."""
    fig, axs = plt.subplots(1, 2, figsize=(8.8, 3.6), squeeze=False)
    plot_cascade_tradeoff(tables, ax=axs[0][0])
    plot_cascade_speed(tables, ax=axs[0][1])
    return fig


# ---- C8 -----------------------------------------------------------------------------------

C8_RULE = (f"holds if some tapered schedule has comparable perplexity (upper 95 % bound of its paired perplexity "
           f"change vs uniform <= +{cf.PPL_TOLERANCE_PCT:g} %) with median latency ratio <= "
           f"{cf.PAPER_LATENCY_RATIO:.3f} and median throughput ratio >= {cf.PAPER_THROUGHPUT_RATIO:.3f}; mixed if "
           f"some comparable schedule has a smaller but measured speedup (IQR of the per-repeat latency ratio below "
           f"1 or of the throughput ratio above 1); inconclusive if no tapered schedule has defined statistics; "
           f"otherwise does not hold")
_NEEDED = ("ppl_gap_pct", "ppl_gap_pct_ci_high", "latency_ratio", "throughput_ratio", "latency_ratio_q75",
           "throughput_ratio_q25")


def _describe(r) -> str:
    return (f"{r['label']}: perplexity {r['ppl_gap_pct']:+.2f} % [{r['ppl_gap_pct_ci_low']:+.2f}, "
            f"{r['ppl_gap_pct_ci_high']:+.2f}] vs uniform, latency ratio {r['latency_ratio']:.3f} "
            f"(IQR {r['latency_ratio_q25']:.3f}-{r['latency_ratio_q75']:.3f}), throughput ratio "
            f"{r['throughput_ratio']:.3f} (IQR {r['throughput_ratio_q25']:.3f}-{r['throughput_ratio_q75']:.3f}), "
            f"params x{r['params_ratio']:.2f}, FLOPs x{r['flops_ratio']:.2f}")


def c8_verdict(summary: pd.DataFrame) -> tuple[str, str]:
    """(measured text, verdict) of claim C8 from the study's per-schedule summary (:data:`C8_RULE`)."""
    d = summary[summary.schedule != "uniform"]
    d = d[np.isfinite(d[list(_NEEDED)].to_numpy(float)).all(axis=1)]
    if d.empty:
        return "no tapered schedule with defined statistics (at least 2 seeds and finite timings are needed)", UNDEFINED
    comparable = d[[cf.is_comparable(r) for _, r in d.iterrows()]]
    match = comparable[[cf.has_paper_speedup(r) for _, r in comparable.iterrows()]]
    faster = comparable[[cf.has_speedup(r) for _, r in comparable.iterrows()]]
    if not match.empty:
        best, verdict = match.loc[match["throughput_ratio"].idxmax()], HOLDS
    elif not faster.empty:
        best, verdict = faster.loc[faster["throughput_ratio"].idxmax()], MIXED
    elif not comparable.empty:
        best, verdict = comparable.loc[comparable["throughput_ratio"].idxmax()], FAILS
    else:
        best, verdict = d.loc[d["ppl_gap_pct"].idxmin()], FAILS
    text = (f"{len(comparable)} of {len(d)} tapered schedules have comparable perplexity, {len(match)} also match "
            f"the paper's speedups; best: {_describe(best)}")
    return text, verdict


def measure_c8(tables) -> tuple[str, str]:
    return c8_verdict(_summary(tables))


CLAIM_C8 = Claim(
    "C8", "CascadeFormer: width tapered with depth gives perplexity comparable to a uniform baseline at the same "
          "training budget while reducing latency by 8.6% and increasing throughput by 9.4%.",
    C8_RULE, "T1, F8", (STUDY,), measure_c8)


def register(OUTPUTS: dict, Output) -> None:
    """Add T1 (and a CascadeFormer-only F8 unless one is registered) to ``OUTPUTS``; add claim C8."""
    OUTPUTS["T1"] = Output("T1", "table", "CascadeFormer vs uniform Transformer (same depth and training budget)",
                           (STUDY,), t1)
    OUTPUTS.setdefault("F8", Output("F8", "figure", "CascadeFormer: loss, latency and throughput vs uniform",
                                    (STUDY,), f8_cascade))
    register_claim(CLAIM_C8)
