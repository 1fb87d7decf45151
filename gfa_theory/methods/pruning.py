"""CascadeFlow Pruning: rank residual blocks, then physically remove the k least important.

CascadeFlow ranks blocks by their accumulated training gradient ``A`` (recorded by the gradient
tracker during ordinary training: no extra forward or backward pass) and removes the ``k``
blocks with the smallest ``A``. Every baseline ranking goes through the same removal function,
so the methods differ only in which blocks they pick. Scores: higher = more important.

=================  =============================================================  ==============
method             score of a block                                               needs
=================  =============================================================  ==============
``cascadeflow``    accumulated training gradient ``A`` (or any tracker total,     gradients
                   :data:`GRADIENT_QUANTITIES`)
``bi``             Block Influence ``1 - mean cos(x_in, x_out)`` (ShortGPT)       batches
``angular``        Gromov et al.: the contiguous k-block span with the smallest   batches, k
                   angular distance goes first; scores are the 1-block distances
``taylor``         ``|sum theta * dL/dtheta|`` on calibration batches             batches
``magnitude``      mean ``|theta|``                                               --
``random``         seeded uniform draws (the study averages several seeds)        --
``last``           later blocks are less important (drop the last k)              --
``ablation``       greedy SLEB-style oracle: repeatedly drop the block whose      batches
                   removal raises the calibration loss least, re-scoring after
                   each removal
=================  =============================================================  ==============

Which blocks can go is the family's call (its :class:`~gfa_theory.models.adapter.PrunableAdapter`
in the registry): every block of this package's GPT (one must stay; a block applied several
times by ``block_schedule`` goes with all its applications); blocks with an identity shortcut in
this package's ResNet and in torchvision ResNets (a projection / ``downsample`` block changes the
stream's shape, removing it would break the network). Rankings list removable blocks only.

:func:`prune` returns a new, smaller model (new config, copied weights). Its outputs equal the
original's with the removed blocks ablated, and its layout (``model.layout()``, or
:func:`gfa_theory.models.families.module_layout` for any supported model) is the pruned wiring.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from gfa_theory.config import to_dict
from gfa_theory.errors import ConfigError, DataError, GFAError
from gfa_theory.instrument import importance
from gfa_theory.instrument.tracking import ACCUMULATED, TOTALS, block_totals
from gfa_theory.models import MODELS, ResidualModel, build_config, build_model, unwrap
from gfa_theory.models.base import logits_and_loss
from gfa_theory.models.families import PrunableAdapter, find_adapter
from gfa_theory.models.units import Unit
from gfa_theory.train.data import TextData, eval_batches
from gfa_theory.train.memory import check_model_memory
from gfa_theory.train.store import load_run, load_weights, save_torch_atomic, unreadable
from gfa_theory.untrusted import load_torch, regular_file

Batch = tuple[torch.Tensor, torch.Tensor]
METHODS = ("cascadeflow", "bi", "angular", "taylor", "magnitude", "random", "last", "ablation")
NEEDS_BATCHES = ("bi", "angular", "taylor", "ablation")
# every per-unit total the tracker can record (numel is a size, not a signal); the opt-in ones
# (G_norm, noise_floor: accumulate=True; U, displacement: track_updates=True) only where the run kept them
GRADIENT_QUANTITIES = (*(q for q in TOTALS if q != "numel"), *ACCUMULATED)
PRUNED_CHECKPOINT = "checkpoint.pt"


# ---- rankings ------------------------------------------------------------------------------
@dataclass
class Cost:
    """What scoring cost beyond training: extra passes over calibration batches and wall time."""

    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0


@dataclass
class Ranking:
    """Removable block units ordered least important first (``order[:k]`` is what goes).

    ``scores[name]``: the method's score (higher = more important). The order follows the scores
    except for ``angular`` (its k-span goes first) and ``ablation`` (greedy removal order; a
    score is the calibration-loss increase over the full model once that block and every block
    removed before it are gone; blocks after ``k`` are scored on top of the first ``k - 1``).
    ``details``: method-specific facts (the chosen span, the greedy losses, the quantity).
    """

    method: str
    order: list[str]
    scores: dict[str, float]
    cost: Cost = field(default_factory=Cost)
    k: int | None = None
    details: dict = field(default_factory=dict)

    def lowest(self, k: int) -> list[str]:
        """The ``k`` least important blocks: the ones :func:`prune` removes."""
        _check_k(k, len(self.order))
        if self.method == "angular" and self.k not in (None, k) and k > 0:
            raise ConfigError(f"this angular ranking picked a span of {self.k} blocks: rank again with k={k}")
        return list(self.order[:k])

    def to_frame(self) -> pd.DataFrame:
        """One row per block: unit, rank (0 = least important), score, method."""
        return pd.DataFrame({"unit": self.order, "rank": range(len(self.order)),
                             "score": [self.scores[n] for n in self.order], "method": self.method})

    def to_dict(self) -> dict:
        return {"method": self.method, "k": None if self.k is None else int(self.k), "order": list(self.order),
                "scores": {n: float(self.scores[n]) for n in self.order},
                "cost": dataclasses.asdict(self.cost), "details": self.details}


def _check_k(k: Any, removable: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < removable:
        raise ConfigError(f"k must be an integer in 0..{removable - 1} (the model has {removable} "
                          f"removable blocks and one must stay), got {k!r}")


# ---- model families ----------------------------------------------------------------------------
def _family(model: nn.Module) -> PrunableAdapter:
    """The registry's pruning adapter of ``model`` (unwrapped)."""
    return find_adapter(model, PrunableAdapter)


def block_units(model: nn.Module) -> list[Unit]:
    """Every block unit of a supported model, in forward order of first application."""
    model = unwrap(model)
    return _family(model).units(model, "block")


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks :func:`prune` can remove, in forward order (see the module docstring)."""
    model = unwrap(model)
    return _family(model).removable_blocks(model)


# ---- scoring -------------------------------------------------------------------------------------
def _gradient_scores(gradients: Any, quantity: str, names: Sequence[str],
                     blocks_of_model: Sequence[str] | None = None) -> dict[str, float]:
    """The removable blocks' ``quantity`` totals, from a log that must cover exactly the
    model's blocks (``blocks_of_model``, default ``names``) with finite values >= 0."""
    if gradients is None:
        raise ConfigError("method 'cascadeflow' ranks by the tracker's accumulated gradients: pass "
                          "gradients= (the gradients frame of gfa_theory.train.store.load_run, or a GradientTracker)")
    if quantity not in GRADIENT_QUANTITIES:
        raise ConfigError(f"unknown gradient quantity '{quantity}' (choices: {', '.join(GRADIENT_QUANTITIES)})")
    frame = gradients.to_frame() if hasattr(gradients, "to_frame") else gradients
    if not isinstance(frame, pd.DataFrame) or not {"unit", "kind", "quantity", "value"} <= set(frame.columns):
        raise ConfigError("gradients must be the tracker's long frame (columns unit, kind, quantity, step, value)")
    blocks = frame[frame["kind"] == "block"]
    if "step" in blocks:
        blocks = blocks[blocks["step"].isna()]  # totals, not the per-step series
    if blocks.empty:
        raise ConfigError("gradients frame has no block totals: train with train.track=block or both")
    rows = blocks[blocks["quantity"] == quantity]
    if rows.empty:
        has = [q for q in GRADIENT_QUANTITIES if q in set(blocks["quantity"])]
        raise ConfigError(f"the run's gradients have no block total '{quantity}' (it has: {', '.join(has) or 'none'}; "
                          "the tracker records A_stream with stream=True, G_norm and noise_floor with accumulate=True, "
                          "U and displacement with track_updates=True)")
    twice = rows["unit"][rows["unit"].duplicated()]
    if len(twice):
        raise ConfigError(f"gradients frame has several '{quantity}' totals for block {twice.iloc[0]} "
                          "(several runs?): pass one run's frame")
    values = block_totals(rows, quantity, list(blocks_of_model or names), "the gradients")
    return {n: values[n] for n in names}


def _ordered(names: Sequence[str], scores: dict[str, float]) -> list[str]:
    """Ascending score; ties keep forward order."""
    return sorted(names, key=lambda n: scores[n])


def _angular(apps: list[str], view: nn.Module, to_model: dict[str, str], batches: list[Batch],
             names: list[str], k: int | None) -> tuple[list[str], dict[str, float], int, dict]:
    """Gromov et al.: the k-block span of smallest angular distance first. ``apps``: the block
    unit name at each application 1..B."""
    if k is None:
        raise ConfigError("method 'angular' removes a contiguous span of k blocks: pass k")
    if len(set(apps)) != len(apps):
        raise ConfigError("angular spans need every block applied once (this model repeats shared blocks)")
    per_block = importance.angular(view, batches)
    scores = {to_model[u]: s for u, s in zip(per_block["unit"], per_block["score"]) if to_model[u] in names}
    passes = len(batches)
    if k == 0:
        return _ordered(names, scores), scores, passes, {}
    spans = per_block.assign(start=per_block["index"]) if k == 1 else importance.angular_spans(view, batches, n=k)
    passes += 0 if k == 1 else len(batches)
    removable = set(names)
    table = []
    for start, d in zip(spans["start"], spans["score"]):
        units = apps[int(start) - 1:int(start) - 1 + k]
        table.append({"start": int(start), "units": units, "distance": float(d),
                      "removable": all(u in removable for u in units)})
    valid = [row for row in table if row["removable"]]
    if not valid:
        raise ConfigError(f"no contiguous span of {k} removable blocks (projection blocks cannot go): "
                          "angular pruning needs a smaller k")
    best = min(valid, key=lambda row: row["distance"])  # first span on a tie
    rest = [n for n in _ordered(names, scores) if n not in best["units"]]
    details = {"span_start": best["start"], "span_length": k, "span_distance": best["distance"],
               "spans": table}
    return list(best["units"]) + rest, scores, passes, details


def _greedy_ablation(view: ResidualModel, to_model: dict[str, str], batches: list[Batch],
                     names: list[str], k: int | None,
                     progress: bool = False) -> tuple[list[str], dict[str, float], int, dict]:
    """SLEB-style greedy removal on calibration loss; returns model names, scores, forward passes."""
    to_view = {m: v for v, m in to_model.items()}
    base = importance.evaluate(view, batches)
    evals = 1
    rounds = len(names) - 1 if k is None else k  # k=None: the full greedy order
    removed: list[str] = []
    remaining = list(names)
    scores: dict[str, float] = {}
    deltas: dict[str, float] = {}
    for _ in tqdm(range(max(rounds, 1)), desc="ablation scoring", disable=not progress, leave=False):
        # at least one round, to order the blocks that stay
        deltas = {}
        for n in remaining:
            with view.ablate([to_view[r] for r in removed + [n]]):
                deltas[n] = importance.evaluate(view, batches) - base
            evals += 1
        if len(removed) == rounds:
            break
        pick = min(remaining, key=deltas.__getitem__)
        removed.append(pick)
        remaining.remove(pick)
        scores[pick] = deltas[pick]
    tail = sorted(remaining, key=deltas.__getitem__)  # the last round's scores
    scores.update({n: deltas[n] for n in tail})
    details = {"base_loss": base, "greedy_losses": [base + scores[n] for n in removed]}
    return removed + tail, scores, evals * len(batches), details


def rank(method: str, model: nn.Module, *, gradients: Any = None, batches: Iterable[Batch] | None = None,
         seed: int = 0, k: int | None = None, quantity: str = "A", progress: bool = False) -> Ranking:
    """Rank the removable blocks of ``model`` by ``method`` (see the module docstring).

    ``gradients``: the tracker's long frame (``gfa_theory.train.store.load_run(dir).gradients``) or a
    :class:`~gfa_theory.instrument.tracking.GradientTracker`, for ``cascadeflow``; ``quantity`` picks its
    total (``A``, ``A_rms``: per-parameter RMS, comparable across widths, ``A_sq``, ``A_stream``).
    ``batches``: calibration ``(inputs, targets)`` for ``bi``, ``angular``, ``taylor``,
    ``ablation``. ``k``: how many blocks will go (needed by ``angular``; ``ablation`` then stops
    its greedy search after ``k`` removals). ``seed``: for ``random``. ``progress``: a progress
    bar on stderr for the long scorer (``ablation``'s greedy rounds).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method '{method}' (choices: {', '.join(METHODS)})")
    model = unwrap(model)
    family = _family(model)
    names = family.removable_blocks(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no removable block (every block has a projection shortcut)")
    if k is not None:
        _check_k(k, len(names))
    batches = list(batches) if batches is not None else []
    if method in NEEDS_BATCHES and not batches:
        raise ConfigError(f"method '{method}' scores blocks on calibration data: pass batches")
    t0 = time.perf_counter()
    order, scores, fwd, bwd, details = _score(method, model, family, names, gradients, batches, seed, k, quantity,
                                              progress)
    if order is None:
        order = _ordered(names, scores)
    cost = Cost(int(fwd), int(bwd), time.perf_counter() - t0)
    return Ranking(method, order, scores, cost, k, details)


def _score(method: str, model: nn.Module, family: PrunableAdapter, names: list[str], gradients: Any,
           batches: list[Batch], seed: int, k: int | None, quantity: str,
           progress: bool = False) -> tuple[list[str] | None, dict[str, float], int, int, dict]:
    """``(order or None, scores, forward passes, backward passes, details)`` of one method;
    ``order`` is None where it simply follows the scores."""
    if method == "cascadeflow":
        scores = _gradient_scores(gradients, quantity, names, [u.name for u in family.units(model, "block")])
        zero = [n for n in names if scores[n] == 0]  # frozen, or never reached by a gradient: ranked lowest
        return None, scores, 0, 0, {"quantity": quantity, **({"zero": zero} if zero else {})}
    if method == "last":
        return None, {n: float(len(names) - p) for p, n in enumerate(names)}, 0, 0, {}  # earlier = more important
    view, to_model = family.scoring_view(model)
    if method == "angular":
        order, scores, fwd, details = _angular(family.applications(model), view, to_model, batches, names, k)
        return order, scores, fwd, 0, details
    if method == "ablation":
        order, scores, fwd, details = _greedy_ablation(view, to_model, batches, names, k, progress)
        return order, scores, fwd, 0, details
    kw = {"seed": seed} if method == "random" else {}
    df = importance.SCORERS[method](view, batches, kind="block", **kw)
    scores = {to_model[u]: float(s) for u, s in zip(df["unit"], df["score"]) if to_model[u] in names}
    fwd, bwd = int(df["forward_passes"].iloc[0]), int(df["backward_passes"].iloc[0])
    return None, scores, fwd, bwd, ({"seed": seed} if method == "random" else {})


# ---- physical removal --------------------------------------------------------------------------
def prune(model: nn.Module, remove: Iterable[str]) -> nn.Module:
    """A new model without the named blocks: new config, the surviving weights copied.

    ``remove``: block unit names (``h.3``; ``blocks.4``; ``layer2.1``), removable ones only (see
    :func:`removable_blocks`). The result is on the original's device and dtype, in its train /
    eval mode, and ``model`` is left untouched. Its layout is ``pruned.layout()`` (package
    models) or :func:`gfa_theory.models.families.module_layout` (any supported model).
    """
    model = unwrap(model)
    family = _family(model)
    remove = list(remove)
    valid = [u.name for u in family.units(model, "block")]
    for n in remove:
        if n not in valid:
            raise ConfigError(f"unknown block '{n}' (blocks: {', '.join(valid)})")
    if len(set(remove)) != len(remove):
        raise ConfigError(f"a block is listed twice in {remove}")
    removable = set(family.removable_blocks(model))
    for n in remove:
        if n not in removable:
            raise ConfigError(f"block {n} has a projection shortcut (a stage change): only blocks with an "
                              "identity shortcut can be removed")
    if len(remove) == len(valid):
        raise ConfigError("cannot remove every block: at least one must stay")
    return family.remove_blocks(model, set(remove))


def cascadeflow_prune(source: Any, k: int, quantity: str = "A") -> tuple[nn.Module, Ranking]:
    """Remove the ``k`` blocks with the smallest accumulated gradient ``quantity``.

    ``source``: a finished run directory, a :class:`~gfa_theory.train.store.LoadedRun` /
    :class:`~gfa_theory.train.lifecycle.RunResult`, or a ``(model, gradients)`` pair.
    """
    if isinstance(source, (str, os.PathLike)):
        source = load_run(source)
    if hasattr(source, "model") and hasattr(source, "gradients"):
        model, gradients = source.model, source.gradients
    elif isinstance(source, tuple) and len(source) == 2:
        model, gradients = source
    else:
        raise ConfigError("cascadeflow_prune needs a run directory, a loaded run or a (model, gradients) pair")
    ranking = rank("cascadeflow", model, gradients=gradients, k=k, quantity=quantity)
    return prune(model, ranking.lowest(k)), ranking


# ---- healing ---------------------------------------------------------------------------------------
def _stream(batches: Any, steps: int) -> Iterator[Batch]:
    if callable(getattr(batches, "next", None)):  # a data.BatchSampler: endless, seeded
        for _ in range(steps):
            yield batches.next()
        return
    if isinstance(batches, (list, tuple)):  # reuse a fixed list cyclically
        if not batches:
            raise ConfigError("heal needs at least one training batch")
        for s in range(steps):
            yield batches[s % len(batches)]
        return
    it = iter(batches)
    for s in range(steps):
        try:
            yield next(it)
        except StopIteration:
            raise ConfigError(f"the healing batches ran out after {s} of {steps} steps") from None


def heal(model: nn.Module, batches: Any, steps: int, lr: float = 1e-3, *, weight_decay: float = 0.0,
         grad_clip: float = 1.0, seed: int = 0, progress: bool = False) -> list[float]:
    """Short healing fine-tune after pruning: ``steps`` AdamW updates of all parameters, in place.

    ``batches``: training ``(inputs, targets)`` as a :class:`~gfa_theory.train.data.BatchSampler`, a
    list (cycled) or an iterator. Seeded (dropout draws come from ``seed``; the caller's RNG is
    left alone) and deterministic on CPU. The loss is the model's training loss (mean over its
    supervised heads). Returns the loss of every step. ``progress``: a progress bar on stderr.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"healing steps must be an integer >= 0, got {steps!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"healing lr must be a positive number, got {lr!r}")
    model = unwrap(model)
    if steps == 0:
        return []
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    was = model.training
    losses = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        try:
            for x, y in tqdm(_stream(batches, steps), total=steps, desc="healing", disable=not progress,
                             leave=False):
                opt.zero_grad(set_to_none=True)
                _, loss = logits_and_loss(model, x.to(device), y.to(device), final_only=False)
                loss.backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                losses.append(float(loss.detach()))
        finally:
            model.train(was)
            model.zero_grad(set_to_none=True)
    return losses


def num_params(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in unwrap(model).parameters())


# ---- calibration data, and pruned checkpoints ------------------------------------------------------
def calibration_batches(cfg: Any, data: Any, n: int, seed: int = 0) -> list[Batch]:
    """``n`` seeded batches from the run's *training* split (scoring never sees held-out data).

    Text: random windows; images: a seeded random subset. A different ``seed`` is a different
    calibration subset (what the rank-stability study varies). The held-out batches a pruned
    model is evaluated on are :func:`gfa_theory.train.data.run_eval_batches`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"calibration batches must be a positive integer, got {n!r}")
    bs = cfg.train.batch_size
    if isinstance(data, TextData):
        return list(eval_batches(data, "train", bs, n, cfg.model.block_size, seed=seed))
    total = len(data.y_train)
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n * bs]
    return [data.items("train", index[s:s + bs]) for s in range(0, len(index), bs)]


def save_pruned(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write a pruned package model as ``path/checkpoint.pt`` (state_dict, model name and config,
    plus ``meta``), atomically; :func:`load_pruned` rebuilds it."""
    model = unwrap(model)
    name = _family(model).name
    if name not in MODELS:
        raise ConfigError(f"save_pruned writes package models ({', '.join(MODELS)}), not {type(model).__name__}: "
                          "save it with torch.save")
    payload = {"model_name": name, "model_config": to_dict(model.config),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    return save_torch_atomic(Path(path) / PRUNED_CHECKPOINT, payload)


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save_pruned` (or ``gfa prune``), in eval mode."""
    ckpt = Path(path) / PRUNED_CHECKPOINT
    if not ckpt.is_file():
        raise DataError(f"no {PRUNED_CHECKPOINT} in {path}: not a pruned-model directory")
    remedy = f"prune again into a new --out (it is not a {PRUNED_CHECKPOINT} gfa prune wrote)"
    try:
        state = load_torch(regular_file(ckpt, "pruned checkpoint"), map_location)  # weights only: nothing runs
    except GFAError:
        raise
    except Exception as exc:  # noqa: BLE001  (truncated zip, forbidden pickle, I/O error: all "unreadable")
        raise unreadable(ckpt, exc, path) from None
    if not isinstance(state, dict) or not {"model_name", "model_config", "model"} <= set(state):
        raise DataError(f"{ckpt} is not a pruned model of gfa prune (no model name, config and weights): {remedy}")
    if state["model_name"] not in MODELS or not isinstance(state["model_config"], dict):
        raise DataError(f"{ckpt} names no model of this package ({str(state['model_name'])[:40]!r}): {remedy}")
    try:
        cfg = build_config(state["model_name"], state["model_config"])
    except GFAError as exc:
        raise DataError(f"{ckpt} holds no valid model config ({exc}): {remedy}") from None
    check_model_memory(state["model_name"], cfg)
    model = build_model(state["model_name"], cfg)
    load_weights(model, state["model"], ckpt, f"its {state['model_name']} config", remedy)
    return model.eval()


__all__ = ["Cost", "GRADIENT_QUANTITIES", "METHODS", "Ranking", "block_units", "calibration_batches",
           "cascadeflow_prune", "heal", "load_pruned", "num_params", "prune", "rank", "removable_blocks",
           "save_pruned"]
