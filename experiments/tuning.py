"""Learning-rate tuning shared by the studies: one rule, declared once.

:data:`RULE`: per arm, the learning rate with the lowest final validation loss (the run's own
evaluation batches, ``metrics.csv``) on the tuning seed; a diverged run counts as +inf and a tie
goes to the smaller rate. The study then trains its other seeds at the chosen rate only.
Used by :mod:`experiments.equalization` (its SGD arms) and :mod:`experiments.scale` (every C8 arm).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gfa_theory.train.lifecycle import RunResult

RULE = "the lr with the lowest final validation loss on the tuning seed (diverged = +inf, ties to the smaller lr)"


def final_val_loss(res: RunResult | None) -> float:
    """The run's last validation loss (metrics.csv); +inf for a diverged run."""
    if res is None:
        return float("inf")
    val = res.metrics[res.metrics["split"] == "val"]
    loss = float(val["loss"].iloc[-1]) if len(val) else float("nan")
    return loss if np.isfinite(loss) else float("inf")


def lowest_loss_lr(table: pd.DataFrame, by: str | list[str] = "arm") -> tuple[dict, pd.DataFrame]:
    """:data:`RULE` over ``table`` (columns ``by``, ``lr``, ``final_val_loss``, one row per
    (group, lr)): the tuned lr of each group and the table with a ``tuned`` column."""
    tuned = {}
    for key, d in table.groupby(by, sort=False):
        d = d.sort_values("lr", kind="stable")  # a stable argmin over ascending lrs: ties go to the smaller
        tuned[key] = float(d["lr"].iloc[int(np.argmin(d["final_val_loss"].to_numpy()))])
    keys = list(zip(*[table[c] for c in by])) if isinstance(by, list) else list(table[by])
    return tuned, table.assign(tuned=[tuned[k] == lr for k, lr in zip(keys, table["lr"])])
