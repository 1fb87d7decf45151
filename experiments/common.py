"""Shared machinery of the studies: profiles, the parallel run cache, unit tables, writing.

* A **profile** sizes a study: ``smoke`` (seconds, for tests), ``default`` (a meaningful answer
  on 2 CPU cores), ``full`` (sized for a GPU).
* :func:`run_many` trains the runs a study needs, in worker processes (one thread each: small
  models parallelize better across runs than inside one), through the result cache of
  :mod:`gfa_theory.train.store`: a run keyed by its config hash is never trained twice, so studies share
  runs (the 8-block baseline of the fan-in study is the equalization study's baseline).
* :func:`unit_table` turns a finished run into one row per unit: fan-in ``F`` (symbolic),
  accumulated gradients ``A`` (and variants) and the run's descriptors.
* :func:`write_study` writes a study's tables atomically with a ``meta.json`` stamp (profile,
  seeds, run ids, corpus hashes, package version).
"""
from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate

from gfa_theory import __version__
from gfa_theory.errors import ConfigError
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.symbolic import analyze
from gfa_theory.train.data import eval_batches, load_data
from gfa_theory.train.loop import RunResult, train
from gfa_theory.train.run_config import RunConfig, run_key
from gfa_theory.train.store import results_root, write_csv_atomic, write_json_atomic

PROFILES = ("smoke", "default", "full")


@dataclass
class Context:
    """Where and how a study runs. ``force`` retrains runs once per process (shared runs too)."""

    profile: str = "default"
    root: Path = field(default_factory=lambda: results_root())
    jobs: int = 0  # worker processes; 0 = number of CPU cores
    force: bool = False
    progress: bool = True
    retrained: set = field(default_factory=set)  # run keys retrained in this process

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile '{self.profile}' (choices: {', '.join(PROFILES)})")
        self.root = Path(self.root)
        if self.jobs <= 0:
            self.jobs = max(1, min(os.cpu_count() or 1, 8))

    def study_dir(self, name: str) -> Path:
        return self.root / "studies" / self.profile / name


def _worker(cfg_dict: dict, root: str, resume: bool) -> str:
    torch.set_num_threads(1)  # one core per run; results are deterministic per config
    cfg = RunConfig.from_dict(cfg_dict)
    return str(train(cfg, root, resume=resume, progress=False).run_dir)


def run_many(cfgs: Sequence[RunConfig], ctx: Context, desc: str = "runs") -> list[RunResult]:
    """Train (or read back) every config; results in the order given."""
    from tqdm.auto import tqdm

    from gfa_theory.train.store import is_complete, load_run

    keys = [run_key(c) for c in cfgs]
    todo: dict[str, RunConfig] = {}
    for k, c in zip(keys, cfgs):
        fresh = ctx.force and k not in ctx.retrained
        if (fresh or not is_complete(ctx.root / k)) and k not in todo:
            todo[k] = c
    if todo:
        jobs = min(ctx.jobs, len(todo))
        bar = tqdm(total=len(todo), desc=f"train {desc}", disable=not ctx.progress, dynamic_ncols=True)
        with bar:
            if jobs == 1:
                for k, c in todo.items():
                    _worker(c.to_dict(), str(ctx.root), not (ctx.force and k not in ctx.retrained))
                    bar.update(1)
            else:
                with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                    futs = {pool.submit(_worker, c.to_dict(), str(ctx.root),
                                        not (ctx.force and k not in ctx.retrained)): k
                            for k, c in todo.items()}
                    for f in as_completed(futs):
                        f.result()  # re-raise a worker's error here
                        bar.update(1)
        if ctx.force:
            ctx.retrained.update(todo)
    out = []
    for k, c in zip(keys, cfgs):
        cfg, model, metrics, grads = load_run(ctx.root / k)
        out.append(RunResult(ctx.root / k, cfg, model, metrics, grads, k in todo))
    return out


# ---- run descriptors --------------------------------------------------------------------------

def gpt_run(profile_sizes: dict, *, n_blocks: int, seed: int, supervision: Any = "final",
            optimizer: str = "adamw", lr: float | None = None, intervention: str = "none",
            block_schedule: list[int] | None = None, **model_kw) -> RunConfig:
    """A Transformer run of a study profile (``profile_sizes`` holds model/train sizes)."""
    s = profile_sizes
    model = {"n_embd": s["n_embd"], "n_head": s["n_head"], "d_ff": s["d_ff"], "block_size": s["block_size"],
             "n_blocks": n_blocks, "supervision": supervision, "block_schedule": block_schedule, **model_kw}
    train_kw = {"steps": s["steps"], "batch_size": s["batch_size"], "optimizer": optimizer,
                "lr": lr if lr is not None else (s["lr"] if optimizer == "adamw" else s["sgd_lr"]),
                "seed": seed, "intervention": intervention, "eval_interval": s["eval_interval"],
                "checkpoint_interval": s["checkpoint_interval"], "eval_batches": s["eval_batches"],
                "warmup_steps": s.get("warmup_steps", 20), "series_points": s.get("series_points", 50),
                "device": s.get("device", "cpu")}
    if optimizer == "sgd":
        train_kw["weight_decay"] = 0.0
    return RunConfig.from_dict({"model_name": "gpt", "model": model, "train": train_kw})


def resnet_run(profile_sizes: dict, *, blocks_per_stage: list[int], seed: int,
               supervision: Any = "final", variant: str = "preact") -> RunConfig:
    s = profile_sizes
    model = {"blocks_per_stage": blocks_per_stage, "widths": s["widths"][:len(blocks_per_stage)],
             "supervision": supervision, "variant": variant}
    train_kw = {"steps": s["resnet_steps"], "batch_size": s["resnet_batch"], "seed": seed,
                "eval_interval": s["eval_interval"], "checkpoint_interval": s["checkpoint_interval"],
                "series_points": s.get("series_points", 50), "device": s.get("device", "cpu")}
    return RunConfig.from_dict({"model_name": "resnet", "model": model, "train": train_kw})


# ---- unit tables -------------------------------------------------------------------------------

def block_fan_in(layout: Layout) -> dict[int, int]:
    """Fan-in of each layout block (sum over its branches)."""
    return {row["block"]: int(row["fan_in"]) for row in analyze(layout, max_order=1).to_dict()["blocks"]}


def branch_fan_in(layout: Layout) -> dict[int, int]:
    return {row["index"]: int(row["fan_in"]) for row in analyze(layout, max_order=1).to_dict()["branches"]}


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
        for q in ("A", "A_sq", "A_rms", "A_stream", "numel"):
            if q in wide.columns:
                r[q] = float(wide.loc[u.name, q])
        r.update(descriptors)
        rows.append(r)
    df = pd.DataFrame(rows)
    for q in ("F", "A", "A_rms", "A_stream"):
        if q in df:
            df[f"{q}_norm"] = df[q] / df[q].mean()  # profile shape, comparable across runs
    return df


def heldout_batches(run: RunResult, n_batches: int, batch_size: int = 32, seed: int = 1234):
    """Fixed held-out batches of a run's validation split (the same for every seed)."""
    cfg = run.config
    data = load_data(cfg.data)
    seq = cfg.model.block_size if cfg.model_name == "gpt" else None
    return list(eval_batches(data, "val", batch_size, n_batches, seq_len=seq, seed=seed))


def start(name: str, configs: Callable[[str], list], profile: str, ctx: Context | None):
    """The common opening of a study's ``run``: context, clock, sizes, plan and its (cached) runs."""
    from .profiles import sizes

    ctx = ctx or Context(profile)
    started = time.time()
    plan = configs(ctx.profile)
    results = run_many([c for _, c in plan], ctx, desc=name)
    return ctx, started, sizes(ctx.profile), plan, results


def ablation_units(plan, results: Sequence[RunResult], s: dict) -> pd.DataFrame:
    """Block unit tables of ``results`` with held-out ablation importance and validation loss."""
    from gfa_theory.instrument import importance

    frames = []
    for (desc, _), res in zip(plan, results):
        units = unit_table(res, "block", **desc)
        batches = heldout_batches(res, s["importance_batches"], s["importance_batch_size"])
        abl = importance.ablation(res.model, batches).set_index("unit")["score"]
        units["imp_ablation"] = units["unit"].map(abl)
        units["val_loss"] = importance.evaluate(res.model, batches)
        frames.append(units)
    return pd.concat(frames, ignore_index=True)


def summary_row(test: str, values, method: str = "mean over seeds, t-interval") -> dict:
    """A tidy summary row holding the mean of ``values`` with its t-interval."""
    from gfa_theory.instrument.stats import mean_ci

    values = list(values)
    m, lo, hi = mean_ci(values)
    return {"test": test, "estimate": m, "ci_low": lo, "ci_high": hi, "p": np.nan, "r2": np.nan,
            "n": len(values), "n_groups": len(values), "method": method}


SUMMARY_COLUMNS = ["test", "estimate", "ci_low", "ci_high", "p", "r2", "n", "n_groups", "method"]


def finish(ctx: Context, name: str, units: pd.DataFrame, summary: pd.DataFrame, results, started: float,
           **tables: pd.DataFrame) -> pd.DataFrame:
    """Write a study's tables with its stamp; return the unit table with the summary attached."""
    write_study(ctx, name, {"units": units, **tables, "summary": summary}, stamp(ctx, results, name, started))
    units.attrs["summary"] = summary
    return units


# ---- writing ----------------------------------------------------------------------------------

def stamp(ctx: Context, runs: Iterable[RunResult], study: str, started: float, **extra) -> dict:
    runs = list(runs)
    metas = []
    for r in runs:
        meta = json.loads((r.run_dir / "config.json").read_text())
        metas.append(meta)
    return {"study": study, "profile": ctx.profile, "package_version": __version__,
            "torch_version": torch.__version__,
            "seeds": sorted({r.config.train.seed for r in runs}),
            "runs": sorted({r.run_dir.name for r in runs}),
            "config_hashes": sorted({r.run_dir.name.split("-", 1)[1] for r in runs}),
            "data_sha256": sorted({m["data"]["sha256"] for m in metas}),
            "wall_seconds": round(time.time() - started, 1), **extra}


def write_study(ctx: Context, name: str, tables: dict[str, pd.DataFrame], meta: dict) -> Path:
    """Write ``<root>/studies/<profile>/<name>/<table>.csv`` and ``meta.json`` (written last)."""
    out = ctx.study_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    for tname, df in tables.items():
        write_csv_atomic(out / f"{tname}.csv", df)
    write_json_atomic(out / "meta.json", meta)
    return out


def load_study(ctx: Context, name: str) -> dict[str, pd.DataFrame] | None:
    """The tables of a finished study, or None when it has not been run for this profile."""
    d = ctx.study_dir(name)
    if not (d / "meta.json").is_file():
        return None
    return {p.stem: pd.read_csv(p) for p in sorted(d.glob("*.csv"))}


def study_module(name: str):
    """The module of study ``name`` (one of :data:`experiments.STUDIES`)."""
    return importlib.import_module(f"experiments.{name}")


def format_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A plain aligned text table (the key table a study prints)."""
    return tabulate(df, headers="keys", tablefmt="plain", floatfmt=floatfmt, showindex=False)
