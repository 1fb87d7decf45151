"""Norm gains: the accounts with norms on the wiring against autograd, the norms' measured gains
against their exact Jacobians, gains on held-out batches during training, and `gfa taper --predict`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import gains as G
from gfa_theory.models import GPT, GPTConfig, ResNet, ResNetConfig
from gfa_theory.models.gpt import NormConfig
from gfa_theory.theory import gains
from gfa_theory.theory import path_counts as paths
from gfa_theory.theory.layout import Layout
from test_paths import orthogonal_jacobians

pytestmark = pytest.mark.usefixtures("one_thread")
values = st.floats(0.05, 3.0, allow_nan=False, allow_infinity=False)


def _close(a, c, rel=1e-9):
    assert len(a) == len(c)
    for x, y in zip(a, c):
        assert abs(x - y) <= rel * max(1.0, abs(x)), (list(a), list(c))


def _wiring(data, layout):
    def draw(n, label):
        return data.draw(st.lists(values, min_size=n, max_size=n), label=label)

    P, N, H = layout.n_positions, layout.N, len(layout.supervision)
    return draw(N, "inner"), {"identity": draw(P, "identity"), "norms": draw(P, "norms"),
                              "heads": draw(H, "heads"), "pre": draw(N, "pre"), "out": draw(N, "out")}


# ---- the accounts with norm gains against autograd on surrogates ---------------------------------
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_norm_wired_product_and_path_orders_match_autograd(layouts, data):
    """Surrogate: branch ``out_i (g_i pre_i x)``, position ``n_p (a_p x + sum)``, head ``h_m x``."""
    layout = data.draw(layouts(max_blocks=8, max_branches=3), label="layout")
    g, w = _wiring(data, layout)
    counted = paths.gain_paths(layout, g, **w)
    eff = gains.effective_branch_gains(g, pre=w["pre"], out=w["out"])
    theory_w = {k: w[k] for k in ("norms", "heads", "out")}
    _close(gains.full_product(layout, eff, w["identity"], **theory_w), counted.product)
    for k in range(0, min(counted.max_order, 4) + 1):
        _close(gains.path_sums(layout, eff, k, w["identity"], **theory_w), counted.up_to(k))


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_norm_wired_expressions_evaluate_to_the_numeric_recursion(layouts, data):
    layout = data.draw(layouts(max_blocks=4, max_branches=2), label="layout")
    g, w = _wiring(data, layout)
    sym = {"identity": gains.gain_symbols(layout.n_positions, "a"), "norms": gains.gain_symbols(layout.n_positions, "n"),
           "heads": gains.gain_symbols(len(layout.supervision), "h"), "out": gains.gain_symbols(layout.N, "o")}
    allsyms = [*gains.gain_symbols(layout.N), *sym["identity"], *sym["norms"], *sym["heads"], *sym["out"]]
    allvals = [*g, *w["identity"], *w["norms"], *w["heads"], *w["out"]]
    num = {k: w[k] for k in sym}
    k = data.draw(st.integers(0, 2), label="order")
    _close(gains.evaluate(gains.path_sum_expressions(layout, k, **sym), allvals, allsyms),
           gains.path_sums(layout, g, k, **num))
    _close(gains.evaluate(gains.full_product_expressions(layout, **sym), allvals, allsyms),
           gains.full_product(layout, g, **num))
    sym_w = {k2: v for k2, v in sym.items() if k2 != "identity"}
    num_w = {k2: v for k2, v in num.items() if k2 != "identity"}
    _close(gains.evaluate(gains.orthogonal_expressions(layout, identity=sym["identity"], **sym_w), allvals, allsyms),
           gains.orthogonal_limit(layout, g, identity=num["identity"], **num_w))


def _orthogonal_net(layout, g, a, n, h):
    """Linear net whose order-1 contributions are orthogonal (as in test_paths), with skip gains
    ``a_p``, a norm gain ``n_p`` after each sum and head gains ``h_m``: autograd's gradient norm at
    each branch output."""
    H, N = len(layout.supervision), layout.N
    D, J, probes = orthogonal_jacobians(layout, g)
    x, loss, p = torch.ones(D, dtype=torch.float64), 0.0, 0
    for b, blk in enumerate(layout.blocks, start=1):
        mine = [br.index for br in layout.branches() if br.block == b]
        ys = []
        for ix in mine:
            y = J[ix - 1] @ x + probes[ix - 1]
            if blk.parallel:
                ys.append(y)
            else:
                p += 1
                x = n[p - 1] * (a[p - 1] * x + y)
        if blk.parallel:
            p += 1
            x = n[p - 1] * (a[p - 1] * x + torch.stack(ys).sum(0))
        if b in layout.supervision:
            m = layout.supervision.index(b)
            loss = loss + h[m] * x[m * (N + 1)]
    return [gr.norm().item() for gr in torch.autograd.grad(loss, probes)]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_orthogonal_limit_with_norms_is_the_gradient_norm_of_an_orthogonal_net(layouts, data):
    layout = data.draw(layouts(max_blocks=8, max_branches=3), label="layout")
    g, w = _wiring(data, layout)
    got = gains.orthogonal_limit(layout, g, identity=w["identity"], norms=w["norms"], heads=w["heads"])
    _close(got, _orthogonal_net(layout, g, w["identity"], w["norms"], w["heads"]))


def test_post_ln_puts_every_path_through_the_norms_it_passes():
    g1, g2 = gains.gain_symbols(2)
    n1, n2 = gains.gain_symbols(2, "n")
    P = gains.full_product_expressions(Layout.sequential(2), norms=[n1, n2])
    assert sp.simplify(P[0] - n1 * n2 * (1 + g2)) == 0 and sp.simplify(P[1] - n2) == 0
    # unit norms give back the plain accounts; a norm before the first branch changes nothing above it
    lay = Layout.transformer(3, supervision="all")
    gv = [0.3, 1.2, 0.7, 2.0, 0.5, 0.9]
    assert gains.full_product(lay, gv, norms=[1.0] * 6).tolist() == gains.full_product(lay, gv).tolist()
    scaled = gains.full_product(lay, gv, norms=[5.0] + [1.0] * 5)
    np.testing.assert_allclose(scaled[1:], gains.full_product(lay, gv)[1:])
    assert scaled[0] == pytest.approx(5.0 * gains.full_product(lay, gv)[0])


@pytest.mark.parametrize("eps", [1e-5, 0.5], ids=["eps_small", "eps_large"])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_layernorm_gain_is_the_exact_rms_singular_value(kind, eps):
    torch.manual_seed(0)
    C = 7
    norm = nn.LayerNorm(C, eps=eps) if kind == "layernorm" else nn.RMSNorm(C, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(C) + 0.5)
    norm = norm.double()
    x = torch.randn(5, C, dtype=torch.float64) * 0.3 + 0.1
    J = torch.autograd.functional.jacobian(norm, x).reshape(5 * C, 5 * C)
    exact = float(J.norm() / np.sqrt(5 * C))
    got = gains.layernorm_gain(x.numpy(), norm.weight.detach().numpy(), eps, centered=kind == "layernorm")
    assert got == pytest.approx(exact, rel=1e-9)

    if eps < 1e-3 and kind == "layernorm":  # about rms(gamma) / RMS of the (centred) input
        C = 64
        x = np.random.default_rng(0).normal(size=(32, C)) * np.linspace(0.1, 2.0, 32)[:, None]
        gamma = np.random.default_rng(1).uniform(0.5, 1.5, C)
        approx = np.sqrt(np.mean(gamma ** 2) * np.mean(1 / x.var(-1)) * (C - 2) / C)
        assert gains.layernorm_gain(x, gamma, eps) == pytest.approx(approx, rel=0.05)


def test_log_profile_error_is_scale_free_and_checked():
    assert gains.log_profile_error([1, 2, 4], [3, 6, 12]) == 0.0
    # flat prediction, target (1, 3): mean-normalized logs log(1/2), log(3/2)
    assert gains.log_profile_error([1, 1], [1, 3]) == pytest.approx(np.sqrt((np.log(0.5) ** 2 + np.log(1.5) ** 2) / 2))
    with pytest.raises(ConfigError):
        gains.log_profile_error([1, 0], [1, 1])


# ---- measured norm gains ----------------------------------------------------------------------
def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)


# (norm config, parallel) -> expected count of each norm quantity for B = 3, all heads supervised
PLACEMENTS = {
    "pre": ({}, False, {"pre_norm_gain": 6, "head_norm_gain": 3}),
    "post": ({"placement": "post"}, False, {"post_norm_gain": 6, "head_norm_gain": 3}),
    "post_parallel": ({"placement": "post"}, True, {"post_norm_gain": 3, "head_norm_gain": 3}),
    "peri": ({"placement": "peri"}, False, {"pre_norm_gain": 6, "out_norm_gain": 6, "head_norm_gain": 3}),
    "mix": ({"placement": "mix", "mix_post_fraction": 0.34}, False,
            {"post_norm_gain": 2, "pre_norm_gain": 4, "head_norm_gain": 3}),
    "deepnorm": ({"placement": "post", "alpha": 2.0}, False, {"post_norm_gain": 6, "head_norm_gain": 3}),
    "ln_scaling": ({"depth_scaling": True}, False, {"pre_norm_gain": 6, "head_norm_gain": 3}),
}


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_gpt_norm_gains_for_every_placement(name):
    norm, parallel, expected = PLACEMENTS[name]
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(n_blocks=3, parallel=parallel, supervision="all",
                               norm=NormConfig(**norm) if norm else None)).eval()
    x, y = _batch()
    inputs = []
    hook = model.ln_f.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
    df = G.measure_gains(model, x, y, probes=16, norms=True)
    hook.remove()
    assert df[df.quantity.isin(G.QUANTITIES)].reset_index(drop=True).equals(G.measure_gains(model, x, y, probes=16))
    extra = df[~df.quantity.isin(G.QUANTITIES)]
    assert extra.groupby("quantity").size().to_dict() == expected
    # a LayerNorm's probe gain is its exact Jacobian's RMS singular value (16 probes: a few %)
    heads = extra[extra.quantity == "head_norm_gain"].value.to_numpy()
    exact = [gains.layernorm_gain(h.double().numpy(), model.ln_f.weight.detach().numpy(), model.ln_f.eps)
             for h in inputs[-3:]]
    np.testing.assert_allclose(heads, exact, rtol=0.05)
    # the accounts: measured gains put where the wiring says (norms=False: the plain accounts)
    layout, means = model.layout(), G.window_means(df)
    g = means["jacobian_gain"].to_numpy()
    identity = None if norm.get("alpha", 1.0) == 1.0 else [norm["alpha"]] * layout.n_positions
    plain = G.predict_profile(model, df, norms=False)
    np.testing.assert_allclose(plain["product"], gains.full_product(layout, g, identity))
    post = means.get("post_norm_gain", pd.Series(dtype=float))
    n = [float(post.get(p, 1.0)) if np.isfinite(post.get(p, np.nan)) else 1.0 for p in range(1, layout.n_positions + 1)]
    out = means.get("out_norm_gain", pd.Series(dtype=float))
    o = [float(out[i]) if i in out.index and np.isfinite(out[i]) else 1.0 for i in range(1, layout.N + 1)]
    wired = G.predict_profile(model, df)
    np.testing.assert_allclose(wired["product"], gains.full_product(
        layout, g, identity, norms=n, heads=means["head_norm_gain"].dropna().to_numpy(), out=o))
    np.testing.assert_allclose(wired["counts"], plain["counts"])


def test_post_ln_norm_gain_is_about_one_over_the_rms_it_normalizes():
    """Post-LN's first norm reads the embedding (std 0.02) plus the first branch: its measured gain
    is its Jacobian's (:func:`layernorm_gain`), about ``sqrt((C-2)/C) / std`` of that sum."""
    x, y = _batch()
    measured = []
    for scale in (1.0, 10.0):
        torch.manual_seed(0)
        model = GPT(GPTConfig.tiny(n_blocks=2, norm=NormConfig(placement="post", embedding_scale=scale))).eval()
        seen = []
        hook = model.h[0].ln_1.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().double()))
        df = G.measure_gains(model, x, y, probes=16, norms=True)
        hook.remove()
        got = df[(df.quantity == "post_norm_gain") & (df["index"] == 1)].value.iat[0]
        h, C = seen[0], model.config.n_embd
        assert got == pytest.approx(gains.layernorm_gain(h.numpy(), model.h[0].ln_1.weight.detach().numpy()),
                                    rel=0.05)
        inv_std = float((1 / h.var(-1, unbiased=False)).mean().sqrt())
        assert got == pytest.approx(inv_std * np.sqrt((C - 2) / C), rel=0.05)
        measured.append(got)
    assert measured[0] > 5 * measured[1]  # a 10x larger embedding: a several-fold smaller gain


@pytest.mark.parametrize("variant", ["preact", "post"])
def test_resnet_norm_calls_match_the_forward(variant):
    torch.manual_seed(0)
    model = ResNet(ResNetConfig.tiny(variant=variant, supervision="all"))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    df = G.heldout_gains(model, [(x, y)], probes=4)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    extra = df[~df.quantity.isin(G.QUANTITIES)]
    assert set(extra[extra.quantity == "skip_gain"]["index"]) == {2}  # the one stage change
    if variant == "post":
        relu = extra[extra.quantity == "post_norm_gain"].value
        assert len(relu) == 3 and ((relu > 0) & (relu <= 1)).all()
        assert set(extra.quantity) == {"skip_gain", "out_norm_gain", "post_norm_gain"}
    else:
        assert set(extra.quantity) == {"skip_gain", "pre_norm_gain", "head_norm_gain"}
    pred = G.predict_profile(model, df)
    assert all(np.all(np.isfinite(v) & (v > 0)) for v in pred.values())
    with model.ablate(["blocks.0"]), pytest.raises(ConfigError, match="ablated"):
        model.norm_calls()


def test_schedule_windows_and_unit_profiles():
    assert G.window_steps(400, 0.0, 4) == [0]
    assert G.window_steps(400, 0.01, 4) == [0, 1, 3, 4]
    assert G.window_steps(400, 1.0, 2) == [0, 399]
    assert G.early_gain_steps(400, (0.0, 0.05), 3) == (0, 10, 20)
    with pytest.raises(ConfigError, match="fraction"):
        G.window_steps(10, 1.5, 2)
    torch.manual_seed(0)
    shared = GPT(GPTConfig.tiny(n_blocks=2, block_schedule=[0, 1, 1]))
    np.testing.assert_allclose(G.unit_profile(shared, [1, 2, 3, 4, 5, 6], "block"), [3, 18])
    np.testing.assert_allclose(G.unit_profile(shared, [1, 2, 3, 4, 5, 6]), [1, 2, 8, 10])


# ---- gains on held-out batches during training (train.heldout_gain_steps) ------------------------
TINY = ["model.n_blocks=2", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
        "train.batch_size=8", "train.steps=8", "train.eval_interval=4", "train.eval_batches=2",
        "train.checkpoint_interval=4", "train.log_interval=2", "train.warmup_steps=2"]


def _tiny(*extra: str):
    from gfa_theory.train.run_config import build_run_config  # noqa: PLC0415

    return build_run_config("gpt", overrides=[*TINY, *extra])


def test_heldout_gain_steps_are_hash_neutral_off_and_checked():
    from gfa_theory.train.run_config import run_key  # noqa: PLC0415

    assert not {"heldout_gain_steps", "heldout_gain_batches"} & set(_tiny().to_dict()["train"])
    assert run_key(_tiny("train.heldout_gain_steps=null")) == run_key(_tiny())
    assert run_key(_tiny("train.heldout_gain_steps=[0,3]")) != run_key(_tiny())
    assert _tiny("train.heldout_gain_steps=[3,0]").train.heldout_gain_steps == (0, 3)
    for bad in ("[]", "[8]", "[-1]", "[1,1]", "[true]", "3"):
        with pytest.raises(ConfigError, match="heldout_gain_steps"):
            _tiny(f"train.heldout_gain_steps={bad}")
    with pytest.raises(ConfigError, match="heldout_gain_batches"):
        _tiny("train.heldout_gain_batches=2")
    with pytest.raises(ConfigError, match="heldout_gain_batches"):
        _tiny("train.heldout_gain_steps=[0]", "train.heldout_gain_batches=0")


def test_heldout_gains_leave_training_unchanged_and_survive_a_resume(tmp_path):
    from gfa_theory.train.loop import HELDOUT_GAINS_FILE, Trainer  # noqa: PLC0415
    from gfa_theory.train.lifecycle import train  # noqa: PLC0415
    from gfa_theory.train.run_config import resolve  # noqa: PLC0415

    on_args = ("train.heldout_gain_steps=[0,2,5]", "train.heldout_gain_batches=1")
    plain = train(_tiny(), tmp_path, progress=False)
    on = train(_tiny(*on_args), tmp_path, progress=False)
    pd.testing.assert_frame_equal(plain.metrics, on.metrics)
    g = pd.read_csv(on.run_dir / HELDOUT_GAINS_FILE)
    assert sorted(g["step"].unique()) == [0, 2, 5]
    assert {"jacobian_gain", "pre_norm_gain", "head_norm_gain"} <= set(g["quantity"])
    pred = G.predict_profile(on.model, g, steps=[0])
    assert set(pred) == set(gains.ACCOUNTS) and all(len(v) == 4 for v in pred.values())
    cfg, data = resolve(_tiny(*on_args))
    whole = Trainer(cfg, data)
    for _ in range(8):
        whole.train_step()
    first = Trainer(cfg, data)
    for _ in range(4):
        first.train_step()
    second = Trainer(cfg, data)
    second.load_state_dict(first.state_dict())
    for _ in range(4):
        second.train_step()
    pd.testing.assert_frame_equal(whole.heldout_gains.to_frame().astype({"step": "int64"}),
                                  second.heldout_gains.to_frame().astype({"step": "int64"}))


# ---- gfa taper --predict --------------------------------------------------------------------
SMALL = ["--blocks", "3", "--n-embd", "32", "--heads", "2", "--d-ff", "64", "--context", "16"]


def _taper(capsys, *args):
    from gfa_theory.cli import main as gfa  # noqa: PLC0415

    rc = gfa(["taper", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_taper_predict_is_deterministic_and_follows_the_predicted_profile(capsys, tmp_path):
    from gfa_theory.methods.taper import PredictConfig, predicted_profile  # noqa: PLC0415

    rc, first, _ = _taper(capsys, "--predict", "--format", "json", *SMALL)
    assert rc == 0
    assert _taper(capsys, "--predict", "--format", "json", *SMALL)[1] == first  # same seed, same plan
    d = json.loads(first)
    profile = predicted_profile(GPTConfig(n_blocks=3, n_embd=32, n_head=2, d_ff=64, block_size=16))
    assert d["config"]["schedule"] == "measured" and d["config"]["profile"] == list(profile)
    assert d["blocks"][0]["multiplier"] == 1.0 and d["params_ratio"] < 1.0
    other = predicted_profile(GPTConfig(n_blocks=3, n_embd=32, n_head=2, d_ff=64, block_size=16),
                              PredictConfig(seed=1))
    assert other != profile
    cfg = tmp_path / "post.json"
    cfg.write_text(json.dumps({"n_blocks": 3, "n_embd": 32, "n_head": 2, "d_ff": 64, "block_size": 16,
                               "norm": {"placement": "post"}}))
    rc, out, _ = _taper(capsys, "--predict", "--model-config", str(cfg), "--format", "json")
    post = predicted_profile(GPTConfig(n_blocks=3, n_embd=32, n_head=2, d_ff=64, block_size=16,
                                       norm=NormConfig(placement="post")))
    assert rc == 0 and json.loads(out)["config"]["profile"] == list(post) != list(profile)


@pytest.mark.parametrize("args, message", [
    (["--predict", "--alpha", "2", *SMALL], "solves alpha"),
    (["--predict", "--schedule", "linear", *SMALL], "conflict"),
    (["--seed", "3", *SMALL], "give --predict"),
    (["--predict", "--predict-batches", "99", *SMALL], "batches"),
    (["--predict"], "--blocks"),
    (["--predict", "--blocks", "600"], "at most 512"),
], ids=["alpha", "schedule", "seed_alone", "batches", "no_sizes", "too_deep"])
def test_taper_predict_refuses_bad_input(capsys, args, message):
    rc, _, err = _taper(capsys, *args)
    assert rc == 2 and message in err and "Traceback" not in err
