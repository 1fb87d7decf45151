"""Autograd fan-in of real modules equals the symbolic fan-in of their layouts."""
import pytest
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models import families as adapters
from gfa_theory.models.families import (
    Adapter,
    copy_with,
    find_adapter,
    get_units,
    module_fan_in,
    module_layout,
    parse_model_spec,
    register_adapter,
)
from gfa_theory.models.units import Unit
from gfa_theory.theory import symbolic
from gfa_theory.theory.layout import Block, Layout

CASES = {
    "gpt-sequential": ("gpt", ["n_blocks=3"]),
    "gpt-parallel": ("gpt", ["n_blocks=3", "parallel=true"]),
    "gpt-deep-all": ("gpt", ["n_blocks=3", "supervision=all"]),
    "gpt-deep-subset": ("gpt", ["n_blocks=4", "supervision=[1,3]"]),
    "gpt-parallel-deep": ("gpt", ["n_blocks=3", "parallel=true", "supervision=[2]"]),
    "gpt-shared-repeat": ("gpt", ["block_schedule=[0,1,2,3,3,3]"]),
    "gpt-shared-deep": ("gpt", ["n_blocks=3", "block_schedule=[0,1,2,1,2]", "supervision=all"]),
    "resnet-preact": ("resnet", ["blocks_per_stage=[2,2,2]"]),
    "resnet-post": ("resnet", ["variant=post", "blocks_per_stage=[1,2,1]", "widths=[4,8,8]"]),
    "resnet-deep-all": ("resnet", ["supervision=all"]),
    "resnet-post-deep-subset": ("resnet", ["variant=post", "supervision=[2,4]"]),
    "torchvision-resnet18": ("torchvision:resnet18", None),
    "torchvision-resnet50": ("torchvision:resnet50", None),
    "hf-gpt2": ("hf:gpt2", ["n_layer=3", "n_embd=16", "n_head=2", "n_positions=16", "vocab_size=32"]),
    "hf-llama": ("hf:llama", ["num_hidden_layers=3", "hidden_size=16", "intermediate_size=32", "num_attention_heads=2",
                              "num_key_value_heads=1", "max_position_embeddings=16", "vocab_size=32"]),
    # the other decoder families (Pre-LN, sandwich and post-branch norms): their own wiring, small defaults
    **{f"hf-{key}": (f"hf:{key}", ["num_hidden_layers=3"])
       for key in ("qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "olmo2")},
}


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(case):
        if case not in cache:
            torch.manual_seed(0)
            spec, overrides = CASES[case]
            cache[case] = parse_model_spec(spec, overrides)
        return cache[case]
    return get


@pytest.mark.parametrize("case", list(CASES))
def test_autograd_fan_in_of_module_equals_symbolic(case, built):
    model = built(case)
    layout = module_layout(model)
    got = module_fan_in(model)
    want = symbolic.analyze(layout, max_order=1).to_dict()
    assert got["N"] == want["N"] and got["B"] == want["B"] and got["layout"] == want["layout"]
    assert [b["fan_in"] for b in got["branches"]] == symbolic.fan_in(layout)
    for g, w in zip(got["branches"], want["branches"]):
        assert (g["index"], g["block"], g["slot"], g["position"]) == (w["index"], w["block"], w["slot"], w["position"])
        assert g["paths_by_order"] == (w["paths_by_order"] + [0])[:2]  # symbolic drops a zero t^1
        assert g["fan_in_normalized"] == pytest.approx(w["fan_in_normalized"])
    assert [b["fan_in"] for b in got["blocks"]] == list(symbolic.block_fan_in(layout).values())
    # parameter groups: one shared probe per unique branch, summed over applications by autograd
    assert [(g["blocks"], g["applications"], g["fan_in_by_slot"], g["fan_in"]) for g in got["groups"]] == \
        [(g["blocks"], g["applications"], g["fan_in_by_slot"], g["fan_in"]) for g in want["groups"]]


def test_sequential_stack_matches_hand_reference(built):
    # Independent of the symbolic module: single head, N branches in sequence, F(i) = N - i + 1.
    for case, N in [("gpt-sequential", 6), ("torchvision-resnet18", 8), ("torchvision-resnet50", 16),
                    ("hf-gpt2", 6)]:
        got = module_fan_in(built(case))
        assert [b["fan_in"] for b in got["branches"]] == [N - i + 1 for i in range(1, N + 1)], case


def test_deep_supervision_all_is_quadratic(built):
    got = module_fan_in(built("resnet-deep-all"))
    N = 6
    assert [b["fan_in"] for b in got["branches"]] == [(N - i + 1) * (N - i + 2) // 2 for i in range(1, N + 1)]


def test_shared_repetition_raises_the_group_fan_in(built):
    got = module_fan_in(built("gpt-shared-repeat"))
    shared = [g for g in got["groups"] if g["shared"]]
    assert len(shared) == 1 and shared[0]["blocks"] == [4, 5, 6] and shared[0]["names"] == ["h.3.attn", "h.3.mlp"]
    # attention of the block applied at 4, 5, 6 of 6 (N = 12): F = 6 + 4 + 2
    assert shared[0]["fan_in_by_slot"] == [12, 9] and shared[0]["fan_in"] == 21


def test_autograd_reads_the_wiring_not_the_layout():
    # Blocks rewired to parallel behind the layout's back: the autograd count must notice.
    torch.manual_seed(0)
    model = parse_model_spec("gpt", ["n_blocks=3"])
    for blk in model.h:
        blk.parallel = True
    got = [b["fan_in"] for b in module_fan_in(model)["branches"]]
    assert got == symbolic.fan_in(Layout.transformer(3, parallel=True))
    assert got != symbolic.fan_in(model.layout())


def test_surrogate_leaves_the_model_untouched(built):
    model = built("gpt-sequential")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module_fan_in(model)
    assert type(model.h[0].attn).__name__ == "CausalSelfAttention"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model(torch.zeros(1, 4, dtype=torch.long))[0].shape == (1, 4, 128)


def test_copy_with_swaps_shared_modules_once():
    inner = nn.Linear(2, 2)
    model = nn.Sequential(inner, nn.ReLU(), inner)
    stand_in = nn.Identity()
    copy = copy_with(model, {inner: stand_in})
    assert copy[0] is stand_in and copy[2] is stand_in and model[0] is inner


# ---- units of foreign families ---------------------------------------------------------------------
def _check_units(model, kind, excluded):
    """Units list every parameter once, except those whose name starts with ``excluded`` or
    contains ``.downsample.`` when that is excluded too."""
    units = get_units(model, kind)
    ids = [id(p) for u in units for p in u.params]
    assert len(ids) == len(set(ids))
    skip = [e for e in excluded if e.startswith(".")]
    prefixes = tuple(e for e in excluded if not e.startswith("."))
    assert set(ids) == {id(p) for n, p in model.named_parameters()
                        if not n.startswith(prefixes) and not any(e in n for e in skip)}
    return units


def test_torchvision_units(built):
    model = built("torchvision-resnet18")
    top = ("conv1.", "bn1.", "fc.")
    branches = _check_units(model, "branch", top + (".downsample.",))
    blocks = _check_units(model, "block", top)
    assert [u.name for u in blocks][:3] == ["layer1.0", "layer1.1", "layer2.0"] and len(blocks) == 8
    assert branches[2].name == "layer2.0.branch" and branches[2].outputs == [model.layer2[0].bn2]
    assert get_units(built("torchvision-resnet50"), "branch")[0].outputs == [built("torchvision-resnet50").layer1[0].bn3]


def test_hf_gpt2_units(built):
    model = built("hf-gpt2")
    excluded = ("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head")
    branches = _check_units(model, "branch", excluded)
    blocks = _check_units(model, "block", excluded)
    assert [u.name for u in branches[:2]] == ["transformer.h.0.attn", "transformer.h.0.mlp"]
    assert [u.applications for u in branches] == [(i,) for i in range(1, 7)]
    assert [u.name for u in blocks] == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert branches[1].params[0] is model.transformer.h[0].ln_2.weight


def test_bare_hf_gpt2_model_and_wrappers():
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    bare = GPT2Model(GPT2Config(n_layer=2, n_embd=8, n_head=2, n_positions=8, vocab_size=16,
                                bos_token_id=15, eos_token_id=15))
    assert [b["fan_in"] for b in module_fan_in(bare)["branches"]] == [4, 3, 2, 1]
    assert get_units(bare)[0].name == "h.0.attn"
    wrapped = nn.DataParallel(parse_model_spec("resnet", ["blocks_per_stage=[1]", "widths=[4]"]))
    assert [u.name for u in get_units(wrapped, "block")] == ["blocks.0"]
    assert module_layout(wrapped).N == 1


# ---- a user-added family ---------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """A toy family: x <- x + f_k(x) for each k, heads read every ``every``-th position."""

    def __init__(self, n=4, every=2):
        super().__init__()
        self.fs = nn.ModuleList(nn.Sequential(nn.Linear(3, 3), nn.Tanh()) for _ in range(n))
        self.every = every

    def forward(self, x):
        outs = []
        for k, f in enumerate(self.fs, start=1):
            x = x + f(x)
            if k % self.every == 0 or k == len(self.fs):
                outs.append(x)
        return sum(o.sum() for o in outs)


class ResidualMLPAdapter(Adapter):
    name = "residual-mlp"

    def __init__(self, claimed_applications=None):
        self.claimed = claimed_applications

    def matches(self, model):
        return isinstance(model, ResidualMLP)

    def layout(self, model):
        n = len(model.fs)
        return Layout((Block(1),) * n, tuple(k for k in range(1, n + 1) if k % model.every == 0))

    def units(self, model, kind="branch"):
        return [Unit(f"fs.{k}", kind, k + 1, list(f.parameters()), [f], self.claimed or (k + 1,))
                for k, f in enumerate(model.fs)]

    def surrogate(self, model, gains):
        sur = copy_with(model, {f: gains[f"fs.{k}"] for k, f in enumerate(model.fs)})
        return lambda: sur(torch.ones(1, dtype=adapters.DTYPE))


def test_user_registered_adapter(monkeypatch):
    monkeypatch.setattr(adapters, "ADAPTERS", list(adapters.ADAPTERS))
    with pytest.raises(ConfigError, match="no fan-in adapter for ResidualMLP"):
        module_fan_in(ResidualMLP())
    register_adapter(ResidualMLPAdapter())
    model = ResidualMLP(n=5, every=2)
    assert isinstance(find_adapter(model), ResidualMLPAdapter)
    got = module_fan_in(model)
    assert got["model"] == "residual-mlp"
    assert [b["fan_in"] for b in got["branches"]] == symbolic.fan_in(module_layout(model)) == [11, 8, 5, 3, 1]


class TooManyBranches(ResidualMLPAdapter):
    def layout(self, model):
        return Layout((Block(1),) * (len(model.fs) + 1))


def test_layout_that_disagrees_with_the_wiring_is_caught(monkeypatch):
    monkeypatch.setattr(adapters, "ADAPTERS", [TooManyBranches()])
    with pytest.raises(RuntimeError, match="do not cover the layout's branches 1..3"):
        module_fan_in(ResidualMLP(n=2))
    # One module applied at positions 1 and 3, but the naive adapter claims three unshared units:
    # the surrogate of the shared module runs twice where its unit says once.
    monkeypatch.setattr(adapters, "ADAPTERS", [ResidualMLPAdapter()])
    model = ResidualMLP(n=2)
    model.fs.append(model.fs[0])
    with pytest.raises(RuntimeError, match="times"):
        module_fan_in(model)


# ---- building models by name -----------------------------------------------------------------------
@pytest.mark.parametrize("spec, overrides, message", [
    ("vit", None, "unknown model 'vit'"),
    ("torchvision:vgg11", None, "unknown torchvision model 'vgg11'"),
    ("torchvision:resnet18", ["width=3"], "torchvision:resnet18"),
    ("hf:opt", None, "unknown Hugging Face model 'opt'"),
    ("hf:gpt2", ["n_layers=2"], "unknown GPT2Config key 'n_layers'"),
    ("hf:gpt2", ["n_layer"], "must look like key=value"),
    ("gpt", ["n_head=5"], "does not divide"),
])
def test_parse_model_spec_errors(spec, overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_spec(spec, overrides)


def test_parse_model_spec_overrides():
    m = parse_model_spec("torchvision:resnet18", ["num_classes=7"])
    assert m.fc.out_features == 7
    g = parse_model_spec("hf:gpt2", {"n_layer": 2, "n_embd": 8, "n_head": 2})
    assert len(g.transformer.h) == 2 and module_layout(g).N == 4
    assert parse_model_spec("gpt", ["n_blocks=2"]).layout().N == 4
    with pytest.raises(ConfigError, match="no fan-in adapter for Linear"):
        module_fan_in(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="'branch' or 'block'"):
        get_units(m, "layer")


# ---- CLI: gfa fanin --model ------------------------------------------------------------------------
def test_cli_fanin_model_json(capsys):
    import json

    from gfa_theory.cli import main
    assert main(["fanin", "--model", "torchvision:resnet18", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["fan_in"] for b in out["branches"]] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert out["layout"]["blocks"][2]["name"] == "layer2.0"
    assert out["check"]["agree"] and "autograd on the torchvision-resnet module" in out["check"]["method"]
    assert main(["fanin", "--model", "gpt", "--set", "block_schedule=[0,1,2,3,3,3]", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["agree"] and [g["fan_in"] for g in out["groups"] if g["shared"]] == [21]


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet", "--supervision", "all"], "--set supervision=all"),
    (["--branches", "3", "--set", "n_blocks=2"], "--set applies to --model only"),
    (["--model", "gpt", "--set", "n_head=5"], "does not divide"),
    (["--model", "torchvision:vgg11"], "unknown torchvision model"),
])
def test_cli_fanin_model_errors(argv, message, capsys):
    from gfa_theory.cli import main
    assert main(["fanin"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
