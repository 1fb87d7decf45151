"""Pruning Hugging Face checkpoints with ``gfa prune`` (tiny random-init GPT-2 and Llama from
configs, nothing downloaded), the Llama adapter, and the package's own model directories."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gfa_theory.cli import main  # noqa: E402
from gfa_theory.methods.pruning import prune, removable_blocks  # noqa: E402
from gfa_theory.models.families import module_fan_in, module_layout  # noqa: E402

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=64, n_positions=32),
    "llama": lambda: transformers.LlamaConfig(num_hidden_layers=4, hidden_size=16, intermediate_size=32,
                                              num_attention_heads=2, num_key_value_heads=1, vocab_size=64,
                                              max_position_embeddings=32),
}
LAYERS = {"gpt2": ("transformer.h", "n_layer"), "llama": ("model.layers", "num_hidden_layers")}


def _saved(family: str, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    src = tmp_path / f"{family}-src"
    model.save_pretrained(src)
    return model, src


def _ids():
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_prune_checkpoint_round_trips_and_generates(family, tmp_path, capsys):
    model, src = _saved(family, tmp_path)
    out = tmp_path / "pruned"
    assert main([ "prune", str(src), "--method", "last", "-k", "2", "--out", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    path, count_key = LAYERS[family]
    assert report["removed"] == [f"{path}.3", f"{path}.2"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(reloaded.config, count_key) == 2
    expected = prune(model, report["removed"]).eval()
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, expected(x).logits, rtol=0, atol=1e-6)
        assert not torch.allclose(reloaded(x).logits, model(x).logits)  # it did change the model
        gen = reloaded.generate(x[:, :4], max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
        ref = expected.generate(x[:, :4], max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert gen.shape == (2, 8) and torch.equal(gen, ref)  # the KV cache of the renumbered layers is right
    attn = [m.layer_idx for m in reloaded.modules() if hasattr(m, "layer_idx")]
    assert sorted(set(attn)) == [0, 1]
    assert len(module_layout(reloaded).blocks) == 2


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cascadeflow_from_callback_gradients_removes_least_A(family, tmp_path, capsys):
    from transformers import Trainer, TrainingArguments

    from gfa_theory.integrations.hf import GradientFanInCallback
    from gfa_theory.train.store import read_gradients

    model, _ = _saved(family, tmp_path)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(2))]
    run = tmp_path / "hf-run"
    args = TrainingArguments(str(run), max_steps=4, per_device_train_batch_size=4, report_to="none",
                             save_strategy="no", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    GradientFanInCallback().attach(trainer)
    trainer.train()
    capsys.readouterr()  # the Trainer's own printing
    src = tmp_path / "trained"
    model.save_pretrained(src)
    A = read_gradients(run).query("quantity == 'A' and kind == 'block' and step.isna()")
    least = list(A.sort_values("value")["unit"][:2])
    out = tmp_path / "pruned"
    assert main(["prune", str(src), "--method", "cascadeflow", "--gradients", str(run / "gradients.csv"),
                 "-k", "2", "--out", str(out), "--format", "json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["removed"]) == sorted(least)


def test_text_methods_need_a_tokenizer(tmp_path, capsys):
    _, src = _saved("gpt2", tmp_path)
    capsys.readouterr()
    assert main(["prune", str(src), "--method", "bi", "-k", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer" in err and len(err.strip().splitlines()) == 1, err


def _char_tokenizer(vocab_size: int = 64):
    """A character-level tokenizer built locally (no download): the 63 commonest corpus characters."""
    from collections import Counter

    from tokenizers import Tokenizer, models

    from gfa_theory.train.data import pydoc_corpus

    chars = [c for c, _ in Counter(pydoc_corpus()[:100_000]).most_common(vocab_size - 1)]
    vocab = {"[UNK]": 0, **{c: k + 1 for k, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.mark.parametrize("method", ["bi", "taylor"])
def test_text_methods_with_the_checkpoints_tokenizer(method, tmp_path, capsys):
    _, src = _saved("llama", tmp_path)
    _char_tokenizer().save_pretrained(src)
    out = tmp_path / "pruned"
    assert main(["prune", str(src), "--method", method, "-k", "1", "--calib-batches", "2", "--heal-steps", "2",
                 "--out", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["before"]["loss"] > 0 and report["after_heal"] is not None
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3


def test_llama_adapter_fan_in():
    from gfa_theory.models.families import parse_model_spec

    model = parse_model_spec("hf:llama", ["num_hidden_layers=3", "hidden_size=16", "intermediate_size=32",
                                          "num_attention_heads=2", "num_key_value_heads=1"])
    counted = module_fan_in(model)
    assert [r["fan_in"] for r in counted["branches"]] == [6, 5, 4, 3, 2, 1]
    assert counted["branches"][0]["name"] == "model.layers.0.self_attn"


# ---- the package's own models: one directory, one call each way --------------------------------
def _tapered_gpt():
    from gfa_theory.methods.taper import TaperConfig, plan
    from gfa_theory.models import build_model

    p = plan(TaperConfig(B=4, n_embd=32, n_head=4, d_ff=64, schedule="linear", r=0.5, quantum=8))
    return build_model("gpt", {"vocab_size": 64, "block_size": 16, **p.model_overrides()})


def _pruned(name: str):
    from gfa_theory.models import build_model

    model = build_model(name, {"n_blocks": 4, "n_embd": 16, "n_head": 2, "d_ff": 32, "vocab_size": 64,
                               "block_size": 16} if name == "gpt" else None)
    return prune(model, [removable_blocks(model)[1]])


@pytest.mark.parametrize("build", [_tapered_gpt, lambda: _pruned("gpt"), lambda: _pruned("resnet")],
                         ids=["tapered-gpt", "pruned-gpt", "pruned-resnet"])
def test_package_models_save_and_load_in_one_directory(build, tmp_path):
    from gfa_theory.models.storage import load_model, save_model

    torch.manual_seed(0)
    model = build().eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    x = (torch.randint(0, 64, (2, 16)) if hasattr(model.config, "vocab_size")
         else torch.randn(2, model.config.in_channels, model.config.image_size, model.config.image_size))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


def test_load_model_refuses_a_foreign_directory(tmp_path):
    from gfa_theory.errors import DataError
    from gfa_theory.models.storage import load_model

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(DataError, match="not written by"):
        load_model(tmp_path)


def test_per_layer_config_lists_are_sliced_and_index_scaled_gpt2_is_refused():
    from gfa_theory.errors import ConfigError

    torch.manual_seed(0)
    llama = transformers.AutoModelForCausalLM.from_config(CONFIGS["llama"]())
    llama.config.layer_types = ["full_attention", "a", "b", "c"]
    pruned = prune(llama, ["model.layers.1", "model.layers.3"])
    assert pruned.config.layer_types == ["full_attention", "b"] and pruned.config.num_hidden_layers == 2
    assert llama.config.num_hidden_layers == 4 and len(llama.config.layer_types) == 4  # the source is untouched
    cfg = CONFIGS["gpt2"]()
    cfg.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        prune(transformers.AutoModelForCausalLM.from_config(cfg), ["transformer.h.0"])


def test_prune_refuses_to_overwrite_another_result(tmp_path, capsys):
    _, src = _saved("gpt2", tmp_path)
    out = tmp_path / "pruned"
    assert main(["prune", str(src), "--method", "last", "-k", "1", "--out", str(out)]) == 0
    assert main(["prune", str(src), "--method", "last", "-k", "1", "--out", str(out)]) == 0  # the same prune again
    capsys.readouterr()
    assert main(["prune", str(src), "--method", "magnitude", "-k", "1", "--out", str(out)]) == 2
    assert "another gfa prune" in capsys.readouterr().err
