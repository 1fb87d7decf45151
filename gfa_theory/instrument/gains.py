"""Branch gains measured on a live model: what the gain-aware theory takes as input.

At a sampled step, one forward and backward pass on a batch gives, per branch application
``i`` (notation: :mod:`gfa_theory.theory.symbolic`; gains: :mod:`gfa_theory.theory.gains`):

=====================  =========================================================================
quantity               meaning
=====================  =========================================================================
``stream_rms``         RMS of the stream ``x_{i-1}`` the branch reads (before any norm)
``branch_rms``         RMS of the branch output ``y_i`` it adds to the stream
``jacobian_gain``      ``sqrt(sum_k ||J_i^T u_k||^2 / sum_k ||u_k||^2)`` over Gaussian probes
                       ``u_k``: the RMS singular value of the branch Jacobian ``J_i = dy_i/dx_{i-1}``
                       (``||J_i||_F / sqrt(dim y)``), the scalar ``g_i`` of the theory
``stream_grad_norm``   ``||dL/dy_i||``: the gradient at the stream position branch ``i`` writes
``contribution_norm``  ``||c_i||``, ``c_i = J_i^T dL/dy_i``: what branch ``i`` passes down to
                       ``x_{i-1}`` (every path whose lowest branch is ``i``)
``alignment``          cosine of ``c_i`` with the identity path ``dL/dx`` at the last stream
                       position (NaN where the shapes differ, e.g. across ResNet stages)
=====================  =========================================================================

For a sequential stack with one head the gradient at the stream input telescopes exactly:
``dL/dx_0 = dL/dx_last + sum_i c_i``, so ``alignment`` and ``contribution_norm`` say which of the
theory's two limits (aligned sum, orthogonal root-sum-of-squares) the measured norm follows. The
identity path is read at the last position: under deep supervision it carries only the final
head, and under Post-LN the "identity" passes through the norms.

Where the stream is read: models with ``tap_branches()`` (this package's GPT) report the exact
stream input; for other registered families the input of each branch unit's output module is
taken, which is the stream where the branch reads it directly (the ResNets) but the normalised
stream in a Pre-LN model that keeps its norm outside the output module.

Cost: one forward, one backward to the branch outputs, then ``1 + probes`` backward passes
through each branch alone (about ``2 + probes`` backward passes in all). ``.grad`` is untouched
and the probes come from their own generator, so training is unaffected.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.base import logits_and_loss, unwrap
from gfa_theory.models.families import get_units
from gfa_theory.models.gpt import Tap

QUANTITIES = ("stream_rms", "branch_rms", "jacobian_gain", "stream_grad_norm",
              "contribution_norm", "alignment")


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().square().mean().sqrt())


def jacobian_gain(y: torch.Tensor, x: torch.Tensor, probes: int = 4,
                  generator: torch.Generator | None = None) -> float:
    """RMS singular value of ``J = dy/dx`` from ``probes`` Gaussian VJPs (``y`` computed from
    ``x`` in the current graph, which is kept): ``sqrt(sum ||J^T u||^2 / sum ||u||^2)``."""
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ConfigError(f"probes must be a positive integer, got {probes!r}")
    num = den = 0.0
    for _ in range(probes):
        u = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        (v,) = torch.autograd.grad(y, x, u, retain_graph=True)
        num += float(v.double().square().sum())
        den += float(u.double().square().sum())
    return (num / den) ** 0.5


@contextmanager
def _hooked_taps(model: nn.Module) -> Iterator[list[Tap]]:
    """Taps from forward hooks on each branch unit's output modules (applications in order)."""
    taps: list[Tap] = []
    handles = []
    for u in get_units(model, "branch"):
        apps = list(u.applications or (u.index,))
        calls = [0]

        def hook(module, inputs, output, u=u, apps=apps, calls=calls):
            if calls[0] < len(apps) and torch.is_tensor(output) and inputs and torch.is_tensor(inputs[0]):
                taps.append(Tap(apps[calls[0]], u.name, inputs[0], output))
            calls[0] += 1

        handles += [m.register_forward_hook(hook) for m in u.outputs[:1]]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


@dataclass
class BranchGradients:
    """One forward/backward pass, kept for measuring: taps (by branch index), the gradient at
    each branch output, each branch's contribution ``c_i`` and the identity path."""

    taps: list[Tap]
    stream_grads: list[torch.Tensor]
    contributions: list[torch.Tensor]
    identity: torch.Tensor
    loss: torch.Tensor


def branch_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     final_only: bool = False) -> BranchGradients:
    """Forward ``(x, y)`` with every branch tapped and split the gradient by branch."""
    model = unwrap(model)
    tap = model.tap_branches if hasattr(model, "tap_branches") else lambda: _hooked_taps(model)
    with torch.enable_grad(), tap() as taps:
        _, loss = logits_and_loss(model, x, y, final_only=final_only)
    taps = sorted(taps, key=lambda t: t.index)
    if not taps:
        raise ConfigError(f"model {type(model).__name__} exposes no branch to measure")
    if not all(t.x.requires_grad and t.y.requires_grad for t in taps):
        raise ConfigError("branch inputs and outputs must be in the autograd graph (gradients on)")
    grads = torch.autograd.grad(loss, [t.y for t in taps], retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t.y) if g is None else g for t, g in zip(taps, grads)]
    contrib = [torch.autograd.grad(t.y, t.x, g, retain_graph=True)[0] for t, g in zip(taps, grads)]
    return BranchGradients(taps, grads, contrib, grads[-1], loss)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("nan")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def measure_gains(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probes: int = 4,
                  seed: int = 0, step: int | None = None, final_only: bool = False) -> pd.DataFrame:
    """The table of the module docstring for one batch: columns step, unit, index (branch ``i``),
    quantity, value; one row per branch application and quantity."""
    bg = branch_gradients(model, x, y, final_only)
    gen = torch.Generator(device=bg.loss.device).manual_seed(seed)
    rows = []
    for t, g, c in zip(bg.taps, bg.stream_grads, bg.contributions):
        values = {"stream_rms": _rms(t.x), "branch_rms": _rms(t.y),
                  "jacobian_gain": jacobian_gain(t.y, t.x, probes, gen),
                  "stream_grad_norm": float(g.double().norm()),
                  "contribution_norm": float(c.double().norm()),
                  "alignment": _cosine(c, bg.identity)}
        rows += [(step, t.unit, t.index, q, values[q]) for q in QUANTITIES]
    df = pd.DataFrame(rows, columns=["step", "unit", "index", "quantity", "value"])
    df["step"] = df["step"].astype("Int64")
    return df


class GainMonitor:
    """Measure gains every ``every`` steps during training and keep the frames.

    Call ``monitor.maybe(step, x, y)`` with the step's batch, outside the optimizer's
    backward/step (it does not touch ``.grad``); ``monitor.to_frame()`` is the long table.
    """

    def __init__(self, model: nn.Module, every: int = 50, probes: int = 4, seed: int = 0) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer, got {every!r}")
        self.model, self.every, self.probes, self.seed = model, every, probes, seed
        self.frames: list[pd.DataFrame] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def maybe(self, step: int, x: torch.Tensor, y: torch.Tensor) -> bool:
        if not self.due(step):
            return False
        self.frames.append(measure_gains(self.model, x, y, self.probes, self.seed + step, step))
        return True

    def to_frame(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame(columns=["step", "unit", "index", "quantity", "value"])
        return pd.concat(self.frames, ignore_index=True)
