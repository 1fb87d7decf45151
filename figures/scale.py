"""Builder of F13 (``experiments/scale.py``): each statistic of the scale study against tokens per
parameter (left) and parameters (right), point means with t-intervals over seeds (its
``point_means.csv``). The verdicts along scale are judged in :mod:`experiments.verdicts.scale`."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from experiments import scale as sc
from experiments.study_io import flags

from . import plots

PANELS = (  # (statistics drawn together, y label, reference line)
    (("c8_gap_narrow_pct", "c8_gap_full_pct"), "C8: primary's perplexity change (%)", 0.0),
    (("c2_rho",), "C2: Spearman rho(A, F)", 0.0),
    (("c2_exponent", "c2_exponent_no_first"), "C2: within-run exponent of A on F", 1.0),
    (("c5_rho_no_first",), "C5: rho(ablation, A), no first block", 0.0),
    (("c9_gap_last_mean",), "C9: loss, CascadeFlow - last-k\n(nats, mean over k, no healing)", 0.0),
)
LEGEND = {"c8_gap_narrow_pct": "vs narrow uniform", "c8_gap_full_pct": "vs full uniform",
          "c2_exponent": "all blocks", "c2_exponent_no_first": "first block excluded"}


def _band(means: pd.DataFrame, stat: str, on: str, x: str) -> pd.DataFrame:
    d = means[(means["quantity"] == stat) & flags(means[on])].sort_values(x)
    return pd.DataFrame({"x": d[x].to_numpy(float), "mean": d["estimate"].to_numpy(float),
                         "lo": d["ci_low"].to_numpy(float), "hi": d["ci_high"].to_numpy(float)})


def f13(tables: dict):
    means = tables[sc.NAME]["point_means"]
    fig, axes = plt.subplots(len(PANELS), 2, figsize=(8.4, 2.6 * len(PANELS)), squeeze=False)
    for row, (stats, ylabel, ref) in enumerate(PANELS):
        for col, (on, x, xlabel) in enumerate((("on_tokens", "tokens_per_param", "training tokens per parameter"),
                                               ("on_size", "params", "parameters (full uniform model)"))):
            series = [(LEGEND.get(s, s), _band(means, s, on, x)) for s in stats]
            plots.plot_along_scale(series, xlabel, ylabel, ref, ax=axes[row, col])
    return fig
