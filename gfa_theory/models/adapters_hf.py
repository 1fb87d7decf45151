"""Adapters of Hugging Face causal LMs (GPT-2 and the Llama-like decoder families) for fan-in,
tracking and pruning, and the view that puts one behind this package's model protocol for the
post hoc scorers.

transformers is looked up in ``sys.modules``, never imported here: a model of it exists only
once the user has imported it.

One adapter reads every Llama-like decoder stack (``model.layers`` of layers holding a
``self_attn`` and an ``mlp`` branch); a :class:`DecoderFamily` says, per family, where its norms
sit around the two branches, which is what differs between them:

* Pre-LN (Llama, Qwen2/2.5, Qwen3, Mistral, Phi-3): ``x + f(norm(x))``;
* sandwich (Gemma 2, Gemma 3): ``x + post_norm(f(pre_norm(x)))``, a pre- and a post-norm
  around each branch (Peri-LN-like);
* post-branch (OLMo 2): ``x + norm(f(x))``, the branch output normalized inside the residual.

A family is recognized by its config (``model_type``) *and* its structure (the layer holds the
family's norms and branches and no others; a mixture-of-experts MLP is refused), so a subclass
or a renamed class of a supported family is read too. Norms belong to their branch's unit; the
scalar-gain surrogate makes every norm the identity and keeps each layer's own residual code,
so the autograd path count checks the adapter's layout on the family's real wiring.

Pruning removes decoder layers physically (GPT-2: ``transformer.h``; the others:
``model.layers``), renumbers the per-layer index the KV cache is keyed by (``layer_idx``), slices
the config's per-layer lists (``layer_types``, ``no_rope_layers``), updates what is derived from
the layer count (``max_window_layers``) and sets the count, so that ``save_pretrained`` writes a
checkpoint ``from_pretrained`` rebuilds exactly.
"""
from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.adapter import (
    DTYPE,
    PrunableAdapter,
    Record,
    ScorableAdapter,
    TupleOutput,
    copy_with,
)
from gfa_theory.models.base import ResidualModel, check_kind
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Block, Layout

# Config keys holding one entry per layer: sliced with the layers.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")


def _first(out):
    """The hidden state of a layer's output (a tensor in transformers 5, a tuple before)."""
    return out[0] if isinstance(out, tuple) else out


def _is_norm_name(name: str) -> bool:
    return name.endswith("norm") or name.startswith("ln_")


class _HFCausalLMAdapter(PrunableAdapter):
    """What GPT-2 and the Llama-like families share: a stack of 2-branch residual decoder layers.

    Subclasses name the module paths: ``base_attr`` (the decoder inside the LM head model),
    ``layers_attr`` (its layer list), the two branches of a layer as (unit suffix, pre-norm,
    branch, post-norm) attributes (a norm the family lacks is ``None``), the modules the
    surrogate neutralizes, the config's layer-count key and where the KV cache index lives.
    """

    label: str  # the family as the README and the refusals name it
    base_attr: str
    layers_attr: str
    branches: tuple[tuple[str, str | None, str, str | None], ...]  # (suffix, pre-norm, branch, post-norm)
    neutral: tuple[str, ...]  # decoder attributes replaced by the identity in the surrogate
    count_key: str

    def _base(self, model) -> tuple[str, nn.Module]:
        base = getattr(model, self.base_attr, model)
        return (f"{self.base_attr}." if base is not model else ""), base

    def _layers(self, model) -> tuple[str, nn.ModuleList]:
        prefix, base = self._base(model)
        return f"{prefix}{self.layers_attr}", getattr(base, self.layers_attr)

    note = ""

    def wiring(self) -> str:
        """Each branch's residual update, with the module names of its norms."""
        parts = []
        for suffix, pre, f, post in self.branches:
            inner = f"{f}({pre}(x))" if pre else f"{f}(x)"
            parts.append(f"x + {post}({inner})" if post else f"x + {inner}")
        return "; then ".join(parts) + (f"; {self.note}" if self.note else "")

    def layout(self, model):
        path, layers = self._layers(model)
        return Layout(tuple(Block(2, False, f"{path}.{k}") for k in range(len(layers))))

    def units(self, model, kind="branch"):
        check_kind(kind)
        path, layers = self._layers(model)
        out = []
        for k, blk in enumerate(layers):
            name, b = f"{path}.{k}", k + 1
            mods = [[getattr(blk, a) for a in (pre, f, post) if a] for _, pre, f, post in self.branches]
            # the module whose output is the branch's contribution to the stream: the post-norm if any
            last = [getattr(blk, post or f) for _, _, f, post in self.branches]
            if kind == "block":
                out.append(Unit(name, "block", b, list(blk.parameters()), last, (b,)))
                continue
            for j, (suffix, *_rest) in enumerate(self.branches):
                i = 2 * b - 1 + j
                params = [p for m in mods[j] for p in m.parameters()]
                out.append(Unit(f"{name}.{suffix}", "branch", i, params, [last[j]], (i,)))
        return out

    def surrogate(self, model, gains):
        _, base = self._base(model)
        path, layers = self._layers(model)
        replace: dict[nn.Module, nn.Module] = {getattr(base, n): nn.Identity() for n in self.neutral
                                               if getattr(base, n, None) is not None}
        if hasattr(model, "lm_head"):
            replace[model.lm_head] = nn.Identity()
        for k, blk in enumerate(layers):
            for j, (suffix, pre, f, post) in enumerate(self.branches):
                gain = gains[f"{path}.{k}.{suffix}"]
                replace[getattr(blk, f)] = TupleOutput(gain) if j == 0 else gain  # attention returns a tuple
                replace.update({getattr(blk, n): nn.Identity() for n in (pre, post) if n})
        sur = copy_with(model, replace).eval()  # eval: a residual dropout (Phi-3) is the identity
        sur_layers = self._layers(sur)[1]
        x0 = torch.ones(1, 1, 1, dtype=DTYPE)  # (batch, T, C) = one element

        def loss() -> torch.Tensor:
            x = x0
            for blk in sur_layers:  # the decoder's layer loop; only the final head reads
                x = _first(blk(x))
            return x.sum()

        return loss

    # ---- pruning -------------------------------------------------------------------------------
    def removable_blocks(self, model):
        return [u.name for u in self.units(model, "block")]

    def check_prunable(self, model) -> None:
        """Refuse a model whose layers depend on their index beyond the KV cache."""

    def remove_blocks(self, model, remove):
        self.check_prunable(model)
        path, layers = self._layers(model)
        keep = [k for k in range(len(layers)) if f"{path}.{k}" not in remove]
        new = copy.deepcopy(model)
        _, new_base = self._base(new)
        old_layers = getattr(new_base, self.layers_attr)
        setattr(new_base, self.layers_attr, nn.ModuleList(old_layers[k] for k in keep))
        for new_k, blk in enumerate(getattr(new_base, self.layers_attr)):
            for mod in blk.modules():  # the cache is keyed by layer index: renumber densely
                if hasattr(mod, "layer_idx"):
                    mod.layer_idx = new_k
        for cfg in {id(c): c for c in (new.config, new_base.config)}.values():
            slice_layer_config(cfg, self.count_key, len(layers), keep)
        return new

    def scoring_view(self, model):
        view = HFCausalLMView(model, self)
        path, _ = self._layers(model)
        return view, {f"blocks.{k}": f"{path}.{k}" for k in range(len(view.layers))}


def slice_layer_config(cfg, count_key: str, n_layers: int, keep: list[int]) -> None:
    """Keep layers ``keep`` (of ``n_layers``) in a transformers config: slice its per-layer
    lists, recount ``max_window_layers`` (the first layers without a sliding window) and set the
    layer count. A list of one entry per layer that is not known to be per-layer is refused
    rather than guessed at."""
    for key, value in cfg.to_dict().items():
        if (isinstance(value, (list, tuple)) and len(value) == n_layers and key not in PER_LAYER_KEYS
                and key != "architectures" and "token" not in key):  # eos_token_id may be a list
            raise ConfigError(f"config key '{key}' has one entry per layer and gfa does not know how to "
                              "prune it: not pruned")
    for key in PER_LAYER_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)):
            if len(value) != n_layers:
                raise ConfigError(f"config key '{key}' has {len(value)} entries for {n_layers} layers")
            setattr(cfg, key, [value[k] for k in keep])
    window = getattr(cfg, "max_window_layers", None)
    if isinstance(window, int) and not isinstance(window, bool):
        cfg.max_window_layers = sum(1 for k in keep if k < window)
    setattr(cfg, count_key, len(keep))


class HFGPT2Adapter(_HFCausalLMAdapter):
    """``GPT2Model`` / ``GPT2LMHeadModel``: block = ``ln_1 + attn`` then ``ln_2 + mlp``.

    ``attn`` returns ``(output, weights)``; its surrogate returns a tuple too. Units are named by
    module path (``transformer.h.0.attn`` in an LM-head model, ``h.0.attn`` in a bare one).
    """

    name, label = "hf-gpt2", "GPT-2"
    module = "transformers.models.gpt2.modeling_gpt2"
    classes = ("GPT2Model", "GPT2LMHeadModel")
    base_attr, layers_attr, count_key = "transformer", "h", "n_layer"
    branches = (("attn", "ln_1", "attn", None), ("mlp", "ln_2", "mlp", None))
    neutral = ("wte", "wpe", "ln_f")

    def matches(self, model):
        mod = sys.modules.get(self.module)
        return mod is not None and isinstance(model, tuple(getattr(mod, c) for c in self.classes))

    def _base(self, model):
        prefix, base = super()._base(model)
        if getattr(base.config, "add_cross_attention", False):
            raise ConfigError("GPT-2 with cross-attention is not supported by the fan-in adapter")
        return prefix, base

    def check_prunable(self, model):
        if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            raise ConfigError("GPT-2 with scale_attn_by_inverse_layer_idx scales attention by layer index: "
                              "removing layers would change the surviving layers, so it is not pruned")


# The norm placements: (pre-norm, post-norm) of the attention and of the MLP branch.
PRE_LN = (("input_layernorm", None), ("post_attention_layernorm", None))
SANDWICH = (("input_layernorm", "post_attention_layernorm"),
            ("pre_feedforward_layernorm", "post_feedforward_layernorm"))
POST_BRANCH = ((None, "post_attention_layernorm"), (None, "post_feedforward_layernorm"))


@dataclass(frozen=True)
class DecoderFamily:
    """One Llama-like family: its ``hf:<key>`` name, how the README names it, the config
    ``model_type`` values it covers, the transformers classes ``hf:<key>`` builds, where its
    norms sit and the config values a tiny ``hf:<key>`` build needs beyond the common ones."""

    key: str
    label: str
    model_types: tuple[str, ...]
    config_class: str
    model_class: str
    norms: tuple[tuple[str | None, str | None], tuple[str | None, str | None]] = PRE_LN
    note: str = ""  # what else in the wiring a reader may ask about
    tiny: dict = field(default_factory=dict)


DECODER_FAMILIES = (
    DecoderFamily("llama", "Llama", ("llama",), "LlamaConfig", "LlamaForCausalLM"),
    DecoderFamily("qwen2", "Qwen2/Qwen2.5", ("qwen2",), "Qwen2Config", "Qwen2ForCausalLM",
                  note="sliding-window layers from max_window_layers on (use_sliding_window)"),
    DecoderFamily("qwen3", "Qwen3", ("qwen3",), "Qwen3Config", "Qwen3ForCausalLM",
                  note="q_norm / k_norm inside attention", tiny={"head_dim": 16}),
    DecoderFamily("mistral", "Mistral", ("mistral",), "MistralConfig", "MistralForCausalLM",
                  note="sliding-window attention"),
    DecoderFamily("gemma2", "Gemma 2", ("gemma2",), "Gemma2Config", "Gemma2ForCausalLM", SANDWICH,
                  note="alternating sliding-window / full layers (layer_types)", tiny={"head_dim": 16}),
    DecoderFamily("gemma3", "Gemma 3 (text)", ("gemma3_text",), "Gemma3TextConfig", "Gemma3ForCausalLM",
                  SANDWICH, note="sliding-window / full layers (layer_types), q_norm / k_norm",
                  tiny={"head_dim": 16}),
    DecoderFamily("phi3", "Phi-3", ("phi3",), "Phi3Config", "Phi3ForCausalLM",
                  note="fused qkv_proj and gate_up_proj (one unit each branch, as unfused)"),
    DecoderFamily("olmo2", "OLMo 2", ("olmo2",), "Olmo2Config", "Olmo2ForCausalLM", POST_BRANCH,
                  note="q_norm / k_norm inside attention"),
)


class HFDecoderAdapter(_HFCausalLMAdapter):
    """A Llama-like decoder family (``XModel`` or ``XForCausalLM``): layers ``model.layers.k``
    with units ``model.layers.k.self_attn`` and ``.mlp``, each holding its own norms."""

    base_attr, layers_attr, count_key = "model", "layers", "num_hidden_layers"
    neutral = ("embed_tokens", "norm", "rotary_emb")

    def __init__(self, family: DecoderFamily) -> None:
        self.family = family
        self.name, self.label, self.note = f"hf-{family.key}", family.label, family.note
        (pre_a, post_a), (pre_m, post_m) = family.norms
        self.branches = (("self_attn", pre_a, "self_attn", post_a), ("mlp", pre_m, "mlp", post_m))

    def matches(self, model):
        tf = sys.modules.get("transformers")
        if tf is None or not isinstance(model, tf.PreTrainedModel):
            return False
        if getattr(model.config, "model_type", None) not in self.family.model_types:
            return False
        layers = getattr(getattr(model, self.base_attr, model), self.layers_attr, None)
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            return False
        norms = {n for pair in self.family.norms for n in pair if n}
        for blk in layers:
            children = dict(blk.named_children())
            if not {"self_attn", "mlp"} <= set(children) or {n for n in children if _is_norm_name(n)} != norms:
                return False
            if hasattr(children["mlp"], "experts"):  # mixture of experts: not this wiring
                return False
        return True

class HFCausalLMView(ResidualModel):
    """A Hugging Face causal LM behind this package's model protocol, so that the post hoc
    scorers of :mod:`gfa_theory.instrument.importance` run on it unchanged: units ``blocks.k``
    (and ``blocks.k.<branch>``), ``ablate(names)`` (an ablated layer passes its input on, an
    ablated branch writes zeros) and ``forward(x, targets=None, final_only=False) -> (logits,
    loss)`` with next-token targets given explicitly. It shares the wrapped model's parameters.
    """

    def __init__(self, net: nn.Module, adapter: _HFCausalLMAdapter) -> None:
        super().__init__()
        self.net, self.adapter = net, adapter
        self.layers = list(adapter._layers(net)[1])  # not registered twice: net owns them
        # a zeroed branch writes nothing: hook its last module (the post-norm where there is one)
        self.outputs = [(s, post or f) for s, _, f, post in adapter.branches]

    def units(self, kind: str = "branch") -> list[Unit]:
        check_kind(kind)
        out = []
        for u in self.adapter.units(self.net, kind):
            k = int(u.name.rsplit(".", 2 if kind == "branch" else 1)[1])
            name = f"blocks.{k}" + (f".{u.name.rsplit('.', 1)[1]}" if kind == "branch" else "")
            out.append(Unit(name, kind, u.index, u.params, u.outputs, u.applications))
        return out

    @contextmanager
    def _ablation_hooks(self) -> Iterator[None]:
        handles = []
        for k, blk in enumerate(self.layers):
            if f"blocks.{k}" in self.disabled:
                def skip(mod, args, kwargs, out):  # the layer passes its input on
                    x = args[0] if args else kwargs["hidden_states"]
                    return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
                handles.append(blk.register_forward_hook(skip, with_kwargs=True))
                continue
            for suffix, attr in self.outputs:
                if f"blocks.{k}.{suffix}" in self.disabled:
                    def zero(mod, args, out):
                        return ((torch.zeros_like(out[0]),) + tuple(out[1:]) if isinstance(out, tuple)
                                else torch.zeros_like(out))
                    handles.append(getattr(blk, attr).register_forward_hook(zero))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                final_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.disabled:
            self.check_unit_names(self.disabled)
        with self._ablation_hooks():
            logits = self.net(input_ids=x, use_cache=False).logits  # (batch, T, vocab)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss


class HFCausalLMViewAdapter(ScorableAdapter):
    """The :class:`HFCausalLMView` of a GPT-2 or Llama-like model: its blocks are ``blocks.k``."""

    name = "hf-causal-lm-view"

    def matches(self, model):
        return isinstance(model, HFCausalLMView)

    def layout(self, model):
        return Layout(tuple(Block(2, False, f"blocks.{k}") for k in range(len(model.layers))))

    def units(self, model, kind="branch"):
        return model.units(kind)

    def surrogate(self, model, gains):
        path, _ = model.adapter._layers(model.net)
        named = {f"{path}.{name.split('.', 1)[1]}": g for name, g in gains.items()}
        return model.adapter.surrogate(model.net, named)

    def block_modules(self, model):
        return list(model.layers)

    @contextmanager
    def record_block_io(self, model) -> Iterator[list[Record]]:
        records: list[Record] = []
        handles = []
        for u, blk in enumerate(model.layers):
            def hook(mod, args, kwargs, out, u=u):
                x = args[0] if args else kwargs["hidden_states"]
                records.append((u, x.detach(), _first(out).detach()))
            handles.append(blk.register_forward_hook(hook, with_kwargs=True))
        try:
            yield records
        finally:
            for h in handles:
                h.remove()
