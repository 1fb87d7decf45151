"""``gfa plot RUN``: one run's accumulated gradient ``A`` against fan-in ``F``, as a PNG.

``RUN`` is any directory holding a ``gradients.csv`` in the run format (``gfa train``, the
Hugging Face and Lightning callbacks). Two panels: ``A/max`` and ``F/max`` along depth (the
profile the theory predicts), and ``A`` against ``F`` per unit with their Spearman correlation.
The figure draws the run's numbers only; nothing is fitted.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from gfa_theory.cli import COMMANDS
from gfa_theory.errors import ConfigError

MAX_GRADIENTS_BYTES = 256 * 2 ** 20  # a gradients.csv larger than this is not a run's (read into memory)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot", help=COMMANDS["plot"],
        description="Draw one run's accumulated gradient A per block (or branch) against its fan-in F "
                    "into a PNG: the depth profile of A/max beside F/max, and A against F with Spearman rho.")
    p.add_argument("run", metavar="RUN", help="a run directory holding gradients.csv (gfa train --out, "
                                              "the Hugging Face or Lightning callback's output directory)")
    p.add_argument("--kind", choices=("block", "branch"), default="block", help="units to draw (default: block)")
    p.add_argument("--quantity", default="A", help="tracker total to draw (default: A; e.g. A_stream, A_rms)")
    p.add_argument("--out", metavar="FILE.png", help="output file (default: RUN-NAME_A_vs_F.png here)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def unit_table(run_dir: Path, kind: str, quantity: str):
    """The run's ``quantity`` per unit of ``kind`` next to ``F`` (both over their max), in depth order."""
    from gfa_theory.cli.train import layer_table  # noqa: PLC0415  (start-up: pandas, scipy)
    from gfa_theory.train.store import GRADIENTS_FILE, read_gradients  # noqa: PLC0415

    file = run_dir / GRADIENTS_FILE
    if not file.is_file():
        raise ConfigError(f"{run_dir} holds no {GRADIENTS_FILE}: give a run directory (gfa train --out)")
    if file.stat().st_size > MAX_GRADIENTS_BYTES:
        raise ConfigError(f"{file} is larger than {MAX_GRADIENTS_BYTES // 2 ** 20} MiB: not a run's gradients")
    grads = read_gradients(run_dir)
    missing = {"unit", "kind", "quantity", "step", "value", "fan_in", "index"} - set(grads.columns)
    if missing:
        raise ConfigError(f"{file} is not in the run format: no column {sorted(missing)[0]!r}")
    table = layer_table(grads, kind, quantity)
    if len(table) < 2:
        present = sorted(set(grads.loc[grads["kind"] == kind, "quantity"]))
        raise ConfigError(f"{file} has no {quantity!r} totals for two or more {kind} units"
                          + (f" (it has: {', '.join(present)})" if present else ""))
    return table


def draw(table, quantity: str = "A", title: str = "", rho: float = float("nan")):
    """The two panels of one run's table (``layer_table``) on a new matplotlib Figure (no pyplot:
    no display or backend needed). Returns the Figure."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (start-up)

    fig = Figure(figsize=(8.4, 3.4))
    left, right = fig.subplots(1, 2)
    x = range(1, len(table) + 1)
    left.plot(x, table["F_norm"], "s--", color="0.45", label="F / max (fan-in, theory)")
    left.plot(x, table["A_norm"], "o-", color="C0", label=f"{quantity} / max (measured)")
    left.set(xlabel="unit, input to output", ylabel="fraction of the largest", ylim=(0, 1.05))
    left.legend(fontsize=8)
    right.plot(table["F"], table["A"], "o", color="C0")
    for row in table.itertuples(index=False):
        right.annotate(str(row.unit), (row.F, row.A), fontsize=6, xytext=(3, 2), textcoords="offset points")
    right.set(xlabel="fan-in F", ylabel=quantity, title=f"Spearman rho({quantity}, F) = {rho:.2f}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def run(args: argparse.Namespace) -> int:
    from gfa_theory.cli.train import spearman  # noqa: PLC0415
    from gfa_theory.train.store import write_bytes_atomic  # noqa: PLC0415

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory: give a run directory (gfa train --out)")
    out = Path(args.out) if args.out else Path(f"{run_dir.resolve().name}_{args.quantity}_vs_F.png")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must end in .png, got {out}")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: choose another --out or add --force")
    table = unit_table(run_dir, args.kind, args.quantity)
    rho, _ = spearman(table)
    fig = draw(table, args.quantity, f"{run_dir.resolve().name}: {args.quantity} per {args.kind} vs fan-in", rho)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=150)
    write_bytes_atomic(out, png.getvalue())  # never a half-written file
    print(f"{out} ({len(table)} {args.kind} units, Spearman rho({args.quantity}, F) = {rho:.3f})")
    return 0
