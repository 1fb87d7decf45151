"""Gradient path counts by autograd on scalar-gain surrogates of a layout.

Every functional branch is replaced by ``f(x) = t * x``; identities, shortcuts and heads are
kept and the loss is the sum of the heads. Then the gradient arriving at a branch output,
``dL/dx_i``, *is* the path generating function ``G_i(t)``: its value at ``t = 0`` counts the
order-0 (identity) paths and its ``t``-derivative at ``t = 0`` the order-1 paths, so
``F(i) = G_i(0) + G_i'(0)``.

This module is deliberately independent of :mod:`gfa_theory.theory.symbolic`: the two are checked
against each other in the tests.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
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
        if not g.requires_grad:  # G(t) does not depend on t (e.g. the last branch): no order-1 path
            order1.append(0.0)
            continue
        (dg,) = torch.autograd.grad(g, t, retain_graph=True, allow_unused=True)
        order1.append(0.0 if dg is None else float(dg))
    return order0, order1


# ---- surrogates of a Layout ----------------------------------------------------------------------
# float64 counts are exact integers up to 2**53; beyond that they carry a relative rounding
# error of a few ulps per stream position (all terms are positive, so nothing cancels).
EXACT_LIMIT = 2**53
FLOAT64_MAX = sys.float_info.max  # larger counts overflow to inf and cannot be compared


def counts_agree(exact: int, counted: float, rel: float = 1e-9) -> bool:
    """Whether an autograd count matches an exact integer count.

    Exactly below :data:`EXACT_LIMIT` (float64 holds those integers exactly), else to relative
    tolerance ``rel``.
    """
    if exact < EXACT_LIMIT:
        return counted == exact
    return abs(counted - exact) <= rel * exact


class FormalT:
    """The indeterminate ``t`` acting on truncated power series in ``t``.

    A stream value is the coefficient vector ``(c_0, ..., c_K)`` of a series in ``t``;
    ``t * x`` shifts it up one order and drops ``t^(K+1)``. Used as the gain of
    :class:`ScalarGain`, it turns the surrogate into a computation on formal series, so a single
    backward pass reads every coefficient of ``G_i(t)`` (see :func:`count_paths`).
    """

    def __init__(self, max_order: int, dtype: torch.dtype = torch.float64) -> None:
        self.max_order = max_order
        self.dtype = dtype

    def __mul__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[..., :1]), x[..., :-1]], dim=-1)

    __rmul__ = __mul__

    def zeros(self, requires_grad: bool = False) -> torch.Tensor:
        return torch.zeros(self.max_order + 1, dtype=self.dtype, requires_grad=requires_grad)


class LayoutSurrogate(nn.Module):
    """The stream computation of a :class:`~gfa_theory.theory.layout.Layout` with scalar-gain branches.

    Sequential block: ``x <- x + f(x)`` per branch; parallel block: ``x <- x + sum_k f_k(x)``;
    the loss is the sum of the stream at the head positions. With ``share=True`` one
    :class:`ScalarGain` per parameter group and slot is applied at every application (as a real
    shared module is), so its own probe collects the group sum; with ``share=False`` every
    application gets its own gain, ``gain[i-1]`` when ``gain`` is a vector (or a list, e.g. of
    :class:`FormalGain`) of ``N`` gains.
    ``branch_probes[i-1]`` is added to branch ``i``'s output at that application only, like a
    tensor hook on the output.

    Norms and skips (all scalars, default 1; see :mod:`gfa_theory.theory.gains`): branch ``i``
    computes ``out_i * (f_i(pre_i * x) + z_i)`` (its probe ``z_i`` sits inside its output norm),
    a position is written as ``x_p = norms_p * (identity_p * x_{p-1} + sum of its branch outputs)``
    and head ``m`` adds ``heads_m * x`` to the loss.
    """

    def __init__(self, layout, gain, probe_shape: tuple[int, ...] = (),
                 share: bool = True, dtype: torch.dtype = torch.float64,
                 identity=None, norms=None, heads=None, pre=None, out=None) -> None:
        super().__init__()
        self.layout = layout
        P, N, H = layout.n_positions, layout.N, len(layout.supervision)
        self.identity, self.norms = _ones(identity, P), _ones(norms, P)
        self.heads, self.pre, self.out = _ones(heads, H), _ones(pre, N), _ones(out, N)
        per_branch = isinstance(gain, (list, tuple)) or (isinstance(gain, torch.Tensor) and gain.dim() == 1)
        if per_branch and share:
            raise ValueError("per-branch gains need share=False (a shared module has one gain)")

        def zero() -> torch.Tensor:
            return torch.zeros(probe_shape, dtype=dtype, requires_grad=True)

        branches = layout.branches()
        groups = layout.groups() if share else [(blk,) for blk in range(1, layout.B + 1)]
        by_block: dict[int, list[int]] = {}
        for br in branches:
            by_block.setdefault(br.block, []).append(br.index)
        gains, self.applications, self.group_blocks = [], [], []
        self.module_of: dict[int, int] = {}  # branch index i -> its ScalarGain
        for group in groups:
            for slot in range(len(by_block[group[0]])):
                apps = tuple(by_block[blk][slot] for blk in group)
                g = gain[apps[0] - 1] if per_branch else gain
                for ix in apps:
                    self.module_of[ix] = len(gains)
                gains.append(ScalarGain(g, zero()))
                self.applications.append(apps)
                self.group_blocks.append(tuple(group))
        self.gains = nn.ModuleList(gains)
        self.branch_probes = [zero() for _ in branches]
        self._by_block = by_block

    def module_probes(self) -> list[torch.Tensor]:
        return [g.probe for g in self.gains]

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x, heads, p = x0, [], 0
        for b, blk in enumerate(self.layout.blocks, start=1):
            outs = []
            for ix in self._by_block[b]:
                f = self.gains[self.module_of[ix]]
                y = self.out[ix - 1] * (f(self.pre[ix - 1] * x) + self.branch_probes[ix - 1])
                if blk.parallel:
                    outs.append(y)  # siblings all read the block input
                else:
                    p += 1
                    x = self.norms[p - 1] * (self.identity[p - 1] * x + y)
            if blk.parallel:
                p += 1
                x = self.norms[p - 1] * (self.identity[p - 1] * x + torch.stack(outs).sum(0))
            if b in self.layout.supervision:
                heads.append(self.heads[self.layout.supervision.index(b)] * x)
        return torch.stack(heads).sum(0)


def _ones(values, n: int) -> list[float]:
    """Scalar multipliers of a surrogate (``None``: ``n`` ones)."""
    if values is None:
        return [1.0] * n
    if len(values) != n:
        raise ValueError(f"{len(values)} multipliers for {n} slots")
    return [float(v) for v in values]


@dataclass
class FirstOrderCounts:
    """``G(0)`` and ``G'(0)`` per branch and per parameter group (summed over applications)."""

    order0: list[float]
    order1: list[float]
    groups: list[tuple[int, ...]]  # blocks of each parameter group
    group_order0: list[float]
    group_order1: list[float]

    @property
    def fan_in(self) -> list[float]:
        return [a + c for a, c in zip(self.order0, self.order1)]

    @property
    def group_fan_in(self) -> list[float]:
        return [a + c for a, c in zip(self.group_order0, self.group_order1)]


def first_order(layout) -> FirstOrderCounts:
    """``F(i) = G_i(0) + G_i'(0)`` by double backward through a shared scalar gain at ``t = 0``."""
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    model = LayoutSurrogate(layout, t)
    x0 = torch.ones((), dtype=torch.float64)
    probes = model.branch_probes + model.module_probes()
    order0, order1 = first_order_counts(lambda: model(x0), t, probes)
    n = layout.N
    groups, g0 = _sum_slots(model.group_blocks, [[v] for v in order0[n:]])
    _, g1 = _sum_slots(model.group_blocks, [[v] for v in order1[n:]])
    return FirstOrderCounts(order0[:n], order1[:n], groups, [v[0] for v in g0], [v[0] for v in g1])


@dataclass
class PathCounts:
    """Every path-order coefficient of ``G_i(t)`` up to ``max_order``, counted by autograd."""

    max_order: int
    paths_by_order: list[list[float]]  # per branch i, orders 0..max_order
    groups: list[tuple[int, ...]]
    group_paths_by_order: list[list[float]]  # per parameter group, summed over slots

    @property
    def fan_in(self) -> list[float]:
        return [c[0] + c[1] for c in self.paths_by_order]

    @property
    def group_fan_in(self) -> list[float]:
        return [c[0] + c[1] for c in self.group_paths_by_order]


def count_paths(layout, max_order: int | None = None) -> PathCounts:
    """All path counts of ``layout`` by one backward pass through a formal-series surrogate.

    The stream carries coefficient vectors of length ``K + 1`` and every branch multiplies by
    the formal ``t`` (:class:`FormalT`). The loss ``L(t)`` is linear in each probe series ``z``:
    ``L(t) = G_i(t) z(t) + ...``, so ``d L_K / d z_j = [t^(K-j)] G_i``; the gradient of the single
    top coefficient ``L_K``, read backwards, is every coefficient of every ``G_i`` at once.
    ``K`` defaults to ``n_positions - 1`` (the largest possible order) and is at least 1.
    """
    K = max(layout.n_positions - 1 if max_order is None else max_order, 1)
    t = FormalT(K)
    model = LayoutSurrogate(layout, t, probe_shape=(K + 1,))
    x0 = torch.zeros(K + 1, dtype=torch.float64)
    x0[0] = 1.0  # x_0 = 1
    probes = model.branch_probes + model.module_probes()
    loss = model(x0)  # (K+1,) coefficients of L(t)
    grads = torch.autograd.grad(loss[K], probes)
    series = [g.flip(0).tolist() for g in grads]
    n = layout.N
    groups, total = _sum_slots(model.group_blocks, series[n:])
    return PathCounts(K, series[:n], groups, total)


def order1_through(layout) -> list[list[float]]:
    """``D[i-1][k-1]``: order-1 paths to branch ``i`` that pass through branch ``k``.

    Every application gets its own gain ``t_k`` (``share=False``); ``D[i][k] = d G_i / d t_k`` at
    ``t = 0`` by double backward. Zero exactly when ``k`` is not downstream of ``i`` (``k``
    upstream, ``k = i``, or a sibling in the same parallel block).
    """
    n = layout.N
    t = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    model = LayoutSurrogate(layout, t, share=False)
    loss = model(torch.ones((), dtype=torch.float64))
    grads = torch.autograd.grad(loss, model.branch_probes, create_graph=True)
    D = []
    for g in grads:
        if not g.requires_grad:
            D.append([0.0] * n)
            continue
        (dg,) = torch.autograd.grad(g, t, retain_graph=True, allow_unused=True)
        D.append([0.0] * n if dg is None else dg.tolist())
    return D


class FormalGain(FormalT):
    """A known scalar gain ``g`` that also raises the path order: ``x -> g * t * x``.

    With one per branch the stream carries the series in ``t`` whose coefficient of ``t^d`` is
    the sum over the order-``d`` paths of the product of their gains (see :func:`gain_paths`).
    """

    def __init__(self, gain: float, max_order: int, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(max_order, dtype)
        self.gain = float(gain)

    def __mul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * super().__mul__(x)

    __rmul__ = __mul__


@dataclass
class GainPaths:
    """Per branch: gain-weighted path sums by order (``by_order[i-1][d]``) and the full product."""

    max_order: int
    by_order: list[list[float]]
    product: list[float]

    def up_to(self, k: int) -> list[float]:
        """The order-<=k path sum of every branch."""
        return [sum(c[: k + 1]) for c in self.by_order]


def gain_paths(layout, gains, max_order: int | None = None, **wiring) -> GainPaths:
    """Gain-weighted path sums of ``layout`` with branch ``i`` the linear map ``y = g_i x``.

    The full product is ``dL/dz_i`` of the plain linear surrogate (one backward pass, per-branch
    scalar gains); the split by order comes from the formal-series surrogate with
    :class:`FormalGain` branches, read like :func:`count_paths`. ``wiring``: the surrogate's
    skip and norm gains (``identity``, ``norms``, ``heads``, ``pre``, ``out``; see
    :class:`LayoutSurrogate`), which multiply without raising a path's order.
    """
    gains = [float(v) for v in gains]
    K = max(layout.n_positions - 1 if max_order is None else max_order, 1)
    model = LayoutSurrogate(layout, [FormalGain(v, K) for v in gains], probe_shape=(K + 1,),
                            share=False, **wiring)
    x0 = torch.zeros(K + 1, dtype=torch.float64)
    x0[0] = 1.0
    grads = torch.autograd.grad(model(x0)[K], model.branch_probes)
    by_order = [g.flip(0).tolist() for g in grads]
    plain = LayoutSurrogate(layout, torch.tensor(gains, dtype=torch.float64), share=False, **wiring)
    loss = plain(torch.ones((), dtype=torch.float64))
    product = [float(g) for g in torch.autograd.grad(loss, plain.branch_probes)]
    return GainPaths(K, by_order, product)


def _sum_slots(group_blocks: list[tuple[int, ...]],
               series: list[list[float]]) -> tuple[list[tuple[int, ...]], list[list[float]]]:
    """Sum per-(group, slot) series over the slots of each group (a group's slots are adjacent)."""
    groups: list[tuple[int, ...]] = []
    sums: list[list[float]] = []
    for blocks, sr in zip(group_blocks, series):
        if not groups or groups[-1] != blocks:
            groups.append(blocks)
            sums.append([0.0] * len(sr))
        sums[-1] = [u + v for u, v in zip(sums[-1], sr)]
    return groups, sums
