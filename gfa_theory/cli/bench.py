"""``gfa bench <name>``: timing benchmarks (``tracker``, ``gains``, ``loop``, ``sizes``:
:mod:`gfa_theory.train.benchmark`; ``taper``: :mod:`gfa_theory.methods.taper_timing`).

The help texts are plain sentences (:data:`DESCRIPTION`), not this docstring's markup.

Each benchmark is one entry of :data:`BENCHMARKS`: a help line, a function adding its own
options to its sub-parser, and a function ``run(args) -> dict`` whose result is printed as JSON
(``--format json``) or as ``key: value`` lines. A new benchmark is one more entry. The modules
that time are imported when their benchmark runs (start-up: ``gfa bench --help`` stays quick).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Callable

from gfa_theory.cli import COMMANDS
from gfa_theory.cli.formats import add_format_argument, render_rows
from gfa_theory.cli.taper import MAX_BLOCKS as MAX_TAPER_BLOCKS
from gfa_theory.errors import ConfigError
from gfa_theory.models import MAX_DIM
from gfa_theory.train.memory import check_inference_memory, check_training_memory


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict | list[dict]]


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (hostile sizes are refused before timing)."""
    def parse(text: str) -> int:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} <= {high:,}, got {text[:40]}")
        return value
    return parse


_positive = _int_in(1, MAX_DIM)
_repeats = _int_in(1, 100_000)  # every repeat's times are kept
_warmup = _int_in(0, 100_000)
_threads = _int_in(1, 1024)


def _tracker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=_repeats, default=150,
                   help="interleaved timing repeats (fewer than ~150 is noisier than the effect on a shared machine)")
    p.add_argument("--steps", type=_repeats, default=2, help="training steps per timed block")
    p.add_argument("--warmup", type=_warmup, default=5, help="untimed steps per variant first")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override the default GPT run config (e.g. train.device=cpu; default device: auto)")


def _tracker_run(args: argparse.Namespace) -> dict:
    from gfa_theory.train.benchmark import tracker_overhead  # noqa: PLC0415  (start-up)
    from gfa_theory.train.run_config import build_run_config  # noqa: PLC0415  (start-up)

    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    cfg = build_run_config("gpt", overrides=["train.device=auto", *args.overrides])  # CUDA when present
    check_training_memory(cfg)
    return tracker_overhead(cfg, repeats=args.repeats, block=args.steps, warmup=args.warmup)


def _gains_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--every", type=_int_in(1, 100_000), default=50,
                   help="train.gain_every of the timed run: steps per gain sample (one sample per timed period)")
    p.add_argument("--repeats", type=_repeats, default=6, help="interleaved timing repeats of one sampling period each")
    p.add_argument("--warmup", type=_warmup, default=3, help="untimed steps per variant first")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override the default GPT run config (e.g. model.n_blocks=8; default device: auto)")


def _gains_run(args: argparse.Namespace) -> dict:
    from gfa_theory.train.benchmark import gain_overhead  # noqa: PLC0415  (start-up)
    from gfa_theory.train.run_config import build_run_config  # noqa: PLC0415  (start-up)

    cfg = build_run_config("gpt", overrides=["train.device=auto", *args.overrides])  # CUDA when present
    check_training_memory(cfg)
    return gain_overhead(cfg, every=args.every, repeats=args.repeats, warmup=args.warmup)


# The point ``loop`` and ``sizes`` time unless --set says otherwise: the default profile's
# Transformer at CascadeFormer's depth (C = 64, 8 blocks, context 64, batch 16) on the stdlib corpus.
SCALE_POINT = ["train.device=auto", "data.corpus=stdlib", "model.n_blocks=8", "model.n_embd=64", "model.n_head=4",
               "model.d_ff=256", "model.block_size=64", "train.batch_size=16"]


def _widths(text: str) -> list[int]:
    parse = _int_in(1, MAX_DIM)
    widths = [parse(part) for part in text.split(",") if part.strip()]
    if not 1 <= len(widths) <= 16:
        raise argparse.ArgumentTypeError(f"expected 1 to 16 comma-separated widths, got {text[:40]!r}")
    return widths


def _point_arguments(p: argparse.ArgumentParser, repeats: int, steps: int) -> None:
    p.add_argument("--repeats", type=_repeats, default=repeats, help="interleaved timing repeats")
    p.add_argument("--steps", type=_repeats, default=steps, help="training steps per timed block")
    p.add_argument("--warmup", type=_warmup, default=3, help="untimed steps per variant first")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override the timed run config (default: C=64, 8 blocks, context 64, batch 16, "
                        "data.corpus=stdlib, device auto)")


def _point_config(args: argparse.Namespace, width: int | None = None):
    from gfa_theory.train.run_config import build_run_config  # noqa: PLC0415  (start-up)

    cfg = build_run_config("gpt", overrides=[*SCALE_POINT, *args.overrides])
    if width is not None:  # the memory bound of the widest model of the ladder
        check_training_memory(build_run_config(
            "gpt", overrides=[*SCALE_POINT, *args.overrides, f"model.n_embd={width}", f"model.d_ff={4 * width}"]))
    check_training_memory(cfg)
    return cfg


def _loop_arguments(p: argparse.ArgumentParser) -> None:
    _point_arguments(p, repeats=20, steps=5)


def _loop_run(args: argparse.Namespace) -> dict:
    from gfa_theory.train.benchmark import loop_overhead  # noqa: PLC0415  (start-up)

    return loop_overhead(_point_config(args), repeats=args.repeats, block=args.steps, warmup=args.warmup)


def _sizes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", type=_widths, default=[64, 96, 128, 192],
                   help="comma-separated residual widths C of the ladder (FFN hidden 4 C)")
    _point_arguments(p, repeats=10, steps=3)


def _sizes_run(args: argparse.Namespace) -> list[dict]:
    from gfa_theory.train.benchmark import size_throughput  # noqa: PLC0415  (start-up)

    cfg = _point_config(args, width=max(args.widths))
    return size_throughput(cfg, args.widths, repeats=args.repeats, block=args.steps, warmup=args.warmup)


def _taper_arguments(p: argparse.ArgumentParser) -> None:
    from gfa_theory.methods.taper import SCHEDULES  # noqa: PLC0415  (start-up)

    p.add_argument("--schedule", choices=[s for s in SCHEDULES if s != "uniform"], default="linear",
                   help="taper schedule of the model timed against the uniform one")
    p.add_argument("--r", type=float, default=0.5, help="width multiplier of the last block")
    p.add_argument("--blocks", type=_int_in(1, MAX_TAPER_BLOCKS), default=8, help="number of Transformer blocks B")
    p.add_argument("--repeats", type=_repeats, default=30, help="interleaved timing repeats")
    p.add_argument("--warmup", type=_warmup, default=5, help="untimed forward passes per model and mode first")
    p.add_argument("--batch", type=_positive, default=64, help="batch of the throughput measurement")
    p.add_argument("--context", type=_positive, default=64, help="tokens per sequence (fixed context)")
    p.add_argument("--threads", type=_threads, default=1, help="torch threads while timing")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present, else cpu), cpu, cuda")


def _taper_run(args: argparse.Namespace) -> dict:
    from gfa_theory.methods.taper import TaperConfig  # noqa: PLC0415  (start-up)
    from gfa_theory.methods.taper_timing import TimingConfig, bench_taper  # noqa: PLC0415  (start-up)

    taper = TaperConfig(B=args.blocks, schedule=args.schedule, r=args.r, block_size=args.context)
    check_inference_memory(taper, args.batch)
    timing = TimingConfig(context=args.context, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
                          threads=args.threads, device=args.device)
    return bench_taper(taper, timing)


BENCHMARKS: dict[str, Benchmark] = {
    "tracker": Benchmark("training-step time of the default GPT with and without the gradient tracker",
                         _tracker_arguments, _tracker_run),
    "gains": Benchmark("training-step time of the default GPT with and without gains sampled (train.gain_every), "
                       "with an A/A control", _gains_arguments, _gains_run),
    "loop": Benchmark("training-step time of the package against a bare PyTorch loop on the same model, data "
                      "and optimizer, with an A/A control", _loop_arguments, _loop_run),
    "sizes": Benchmark("tokens/s of the package's training step along a ladder of model widths",
                       _sizes_arguments, _sizes_run),
    "taper": Benchmark("latency and throughput of the default CascadeFormer (tapered) vs uniform Transformer",
                       _taper_arguments, _taper_run),
}


DESCRIPTION = ("Timing benchmarks, measured in interleaved blocks: tracker (training-step time with and "
               "without the gradient tracker), gains (with and without branch gains sampled during training, "
               "beside an A/A control), loop (the package's training step against a bare PyTorch loop, beside "
               "an A/A control), sizes (tokens/s along a ladder of model widths) and taper (latency and throughput of a tapered vs a "
               "uniform Transformer).")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help=COMMANDS["bench"], description=DESCRIPTION)
    names = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True,
                             parser_class=type(p))
    for name, bench in BENCHMARKS.items():
        q = names.add_parser(name, help=bench.help, description=bench.help)
        add_format_argument(q, "the measurement (csv/latex: one row)")
        bench.add_arguments(q)
        q.set_defaults(func=run, bench_run=bench.run)


def _print_rows(rows: list[dict], fmt: str) -> None:
    """A list of rows: JSON, CSV/LaTeX, or a text table of the columns that vary with the fields
    every row shares as ``key: value`` lines below it."""
    if fmt == "json":
        print(json.dumps(rows))
    elif fmt in ("csv", "latex"):
        print(render_rows(rows, fmt))
    else:
        from tabulate import tabulate  # noqa: PLC0415  (start-up)

        shared = [k for k in rows[0] if all(r.get(k) == rows[0][k] for r in rows)]
        varying = [k for k in rows[0] if k not in shared]
        print(tabulate([[r[k] for k in varying] for r in rows], headers=varying, floatfmt=".4g"))
        for key in shared:
            print(f"{key}: {rows[0][key]}")


def run(args: argparse.Namespace) -> int:
    result = args.bench_run(args)
    if isinstance(result, list):
        _print_rows(result, args.format)
    elif args.format == "json":
        print(json.dumps(result))
    elif args.format in ("csv", "latex"):  # the scalar results as one row
        print(render_rows([{k: v for k, v in result.items() if isinstance(v, (int, float, str))}], args.format))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    return 0
