"""``gfa taper``: print a CascadeFormer width schedule."""
from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from gfa_theory.errors import ConfigError
from gfa_theory.methods.taper import SCHEDULES, TaperConfig, match, plan

MAX_BLOCKS = 10_000  # a schedule of this many blocks is planned in ~2 s


def add_parser(sub) -> None:
    p = sub.add_parser("taper", help="per-block heads and FFN width of a CascadeFormer schedule",
                       description="Per-block widths of a depth-tapered Transformer (residual width constant).")
    p.add_argument("--blocks", type=int, required=True, help=f"number of Transformer blocks B (at most {MAX_BLOCKS:,})")
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("--n-embd", type=int, default=128, help="residual width C (kept constant)")
    p.add_argument("--heads", type=int, default=4, help="heads of the uniform model")
    p.add_argument("--d-ff", type=int, default=512, help="FFN hidden size of the uniform model")
    p.add_argument("--r", type=float, default=0.5, help="width multiplier of the last block")
    p.add_argument("--alpha", type=float, default=1.0, help="exponent of the fan-in schedule")
    p.add_argument("--step-at", type=float, default=0.5, help="step schedule: fraction kept full width")
    p.add_argument("--quantum", type=int, default=32, help="FFN sizes are multiples of this")
    p.add_argument("--supervision", choices=("final", "all"), default="final")
    p.add_argument("--match", metavar="BUDGET=FRACTION",
                   help="solve the strength for a budget, e.g. params=0.8 or flops=0.9")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def _parse_match(text: str) -> tuple[str, float]:
    try:
        budget, frac = text.split("=", 1)
        value = float(frac)
    except ValueError:
        raise ConfigError(f"--match must look like params=0.8 or flops=0.9, got {text!r}") from None
    if budget not in ("params", "flops"):
        raise ConfigError(f"--match budget must be 'params' or 'flops', got {budget!r}")
    return budget, value


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.blocks <= MAX_BLOCKS:  # the fan-in schedule's symbolic analysis is O(B) but slow
        raise ConfigError(f"--blocks must be in 1..{MAX_BLOCKS:,}, got {args.blocks}")
    cfg = TaperConfig(B=args.blocks, n_embd=args.n_embd, n_head=args.heads, d_ff=args.d_ff,
                      schedule=args.schedule, r=args.r, alpha=args.alpha, step_at=args.step_at,
                      quantum=args.quantum, supervision=args.supervision)
    if args.match:
        budget, frac = _parse_match(args.match)
        p = match(cfg, frac, budget)
    else:
        p = plan(cfg)
    d = p.to_dict()
    if args.format == "json":
        print(json.dumps(d, indent=2))
        return 0
    print(_table(p, d))
    return 0


def _table(p, d: dict) -> str:
    """The plan as text: its settings, one row per block, and its cost against uniform."""
    c = p.config
    rows = [[row["block"], row["fan_in"], f"{row['multiplier']:.3f}", row["n_head"], row["attn_width"], row["d_ff"]]
            for row in d["blocks"]]
    return "\n".join([
        f"CascadeFormer schedule '{c.schedule}' B={c.B} C={c.n_embd} head_dim={p.head_dim} "
        f"r={c.r:g} alpha={c.alpha:g} quantum={c.quantum}",
        tabulate(rows, headers=["block", "fan-in", "mult", "heads", "attn", "d_ff"], tablefmt="plain",
                 disable_numparse=True, stralign="right"),
        f"params {d['params']:,} ({d['params_ratio']:.3f} x uniform), "
        f"FLOPs/token {d['flops_per_token']:,.0f} ({d['flops_ratio']:.3f} x uniform)"])
