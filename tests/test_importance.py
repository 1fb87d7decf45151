"""Importance metrics on models whose answer is known."""

import numpy as np
import pytest
import torch

from gfa_theory.instrument import importance
from gfa_theory.models import GPT, GPTConfig, ResNet, ResNetConfig


def _gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(n_blocks=3, **kw))


def _batches(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    V, T = model.config.vocab_size, model.config.block_size
    return [(torch.randint(0, V, (4, T), generator=g), torch.randint(0, V, (4, T), generator=g))
            for _ in range(n)]


def _zero_block(model, u):
    with torch.no_grad():
        for name in ("attn", "mlp"):
            getattr(model.h[u], name).c_proj.weight.zero_()
            getattr(model.h[u], name).c_proj.bias.zero_()


@pytest.mark.parametrize("kind", ["block", "branch"])
def test_zeroed_block_is_least_important_by_ablation_and_bi(kind):
    model = _gpt()
    _zero_block(model, 1)
    batches = _batches(model)
    for metric in ("ablation", "bi"):
        df = importance.SCORERS[metric](model, batches, kind=kind)
        zero_units = df[df.unit.str.startswith("h.1")]
        assert np.allclose(zero_units.score, 0.0, atol=1e-9), metric
        assert (df[~df.unit.str.startswith("h.1")].score.abs() > 1e-6).all(), metric


def test_zeroed_block_has_zero_angular_distance():
    model = _gpt()
    _zero_block(model, 2)
    batches = _batches(model)
    ang = importance.angular(model, batches)
    assert ang.set_index("unit").loc["h.2", "score"] == pytest.approx(0.0, abs=1e-6)
    assert (ang.set_index("unit").drop("h.2").score > 0).all()


def test_ablation_counts_passes_and_matches_manual_difference():
    model = _gpt()
    batches = _batches(model, n=3)
    df = importance.ablation(model, batches, kind="block")
    assert (df.forward_passes == 4 * 3).all() and (df.backward_passes == 0).all()
    base = importance.evaluate(model, batches)
    with model.ablate(["h.0"]):
        manual = importance.evaluate(model, batches) - base
    assert df.set_index("unit").loc["h.0", "score"] == pytest.approx(manual)


def test_bi_matches_definition_on_resnet():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig.tiny())
    x = torch.randn(5, 1, 8, 8)
    batches = [(x, torch.zeros(5, dtype=torch.long))]
    df = importance.block_influence(model, batches)
    # manual: block 0 keeps the shape, so x_in is the stem output
    model.eval()
    with torch.no_grad():
        x0 = model.stem(x)
        x1 = model.blocks[0](x0)
        cos = torch.nn.functional.cosine_similarity(x0.double(), x1.double(), dim=1)
    assert df.iloc[0].score == pytest.approx(float((1 - cos).mean()), rel=1e-9)
    assert len(df) == len(model.blocks)


def test_taylor_matches_manual_inner_product():
    model = _gpt()
    batches = _batches(model, n=1)
    df = importance.taylor(model, batches, kind="branch")
    model.eval()
    _, loss = model(*batches[0], final_only=True)
    unit = model.units("branch")[0]
    grads = torch.autograd.grad(loss, unit.params)
    manual = abs(float(sum((p.detach() * g).sum() for p, g in zip(unit.params, grads))))
    assert df.iloc[0].score == pytest.approx(manual, rel=1e-6)
    assert df.iloc[0].backward_passes == 1


def test_angular_spans_cover_every_start():
    model = _gpt()
    df = importance.angular_spans(model, _batches(model), n=2)
    assert df.start.tolist() == [1, 2]
    assert ((df.score >= 0) & (df.score <= 1)).all()


def test_shared_schedule_and_random_and_magnitude():
    model = _gpt(block_schedule=[0, 1, 2, 2])
    batches = _batches(model)
    df = importance.score_all(model, batches, kind="block", seed=3)
    assert set(df.metric) == set(importance.METRICS)
    assert df.groupby("metric").size().eq(3).all()  # one row per unique block
    r1 = importance.random_scores(model, kind="block", seed=3).score.tolist()
    assert r1 == df[df.metric == "random"].score.tolist()
    assert np.isfinite(df.score).all()


def test_unknown_metric_is_a_clear_error():
    from gfa_theory.errors import ConfigError
    model = _gpt()
    with pytest.raises(ConfigError, match="unknown importance metric"):
        importance.score_all(model, _batches(model), metrics=["nope"])
