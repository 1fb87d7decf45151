"""Branch gains measured on live models (gfa_theory.instrument.gains) against known Jacobians."""
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import gains as G
from gfa_theory.models import GPT, GPTConfig, ResNet, ResNetConfig
from gfa_theory.models.gpt import NormConfig, Tap


class LinearStack(nn.Module):
    """``x_i = x_{i-1} + A_i x_{i-1}``, logits = ``x_N``: every branch Jacobian is a known ``A_i``."""

    def __init__(self, mats: list[torch.Tensor]) -> None:
        super().__init__()
        self.emb = nn.Linear(mats[0].shape[1], mats[0].shape[1], bias=False)
        self.A = [m.double() for m in mats]
        self._taps = None

    @contextmanager
    def tap_branches(self):
        self._taps = []
        try:
            yield self._taps
        finally:
            self._taps = None

    def forward(self, x):
        x = self.emb(x)
        for i, A in enumerate(self.A, start=1):
            y = x @ A.T
            if self._taps is not None:
                self._taps.append(Tap(i, f"A{i}", x, y))
            x = x + y
        return x


def _spectrum_matrix(s, seed):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(len(s), len(s), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(len(s), len(s), generator=g, dtype=torch.float64))
    return U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T


def test_jacobian_gain_converges_to_the_rms_singular_value():
    s = [3.0, 1.0, 0.5, 0.1, 0.0, 2.0]
    A = _spectrum_matrix(s, 0)
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    y = x @ A.T
    true = float(np.sqrt(np.mean(np.square(s))))
    gen = torch.Generator().manual_seed(1)
    assert G.jacobian_gain(y, x, probes=200, generator=gen) == pytest.approx(true, rel=0.03)
    # a rectangular map: ||A||_F / sqrt(dim y)
    R = torch.randn(3, 6, dtype=torch.float64)
    assert G.jacobian_gain(x @ R.T, x, probes=300, generator=gen) == pytest.approx(
        float(R.norm() / np.sqrt(3)), rel=0.03)


def test_measured_gains_of_a_linear_stack_and_the_telescoping_identity():
    spectra = [[2.0, 1.0, 0.5, 0.25], [0.1] * 4, [1.0, 0.0, 0.0, 0.0]]
    model = LinearStack([_spectrum_matrix(s, k) for k, s in enumerate(spectra)]).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (64,))
    df = G.measure_gains(model, x, y, probes=200, step=7)
    got = df[df.quantity == "jacobian_gain"].sort_values("index").value.to_numpy()
    np.testing.assert_allclose(got, [np.sqrt(np.mean(np.square(s))) for s in spectra], rtol=0.05)
    assert set(df.quantity) == set(G.QUANTITIES) and (df.step == 7).all()
    assert sorted(set(df["index"])) == [1, 2, 3] and len(df) == 3 * len(G.QUANTITIES)
    bg = G.branch_gradients(model, x, y)
    g0 = torch.autograd.grad(bg.loss, bg.taps[0].x, retain_graph=True)[0]
    torch.testing.assert_close(g0, bg.identity + sum(bg.contributions))  # exact telescoping
    for t, c, g in zip(bg.taps, bg.contributions, bg.stream_grads):
        torch.testing.assert_close(c, g @ model.A[t.index - 1])  # c_i = J_i^T dL/dy_i


def _gpt(**norm):
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(n_blocks=3, norm=NormConfig(**norm) if norm else None))


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)


def _table(df, q):
    return df[df.quantity == q].sort_values("index").value.to_numpy()


def test_scaling_the_pre_ln_stream_scales_branch_gains_down():
    """The mechanism's premise: a Pre-LN branch is scale-invariant in its input, so J ~ 1/RMS(x)."""
    x, y = _batch()
    c = 10.0
    base = G.measure_gains(_gpt(), x, y, probes=8)
    scaled = G.measure_gains(_gpt(embedding_scale=c), x, y, probes=8)
    ratio = _table(scaled, "jacobian_gain") / _table(base, "jacobian_gain")
    assert ratio[0] == pytest.approx(1 / c, rel=0.03)  # branch 1 reads c * x_0 (up to LN eps)
    np.testing.assert_allclose(ratio, 1 / c, rtol=0.15)  # later streams are mostly c * x_0
    np.testing.assert_allclose(_table(scaled, "stream_rms") / _table(base, "stream_rms"), c, rtol=0.15)
    # whereas a Post-LN branch reads a normalised stream: the embedding scale barely matters
    post = _table(G.measure_gains(_gpt(placement="post"), x, y, probes=8), "jacobian_gain")
    post_scaled = _table(G.measure_gains(_gpt(placement="post", embedding_scale=c), x, y, probes=8),
                         "jacobian_gain")
    assert post_scaled[1:] == pytest.approx(post[1:], rel=0.05)


def test_gpt_gain_table_leaves_training_state_alone():
    model = _gpt()
    x, y = _batch()
    rng = torch.get_rng_state()
    df = G.measure_gains(model, x, y, probes=2, seed=5)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert list(df.columns) == ["step", "unit", "index", "quantity", "value"]
    assert sorted(set(df["index"])) == list(range(1, 7))
    assert list(df[df.quantity == "alignment"].unit) == ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp",
                                                         "h.2.attn", "h.2.mlp"]
    a = _table(df, "alignment")
    assert np.all(np.abs(a) <= 1 + 1e-12)  # cosines, all defined in one stream space
    with model.tap_branches() as taps:
        model(x, y)
    assert _table(df, "stream_rms")[2] == pytest.approx(float(taps[2].x.detach().double().square().mean().sqrt()))
    assert G.measure_gains(model, x, y, probes=2, seed=5).equals(df)  # seeded probes: reproducible


def test_resnet_gains_from_output_module_hooks():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig.tiny()).eval()
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    df = G.measure_gains(model, x, y, probes=2)
    assert sorted(set(df["index"])) == [1, 2, 3]
    finite = df[df.quantity != "alignment"].value
    assert np.isfinite(finite).all() and (finite > 0).all()
    assert np.isnan(_table(df, "alignment")[0])  # stage 1 lives in another space than the output


def test_gain_monitor_samples_steps():
    model = _gpt()
    x, y = _batch()
    mon = G.GainMonitor(model, every=2, probes=1)
    assert mon.to_frame().empty
    assert [mon.maybe(s, x, y) for s in range(5)] == [True, False, True, False, True]
    assert sorted(set(mon.to_frame().step)) == [0, 2, 4]
    with pytest.raises(ConfigError, match="every"):
        G.GainMonitor(model, every=0)
    with pytest.raises(ConfigError, match="probes"):
        G.measure_gains(model, x, y, probes=0)


# ---- gains sampled during training (TrainConfig.gain_every) -----------------------------------
TINY = ["model.n_blocks=3", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
        "train.batch_size=8", "train.steps=12", "train.eval_interval=6", "train.eval_batches=2",
        "train.checkpoint_interval=4", "train.log_interval=3", "train.warmup_steps=2"]


def _tiny(*extra: str):
    from gfa_theory.train.run_config import build_run_config  # noqa: PLC0415

    return build_run_config("gpt", overrides=[*TINY, *extra])


def test_gain_every_is_hash_neutral_off_and_refuses_bad_values():
    from gfa_theory.errors import ConfigError  # noqa: PLC0415
    from gfa_theory.train.run_config import run_key  # noqa: PLC0415

    assert "gain_every" not in _tiny().to_dict()["train"]
    assert run_key(_tiny("train.gain_every=null")) == run_key(_tiny())
    assert run_key(_tiny("train.gain_every=4")) != run_key(_tiny())
    for bad in ("0", "-1", "true"):
        with pytest.raises(ConfigError, match="gain_every"):
            _tiny(f"train.gain_every={bad}")


def test_sampled_gains_leave_training_unchanged_and_survive_a_resume(tmp_path):
    from gfa_theory.train.loop import GAINS_FILE, Trainer  # noqa: PLC0415
    from gfa_theory.train.lifecycle import train  # noqa: PLC0415
    from gfa_theory.train.run_config import resolve  # noqa: PLC0415

    plain = train(_tiny(), tmp_path, progress=False)
    on = train(_tiny("train.gain_every=4"), tmp_path, progress=False)
    pd.testing.assert_frame_equal(plain.metrics, on.metrics)  # measuring does not change what is trained
    g = pd.read_csv(on.run_dir / GAINS_FILE)
    assert sorted(g["step"].unique()) == [0, 4, 8] and set(g["quantity"]) == set(G.QUANTITIES)
    assert len(g[g["step"] == 4]) == 6 * len(G.QUANTITIES)  # 3 blocks = 6 branches
    assert (g[g["quantity"] == "jacobian_gain"]["value"] > 0).all()
    (on.run_dir / GAINS_FILE).unlink()  # a run with gain_every is not complete without its gains
    from gfa_theory.errors import RunStoreError  # noqa: PLC0415

    with pytest.raises(RunStoreError, match="gains.csv"):
        train(_tiny("train.gain_every=4"), tmp_path, progress=False)
    # exact resume: the sampled rows travel in the checkpoint
    cfg, data = resolve(_tiny("train.gain_every=4"))
    whole = Trainer(cfg, data)
    for _ in range(12):
        whole.train_step()
    first = Trainer(cfg, data)
    for _ in range(6):
        first.train_step()
    second = Trainer(cfg, data)
    second.load_state_dict(first.state_dict())
    for _ in range(6):
        second.train_step()
    pd.testing.assert_frame_equal(whole.gains.to_frame().astype({"step": "int64"}),
                                  second.gains.to_frame().astype({"step": "int64"}))


def test_bench_gains_reports_ratios_beside_an_aa_control(capsys):
    import json  # noqa: PLC0415

    from gfa_theory.cli import main as gfa  # noqa: PLC0415

    small = ["--every", "3", "--repeats", "2", "--warmup", "1", "--set", "train.device=cpu", "model.n_blocks=2",
             "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16", "train.batch_size=4"]
    assert gfa(["bench", "gains", "--format", "json", *small]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["overhead_ratio"] > 0 and r["aa_ratio"] > 0 and r["aa_ratio_min"] <= r["aa_ratio"] <= r["aa_ratio_max"]
    assert r["gain_every"] == 3 and r["repeats"] == 2 and r["sample_s"] > 0 and r["probes"] >= 1
    assert gfa(["bench", "gains", "--every", "0"]) == 2
