"""A cached study written by an older table layout, brought up to :data:`experiments.study_io.LAYOUT`
without retraining or rescoring: its derived tables (summary rows, comparisons, the depth-order
table) are recomputed from the per-run tables it saved, by the study's own functions, so every
number in them is the one the study computed; only new columns (the structured key, ``se``,
``df``) are added. The per-run tables are read, never rewritten; ``meta.json`` is written last.
"""
from __future__ import annotations

import json
from typing import Callable

import pandas as pd

from gfa_theory.train.run_config import run_key
from gfa_theory.train.store import write_csv_atomic, write_json_atomic

from . import cascadeformer, equalization, fanin_vs_gradients, gradients_vs_importance, mechanism, pruning, repetition
from .plans import plan
from .runner import Context
from .study_io import LAYOUT, load_study, study_module

Tables = dict[str, pd.DataFrame]


def _equalization(t: Tables, meta: dict, profile: str) -> Tables:
    shares = t["shares"].assign(tuned=t["shares"]["tuned"].astype(bool))
    tuned = {arm: meta["tuned_lr"][arm] for arm in dict.fromkeys(t["tuning"]["arm"])}  # the tuning order
    return {"summary": equalization.summarize(shares, tuned)}


def _repetition(t: Tables, meta: dict, profile: str) -> Tables:
    return {"summary": repetition.summarize(t["last_group"], plan(profile).repetition.repeats, t["applications"],
                                            t["joint"], t["fanin"])}


DERIVED: dict[str, Callable[[Tables, dict, str], Tables]] = {
    fanin_vs_gradients.NAME: lambda t, meta, profile: {"summary": fanin_vs_gradients.summarize(t["units"])},
    gradients_vs_importance.NAME: lambda t, meta, profile: {"summary": gradients_vs_importance.summarize(t["units"])},
    equalization.NAME: _equalization,
    repetition.NAME: _repetition,
    cascadeformer.NAME: lambda t, meta, profile: {"summary": cascadeformer.summarize(t["runs"], t["timing_summary"])},
    pruning.NAME: lambda t, meta, profile: {"comparisons": pruning.comparisons(t["results"], t["stability"]),
                                            "depth_order": pruning.depth_order_table(t["depth_order_cases"])},
    mechanism.NAME: lambda t, meta, profile: {"proxies": mechanism.proxy_summary(t["blocks"])},
}


def current(ctx: Context, name: str) -> Tables | None:
    """The tables of finished study ``name`` in the current layout (an older cache upgraded in
    place); None when it has not been run for this profile."""
    tables = load_study(ctx, name)
    if tables is None:
        return None
    path = ctx.study_dir(name) / "meta.json"
    meta = json.loads(path.read_text())
    if meta.get("layout", 1) >= LAYOUT:
        return tables
    path.unlink()  # unfinished while its tables change (as write_study does)
    for table, frame in DERIVED[name](tables, meta, ctx.profile).items():
        write_csv_atomic(ctx.study_dir(name) / f"{table}.csv", frame)
    write_json_atomic(path, {**meta, "layout": LAYOUT})
    return load_study(ctx, name)


def stale(ctx: Context, name: str) -> bool:
    """Whether finished study ``name``'s cached tables were computed for another plan: its plan
    (the study's ``configs(profile)``, before any result) lists a run the cached study did not use
    (its ``meta.json`` ``config_hashes``). The runs stay cached: rerunning the study retrains only
    the new ones. A study whose plan depends on its own results (the scale study's tuned rates) is
    checked on the part known before them (its lr sweep)."""
    path = ctx.study_dir(name) / "meta.json"
    module = study_module(name)
    if not path.is_file() or not hasattr(module, "configs"):
        return False
    used = set(json.loads(path.read_text()).get("config_hashes", ()))
    return any(run_key(cfg).split("-", 1)[1] not in used for _, cfg in module.configs(ctx.profile))
