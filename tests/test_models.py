"""The package's GPT and ResNet: configs, forward, deep supervision, sharing, ablation, units."""
import math

import pytest
import torch
import torch.nn.functional as F

from gfa_theory.config import build, config_hash, from_dict, to_dict
from gfa_theory.errors import ConfigError, GFAError
from gfa_theory.models import GPT, MODELS, GPTConfig, ResNet, ResNetConfig, build_model
from gfa_theory.models.gpt import NormConfig
from gfa_theory.theory.layout import Block, Layout


def gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(**kw))


def resnet(seed=0, **kw):
    torch.manual_seed(seed)
    return ResNet(ResNetConfig.tiny(**kw)).eval()  # eval: BN uses running stats, batch-independent


def tokens(n=3, T=8, vocab=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, T), generator=g), torch.randint(0, vocab, (n, T), generator=g)


def images(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    pytest.param(dict(n_embd=10, n_head=4), "does not divide n_embd", id="heads-divide-width"),
    pytest.param(dict(n_head=[2, 3]), "does not divide n_embd", id="per-block-heads-divide"),
    pytest.param(dict(n_blocks=0), "n_blocks must be a positive integer", id="zero-blocks"),
    pytest.param(dict(n_head=[2, 2, 2]), "n_head has 3 entries but n_blocks=2", id="heads-list-length"),
    pytest.param(dict(d_ff=[32]), "d_ff has 1 entries", id="ffn-list-length"),
    pytest.param(dict(d_ff=0), "d_ff entry must be a positive integer", id="zero-ffn"),
    pytest.param(dict(supervision=[3]), "out of range 1..2", id="supervision-range"),
    pytest.param(dict(supervision="some"), "'final', 'all' or a list", id="supervision-word"),
    pytest.param(dict(supervision=[1, 1]), "lists a block twice", id="supervision-duplicate"),
    pytest.param(dict(block_schedule=[0, 0]), "never applies block 1", id="schedule-unused-block"),
    pytest.param(dict(block_schedule=[0, 2]), "out of range 0..1", id="schedule-range"),
    pytest.param(dict(block_schedule=[]), "non-empty", id="schedule-empty"),
    pytest.param(dict(dropout=1.0), "dropout", id="dropout-range"),
    pytest.param(dict(head_dim=0), "head_dim", id="head-dim"),
])
def test_gpt_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig.tiny(**kw)


@pytest.mark.parametrize("kw, message", [
    pytest.param(dict(blocks_per_stage=[1, 1], widths=[4]), "widths has 1", id="stage-lengths"),
    pytest.param(dict(widths=[4, 0]), "positive integers", id="zero-width"),
    pytest.param(dict(blocks_per_stage=[]), "non-empty", id="no-stages"),
    pytest.param(dict(variant="resnext"), "variant", id="variant"),
    pytest.param(dict(supervision=[4]), "out of range 1..3", id="supervision-range"),
    pytest.param(dict(in_channels=0), "in_channels", id="channels"),
])
def test_resnet_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        ResNetConfig.tiny(**kw)


def test_configs_load_strictly_from_json_and_overrides():
    cfg = build(GPTConfig, overrides=["n_blocks=2", "n_head=[2,4]", "d_ff=64", "supervision=[1]"])
    assert cfg.heads() == [2, 4] and cfg.ffn() == [64, 64] and cfg.supervised() == [1, 2]
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'"):
        from_dict(GPTConfig, {"n_layers": 3})
    with pytest.raises(ConfigError, match="n_embd"):
        from_dict(GPTConfig, {"n_embd": "wide"})
    with pytest.raises(ConfigError, match="supervision"):
        from_dict(GPTConfig, {"supervision": "none"})
    with pytest.raises(ConfigError, match="does not divide"):
        build(GPTConfig, overrides=["n_head=3"])
    r = from_dict(ResNetConfig, {"variant": "post", "blocks_per_stage": [1, 1], "widths": [4, 8]})
    assert r.B == 2 and isinstance(r.blocks_per_stage, list)


def test_registry_builds_by_name_and_rejects_unknown():
    assert set(MODELS) == {"gpt", "resnet"}
    m = build_model("gpt", {"n_embd": 16, "n_head": 2, "d_ff": 32, "n_blocks": 1, "block_size": 8})
    assert isinstance(m, GPT) and len(m.h) == 1
    r = build_model("resnet", ["variant=post", "blocks_per_stage=[1]", "widths=[4]"])
    assert isinstance(r, ResNet) and r.config.variant == "post"
    assert build_model("resnet", ResNetConfig.tiny()).config == ResNetConfig.tiny()
    with pytest.raises(ConfigError, match="unknown model 'vit' \\(choices: gpt, resnet\\)"):
        build_model("vit")
    assert issubclass(ConfigError, GFAError)


def test_default_gpt_is_the_small_cpu_model():
    cfg = GPTConfig()
    assert (cfg.n_embd, cfg.n_blocks, cfg.heads(), cfg.block_size, cfg.dropout) == (128, 4, [4] * 4, 64, 0.0)


# ---- forward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(parallel=True), dict(supervision="all"),
                                dict(block_schedule=[0, 1, 1]), dict(n_head=[2, 4], d_ff=[32, 8])],
                         ids=["sequential", "parallel", "deep", "shared", "taper"])
def test_gpt_forward_shapes(kw):
    m = gpt(**kw)
    idx, tgt = tokens()
    logits, loss = m(idx)
    assert logits.shape == (3, 8, 11) and loss is None
    logits, loss = m(idx, tgt)
    assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(ConfigError, match="exceeds block_size=8"):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_gpt_head_dim_sets_attention_width():
    m = gpt(n_embd=16, n_head=[4, 2], head_dim=8)
    assert m.h[0].attn.c_attn.weight.shape == (3 * 32, 16) and m.h[1].attn.c_proj.weight.shape == (16, 16)
    assert m(tokens()[0])[0].shape == (3, 8, 11)


def test_resnet_forward_shapes():
    for variant in ("preact", "post"):
        m = resnet(variant=variant, supervision="all")
        x, y = images()
        logits, loss = m(x, y)
        assert logits.shape == (5, 10) and loss.shape == ()
        with pytest.raises(ConfigError, match=r"images of shape \(batch, 1, 8, 8\)"):
            m(torch.randn(2, 3, 32, 32))
    c = ResNet(ResNetConfig.cifar(blocks_per_stage=[1, 1, 1], widths=[4, 8, 8])).eval()
    assert c(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)


def test_gpt_deep_supervision_loss_is_mean_of_head_losses():
    m = gpt(n_blocks=3, supervision=[1, 3])
    idx, tgt = tokens()
    x = m.wte(idx) + m.wpe(torch.arange(8))
    head_losses, final_logits = [], None
    for b, blk in enumerate(m.h, start=1):
        x = blk(x)
        if b in (1, 3):
            final_logits = m.lm_head(m.ln_f(x))
            head_losses.append(F.cross_entropy(final_logits.reshape(-1, 11), tgt.reshape(-1)))
    logits, loss = m(idx, tgt)
    torch.testing.assert_close(loss, (head_losses[0] + head_losses[1]) / 2)
    torch.testing.assert_close(logits, final_logits)
    logits_f, loss_f = m(idx, tgt, final_only=True)
    torch.testing.assert_close(loss_f, head_losses[1])
    torch.testing.assert_close(logits_f, final_logits)
    assert not torch.allclose(loss, loss_f)


def test_resnet_deep_supervision_loss_is_mean_of_head_losses():
    m = resnet(variant="preact", supervision=[2])
    assert sorted(m.heads) == ["2", "3"]
    x, y = images()
    h = m.stem(x)
    losses = []
    for b, blk in enumerate(m.blocks, start=1):
        h = blk(h)
        if b in (2, 3):
            losses.append(F.cross_entropy(m.heads[str(b)](h), y))
    _, loss = m(x, y)
    torch.testing.assert_close(loss, (losses[0] + losses[1]) / 2)
    torch.testing.assert_close(m(x, y, final_only=True)[1], losses[1])


# ---- parameter-shared repetition ---------------------------------------------------------------
def test_shared_schedule_reuses_weights_and_accumulates_gradients():
    shared = gpt(block_schedule=[0, 1, 1, 1])
    assert len(shared.h) == 2
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in gpt().parameters())
    # The same network unrolled: four unique blocks, blocks 1..3 holding copies of shared block 1.
    unrolled = gpt(n_blocks=4)
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("h.")}
    for u, src in enumerate([0, 1, 1, 1]):
        state.update({f"h.{u}.{k}": v for k, v in shared.h[src].state_dict().items()})
    unrolled.load_state_dict(state)
    idx, tgt = tokens()
    loss_s, loss_u = shared(idx, tgt)[1], unrolled(idx, tgt)[1]
    torch.testing.assert_close(loss_s, loss_u)
    loss_s.backward()
    loss_u.backward()
    for name, p in shared.h[1].named_parameters():
        total = sum(dict(unrolled.h[u].named_parameters())[name].grad for u in (1, 2, 3))
        torch.testing.assert_close(p.grad, total)
    lay = shared.layout()
    assert lay.B == 4 and lay.shared == ((2, 3, 4),) and lay.N == 8


# ---- ablation ----------------------------------------------------------------------------------
def test_disabling_a_zero_branch_changes_nothing_and_a_live_branch_changes_the_output():
    m = gpt(n_blocks=3)
    with torch.no_grad():
        m.h[1].mlp.c_proj.weight.zero_()
        m.h[1].mlp.c_proj.bias.zero_()
    idx, tgt = tokens()
    full = m(idx, tgt)[1]
    with m.ablate(["h.1.mlp"]):
        assert torch.equal(m(idx, tgt)[1], full)
    with m.ablate(["h.0.attn"]):
        assert not torch.allclose(m(idx, tgt)[1], full)
    assert m.disabled == set()


def test_disabled_branch_equals_the_stack_without_it():
    m = gpt(n_blocks=2)
    idx, _ = tokens()
    with torch.no_grad():
        x = m.wte(idx) + m.wpe(torch.arange(8))
        x = m.h[0](x)
        x = x + m.h[1].mlp(m.h[1].ln_2(x))  # block 1 without its attention branch
        expected = m.lm_head(m.ln_f(x))
        m.disabled = {"h.1.attn"}
        torch.testing.assert_close(m(idx)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_disabled_block_equals_the_model_without_it(parallel):
    m = gpt(n_blocks=3, parallel=parallel)
    smaller = gpt(n_blocks=2, parallel=parallel)
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("h.")}
    for u, src in enumerate([0, 2]):
        state.update({f"h.{u}.{k}": v for k, v in m.h[src].state_dict().items()})
    smaller.load_state_dict(state)
    idx, tgt = tokens()
    with torch.no_grad(), m.ablate({"h.1"}):
        torch.testing.assert_close(m(idx)[0], smaller(idx)[0], rtol=0, atol=0)
    # A shared block's name ablates every application of it.
    rep = gpt(n_blocks=2, block_schedule=[0, 1, 1])
    single = gpt(n_blocks=1)
    single.load_state_dict({k: v for k, v in rep.state_dict().items() if not k.startswith("h.1.")})
    with torch.no_grad(), rep.ablate(["h.1"]):
        torch.testing.assert_close(rep(idx)[0], single(idx)[0], rtol=0, atol=0)


def test_resnet_disabled_block_equals_the_model_without_it():
    m = resnet(variant="post", blocks_per_stage=[1, 2])
    smaller = resnet(variant="post", blocks_per_stage=[1, 1])
    state = {k.replace("heads.3", "heads.2"): v for k, v in m.state_dict().items() if not k.startswith("blocks.2")}
    smaller.load_state_dict(state)
    x, _ = images()
    with torch.no_grad():
        full = m(x)[0]
        for name in ("blocks.2", "blocks.2.branch"):
            with m.ablate([name]):
                torch.testing.assert_close(m(x)[0], smaller(x)[0], rtol=0, atol=0)
        assert not torch.allclose(m(x)[0], smaller(x)[0])
        with m.ablate(["blocks.1"]):  # projection block: the shortcut still carries the stream
            assert m(x)[0].shape == full.shape and not torch.allclose(m(x)[0], full)


def test_unknown_ablation_names_are_rejected():
    m = gpt()
    with pytest.raises(ConfigError, match="unknown unit 'h.9'"):
        with m.ablate(["h.9"]):
            pass
    m.disabled = {"h.0.ffn"}
    with pytest.raises(ConfigError, match="unknown unit 'h.0.ffn'"):
        m(tokens()[0])
    with pytest.raises(ConfigError, match="unknown unit"):
        resnet().ablate(["layer1.0"]).__enter__()


# ---- units -------------------------------------------------------------------------------------
def _covered(model, kind, excluded):
    units = model.units(kind)
    ids = [id(p) for u in units for p in u.params]
    assert len(ids) == len(set(ids)), "a parameter is listed twice"
    expected = {id(p) for n, p in model.named_parameters() if not n.startswith(excluded)}
    assert set(ids) == expected
    return units


@pytest.mark.parametrize("kw", [dict(n_blocks=3), dict(n_blocks=3, parallel=True),
                                dict(n_blocks=3, block_schedule=[0, 1, 2, 2, 2], tie_embeddings=False)],
                         ids=["sequential", "parallel", "shared"])
def test_gpt_units_cover_every_block_parameter_once(kw):
    m = gpt(**kw)
    heads = ("wte", "wpe", "ln_f", "lm_head")
    branches = _covered(m, "branch", heads)
    blocks = _covered(m, "block", heads)
    assert [u.name for u in blocks] == ["h.0", "h.1", "h.2"]
    assert [u.name for u in branches] == ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp", "h.2.attn", "h.2.mlp"]
    assert branches[0].params[0] is m.h[0].ln_1.weight and branches[0].outputs == [m.h[0].attn]
    assert branches[5].outputs == [m.h[2].mlp] and blocks[2].outputs == [m.h[2].attn, m.h[2].mlp]
    if kw.get("block_schedule"):
        assert blocks[2].applications == (3, 4, 5) and blocks[2].index == 3
        assert branches[4].applications == (5, 7, 9) and branches[5].applications == (6, 8, 10)
    else:
        assert [u.applications for u in branches] == [(i,) for i in range(1, 7)]
    assert [u.index for u in branches] == [u.applications[0] for u in branches]


def test_resnet_units_cover_every_block_parameter_once():
    m = resnet(blocks_per_stage=[1, 2], supervision="all")
    stem_heads = ("stem", "heads")
    blocks = _covered(m, "block", stem_heads)
    # the projection shortcut is on the order-0 path: in its block unit, in no branch unit
    branches = _covered(m, "branch", stem_heads + ("blocks.1.shortcut",))
    assert [u.name for u in branches] == ["blocks.0.branch", "blocks.1.branch", "blocks.2.branch"]
    assert [u.name for u in blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert branches[1].outputs == [m.blocks[1].branch] and blocks[2].applications == (3,)
    with pytest.raises(ConfigError, match="'branch' or 'block'"):
        m.units("layer")


def test_layouts():
    expected = Layout(tuple(Block(2, True, f"h.{u}") for u in range(3)), (1, 2, 3))
    assert gpt(n_blocks=3, parallel=True, supervision="all").layout() == expected
    lay = resnet(blocks_per_stage=[1, 2], supervision=[1]).layout()
    assert lay.N == 3 and lay.B == 3 and lay.supervision == (1, 3) and lay.shared == ()
    assert [b.name for b in lay.blocks] == ["blocks.0", "blocks.1", "blocks.2"]


# ---- determinism -------------------------------------------------------------------------------
def test_same_seed_same_model_and_loss():
    idx, tgt = tokens()
    a, b, c = gpt(seed=3), gpt(seed=3), gpt(seed=4)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert torch.equal(a(idx, tgt)[1], b(idx, tgt)[1])
    assert not torch.equal(a(idx, tgt)[1], c(idx, tgt)[1])
    x, y = images()
    assert torch.equal(resnet(seed=3)(x, y)[1], resnet(seed=3)(x, y)[1])


# ---- norm placements (GPTConfig.norm) ------------------------------------------------------------
VARIANTS = {
    "pre": NormConfig(),
    "post": NormConfig(placement="post"),
    "peri": NormConfig(placement="peri"),
    "ln-scaling": NormConfig(depth_scaling=True),
    "mix": NormConfig(placement="mix", mix_post_fraction=0.5),
    "deepnorm": NormConfig(placement="post", alpha=1.7),
    "pre-alpha": NormConfig(alpha=0.8),
    "embedding-scale": NormConfig(embedding_scale=4.0),
}


def _ln(ln, x):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _attn(att, x):
    n, T, _ = x.shape
    q, k, v = (F.linear(x, att.c_attn.weight, att.c_attn.bias)
               .view(n, T, 3, att.n_head, att.head_dim).permute(2, 0, 3, 1, 4))
    scores = q @ k.transpose(-1, -2) / math.sqrt(att.head_dim)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, T, -1)
    return F.linear(y, att.c_proj.weight, att.c_proj.bias)


def _mlp(mlp, x):
    return F.linear(F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias)


def reference_logits(m, idx, nc):
    """The norm placements written out by hand from the papers' equations (sequential blocks)."""
    x = (m.wte.weight[idx] + m.wpe.weight[: idx.shape[1]]) * nc.embedding_scale
    B = len(m.schedule)
    for a, u in enumerate(m.schedule, start=1):
        blk = m.h[u]
        post = nc.placement == "post" or (nc.placement == "mix" and a <= int(nc.mix_post_fraction * B))
        s = 1 / math.sqrt(a) if nc.depth_scaling else 1.0
        for ln, f, name in ((blk.ln_1, _attn, "attn"), (blk.ln_2, _mlp, "mlp")):
            module = getattr(blk, name)
            if post:  # x_i = LN(alpha x_{i-1} + f(x_{i-1}))
                x = _ln(ln, nc.alpha * x + f(module, x))
                continue
            y = f(module, s * _ln(ln, x))
            if nc.placement == "peri":
                y = _ln(blk.ln_1o if name == "attn" else blk.ln_2o, y)
            x = nc.alpha * x + y
    return F.linear(_ln(m.ln_f, x), m.lm_head.weight)


@pytest.mark.parametrize("nc", VARIANTS.values(), ids=VARIANTS.keys())
def test_norm_variant_forward_matches_hand_reference_and_trains(nc):
    m = gpt(n_blocks=3, norm=nc)
    with torch.no_grad():  # non-trivial norm affines, so a misplaced norm shows
        for name, p in m.named_parameters():
            if "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    idx, tgt = tokens()
    logits, loss = m(idx, tgt)
    torch.testing.assert_close(logits, reference_logits(m, idx, nc), rtol=1e-5, atol=1e-5)
    before = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()) if a.dim() > 1)
    assert torch.isfinite(m(idx, tgt)[1])
    assert m.layout() == gpt(n_blocks=3).layout()  # the wiring, hence the fan-in, is unchanged


@pytest.mark.parametrize("nc", VARIANTS.values(), ids=VARIANTS.keys())
def test_norm_variants_build_parallel_deep_and_shared(nc):
    for kw in (dict(parallel=True), dict(supervision="all"), dict(block_schedule=[0, 1, 1])):
        logits, loss = gpt(norm=nc, **kw)(*tokens())
        assert logits.shape == (3, 8, 11) and torch.isfinite(loss)


def test_default_norm_is_todays_pre_ln_bit_for_bit():
    idx, tgt = tokens()
    ref = gpt(seed=5)
    for nc in (None, NormConfig()):
        m = gpt(seed=5, norm=nc)
        assert torch.equal(m(idx, tgt)[0], ref(idx, tgt)[0])
    # the general path (taken when branches are tapped) computes the same numbers as the fast path
    with ref.tap_branches() as taps:
        tapped = ref(idx, tgt)[0]
    assert torch.equal(tapped, ref(idx, tgt)[0]) and len(taps) == ref.layout().N
    torch.testing.assert_close(ref(idx)[0], reference_logits(ref, idx, NormConfig()), rtol=1e-5, atol=1e-5)


def test_norm_field_leaves_existing_config_hashes_alone():
    cfg = GPTConfig.tiny()
    assert "norm" not in to_dict(cfg)
    assert config_hash(cfg) == "01a49836f9af"  # GPTConfig.tiny() before GPTConfig.norm existed
    post = GPTConfig.tiny(norm=NormConfig(placement="post"))
    assert to_dict(post)["norm"]["placement"] == "post" and config_hash(post) != config_hash(cfg)
    assert from_dict(GPTConfig, to_dict(post)) == post
    assert build(GPTConfig, overrides=["norm.placement=mix", "norm.alpha=2.0"]).norms() == \
        NormConfig(placement="mix", alpha=2.0)


@pytest.mark.parametrize("kw, message", [
    pytest.param(dict(placement="sandwich"), "norm.placement", id="placement"),
    pytest.param(dict(mix_post_fraction=1.5), "mix_post_fraction", id="mix-fraction"),
    pytest.param(dict(alpha=0.0), "norm.alpha", id="alpha"),
    pytest.param(dict(embedding_scale=-1.0), "embedding_scale", id="embedding-scale"),
    pytest.param(dict(depth_scaling=1), "depth_scaling", id="depth-scaling"),
])
def test_norm_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        NormConfig(**kw)
    with pytest.raises(ConfigError, match=message.split(".")[-1]):
        from_dict(GPTConfig, {"norm": kw})


def test_mix_ln_switches_from_post_to_pre():
    nc = NormConfig(placement="mix", mix_post_fraction=0.25)
    assert [nc.mode(a, 8) for a in range(1, 9)] == ["post"] * 2 + ["pre"] * 6
    assert NormConfig(depth_scaling=True).pre_scale(4) == 0.5


def test_peri_ln_units_cover_the_output_norms_and_hook_them():
    m = gpt(n_blocks=2, norm=NormConfig(placement="peri"))
    heads = ("wte", "wpe", "ln_f", "lm_head")
    branches = _covered(m, "branch", heads)
    blocks = _covered(m, "block", heads)
    assert branches[0].outputs == [m.h[0].ln_1o] and blocks[1].outputs == [m.h[1].ln_1o, m.h[1].ln_2o]


def test_tapped_branches_read_and_write_the_stream():
    m = gpt(n_blocks=2, block_schedule=[0, 1, 1])
    with m.tap_branches() as taps:
        m(tokens()[0])
    assert [t.index for t in taps] == list(range(1, 7))
    assert [t.unit for t in taps] == ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp", "h.1.attn", "h.1.mlp"]
    for a, c in zip(taps, taps[1:]):
        torch.testing.assert_close(a.x + a.y, c.x, rtol=0, atol=0)
    assert m._taps is None
