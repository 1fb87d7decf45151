"""Evaluation of a model's final head over fixed batches: loss, perplexity and accuracy.

The one evaluation loop of the package: training evaluations (:meth:`gfa_theory.train.loop.Trainer.evaluate`),
ablation importance (:func:`gfa_theory.instrument.importance.evaluate`) and pruned models
(:mod:`gfa_theory.methods.pruning`) all score through :func:`evaluate`. It accumulates on the
model's device without a host synchronization per batch: ``sum_b loss_b * n_b`` in float64
(``n_b`` the targets of batch ``b`` other than GPT's ignore index ``-1``), correct predictions as
an integer count, and every batch's mean loss for a per-batch average.

A second, task-level evaluation: multiple-choice continuation (:func:`continuation_items` builds
the items from a token sequence, :func:`continuation_accuracy` scores a model on them), the
downstream task the pruning study counts for Transformers.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from gfa_theory.errors import DataError
from gfa_theory.models.base import logits_and_loss, unwrap

Batch = tuple[torch.Tensor, torch.Tensor]
IGNORE_INDEX = -1  # GPT's cross-entropy ignore_index: such targets are neither scored nor counted


@dataclass
class Evaluation:
    """Held-out loss (final head, mean per token / image), perplexity ``exp(loss)``, accuracy
    (next-token for text, top-1 for images), the number of tokens / images, and the wall time of
    the pass (a rough speed reading; time models side by side for a real comparison).
    ``batch_losses``: each batch's mean loss, in order (their plain mean weighs every batch the
    same, whatever its size)."""

    loss: float
    perplexity: float
    accuracy: float
    count: int
    seconds: float
    batch_losses: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """The summary numbers (``batch_losses`` left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_losses"}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> Evaluation:
    """Loss, perplexity and accuracy of ``model``'s final head over fixed ``batches`` (moved to
    the model's device), in eval mode; the model's train / eval mode is restored after."""
    model = unwrap(model)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    losses = []
    t0 = time.perf_counter()
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits, loss = logits_and_loss(model, x, y, final_only=True)
            keep = y != IGNORE_INDEX
            n = keep.sum()
            loss_sum += loss.double() * n
            correct += ((logits.argmax(dim=-1) == y) & keep).sum()
            count += n
            losses.append(loss.detach())
    finally:
        model.train(was)
    total = int(count)
    if not total:
        raise DataError("no evaluation batches (or only ignored targets): nothing to evaluate")
    mean = float(loss_sum) / total
    return Evaluation(mean, math.exp(min(mean, 700.0)), int(correct) / total, total,
                      time.perf_counter() - t0, [float(v) for v in losses])


def continuation_items(tokens: torch.Tensor, block_size: int, items: int, fraction: int, choices: int,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiple-choice continuation items drawn deterministically from ``tokens``: contexts
    (items, C) and candidates (items, choices, L) with L = block_size // fraction and
    C + L = block_size, the true continuation first (scoring never looks at the position; ties
    count as wrong), the others taken from elsewhere in ``tokens``."""
    g = torch.Generator().manual_seed(seed)
    length = max(1, block_size // fraction)
    context = block_size - length
    starts = torch.randint(0, len(tokens) - block_size, (items,), generator=g)
    others = torch.randint(0, len(tokens) - length, (items, choices - 1), generator=g)
    ctx = torch.stack([tokens[s:s + context] for s in starts.tolist()])
    true = torch.stack([tokens[s + context:s + block_size] for s in starts.tolist()])
    wrong = torch.stack([torch.stack([tokens[o:o + length] for o in row]) for row in others.tolist()])
    return ctx, torch.cat([true.unsqueeze(1), wrong], dim=1)


@torch.no_grad()
def continuation_accuracy(model: nn.Module, items: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Share of items whose true continuation has a strictly higher total log-likelihood under
    ``model``'s final head than every other candidate."""
    ctx, cands = items
    M, K, L = cands.shape
    seq = torch.cat([ctx.unsqueeze(1).expand(M, K, -1), cands], dim=2).reshape(M * K, -1)
    x, y = seq[:, :-1], seq[:, 1:]
    was = model.training
    model.eval()
    try:
        logits, _ = logits_and_loss(model, x, y, final_only=True)
    finally:
        model.train(was)
    ll = logits.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)[:, -L:].sum(-1).view(M, K)
    return float((ll[:, 0] > ll[:, 1:].max(dim=1).values).double().mean())
