"""Unit tables: one row per block (or branch) of a finished run, what the studies analyze.

* :func:`unit_table`: fan-in ``F`` (symbolic, summed over a shared unit's applications),
  accumulated gradients ``A`` (and variants) and the run's descriptors.
* :func:`heldout_batches`: the fixed held-out batches every model of a study is scored on
  (:func:`gfa_theory.train.data.run_eval_batches` with the studies' own seed).
* :func:`ablation_units`: block tables joined with held-out ablation importance and loss.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gfa_theory.instrument import importance
from gfa_theory.theory.symbolic import block_fan_in, branch_fan_in
from gfa_theory.train.data import load_data, run_eval_batches
from gfa_theory.train.lifecycle import RunResult
from gfa_theory.train.store import load_run

from .plans import ImportancePlan
from .runner import Context, map_in_workers

# the tracker's opt-in totals (TrainConfig.accumulate / track_updates), in a run's table when recorded
ACCUMULATED = ("G_norm", "noise_floor", "U", "displacement")


def unit_table(run: RunResult, kind: str = "block", **descriptors) -> pd.DataFrame:
    """One row per unit of ``kind``: fan-in (summed over a shared unit's applications, as the
    gradient of a shared parameter is), accumulated gradients and run descriptors."""
    model = run.model
    layout = model.layout()
    fan = block_fan_in(layout) if kind == "block" else branch_fan_in(layout)
    g = run.gradients
    g = g[(g["kind"] == kind) & g["step"].isna()]
    wide = g.pivot_table(index="unit", columns="quantity", values="value", aggfunc="first")
    rows = []
    units = model.units(kind)
    n = len(units)
    for pos, u in enumerate(units):
        r = {"run_id": run.run_dir.name, "seed": run.config.train.seed, "model": run.config.model_name,
             "unit": u.name, "kind": kind, "index": u.index, "order": pos + 1, "n_units": n,
             "depth": pos / (n - 1) if n > 1 else 0.0,
             "applications": len(u.applications), "F": sum(fan[a] for a in u.applications)}
        for q in ("A", "A_sq", "A_rms", "A_stream", "numel", *ACCUMULATED):
            if q in wide.columns:
                r[q] = float(wide.loc[u.name, q])
        r.update(descriptors)
        rows.append(r)
    df = pd.DataFrame(rows)
    for q in ("F", "A", "A_rms", "A_stream", *ACCUMULATED):
        if q in df:
            df[f"{q}_norm"] = df[q] / df[q].mean()  # profile shape, comparable across runs
    return df


HELDOUT_SEED = 1234  # of the studies' held-out text windows: one set for every model and training seed


def heldout_batches(run: RunResult, n_batches: int, batch_size: int = 32) -> list:
    """Fixed held-out batches of a run's validation split (the same for every training seed)."""
    cfg = run.config
    return list(run_eval_batches(load_data(cfg.data), cfg, "val", n_batches, batch_size, seed=HELDOUT_SEED))


def _ablation_table(desc: dict, run_dir: str, imp: ImportancePlan) -> pd.DataFrame:
    """One run's block table with held-out ablation importance and loss (a worker task)."""
    cfg, model, metrics, gradients = load_run(Path(run_dir))
    res = RunResult(Path(run_dir), cfg, model, metrics, gradients, trained=False)
    return _with_ablation(desc, res, imp)


def _with_ablation(desc: dict, res: RunResult, imp: ImportancePlan) -> pd.DataFrame:
    units = unit_table(res, "block", **desc)
    batches = heldout_batches(res, imp.batches, imp.batch_size)
    abl = importance.ablation(res.model, batches).set_index("unit")["score"]
    units["imp_ablation"] = units["unit"].map(abl)
    units["val_loss"] = importance.evaluate(res.model, batches)
    return units


def ablation_units(runs: Sequence[tuple[dict, object]], results: Sequence[RunResult],
                   imp: ImportancePlan, ctx: Context | None = None) -> pd.DataFrame:
    """Block unit tables of ``results`` with held-out ablation importance and validation loss;
    with ``ctx``, scored in its worker processes (each run is independent: the same numbers, in
    about half the time on 2 cores), else here."""
    if ctx is None:
        frames = [_with_ablation(desc, res, imp) for (desc, _), res in zip(runs, results)]
    else:
        frames = map_in_workers(_ablation_table, [(desc, str(res.run_dir), imp) for (desc, _), res in
                                                  zip(runs, results)], ctx, desc="ablation importance",
                                labels=[f"ablation of run {res.run_dir}" for res in results])
    return pd.concat(frames, ignore_index=True)
