"""Gradient path counts by autograd on scalar-gain surrogates (SPEC section 2).

Every functional branch is replaced by ``f(x) = t * x``; identities, shortcuts and heads are
kept and the loss is the sum of the heads. Then the gradient arriving at a branch output,
``dL/dx_i``, *is* the path generating function ``G_i(t)``: its value at ``t = 0`` counts the
order-0 (identity) paths and its ``t``-derivative at ``t = 0`` the order-1 paths, so
``F(i) = G_i(0) + G_i'(0)``.

This module is deliberately independent of :mod:`gfa_theory.symbolic`: the two are checked
against each other in the tests.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


class ScalarGain(nn.Module):
    """Surrogate branch ``y = t * x + z``.

    ``t`` is the formal gain (a scalar tensor shared by all surrogates, or one per branch);
    ``z`` is a zero *probe*: ``dL/dz`` is the gradient arriving at this branch's output, i.e.
    ``G_i(t)`` (summed over every application when one surrogate is applied several times, which
    is exactly how a shared parameter group accumulates its gradient). Extra positional and
    keyword arguments are ignored so the surrogate can stand in for modules with richer
    signatures.
    """

    def __init__(self, t: torch.Tensor, probe: torch.Tensor | None = None) -> None:
        super().__init__()
        self.t = t
        self.probe = probe if probe is not None else torch.zeros((), dtype=t.dtype, requires_grad=True)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.t * x + self.probe


def first_order_counts(loss_fn: Callable[[], torch.Tensor], t: torch.Tensor,
                       probes: Sequence[torch.Tensor]) -> tuple[list[float], list[float]]:
    """``(G(0), G'(0))`` for each probe, with ``t`` a scalar tensor at 0 that requires grad.

    ``loss_fn`` runs the surrogate forward and returns the scalar loss. The derivative in
    ``t`` is taken by double backward through the probe gradients.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(probes), create_graph=True, allow_unused=True)
    order0, order1 = [], []
    for g in grads:
        if g is None:  # a probe no head can reach: no paths at all
            order0.append(0.0)
            order1.append(0.0)
            continue
        order0.append(float(g.detach()))
        (dg,) = torch.autograd.grad(g, t, retain_graph=True, allow_unused=True)
        order1.append(0.0 if dg is None else float(dg))
    return order0, order1
