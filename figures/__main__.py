"""``python -m figures``: the one script that regenerates every figure, table and the report.

    python -m figures --profile default          # what `make reproduce` runs
    python -m figures --profile smoke --only F1,T5 --out /tmp/figs
    python -m figures --profile scale            # the scale study only: F13 and the "Along scale" report

Runs from a checkout of the repository: the arguments are checked here, the work is done by
:func:`figures.build.build`. A user mistake is one line on stderr and exit status 2.

Modules (each imports only those listed before it): ``stamp`` (provenance stamps), ``names`` (the
display name of every arm, schedule and method), ``plots`` (draw only), ``gfa``, ``efficiency`` and ``mechanism`` (the builders: study tables to figures and tables),
``outputs`` (the static list F1-F12, T1-T6, B1), ``report`` (REPORT.md and the README), ``build``
(runs the studies, writes every output).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.__main__ import add_executor_options, check_jobs, executor_of
from experiments.plans import PROFILES
from figures import build
from gfa_theory.cli.outdir import check_figures_out
from gfa_theory.errors import report_user_errors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m figures",
                                description="Run or reuse the studies, then draw every figure and table "
                                            "and write the reproduction report.")
    p.add_argument("--profile", default="default", choices=PROFILES)
    p.add_argument("--only", default=None, help="comma-separated outputs, e.g. F2,T4 (no report)")
    p.add_argument("--force", action="store_true",
                   help="retrain and recompute instead of reusing caches, and write into --out even if it "
                        "holds other files")
    p.add_argument("--out", default=None,
                   help="output folder (default: figures/generated for the default profile, else "
                        "$GFA_RESULTS/figures/PROFILE): new, empty, or holding only files this script "
                        "writes (they are redrawn); anything else is refused unless --force")
    p.add_argument("--results", default=None, help="results root of the runs (default: $GFA_RESULTS or ./results)")
    add_executor_options(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return report_user_errors("figures", lambda: _build(args))


def _build(args: argparse.Namespace) -> int:
    check_jobs(args.jobs)
    args.executor = executor_of(args)
    out = Path(args.out) if args.out else build.default_out(args.profile)
    check_figures_out(out, build.own_names(), args.force)
    return build.build(args)


if __name__ == "__main__":
    sys.exit(main())
