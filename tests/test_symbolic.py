"""Symbolic fan-in: closed forms, the general-layout computation, brute-force path enumeration."""
from __future__ import annotations

from collections import Counter

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from gfa_theory.errors import ConfigError, LayoutError
from gfa_theory.theory import gains, symbolic
from gfa_theory.theory.layout import Block, Layout
from gfa_theory.theory.symbolic import B, N, b, i, j, r, s, t


# ---- brute force: enumerate every path of the layout DAG ---------------------------------------
def layout_dag(layout: Layout) -> tuple[dict, list, list]:
    """Forward DAG built from the block list alone (not from writers()/position bookkeeping).

    Nodes: ("x", p) stream values, ("f", i) branches, "loss". Returns (edges, output node of each
    branch in forward order, head nodes).
    """
    edges: dict = {}
    outputs, heads = [], []
    x, p, i_ = ("x", 0), 0, 0

    def add(u, v):
        edges.setdefault(u, []).append(v)

    for bi, blk in enumerate(layout.blocks, start=1):
        if blk.parallel:  # every branch reads the block input, one new stream value
            p += 1
            new = ("x", p)
            add(x, new)
            for _ in range(blk.branches):
                i_ += 1
                add(x, ("f", i_))
                add(("f", i_), new)
                outputs.append(new)
            x = new
        else:
            for _ in range(blk.branches):
                i_ += 1
                p += 1
                new = ("x", p)
                add(x, new)  # identity
                add(x, ("f", i_))
                add(("f", i_), new)
                outputs.append(new)
                x = new
        if bi in layout.supervision:
            heads.append(x)
    for h in heads:
        add(h, "loss")
    return edges, outputs, heads


def enumerate_paths(edges: dict, start) -> list[tuple]:
    """Every path from ``start`` to the loss, as the tuple of branch nodes it passes through."""
    out = []

    def dfs(node, through):
        if node == "loss":
            out.append(tuple(through))
            return
        for nxt in edges.get(node, ()):
            dfs(nxt, through + [nxt] if nxt[0] == "f" else through)

    dfs(start, [])
    return out


def brute_force_series(layout: Layout) -> list[list[int]]:
    edges, outputs, _ = layout_dag(layout)
    result = []
    for out in outputs:
        orders = Counter(len(path) for path in enumerate_paths(edges, out))
        result.append([orders.get(k, 0) for k in range(max(orders) + 1)])
    return result


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_brute_force_enumeration_equals_generating_function(layouts, data):
    layout = data.draw(layouts(max_blocks=4, max_branches=3), label="layout")
    result = symbolic.analyze(layout)
    brute = brute_force_series(layout)
    assert [list(br.paths_by_order) for br in result.branches] == brute
    assert result.fan_in == [c[0] + (c[1] if len(c) > 1 else 0) for c in brute]
    for g in result.groups:  # a group's series is the sum over its applications
        apps = [ix for slot in g.applications for ix in slot]
        total = Counter()
        for ix in apps:
            total.update(dict(enumerate(brute[ix - 1])))
        assert list(g.paths_by_order) == [total[k] for k in range(len(g.paths_by_order))]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_removing_a_branch_removes_exactly_its_paths(layouts, data):
    """G_i(full) - G_i(without branch j) = the paths to i that pass through j (gradient structure)."""
    layout = data.draw(layouts(max_blocks=4, max_branches=3), label="layout")
    candidates = [bi for bi, blk in enumerate(layout.blocks, start=1) if blk.branches >= 2]
    if not candidates:
        return
    bj = data.draw(st.sampled_from(candidates), label="block")
    blk = layout.blocks[bj - 1]
    slot = data.draw(st.integers(0, blk.branches - 1), label="slot")
    j_index = next(br.index for br in layout.branches() if br.block == bj and br.slot == slot)
    blocks = list(layout.blocks)
    blocks[bj - 1] = Block(blk.branches - 1, blk.parallel)
    reduced = Layout(tuple(blocks), layout.supervision,
                     tuple(g for g in layout.shared if bj not in g))  # structure changed: unshare

    full = symbolic.analyze(layout).branches
    less = symbolic.analyze(reduced).branches
    edges, outputs, _ = layout_dag(layout)
    for br in full:
        if br.index == j_index:
            continue
        other = less[br.index - 1 - (br.index > j_index)]
        through = Counter(len(p) for p in enumerate_paths(edges, outputs[br.index - 1])
                          if ("f", j_index) in p)
        diff = [a - (other.paths_by_order[k] if k < len(other.paths_by_order) else 0)
                for k, a in enumerate(br.paths_by_order)]
        assert diff == [through.get(k, 0) for k in range(len(diff))]


# ---- closed forms ------------------------------------------------------------------------------
def test_closed_forms_are_the_expected_polynomials():
    assert sp.simplify(symbolic.fan_in_closed_form("final") - (N - i + 1)) == 0
    assert sp.simplify(symbolic.fan_in_closed_form("all") - (N - i + 1) * (N - i + 2) / 2) == 0
    assert sp.simplify(symbolic.generating_function_closed_form("final") - (1 + t) ** (N - i)) == 0
    geometric = ((1 + t) ** (N - i + 1) - 1) / t
    assert sp.simplify(symbolic.generating_function_closed_form("all") - geometric) == 0


@pytest.mark.parametrize("supervision", ["final", "all"])
def test_fan_in_is_G0_plus_G_prime_0(supervision):
    G = symbolic.generating_function_closed_form(supervision)
    series = sp.series(G, t, 0, 2).removeO()
    F = series.coeff(t, 0) + series.coeff(t, 1)
    assert sp.simplify(F - symbolic.fan_in_closed_form(supervision)) == 0


@pytest.mark.parametrize("supervision", ["final", "all"])
def test_closed_form_equals_general_computation(supervision):
    for n in list(range(1, 61)) + [127, 500, 1000]:
        layout = Layout.sequential(n, supervision)
        assert symbolic.closed_form_profile(n, supervision) == symbolic.fan_in(layout), n


@pytest.mark.parametrize("supervision", ["final", "all"])
def test_generating_function_closed_form_equals_general_series(supervision):
    G = symbolic.generating_function_closed_form(supervision)
    for n in range(1, 13):
        result = symbolic.analyze(Layout.sequential(n, supervision))
        for br in result.branches:
            poly = sp.Poly(sp.cancel(G.subs({N: n, i: br.index})), t)
            assert [int(c) for c in reversed(poly.all_coeffs())] == list(br.paths_by_order)
    # larger N: compare the values at t = 2 (every coefficient weighted differently)
    for n in (30, 61):
        result = symbolic.analyze(Layout.sequential(n, supervision))
        for br in result.branches:
            value = sp.cancel(G.subs({N: n, i: br.index, t: 2}))
            assert value == sum(c * 2**k for k, c in enumerate(br.paths_by_order))


@pytest.mark.parametrize("supervision", ["final", "all"])
def test_late_shared_repetition_closed_form(supervision):
    late = symbolic.group_fan_in_closed_form(supervision, late=True)
    anywhere = symbolic.group_fan_in_closed_form(supervision, late=False)
    assert late.free_symbols == {r}
    for n in range(1, 16):
        for reps in range(1, n + 1):
            layout = Layout([Block(1)] * n, Layout.sequential(n, supervision).supervision,
                            shared=[tuple(range(n - reps + 1, n + 1))])
            group = symbolic.group_fan_in(layout)[tuple(range(n - reps + 1, n + 1))]
            assert group == late.subs(r, reps)
            for start in range(1, n - reps + 2):
                blocks = tuple(range(start, start + reps))
                layout = Layout([Block(1)] * n, layout.supervision, shared=[blocks])
                assert symbolic.group_fan_in(layout)[blocks] == anywhere.subs(
                    {N: n, r: reps, j: start})


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("supervision", ["final", "all"])
def test_block_stack_closed_form(k, parallel, supervision):
    F_bs, F_b = symbolic.block_stack_closed_form(k, parallel, supervision)
    for n_blocks in range(1, 21):
        layout = Layout([Block(k, parallel)] * n_blocks,
                        supervision=range(1, n_blocks + 1) if supervision == "all" else ())
        result = symbolic.analyze(layout, max_order=1)
        for br in result.branches:
            assert br.fan_in == F_bs.subs({B: n_blocks, b: br.block, s: br.slot})
        for bl in result.blocks:
            assert bl.fan_in == F_b.subs({B: n_blocks, b: bl.block})


def test_transformer_block_fan_in_by_hand():
    # sequential attention/MLP: F = 2B - 2b - s + 2, block 4B - 4b + 3
    assert symbolic.block_stack_closed_form(2, False, "final")[1] == 4 * B - 4 * b + 3
    assert symbolic.block_fan_in(Layout.transformer(2)) == {1: 7, 2: 3}
    assert symbolic.branch_fan_in(Layout.transformer(2)) == {1: 4, 2: 3, 3: 2, 4: 1}


# ---- hand-checked small layouts ----------------------------------------------------------------
def test_parallel_siblings_do_not_count_each_other():
    alone = symbolic.analyze(Layout([Block(2, parallel=True)]))
    assert [br.paths_by_order for br in alone.branches] == [(1,), (1,)]
    result = symbolic.analyze(Layout([Block(2, parallel=True), Block(1)]))
    assert result.fan_in == [2, 2, 1]
    assert [br.paths_by_order for br in result.branches] == [(1, 1), (1, 1), (1,)]
    # the same two branches in sequence: the first one sees the second
    assert symbolic.fan_in(Layout([Block(2), Block(1)])) == [3, 2, 1]


def test_supervision_subset_by_hand():
    layout = Layout.sequential(4, supervision=[2])  # heads on x_2 and x_4
    # F(1) = (1 + 1) + (1 + 3); G_1 = (1+t) + (1+t)^3
    assert symbolic.fan_in(layout) == [6, 4, 2, 1]
    assert symbolic.generating_function(layout, 1) == sp.Poly((1 + t) + (1 + t) ** 3, t)


def test_parallel_block_with_heads_by_hand():
    layout = Layout([Block(2), Block(2, parallel=True), Block(3), Block(3)],
                    supervision=[2], shared=[(3, 4)])
    result = symbolic.analyze(layout)
    # branch 1: head on x_3 through positions 2 (w=1), 3 (w=2): 1 + 3; head on x_9: 1 + 9
    assert result.fan_in == [14, 12, 8, 8, 6, 5, 4, 3, 2, 1]
    assert result.branches[0].paths_by_order[:3] == (2, 12, 37)
    assert [bl.fan_in for bl in result.blocks] == [26, 16, 15, 6]
    shared = [g for g in result.groups if g.shared]
    assert len(shared) == 1 and shared[0].blocks == (3, 4)
    assert shared[0].applications == ((5, 8), (6, 9), (7, 10))
    assert shared[0].fan_in_by_slot == (9, 7, 5) and shared[0].fan_in == 21


def test_max_order_truncates_series_not_fan_in():
    layout = Layout.transformer(5, supervision="all")
    full = symbolic.analyze(layout)
    cut = symbolic.analyze(layout, max_order=2)
    assert cut.fan_in == full.fan_in
    assert all(len(br.paths_by_order) <= 3 for br in cut.branches)
    assert [br.paths_by_order[:3] for br in full.branches] == [br.paths_by_order for br in cut.branches]
    zero = symbolic.analyze(layout, max_order=0)
    assert zero.fan_in == full.fan_in and all(len(br.paths_by_order) == 1 for br in zero.branches)


def test_to_dict_has_the_documented_keys():
    d = symbolic.analyze(Layout.transformer(2, parallel=True), max_order=1).to_dict()
    assert d["N"] == 4 and d["layout"]["blocks"][0] == {"branches": 2, "parallel": True}
    assert set(d["branches"][0]) >= {"index", "block", "fan_in", "paths_by_order"}
    assert [br["fan_in"] for br in d["branches"]] == [3, 3, 1, 1]
    assert d["blocks"] == [{"block": 1, "branches": [1, 2], "fan_in": 6, "paths_by_order": [2, 4]},
                           {"block": 2, "branches": [3, 4], "fan_in": 2, "paths_by_order": [2]}]
    assert [g["blocks"] for g in d["groups"]] == [[1], [2]]


def test_bad_arguments_raise_gfa_errors():
    with pytest.raises(LayoutError, match="supervision"):
        symbolic.fan_in_closed_form("some")
    with pytest.raises(ConfigError, match="max_order"):
        symbolic.analyze(Layout.sequential(3), max_order=-1)
    with pytest.raises(LayoutError, match="out of range"):
        symbolic.generating_function(Layout.sequential(3), 4)
    with pytest.raises(LayoutError):
        symbolic.closed_form_profile(0)


def test_latex_rendering():
    assert symbolic.latex(symbolic.fan_in_closed_form("final"), "F(i)") == "F(i) = N - i + 1"
    quad = symbolic.latex(symbolic.fan_in_closed_form("all"))
    assert quad == r"\frac{\left(N - i + 1\right) \left(N - i + 2\right)}{2}"
    table = symbolic.latex_table(symbolic.analyze(Layout.sequential(3)), orders=2)
    rows = [line for line in table.splitlines() if line.endswith(r"\\")]
    assert rows[1:] == [r"1 & 1 & 3 & 1.000 & 1 & 2 \\", r"2 & 2 & 2 & 0.667 & 1 & 1 \\",
                        r"3 & 3 & 1 & 0.333 & 1 & 0 \\"]


@pytest.mark.parametrize("supervision", ["final", "all"])
def test_gain_path_sums_at_equal_gains_are_the_generating_function(supervision):
    """P(i) with every g_j = t is G_i(t); P_1 with every g_j = 1 is F(i)."""
    n = 6
    layout = Layout.sequential(n, supervision)
    G = symbolic.generating_function_closed_form(supervision)
    F = symbolic.fan_in_closed_form(supervision)
    for idx, expr in enumerate(gains.path_sum_expressions(layout), start=1):
        same = expr.subs({g: symbolic.t for g in gains.gain_symbols(n)})
        assert sp.simplify(same - G.subs({symbolic.N: n, symbolic.i: idx})) == 0
    for idx, expr in enumerate(gains.aligned_expressions(layout), start=1):
        assert expr.subs({g: 1 for g in gains.gain_symbols(n)}) == F.subs({symbolic.N: n, symbolic.i: idx})
