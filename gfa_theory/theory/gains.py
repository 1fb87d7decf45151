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

*Norm gains.* A norm on the residual path multiplies every path through it by its backward gain
(about ``gamma / RMS`` of its input for LayerNorm / RMSNorm: :func:`layernorm_gain` gives the
exact RMS singular value). The wiring sets where it sits:

* ``norms`` (``n_p``, per stream position): a norm after the sum that writes ``p`` (Post-LN,
  Mix-LN's post-LN applications, DeepNorm's post-norm): ``x_p = N_p(a_p x_{p-1} + sum f_w)``,
  so ``a_p + sum g_w`` becomes ``n_p (a_p + sum g_w)``;
* ``heads`` (``h_m``, per head in the supervision order): the final norm a head reads through
  (``ln_f``; a pre-activation ResNet's head BatchNorm), which weighs head ``m``'s paths;
* ``pre`` / ``out`` (per branch): the norm a branch reads its input through (Pre-LN, Peri-LN,
  a pre-activation ResNet's first BatchNorm) and one on its output (Peri-LN, a post-activation
  ResNet's last BatchNorm). Both sit on that branch's own paths only, so they enter as factors of
  its gain (:func:`effective_branch_gains`; a measured branch Jacobian already contains them);
  ``out`` and the ``n_p`` of the position a branch writes also lie between the branch's function
  and the stream, so what reaches the branch's parameters is ``out_i n_p(i) P_p(i)``.

Norm and skip gains ride along like skip gains: a path's order counts branch gains only.

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


def _skips(layout: Layout, identity: Sequence | None, one, what: str = "skip gains") -> list:
    if identity is None:
        return [one] * layout.n_positions
    if len(identity) != layout.n_positions:
        raise ConfigError(f"{len(identity)} {what} for {layout.n_positions} stream positions")
    return list(identity)


def _per(values: Sequence | None, n: int, one, what: str) -> list:
    """``values`` checked to length ``n`` (``None``: ``n`` ones)."""
    if values is None:
        return [one] * n
    if len(values) != n:
        raise ConfigError(f"{len(values)} {what} for {n}")
    return list(values)


class _Wiring:
    """Skip, position-norm, head and branch-output gains of one layout (defaults 1), checked."""

    def __init__(self, layout: Layout, one, identity=None, norms=None, heads=None, out=None) -> None:
        self.skips = _skips(layout, identity, one)
        self.norms = _skips(layout, norms, one, "norm gains")
        heads = _per(heads, len(layout.supervision), one, "head gains")
        self.head_at = dict(zip(layout.head_positions(), heads))  # head position -> its gain
        self.out = _per(out, layout.N, one, "branch output gains")

    def arrival(self, br) -> object:
        """Factor between the stream position a branch writes and its function's output."""
        return self.out[br.index - 1] * self.norms[br.position - 1]


# ---- symbolic ---------------------------------------------------------------------------------
def _truncate(poly: sp.Poly, order: int | None) -> sp.Poly:
    if order is None:
        return poly
    terms = [(m, c) for m, c in poly.terms() if sum(m) <= order]
    return sp.Poly.from_dict(dict(terms) or {(0,) * len(poly.gens): 0}, *poly.gens)


def path_sum_expressions(layout: Layout, order: int | None = None,
                         gains: Sequence[sp.Symbol] | None = None,
                         identity: Sequence[sp.Expr] | None = None,
                         norms: Sequence[sp.Expr] | None = None,
                         heads: Sequence[sp.Expr] | None = None,
                         out: Sequence[sp.Expr] | None = None) -> list[sp.Expr]:
    """``[P_k(1), ..., P_k(N)]`` as sympy expressions (``order=None``: the full product).

    ``gains`` default to :func:`gain_symbols` ``(N)``; ``identity`` (skip gains per stream
    position), ``norms`` (position norm gains ``n_p``), ``heads`` (head norm gains, in the
    supervision order) and ``out`` (branch output norm gains) default to 1 (module docstring).
    The order counts branch gains only, so the others ride along.
    Expanded polynomials: meant for layouts of tens of branches.
    """
    _check_order(order)
    g = tuple(gains) if gains is not None else gain_symbols(layout.N)
    by_pos = _position_gains(layout, g)
    w = _Wiring(layout, sp.Integer(1), identity, norms, heads, out)
    gens = tuple(g)
    P = [sp.Poly(0, *gens)] * (layout.n_positions + 1)
    cur = sp.Poly(w.head_at[layout.n_positions], *gens)  # the last position is always read
    P[-1] = cur
    for p in range(layout.n_positions, 0, -1):
        step = sp.Poly(w.norms[p - 1] * (w.skips[p - 1] + sum(by_pos[p - 1])), *gens)
        cur = _truncate(step * cur, order) + w.head_at.get(p - 1, 0)
        P[p - 1] = cur
    return [w.arrival(br) * P[br.position].as_expr() for br in layout.branches()]


def full_product_expressions(layout: Layout, gains: Sequence[sp.Symbol] | None = None,
                             identity: Sequence[sp.Expr] | None = None,
                             norms: Sequence[sp.Expr] | None = None,
                             heads: Sequence[sp.Expr] | None = None,
                             out: Sequence[sp.Expr] | None = None) -> list[sp.Expr]:
    """``P(i) = out_i n_p(i) sum_m h_m prod_{p' in (p(i), q(m)]} n_p' (a_p' + sum_{w writes p'} g_w)``,
    unexpanded (every gain but ``g`` defaults to 1: the plain ``sum_m prod (1 + sum g_w)``)."""
    g = tuple(gains) if gains is not None else gain_symbols(layout.N)
    by_pos = _position_gains(layout, g)
    w = _Wiring(layout, sp.Integer(1), identity, norms, heads, out)
    res = []
    for br in layout.branches():
        terms = [h * sp.Mul(*[w.norms[p - 1] * (w.skips[p - 1] + sum(by_pos[p - 1]))
                              for p in range(br.position + 1, q + 1)])
                 for q, h in w.head_at.items() if q >= br.position]
        res.append(w.arrival(br) * sp.Add(*terms))
    return res


def aligned_expressions(layout: Layout, gains: Sequence[sp.Symbol] | None = None,
                        **wiring: Sequence[sp.Expr] | None) -> list[sp.Expr]:
    """Aligned limit of the order-<=1 contributions: ``sum_m (1 + sum_{j in (i, m]} g_j)``
    (``wiring``: ``identity``, ``norms``, ``heads``, ``out`` as in :func:`path_sum_expressions`)."""
    return path_sum_expressions(layout, order=1, gains=gains, **wiring)


def orthogonal_expressions(layout: Layout, gains: Sequence[sp.Symbol] | None = None,
                           **wiring: Sequence[sp.Expr] | None) -> list[sp.Expr]:
    """Orthogonal limit: ``sqrt(sum_m (1 + sum_{j in (i, m]} g_j^2))``, every gain squared."""
    g = tuple(gains) if gains is not None else gain_symbols(layout.N)
    sq = {k: None if v is None else [x ** 2 for x in v] for k, v in wiring.items()}
    squared = path_sum_expressions(layout, order=1, gains=g, **sq)
    return [sp.sqrt(e.subs({x: x ** 2 for x in g}, simultaneous=True)) for e in squared]


# ---- numeric ----------------------------------------------------------------------------------
def path_sums(layout: Layout, gains: Sequence[float], order: int | None = None,
              identity: Sequence[float] | None = None, norms: Sequence[float] | None = None,
              heads: Sequence[float] | None = None, out: Sequence[float] | None = None) -> np.ndarray:
    """``P_k(i)`` for every branch at numeric gains (float64), by the degree-split recursion.

    Each position keeps its series by path order ``d = 0..k``; a position written with gain
    ``s_p`` maps ``c_d -> n_p (a_p c_d + s_p c_{d-1})``. O(positions * k); ``order=None`` is the
    full product (one scalar per position). ``identity`` (skip gains ``a_p``), ``norms`` (position
    norm gains ``n_p``), ``heads`` (head norm gains, supervision order) and ``out`` (branch output
    norm gains) default to 1: the module docstring says where each norm of a wiring goes.
    """
    _check_order(order)
    g = np.asarray(gains, dtype=np.float64)
    by_pos = _position_gains(layout, list(g))
    w = _Wiring(layout, 1.0, identity, norms, heads, out)
    width = 1 if order is None else order + 1
    cur = np.zeros(width)
    cur[0] = float(w.head_at[layout.n_positions])
    P = [cur] * (layout.n_positions + 1)
    for p in range(layout.n_positions, 0, -1):
        s = float(sum(by_pos[p - 1]))
        nxt = w.skips[p - 1] * cur
        if order is None:
            nxt = nxt + s * cur
        else:
            nxt[1:] += s * cur[:-1]
        nxt = w.norms[p - 1] * nxt
        if p - 1 in w.head_at:
            nxt[0] += float(w.head_at[p - 1])
        cur = nxt
        P[p - 1] = cur
    return np.array([float(w.arrival(br)) * P[br.position].sum() for br in layout.branches()])


def aligned_limit(layout: Layout, gains: Sequence[float], order: int = 1,
                  identity: Sequence[float] | None = None, **wiring: Sequence[float] | None) -> np.ndarray:
    """Norm of the order-<=k contributions when they all point one way: the path sum
    (``wiring``: ``norms``, ``heads``, ``out`` as in :func:`path_sums`)."""
    return path_sums(layout, gains, order, identity, **wiring)


def orthogonal_limit(layout: Layout, gains: Sequence[float], order: int = 1,
                     identity: Sequence[float] | None = None, **wiring: Sequence[float] | None) -> np.ndarray:
    """Norm of the order-<=k contributions when all are mutually orthogonal:
    ``sqrt`` of the path sum with every gain (branch, skip, norm) squared."""
    def sq(v):
        return None if v is None else np.square(np.asarray(v, dtype=np.float64))

    return np.sqrt(path_sums(layout, sq(gains), order, sq(identity), **{k: sq(v) for k, v in wiring.items()}))


def full_product(layout: Layout, gains: Sequence[float],
                 identity: Sequence[float] | None = None, **wiring: Sequence[float] | None) -> np.ndarray:
    """The full product ``P(i)``: the scalar gradient of a linear surrogate with these gains."""
    return path_sums(layout, gains, None, identity, **wiring)


ACCOUNTS = ("counts", "aligned", "orthogonal", "product")


def accounts(layout: Layout, gains: Sequence[float], identity: Sequence[float] | None = None,
             **wiring: Sequence[float] | None) -> dict[str, np.ndarray]:
    """Every account's branch profile: counts ``F(i)`` (no gains), the aligned and orthogonal
    limits and the full product at these gains (``wiring``: ``norms``, ``heads``, ``out``)."""
    ones = [1.0] * layout.N
    return {"counts": path_sums(layout, ones, 1),
            "aligned": aligned_limit(layout, gains, identity=identity, **wiring),
            "orthogonal": orthogonal_limit(layout, gains, identity=identity, **wiring),
            "product": full_product(layout, gains, identity, **wiring)}


def effective_branch_gains(inner: Sequence[float], pre: Sequence[float] | None = None,
                           out: Sequence[float] | None = None,
                           scale: Sequence[float] | None = None) -> np.ndarray:
    """Gain of each branch seen from the stream: ``out_i * g_i * s_i * pre_i`` (its function's
    gain ``inner``, the norm it reads through, LayerNorm Scaling's factor ``s_i``, its output norm)."""
    g = np.asarray(inner, dtype=np.float64)
    for v in (pre, out, scale):
        if v is not None:
            if len(v) != len(g):
                raise ConfigError(f"{len(v)} norm gains for {len(g)} branches")
            g = g * np.asarray(v, dtype=np.float64)
    return g


# ---- the norms' own Jacobians -----------------------------------------------------------------
def layernorm_gain(x: np.ndarray, weight: np.ndarray | None = None, eps: float = 1e-5,
                   centered: bool = True) -> float:
    """Exact RMS singular value of a LayerNorm (``centered``) or RMSNorm Jacobian over tokens.

    ``x``: (..., C) inputs, one norm per row. Per row ``J = diag(gamma) (P - c u u^T) / s`` with
    ``P`` the centring projection (identity for RMSNorm), ``s = sqrt(var + eps)`` (mean square
    for RMSNorm), ``u`` the unit centred input and ``c = var / s^2``, so ``||J||_F^2 =
    sum_k gamma_k^2 (P_kk - (2c - c^2) u_k^2) / s^2``; the gain is ``sqrt(sum ||J||_F^2 / (rows C))``,
    about ``rms(gamma) / RMS(x) * sqrt((C - 2) / C)`` for a LayerNorm whose input has zero mean.
    """
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[-1]
    rows = x.reshape(-1, C)
    xc = rows - rows.mean(-1, keepdims=True) if centered else rows
    var = np.square(xc).mean(-1, keepdims=True)
    s2 = var + eps
    c = var / s2
    norm = np.sqrt(np.square(xc).sum(-1, keepdims=True))
    u2 = np.divide(np.square(xc), np.square(norm), out=np.zeros_like(xc), where=norm > 0)
    gam2 = np.ones(C) if weight is None else np.square(np.asarray(weight, dtype=np.float64))
    diag = (1.0 - 1.0 / C) if centered else 1.0
    fro2 = ((gam2 * (diag - (2 * c - c ** 2) * u2)) / s2).sum(-1)
    return float(np.sqrt(fro2.sum() / (rows.shape[0] * C)))


def log_profile_error(pred: Sequence[float], target: Sequence[float]) -> float:
    """RMS over units of ``log(pred / mean pred) - log(target / mean target)``: a scale-free
    profile error (0: the right shape), the mechanism study's score of an account against ``A``."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1 or not len(p):
        raise ConfigError(f"a profile error needs two equal-length profiles, got {p.shape} and {t.shape}")
    if not (np.all(p > 0) and np.all(t > 0) and np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ConfigError("a profile error needs finite positive profiles")
    return float(np.sqrt(np.mean((np.log(p / p.mean()) - np.log(t / t.mean())) ** 2)))


def evaluate(exprs: Sequence[sp.Expr], gains: Sequence[float],
             symbols: Sequence[sp.Symbol] | None = None) -> np.ndarray:
    """Numeric values of gain expressions (``symbols`` default to ``g_1..g_len(gains)``)."""
    syms = tuple(symbols) if symbols is not None else gain_symbols(len(gains))
    f = sp.lambdify(syms, list(exprs), modules="numpy")
    return np.asarray(f(*[float(v) for v in gains]), dtype=np.float64)
