"""Autograd path counts on scalar-gain surrogates agree with the symbolic fan-in."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfa_theory.errors import GFAError
from gfa_theory.theory import gains, symbolic
from gfa_theory.theory import path_counts as paths
from gfa_theory.theory.layout import Block, Layout


def assert_counts(exact: list[int], counted: list[float]) -> None:
    """Exact below 2**53, relative 1e-9 above (float64); missing orders count as zero."""
    width = max(len(exact), len(counted))
    exact = list(exact) + [0] * (width - len(exact))
    counted = list(counted) + [0.0] * (width - len(counted))
    bad = [(k, e, c) for k, (e, c) in enumerate(zip(exact, counted))
           if not paths.counts_agree(e, c)]
    assert not bad, f"(order, exact, autograd) mismatches: {bad[:5]}"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_path_order_matches_autograd(layouts, data):
    layout = data.draw(layouts(max_blocks=24, max_branches=3), label="layout")
    result = symbolic.analyze(layout)
    counted = paths.count_paths(layout)
    assert counted.max_order == max(layout.n_positions - 1, 1)
    for br, series in zip(result.branches, counted.paths_by_order):
        assert_counts(list(br.paths_by_order), series)
    assert_counts(result.fan_in, counted.fan_in)
    assert counted.groups == [g.blocks for g in result.groups]
    for g, series in zip(result.groups, counted.group_paths_by_order):
        assert_counts(list(g.paths_by_order), series)
    assert_counts([g.fan_in for g in result.groups], counted.group_fan_in)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_first_order_double_backward_matches_symbolic(layouts, data):
    layout = data.draw(layouts(max_blocks=12, max_branches=3), label="layout")
    result = symbolic.analyze(layout, max_order=1)
    counted = paths.first_order(layout)
    assert counted.order0 == [float(br.paths_by_order[0]) for br in result.branches]
    assert counted.order1 == [float(br.paths_by_order[1]) if len(br.paths_by_order) > 1 else 0.0
                              for br in result.branches]
    assert counted.fan_in == [float(f) for f in result.fan_in]
    # one surrogate module per shared group: its probe gathers the sum over applications
    assert counted.groups == [g.blocks for g in result.groups]
    assert counted.group_fan_in == [float(g.fan_in) for g in result.groups]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_truncated_series_matches_symbolic_truncation(layouts, data):
    layout = data.draw(layouts(max_blocks=10, max_branches=3), label="layout")
    K = data.draw(st.integers(1, 4), label="max_order")
    result = symbolic.analyze(layout, max_order=K)
    counted = paths.count_paths(layout, max_order=K)
    assert all(len(c) == K + 1 for c in counted.paths_by_order)
    for br, series in zip(result.branches, counted.paths_by_order):
        assert_counts(list(br.paths_by_order), series)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_order1_paths_through_each_branch(layouts, data):
    """D[i][k] = G_k(0) (heads reading k's output or later) when k is downstream of i, else 0."""
    layout = data.draw(layouts(max_blocks=8, max_branches=3), label="layout")
    result = symbolic.analyze(layout, max_order=1)
    D = paths.order1_through(layout)
    for bi, row in zip(result.branches, D):
        expected = [float(bk.paths_by_order[0]) if bk.position > bi.position else 0.0
                    for bk in result.branches]
        assert row == expected
        order1 = bi.paths_by_order[1] if len(bi.paths_by_order) > 1 else 0
        assert sum(row) == order1


def test_parallel_siblings_have_no_gradient_path_through_each_other():
    layout = Layout([Block(1), Block(2, parallel=True), Block(1)])
    D = paths.order1_through(layout)
    assert D[1][2] == 0.0 and D[2][1] == 0.0  # siblings 2 and 3
    assert D[1][3] == 1.0 and D[2][3] == 1.0  # both see the last branch
    assert D[0][1:] == [1.0, 1.0, 1.0]
    assert paths.first_order(layout).fan_in == [4.0, 2.0, 2.0, 1.0]


def test_shared_late_block_gathers_group_sum():
    n, reps = 6, 3
    layout = Layout([Block(1)] * n, shared=[tuple(range(n - reps + 1, n + 1))])
    counted = paths.first_order(layout)
    shared = counted.groups.index((4, 5, 6))
    assert counted.group_fan_in[shared] == reps * (reps + 1) / 2 == sum(counted.fan_in[3:])


def test_first_order_counts_on_a_hand_wired_stack():
    # the original helper with ScalarGain modules, including a branch whose gradient is constant
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    gains = [paths.ScalarGain(t) for _ in range(3)]

    def loss():
        x = torch.ones((), dtype=torch.float64)
        for f in gains:
            x = x + f(x)
        return x

    order0, order1 = paths.first_order_counts(loss, t, [f.probe for f in gains])
    assert order0 == [1.0, 1.0, 1.0] and order1 == [2.0, 1.0, 0.0]


def test_formal_t_shifts_and_truncates():
    T = paths.FormalT(max_order=3)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert (T * x).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert (x * T).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_counts_beyond_2_53_agree_to_tolerance():
    layout = Layout.sequential(80, "all")  # C(79, 39) ~ 2^75
    result = symbolic.analyze(layout)
    big = max(result.branches[0].paths_by_order)
    assert big > paths.EXACT_LIMIT
    counted = paths.count_paths(layout)
    assert_counts(list(result.branches[0].paths_by_order), counted.paths_by_order[0])


def test_counts_agree_is_exact_below_the_limit():
    assert paths.counts_agree(3, 3.0)
    assert not paths.counts_agree(3, 3.0000001)
    assert not paths.counts_agree(2**52 + 1, float(2**52))
    assert paths.counts_agree(2**60 + 1, float(2**60))
    assert not paths.counts_agree(2**60, 2.0**60 * (1 + 1e-6))


def test_per_branch_gains_need_unshared_surrogate():
    with pytest.raises(ValueError, match="share=False"):
        paths.LayoutSurrogate(Layout.sequential(3), torch.zeros(3, dtype=torch.float64))


# ---- gain-aware path sums (gfa_theory.theory.gains) against autograd ---------------------------
gain_values = st.floats(0.05, 3.0, allow_nan=False, allow_infinity=False)


def _close(a, c, rel=1e-9):
    assert len(a) == len(c)
    for x, y in zip(a, c):
        assert abs(x - y) <= rel * max(1.0, abs(x)), (list(a), list(c))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gain_product_and_order_k_truncations_match_autograd(layouts, data):
    layout = data.draw(layouts(max_blocks=8, max_branches=3), label="layout")
    g = data.draw(st.lists(gain_values, min_size=layout.N, max_size=layout.N), label="gains")
    counted = paths.gain_paths(layout, g)
    _close(gains.full_product(layout, g), counted.product)
    _close(counted.up_to(counted.max_order), counted.product)  # every order kept = the product
    for k in range(0, min(counted.max_order, 5) + 1):
        _close(gains.path_sums(layout, g, k), counted.up_to(k))


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_gain_expressions_evaluate_to_the_numeric_recursion(layouts, data):
    layout = data.draw(layouts(max_blocks=5, max_branches=2), label="layout")
    g = data.draw(st.lists(gain_values, min_size=layout.N, max_size=layout.N), label="gains")
    k = data.draw(st.integers(0, 3), label="order")
    _close(gains.evaluate(gains.path_sum_expressions(layout, k), g), gains.path_sums(layout, g, k))
    _close(gains.evaluate(gains.full_product_expressions(layout), g), gains.full_product(layout, g))
    _close(gains.evaluate(gains.path_sum_expressions(layout), g), gains.full_product(layout, g))
    _close(gains.evaluate(gains.aligned_expressions(layout), g), gains.aligned_limit(layout, g))
    _close(gains.evaluate(gains.orthogonal_expressions(layout), g), gains.orthogonal_limit(layout, g))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_unit_gains_give_back_the_path_counts(layouts, data):
    layout = data.draw(layouts(max_blocks=10, max_branches=3), label="layout")
    ones = [1.0] * layout.N
    F = symbolic.fan_in(layout)
    assert gains.aligned_limit(layout, ones).tolist() == [float(f) for f in F]
    _close(gains.orthogonal_limit(layout, ones), [f ** 0.5 for f in F])
    counts = symbolic.analyze(layout)
    _close(gains.full_product(layout, ones), [float(sum(br.paths_by_order)) for br in counts.branches])


def _order1_paths(layout, g, index):
    """Gains of the order-<=1 paths reaching branch ``index``, one entry per (head, path)."""
    branches = layout.branches()
    p = branches[index - 1].position
    out = []
    for q in layout.head_positions():
        if q >= p:
            out.append(1.0)  # the identity path from this head
            out.extend(g[br.index - 1] for br in branches if p < br.position <= q)
    return out


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_aligned_and_orthogonal_limits_are_norms_of_explicit_contributions(layouts, data):
    layout = data.draw(layouts(max_blocks=8, max_branches=3), label="layout")
    g = data.draw(st.lists(gain_values, min_size=layout.N, max_size=layout.N), label="gains")
    rng = np.random.default_rng(0)
    aligned, orthogonal = [], []
    for i in range(1, layout.N + 1):
        path_gains = np.array(_order1_paths(layout, g, i))
        u = rng.normal(size=7)
        u /= np.linalg.norm(u)
        aligned.append(np.linalg.norm((path_gains[:, None] * u).sum(0)))
        basis, _ = np.linalg.qr(rng.normal(size=(len(path_gains) + 2, len(path_gains))))
        orthogonal.append(np.linalg.norm(basis @ path_gains))  # columns: orthonormal directions
    _close(gains.aligned_limit(layout, g), aligned, rel=1e-9)
    _close(gains.orthogonal_limit(layout, g), orthogonal, rel=1e-9)


def orthogonal_jacobians(layout, g):
    """``(D, J, probes)`` of the orthogonal linear net below: ``J[j - 1]`` maps head ``m``'s read-out
    direction onto branch ``j``'s private direction with gain ``g_j``; one zero probe per branch."""
    H, N = len(layout.supervision), layout.N
    D = (N + 1) * H
    J = torch.zeros(N, D, D, dtype=torch.float64)
    for j in range(1, N + 1):
        for m in range(H):
            J[j - 1, m * (N + 1), m * (N + 1) + j] = g[j - 1]
    probes = [torch.zeros(D, dtype=torch.float64, requires_grad=True) for _ in range(N)]
    return D, J, probes


def _orthogonal_network_gradients(layout, g):
    """Autograd on a linear residual net whose order-1 contributions are exactly orthogonal.

    Coordinates ``(k, m)``: ``k = 0`` is head ``m``'s read-out direction, ``k = j`` branch ``j``'s
    private direction. ``J_j = g_j sum_m e_(0,m) e_(j,m)^T``, so ``J_j^T e_(0,m) = g_j e_(j,m)``
    and ``J_j^T e_(k,m) = 0`` for ``k > 0``: paths of order >= 2 vanish and the order-1 ones
    point in distinct directions.
    """
    H, N = len(layout.supervision), layout.N
    D, J, probes = orthogonal_jacobians(layout, g)
    x = torch.ones(D, dtype=torch.float64)
    loss, branches = 0.0, layout.branches()
    for b, blk in enumerate(layout.blocks, start=1):
        mine = [br.index for br in branches if br.block == b]
        ys = []
        for ix in mine:
            y = J[ix - 1] @ x + probes[ix - 1]
            if blk.parallel:
                ys.append(y)
            else:
                x = x + y
        if blk.parallel:
            x = x + torch.stack(ys).sum(0)
        if b in layout.supervision:
            m = layout.supervision.index(b)
            loss = loss + x[m * (N + 1)]
    return [gr.norm().item() for gr in torch.autograd.grad(loss, probes)]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_orthogonal_limit_is_the_gradient_norm_of_an_orthogonal_linear_net(layouts, data):
    layout = data.draw(layouts(max_blocks=8, max_branches=3), label="layout")
    g = data.draw(st.lists(gain_values, min_size=layout.N, max_size=layout.N), label="gains")
    _close(gains.orthogonal_limit(layout, g), _orthogonal_network_gradients(layout, g))


def test_aligned_linear_net_follows_the_full_product_not_the_aligned_limit():
    # J_j = g_j I: every path is aligned, and paths of order >= 2 survive (the product form)
    layout, g = Layout.sequential(4), [0.5, 2.0, 1.0, 0.25]
    assert paths.gain_paths(layout, g).product == pytest.approx([3 * 2 * 1.25, 2 * 1.25, 1.25, 1.0])
    assert gains.full_product(layout, g).tolist() == pytest.approx([3 * 2 * 1.25, 2 * 1.25, 1.25, 1.0])
    assert gains.aligned_limit(layout, g).tolist() == pytest.approx([1 + 2 + 1 + 0.25, 1 + 1 + 0.25,
                                                                     1.25, 1.0])


def test_skip_gains_scale_paths_deepnorm_style():
    # x_p = a x_{p-1} + g x_{p-1}: the product is prod (a + g); order 0 is a^(distance)
    layout, g, a = Layout.sequential(3), [0.5, 0.5, 0.5], [2.0, 2.0, 2.0]
    assert gains.full_product(layout, g, identity=a).tolist() == [2.5 ** 2, 2.5, 1.0]
    assert gains.path_sums(layout, g, 0, identity=a).tolist() == [4.0, 2.0, 1.0]
    a_sym = gains.gain_symbols(3, "a")
    expr = gains.path_sum_expressions(layout, 1, identity=a_sym)[0]
    g1, g2, g3 = gains.gain_symbols(3)
    assert sp.expand(expr - (a_sym[1] * a_sym[2] + g2 * a_sym[2] + g3 * a_sym[1])) == 0


def test_gain_inputs_are_checked():
    with pytest.raises(GFAError, match="3 branch gains"):
        gains.path_sums(Layout.sequential(4), [1.0] * 3)
    with pytest.raises(GFAError, match="path order"):
        gains.path_sums(Layout.sequential(2), [1.0] * 2, order=-1)
    with pytest.raises(GFAError, match="skip gains"):
        gains.full_product(Layout.sequential(2), [1.0] * 2, identity=[1.0])
