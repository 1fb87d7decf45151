"""Study I/O: a study's tables written atomically with their stamp, and read back.

A study writes ``<root>/studies/<profile>/<name>/<table>.csv`` and a ``meta.json`` stamp
(profile, seeds, run ids, config hashes, corpus hashes, package and torch versions, wall time, runs
trained vs read from the cache, the executor and its workers),
written last, so a study without ``meta.json`` is unfinished. :func:`load_study` reads the tables
back (what ``python -m figures`` draws from).
"""
from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

from gfa_theory import __version__
from gfa_theory.train.lifecycle import RunResult
from gfa_theory.train.store import write_csv_atomic, write_json_atomic
from gfa_theory.untrusted import MAX_LOG_BYTES, regular_file

from .runner import Context

# the layout of the tables a study writes: 2 = summary rows keyed by structured fields with se and df
# (experiments.summary); an older cache is brought up to it by experiments.upgrade, not retrained
LAYOUT = 2


def stamp(ctx: Context, runs: Iterable[RunResult], study: str, started: float, **extra) -> dict:
    """The ``meta.json`` of a study built from ``runs`` (``extra``: study-specific settings)."""
    runs = list(runs)
    metas = [json.loads((r.run_dir / "config.json").read_text()) for r in runs]
    return {"study": study, "profile": ctx.profile, "package_version": __version__,
            "torch_version": torch.__version__,
            "seeds": sorted({r.config.train.seed for r in runs}),
            "runs": sorted({r.run_dir.name for r in runs}),
            "config_hashes": sorted({r.run_dir.name.split("-", 1)[1] for r in runs}),
            "data_sha256": sorted({m["data"]["sha256"] for m in metas}),
            # where the time went: runs trained by this call vs read back from the result cache
            "runs_trained": sum(bool(r.trained) for r in runs), "runs_cached": sum(not r.trained for r in runs),
            "wall_seconds": round(time.time() - started, 1), "layout": LAYOUT,
            **ctx.usage(),  # which executor ran its tasks and how many at once
            **extra}


def write_study(ctx: Context, name: str, tables: dict[str, pd.DataFrame], meta: dict) -> Path:
    """Write ``<root>/studies/<profile>/<name>/<table>.csv`` and ``meta.json`` (written last)."""
    out = ctx.study_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    for tname, df in tables.items():
        write_csv_atomic(out / f"{tname}.csv", df)
    write_json_atomic(out / "meta.json", meta)
    return out


def finish(ctx: Context, name: str, main: pd.DataFrame, summary: pd.DataFrame, results: Iterable[RunResult],
           started: float, main_table: str = "units", meta: dict | None = None,
           **tables: pd.DataFrame) -> pd.DataFrame:
    """The common closing of a study's ``run``: write its main table (``main_table``), the other
    ``tables`` and ``summary`` with its stamp (plus ``meta``); return the main table with the
    summary in ``attrs["summary"]``."""
    write_study(ctx, name, {main_table: main, **tables, "summary": summary},
                stamp(ctx, results, name, started, **(meta or {})))
    main.attrs["summary"] = summary
    return main


def read_tables(d: Path) -> dict[str, pd.DataFrame] | None:
    """The tables of the finished study in folder ``d`` (the result cache's or a committed copy),
    or None without its ``meta.json``. Each is a regular file of bounded size: a results folder may
    come from someone else."""
    if not (d / "meta.json").is_file():
        return None
    return {p.stem: pd.read_csv(regular_file(p, "study table", MAX_LOG_BYTES)) for p in sorted(d.glob("*.csv"))}


def load_study(ctx: Context, name: str) -> dict[str, pd.DataFrame] | None:
    """The tables of a finished study, or None when it has not been run for this profile."""
    return read_tables(ctx.study_dir(name))


def flags(column: pd.Series) -> pd.Series:
    """A boolean column of a table read back from CSV (``True``/``1``; pandas keeps it as text
    or numbers when it has missing values), as booleans."""
    return column.astype(str).isin(("True", "1", "1.0"))


def study_module(name: str):
    """The module of study ``name`` (one of :data:`experiments.STUDIES`)."""
    return importlib.import_module(f"experiments.{name}")


def format_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A plain aligned text table (the key table a study prints)."""
    return tabulate(df, headers="keys", tablefmt="plain", floatfmt=floatfmt, showindex=False)
