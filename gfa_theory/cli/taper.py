"""``gfa taper``: print a CascadeFormer width schedule and its budget against the uniform model.

The budget (parameters, FLOPs per token) counts the embedding and the head, so it depends on the
vocabulary and the context: give them (``--vocab``, ``--context``) or a model config
(``--model-config``: a GPT config as JSON, or a ``gfa train`` run's ``config.json``).

``--from-run RUN_DIR`` derives a data-driven ("measured") schedule from a finished run: block
``b``'s width follows that run's accumulated training gradient ``A`` of block ``b`` (its
``gradients.csv``), ``s_b = max(r, (A_b / max A)^alpha)``, with the sizes of the run's model and
``alpha`` solved so that the plan has the budget of the fan-in schedule at the same floor ``r``
(what the CascadeFormer study matches every arm to), or the budget given with ``--match``.

``--predict`` derives the same measured schedule from the profile *predicted before training*:
a randomly initialized GPT of the given sizes (or of ``--model-config``, its norm placement
included) has its branch and norm gains measured on a few held-out windows of the shipped corpus
(``--predict-batches``, initialized with ``--seed``; deterministic on the CPU), and block ``b``'s
width follows the account's profile of ``A`` (``--account``, default the full product with
norm gains: :func:`gfa_theory.methods.taper.predicted_profile`).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tabulate import tabulate

from gfa_theory.cli import COMMANDS
from gfa_theory.cli.formats import (
    add_format_argument,
    fill_defaults,
    refuse_conflicts,
    render_rows,
)
from gfa_theory.errors import ConfigError, DataError
from gfa_theory.config import from_dict, short_repr
from gfa_theory.methods.taper import (
    MAX_PREDICT_BATCHES,
    PREDICT_ACCOUNTS,
    SCHEDULES,
    PredictConfig,
    TaperConfig,
    budget_ratio,
    gradient_profile,
    match,
    plan,
    predicted_profile,
)
from gfa_theory.models import GPTConfig
from gfa_theory.train.store import CONFIG_FILE, GRADIENTS_FILE, is_complete, read_config, read_gradients
from gfa_theory.untrusted import read_json

MAX_BLOCKS = 10_000  # a schedule of this many blocks is planned in ~2 s
# options a model config sets -> (TaperConfig field, GPT config key, default)
SIZES = {"blocks": ("B", "n_blocks", None), "n_embd": ("n_embd", "n_embd", 128), "heads": ("n_head", "n_head", 4),
         "d_ff": ("d_ff", "d_ff", 512), "vocab": ("vocab_size", "vocab_size", 96),
         "context": ("block_size", "block_size", 64)}
DEFAULTS = {"r": 0.5, "alpha": 1.0, "step_at": 0.5}
MAX_PREDICT_BLOCKS = 512  # --predict measures a live model: a few seconds per hundred blocks on a CPU
PREDICT_DEFAULTS = {"account": "product", "seed": 0, "predict_batches": 2}


def add_parser(sub) -> None:
    p = sub.add_parser("taper", help=COMMANDS["taper"],
                       description="Per-block heads and FFN width of a depth-tapered Transformer (residual width "
                                   "constant), and its parameters and FLOPs per token against the uniform model "
                                   "(they count the embedding and head: give --vocab and --context, or --model-config).")
    p.add_argument("--blocks", type=int, help=f"number of Transformer blocks B (at most {MAX_BLOCKS:,})")
    p.add_argument("--model-config", metavar="FILE.json",
                   help="take B, width, heads, FFN, vocabulary and context from a GPT config (JSON), "
                        "or from a gfa train run's config.json")
    p.add_argument("--schedule", choices=SCHEDULES, help="width schedule (default linear; measured: with --from-run)")
    p.add_argument("--from-run", metavar="RUN_DIR",
                   help="derive the measured schedule from a finished gfa run's accumulated block gradients A, "
                        "at that run's model sizes, matched to the fan-in schedule's budget (or --match)")
    p.add_argument("--predict", action="store_true",
                   help="derive the measured schedule from the profile of A predicted before training (the "
                        "gains of a randomly initialized model of these sizes or of --model-config, measured on "
                        "held-out windows of the shipped corpus), matched to the fan-in schedule's budget (or --match)")
    p.add_argument("--account", choices=PREDICT_ACCOUNTS,
                   help="--predict: the account that turns gains into a profile (default product)")
    p.add_argument("--seed", type=int, help="--predict: initialization seed of the measured model (default 0)")
    p.add_argument("--predict-batches", type=int,
                   help=f"--predict: held-out batches the gains are averaged over (default 2, at most {MAX_PREDICT_BATCHES})")
    p.add_argument("--n-embd", type=int, help="residual width C, kept constant (default 128)")
    p.add_argument("--heads", type=int, help="heads of the uniform model (default 4)")
    p.add_argument("--d-ff", type=int, help="FFN hidden size of the uniform model (default 512)")
    p.add_argument("--vocab", type=int, help="vocabulary size, for the budget (default 96)")
    p.add_argument("--context", type=int, help="context length in tokens, for the budget (default 64)")
    p.add_argument("--r", type=float, help="width multiplier of the last block (default 0.5)")
    p.add_argument("--alpha", type=float, help="exponent of the fan-in schedule (default 1)")
    p.add_argument("--step-at", type=float, help="step schedule: fraction kept full width (default 0.5)")
    p.add_argument("--quantum", type=int, default=32, help="FFN sizes are multiples of this")
    p.add_argument("--supervision", choices=("final", "all"), default="final")
    p.add_argument("--match", metavar="BUDGET=FRACTION",
                   help="solve the strength for a budget, e.g. params=0.8 or flops=0.9 (the fan-in "
                        "schedule solves alpha, the others r)")
    add_format_argument(p, "the schedule (csv/latex: one row per block)")
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


def _check_conflicts(args: argparse.Namespace) -> None:
    _check_predict(args)
    if args.from_run is not None and args.schedule not in (None, "measured"):
        raise ConfigError(f"--from-run and --schedule {args.schedule} conflict: --from-run derives the measured schedule")
    if args.from_run is not None or args.predict:
        args.schedule = "measured"
    if args.schedule == "measured" and args.from_run is None and not args.predict:
        raise ConfigError("the measured schedule needs --from-run RUN_DIR (the run whose gradients it follows) "
                          "or --predict")
    args.schedule = args.schedule or "linear"
    s = f"--schedule {args.schedule}"
    alpha_solved = args.schedule in ("fanin", "measured")
    pairs = [("--match", "--alpha" if alpha_solved else "--r",
              f"--match solves {'alpha' if alpha_solved else 'r'} for the budget")]
    if args.from_run is not None:
        pairs.append(("--from-run", "--alpha", "--from-run solves alpha for the budget"))
        pairs.append(("--from-run", "--model-config", "the run's config.json sets the sizes"))
        pairs += [("--from-run", f"--{o.replace('_', '-')}", "the run's config.json sets it") for o in SIZES]
    if not alpha_solved:
        pairs.append(("--alpha", "--schedule", f"--alpha shapes the fanin schedule, not {s}"))
    if args.schedule != "step":
        pairs.append(("--step-at", "--schedule", f"--step-at shapes the step schedule, not {s}"))
    if args.schedule == "uniform":
        pairs.append(("--r", "--schedule", "the uniform schedule has no last-block multiplier"))
    pairs += [("--model-config", f"--{o.replace('_', '-')}", "the model config sets it") for o in SIZES]
    refuse_conflicts(args, pairs)


def _check_predict(args: argparse.Namespace) -> None:
    """--predict's own options and what it conflicts with (before the shared checks)."""
    if not args.predict:
        used = [o for o in PREDICT_DEFAULTS if getattr(args, o) is not None]
        if used:
            raise ConfigError(f"--{used[0].replace('_', '-')} sets how --predict measures: give --predict")
        return
    if args.from_run is not None:
        raise ConfigError("--predict and --from-run conflict: the profile is predicted before training or "
                          "measured on a run, not both")
    if args.schedule not in (None, "measured"):
        raise ConfigError(f"--predict and --schedule {args.schedule} conflict: --predict derives the measured schedule")
    refuse_conflicts(args, [("--predict", "--alpha", "--predict solves alpha for the budget")])
    fill_defaults(args, PREDICT_DEFAULTS)


def _predict_model(args: argparse.Namespace, sizes: dict) -> GPTConfig:
    """The uniform GPT whose profile --predict measures: the sizes, and with --model-config every
    other field of that config (norm placement, parallel blocks, supervision, ...)."""
    if not 1 <= sizes["B"] <= MAX_PREDICT_BLOCKS:
        raise ConfigError(f"--predict measures a live model of at most {MAX_PREDICT_BLOCKS} blocks, got {sizes['B']}")
    fields = {"n_blocks": sizes["B"], "n_embd": sizes["n_embd"], "n_head": sizes["n_head"], "d_ff": sizes["d_ff"],
              "block_size": sizes["block_size"]}
    if not args.model_config:
        return GPTConfig(supervision=args.supervision, **fields)
    data = read_json(args.model_config, "--model-config")  # sizes already checked by _from_model_config
    if isinstance(data, dict) and isinstance(data.get("config"), dict):  # a gfa train run's config.json
        run = data["config"]
        if run.get("model_name", "gpt") != "gpt":
            raise ConfigError(f"--predict needs a GPT config; {args.model_config} is for '{run['model_name']}'")
        data = run.get("model")
    if not isinstance(data, dict):
        raise ConfigError(f"--model-config {args.model_config}: the model config is not a JSON object")
    # a tapered config's lists become the uniform widths; with a fixed head_dim it keeps it
    return replace(from_dict(GPTConfig, data, prefix="model."), **fields)


def _size(path: str, key: str, value: object) -> int:
    """A size from a model config: a positive integer, or (``n_head``, ``d_ff`` of a tapered
    config) a non-empty list of them, whose widest block is the uniform model."""
    if key in ("n_head", "d_ff") and isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise DataError(f"--model-config {path}: '{key}' must be a positive integer or a non-empty list of "
                            f"them, got {short_repr(value)}")
        return max(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"--model-config {path}: '{key}' must be a positive integer, got {short_repr(value)}")
    return value


def _from_model_config(path: str) -> dict:
    """TaperConfig sizes from a GPT config file (or a run's config.json)."""
    data = read_json(path, "--model-config")
    if isinstance(data, dict) and isinstance(data.get("config"), dict):  # a gfa train run's config.json
        data = data["config"].get("model", data["config"])
    if not isinstance(data, dict):
        raise DataError(f"--model-config {path} is not a JSON object")
    out = {}
    for field, key, _ in SIZES.values():
        value = data.get(key)
        if value is None and key != "n_blocks":
            continue
        if value is None:
            raise DataError(f"--model-config {path} has no '{key}'")
        out[field] = _size(path, key, value)
    if out["B"] > MAX_BLOCKS:  # before anything is planned or read
        raise DataError(f"--model-config {path} has n_blocks={out['B']:,}: at most {MAX_BLOCKS:,}")
    return out


def _run_profile(run_dir: str) -> tuple[dict, tuple[float, ...]]:
    """Sizes and the per-block accumulated gradient A of a finished run (one-line errors)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise DataError(f"--from-run {run_dir}: no such directory")
    if not (d / CONFIG_FILE).is_file() or not is_complete(d):
        raise DataError(f"--from-run {run_dir} is not a finished gfa run (no {CONFIG_FILE} or no DONE marker)")
    if not (d / GRADIENTS_FILE).is_file():
        raise DataError(f"--from-run {run_dir} has no {GRADIENTS_FILE}: the run recorded no gradients")
    sizes = _from_model_config(str(d / CONFIG_FILE))
    run_id = read_config(d).get("run_id")
    gradients = read_gradients(d)
    if run_id is not None and "run_id" in gradients and set(gradients["run_id"].astype(str)) - {run_id}:
        raise DataError(f"--from-run {run_dir}: {GRADIENTS_FILE} holds the gradients of another run than "
                        f"{run_id} of its {CONFIG_FILE}")
    try:
        profile = gradient_profile(gradients, sizes["B"])
    except ConfigError as exc:
        raise DataError(f"--from-run {run_dir}: {exc}") from None
    return sizes, profile


def _config(args: argparse.Namespace) -> TaperConfig:
    fill_defaults(args, DEFAULTS)
    if args.from_run is not None:
        sizes, profile = _run_profile(args.from_run)
        full = {field: default for field, _, default in SIZES.values() if default is not None} | sizes
        return TaperConfig(**full, schedule="measured", r=args.r, alpha=args.alpha, quantum=args.quantum,
                           supervision=args.supervision, profile=profile)
    if args.model_config:
        sizes = {field: default for field, _, default in SIZES.values() if default is not None}
        sizes |= _from_model_config(args.model_config)
    else:
        if args.blocks is None:
            raise ConfigError("give --blocks B (and optionally --vocab, --context, ...) or --model-config FILE.json")
        sizes = {field: getattr(args, o) if getattr(args, o) is not None else default
                 for o, (field, _, default) in SIZES.items()}
    if not 1 <= sizes["B"] <= MAX_BLOCKS:  # the fan-in schedule's symbolic analysis is O(B) but slow
        raise ConfigError(f"--blocks must be in 1..{MAX_BLOCKS:,}, got {sizes['B']}")
    if args.predict:
        pc = PredictConfig(account=args.account, seed=args.seed, batches=args.predict_batches)
        profile = predicted_profile(_predict_model(args, sizes), pc)
        return TaperConfig(**sizes, schedule="measured", r=args.r, alpha=args.alpha, quantum=args.quantum,
                           supervision=args.supervision, profile=profile)
    return TaperConfig(**sizes, schedule=args.schedule, r=args.r, alpha=args.alpha, step_at=args.step_at,
                       quantum=args.quantum, supervision=args.supervision)


def run(args: argparse.Namespace) -> int:
    _check_conflicts(args)
    cfg = _config(args)
    if args.match:
        budget, frac = _parse_match(args.match)
        p = match(cfg, frac, budget)
    elif cfg.schedule == "measured":  # the fan-in schedule's budget at the same floor r
        budget = "params"
        frac = budget_ratio(plan(replace(cfg, schedule="fanin", alpha=1.0, profile=None)), budget)
        p = match(cfg, frac, budget, nearest=True)
    else:
        p = plan(cfg)
    d = p.to_dict()
    if args.format == "json":
        print(json.dumps(d, indent=2))
    elif args.format in ("csv", "latex"):
        print(render_rows(d["blocks"], args.format))
    else:
        print(_table(p, d))
    return 0


def _table(p, d: dict) -> str:
    """The plan as text: its settings, one row per block, and its cost against uniform."""
    c = p.config
    rows = [[row["block"], row["fan_in"], f"{row['multiplier']:.3f}", row["n_head"], row["attn_width"], row["d_ff"]]
            for row in d["blocks"]]
    return "\n".join([
        f"CascadeFormer schedule '{c.schedule}' B={c.B} C={c.n_embd} head_dim={p.head_dim} "
        f"r={c.r:g} alpha={c.alpha:g} quantum={c.quantum} vocab={c.vocab_size} context={c.block_size}",
        tabulate(rows, headers=["block", "fan-in", "mult", "heads", "attn", "d_ff"], tablefmt="plain",
                 disable_numparse=True, stralign="right"),
        f"params {d['params']:,} ({d['params_ratio']:.3f} x uniform), "
        f"FLOPs/token {d['flops_per_token']:,.0f} ({d['flops_ratio']:.3f} x uniform)"])
