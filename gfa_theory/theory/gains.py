"""Gain-aware path sums: what reaches a branch when every path carries the gains it passes.

Fan-in counts the gradient paths of order <= 1 (:mod:`gfa_theory.theory.symbolic`). A real
gradient is ``prod_{j > i} (I + J_j)^T g``: a path through branches ``j_1 < ... < j_k`` carries
the product of their Jacobians, so what reaches branch ``i`` depends on the branch *gains*
``g_j`` (notation table: :mod:`gfa_theory.theory.symbolic`; here ``g_j`` is the scalar gain of
branch ``j`` and ``a_p`` the gain of the skip at stream position ``p``, 1 for an identity). With
scalar gains the gradient reaching position ``p`` obeys the suffix recursion of ``G_p(t)`` with
``w(p) t`` replaced by the sum of the gains writing ``p``:

    ``P_{p-1} = [p-1 read by a head] + (a_p + sum_{w writes p} g_w) P_p``,

so for a sequential stack with heads ``S`` the *full product* is
``P(i) = sum_{m in S, q(m) >= p(i)} prod_{p' in (p(i), q(m)]} (a_p' + g_p')``. Counting a path's
order as the number of branches it passes, the *order-<=k path sum* ``P_k(i)`` keeps the terms of
total degree ``<= k`` in the ``g``; ``P_1`` at unit gains is the fan-in ``F(i)``.

A norm follows one of two limits of the order-<=1 contributions (one vector per path):

* *aligned*: every contribution points the same way, ``||sum|| = sum of gains``
  ``= sum_m (1 + sum_{j in (i, m]} g_j) = P_1(i)`` (with unit skips);
* *orthogonal*: every contribution is orthogonal to every other, ``||sum|| =
  sqrt(sum of squared gains) = sqrt(P_1(i) at g_j^2)``; at unit gains ``sqrt(F(i))``.

``order=k`` generalises both limits to the paths of order <= k (a path's gain is the product of
its branch and skip gains; the orthogonal limit squares every gain).

Everything here exists twice on purpose: sympy expressions in the symbols ``g_j`` (and
``a_p``) for reading and LaTeX, and a float recursion (:func:`path_sums`) for evaluation at any
depth; the tests check them against each other and both against autograd on linear surrogates
(:func:`gfa_theory.theory.path_counts.gain_paths`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sympy as sp

from gfa_theory.errors import ConfigError, LayoutError
from gfa_theory.theory.layout import Layout


def gain_symbols(n: int, name: str = "g") -> tuple[sp.Symbol, ...]:
    """``(g_1, ..., g_n)``: positive gain symbols (``name='a'`` for the skip gains ``a_p``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LayoutError(f"number of gains must be a positive integer, got {n!r}")
    return tuple(sp.Symbol(f"{name}_{k}", positive=True) for k in range(1, n + 1))


def _check_order(order: int | None) -> None:
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 0):
        raise ConfigError(f"path order must be a non-negative integer or None, got {order!r}")


def _position_gains(layout: Layout, gains: Sequence) -> list[list]:
    """``[gains of the branches writing p]`` for every stream position ``p = 1..n_positions``."""
    if len(gains) != layout.N:
        raise ConfigError(f"{len(gains)} branch gains for a layout of N = {layout.N} branches")
    out: list[list] = [[] for _ in range(layout.n_positions)]
    for br in layout.branches():
        out[br.position - 1].append(gains[br.index - 1])
    return out


def _skips(layout: Layout, identity: Sequence | None, one) -> list:
    if identity is None:
        return [one] * layout.n_positions
    if len(identity) != layout.n_positions:
        raise ConfigError(f"{len(identity)} skip gains for {layout.n_positions} stream positions")
    return list(identity)


# ---- symbolic ---------------------------------------------------------------------------------
def _truncate(poly: sp.Poly, order: int | None) -> sp.Poly:
    if order is None:
        return poly
    terms = [(m, c) for m, c in poly.terms() if sum(m) <= order]
    return sp.Poly.from_dict(dict(terms) or {(0,) * len(poly.gens): 0}, *poly.gens)


def path_sum_expressions(layout: Layout, order: int | None = None,
                         gains: Sequence[sp.Symbol] | None = None,
                         identity: Sequence[sp.Expr] | None = None) -> list[sp.Expr]:
    """``[P_k(1), ..., P_k(N)]`` as sympy expressions (``order=None``: the full product).

    ``gains`` default to :func:`gain_symbols` ``(N)``; ``identity`` (skip gains per stream
    position) defaults to 1. The order counts branch gains only, so skip gains ride along.
    Expanded polynomials: meant for layouts of tens of branches.
    """
    _check_order(order)
    g = tuple(gains) if gains is not None else gain_symbols(layout.N)
    by_pos = _position_gains(layout, g)
    skips = _skips(layout, identity, sp.Integer(1))
    heads = set(layout.head_positions())
    gens = tuple(g)
    P = [sp.Poly(0, *gens)] * (layout.n_positions + 1)
    cur = sp.Poly(1, *gens)  # the last position is always read
    P[-1] = cur
    for p in range(layout.n_positions, 0, -1):
        step = sp.Poly(skips[p - 1] + sum(by_pos[p - 1]), *gens)
        cur = _truncate(step * cur, order) + (1 if p - 1 in heads else 0)
        P[p - 1] = cur
    return [P[br.position].as_expr() for br in layout.branches()]


def full_product_expressions(layout: Layout, gains: Sequence[sp.Symbol] | None = None
                             ) -> list[sp.Expr]:
    """``P(i) = sum_m prod_{p' in (p(i), q(m)]} (1 + sum_{w writes p'} g_w)``, unexpanded."""
    g = tuple(gains) if gains is not None else gain_symbols(layout.N)
    by_pos = _position_gains(layout, g)
    out = []
    for br in layout.branches():
        terms = [sp.Mul(*[1 + sum(by_pos[p - 1]) for p in range(br.position + 1, q + 1)])
                 for q in layout.head_positions() if q >= br.position]
        out.append(sp.Add(*terms))
    return out


def aligned_expressions(layout: Layout, gains: Sequence[sp.Symbol] | None = None) -> list[sp.Expr]:
    """Aligned limit of the order-<=1 contributions: ``sum_m (1 + sum_{j in (i, m]} g_j)``."""
    return path_sum_expressions(layout, order=1, gains=gains)


def orthogonal_expressions(layout: Layout, gains: Sequence[sp.Symbol] | None = None
                           ) -> list[sp.Expr]:
    """Orthogonal limit: ``sqrt(sum_m (1 + sum_{j in (i, m]} g_j^2))``."""
    g = tuple(gains) if gains is not None else gain_symbols(layout.N)
    squared = path_sum_expressions(layout, order=1, gains=g)
    return [sp.sqrt(e.subs({x: x ** 2 for x in g}, simultaneous=True)) for e in squared]


# ---- numeric ----------------------------------------------------------------------------------
def path_sums(layout: Layout, gains: Sequence[float], order: int | None = None,
              identity: Sequence[float] | None = None) -> np.ndarray:
    """``P_k(i)`` for every branch at numeric gains (float64), by the degree-split recursion.

    Each position keeps its series by path order ``d = 0..k``; a position written with gain
    ``s_p`` maps ``c_d -> a_p c_d + s_p c_{d-1}``. O(positions * k); ``order=None`` is the full
    product (one scalar per position).
    """
    _check_order(order)
    g = np.asarray(gains, dtype=np.float64)
    by_pos = _position_gains(layout, list(g))
    skips = _skips(layout, identity, 1.0)
    heads = set(layout.head_positions())
    width = 1 if order is None else order + 1
    cur = np.zeros(width)
    cur[0] = 1.0
    P = [cur] * (layout.n_positions + 1)
    for p in range(layout.n_positions, 0, -1):
        s = float(sum(by_pos[p - 1]))
        nxt = skips[p - 1] * cur
        if order is None:
            nxt = nxt + s * cur
        else:
            nxt[1:] += s * cur[:-1]
        if p - 1 in heads:
            nxt[0] += 1.0
        cur = nxt
        P[p - 1] = cur
    return np.array([P[br.position].sum() for br in layout.branches()])


def aligned_limit(layout: Layout, gains: Sequence[float], order: int = 1,
                  identity: Sequence[float] | None = None) -> np.ndarray:
    """Norm of the order-<=k contributions when they all point one way: the path sum."""
    return path_sums(layout, gains, order, identity)


def orthogonal_limit(layout: Layout, gains: Sequence[float], order: int = 1,
                     identity: Sequence[float] | None = None) -> np.ndarray:
    """Norm of the order-<=k contributions when all are mutually orthogonal:
    ``sqrt`` of the path sum with every gain squared."""
    g = np.square(np.asarray(gains, dtype=np.float64))
    a = None if identity is None else np.square(np.asarray(identity, dtype=np.float64))
    return np.sqrt(path_sums(layout, g, order, a))


def full_product(layout: Layout, gains: Sequence[float],
                 identity: Sequence[float] | None = None) -> np.ndarray:
    """The full product ``P(i)``: the scalar gradient of a linear surrogate with these gains."""
    return path_sums(layout, gains, None, identity)


def evaluate(exprs: Sequence[sp.Expr], gains: Sequence[float],
             symbols: Sequence[sp.Symbol] | None = None) -> np.ndarray:
    """Numeric values of gain expressions (``symbols`` default to ``g_1..g_len(gains)``)."""
    syms = tuple(symbols) if symbols is not None else gain_symbols(len(gains))
    f = sp.lambdify(syms, list(exprs), modules="numpy")
    return np.asarray(f(*[float(v) for v in gains]), dtype=np.float64)
