"""CascadeFlow Pruning: rank residual blocks, then physically remove the k least important (SPEC study 6).

CascadeFlow ranks blocks by their accumulated training gradient ``A`` (recorded by the gradient
tracker during ordinary training: no extra forward or backward pass) and removes the ``k``
blocks with the smallest ``A``. Every baseline ranking goes through the same removal function,
so the methods differ only in which blocks they pick. Scores: higher = more important.

=================  =============================================================  ==============
method             score of a block                                               needs
=================  =============================================================  ==============
``cascadeflow``    accumulated training gradient ``A`` (or ``A_rms``, ...)        gradients
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

Which blocks can go: every block of this package's GPT (one must stay; a block applied several
times by ``block_schedule`` goes with all its applications); blocks with an identity shortcut in
this package's ResNet and in torchvision ResNets (a projection / ``downsample`` block changes the
stream's shape, removing it would break the network). Rankings list removable blocks only.

:func:`prune` returns a new, smaller model (new config, copied weights). Its outputs equal the
original's with the removed blocks ablated, and its layout (``model.layout()``, or
:func:`gfa_theory.models.families.module_layout` for any supported model) is the pruned wiring.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gfa_theory.errors import ConfigError, DataError
from gfa_theory.instrument import importance
from gfa_theory.models import GPT, ResidualModel, ResNet, build_model
from gfa_theory.models.families import get_units, unwrap
from gfa_theory.models.units import Unit

Batch = tuple[torch.Tensor, torch.Tensor]
METHODS = ("cascadeflow", "bi", "angular", "taylor", "magnitude", "random", "last", "ablation")
NEEDS_BATCHES = ("bi", "angular", "taylor", "ablation")
GRADIENT_QUANTITIES = ("A", "A_rms", "A_sq", "A_stream")  # the tracker's per-unit totals
TORCHVISION_LAYERS = ("layer1", "layer2", "layer3", "layer4")
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


# ---- model families --------------------------------------------------------------------------
def _family(model: nn.Module) -> str:
    if isinstance(model, GPT):
        return "gpt"
    if isinstance(model, ResNet):
        return "resnet"
    tvm = sys.modules.get("torchvision.models")
    if tvm is not None and isinstance(model, tvm.ResNet):
        return "torchvision"
    raise ConfigError(f"pruning supports this package's GPT and ResNet and torchvision ResNets, "
                      f"not {type(model).__name__}")


def _tv_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of a torchvision ResNet in forward order, named like its adapter units."""
    return [(f"{layer}.{j}", blk) for layer in TORCHVISION_LAYERS for j, blk in enumerate(getattr(model, layer))]


def block_units(model: nn.Module) -> list[Unit]:
    """Every block unit of a supported model, in forward order of first application."""
    model = unwrap(model)
    _family(model)
    return get_units(model, "block")


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks :func:`prune` can remove, in forward order (see the module docstring)."""
    model = unwrap(model)
    family = _family(model)
    if family == "gpt":
        return [u.name for u in model.units("block")]
    if family == "resnet":
        return [f"blocks.{k}" for k, blk in enumerate(model.blocks) if isinstance(blk.shortcut, nn.Identity)]
    return [name for name, blk in _tv_blocks(model) if blk.downsample is None]


class _TorchvisionBlock(nn.Module):
    """A torchvision block seen as ``shortcut(x) + branch(x)`` with the package's ``skip`` flag."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.shortcut = block.downsample if block.downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        # An ablated block keeps the ReLU after the addition; block inputs are post-ReLU (>= 0),
        # so for an identity shortcut this is exactly the identity: ablation == removal.
        return torch.relu(self.shortcut(x)) if skip else self.block(x)


class TorchvisionView(ResidualModel):
    """A torchvision ResNet behind this package's model protocol, so that the post hoc scorers of
    :mod:`gfa_theory.instrument.importance` run on it unchanged: ``units(kind)`` (named ``blocks.k`` /
    ``blocks.k.branch``, ``k`` 0-based over layer1..layer4), ``ablate(names)`` and
    ``forward(x, targets=None, final_only=False) -> (logits, loss)``. It shares the wrapped
    model's parameters and replays torchvision's ``ResNet._forward_impl`` (a subclass with its own
    forward is not followed).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        named = _tv_blocks(net)
        self.names = [name for name, _ in named]  # torchvision name of blocks.k
        self.blocks = nn.ModuleList(_TorchvisionBlock(blk) for _, blk in named)

    def units(self, kind: str = "branch") -> list[Unit]:
        if kind not in ("branch", "block"):
            raise ConfigError(f"unit kind must be 'branch' or 'block', got {kind!r}")
        out = []
        for k, (tv, wrapper) in enumerate(zip(get_units(self.net, kind), self.blocks)):
            name = f"blocks.{k}.branch" if kind == "branch" else f"blocks.{k}"
            out.append(Unit(name, kind, k + 1, tv.params, tv.outputs, (k + 1,)))
        return out

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                final_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        net = self.net
        if self.disabled:
            self.check_unit_names(self.disabled)
        off = {k for k in range(len(self.blocks))
               if f"blocks.{k}" in self.disabled or f"blocks.{k}.branch" in self.disabled}
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))  # (batch, C, H, W)
        for k, blk in enumerate(self.blocks):
            x = blk(x, skip=k in off)
        logits = net.fc(torch.flatten(net.avgpool(x), 1))  # (batch, classes)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


def _scorable(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """The model the importance scorers run on, and its block names -> the model's block names."""
    if _family(model) == "torchvision":
        view = TorchvisionView(model)
        return view, {f"blocks.{k}": name for k, name in enumerate(view.names)}
    return model, {u.name: u.name for u in model.units("block")}


def _applications(model: nn.Module) -> list[str]:
    """Block unit name at each block application 1..B (the order of the angular spans)."""
    if isinstance(model, GPT):
        return [f"h.{u}" for u in model.schedule]
    return [u.name for u in block_units(model)]


# ---- scoring -------------------------------------------------------------------------------------
def _gradient_scores(gradients: Any, quantity: str, names: Sequence[str]) -> dict[str, float]:
    if gradients is None:
        raise ConfigError("method 'cascadeflow' ranks by the tracker's accumulated gradients: pass "
                          "gradients= (the gradients frame of runs.load_run, or a GradientTracker)")
    if quantity not in GRADIENT_QUANTITIES:
        raise ConfigError(f"unknown gradient quantity '{quantity}' (choices: {', '.join(GRADIENT_QUANTITIES)})")
    frame = gradients.to_frame() if hasattr(gradients, "to_frame") else gradients
    if not isinstance(frame, pd.DataFrame) or not {"unit", "kind", "quantity", "value"} <= set(frame.columns):
        raise ConfigError("gradients must be the tracker's long frame (columns unit, kind, quantity, step, value)")
    rows = frame[(frame["kind"] == "block") & (frame["quantity"] == quantity)]
    if "step" in rows:
        rows = rows[rows["step"].isna()]  # totals, not the per-step series
    twice = rows["unit"][rows["unit"].duplicated()]
    if len(twice):
        raise ConfigError(f"gradients frame has several '{quantity}' totals for block {twice.iloc[0]} "
                          "(several runs?): pass one run's frame")
    values = dict(zip(rows["unit"], rows["value"].astype(float)))
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"gradients frame has no block total '{quantity}' for {missing[0]}: train with "
                          "train.track=block or both (and train.track_stream for A_stream)")
    return {n: values[n] for n in names}


def _ordered(names: Sequence[str], scores: dict[str, float]) -> list[str]:
    """Ascending score; ties keep forward order."""
    return sorted(names, key=lambda n: scores[n])


def _angular(model: nn.Module, view: nn.Module, to_model: dict[str, str], batches: list[Batch],
             names: list[str], k: int | None) -> tuple[list[str], dict[str, float], int, dict]:
    if k is None:
        raise ConfigError("method 'angular' removes a contiguous span of k blocks: pass k")
    apps = _applications(model)
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
                     names: list[str], k: int | None) -> tuple[list[str], dict[str, float], int, dict]:
    """SLEB-style greedy removal on calibration loss; returns model names, scores, forward passes."""
    to_view = {m: v for v, m in to_model.items()}
    base = importance.evaluate(view, batches)
    evals = 1
    rounds = len(names) - 1 if k is None else k  # k=None: the full greedy order
    removed: list[str] = []
    remaining = list(names)
    scores: dict[str, float] = {}
    deltas: dict[str, float] = {}
    for _ in range(max(rounds, 1)):  # at least one round, to order the blocks that stay
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
         seed: int = 0, k: int | None = None, quantity: str = "A") -> Ranking:
    """Rank the removable blocks of ``model`` by ``method`` (see the module docstring).

    ``gradients``: the tracker's long frame (``runs.load_run(dir).gradients``) or a
    :class:`~gfa_theory.instrument.tracking.GradientTracker`, for ``cascadeflow``; ``quantity`` picks its
    total (``A``, ``A_rms``: per-parameter RMS, comparable across widths, ``A_sq``, ``A_stream``).
    ``batches``: calibration ``(inputs, targets)`` for ``bi``, ``angular``, ``taylor``,
    ``ablation``. ``k``: how many blocks will go (needed by ``angular``; ``ablation`` then stops
    its greedy search after ``k`` removals). ``seed``: for ``random``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method '{method}' (choices: {', '.join(METHODS)})")
    model = unwrap(model)
    names = removable_blocks(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no removable block (every block has a projection shortcut)")
    if k is not None:
        _check_k(k, len(names))
    batches = list(batches) if batches is not None else []
    if method in NEEDS_BATCHES and not batches:
        raise ConfigError(f"method '{method}' scores blocks on calibration data: pass batches")
    t0 = time.perf_counter()
    fwd = bwd = 0
    details: dict = {}
    order: list[str] | None = None
    if method == "cascadeflow":
        scores = _gradient_scores(gradients, quantity, names)
        details = {"quantity": quantity}
    elif method == "last":
        scores = {n: float(len(names) - p) for p, n in enumerate(names)}  # earlier = more important
    else:
        view, to_model = _scorable(model)
        if method == "angular":
            order, scores, fwd, details = _angular(model, view, to_model, batches, names, k)
        elif method == "ablation":
            order, scores, fwd, details = _greedy_ablation(view, to_model, batches, names, k)
        else:
            scorer = importance.SCORERS["random" if method == "random" else method]
            kw = {"seed": seed} if method == "random" else {}
            df = scorer(view, batches, kind="block", **kw)
            scores = {to_model[u]: float(s) for u, s in zip(df["unit"], df["score"]) if to_model[u] in names}
            fwd, bwd = int(df["forward_passes"].iloc[0]), int(df["backward_passes"].iloc[0])
            if method == "random":
                details = {"seed": seed}
    if order is None:
        order = _ordered(names, scores)
    cost = Cost(int(fwd), int(bwd), time.perf_counter() - t0)
    return Ranking(method, order, scores, cost, k, details)


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
    valid = [u.name for u in block_units(model)]
    for n in remove:
        if n not in valid:
            raise ConfigError(f"unknown block '{n}' (blocks: {', '.join(valid)})")
    if len(set(remove)) != len(remove):
        raise ConfigError(f"a block is listed twice in {remove}")
    removable = set(removable_blocks(model))
    for n in remove:
        if n not in removable:
            raise ConfigError(f"block {n} has a projection shortcut (a stage change): only blocks with an "
                              "identity shortcut can be removed")
    if family == "gpt" and len(remove) == len(valid):
        raise ConfigError("cannot remove every block: at least one must stay")
    if family == "torchvision":
        return _prune_torchvision(model, set(remove))
    # Building the smaller model draws initial weights: keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        new, state = (_prune_gpt if family == "gpt" else _prune_resnet)(model, set(remove))
    p = next(model.parameters())
    new = new.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)
    new.load_state_dict(state)
    new.train(model.training)
    return new


def _renamed(state: dict, prefix: str, mapping: dict[int, int]) -> dict:
    """``state`` with keys ``prefix.<old>.rest`` renamed to ``prefix.<new>.rest`` (dropped when
    ``old`` is not in ``mapping``); other keys unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix + "."):
            _, old, rest = key.split(".", 2)
            if int(old) in mapping:
                out[f"{prefix}.{mapping[int(old)]}.{rest}"] = value
        else:
            out[key] = value
    return out


def _remap_supervision(spec: Any, supervised: list[int], new_index: dict[int, int]) -> Any:
    """Heads on removed applications go; 'final' and 'all' stay what they say."""
    if spec in ("final", "all"):
        return spec
    return [new_index[m] for m in supervised if m in new_index]


def _prune_gpt(model: GPT, remove: set[str]) -> tuple[GPT, dict]:
    cfg = model.config
    kept = [u for u in range(len(model.h)) if f"h.{u}" not in remove]
    unique = {u: j for j, u in enumerate(kept)}  # old unique block -> new
    survivors = [a for a, u in enumerate(model.schedule, start=1) if u in unique]
    apps = {a: j for j, a in enumerate(survivors, start=1)}  # old application -> new
    schedule = [unique[model.schedule[a - 1]] for a in survivors]
    per_block = {name: [getattr(cfg, name)[u] for u in kept] if isinstance(getattr(cfg, name), (list, tuple))
                 else getattr(cfg, name) for name in ("n_head", "d_ff")}
    new_cfg = dataclasses.replace(
        cfg, n_blocks=len(kept), **per_block,
        block_schedule=None if cfg.block_schedule is None else schedule,
        supervision=_remap_supervision(cfg.supervision, model.supervised, apps))
    new = GPT(new_cfg)
    new.disabled = _remap_disabled(model.disabled, "h", unique)
    return new, _renamed(model.state_dict(), "h", unique)


def _prune_resnet(model: ResNet, remove: set[str]) -> tuple[ResNet, dict]:
    cfg = model.config
    kept = [k for k in range(len(model.blocks)) if f"blocks.{k}" not in remove]
    index = {k: j for j, k in enumerate(kept)}  # 0-based block -> new
    stage = [s for s, n in enumerate(cfg.blocks_per_stage) for _ in range(n)]
    per_stage = [sum(1 for k in kept if stage[k] == s) for s in range(len(cfg.blocks_per_stage))]
    B_old, B_new = len(model.blocks), len(kept)
    new_cfg = dataclasses.replace(
        cfg, blocks_per_stage=per_stage,
        supervision=_remap_supervision(cfg.supervision, model.supervised, {k + 1: j + 1 for k, j in index.items()}))
    new = ResNet(new_cfg)
    # Heads are keyed by 1-based block; the final head always moves to the new last block (it is
    # the head the ablated model reads), intermediate heads follow their block.
    heads = {k + 1: j + 1 for k, j in index.items() if j + 1 != B_new and str(k + 1) in model.heads}
    heads[B_old] = B_new
    state = _renamed(_renamed(model.state_dict(), "blocks", index), "heads", heads)
    new.disabled = _remap_disabled(model.disabled, "blocks", index)
    return new, state


def _remap_disabled(disabled: set[str], prefix: str, mapping: dict[int, int]) -> set[str]:
    out = set()
    for name in disabled:
        _, old, *rest = name.split(".")
        if int(old) in mapping:
            out.add(".".join([prefix, str(mapping[int(old)]), *rest]))
    return out


def _prune_torchvision(model: nn.Module, remove: set[str]) -> nn.Module:
    new = copy.deepcopy(model)
    for layer in TORCHVISION_LAYERS:
        seq = getattr(new, layer)
        # an emptied layer1 is an empty Sequential: the identity, as the removed blocks were
        setattr(new, layer, nn.Sequential(*[blk for j, blk in enumerate(seq) if f"{layer}.{j}" not in remove]))
    return new


def cascadeflow_prune(source: Any, k: int, quantity: str = "A") -> tuple[nn.Module, Ranking]:
    """Remove the ``k`` blocks with the smallest accumulated gradient ``quantity``.

    ``source``: a finished run directory, a :class:`~gfa_theory.train.store.LoadedRun` /
    :class:`~gfa_theory.train.loop.RunResult`, or a ``(model, gradients)`` pair.
    """
    if isinstance(source, (str, os.PathLike)):
        from gfa_theory.train.store import load_run  # noqa: PLC0415  (runs imports models; keep this module light)

        source = load_run(source)
    if hasattr(source, "model") and hasattr(source, "gradients"):
        model, gradients = source.model, source.gradients
    elif isinstance(source, tuple) and len(source) == 2:
        model, gradients = source
    else:
        raise ConfigError("cascadeflow_prune needs a run directory, a loaded run or a (model, gradients) pair")
    ranking = rank("cascadeflow", model, gradients=gradients, k=k, quantity=quantity)
    return prune(model, ranking.lowest(k)), ranking


# ---- evaluation and healing ----------------------------------------------------------------------
@dataclass
class Evaluation:
    """Held-out loss (final head, mean per token / image), perplexity ``exp(loss)``, accuracy
    (next-token for text, top-1 for images), the number of tokens / images, and the wall time of
    the pass (a rough speed reading; time models side by side for a real comparison)."""

    loss: float
    perplexity: float
    accuracy: float
    count: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, final_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, loss)`` of a package model, or of a plain classifier (torchvision)."""
    if isinstance(model, ResidualModel):
        return model(x, y, final_only=final_only)
    logits = model(x)
    return logits, F.cross_entropy(logits, y)


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: Iterable[Batch]) -> Evaluation:
    """Loss, perplexity and accuracy of ``model`` (its final head) over fixed ``batches``."""
    model = unwrap(model)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    t0 = time.perf_counter()
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits, loss = _loss(model, x, y, final_only=True)
            keep = y != -1  # GPT's ignore_index
            n = int(keep.sum())
            loss_sum += float(loss) * n
            correct += int(((logits.argmax(dim=-1) == y) & keep).sum())
            count += n
    finally:
        model.train(was)
    if not count:
        raise DataError("no evaluation batches (or only ignored targets): nothing to evaluate")
    loss = loss_sum / count
    return Evaluation(loss, math.exp(min(loss, 700.0)), correct / count, count, time.perf_counter() - t0)


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
         grad_clip: float = 1.0, seed: int = 0) -> list[float]:
    """Short healing fine-tune after pruning: ``steps`` AdamW updates of all parameters, in place.

    ``batches``: training ``(inputs, targets)`` as a :class:`~gfa_theory.train.data.BatchSampler`, a
    list (cycled) or an iterator. Seeded (dropout draws come from ``seed``; the caller's RNG is
    left alone) and deterministic on CPU. The loss is the model's training loss (mean over its
    supervised heads). Returns the loss of every step.
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
            for x, y in _stream(batches, steps):
                opt.zero_grad(set_to_none=True)
                _, loss = _loss(model, x.to(device), y.to(device), final_only=False)
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


# ---- a run's data, and pruned checkpoints ----------------------------------------------------------
def _seq_len(cfg: Any) -> int | None:
    return cfg.model.block_size if cfg.model_name == "gpt" else None


def held_out_batches(cfg: Any, data: Any) -> list[Batch]:
    """The run's fixed validation batches: exactly what its training evaluations scored."""
    from gfa_theory.train.data import eval_batches  # noqa: PLC0415

    tc = cfg.train
    return list(eval_batches(data, "val", tc.batch_size, tc.eval_batches, _seq_len(cfg), seed=cfg.data.split_seed))


def calibration_batches(cfg: Any, data: Any, n: int, seed: int = 0) -> list[Batch]:
    """``n`` seeded batches from the run's *training* split (scoring never sees held-out data).

    Text: random windows; images: a seeded random subset. A different ``seed`` is a different
    calibration subset (what the rank-stability study varies).
    """
    from gfa_theory.train.data import TextData, eval_batches  # noqa: PLC0415

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"calibration batches must be a positive integer, got {n!r}")
    bs = cfg.train.batch_size
    if isinstance(data, TextData):
        return list(eval_batches(data, "train", bs, n, _seq_len(cfg), seed=seed))
    total = len(data.y_train)
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n * bs]
    return [data.items("train", index[s:s + bs]) for s in range(0, len(index), bs)]


def save_pruned(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write a pruned package model as ``path/checkpoint.pt`` (state_dict, model name and config,
    plus ``meta``), atomically; :func:`load_pruned` rebuilds it."""
    from gfa_theory.config import to_dict  # noqa: PLC0415
    from gfa_theory.train.store import save_torch_atomic  # noqa: PLC0415

    model = unwrap(model)
    name = _family(model)
    if name == "torchvision":
        raise ConfigError("save_pruned writes package models; save a torchvision model with torch.save")
    payload = {"model_name": name, "model_config": to_dict(model.config),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    return save_torch_atomic(Path(path) / PRUNED_CHECKPOINT, payload)


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save_pruned` (or ``gfa prune``), in eval mode."""
    ckpt = Path(path) / PRUNED_CHECKPOINT
    if not ckpt.is_file():
        raise DataError(f"no {PRUNED_CHECKPOINT} in {path}: not a pruned-model directory")
    state = torch.load(ckpt, map_location=map_location, weights_only=False)
    model = build_model(state["model_name"], state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()


__all__ = ["Cost", "Evaluation", "GRADIENT_QUANTITIES", "METHODS", "Ranking", "TorchvisionView",
           "block_units", "calibration_batches", "cascadeflow_prune", "evaluate_model", "heal",
           "held_out_batches", "load_pruned", "num_params", "prune", "rank", "removable_blocks",
           "save_pruned"]
