"""``gfa reproduce``: regenerate every figure and table and the reproduction report."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..errors import ConfigError
from .study import MAX_JOBS
from ._outdir import check_figures_out, reproduce_names


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="regenerate every figure, table and the report",
                       description="Run or reuse the studies, then draw every figure and table (figures/make_all.py).")
    p.add_argument("--profile", default="default", choices=("smoke", "default", "full"))
    p.add_argument("--only", default=None, help="comma-separated outputs, e.g. F2,T4")
    p.add_argument("--force", action="store_true",
                   help="retrain and recompute instead of reusing caches, and write into --out even if it "
                        "holds other files")
    p.add_argument("--out", default=None,
                   help="output folder (default: figures/generated for the default profile, else "
                        "$GFA_RESULTS/figures/PROFILE): new, empty, or holding only files gfa reproduce "
                        "writes (they are redrawn); anything else is refused unless --force")
    p.add_argument("--results", default=None, help="results root of the runs (default: $GFA_RESULTS or ./results)")
    p.add_argument("--jobs", type=int, default=0, help="parallel training processes (default: CPU cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be in 0..{MAX_JOBS}, got {args.jobs}")
    make_all = importlib.import_module("figures.make_all")
    out = Path(args.out) if args.out else make_all.default_out(args.profile)
    check_figures_out(out, reproduce_names(make_all.OUTPUTS), args.force)
    return make_all.build(args)
