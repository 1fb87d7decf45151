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
