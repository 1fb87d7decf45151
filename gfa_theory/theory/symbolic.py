"""Gradient fan-in, derived symbolically: closed forms (sympy) and exact counts of any layout.

Notation used throughout the package (every module refers to this table):

==========  ===============================================================================
Symbol      Meaning
==========  ===============================================================================
``N``       number of functional residual branches (sublayers), ``i = 1..N``
``B``       number of blocks, ``b = 1..B`` (Transformer block = attention ``2b-1`` + MLP ``2b``)
``i``       branch index, 1-based, forward order
``b``       block index, 1-based
``s``       slot of a branch inside its block, 0-based (attention 0, MLP 1)
``S``       supervision set: the blocks whose output a loss head reads (always contains ``B``)
``m``       a head: a block in ``S``, reading the stream position its block writes last
``p``       a stream position: ``x_p`` is written by the branches with ``position == p``
            (``Layout.n_positions`` counts them)
``w(p)``    number of branches writing position ``p`` (1, or ``k`` for a parallel block)
``F``       fan-in: number of gradient paths of order <= 1 (at most one downstream branch)
``G_i(t)``  path generating function of branch ``i``: coefficient of ``t^k`` = number of
            paths from the heads to branch ``i``'s output through exactly ``k`` branches
``k``       path order (number of functional branches a gradient path passes through)
``A``       accumulated gradient: sum over optimizer steps of a unit's gradient norm
``P``       a parameter group (blocks sharing parameters); ``F(P)`` = sum over applications
``r``       repetitions of a shared block (parameter-shared repetition)
``g_j``     gain of branch ``j`` (scalar surrogate of its Jacobian ``J_j``;
            :mod:`gfa_theory.theory.gains`); ``G_i(t)`` is every ``g_j = t``
``a_p``     gain of the skip into position ``p`` (1 for an identity; ``alpha`` under DeepNorm)
``n_p``     gain of a norm after the sum writing position ``p`` (Post-LN; 1 where none);
            ``h_m`` of the norm head ``m`` reads through, ``o_i`` of branch ``i``'s output norm
``P_k(i)``  order-<=k path sum: paths of order <= k to branch ``i``, each weighted by the
            product of its gains; ``P_1`` at unit gains is ``F(i)``, ``P = P_inf`` the full
            product ``sum_m prod (a_p + sum_w g_w)``
==========  ===============================================================================

Definitions. Branch ``i`` writes position ``p(i)``; a head at block ``m`` reads position
``q(m)``. Every position ``p' in (p(i), q]`` is reached from ``p' - 1`` by the identity or by one
of its ``w(p')`` writers, so

    ``G_i(t) = sum_{m in S, q(m) >= p(i)} prod_{p' in (p(i), q(m)]} (1 + w(p') t)``,
    ``F(i) = G_i(0) + G_i'(0) = sum_{m in S, q(m) >= p(i)} (1 + #branches writing (p(i), q(m)])``.

Two branches of one parallel block write the same position: neither counts the other.

What this module provides:

* closed forms in ``N`` and ``i`` for a sequential stack (one branch per position), derived by
  :func:`sympy.summation` of the path-count definition (:func:`fan_in_closed_form`,
  :func:`generating_function_closed_form`), the fan-in of a shared block repeated ``r`` times
  (:func:`group_fan_in_closed_form`) and of uniform stacks of ``k``-branch blocks
  (:func:`block_stack_closed_form`);
* the exact integer ``G_i(t)`` and ``F(i)`` of any :class:`~gfa_theory.theory.layout.Layout`, with block
  and parameter-group sums (:func:`analyze`), computed by the suffix recursion
  ``G_{p-1} = [p-1 is read by a head] + (1 + w(p) t) G_p`` on Python integers, so a
  1000-branch layout takes a fraction of a second;
* LaTeX rendering (:func:`latex`, :func:`latex_table`).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Literal, Sequence

import sympy as sp

from gfa_theory.errors import ConfigError, LayoutError
from gfa_theory.theory.layout import Layout

Supervision = Literal["final", "all"]

# Symbols of the notation table. Indices are positive integers, which lets sympy solve the sums.
N, B, i, b, m, r, j = sp.symbols("N B i b m r j", integer=True, positive=True)
s = sp.Symbol("s", integer=True, nonnegative=True)
t = sp.Symbol("t")
# Internal summation variables: d = distance from the branch to the head, n = its maximum.
_d, _n = sp.symbols("d n", integer=True, nonnegative=True)


def _head_indicator(supervision: str) -> sp.Expr:
    """``[head at distance d]`` for a head set described by name (``n`` = distance to the last)."""
    if supervision == "final":
        return sp.KroneckerDelta(_d, _n)  # S = {N}: only the last position is read
    if supervision == "all":
        return sp.Integer(1)  # S = {1..N}: every position is read
    raise LayoutError(f"supervision must be 'final' or 'all', got {supervision!r}")


def _generic_branch(expr: sp.Expr) -> sp.Expr:
    """The ``True`` branch of a Piecewise (sympy splits geometric sums at ratio 1, i.e. t = 0).

    ``G_i(t)`` is a formal power series; its value at ``t = 0`` is the limit of the generic branch.
    """
    if isinstance(expr, sp.Piecewise):
        for value, cond in expr.args:
            if cond == sp.true:
                return value
    return expr


# ---- closed forms: sequential stack ------------------------------------------------------------
@lru_cache(maxsize=None)
def fan_in_closed_form(supervision: Supervision = "final") -> sp.Expr:
    """``F_S(i)`` of a sequential ``N``-branch stack, in the symbols ``N`` and ``i``.

    Derived by summing the definition ``F_S(i) = sum_{m in S, m >= i} (1 + (m - i))`` over the
    distance ``d = m - i`` (the number of branches in ``(i, m]``): ``N - i + 1`` for ``'final'``,
    ``(N - i + 1)(N - i + 2)/2`` for ``'all'``.
    """
    summand = _head_indicator(supervision) * (1 + _d)
    F_n = sp.factor(sp.summation(summand, (_d, 0, _n)), _n)  # factor in n = N - i: readable signs
    return F_n.subs(_n, N - i)


@lru_cache(maxsize=None)
def generating_function_closed_form(supervision: Supervision = "final") -> sp.Expr:
    """``G_i(t)`` of a sequential stack: ``(1+t)^(N-i)`` (final) or ``((1+t)^(N-i+1) - 1)/t`` (all).

    Derived as ``sum_{m in S, m >= i} (1 + t)^(m - i)`` (each of the ``m - i`` downstream branches
    is either skipped through the identity or passed through).
    """
    summand = _head_indicator(supervision) * (1 + t) ** _d
    G_n = _generic_branch(sp.summation(summand, (_d, 0, _n)))
    return sp.simplify(G_n.subs(_n, N - i))


@lru_cache(maxsize=None)
def group_fan_in_closed_form(supervision: Supervision = "final", late: bool = True) -> sp.Expr:
    """Fan-in ``F(P)`` of one single-branch block applied ``r`` times with shared parameters.

    The applications are the consecutive branches ``j, j+1, ..., j+r-1`` of an ``N``-branch
    sequential stack (``N`` counts every application); ``F(P) = sum_{i=j}^{j+r-1} F_S(i)``.
    With ``late=True`` the repeated block closes the stack (``j = N - r + 1``) and the result
    depends on ``r`` only: ``r(r+1)/2`` (final) or ``r(r+1)(r+2)/6`` (all), against ``F = 1``
    for the unrepeated last block under either supervision.
    """
    start = N - r + 1 if late else j
    return sp.factor(sp.summation(fan_in_closed_form(supervision), (i, start, start + r - 1)))


@lru_cache(maxsize=None)
def block_stack_closed_form(branches_per_block: int = 2, parallel: bool = False,
                            supervision: Supervision = "final") -> tuple[sp.Expr, sp.Expr]:
    """Branch and block fan-in of ``B`` identical ``k``-branch blocks (``k = branches_per_block``).

    Returns ``(F(b, s), F(b))``: the fan-in of the branch in slot ``s`` (0-based) of block ``b``
    and the block fan-in ``sum_s F(b, s)``, with heads on the last block (``'final'``) or on every
    block output (``'all'``, the usual Transformer deep supervision). For a head ``d = m - b``
    blocks further on, the branches in between number ``k d + (k - 1 - s)`` in a sequential block
    and ``k d`` in a parallel one (siblings share the written position).
    """
    k = branches_per_block
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LayoutError(f"branches per block must be a positive integer, got {k!r}")
    between = k * _d + (0 if parallel else k - 1 - s)
    summand = _head_indicator(supervision) * (1 + between)
    F_ns = sp.summation(summand, (_d, 0, _n))  # in n = B - b, where it factors readably
    F_n = k * F_ns if parallel else sp.summation(F_ns, (s, 0, k - 1))
    return sp.factor(F_ns, _n).subs(_n, B - b), sp.factor(F_n, _n).subs(_n, B - b)


def closed_form_profile(N_value: int, supervision: Supervision = "final") -> list[int]:
    """``[F(1), ..., F(N)]`` evaluated exactly from :func:`fan_in_closed_form`."""
    if isinstance(N_value, bool) or not isinstance(N_value, int) or N_value < 1:
        raise LayoutError(f"number of branches must be a positive integer, got {N_value!r}")
    F = integer_evaluator(fan_in_closed_form(supervision), (N, i))
    return [F(N_value, i_value) for i_value in range(1, N_value + 1)]


def integer_evaluator(expr: sp.Expr, symbols: Sequence[sp.Symbol]) -> Callable[..., int]:
    """An exact fast evaluator of a polynomial ``expr`` with rational coefficients.

    ``sympy.lambdify`` would divide in floating point (``/2``); this keeps integers exact, which
    matters once counts exceed 2**53.
    """
    poly = sp.Poly(sp.expand(expr), *symbols)
    terms = [(monom, Fraction(int(c.p), int(c.q))) for monom, c in poly.terms()]

    def evaluate(*values: int) -> int:
        total = Fraction(0)
        for monom, c in terms:
            term = c
            for v, e in zip(values, monom):
                term *= v ** e
            total += term
        if total.denominator != 1:
            raise ValueError(f"{expr} is not an integer at {values}")
        return int(total)

    return evaluate


# ---- general layouts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BranchFanIn:
    """Fan-in of branch ``index`` (block ``block``, ``slot``, writing stream ``position``)."""

    index: int
    block: int
    slot: int
    position: int
    fan_in: int
    paths_by_order: tuple[int, ...]  # coefficients of G_i(t), orders 0.. (truncated at max_order)


@dataclass(frozen=True)
class BlockFanIn:
    block: int
    branches: tuple[int, ...]
    fan_in: int
    paths_by_order: tuple[int, ...]


@dataclass(frozen=True)
class GroupFanIn:
    """A parameter group: its blocks and, per slot, the branches where it is applied."""

    blocks: tuple[int, ...]
    applications: tuple[tuple[int, ...], ...]  # applications[s] = branch indices of slot s
    fan_in_by_slot: tuple[int, ...]
    fan_in: int
    paths_by_order: tuple[int, ...]

    @property
    def shared(self) -> bool:
        return len(self.blocks) > 1


@dataclass(frozen=True)
class FanInResult:
    layout: Layout
    branches: tuple[BranchFanIn, ...]
    blocks: tuple[BlockFanIn, ...]
    groups: tuple[GroupFanIn, ...]
    max_order: int | None = None

    @property
    def N(self) -> int:
        return self.layout.N

    @property
    def fan_in(self) -> list[int]:
        return [br.fan_in for br in self.branches]

    @property
    def fan_in_normalized(self) -> list[float]:
        """``F(i) / max_i F(i)``: 1 for the most-fed branch (how profiles are compared with ``A``)."""
        return normalized(self.fan_in)

    def to_dict(self) -> dict:
        norm = self.fan_in_normalized
        return {
            "N": self.N,
            "B": self.layout.B,
            "layout": self.layout.to_dict(),
            "max_order": self.max_order,
            "branches": [
                {"index": br.index, "block": br.block, "slot": br.slot, "position": br.position,
                 "fan_in": br.fan_in, "fan_in_normalized": nf,
                 "paths_by_order": list(br.paths_by_order)}
                for br, nf in zip(self.branches, norm)
            ],
            "blocks": [
                {"block": bl.block, "branches": list(bl.branches), "fan_in": bl.fan_in,
                 "paths_by_order": list(bl.paths_by_order)}
                for bl in self.blocks
            ],
            "groups": [
                {"blocks": list(g.blocks), "shared": g.shared,
                 "applications": [list(a) for a in g.applications],
                 "fan_in": g.fan_in, "fan_in_by_slot": list(g.fan_in_by_slot),
                 "paths_by_order": list(g.paths_by_order)}
                for g in self.groups
            ],
        }


def normalized(values: Sequence[float]) -> list[float]:
    top = max(values)
    return [v / top for v in values]


def _add(a: Sequence[int], c: Sequence[int]) -> list[int]:
    """Sum of two coefficient lists of possibly different length."""
    if len(a) < len(c):
        a, c = c, a
    out = list(a)
    for k, v in enumerate(c):
        out[k] += v
    return out


def position_series(layout: Layout, max_order: int | None = None) -> list[list[int]]:
    """``G_p(t)`` for every stream position ``p = 0..n_positions`` as integer coefficient lists.

    ``G_p`` is the gradient reaching ``x_p`` with every branch a gain ``t``; the recursion runs
    from the output back: ``G_{p-1} = [p-1 read by a head] + (1 + w(p) t) G_p``, truncated at
    ``t^max_order``. Cost O(positions * orders) integer operations.
    """
    w = layout.writers()
    last = len(w)  # the last stream position
    heads = set(layout.head_positions())
    keep = None if max_order is None else max_order + 1
    G: list[list[int]] = [[]] * (last + 1)
    g = [1]  # x_last: the last block is always read by a head
    G[last] = g
    for p in range(last, 0, -1):
        wp = w[p - 1]
        g = [lo + wp * hi for lo, hi in zip(g + [0], [0] + g)]  # (1 + w(p) t) * G_p
        if keep is not None and len(g) > keep:
            del g[keep:]
        if p - 1 in heads:
            g[0] += 1
        G[p - 1] = g
    return G


def analyze(layout: Layout, max_order: int | None = None) -> FanInResult:
    """Exact ``G_i(t)``, ``F(i)`` and their block and parameter-group sums for ``layout``.

    ``max_order`` truncates ``paths_by_order`` (every order when ``None``; the full table of a
    1000-branch stack holds about half a million integers). The fan-in is exact either way.
    """
    if max_order is not None and (isinstance(max_order, bool) or not isinstance(max_order, int)
                                  or max_order < 0):
        raise ConfigError(f"max_order must be a non-negative integer, got {max_order!r}")
    G = position_series(layout, None if max_order is None else max(max_order, 1))
    keep = None if max_order is None else max_order + 1

    def fan_in_of(g: list[int]) -> int:
        return g[0] + (g[1] if len(g) > 1 else 0)

    branches = tuple(
        BranchFanIn(br.index, br.block, br.slot, br.position, fan_in_of(G[br.position]),
                    tuple(G[br.position][:keep]))
        for br in layout.branches()
    )
    by_block: dict[int, list[BranchFanIn]] = {}
    for br in branches:
        by_block.setdefault(br.block, []).append(br)

    blocks = []
    for blk, members in by_block.items():
        series: list[int] = []
        for br in members:
            series = _add(series, G[br.position])
        blocks.append(BlockFanIn(blk, tuple(br.index for br in members),
                                 sum(br.fan_in for br in members), tuple(series[:keep])))

    groups = []
    for group in layout.groups():
        n_slots = len(by_block[group[0]])  # blocks of a group have the same structure
        applications = tuple(tuple(by_block[blk][slot].index for blk in group)
                             for slot in range(n_slots))
        by_slot = tuple(sum(branches[ix - 1].fan_in for ix in apps) for apps in applications)
        series = []
        for apps in applications:
            for ix in apps:
                series = _add(series, G[branches[ix - 1].position])
        groups.append(GroupFanIn(tuple(group), applications, by_slot, sum(by_slot),
                                 tuple(series[:keep])))
    return FanInResult(layout, branches, tuple(blocks), tuple(groups), max_order)


def fan_in(layout: Layout) -> list[int]:
    """``[F(1), ..., F(N)]`` of ``layout`` (exact integers)."""
    return analyze(layout, max_order=1).fan_in


def branch_fan_in(layout: Layout) -> dict[int, int]:
    """``{i: F(i)}`` for every branch ``i = 1..N`` (exact integers)."""
    return {br.index: br.fan_in for br in analyze(layout, max_order=1).branches}


def block_fan_in(layout: Layout) -> dict[int, int]:
    """``{b: F(b)}`` for every block ``b = 1..B``: the sum over the block's branches."""
    return {bl.block: bl.fan_in for bl in analyze(layout, max_order=1).blocks}


def group_fan_in(layout: Layout) -> dict[tuple[int, ...], int]:
    """``{blocks of P: F(P)}`` for every parameter group (unshared blocks are groups of one)."""
    return {g.blocks: g.fan_in for g in analyze(layout, max_order=1).groups}


def generating_function(layout: Layout, index: int) -> sp.Poly:
    """``G_i(t)`` of branch ``index`` as an exact :class:`sympy.Poly` in ``t``."""
    if not 1 <= index <= layout.N:
        raise LayoutError(f"branch index {index} is out of range 1..{layout.N}")
    position = layout.branches()[index - 1].position
    coeffs = position_series(layout)[position]
    return sp.Poly(list(reversed(coeffs)), t, domain=sp.ZZ)


# ---- LaTeX -------------------------------------------------------------------------------------
def latex(expr: sp.Expr, lhs: str | None = None) -> str:
    """LaTeX of a closed form, optionally as an equation ``lhs = expr`` (``lhs`` is LaTeX)."""
    body = sp.latex(expr)
    return body if lhs is None else f"{lhs} = {body}"


def closed_forms(supervision: Supervision = "final") -> dict[str, sp.Expr]:
    """The sequential-stack closed forms, keyed as the CLI prints them."""
    return {
        "fan_in": fan_in_closed_form(supervision),
        "generating_function": generating_function_closed_form(supervision),
        "group_fan_in_late_repeat": group_fan_in_closed_form(supervision),
    }


CLOSED_FORM_LHS = {
    "fan_in": "F(i)",
    "generating_function": "G_i(t)",
    "group_fan_in_late_repeat": "F(P_r)",
}


def latex_table(result: FanInResult, orders: int = 4) -> str:
    """A ``tabular`` of branch fan-in: ``i``, ``b``, ``F(i)``, normalized ``F``, paths of order k."""
    shown = orders if result.max_order is None else min(orders, result.max_order + 1)
    cols = "r" * (4 + shown)
    header = ["$i$", "$b$", "$F(i)$", r"$F/\max F$"] + [f"$k={k}$" for k in range(shown)]
    lines = [rf"\begin{{tabular}}{{{cols}}}", r"\hline", " & ".join(header) + r" \\", r"\hline"]
    for br, nf in zip(result.branches, result.fan_in_normalized):
        paths = [str(br.paths_by_order[k]) if k < len(br.paths_by_order) else "0"
                 for k in range(shown)]
        lines.append(" & ".join([str(br.index), str(br.block), str(br.fan_in), f"{nf:.3f}"] + paths)
                     + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines)
