"""``gfa prune``: rank the blocks of a finished run or of a Hugging Face checkpoint
(:mod:`gfa_theory.cli.prune_hf`), remove the k least important, evaluate; on a Hugging Face
checkpoint several methods side by side (``--method cascadeflow,bi,last``) and a short report
beside the pruned model (:mod:`gfa_theory.cli.prune_report`)."""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from gfa_theory import __version__
from gfa_theory.cli import COMMANDS, prune_hf, prune_report
from gfa_theory.cli.formats import (
    add_format_argument,
    fill_defaults,
    refuse_conflicts,
    render_rows,
)
from gfa_theory.cli.outdir import HF_PRUNE_FILES, check_prune_out, kind_of, prune_request, source_identity, staged
from gfa_theory.config import check_seed
from gfa_theory.errors import ConfigError, DataError
from gfa_theory.untrusted import regular_file
from gfa_theory.instrument.evaluation import evaluate
from gfa_theory.methods.hf_checkpoint import weight_files
from gfa_theory.methods.hf_pruning import MAX_TEXT_BYTES, gradient_log_file, is_hf_checkpoint
from gfa_theory.methods.pruning import (
    GRADIENT_QUANTITIES,
    METHODS,
    NEEDS_BATCHES,
    Ranking,
    calibration_batches,
    heal,
    num_params,
    prune,
    rank,
    removable_blocks,
    save_pruned,
)
from gfa_theory.train.data import BatchSampler, load_data, run_eval_batches
from gfa_theory.train.memory import check_calibration_memory, check_training_memory
from gfa_theory.train.run_config import MAX_LR, MAX_STEPS
from gfa_theory.train.store import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    GRADIENTS_FILE,
    is_complete,
    load_run,
    read_config,
    write_json_atomic,
)

EVALUATION_FILE = "evaluation.json"
# the files of a Hugging Face directory a prune's result depends on (hashed to tell sources apart)
HF_SOURCE_FILES = re.compile(rf"(?:{HF_PRUNE_FILES.pattern})|pytorch_model.*\.bin(?:\.index\.json)?")
MAX_CALIB_BATCHES = 10_000  # drawn at once (a few batches rank the blocks as well as many)


DEFAULTS = {"quantity": "A", "heal_lr": 1e-3, "calib_batches": 8, "batch_size": 8}
HELD_OUT = 0.1  # as gfa train's default text split


def method_list(value: str) -> list[str]:
    """``--method``: one method or several, comma-separated (the first is the one written)."""
    names = [m.strip() for m in value.split(",")]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"invalid method {bad[0]!r} (choose from {', '.join(METHODS)}; "
                                         "several: comma-separated)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"method listed twice in {value!r}")
    return names


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help=COMMANDS["prune"],
        description="Rank the blocks of a finished run (gfa train) or the layers of a Hugging Face causal LM "
                    "directory (GPT-2 and the Llama-like families) by METHOD, physically remove the k lowest, "
                    "evaluate before/after on held-out data, and write the pruned model and "
                    f"{EVALUATION_FILE} to --out (a Hugging Face model with save_pretrained, beside a short "
                    "report.md and scores.png).")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a finished run directory (written by gfa train) or a Hugging Face model directory "
                        "(config.json + weights: a save_pretrained directory or a Trainer's OUTPUT_DIR/checkpoint-N)")
    p.add_argument("--method", required=True, type=method_list, metavar="METHOD[,METHOD...]",
                   help=f"one of {', '.join(METHODS)}; cascadeflow: accumulated training gradient (no extra pass), "
                        "the others are baselines. Hugging Face directory: several, comma-separated, are compared "
                        "side by side (one table, one plot) and the first is the one written to --out")
    p.add_argument("-k", type=int, required=True, help="number of blocks to remove")
    p.add_argument("--out", required=True, metavar="DIR",
                   help=f"where the pruned model and {EVALUATION_FILE} go: a new or empty directory, or "
                        "the result of this same prune (same source and options), which is replaced; anything "
                        "else is refused unless --force")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds other files (files of the same name are replaced)")
    p.add_argument("--gradients", metavar="FILE",
                   help="cascadeflow on a Hugging Face directory: the tracker log (gradients.csv of "
                        "gfa_theory.integrations.hf.GradientFanInCallback, or its directory)")
    p.add_argument("--quantity", choices=GRADIENT_QUANTITIES, default=None,
                   help="cascadeflow: the accumulated total to rank by: A (default), its per-parameter RMS A_rms, A_sq, "
                        "the stream gradient A_stream, or an opt-in total the run's tracker kept (G_norm, noise_floor, "
                        "U, displacement); a quantity the run lacks is refused, naming those it has")
    p.add_argument("--heal-steps", type=int, default=0, help="AdamW healing steps after pruning (0: none)")
    p.add_argument("--heal-lr", type=float, default=None,
                   help=f"learning rate of the healing fine-tune (default {DEFAULTS['heal_lr']:g})")
    p.add_argument("--calib-batches", type=int, default=None,
                   help="training-split batches the data-based methods (bi, angular, taylor, ablation) score on "
                        f"(default {DEFAULTS['calib_batches']})")
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"Hugging Face directory: tokens per calibration window (default {prune_hf.DEFAULT_SEQ_LEN}, "
                        "at most the model's context)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"Hugging Face directory: windows per batch (default {DEFAULTS['batch_size']})")
    p.add_argument("--text", metavar="FILE",
                   help="Hugging Face directory: score, heal and evaluate on this UTF-8 file (tokenized with the "
                        "directory's tokenizer) instead of the shipped corpus; its last --held-out fraction is "
                        "evaluation only")
    p.add_argument("--held-out", type=float, default=None, metavar="FRACTION",
                   help="Hugging Face directory: the fraction at the end of the text held out for the before/after "
                        f"evaluation, never scored or healed on (default {HELD_OUT})")
    p.add_argument("--seed", type=int, default=0, help="seed of random rankings, calibration draws and healing")
    add_format_argument(p, "the prune (table: summary; csv/latex: the ranking)")
    p.set_defaults(func=run)


def _check_options(args: argparse.Namespace, hf: bool) -> None:
    """Every option that can be checked without reading anything (hostile values included).
    ``args.method`` becomes the method written and ``args.methods`` every method compared."""
    if isinstance(args.method, str):
        args.method = method_list(args.method)
    args.methods, args.method = list(args.method), args.method[0]
    method = f"--method {','.join(args.methods)}"
    if "cascadeflow" not in args.methods:
        refuse_conflicts(args, [("--quantity", "--method", f"--quantity picks cascadeflow's gradient, not {method}'s"),
                                ("--gradients", "--method", f"--gradients is cascadeflow's ranking, not {method}'s")])
    if not set(args.methods) & set(NEEDS_BATCHES):
        refuse_conflicts(args, [("--calib-batches", "--method", f"{method} scores no calibration batches")])
    if args.heal_lr is not None and not args.heal_steps:
        raise ConfigError("--heal-lr and --heal-steps conflict: --heal-lr sets the rate of healing, and "
                          "--heal-steps is 0 (no healing)")
    if not hf:
        why = "a gfa run directory brings its own gradients.csv and data"
        refuse_conflicts(args, [("--gradients", "RUN_DIR", why), ("--seq-len", "RUN_DIR", why),
                                ("--batch-size", "RUN_DIR", why), ("--text", "RUN_DIR", why),
                                ("--held-out", "RUN_DIR", why)])
        if len(args.methods) > 1:
            raise ConfigError(f"{method}: several methods side by side are compared on a Hugging Face "
                              "directory; on a gfa run, run gfa prune once per method")
    fill_defaults(args, DEFAULTS)
    if hf:
        fill_defaults(args, {"held_out": HELD_OUT})
        if not 0 < args.held_out < 1:
            raise ConfigError(f"--held-out must be a fraction in (0, 1), got {args.held_out}")
    if args.k < 0:
        raise ConfigError(f"-k must be >= 0, got {args.k}")
    if not 0 <= args.heal_steps <= MAX_STEPS:
        raise ConfigError(f"--heal-steps must be in 0..{MAX_STEPS:.0e}, got {args.heal_steps}")
    if not 0 < args.heal_lr <= MAX_LR:
        raise ConfigError(f"--heal-lr must be a number in (0, {MAX_LR:g}], got {args.heal_lr}")
    if not 1 <= args.calib_batches <= MAX_CALIB_BATCHES:
        raise ConfigError(f"--calib-batches must be in 1..{MAX_CALIB_BATCHES}, got {args.calib_batches}")
    for name, value in (("--seq-len", args.seq_len), ("--batch-size", args.batch_size)):
        if value is not None and not 1 <= value <= MAX_CALIB_BATCHES:
            raise ConfigError(f"{name} must be in 1..{MAX_CALIB_BATCHES}, got {value}")
    if hf and set(args.methods) & set(NEEDS_BATCHES):  # token windows and their next tokens, int64 each
        check_calibration_memory(args.calib_batches, args.batch_size, (args.seq_len or prune_hf.DEFAULT_SEQ_LEN) * 16,
                                 "the calibration text")
    check_seed("--seed", args.seed)


def _check_run_dir(path: Path) -> None:
    if not path.is_dir():
        raise DataError(f"run directory not found: {path} (gfa prune takes a gfa train run or a Hugging Face "
                        "model directory: config.json + weights, as save_pretrained writes)")
    if not is_complete(path):
        hint = _trainer_dir_hint(path)
        if hint:
            raise DataError(hint)
        if kind_of(path) != "a gfa run directory":
            raise DataError(f"{path} is neither a finished gfa run (no DONE marker) nor a Hugging Face model "
                            f"directory (no {CONFIG_FILE} naming a model_type)")
        raise DataError(f"run {path} is not complete (no DONE marker): finish it with gfa train first")
    for name in (CHECKPOINT_FILE, GRADIENTS_FILE):
        if not (path / name).is_file():
            raise DataError(f"run {path} has no {name}: it is incomplete")


def _trainer_dir_hint(path: Path) -> str | None:
    """What to prune when ``path`` is a ``transformers.Trainer`` output directory: its last
    ``checkpoint-N`` (``None`` when it is not one)."""
    steps = sorted((int(p.name.split("-", 1)[1]), p) for p in path.glob("checkpoint-*")
                   if p.name.split("-", 1)[1].isdigit() and is_hf_checkpoint(p))
    log = path / GRADIENTS_FILE
    gradients = f" --gradients {log}" if log.is_file() else ""
    if steps:
        return (f"{path} is a Trainer output directory, not a model: prune its last checkpoint, "
                f"gfa prune {steps[-1][1]}{gradients} ...")
    if gradients:
        return (f"{path} holds a {GRADIENTS_FILE} but no model: save one (trainer.save_model() or "
                "model.save_pretrained(DIR)) and prune that directory")
    return None


def _load(run_dir: str):
    path = Path(run_dir)
    _check_run_dir(path)
    meta = read_config(path)
    run = load_run(path)
    data = load_data(run.config.data)
    recorded = meta.get("data", {}).get("sha256")
    if recorded and recorded != data.sha256:
        raise DataError(f"the data of run {path.name} (sha256 {recorded[:12]}) differs from what its data "
                        f"config loads here ({data.sha256[:12]}): cannot evaluate on the same held-out set")
    return meta, run, data


def _source(args: argparse.Namespace, hf: bool) -> tuple[str, dict, dict | None]:
    """The source's name (for the report), its identity (resolved path and content hash) and
    the gradient log's identity: what makes two prunes "the same"."""
    path = Path(args.run_dir)
    if hf:
        weights = weight_files(path)[0]
        files = {*weights, *(p for p in path.iterdir() if p.is_file() and HF_SOURCE_FILES.fullmatch(p.name))}
        name = path.resolve().name
    else:
        files = [path / n for n in (CONFIG_FILE, CHECKPOINT_FILE, GRADIENTS_FILE, DONE_FILE) if (path / n).is_file()]
        name = read_config(path).get("run_id", path.name)
    gradients = None
    if args.gradients:
        log = gradient_log_file(args.gradients)
        gradients = source_identity(log, [log])
    return name, source_identity(path, files), gradients


def run(args: argparse.Namespace) -> int:
    hf = not is_complete(args.run_dir) and is_hf_checkpoint(args.run_dir)
    _check_options(args, hf)
    if not hf:
        _check_run_dir(Path(args.run_dir))
    out = Path(args.out)
    if out.resolve() == Path(args.run_dir).resolve():
        raise ConfigError("--out must not be the run directory or checkpoint pruned (its model would be overwritten)")
    name, source, gradients = _source(args, hf)
    text = None
    if getattr(args, "text", None) is not None:  # the file's content, not only its name, makes the prune
        file = regular_file(args.text, "--text file", MAX_TEXT_BYTES)
        text = source_identity(file, [file])
    needs_data = bool(set(args.methods) & set(NEEDS_BATCHES))
    check_prune_out(out, prune_request(args, name, needs_data, source, gradients, text), args.force)
    if hf:
        report, checkpoint = prune_hf.prune_checkpoint(args)
        ranking, removable = report["ranking"], report["blocks"]["before"]
    else:
        report, pruned, ranking, removable = _prune_and_evaluate(args)
        ranking = ranking.to_dict()
    report.update(source=source, gradients_source=gradients, text_source=text)
    # Everything is written into a fresh directory beside --out, the evaluation last (a
    # directory with evaluation.json is complete), and moved into place in one step.
    with staged(out) as tmp:
        if hf:
            prune_hf.write(checkpoint, tmp)
            prune_report.write_report(tmp, report)
        else:
            save_pruned(pruned, tmp, source_run=report["source_run"], method=args.method, k=args.k,
                        removed=report["removed"], healed=bool(args.heal_steps))
        write_json_atomic(tmp / EVALUATION_FILE, report)
    zero = ranking.get("details", {}).get("zero")
    if zero:
        print(f"gfa: note: {', '.join(zero)} accumulated no gradient (A = 0: frozen, or never reached), so "
              "they rank least important", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
    elif args.format in ("csv", "latex"):
        print(render_rows([{"unit": n, "rank": r, "score": ranking["scores"][n], "removed": n in report["removed"]}
                           for r, n in enumerate(ranking["order"])], args.format))
    else:
        print(_summary(args, report, ranking, removable, out))
        if len(report.get("comparison", ())) > 1:
            print(prune_report.comparison_text(report))
    return 0


def _prune_and_evaluate(args: argparse.Namespace) -> tuple[dict, torch.nn.Module, Ranking, int]:
    """Rank, remove, heal and evaluate: the report ``evaluation.json`` holds, the pruned model,
    the ranking and how many blocks were removable."""
    meta, loaded, data = _load(args.run_dir)
    cfg, model = loaded.config, loaded.model
    if args.heal_steps:  # healing trains at the run's batch size: gfa train's own estimate
        check_training_memory(cfg)
    names = removable_blocks(model)
    if not 0 <= args.k < len(names):
        raise ConfigError(f"-k must be in 0..{len(names) - 1}: the model has {len(names)} removable blocks "
                          "and one must stay")
    held_out = list(run_eval_batches(data, cfg))  # what the run's own evaluations scored
    needs_data = args.method in NEEDS_BATCHES
    if needs_data:
        item = cfg.model.block_size * 16 if cfg.model_name == "gpt" else cfg.model.in_channels * cfg.model.image_size ** 2 * 4 + 8
        check_calibration_memory(args.calib_batches, cfg.train.batch_size, item, "the calibration batches")
    calib = calibration_batches(cfg, data, args.calib_batches, args.seed) if needs_data else None
    ranking = rank(args.method, model, gradients=loaded.gradients, batches=calib, seed=args.seed,
                   k=args.k, quantity=args.quantity, progress=True)
    removed = ranking.lowest(args.k)
    pruned = prune(model, removed)
    before, after = evaluate(model, held_out), evaluate(pruned, held_out)
    after_heal, heal_losses = None, []
    if args.heal_steps:
        sampler = BatchSampler(data, cfg.train.batch_size, args.seed,
                               cfg.model.block_size if cfg.model_name == "gpt" else None)
        heal_losses = heal(pruned, sampler, args.heal_steps, args.heal_lr, seed=args.seed, progress=True)
        after_heal = evaluate(pruned, held_out)
    pruned.eval()
    report = {
        "source_run": meta.get("run_id", Path(args.run_dir).name), "model_name": cfg.model_name,
        "method": args.method, "k": args.k,
        "quantity": args.quantity if args.method == "cascadeflow" else None, "seed": args.seed,
        "calibration_batches": args.calib_batches if needs_data else 0,
        "removed": removed, "ranking": ranking.to_dict(), "cost": ranking.to_dict()["cost"],
        "before": before.to_dict(), "after": after.to_dict(),
        "after_heal": None if after_heal is None else after_heal.to_dict(),
        "heal": {"steps": args.heal_steps, "lr": args.heal_lr if args.heal_steps else None,
                 "losses": heal_losses},
        "params": {"before": num_params(model), "after": num_params(pruned),
                   "ratio": num_params(pruned) / num_params(model)},
        "blocks": {"before": len(model.layout().blocks), "after": len(pruned.layout().blocks)},
        "layout": pruned.layout().to_dict(),
        "held_out": {"split": "val", "batches": len(held_out), "count": before.count},
        "versions": {"gfa_theory": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    return report, pruned, ranking, len(names)


def _summary(args: argparse.Namespace, report: dict, ranking: dict, removable: int, out: Path) -> str:
    """The human-readable account of a prune: what went, the ranking, its cost, the losses."""
    what = args.method + (f" ({args.quantity})" if args.method == "cascadeflow" else "")
    c = report["cost"]
    rows = [(label, report[key]) for label, key in (("before", "before"), ("after", "after"),
                                                     ("after heal", "after_heal")) if report[key]]
    table = tabulate([[label, f"{ev['loss']:.4f}", f"{ev['perplexity']:.3f}", f"{ev['accuracy']:.4f}"]
                      for label, ev in rows], headers=["", "loss", "ppl", "accuracy"], tablefmt="plain",
                     colalign=("left", "right", "right", "right"), disable_numparse=True)
    if not rows:
        table = "no held-out evaluation: the directory has no tokenizer to read the evaluation text with"
    p = report["params"]
    return "\n".join([
        f"pruned {args.k} of {removable} removable blocks of run {report['source_run']} by {what}: "
        f"removed {', '.join(report['removed']) or 'none'}",
        "ranking, least important first: " + ", ".join(f"{n} ({ranking['scores'][n]:.4g})" for n in ranking["order"]),
        f"scoring cost: {c['forward_passes']} forward, {c['backward_passes']} backward passes, {c['seconds']:.2f} s",
        table,
        f"params {p['before']:,} -> {p['after']:,} ({p['ratio']:.3f} x); written to {out}"])
