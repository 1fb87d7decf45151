"""``gfa train``: train a model, then print accumulated gradient ``A`` next to fan-in ``F``."""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import pandas as pd
from scipy.stats import spearmanr
from tabulate import tabulate

from gfa_theory.cli import COMMANDS
from gfa_theory.cli.formats import add_format_argument, render_rows
from gfa_theory.cli.outdir import check_results_root
from gfa_theory.train.lifecycle import train
from gfa_theory.train.memory import check_training_memory
from gfa_theory.train.run_config import MODEL_TASKS, build_run_config
from gfa_theory.train.store import results_root


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help=COMMANDS["train"],
        description="Train a model (resumable; results keyed by the config hash under --out) and "
                    "print, per layer, fan-in F and accumulated gradient A with their Spearman correlation.")
    p.add_argument("--model", required=True, choices=sorted(MODEL_TASKS), help="model family")
    p.add_argument("--config", metavar="FILE.json",
                   help='JSON config: {"model": {...}, "data": {...}, "train": {...}} (partial is fine)')
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override a config key, e.g. model.n_blocks=8 train.steps=200 data.text_file=a.txt")
    p.add_argument("--out", metavar="DIR",
                   help="results root (default: $GFA_RESULTS or ./results): holds one directory per run, "
                        "keyed by the config hash (the same config reuses its run); it must not itself be "
                        "a run directory or another command's result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true",
                   help="train from scratch even if a checkpoint or a finished run exists")
    p.add_argument("--force", action="store_true",
                   help="retrain from scratch even if the run is complete or its stored files are "
                        "refused (corrupt, another run's, trained with other threads / torch / CPU)")
    add_format_argument(p, "A next to F per unit (json adds the run and its Spearman correlations)")
    p.set_defaults(func=run)


def layer_table(gradients: pd.DataFrame, kind: str = "branch", quantity: str = "A") -> pd.DataFrame:
    """Per unit of ``kind``: fan-in ``F``, accumulated ``quantity``, both divided by their max."""
    g = gradients[(gradients["kind"] == kind) & (gradients["quantity"] == quantity)
                  & gradients["step"].isna()]
    table = g[["unit", "index", "fan_in", "value"]].rename(columns={"fan_in": "F", "value": "A"})
    table = table.sort_values("index").reset_index(drop=True)
    table["F_norm"] = table["F"].astype(float) / table["F"].astype(float).max()
    table["A_norm"] = table["A"] / table["A"].max()
    return table[["unit", "F", "F_norm", "A", "A_norm"]]


def spearman(table: pd.DataFrame) -> tuple[float, float]:
    """Spearman rho and p-value between A and F over the table's units (NaN when undefined)."""
    t = table.dropna(subset=["F", "A"])
    if len(t) < 3:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant F (a single supervised block...) gives NaN
        res = spearmanr(t["A"].to_numpy(float), t["F"].to_numpy(float))
    return float(res.statistic), float(res.pvalue)


def run(args: argparse.Namespace) -> int:
    cfg = build_run_config(args.model, args.config, args.overrides)
    check_results_root(results_root(args.out))  # before anything is loaded, allocated or written
    check_training_memory(cfg)
    start = time.perf_counter()
    result = train(cfg, args.out, resume=not args.restart, progress=not args.no_progress,
                   force=args.force)
    elapsed = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    print(_report(result, elapsed) if args.format == "table" else _structured(result, args.format))
    return 0


def _structured(result, fmt: str) -> str:
    """The per-unit table of A next to F as JSON (with the run and its correlations), CSV or LaTeX."""
    grads = result.gradients
    kinds = [k for k in ("branch", "block") if k in set(grads["kind"])] if len(grads) else []
    tables = {k: layer_table(grads, k).assign(kind=k) for k in kinds}
    if fmt == "json":
        return json.dumps({"run": result.run_dir.name, "run_dir": str(result.run_dir), "trained": result.trained,
                           "units": {k: t.drop(columns="kind").to_dict("records") for k, t in tables.items()},
                           "spearman": {k: dict(zip(("rho", "p"), spearman(t))) for k, t in tables.items()}})
    rows = pd.concat(tables.values()).to_dict("records") if tables else []
    return render_rows(rows, fmt)


def _report(result, elapsed: float) -> str:
    """Where the run is, its last validation numbers, and A next to F per unit."""
    how = f"trained in {elapsed:.1f} s" if result.trained else "read from an earlier run"
    lines = [f"run {result.run_dir.name} ({how}): {result.run_dir}"]
    val = result.metrics[result.metrics["split"] == "val"]
    if len(val):
        last = val.iloc[-1]
        lines.append(f"step {int(last['step'])}: val loss {last['loss']:.4f}, accuracy {last['accuracy']:.4f}")
    grads = result.gradients
    kinds = [k for k in ("branch", "block") if k in set(grads["kind"])] if len(grads) else []
    if not kinds:
        lines.append("gradient tracking was off (train.track=none): no per-layer table")
        return "\n".join(lines)
    table = layer_table(grads, kinds[0])
    rows = [[row.unit, "-" if pd.isna(row.F) else str(int(row.F)),
             "-" if pd.isna(row.F_norm) else f"{row.F_norm:.3f}", f"{row.A:.5g}", f"{row.A_norm:.3f}"]
            for row in table.itertuples(index=False)]
    lines += [f"\naccumulated gradient A per {kinds[0]} vs fan-in F (normalized by the max):",
              tabulate(rows, headers=["unit", "F", "F/max", "A", "A/max"], tablefmt="plain",
                       colalign=("left", "right", "right", "right", "right"), disable_numparse=True)]
    for k in kinds:
        units = layer_table(grads, k)
        rho, p = spearman(units)
        lines.append(f"Spearman rho(A, F) over {len(units)} {k} units: {rho:.3f} (p = {p:.3g})")
    return "\n".join(lines)
