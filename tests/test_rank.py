"""Gradient effective and stable rank (gfa_theory.instrument.rank) on matrices with known spectra
and on tiny package models."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import rank as R
from gfa_theory.instrument.tracking import GradientTracker, discover_units
from gfa_theory.models import GPT, GPTConfig, ResNet, ResNetConfig
from gfa_theory.models.base import logits_and_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _orthogonal(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


def _entropy_rank(s):
    p = np.asarray(s, dtype=float) / np.sum(s)
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def test_rank_one_outer_product_has_rank_one():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    got = R.matrix_ranks(torch.outer(u, v))
    assert got["effective_rank"] == pytest.approx(1.0, abs=1e-9)
    assert got["stable_rank"] == pytest.approx(1.0, abs=1e-9)
    # a conv kernel (out, in, k, k) is the (out, in*k*k) matrix it applies
    kernel = torch.outer(u[:4], torch.randn(3 * 2 * 2, generator=g, dtype=torch.float64)).reshape(4, 3, 2, 2)
    assert R.as_matrix(kernel).shape == (4, 12)
    assert R.matrix_ranks(kernel)["effective_rank"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_identity_has_full_rank(n):
    got = R.matrix_ranks(torch.eye(n, dtype=torch.float64))
    assert got["effective_rank"] == pytest.approx(n, rel=1e-12)
    assert got["stable_rank"] == pytest.approx(n, rel=1e-12)


def test_known_spectrum_closed_form_and_rotation_invariance():
    s = [3.0, 2.0, 1.0, 0.0]  # p = (1/2, 1/3, 1/6, 0)
    erank = math.exp(-(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6))
    srank = (9 + 4 + 1) / 9
    D = torch.diag(torch.tensor(s, dtype=torch.float64))
    rotated = _orthogonal(4, 1) @ D @ _orthogonal(4, 2).T
    wide = torch.cat([rotated, torch.zeros(4, 3, dtype=torch.float64)], dim=1)  # 4 x 7, same spectrum
    for M in (D, rotated, wide):
        got = R.matrix_ranks(M)
        assert got["effective_rank"] == pytest.approx(erank, rel=1e-10)
        assert got["stable_rank"] == pytest.approx(srank, rel=1e-10)
    assert R.matrix_ranks(5.0 * D) == pytest.approx(R.matrix_ranks(D), rel=1e-10)  # scale-free


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1e6, allow_subnormal=False), min_size=1, max_size=30)
       .filter(lambda s: max(s) > 1e-3))
def test_stable_rank_at_most_effective_rank_at_most_rank(s):
    """1 <= stable <= effective <= #nonzero: sum s^2/s1^2 <= sum s/s1 = exp(H_inf) <= exp(H_1)."""
    t = torch.tensor(s, dtype=torch.float64)
    erank, srank = R.effective_rank(t), R.stable_rank(t)
    assert erank == pytest.approx(_entropy_rank(s), rel=1e-9)
    assert 1 - 1e-9 <= srank <= erank * (1 + 1e-9)
    assert erank <= sum(x > 0 for x in s) * (1 + 1e-9)


def test_zero_matrix_and_vectors():
    got = R.matrix_ranks(torch.zeros(3, 4))
    assert math.isnan(got["effective_rank"]) and math.isnan(got["stable_rank"])
    assert R.as_matrix(torch.ones(5)) is None
    with pytest.raises(ConfigError, match="weight matrix"):
        R.matrix_ranks(torch.ones(5))
    with pytest.raises(ConfigError, match=r"\(W, P\)"):
        R.window_ranks(torch.ones(2, 3, 4))


def test_window_of_identical_and_orthogonal_gradients():
    g = torch.randn(50, dtype=torch.float64)
    same = R.window_ranks(g.expand(6, 50))
    assert same["window_effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert same["window_stable_rank"] == pytest.approx(1.0, abs=1e-9)
    W = 6
    rows = _orthogonal(50, 3)[:W]  # W orthonormal gradients
    orth = R.window_ranks(rows)
    assert orth["window_effective_rank"] == pytest.approx(W, rel=1e-9)
    assert orth["window_stable_rank"] == pytest.approx(W, rel=1e-9)
    norms = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)  # singular values of X
    scaled = R.window_ranks(norms[:, None] * rows)
    assert scaled["window_effective_rank"] == pytest.approx(_entropy_rank(norms.tolist()), rel=1e-9)
    assert scaled["window_stable_rank"] == pytest.approx(float((norms ** 2).sum() / 16), rel=1e-9)


def test_window_singular_values_match_a_direct_svd():
    X = torch.randn(8, 300, generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(R.window_singular_values(X).numpy(),
                               torch.linalg.svdvals(X.double()).numpy(), rtol=1e-8)


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(n_blocks=2))


def _train(model, batch, length, steps, monitor=None, tracker=None, seed=1):
    """SGD on random tokens; ``monitor.step`` and ``tracker.step`` between backward and step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    losses = []
    for t in range(steps):
        x = torch.randint(0, 11, (batch, length), generator=gen)
        y = torch.randint(0, 11, (batch, length), generator=gen)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        if tracker is not None:
            tracker.step()
        if monitor is not None:
            monitor.step(t)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _check_invariants(df, bound):
    """Bounds every row must satisfy; ``bound(row)`` is the row's rank ceiling."""
    assert list(df.columns) == R.COLUMNS and set(df.quantity) <= set(R.QUANTITIES)
    assert df.value.notna().all()
    per_matrix = df[df.matrix != R.UNIT]
    for row in per_matrix.itertuples():
        assert 1 - 1e-9 <= row.value <= bound(row) + 1e-3, row
    wide = per_matrix.pivot_table(index=["step", "matrix"], columns="quantity", values="value")
    for kind in ("", "window_"):
        if f"{kind}stable_rank" in wide:
            pair = wide[[f"{kind}stable_rank", f"{kind}effective_rank"]].dropna()
            assert len(pair) and (pair.iloc[:, 0] <= pair.iloc[:, 1] * (1 + 1e-9)).all()


def test_gpt_ranks_batch_of_one_vs_large_batch():
    """One token sequence of length L per step: every weight gradient is a sum of L outer products,
    so after k steps the accumulated matrix has rank <= k L and a window of W steps rank <= W.
    The values of both batch sizes are printed (run with -s); which is larger is not asserted."""
    L, W, steps = 3, 4, 5
    report = {}
    for batch, length in ((1, L), (64, 8)):
        model = _gpt()
        mon = R.RankMonitor(model, window=W, every=1)
        _train(model, batch, length, steps, mon)
        df = mon.to_frame()
        shapes = {n: R.as_matrix(p).shape for n, p in model.named_parameters() if p.ndim >= 2}
        tokens = batch * length

        def bound(row):
            m, n = shapes[row.matrix]
            cap = W if row.quantity.startswith("window_") else (row.step + 1) * tokens
            return min(m, n, cap)

        _check_invariants(df, bound)
        assert sorted(set(df.step)) == list(range(steps))
        assert set(df[df.step < W - 1].quantity) == {"effective_rank", "stable_rank"}  # ring not full
        assert set(df[df.step == steps - 1].quantity) == set(R.QUANTITIES)
        report[f"batch {batch}"] = df[(df.matrix == R.UNIT) & (df.step == steps - 1)] \
            .pivot_table(index="unit", columns="quantity", values="value")
    print(pd.concat(report, names=["run"]).to_string())


def test_unit_rows_are_the_parameter_weighted_mean():
    model = _gpt()
    mon = R.RankMonitor(model, window=2, every=2)
    _train(model, 2, 8, 3, mon)
    df = mon.to_frame()
    numel = {n: p.numel() for n, p in model.named_parameters()}
    for (step, unit, q), g in df[df.matrix != R.UNIT].groupby(["step", "unit", "quantity"]):
        w = np.array([numel[m] for m in g.matrix])
        mean = df[(df.step == step) & (df.unit == unit) & (df.quantity == q) & (df.matrix == R.UNIT)].value
        assert float(mean.iloc[0]) == pytest.approx(float(np.sum(w * g.value) / w.sum()), rel=1e-12)
    assert set(df[df.matrix == R.UNIT].unit) == {"h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp"}
    assert len(df[(df.unit == "h.0.attn") & (df.matrix != R.UNIT)].matrix.unique()) == 2  # c_attn, c_proj


def test_monitor_leaves_training_unchanged_and_reads_tracker_sums():
    plain = _gpt()
    plain_losses = _train(plain, 4, 8, 4)
    model = _gpt()
    tracker = GradientTracker(model, accumulate=True)
    own = R.RankMonitor(model, window=3, every=2)
    shared = R.RankMonitor(model, window=None, every=2, tracker=tracker)

    class Both:
        def step(self, t):
            own.step(t)
            shared.step(t)

    assert _train(model, 4, 8, 4, Both(), tracker) == plain_losses
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    acc = own.to_frame()
    acc = acc[~acc.quantity.str.startswith("window_")].reset_index(drop=True)
    pd.testing.assert_frame_equal(acc, shared.to_frame())
    assert not shared.owns_sums and own.owns_sums


def test_resnet_conv_kernels_are_reshaped():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig.tiny())
    mon = R.RankMonitor(model, window=2, every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for t in range(2):
        x, y = torch.randn(6, 1, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen)
        _, loss = logits_and_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        mon.step(t)
        opt.step()
    df = mon.to_frame()
    shapes = {n: R.as_matrix(p).shape for n, p in model.named_parameters() if p.ndim >= 2}
    assert {"blocks.0.branch.2.weight", "blocks.2.branch.5.weight"} <= set(df.matrix)
    _check_invariants(df, lambda row: min(*shapes[row.matrix], 2 if row.quantity.startswith("window_")
                                          else math.inf))


def test_monitor_errors():
    model = _gpt()
    with pytest.raises(ConfigError, match="every"):
        R.RankMonitor(model, every=0)
    with pytest.raises(ConfigError, match="window"):
        R.RankMonitor(model, window=0)
    with pytest.raises(ConfigError, match="accumulate=True"):
        R.RankMonitor(model, tracker=GradientTracker(model))
    first_unit_only = GradientTracker(model, units=discover_units(model)[:1], accumulate=True)
    with pytest.raises(ConfigError, match="does not accumulate"):
        R.RankMonitor(model, tracker=first_unit_only)
    fresh = R.RankMonitor(model)
    assert fresh.to_frame().empty
    before = fresh.measure()  # no gradient yet: zero sums have no rank, nor do their unit means
    assert before.value.isna().all() and set(before.matrix) >= {R.UNIT} and before.step.isna().all()
