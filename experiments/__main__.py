"""``python -m experiments NAME --profile ...``: run one worked study, print its takeaway (what was
predicted, what was measured, the verdict: :func:`experiments.verdicts.render.study_takeaways`)
and then its key table.

Runs from a checkout of the repository (the studies are not part of the installed package).
A user mistake is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from experiments import ALONG_SCALE, EXPLORATORY, OUTSIDE_DEFAULT, STUDIES
from experiments.executors import SCHEMES, check_spec, default_spec
from experiments.plans import PROFILES, caveat
from experiments.runner import Context
from experiments.study_io import format_table, load_study, study_module
from experiments.verdicts import for_study
from experiments.verdicts.render import along_scale_table, study_takeaways
from experiments.verdicts.scale import along_scale
from gfa_theory.cli.outdir import check_results_root
from gfa_theory.errors import ConfigError, report_user_errors
from gfa_theory.train.store import results_root

MAX_JOBS = 256  # training processes at once (each holds a model, torch and its data)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments",
                                description="Run a worked study and print its key statistics.")
    p.add_argument("name", choices=STUDIES + EXPLORATORY + OUTSIDE_DEFAULT + ALONG_SCALE, metavar="NAME",
                   help=f"study: {', '.join(STUDIES + EXPLORATORY + OUTSIDE_DEFAULT + ALONG_SCALE)}")
    p.add_argument("--profile", default="default", choices=PROFILES)
    p.add_argument("--out", default=None,
                   help="results root (default: $GFA_RESULTS or ./results): its runs are reused by config "
                        "hash and the study tables go to studies/PROFILE/NAME/ in it; it must not itself be "
                        "a run directory or another command's result")
    add_executor_options(p)
    p.add_argument("--force", action="store_true", help="retrain instead of reusing cached runs")
    p.add_argument("--no-progress", action="store_true")
    return p


def add_executor_options(p: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--jobs``, the same for every command that runs studies."""
    p.add_argument("--executor", default=None,
                   help=f"where the runs go: {', '.join(SCHEMES)} (default: $GFA_EXECUTOR or local; "
                        "dask without an address uses $DASK_SCHEDULER_ADDRESS, else starts a local cluster)")
    p.add_argument("--jobs", type=int, default=0,
                   help="runs at once, for every executor (default: local: CPU cores, at most 8; dask: every "
                        "worker of the cluster; slurm: every run of the grid)")


def executor_of(args: argparse.Namespace) -> str:
    return check_spec(args.executor or default_spec())


def start_executor(ctx: Context) -> None:
    """Start (or reach) a cluster before any work: an unreachable address fails in seconds."""
    if ctx.executor != "local":
        ctx.pool()


def check_jobs(jobs: int) -> None:
    if not 0 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be in 0..{MAX_JOBS}, got {jobs}")


def run(args: argparse.Namespace) -> int:
    check_jobs(args.jobs)
    check_results_root(results_root(args.out))
    with Context(args.profile, results_root(args.out), args.jobs, args.force, not args.no_progress,
                 executor=executor_of(args)) as ctx:
        start_executor(ctx)
        df = study_module(args.name).run(ctx=ctx)
    tables = {s: load_study(ctx, s) for r in for_study(args.name) for s in r.studies}
    text = study_takeaways(args.name, tables, ctx.profile)
    if args.name in ALONG_SCALE:  # its verdicts are per ladder point and per trend
        text = format_table(along_scale_table(along_scale(load_study(ctx, args.name))))
    if text:
        print(text + "\n")
    print(format_table(df.attrs["summary"]))
    print(f"\nwritten to {ctx.study_dir(args.name)}")
    if caveat(args.profile):
        print(f"\n{caveat(args.profile)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return report_user_errors("experiments", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
