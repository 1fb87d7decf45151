"""``gfa prune HF_DIR``: prune a Hugging Face causal LM directory (GPT-2 and the Llama-like
decoder families of the registry).

Ranks the decoder layers by each METHOD (``cascadeflow`` from a tracker log given with
``--gradients``; the other methods from the model and calibration text, see
:mod:`gfa_theory.methods.hf_pruning` for where the text comes from), removes the k lowest, heals
optionally, evaluates before and after on held-out text when the directory has a tokenizer,
and writes the first method's pruned model with ``save_pretrained`` (plus the tokenizer,
``evaluation.json`` and the report of :mod:`gfa_theory.cli.prune_report`) into ``--out``. The
other methods are pruned, healed and evaluated the same way, on the same windows, for the
comparison.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from gfa_theory import __version__
from gfa_theory.errors import ConfigError
from gfa_theory.instrument.evaluation import evaluate
from gfa_theory.methods.hf_pruning import (
    context_length,
    corpus_tokens,
    has_tokenizer,
    load_checkpoint,
    read_gradient_log,
    require_tokenizer,
    save_checkpoint,
    text_batches,
)
from gfa_theory.methods.pruning import (
    NEEDS_BATCHES,
    heal,
    num_params,
    prune,
    rank,
    removable_blocks,
)
from gfa_theory.models.adapter import PrunableAdapter
from gfa_theory.models.families import find_adapter

DEFAULT_SEQ_LEN = 128  # capped at the model's context
EVAL_BATCHES = 8  # held-out batches of the before / after evaluation (seed 0: same for every prune)


def _methods(args: argparse.Namespace) -> list[str]:
    return list(getattr(args, "methods", None) or [args.method])


def _batches(args: argparse.Namespace, checkpoint, needs_text: bool):
    """(calibration batches or None, held-out batches or None, the text split or None)."""
    if checkpoint.tokenizer is None and not needs_text:
        return None, None, None
    data = corpus_tokens(checkpoint, args.text, args.held_out)  # one-line error when there is no tokenizer
    seq_len = min(args.seq_len or DEFAULT_SEQ_LEN, context_length(checkpoint.model))
    calib = text_batches(data, "train", args.calib_batches, args.batch_size, seq_len, args.seed) if needs_text else None
    held_out = text_batches(data, "val", EVAL_BATCHES, args.batch_size, seq_len, 0)
    return calib, held_out, (data, seq_len)


def _heal_stream(data, seq_len: int, batch_size: int, seed: int):
    """Endless seeded training windows for healing (the first part of the text only)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data.train) - seq_len, (batch_size,), generator=g)
        yield data.windows("train", starts, seq_len)


def _depth_order(order: list[str], names: list[str], removed: list[str]) -> dict:
    """Whether a ranking is plain depth order: the whole order deepest first, and whether the
    layers it removes are the last ones (what ``--method last`` removes)."""
    return {"ranking_is_depth_order": order == names[::-1],
            "removes_the_last_layers": sorted(removed) == sorted(names[len(names) - len(removed):])}


def prune_checkpoint(args: argparse.Namespace) -> tuple[dict, object]:
    """Rank, remove, heal and evaluate a Hugging Face checkpoint by every method asked for: the
    report (the first method's at the top level, every method's under ``comparison``) and the
    checkpoint holding the first method's pruned model."""
    methods = _methods(args)
    needs_text = bool(set(methods) & set(NEEDS_BATCHES))
    if args.text is not None and not has_tokenizer(args.run_dir):
        raise ConfigError(f"--text is read with the directory's tokenizer: {args.run_dir} has none")
    if needs_text or args.heal_steps:
        require_tokenizer(args.run_dir)  # before the weights are read
    if "cascadeflow" in methods and args.gradients is None:
        raise ConfigError("--method cascadeflow on a Hugging Face checkpoint needs --gradients FILE "
                          "(the gradients.csv of GradientFanInCallback)")
    # the model and a pruned copy (+ grads and AdamW moments when healing; + the first method's
    # pruned model while the others are compared)
    copies = (5 if args.heal_steps else 2) + (len(methods) > 1)
    checkpoint = load_checkpoint(args.run_dir, copies=copies)
    model = checkpoint.model
    adapter = find_adapter(model, PrunableAdapter)
    names = removable_blocks(model)
    if not 0 <= args.k < len(names):
        raise ConfigError(f"-k must be in 0..{len(names) - 1}: the model has {len(names)} layers and one must stay")
    calib, held_out, text = _batches(args, checkpoint, needs_text)
    if args.heal_steps and text is None:
        raise ConfigError(f"--heal-steps trains on text: {args.run_dir} has no tokenizer")
    gradients = read_gradient_log(args.gradients) if args.gradients else None
    view, _ = adapter.scoring_view(model)
    before = evaluate(view, held_out) if held_out else None
    rows, first = [], None
    for method in methods:
        ranking = rank(method, model, gradients=gradients, batches=calib, seed=args.seed, k=args.k,
                       quantity=args.quantity, progress=True)
        removed = ranking.lowest(args.k)
        pruned = prune(model, removed)
        pruned_view, _ = adapter.scoring_view(pruned)
        after = evaluate(pruned_view, held_out) if held_out else None
        after_heal, losses = None, []
        if args.heal_steps:
            losses = heal(pruned_view, _heal_stream(*text, args.batch_size, args.seed), args.heal_steps,
                          args.heal_lr, seed=args.seed, progress=True)
            after_heal = evaluate(pruned_view, held_out)
        pruned.eval()
        rows.append({"method": method, "removed": removed, "ranking": ranking.to_dict(),
                     "after": after and after.to_dict(), "after_heal": after_heal and after_heal.to_dict(),
                     "heal_losses": losses, "params": num_params(pruned),
                     **_depth_order(ranking.order, names, removed)})
        if first is None:
            first = pruned
    checkpoint.model = first
    top = rows[0]
    report = {
        "source_run": Path(args.run_dir).resolve().name, "model_name": adapter.name, "method": methods[0],
        "k": args.k, "quantity": args.quantity if "cascadeflow" in methods else None, "seed": args.seed,
        "calibration_batches": args.calib_batches if needs_text else 0, "removed": top["removed"],
        "ranking": top["ranking"], "cost": top["ranking"]["cost"],
        "before": before and before.to_dict(), "after": top["after"], "after_heal": top["after_heal"],
        "heal": {"steps": args.heal_steps, "lr": args.heal_lr if args.heal_steps else None,
                 "losses": top["heal_losses"]},
        "params": {"before": num_params(model), "after": top["params"], "ratio": top["params"] / num_params(model)},
        "blocks": {"before": len(names), "after": len(names) - args.k}, "layers": names,
        "gradients": str(args.gradients) if args.gradients else None,
        "compare": methods[1:], "comparison": rows, "text_file": args.text, "held_out_fraction": args.held_out,
        "text": None if text is None else {"source": text[0].source, "sha256": text[0].sha256,
                                           "file": None if args.text is None else str(args.text),
                                           "held_out": args.held_out, "seq_len": text[1],
                                           "train_tokens": len(text[0].train), "held_out_tokens": len(text[0].val)},
        "held_out": None if held_out is None else {"split": text[0].source, "batches": len(held_out),
                                                   "count": before.count},
        "versions": {"gfa_theory": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    return report, checkpoint


def write(checkpoint, out: Path) -> None:
    """The pruned model and its tokenizer, by ``save_pretrained``."""
    save_checkpoint(checkpoint.model, checkpoint.tokenizer, out)
