"""Every Hugging Face decoder family of the registry, end to end on tiny random-init models
(grouped-query attention; sliding-window layers where the family has them; nothing downloaded):
autograd fan-in on the family's own wiring, ``gfa prune`` of two layers (the first and a middle
one) written with ``save_pretrained``, reloaded with ``AutoModelForCausalLM`` and run with and
without the KV cache, and the Trainer callback's pre-clip ``A``."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")

from gfa_theory.cli import main  # noqa: E402
from gfa_theory.errors import ConfigError  # noqa: E402
from gfa_theory.methods.pruning import prune  # noqa: E402
from gfa_theory.models.adapters_hf import DECODER_FAMILIES, DecoderFamily, HFDecoderAdapter  # noqa: E402
from gfa_theory.models.families import (  # noqa: E402
    find_adapter,
    get_units,
    hf_families,
    module_fan_in,
    module_layout,
)
from gfa_theory.theory import symbolic  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

V, WINDOW = 64, 4  # prompts and generations run past the sliding window
COMMON = dict(num_hidden_layers=4, hidden_size=16, intermediate_size=32, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
SLIDING = {"qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2),
           "qwen3": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2, head_dim=4),
           "mistral": dict(sliding_window=WINDOW),
           "gemma2": dict(sliding_window=WINDOW, head_dim=4),
           "gemma3": dict(sliding_window=WINDOW, head_dim=4,
                          layer_types=["sliding_attention", "full_attention"] * 2),
           "phi3": dict(sliding_window=WINDOW),
           "llama": {}, "olmo2": {}}
FAMILIES = [f.key for f in DECODER_FAMILIES]
REMOVE = (0, 2)  # the first layer and a middle one


def _config(key: str):
    family = next(f for f in DECODER_FAMILIES if f.key == key)
    return getattr(transformers, family.config_class)(**COMMON, **SLIDING[key])


def _model(key: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(_config(key)).eval()


def _ids(n: int = 12):
    return torch.randint(3, V, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("key", FAMILIES)
def test_family_prunes_reloads_and_generates(key, tmp_path, capsys):
    model = _model(key)
    adapter = find_adapter(model)
    assert adapter.name == f"hf-{key}"
    counted = module_fan_in(model)  # the layout checked on the family's own wiring
    assert [b["fan_in"] for b in counted["branches"]] == symbolic.fan_in(module_layout(model)) == [8, 7, 6, 5, 4, 3, 2, 1]
    with torch.no_grad():  # the layers to remove have the smallest weights: --method magnitude picks them
        for k in REMOVE:
            for p in model.model.layers[k].parameters():
                p.mul_(0.25)
    src, out = tmp_path / "src", tmp_path / "pruned"
    model.save_pretrained(src)
    assert main(["prune", str(src), "--method", "magnitude", "-k", "2", "--out", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    removed = [f"model.layers.{k}" for k in REMOVE]
    assert sorted(report["removed"]) == removed and report["model_name"] == f"hf-{key}"

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    cfg, old = reloaded.config, model.config
    assert cfg.num_hidden_layers == 2 and len(reloaded.model.layers) == 2
    keep = [k for k in range(4) if k not in REMOVE]
    if getattr(old, "layer_types", None) is not None:
        assert cfg.layer_types == [old.layer_types[k] for k in keep]
    if getattr(old, "max_window_layers", None) is not None:  # layers 0, 1 full: only layer 1 stays of them
        assert cfg.max_window_layers == 1
    assert sorted({m.layer_idx for m in reloaded.modules() if hasattr(m, "layer_idx")}) == [0, 1]
    expected = prune(model, report["removed"]).eval()
    view, _ = find_adapter(model).scoring_view(model)
    x = _ids()
    with torch.no_grad():
        got = reloaded(x).logits
        torch.testing.assert_close(got, expected(x).logits, rtol=0, atol=1e-6)
        with view.ablate([f"blocks.{k}" for k in REMOVE]):  # an independent removal: the layers skipped
            torch.testing.assert_close(got, view(x)[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, model(x).logits)
        prompt = x[:, :WINDOW + 1]
        cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (2, WINDOW + 7) and torch.equal(cached, uncached)


@pytest.mark.parametrize("key", FAMILIES)
def test_callback_records_pre_clip_A(key, tmp_path):
    from transformers import Trainer, TrainingArguments

    from gfa_theory.integrations.hf import GradientFanInCallback
    from gfa_theory.train.store import read_gradients

    model = _model(key).train()
    start = copy.deepcopy(model)
    x = torch.randint(3, V, (4, 10), generator=torch.Generator().manual_seed(2))
    data = [{"input_ids": r, "labels": r} for r in x]
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to="none",
                             save_strategy="no", use_cpu=True, max_grad_norm=1e-3, disable_tqdm=True,
                             learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    GradientFanInCallback().attach(trainer)
    trainer.train()
    A = read_gradients(tmp_path).query("quantity == 'A' and step.isna()")
    start(input_ids=x, labels=x).loss.backward()  # the step's gradient, before any clipping
    for kind in ("block", "branch"):
        units = get_units(start, kind)
        assert sorted(A.query("kind == @kind")["unit"]) == sorted(u.name for u in units)
        for u in units:
            want = float(torch.sqrt(sum(p.grad.double().square().sum() for p in u.params)))
            got = float(A.query("kind == @kind and unit == @u.name")["value"].iloc[0])
            assert want > 1e-3 and got == pytest.approx(want, rel=1e-4), u.name  # far above the clip


@pytest.mark.parametrize("key, attn, mlp", [
    ("llama", {"input_layernorm"}, {"post_attention_layernorm"}),
    ("gemma2", {"input_layernorm", "post_attention_layernorm"}, {"pre_feedforward_layernorm", "post_feedforward_layernorm"}),
    ("olmo2", {"post_attention_layernorm"}, {"post_feedforward_layernorm"}),
], ids=["pre-ln", "sandwich", "post-branch"])
def test_each_branch_unit_holds_its_own_norms(key, attn, mlp):
    model = _model(key)
    owner = {id(p): n for n, p in model.named_parameters()}
    units = {u.name: u for u in get_units(model, "branch")}

    def layer_norms(unit):  # the layer's own norms (not q_norm / k_norm inside attention)
        names = (owner[id(p)].removeprefix("model.layers.0.") for p in unit.params)
        return {n.split(".")[0] for n in names if n.count(".") == 1 and n.split(".")[0].endswith("norm")}

    assert layer_norms(units["model.layers.0.self_attn"]) == attn
    assert layer_norms(units["model.layers.0.mlp"]) == mlp
    out = units["model.layers.0.self_attn"].outputs[0]  # the branch's write to the stream
    assert out is getattr(model.model.layers[0], "post_attention_layernorm" if key != "llama" else "self_attn")


def test_unsupported_and_look_alike_models_are_refused_in_one_line():
    from gfa_theory.integrations.recording import tracked_model

    moe = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2MoeConfig(
        num_hidden_layers=2, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_experts=2,
        num_experts_per_tok=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=V))
    for model in (moe, transformers.AutoModelForCausalLM.from_config(transformers.OPTConfig(
            num_hidden_layers=2, hidden_size=16, ffn_dim=32, num_attention_heads=2, vocab_size=V,
            word_embed_proj_dim=16))):
        with pytest.raises(ConfigError) as err:
            tracked_model(model)
        msg = str(err.value)
        assert "\n" not in msg and all(f"hf-{k}" in msg for k in FAMILIES), msg
    # a Gemma 2 layer read with Llama's norm placement would miscount its post-norms: not matched
    wrong = HFDecoderAdapter(DecoderFamily("x", "x", ("gemma2",), "Gemma2Config", "Gemma2ForCausalLM"))
    assert not wrong.matches(_model("gemma2")) and find_adapter(_model("gemma2")).name == "hf-gemma2"


def test_readme_lists_the_registrys_hugging_face_families():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"<!-- hf-families -->\n(.*?)\n<!-- /hf-families -->", text, flags=re.DOTALL)
    assert listed, "README has no <!-- hf-families --> list"
    rows = re.findall(r"^- (.+?) \(`(hf:[a-z0-9]+)`\)", listed.group(1), flags=re.MULTILINE)
    assert [(spec, label) for label, spec in rows] == hf_families()
    import argparse

    from gfa_theory.cli import fanin

    group = argparse.ArgumentParser().add_mutually_exclusive_group()
    fanin.add_source_arguments(group)  # its help names every family without importing the registry
    help_text = next(a.help for a in group._group_actions if a.dest == "model")
    assert all(spec in help_text for spec, _ in hf_families())


# ---- gfa prune HF_DIR as a practitioner walks it -------------------------------------------------
def _with_tokenizer(key: str, tmp_path, scale=None):
    """A saved tiny model of family ``key`` with a character-level tokenizer of the shipped corpus;
    ``scale[k]`` multiplies layer k's weights (so --method magnitude ranks as asked)."""
    from collections import Counter

    from tokenizers import Tokenizer, models

    from gfa_theory.train.data import pydoc_corpus

    chars = [c for c, _ in Counter(pydoc_corpus()[:100_000]).most_common(V - 1)]
    vocab = {"[UNK]": 0, **{c: k + 1 for k, c in enumerate(chars)}}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]")), unk_token="[UNK]")
    model = _model(key)
    with torch.no_grad():
        for k, f in enumerate(scale or ()):
            for p in model.model.layers[k].parameters():
                p.mul_(f)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    return model, src


def test_methods_side_by_side_with_report_and_plot(tmp_path, capsys):
    # magnitude falls with depth here: its ranking is plain depth order, and the report says so
    model, src = _with_tokenizer("llama", tmp_path, scale=[1.0, 0.8, 0.6, 0.4])
    out = tmp_path / "pruned"
    argv = ["prune", str(src), "--method", "bi,magnitude,last", "-k", "2", "--calib-batches", "2",
            "--seq-len", "32", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "methods compared (k = 2; bi is the one written)" in text
    assert "magnitude's ranking is plain depth order (deepest first)" in text
    report = json.loads((out / "evaluation.json").read_text())
    rows = {r["method"]: r for r in report["comparison"]}
    assert list(rows) == ["bi", "magnitude", "last"] and report["removed"] == rows["bi"]["removed"]
    assert rows["magnitude"]["ranking_is_depth_order"] and rows["last"]["ranking_is_depth_order"]
    assert rows["magnitude"]["removed"] == rows["last"]["removed"] == ["model.layers.3", "model.layers.2"]
    written = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = _ids()
    with torch.no_grad():  # the first method's model is the one written
        torch.testing.assert_close(written(x).logits, prune(model, rows["bi"]["removed"])(x).logits, rtol=0, atol=1e-6)
    md = (out / "report.md").read_text()
    for fact in ("## Layers removed", "## Ranking, least important first", "## Before and after",
                 "## Methods compared", "Magnitude's ranking is plain depth order", "scores.png",
                 f"{report['before']['perplexity']:.3f}", f"{rows['magnitude']['after']['perplexity']:.3f}",
                 f"{report['params']['before']:,}", f"{report['params']['after']:,}", "Block Influence"):
        assert fact in md, fact
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv[:3] + ["bi,last"] + argv[4:]) == 2  # another comparison is another result
    assert "another gfa prune" in capsys.readouterr().err
    again = ["prune", str(src), "--method", "last,cascadeflow", "--gradients", str(tmp_path / "g.csv"), "-k", "1",
             "--out", str(tmp_path / "o2"), "--format", "json"]
    pd.DataFrame({"unit": [f"model.layers.{k}" for k in range(4)], "kind": "block", "index": range(1, 5),
                  "quantity": "A", "step": None, "value": [4.0, 1.0, 3.0, 2.0]}).to_csv(again[5], index=False)
    assert main(again) == 0
    capsys.readouterr()
    assert main(again) == 0  # a comparison with cascadeflow: the same prune again replaces its result
    rows = json.loads(capsys.readouterr().out)["comparison"]
    assert [r["removed"] for r in rows] == [["model.layers.3"], ["model.layers.1"]]


def test_own_text_file_scores_heals_and_evaluates_on_separate_parts(tmp_path, capsys):
    from gfa_theory.cli.prune_hf import _heal_stream
    from gfa_theory.methods.hf_pruning import corpus_tokens, load_checkpoint

    _, src = _with_tokenizer("qwen2", tmp_path)
    own = tmp_path / "domain.txt"
    own.write_text("def area(r):\n    return 3.14159 * r * r\n" * 200 + "class Point:\n    x: int\n" * 40)
    out = tmp_path / "pruned"
    assert main(["prune", str(src), "--method", "bi", "-k", "1", "--calib-batches", "1", "--seq-len", "16",
                 "--heal-steps", "1", "--text", str(own), "--held-out", "0.2", "--out", str(out),
                 "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    data = corpus_tokens(load_checkpoint(src), own, 0.2)
    assert report["text"]["file"] == str(own) and report["text"]["sha256"] == data.sha256
    n = len(data.train) + len(data.val)
    assert report["text"]["held_out_tokens"] == len(data.val) == int(n * 0.2) and "domain.txt" in report["held_out"]["split"]
    # healing and calibration windows (inputs and targets) lie inside the first part, evaluation
    # windows inside the held-out part: marked apart, no window of one holds a token of the other
    from gfa_theory.methods.hf_pruning import text_batches
    from gfa_theory.train.data import TextData

    marked = TextData("", torch.arange(40) % 10, 10 + torch.arange(20) % 10, "", "marked")
    stream = _heal_stream(marked, 8, 16, 0)
    for x, y in [next(stream) for _ in range(50)] + text_batches(marked, "train", 20, 16, 8, 1):
        assert int(x.max()) < 10 and int(y.max()) < 10
    for x, y in text_batches(marked, "val", 20, 16, 8, 0):
        assert int(x.min()) >= 10 and int(y.min()) >= 10
    assert main(["prune", str(src), "--method", "bi", "-k", "1", "--text", str(tmp_path / "none.txt"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_trainer_output_directory_points_to_its_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "hf-run"
    for step in (3, 12):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "config.json").write_text('{"model_type": "qwen2"}')
    (run / "gradients.csv").write_text("unit\n")
    assert main(["prune", str(run), "--method", "last", "-k", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"gfa prune {run / 'checkpoint-12'} --gradients {run / 'gradients.csv'}" in err
    assert main(["prune", str(tmp_path / "my-model"), "--method", "last", "-k", "1", "--out", str(tmp_path / "o")]) == 2
    assert "save_pretrained" in capsys.readouterr().err
    assert main(["prune", str(run), "--method", "bi,bi", "-k", "1", "--out", str(tmp_path / "o")]) == 2
    assert "listed twice" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_hugging_face_flow_reports_before_and_after(tmp_path, monkeypatch, capsys):
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = [b for b in re.findall(r"<!-- tested -->\n```python\n(.*?)```", text, flags=re.DOTALL)
             if "GradientFanInCallback" in b][0]
    command = re.search(r"<!-- tested-prune -->\n```bash\n(.*?)\n```", text, flags=re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102  (the README's own code)
    capsys.readouterr()
    assert main(["prune", "hf-run", "--method", "last", "-k", "1", "--out", "x"]) == 2
    assert "hf-run/checkpoint-8" in capsys.readouterr().err  # the error points at what to prune
    argv = shlex.split(command)
    assert argv[0] == "gfa" and main(argv[1:]) == 0
    out = Path(argv[argv.index("--out") + 1])
    report = json.loads((out / "evaluation.json").read_text())
    assert report["before"]["perplexity"] > 1 and report["after"]["perplexity"] > 1
    assert [r["method"] for r in report["comparison"]] == ["cascadeflow", "bi", "last"]
    md = (out / "report.md").read_text()
    assert f"{report['before']['perplexity']:.3f}" in md and (out / "scores.png").is_file()
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2


@pytest.mark.parametrize("key, norms", [("gemma3", "post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))"),
                                        ("olmo2", "x + post_attention_layernorm(self_attn(x))"),
                                        ("phi3", "fused qkv_proj")])
def test_fanin_names_each_familys_wiring_and_checks_it(key, norms, capsys):
    assert main(["fanin", "--model", f"hf:{key}", "--set", "num_hidden_layers=2"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp" in out and norms in out and "autograd check: agrees" in out
    assert main(["fanin", "--model", f"hf:{key}", "--set", "num_hidden_layers=2", "--format", "json"]) == 0
    assert norms in json.loads(capsys.readouterr().out)["wiring"]
    assert main(["fanin", "--model", f"hf:{key}", "--set", "num_hidden_layers=10000000"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_per_layer_config_lists_sliced_an_unknown_one_refused():
    from gfa_theory.models.adapters_hf import slice_layer_config

    cfg = _config("qwen2")
    cfg.no_rope_layers, cfg.eos_token_id = [1, 0, 1, 0], [2, 3, 4, 5]
    slice_layer_config(cfg, "num_hidden_layers", 4, [1, 3])
    assert (cfg.num_hidden_layers, cfg.no_rope_layers, cfg.max_window_layers) == (2, [0, 0], 1)
    assert cfg.layer_types == ["full_attention", "sliding_attention"] and cfg.eos_token_id == [2, 3, 4, 5]
    cfg = _config("llama")
    cfg.per_layer_scale = [1.0, 0.5, 0.5, 1.0]
    with pytest.raises(ConfigError, match="per_layer_scale"):
        slice_layer_config(cfg, "num_hidden_layers", 4, [0])
