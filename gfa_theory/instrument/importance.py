"""Post hoc layer importance on held-out data: six scores of every unit of a trained model.

Every metric scores the units of a trained model (``model.units(kind)``, kind ``"branch"`` or
``"block"``) so that **higher means more important**, and reports what it cost:

* ``ablation`` (the oracle): loss with the unit disabled minus the full model's loss;
* ``bi`` (Block Influence, ShortGPT): ``1 - mean cos(x_in, x_out)`` over tokens (image
  positions for ResNets), ``x_in`` the stream a unit reads (through the projection shortcut when
  the shape changes), ``x_out`` the stream it writes;
* ``angular`` (Gromov et al.): ``arccos(cos(x_l, x_{l+n})) / pi`` over n-block spans; with
  ``n = 1`` a per-block score; :func:`angular_spans` gives every span for pruning;
* ``taylor``: ``|sum theta * dL/dtheta|`` over the unit's parameters on calibration batches;
* ``magnitude``: mean ``|theta|`` of the unit's parameters (size-normalized so widths compare);
* ``random``: seeded uniform scores (the floor every method must beat).

A shared block (one parameter group applied at several positions) is one unit: ablating it removes
every application at once. :func:`application_ablation` scores each *application* instead (one
position of the block order skipped, the group's other applications kept), and
:func:`joint_ablation` skips a set of applications together (e.g. the last ``m`` of every model,
so that models with and without sharing lose the same number of applications).

Functions are pure: a model and a list of ``(inputs, targets)`` batches in, a tidy DataFrame out
(columns ``unit, kind, index, metric, score, forward_passes, backward_passes, seconds``).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import evaluation
from gfa_theory.models.families import ScorableAdapter, find_adapter
from gfa_theory.models.units import Unit

Batch = tuple[torch.Tensor, torch.Tensor]
METRICS = ("ablation", "bi", "angular", "taylor", "magnitude", "random")


def _frame(units: Sequence[Unit], scores: Sequence[float], metric: str, fwd: int, bwd: int,
           seconds: float) -> pd.DataFrame:
    return pd.DataFrame({
        "unit": [u.name for u in units], "kind": [u.kind for u in units],
        "index": [u.index for u in units], "metric": metric, "score": [float(s) for s in scores],
        "forward_passes": fwd, "backward_passes": bwd, "seconds": seconds})


def evaluate(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Mean held-out loss of the final head over ``batches``: the plain mean of the batch
    losses (every batch weighs the same), as ablation importance compares it."""
    return float(np.mean(evaluation.evaluate(model, batches).batch_losses))


def ablation(model: nn.Module, batches: Sequence[Batch], kind: str = "block") -> pd.DataFrame:
    """Loss increase when each unit is removed (its branch writes nothing)."""
    t0 = time.perf_counter()
    units = model.units(kind)
    base = evaluate(model, batches)
    deltas = []
    for u in units:
        with model.ablate([u.name]):
            deltas.append(evaluate(model, batches) - base)
    return _frame(units, deltas, "ablation", (1 + len(units)) * len(batches), 0, time.perf_counter() - t0)


def joint_ablation(model: nn.Module, batches: Sequence[Batch], positions: Iterable[int],
                   base: float | None = None) -> float:
    """Loss increase when the 1-based block applications ``positions`` are skipped together
    (``base``: the full model's loss, when already known)."""
    base = evaluate(model, batches) if base is None else base
    with model.skip_applications(positions):
        return evaluate(model, batches) - base


def application_ablation(model: nn.Module, batches: Sequence[Batch]) -> pd.DataFrame:
    """Loss increase when each block application is skipped alone: one row per application
    (``index`` = its 1-based position, ``unit`` = the block applied there). Without sharing it
    equals :func:`ablation` of the blocks."""
    t0 = time.perf_counter()
    owner = {a: u.name for u in model.units("block") for a in u.applications}
    base = evaluate(model, batches)
    positions = sorted(owner)
    deltas = [joint_ablation(model, batches, [a], base) for a in positions]
    frame = pd.DataFrame({"unit": [owner[a] for a in positions], "kind": "application", "index": positions,
                          "metric": "ablation", "score": deltas})
    frame["forward_passes"] = (1 + len(positions)) * len(batches)
    frame["backward_passes"] = 0
    frame["seconds"] = time.perf_counter() - t0
    return frame


# ---- stream states ---------------------------------------------------------------------------
def _hooks(model: nn.Module) -> ScorableAdapter:
    """The registry's adapter that knows where ``model``'s blocks and branches read and write."""
    return find_adapter(model, ScorableAdapter)


def _cos_per_token(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine over the feature axis for each token (GPT: (n, T, C) -> (n, T); ResNet: channel
    axis of (n, C, H, W) -> (n, H, W))."""
    dim = 1 if a.dim() == 4 else -1
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=dim, eps=1e-12)


@torch.no_grad()
def block_influence(model: nn.Module, batches: Sequence[Batch], kind: str = "block") -> pd.DataFrame:
    """ShortGPT's Block Influence ``1 - mean cos(x_in, x_out)``, averaged over applications."""
    t0 = time.perf_counter()
    units = model.units(kind)
    sums: dict[tuple, list[float]] = {}
    was = model.training
    model.eval()
    hooks = _hooks(model)
    recorder = hooks.record_block_io if kind == "block" else hooks.record_branch_io
    try:
        for x, _ in batches:
            with recorder(model) as records:
                model(x, final_only=True)
            for rec in records:
                key = rec[:-2]
                sums.setdefault(key, []).append(float((1 - _cos_per_token(rec[-2], rec[-1])).mean()))
    finally:
        model.train(was)
    scores = [float(np.mean(sums[hooks.record_key(u)])) for u in units]
    return _frame(units, scores, "bi", len(batches), 0, time.perf_counter() - t0)


@torch.no_grad()
def angular_spans(model: nn.Module, batches: Sequence[Batch], n: int = 1) -> pd.DataFrame:
    """Angular distance ``arccos(cos(x_l, x_{l+n}))/pi`` for every span of ``n`` block applications
    (``start`` 1-based). A span crossing a shape change compares through the projections."""
    t0 = time.perf_counter()
    if n < 1:
        raise ConfigError(f"span length n must be >= 1, got {n}")
    acc: dict[int, list[float]] = {}
    hooks = _hooks(model)
    blocks = hooks.block_modules(model)
    was = model.training
    model.eval()
    try:
        for x, _ in batches:
            with hooks.record_block_io(model) as records:
                model(x, final_only=True)
            B = len(records)
            for start in range(B - n + 1):
                u0, x_in, _ = records[start]
                src = x_in
                for k in range(start + 1, start + n):  # carry x_l along the shortcuts of the span
                    src = hooks.aligned_input(blocks[records[k][0]], src)
                x_out = records[start + n - 1][2]
                cos = _cos_per_token(src, x_out).clamp(-1, 1)
                acc.setdefault(start + 1, []).append(float((torch.arccos(cos) / math.pi).mean()))
    finally:
        model.train(was)
    rows = [{"start": s, "n": n, "score": float(np.mean(v))} for s, v in sorted(acc.items())]
    df = pd.DataFrame(rows)
    df["forward_passes"] = len(batches)
    df["seconds"] = time.perf_counter() - t0
    return df


def angular(model: nn.Module, batches: Sequence[Batch], kind: str = "block") -> pd.DataFrame:
    """Per-block angular distance (span n = 1), averaged over a shared block's applications."""
    if kind != "block":
        raise ConfigError("angular distance is defined on block spans: use kind='block'")
    t0 = time.perf_counter()
    units = model.units("block")
    spans = angular_spans(model, batches, n=1).set_index("start")["score"]
    scores = [float(np.mean([spans[a] for a in u.applications])) for u in units]
    return _frame(units, scores, "angular", len(batches), 0, time.perf_counter() - t0)


def taylor(model: nn.Module, batches: Sequence[Batch], kind: str = "block") -> pd.DataFrame:
    """First-order Taylor estimate of removing each unit: ``|sum theta * dL/dtheta|``."""
    t0 = time.perf_counter()
    units = model.units(kind)
    params = [p for u in units for p in u.params]
    grads = {id(p): torch.zeros_like(p) for p in params}
    was = model.training
    model.eval()
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            _, loss = model(x, y, final_only=True)
            gs = torch.autograd.grad(loss / len(batches), params, allow_unused=True)
            for p, g in zip(params, gs):
                if g is not None:
                    grads[id(p)] += g
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)
    scores = [abs(float(sum((p.detach() * grads[id(p)]).sum() for p in u.params))) for u in units]
    return _frame(units, scores, "taylor", len(batches), len(batches), time.perf_counter() - t0)


def magnitude(model: nn.Module, batches: Sequence[Batch] = (), kind: str = "block") -> pd.DataFrame:
    """Mean absolute weight of each unit (no data needed)."""
    t0 = time.perf_counter()
    units = model.units(kind)
    scores = [float(sum(p.detach().abs().sum() for p in u.params) / max(u.numel, 1)) for u in units]
    return _frame(units, scores, "magnitude", 0, 0, time.perf_counter() - t0)


def random_scores(model: nn.Module, batches: Sequence[Batch] = (), kind: str = "block",
                  seed: int = 0) -> pd.DataFrame:
    """Seeded random scores: the chance baseline."""
    units = model.units(kind)
    rng = np.random.default_rng(seed)
    return _frame(units, rng.random(len(units)), "random", 0, 0, 0.0)


SCORERS: dict[str, Callable[..., pd.DataFrame]] = {
    "ablation": ablation, "bi": block_influence, "angular": angular, "taylor": taylor,
    "magnitude": magnitude, "random": random_scores}


def score_all(model: nn.Module, batches: Sequence[Batch], kind: str = "block",
              metrics: Iterable[str] = METRICS, seed: int = 0) -> pd.DataFrame:
    """Every requested metric, stacked into one tidy frame."""
    frames = []
    for m in metrics:
        if m not in SCORERS:
            raise ConfigError(f"unknown importance metric '{m}' (choices: {', '.join(METRICS)})")
        if m == "angular" and kind != "block":
            continue
        kw = {"seed": seed} if m == "random" else {}
        frames.append(SCORERS[m](model, batches, kind=kind, **kw))
    return pd.concat(frames, ignore_index=True)
