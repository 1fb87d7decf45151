"""GradientTracker against hand-computed references on a tiny model with a shared branch."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.tracking import (
    ACCUMULATED,
    GradientTracker,
    UnitNorms,
    equalize_gradients_,
)
from gfa_theory.models import GPTConfig, ResNetConfig, build_model
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.symbolic import block_fan_in, fan_in


class Toy(nn.Module):
    """x_1 = x_0 + f1(x_0); x_2 = x_1 + f2(x_1); x_3 = x_2 + f2(x_2): f2 applied twice, shared."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(3, 4)
        self.f1 = nn.Linear(4, 4)
        self.f2 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.outs: list[tuple[str, torch.Tensor]] = []  # branch outputs, for the hand reference

    def forward(self, x, y):
        self.outs = []
        h = self.emb(x)
        for name, f in (("f1", self.f1), ("f2", self.f2), ("f2", self.f2)):
            out = f(torch.tanh(h))
            if out.requires_grad:
                out.retain_grad()
                self.outs.append((name, out))
            h = h + out
        return nn.functional.mse_loss(self.head(h), y)

    def toy_units(self):
        f1, f2 = self.f1, self.f2
        return [
            Unit("f1", "branch", 1, [f1.weight, f1.bias], [f1], (1,)),
            # f2's weight listed twice on purpose: a shared parameter must count once
            Unit("f2", "branch", 2, [f2.weight, f2.bias, f2.weight], [f2], (2, 3)),
            Unit("f12", "block", 1, list(f1.parameters()) + list(f2.parameters()), [f1, f2], (1,)),
        ]


def _norm(tensors):
    return float(torch.cat([t.reshape(-1) for t in tensors]).double().norm())


def test_tracker_matches_hand_reference():
    torch.manual_seed(0)
    model = Toy()
    units = model.toy_units()
    tracker = GradientTracker(model, units=units, stream=True, series_every=3, max_steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 7
    ref = {u: {"A": 0.0, "A_sq": 0.0, "stream": 0.0, "per_step": []} for u in ("f1", "f2", "f12")}
    params = {"f1": list(model.f1.parameters()), "f2": list(model.f2.parameters()),
              "f12": list(model.f1.parameters()) + list(model.f2.parameters())}
    for _ in range(steps):
        x, y = torch.randn(5, 3), torch.randn(5, 2)
        opt.zero_grad()
        model(x, y).backward()
        tracker.step()
        stream = {"f1": 0.0, "f2": 0.0}
        for name, out in model.outs:  # one term per application
            stream[name] += float(out.grad.double().norm())
        stream["f12"] = stream["f1"] + stream["f2"]
        for u in ref:
            g = _norm([p.grad for p in params[u]])
            ref[u]["A"] += g
            ref[u]["A_sq"] += g * g
            ref[u]["stream"] += stream[u]
            ref[u]["per_step"].append(g)
        with torch.no_grad():  # an evaluation pass must not count
            model(x, y)
        opt.step()
    df = tracker.to_frame()
    tot = df[df["step"].isna()].set_index(["unit", "quantity"])["value"]
    numel = {"f1": 20, "f2": 20, "f12": 40}
    for u, r in ref.items():
        assert tot[(u, "A")] == pytest.approx(r["A"], rel=1e-6)
        assert tot[(u, "A_sq")] == pytest.approx(r["A_sq"], rel=1e-6)
        assert tot[(u, "A_rms")] == pytest.approx(r["A"] / math.sqrt(numel[u]), rel=1e-6)
        assert tot[(u, "A_stream")] == pytest.approx(r["stream"], rel=1e-6)
        assert tot[(u, "numel")] == numel[u]
        # series: mean over windows of 3 steps, ending at steps 3, 6, 7 (the last is partial)
        series = df[(df["unit"] == u) & (df["quantity"] == "grad_norm")]
        assert list(series["step"]) == [3, 6, 7]
        s = r["per_step"]
        want = [sum(s[0:3]) / 3, sum(s[3:6]) / 3, s[6]]
        assert list(series["value"]) == pytest.approx(want, rel=1e-6)
    assert set(df.columns) == {"unit", "kind", "index", "quantity", "step", "value", "fan_in"}
    assert df["fan_in"].isna().all()  # the toy has no layout


def test_tracker_state_roundtrip_continues_identically():
    torch.manual_seed(1)
    model = Toy()
    a = GradientTracker(model, units=model.toy_units(), stream=True, series_every=2)
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(5)]

    def run(tracker, batches):
        for x, y in batches:
            model.zero_grad()
            model(x, y).backward()
            tracker.step()

    run(a, data[:3])
    state = a.state_dict()
    a.remove_hooks()
    b = GradientTracker(model, units=model.toy_units(), stream=True, series_every=2)
    b.load_state_dict(state)
    run(b, data[3:])
    b.remove_hooks()
    c = GradientTracker(model, units=model.toy_units(), stream=True, series_every=2)
    run(c, data)
    assert b.to_frame().equals(c.to_frame())


def test_gpt_units_and_fan_in_column():
    model = build_model("gpt", GPTConfig.tiny(n_blocks=3))
    tracker = GradientTracker(model, kind="both")
    x = torch.randint(0, 11, (2, 8))
    model(x, x)[1].backward()
    tracker.step()
    df = tracker.totals("A")
    layout = Layout.transformer(3)
    assert list(df[df["kind"] == "branch"]["fan_in"]) == fan_in(layout) == [6, 5, 4, 3, 2, 1]
    assert list(df[df["kind"] == "block"]["fan_in"]) == list(block_fan_in(layout).values())
    # a block's parameter gradient norm is the root-sum-square of its two branches'
    br = df[df["kind"] == "branch"]["A"].to_numpy()
    bl = df[df["kind"] == "block"]["A"].to_numpy()
    assert bl == pytest.approx((br[0::2] ** 2 + br[1::2] ** 2) ** 0.5, rel=1e-6)


def test_shared_repetition_fan_in_is_summed_over_applications():
    model = build_model("gpt", GPTConfig.tiny(n_blocks=2, block_schedule=[0, 1, 1, 1]))
    tracker = GradientTracker(model, kind="branch")
    F = fan_in(model.layout())  # 8 branches: block 1 applied at blocks 2, 3, 4
    got = dict(zip([u.name for u in tracker.units], tracker.fan_in))
    assert got["h.1.attn"] == F[2] + F[4] + F[6]
    assert got["h.1.mlp"] == F[3] + F[5] + F[7]
    assert got["h.0.attn"] == F[0]


def test_resnet_units_discovered():
    model = build_model("resnet", ResNetConfig.tiny())
    tracker = GradientTracker(model, kind="branch", stream=True)
    assert [u.name for u in tracker.units] == ["blocks.0.branch", "blocks.1.branch", "blocks.2.branch"]
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    model(x, y)[1].backward()
    tracker.step()
    tot = tracker.totals("A_stream")
    assert (tot["A_stream"] > 0).all() and list(tot["fan_in"]) == [3, 2, 1]


def test_equalize_sets_every_block_to_the_mean_norm():
    torch.manual_seed(0)
    model = build_model("gpt", GPTConfig.tiny(n_blocks=3))
    x = torch.randint(0, 11, (2, 8))
    model(x, x)[1].backward()
    norms = UnitNorms(model.units("block"))
    before = norms.squared().sqrt()
    head_grad = model.wte.weight.grad.clone()
    equalize_gradients_(norms)
    after = norms.squared().sqrt()
    assert torch.allclose(after, before.mean().expand_as(after), rtol=1e-5)
    assert torch.equal(model.wte.weight.grad, head_grad)  # outside the blocks: untouched


def test_tracker_rejects_bad_settings():
    model = build_model("gpt", GPTConfig.tiny())
    with pytest.raises(ConfigError, match="series_every"):
        GradientTracker(model, series_every=0)
    with pytest.raises(ConfigError, match="kind"):
        GradientTracker(model, kind="layer")


def test_torchvision_resnet18_through_adapters():
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10)
    tracker = GradientTracker(model, kind="branch", stream=True)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    nn.functional.cross_entropy(model(x), y).backward()
    tracker.step()
    tot = tracker.totals("A")
    assert len(tot) == 8 and list(tot["fan_in"]) == list(range(8, 0, -1))
    ref = _norm([p.grad for p in model.layer1[0].conv1.parameters()] +
                [p.grad for m in (model.layer1[0].bn1, model.layer1[0].conv2, model.layer1[0].bn2)
                 for p in m.parameters()])
    assert tot["A"].iloc[0] == pytest.approx(ref, rel=1e-6)
    assert (tracker.totals("A_stream")["A_stream"] > 0).all()


def test_hf_gpt2_tuple_outputs_through_adapters():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16, vocab_size=50)
    model = transformers.GPT2LMHeadModel(cfg)
    tracker = GradientTracker(model, kind="both", stream=True)
    x = torch.randint(0, 50, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    tracker.step()
    tot = tracker.totals("A_stream")
    assert list(tot["unit"][:4]) == ["transformer.h.0.attn", "transformer.h.0.mlp",
                                     "transformer.h.1.attn", "transformer.h.1.mlp"]
    assert list(tot["fan_in"][:4]) == [4, 3, 2, 1] and (tot["A_stream"] > 0).all()


# ---- opt-in accumulations: ||sum g||, noise floor, updates, displacement ------------------------
class TwoUnits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2, bias=False)

    def units(self):
        a, b = self.a, self.b
        return [Unit("a", "branch", 1, [a.weight, a.bias], [a], (1,)),
                Unit("b", "branch", 2, [b.weight], [b], (2,)),
                Unit("ab", "block", 1, [a.weight, a.bias, b.weight], [a, b], (1,))]


def _feed(model, tracker, grads):
    """One tracker step per entry: ``grads[t]`` = tensors for (a.weight, a.bias, b.weight)."""
    for g in grads:
        for p, v in zip((model.a.weight, model.a.bias, model.b.weight), g):
            p.grad = v.clone()
        tracker.step()


def _acc(tracker, name):
    return tracker.accumulated()[name]


def _random_grads(T, mu_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 3), (3,), (2, 3)]
    mu = [mu_scale * torch.randn(s, generator=gen) for s in shapes]
    return mu, [[m + torch.randn(s, generator=gen) for m, s in zip(mu, shapes)] for _ in range(T)]


def test_accumulated_gradient_norm_and_noise_floor_on_known_gradients():
    model = TwoUnits()
    const = [torch.full((3, 3), 0.5), torch.ones(3), torch.full((2, 3), -2.0)]
    tracker = GradientTracker(model, units=model.units(), accumulate=True, fan_in=[1, 1, 1])
    _feed(model, tracker, [const] * 10)
    g = np.array([_norm(const[:2]), _norm(const[2:]), _norm(const)])
    np.testing.assert_allclose(_acc(tracker, "G_norm"), 10 * g, rtol=1e-6)
    # no noise: zero up to float32 cancellation in T A_sq - G_norm^2 (about sqrt(eps32) of A)
    assert np.all(_acc(tracker, "noise_floor") <= 1e-3 * tracker.A.numpy())

    flip = GradientTracker(model, units=model.units(), accumulate=True, fan_in=[1, 1, 1])
    _feed(model, flip, [[s * v for v in const] for s in (1, -1) * 5])  # +g, -g, ...: all noise
    np.testing.assert_allclose(_acc(flip, "G_norm"), 0.0, atol=1e-6)
    np.testing.assert_allclose(_acc(flip, "noise_floor"), 10 * g * math.sqrt(10 / 9), rtol=1e-6)


def test_noise_floor_recovers_the_noise_share_of_a_random_walk():
    model = TwoUnits()
    T = 400
    for mu_scale, seed in ((0.0, 1), (0.5, 2)):
        mu, grads = _random_grads(T, mu_scale, seed)
        tracker = GradientTracker(model, units=model.units(), accumulate=True, fan_in=[1, 1, 1])
        _feed(model, tracker, grads)
        total = [torch.stack([g[k] for g in grads]).sum(0) for k in range(3)]
        np.testing.assert_allclose(_acc(tracker, "G_norm"),
                                   [_norm(total[:2]), _norm(total[2:]), _norm(total)], rtol=1e-5)
        numel = np.array([12, 6, 18])  # sigma^2 = numel: unit-variance noise per parameter
        np.testing.assert_allclose(_acc(tracker, "noise_floor"), T * np.sqrt(numel), rtol=0.08)
        A = tracker.A.numpy()
        if mu_scale == 0.0:
            np.testing.assert_allclose(_acc(tracker, "noise_floor") / A, 1.0, rtol=0.08)
        else:
            assert np.all(_acc(tracker, "noise_floor") < 0.97 * A)


def test_updates_and_displacement_follow_the_parameters():
    torch.manual_seed(0)
    model = TwoUnits()
    tracker = GradientTracker(model, units=model.units(), track_updates=True, fan_in=[1, 1, 1])
    start = [p.detach().clone() for p in (model.a.weight, model.a.bias, model.b.weight)]
    steps = [[torch.randn_like(p) for p in start] for _ in range(5)]
    expected_U = np.zeros(3)
    for delta in steps:
        tracker.before_update()
        with torch.no_grad():
            for p, d in zip((model.a.weight, model.a.bias, model.b.weight), delta):
                p.add_(d)
        got = tracker.after_update().numpy()
        expected_U += [_norm(delta[:2]), _norm(delta[2:]), _norm(delta)]
        np.testing.assert_allclose(got, [_norm(delta[:2]), _norm(delta[2:]), _norm(delta)], rtol=1e-5)
    np.testing.assert_allclose(_acc(tracker, "U"), expected_U, rtol=1e-5)
    moved = [sum(s[k] for s in steps) for k in range(3)]
    np.testing.assert_allclose(_acc(tracker, "displacement"),
                               [_norm(moved[:2]), _norm(moved[2:]), _norm(moved)], rtol=1e-5)
    assert np.all(_acc(tracker, "displacement") <= _acc(tracker, "U"))  # the triangle inequality
    frame = tracker.to_frame()
    assert {"U", "displacement"} <= set(frame.quantity) and "G_norm" not in set(frame.quantity)


def test_accumulations_are_opt_in_and_checkpointed():
    model = TwoUnits()
    plain = GradientTracker(model, units=model.units(), fan_in=[1, 1, 1])
    assert plain.grad_sum == [] and plain.theta0 == [] and plain.accumulated() == {}
    _, grads = _random_grads(6, 0.3, 3)
    _feed(model, plain, grads)
    assert not set(plain.to_frame().quantity) & set(ACCUMULATED)
    with pytest.raises(ConfigError, match="accumulate=True"):
        plain.add_gradients()
    with pytest.raises(ConfigError, match="track_updates=True"):
        plain.before_update()
    full = GradientTracker(model, units=model.units(), fan_in=[1, 1, 1], accumulate=True,
                           track_updates=True)
    with pytest.raises(ConfigError, match="before_update"):
        full.after_update()
    _feed(model, full, grads[:3])
    resumed = GradientTracker(model, units=model.units(), fan_in=[1, 1, 1], accumulate=True,
                              track_updates=True)
    resumed.load_state_dict(full.state_dict())
    _feed(model, full, grads[3:])
    _feed(model, resumed, grads[3:])
    for k, v in full.accumulated().items():
        np.testing.assert_allclose(resumed.accumulated()[k], v, rtol=1e-6)
    with pytest.raises(ConfigError, match="grad_sum"):
        GradientTracker(model, units=model.units(), accumulate=True).load_state_dict(plain.state_dict())
