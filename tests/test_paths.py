"""Autograd path counts on scalar-gain surrogates agree with the symbolic fan-in."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfa_theory.theory import path_counts as paths
from gfa_theory.theory import symbolic
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
