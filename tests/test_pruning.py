"""CascadeFlow Pruning: physical removal, rankings with known answers, healing, the CLI."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from gfa_theory.errors import ConfigError
from gfa_theory.instrument import importance
from gfa_theory.instrument.evaluation import evaluate
from gfa_theory.instrument.tracking import GradientTracker
from gfa_theory.methods import pruning
from gfa_theory.models import GPT, GPTConfig, ResNet, ResNetConfig
from gfa_theory.models import families as adapters
from gfa_theory.theory.symbolic import analyze

# ---- helpers ---------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(**kw):
    torch.manual_seed(0)
    kw.setdefault("n_blocks", 4)
    return GPT(GPTConfig.tiny(**kw)).eval()


def _resnet(**kw):
    torch.manual_seed(0)
    return ResNet(ResNetConfig.tiny(**kw)).eval()


def _text_batches(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    V, T = model.config.vocab_size, model.config.block_size
    return [(torch.randint(0, V, (4, T), generator=g), torch.randint(0, V, (4, T), generator=g))
            for _ in range(n)]


def _image_batches(model, n=1):
    g = torch.Generator().manual_seed(0)
    c, s = model.config.in_channels, model.config.image_size
    return [(torch.randn(6, c, s, s, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(n)]


def _zero_block(model, u):
    """All parameters of block ``h.u`` zero: it writes exactly nothing to the stream."""
    with torch.no_grad():
        for p in model.h[u].parameters():
            p.zero_()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT trained for a few steps: a finished run directory with tracked gradients."""
    from gfa_theory.train.lifecycle import train
    from gfa_theory.train.run_config import RunConfig, TrainConfig

    cfg = RunConfig("gpt", GPTConfig.tiny(n_blocks=4, block_size=16, n_embd=32, n_head=2, d_ff=64),
                    train=TrainConfig(steps=20, batch_size=8, eval_interval=0, eval_batches=2,
                                      checkpoint_interval=0, warmup_steps=2, series_points=5))
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False)


def _teacher(zero=(2,)):
    """A 4-block GPT whose answer is known: every block writes strongly (``c_proj`` x 50), the
    logits are sharp (``lm_head`` x 100) and the targets are the full model's own predictions,
    so removing any live block costs loss, while the zeroed blocks write exactly nothing."""
    model = _gpt(tie_embeddings=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.mul_(50)
        model.lm_head.weight.mul_(100)
    for u in zero:
        _zero_block(model, u)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, model.config.vocab_size, (8, model.config.block_size), generator=g) for _ in range(2)]
    with torch.no_grad():
        batches = [(x, model(x)[0].argmax(dim=-1)) for x in xs]
    return model, batches


# ---- physical removal ------------------------------------------------------------------------
def test_pruned_gpt_has_exactly_the_kept_blocks_with_their_weights():
    model = _gpt(n_head=[2, 2, 1, 1], d_ff=[32, 16, 16, 8])
    pruned = pruning.prune(model, ["h.1", "h.3"])
    c = pruned.config
    assert (c.n_blocks, c.n_head, c.d_ff) == (2, [2, 1], [32, 16])
    assert [u.name for u in pruned.units("block")] == ["h.0", "h.1"]
    for new, old in ((0, 0), (1, 2)):
        a, b = pruned.h[new].state_dict(), model.h[old].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(model.h) == 4 and model.config.n_blocks == 4  # the original is untouched
    assert pruning.num_params(pruned) < pruning.num_params(model)
    assert not pruned.training  # keeps the original's mode


def _tv_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("family", ["gpt", "resnet", "torchvision"])
def test_removing_nothing_gives_the_same_outputs(family):
    if family == "gpt":
        model = _gpt(supervision="all")
        x = _text_batches(model)[0][0]
    elif family == "resnet":
        model = _resnet(variant="post")
        x = _image_batches(model)[0][0]
    else:
        model = _tv_resnet18()
        x = torch.randn(2, 3, 16, 16)
    pruned = pruning.prune(model, [])
    with torch.no_grad():
        out, ref = pruned(x), model(x)
    out, ref = (out[0], ref[0]) if isinstance(out, tuple) else (out, ref)
    assert torch.equal(out, ref)
    if family != "torchvision":
        assert pruned.config == model.config


# name -> (model builder, blocks to remove, expected number of block applications after)
CASES = {
    "gpt-taper": (lambda: _gpt(n_head=[2, 2, 1, 1], d_ff=[32, 16, 16, 8]), ["h.1", "h.3"], 2),
    "gpt-deep-supervision-list": (lambda: _gpt(supervision=[1, 2]), ["h.0", "h.3"], 2),
    "gpt-parallel-all-heads": (lambda: _gpt(parallel=True, supervision="all"), ["h.2"], 3),
    "gpt-shared-repetition": (lambda: _gpt(n_blocks=3, block_schedule=[0, 1, 2, 2, 1]), ["h.1"], 3),
    "gpt-shared-block-removed": (lambda: _gpt(n_blocks=3, block_schedule=[0, 1, 2, 2]), ["h.2"], 2),
    "resnet-preact-all-heads": (lambda: _resnet(blocks_per_stage=[2, 2, 2], widths=[4, 8, 8],
                                                supervision="all"), ["blocks.1", "blocks.5"], 4),
    "resnet-post-list-heads": (lambda: _resnet(variant="post", blocks_per_stage=[2, 3], supervision=[1, 4]),
                               ["blocks.3", "blocks.4"], 3),
    "resnet-empty-first-stage": (lambda: _resnet(), ["blocks.0"], 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_model_equals_the_ablated_model(case):
    build, remove, B = CASES[case]
    model = build()
    x, y = (_text_batches(model) if isinstance(model, GPT) else _image_batches(model))[0]
    pruned = pruning.prune(model, remove)
    assert pruned.layout().B == B
    with torch.no_grad():
        logits, loss = pruned(x, y, final_only=True)
        with model.ablate(remove):
            ref_logits, ref_loss = model(x, y, final_only=True)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_layout_fan_in_matches_autograd(case):
    build, remove, _ = CASES[case]
    pruned = pruning.prune(build(), remove)
    counted = adapters.module_fan_in(pruned)
    symbolic = analyze(pruned.layout())
    assert [r["fan_in"] for r in counted["branches"]] == symbolic.fan_in
    assert [g["fan_in"] for g in counted["groups"]] == [g.fan_in for g in symbolic.groups]


def test_supervision_follows_surviving_applications():
    model = _gpt(supervision=[2, 4])
    assert pruning.prune(model, ["h.3"]).config.supervised() == [2, 3]  # final head moves to the new last
    assert pruning.prune(model, ["h.0"]).config.supervised() == [1, 3]
    assert pruning.prune(model, ["h.1"]).config.supervised() == [3]  # a head on a removed block goes
    assert pruning.prune(model, ["h.0", "h.1"]).config.supervised() == [2]
    shared = pruning.prune(_gpt(n_blocks=3, block_schedule=[0, 1, 2, 2, 1]), ["h.1"])
    assert shared.config.block_schedule == [0, 1, 1] and shared.layout().shared == ((2, 3),)


def test_resnet_refuses_projection_blocks_and_ranks_only_removable_ones():
    model = _resnet(blocks_per_stage=[2, 2, 2], widths=[4, 8, 8])
    assert pruning.removable_blocks(model) == ["blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    with pytest.raises(ConfigError, match="blocks.2 has a projection shortcut"):
        pruning.prune(model, ["blocks.2"])
    batches = _image_batches(model)
    for method in ("bi", "taylor", "magnitude", "ablation", "last"):
        r = pruning.rank(method, model, batches=batches, k=1)
        assert sorted(r.order) == pruning.removable_blocks(model), method
    assert pruning.rank("last", model).order == ["blocks.5", "blocks.3", "blocks.1", "blocks.0"]
    with pytest.raises(ConfigError, match="no contiguous span of 3 removable"):
        pruning.rank("angular", model, batches=batches, k=3)


def test_torchvision_resnet18_loses_identity_blocks_and_still_runs():
    net = _tv_resnet18()
    assert pruning.removable_blocks(net) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    with pytest.raises(ConfigError, match="projection"):
        pruning.prune(net, ["layer2.0"])
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 7])
    ranking = pruning.rank("bi", net, batches=[(x, y)], k=3)
    assert sorted(ranking.order) == pruning.removable_blocks(net)
    pruned = pruning.prune(net, ["layer1.0", "layer1.1", "layer3.1"])
    assert [len(getattr(pruned, f"layer{s}")) for s in range(1, 5)] == [0, 2, 1, 2]
    assert [len(getattr(net, f"layer{s}")) for s in range(1, 5)] == [2, 2, 2, 2]
    view = adapters.TorchvisionView(net)
    with torch.no_grad(), view.ablate(["blocks.0", "blocks.1", "blocks.5"]):
        ref = view(x)[0]
    torch.testing.assert_close(pruned(x), ref, rtol=0, atol=1e-6)
    counted = adapters.module_fan_in(pruned)
    symbolic = analyze(adapters.module_layout(pruned)).fan_in
    assert [r["fan_in"] for r in counted["branches"]] == symbolic == [5, 4, 3, 2, 1]
    # CascadeFlow straight from a tracker on the torchvision model
    tracker = GradientTracker(net, kind="block")
    torch.nn.functional.cross_entropy(net(x), y).backward()
    tracker.step()
    net.zero_grad(set_to_none=True)
    r = pruning.rank("cascadeflow", net, gradients=tracker, k=2)
    totals = tracker.totals("A", kind="block").set_index("unit")["A"]
    assert r.order == sorted(pruning.removable_blocks(net), key=totals.__getitem__)


# ---- rankings with known answers -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["bi", "angular", "taylor", "magnitude", "ablation"])
def test_a_block_writing_nothing_ranks_least_important(method):
    model, calib = _teacher()
    r = pruning.rank(method, model, batches=calib, k=1)
    assert r.order[0] == "h.2"
    assert r.scores["h.2"] == pytest.approx(0.0, abs=1e-6 if method == "angular" else 1e-9)
    others = [r.scores[n] for n in r.order[1:]]
    assert all(s > 1e-6 for s in others), r.scores


def test_greedy_ablation_rescores_after_each_removal():
    model, calib = _teacher()
    base = importance.evaluate(model, calib)

    def joint_delta(names):
        with model.ablate(names):
            return importance.evaluate(model, calib) - base

    # brute-force SLEB: each step removes the block whose removal, on top of the earlier ones,
    # raises the loss least
    removed, remaining, rounds = [], ["h.0", "h.1", "h.2", "h.3"], []
    for _ in range(3):
        deltas = {u: joint_delta(removed + [u]) for u in remaining}
        pick = min(remaining, key=deltas.get)
        removed.append(pick)
        remaining.remove(pick)
        rounds.append(deltas)
    r = pruning.rank("ablation", model, batches=calib, k=3)
    assert r.order == removed + remaining and removed[0] == "h.2"  # the block writing nothing goes first
    assert [r.scores[u] for u in removed] == pytest.approx([d[u] for d, u in zip(rounds, removed)], abs=1e-9)
    assert r.scores[remaining[0]] == pytest.approx(rounds[-1][remaining[0]], abs=1e-9)
    assert r.cost.forward_passes == (1 + 4 + 3 + 2) * len(calib) and r.cost.backward_passes == 0
    assert r.details["greedy_losses"] == pytest.approx([base + r.scores[u] for u in removed], abs=1e-9)
    # re-scoring matters here: the third pick's score is not its one-shot ablation score
    assert abs(r.scores[removed[2]] - joint_delta([removed[2]])) > 1e-3


def test_angular_removes_the_most_similar_contiguous_span():
    model, calib = _teacher(zero=(1, 2))
    r = pruning.rank("angular", model, batches=calib, k=2)
    assert r.order[:2] == ["h.1", "h.2"] and r.details["span_start"] == 2
    assert r.details["span_distance"] == pytest.approx(0.0, abs=1e-6)
    assert r.cost.forward_passes == 2 * len(calib)  # 1-block scores + the 2-block spans
    with pytest.raises(ConfigError, match="pass k"):
        pruning.rank("angular", model, batches=calib)
    with pytest.raises(ConfigError, match="rank again with k=1"):
        r.lowest(1)
    with pytest.raises(ConfigError, match="applied once"):
        pruning.rank("angular", _gpt(n_blocks=3, block_schedule=[0, 1, 1, 2]), batches=calib, k=1)


def _synthetic_gradients(A, A_rms):
    """A tracker-shaped long frame whose block totals are given; series and branch rows disagree."""
    rows = []
    for b, (a, rms) in enumerate(zip(A, A_rms)):
        for q, v in (("A", a), ("A_rms", rms), ("A_sq", a * a)):
            rows.append({"unit": f"h.{b}", "kind": "block", "index": b + 1, "quantity": q, "step": None, "value": v})
        rows.append({"unit": f"h.{b}", "kind": "block", "index": b + 1, "quantity": "A", "step": 1, "value": -a})
        rows.append({"unit": f"h.{b}.attn", "kind": "branch", "index": 2 * b + 1, "quantity": "A",
                     "step": None, "value": 100.0 - a})
    df = pd.DataFrame(rows)
    df["step"] = df["step"].astype("Int64")
    return df


def test_cascadeflow_ranks_by_the_accumulated_gradient_exactly():
    model = _gpt()
    grads = _synthetic_gradients([3.0, 1.0, 4.0, 2.0], [0.1, 0.4, 0.2, 0.3])
    r = pruning.rank("cascadeflow", model, gradients=grads, k=2)
    assert r.order == ["h.1", "h.3", "h.0", "h.2"]
    assert r.scores == {"h.0": 3.0, "h.1": 1.0, "h.2": 4.0, "h.3": 2.0}
    assert (r.cost.forward_passes, r.cost.backward_passes) == (0, 0)  # no extra pass: that is the point
    assert pruning.rank("cascadeflow", model, gradients=grads, quantity="A_rms").order == ["h.0", "h.2", "h.3", "h.1"]
    pruned, ranking = pruning.cascadeflow_prune((model, grads), k=2)
    assert ranking.lowest(2) == ["h.1", "h.3"]
    assert torch.equal(pruned.h[1].mlp.c_fc.weight, model.h[2].mlp.c_fc.weight)
    with pytest.raises(ConfigError, match="pass gradients"):
        pruning.rank("cascadeflow", model)
    with pytest.raises(ConfigError, match="train.track=block"):
        pruning.rank("cascadeflow", model, gradients=grads[grads.kind == "branch"])
    with pytest.raises(ConfigError, match="several runs"):
        pruning.rank("cascadeflow", model, gradients=pd.concat([grads, grads]))


def test_cascadeflow_ranks_by_every_tracker_total():
    """Every accumulated proxy the tracker records ranks the blocks: A, A_rms, A_sq, A_stream and the
    opt-in G_norm, noise_floor, U, displacement, each exactly by its own totals."""
    from gfa_theory.instrument.tracking import GradientTracker

    torch.manual_seed(0)
    model = _gpt()
    tracker = GradientTracker(model, kind="block", stream=True, accumulate=True, track_updates=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(4):
        x = torch.randint(0, 11, (4, 8))
        opt.zero_grad()
        model(x, x)[1].backward()
        tracker.step()
        tracker.before_update()
        opt.step()
        tracker.after_update()
    grads = tracker.to_frame()
    assert set(pruning.GRADIENT_QUANTITIES) == {"A", "A_rms", "A_sq", "A_stream", "G_norm", "noise_floor", "U",
                                                "displacement"}
    orders = set()
    for q in pruning.GRADIENT_QUANTITIES:
        totals = tracker.totals(q, kind="block").set_index("unit")[q]
        r = pruning.rank("cascadeflow", model, gradients=grads, quantity=q)
        assert r.order == list(totals.sort_values(kind="stable").index), q
        assert r.scores == pytest.approx(totals.to_dict()) and r.details == {"quantity": q}
        orders.add(tuple(r.order))
    assert len(orders) > 1  # the proxies are different signals, not one order relabelled


def test_cascadeflow_missing_quantity_names_what_the_run_has():
    grads = _synthetic_gradients([3.0, 1.0, 4.0, 2.0], [0.1, 0.4, 0.2, 0.3])
    with pytest.raises(ConfigError, match=r"no block total 'G_norm' \(it has: A, A_sq, A_rms;"):
        pruning.rank("cascadeflow", _gpt(), gradients=grads, quantity="G_norm")
    with pytest.raises(ConfigError, match="unknown gradient quantity 'numel'"):
        pruning.rank("cascadeflow", _gpt(), gradients=grads, quantity="numel")


def test_cascadeflow_prune_reads_a_run_directory(trained):
    pruned, ranking = pruning.cascadeflow_prune(trained.run_dir, k=1, quantity="A_rms")
    g = trained.gradients
    totals = g[(g.kind == "block") & (g.quantity == "A_rms") & g.step.isna()].set_index("unit")["value"]
    assert ranking.order == list(totals.sort_values(kind="stable").index)
    assert pruned.config.n_blocks == 3


def test_last_and_random_rankings():
    model = _gpt(n_blocks=6)
    assert pruning.rank("last", model).order == [f"h.{u}" for u in range(5, -1, -1)]
    a, b = pruning.rank("random", model, seed=3), pruning.rank("random", model, seed=3)
    assert a.order == b.order and a.scores == b.scores and a.details == {"seed": 3}
    assert len({tuple(pruning.rank("random", model, seed=s).order) for s in range(5)}) > 1


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda m: pruning.rank("sparsegpt", m), "unknown pruning method", id="method"),
    pytest.param(lambda m: pruning.rank("last", m, k=4), "k must be an integer in 0..3", id="k-too-large"),
    pytest.param(lambda m: pruning.rank("last", m, k=-1), "k must be", id="k-negative"),
    pytest.param(lambda m: pruning.rank("bi", m), "calibration data", id="no-batches"),
    pytest.param(lambda m: pruning.prune(m, ["h.7"]), "unknown block 'h.7'", id="unknown-block"),
    pytest.param(lambda m: pruning.prune(m, ["h.1", "h.1"]), "listed twice", id="duplicate"),
    pytest.param(lambda m: pruning.prune(m, ["h.0", "h.1", "h.2", "h.3"]), "at least one", id="all-blocks"),
    pytest.param(lambda m: pruning.prune(torch.nn.Linear(2, 2), []), "pruning supports", id="family"),
])
def test_user_mistakes_raise_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call(_gpt())


# ---- evaluation and healing ------------------------------------------------------------------------
def test_evaluate_is_the_token_weighted_loss_and_accuracy():
    model = _gpt()
    batches = _text_batches(model, n=2)
    ev = evaluate(model, batches)
    with torch.no_grad():
        logits = torch.cat([model(x)[0] for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert ev.loss == pytest.approx(float(loss), rel=1e-5)
    assert ev.perplexity == pytest.approx(float(loss.exp()), rel=1e-5)
    assert ev.accuracy == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert ev.count == y.numel()


def test_heal_is_seeded_deterministic_and_fits_its_batches():
    model = _gpt(dropout=0.1)
    batches = _text_batches(model, n=1)
    a, b = pruning.prune(model, ["h.2"]), pruning.prune(model, ["h.2"])
    before = evaluate(a, batches).loss
    rng = torch.get_rng_state()
    losses = pruning.heal(a, batches, steps=6, lr=3e-3, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert pruning.heal(b, batches, steps=6, lr=3e-3, seed=1) == losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert evaluate(a, batches).loss < before
    assert not a.training
    with pytest.raises(ConfigError, match="ran out"):
        pruning.heal(a, iter(batches), steps=2)


# ---- CLI ---------------------------------------------------------------------------------------------
def _gfa(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only contend on shared CPUs
    return subprocess.run([sys.executable, "-m", "gfa_theory.cli", "prune", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_prunes_heals_and_writes_a_rebuildable_checkpoint(trained, tmp_path):
    out = tmp_path / "pruned"
    res = _gfa(trained.run_dir, "--method", "cascadeflow", "-k", 1, "--out", out, "--heal-steps", 2,
               "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report == json.loads((out / "evaluation.json").read_text())
    expected = pruning.rank("cascadeflow", trained.model, gradients=trained.gradients, k=1)
    assert report["removed"] == expected.lowest(1) and report["ranking"]["order"] == expected.order
    assert report["source_run"] == trained.run_dir.name and report["blocks"] == {"before": 4, "after": 3}
    assert report["cost"]["forward_passes"] == 0 and report["params"]["after"] < report["params"]["before"]
    assert len(report["heal"]["losses"]) == 2 and report["versions"]["gfa_theory"]
    from gfa_theory.train.data import load_data, run_eval_batches

    held_out = list(run_eval_batches(load_data(trained.config.data), trained.config))
    rebuilt = pruning.load_pruned(out)
    assert rebuilt.config.n_blocks == 3
    assert evaluate(rebuilt, held_out).loss == pytest.approx(report["after_heal"]["loss"], abs=1e-6)
    assert evaluate(trained.model, held_out).loss == pytest.approx(report["before"]["loss"], abs=1e-6)

    table = _gfa(trained.run_dir, "--method", "bi", "-k", 2, "--out", tmp_path / "bi", "--calib-batches", 2,
                 cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "removed" in table.stdout and "after" in table.stdout
    assert json.loads((tmp_path / "bi" / "evaluation.json").read_text())["cost"]["forward_passes"] == 2

    # any tracker total the run kept ranks: here the stream gradient A_stream
    stream = _gfa(trained.run_dir, "--method", "cascadeflow", "--quantity", "A_stream", "-k", 1, "--out",
                  tmp_path / "stream", "--format", "json", cwd=tmp_path)
    assert stream.returncode == 0, stream.stderr
    expected = pruning.rank("cascadeflow", trained.model, gradients=trained.gradients, quantity="A_stream")
    got = json.loads(stream.stdout)
    assert got["quantity"] == "A_stream" and got["ranking"]["order"] == expected.order


@pytest.mark.parametrize("case", ["missing", "incomplete", "k-too-large", "k-negative", "method", "quantity"])
def test_cli_errors_are_one_line_with_exit_2(case, trained, tmp_path):
    run_dir, k, method, extra = trained.run_dir, 1, "last", []
    if case == "missing":
        run_dir = tmp_path / "nope"
    elif case == "incomplete":
        run_dir = tmp_path / "partial"
        shutil.copytree(trained.run_dir, run_dir)
        (run_dir / "DONE").unlink()
    elif case == "k-too-large":
        k = 4
    elif case == "k-negative":
        k = -1
    elif case == "quantity":  # a proxy the run's tracker did not keep: named with what it has
        method, extra = "cascadeflow", ["--quantity", "G_norm"]
    else:
        method = "sparsegpt"
    res = _gfa(run_dir, "--method", method, "-k", k, "--out", tmp_path / "out", *extra, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gfa: error:"), res.stderr
    if case == "quantity":
        assert "no block total 'G_norm' (it has: A, A_sq, A_rms, A_stream;" in lines[0], lines[0]
    assert not (tmp_path / "out" / "evaluation.json").exists()
