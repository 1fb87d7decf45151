"""``gfa prune HF_DIR``: prune a Hugging Face causal LM directory (GPT-2, Llama family).

Ranks the decoder layers by METHOD (``cascadeflow`` from a tracker log given with
``--gradients``; the other methods from the model and calibration text, see
:mod:`gfa_theory.methods.hf_pruning` for where the text comes from), removes the k lowest, heals
optionally, evaluates before and after on held-out text when the directory has a tokenizer,
and writes the pruned model with ``save_pretrained`` (plus the tokenizer and
``evaluation.json``) into ``--out``.
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


def _batches(args: argparse.Namespace, checkpoint, needs_text: bool):
    """(calibration batches or None, held-out batches or None, the text split or None)."""
    if checkpoint.tokenizer is None and not needs_text:
        return None, None, None
    data = corpus_tokens(checkpoint)  # one-line error when there is no tokenizer
    seq_len = min(args.seq_len or DEFAULT_SEQ_LEN, context_length(checkpoint.model))
    calib = text_batches(data, "train", args.calib_batches, args.batch_size, seq_len, args.seed) if needs_text else None
    held_out = text_batches(data, "val", EVAL_BATCHES, args.batch_size, seq_len, 0)
    return calib, held_out, (data, seq_len)


def _heal_stream(data, seq_len: int, batch_size: int, seed: int):
    """Endless seeded training windows for healing."""
    g = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data.train) - seq_len, (batch_size,), generator=g)
        yield data.windows("train", starts, seq_len)


def prune_checkpoint(args: argparse.Namespace) -> tuple[dict, object]:
    """Rank, remove, heal and evaluate a Hugging Face checkpoint: the report and the checkpoint
    holding the pruned model."""
    if args.method in NEEDS_BATCHES or args.heal_steps:
        require_tokenizer(args.run_dir)  # before the weights are read
    checkpoint = load_checkpoint(args.run_dir, copies=5 if args.heal_steps else 2)  # + grads, AdamW moments
    model = checkpoint.model
    adapter = find_adapter(model, PrunableAdapter)
    names = removable_blocks(model)
    if not 0 <= args.k < len(names):
        raise ConfigError(f"-k must be in 0..{len(names) - 1}: the model has {len(names)} layers and one must stay")
    if args.method == "cascadeflow" and args.gradients is None:
        raise ConfigError("--method cascadeflow on a Hugging Face checkpoint needs --gradients FILE "
                          "(the gradients.csv of GradientFanInCallback)")
    needs_text = args.method in NEEDS_BATCHES
    calib, held_out, text = _batches(args, checkpoint, needs_text)
    gradients = read_gradient_log(args.gradients) if args.gradients else None
    view, _ = adapter.scoring_view(model)
    ranking = rank(args.method, model, gradients=gradients, batches=calib, seed=args.seed, k=args.k,
                   quantity=args.quantity, progress=True)
    removed = ranking.lowest(args.k)
    pruned = prune(model, removed)
    pruned_view, _ = adapter.scoring_view(pruned)
    before = evaluate(view, held_out) if held_out else None
    after = evaluate(pruned_view, held_out) if held_out else None
    after_heal, losses = None, []
    if args.heal_steps:
        if text is None:
            raise ConfigError(f"--heal-steps trains on text: {args.run_dir} has no tokenizer")
        losses = heal(pruned_view, _heal_stream(*text, args.batch_size, args.seed), args.heal_steps,
                      args.heal_lr, seed=args.seed, progress=True)
        after_heal = evaluate(pruned_view, held_out)
    pruned.eval()
    checkpoint.model = pruned
    layers = {"before": len(names), "after": len(names) - args.k}
    report = {
        "source_run": Path(args.run_dir).resolve().name, "model_name": adapter.name, "method": args.method,
        "k": args.k, "quantity": args.quantity if args.method == "cascadeflow" else None, "seed": args.seed,
        "calibration_batches": args.calib_batches if needs_text else 0, "removed": removed,
        "ranking": ranking.to_dict(), "cost": ranking.to_dict()["cost"],
        "before": before and before.to_dict(), "after": after and after.to_dict(),
        "after_heal": after_heal and after_heal.to_dict(),
        "heal": {"steps": args.heal_steps, "lr": args.heal_lr if args.heal_steps else None, "losses": losses},
        "params": {"before": num_params(model), "after": num_params(pruned),
                   "ratio": num_params(pruned) / num_params(model)},
        "blocks": layers, "gradients": str(args.gradients) if args.gradients else None,
        "held_out": None if held_out is None else {"split": "default corpus, last 10%", "batches": len(held_out),
                                                   "count": before.count},
        "versions": {"gfa_theory": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    return report, checkpoint


def write(checkpoint, out: Path) -> None:
    """The pruned model and its tokenizer, by ``save_pretrained``."""
    save_checkpoint(checkpoint.model, checkpoint.tokenizer, out)
