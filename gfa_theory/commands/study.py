"""``gfa study NAME --profile ...``: run one of the worked studies and print its key table."""
from __future__ import annotations

import argparse
import importlib

from ..errors import ConfigError
from ..runs import results_root
from ._outdir import check_results_root

PROFILES = ("smoke", "default", "full")
MAX_JOBS = 256  # training processes at once (each holds a model, torch and its data)


def _studies() -> tuple[str, ...]:
    try:
        return importlib.import_module("experiments").STUDIES
    except ModuleNotFoundError:  # the package was installed without the experiments
        return ()


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="run a GFA study (trains or reuses cached runs)",
                       description="Run a worked study from experiments/ and print its key statistics.")
    p.add_argument("name", help=f"study: {', '.join(_studies()) or '(experiments not installed)'}")
    p.add_argument("--profile", default="default", choices=PROFILES)
    p.add_argument("--out", default=None,
                   help="results root (default: $GFA_RESULTS or ./results): its runs are reused by config "
                        "hash and the study tables go to studies/PROFILE/NAME/ in it; it must not itself be "
                        "a run directory or another command's result")
    p.add_argument("--jobs", type=int, default=0, help="parallel training processes (default: CPU cores)")
    p.add_argument("--force", action="store_true", help="retrain instead of reusing cached runs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = _studies()
    if args.name not in names:
        raise ConfigError(f"unknown study '{args.name}' (choices: {', '.join(names)})")
    if not 0 <= args.jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be in 0..{MAX_JOBS}, got {args.jobs}")
    check_results_root(results_root(args.out))
    common = importlib.import_module("experiments.common")
    mod = importlib.import_module(f"experiments.{args.name}")
    ctx = common.Context(args.profile, results_root(args.out), args.jobs, args.force, not args.no_progress)
    df = mod.run(ctx=ctx)
    print(common.format_table(df.attrs["summary"]))
    print(f"\nwritten to {ctx.study_dir(args.name)}")
    return 0
