"""Adapters of Hugging Face causal LMs (GPT-2, Llama family) for fan-in, tracking and pruning,
and the view that puts one behind this package's model protocol for the post hoc scorers.

transformers is looked up in ``sys.modules``, never imported here: a model of it exists only
once the user has imported it.

Pruning removes decoder layers physically (GPT-2: ``transformer.h``; Llama: ``model.layers``),
renumbers the per-layer index the KV cache is keyed by (``attn.layer_idx`` /
``self_attn.layer_idx``), slices per-layer config lists (``layer_types``) and sets the config's
layer count, so that ``save_pretrained`` writes a checkpoint ``from_pretrained`` rebuilds exactly.
"""
from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
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


def _first(out):
    """The hidden state of a layer's output (a tensor in transformers 5, a tuple before)."""
    return out[0] if isinstance(out, tuple) else out


class _HFCausalLMAdapter(PrunableAdapter):
    """What GPT-2 and the Llama family share: a stack of 2-branch Pre-LN decoder layers.

    Subclasses name the module paths: ``base_attr`` (the decoder inside the LM head model),
    ``layers_attr`` (its layer list), the two (norm, branch) pairs of a layer, the modules the
    surrogate neutralizes, the config's layer-count key and where the KV cache index lives.
    """

    module: str  # transformers module that defines the classes
    classes: tuple[str, ...]
    base_attr: str
    layers_attr: str
    branches: tuple[tuple[str, str, str], ...]  # (unit suffix, norm attribute, branch attribute)
    neutral: tuple[str, ...]  # decoder attributes replaced by the identity in the surrogate
    count_key: str

    def matches(self, model):
        mod = sys.modules.get(self.module)
        return mod is not None and isinstance(model, tuple(getattr(mod, c) for c in self.classes))

    def _base(self, model) -> tuple[str, nn.Module]:
        base = getattr(model, self.base_attr, model)
        return (f"{self.base_attr}." if base is not model else ""), base

    def _layers(self, model) -> tuple[str, nn.ModuleList]:
        prefix, base = self._base(model)
        return f"{prefix}{self.layers_attr}", getattr(base, self.layers_attr)

    def layout(self, model):
        path, layers = self._layers(model)
        return Layout(tuple(Block(2, False, f"{path}.{k}") for k in range(len(layers))))

    def units(self, model, kind="branch"):
        check_kind(kind)
        path, layers = self._layers(model)
        out = []
        for k, blk in enumerate(layers):
            name, b = f"{path}.{k}", k + 1
            pairs = [(s, getattr(blk, ln), getattr(blk, f)) for s, ln, f in self.branches]
            if kind == "block":
                out.append(Unit(name, "block", b, list(blk.parameters()), [f for _, _, f in pairs], (b,)))
                continue
            for j, (suffix, ln, f) in enumerate(pairs):
                i = 2 * b - 1 + j
                out.append(Unit(f"{name}.{suffix}", "branch", i, list(ln.parameters()) + list(f.parameters()),
                                [f], (i,)))
        return out

    def surrogate(self, model, gains):
        _, base = self._base(model)
        path, layers = self._layers(model)
        replace: dict[nn.Module, nn.Module] = {getattr(base, n): nn.Identity() for n in self.neutral
                                               if getattr(base, n, None) is not None}
        if hasattr(model, "lm_head"):
            replace[model.lm_head] = nn.Identity()
        for k, blk in enumerate(layers):
            (s_attn, ln_attn, f_attn), (s_mlp, ln_mlp, f_mlp) = self.branches
            replace.update({getattr(blk, ln_attn): nn.Identity(), getattr(blk, ln_mlp): nn.Identity(),
                            getattr(blk, f_attn): TupleOutput(gains[f"{path}.{k}.{s_attn}"]),
                            getattr(blk, f_mlp): gains[f"{path}.{k}.{s_mlp}"]})
        sur = copy_with(model, replace)
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
            setattr(cfg, self.count_key, len(keep))
            if isinstance(getattr(cfg, "layer_types", None), list):
                cfg.layer_types = [cfg.layer_types[k] for k in keep]
        return new

    def scoring_view(self, model):
        view = HFCausalLMView(model, self)
        path, _ = self._layers(model)
        return view, {f"blocks.{k}": f"{path}.{k}" for k in range(len(view.layers))}


class HFGPT2Adapter(_HFCausalLMAdapter):
    """``GPT2Model`` / ``GPT2LMHeadModel``: block = ``ln_1 + attn`` then ``ln_2 + mlp``.

    ``attn`` returns ``(output, weights)``; its surrogate returns a tuple too. Units are named by
    module path (``transformer.h.0.attn`` in an LM-head model, ``h.0.attn`` in a bare one).
    """

    name = "hf-gpt2"
    module = "transformers.models.gpt2.modeling_gpt2"
    classes = ("GPT2Model", "GPT2LMHeadModel")
    base_attr, layers_attr, count_key = "transformer", "h", "n_layer"
    branches = (("attn", "ln_1", "attn"), ("mlp", "ln_2", "mlp"))
    neutral = ("wte", "wpe", "ln_f")

    def _base(self, model):
        prefix, base = super()._base(model)
        if getattr(base.config, "add_cross_attention", False):
            raise ConfigError("GPT-2 with cross-attention is not supported by the fan-in adapter")
        return prefix, base

    def check_prunable(self, model):
        if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            raise ConfigError("GPT-2 with scale_attn_by_inverse_layer_idx scales attention by layer index: "
                              "removing layers would change the surviving layers, so it is not pruned")


class HFLlamaAdapter(_HFCausalLMAdapter):
    """``LlamaModel`` / ``LlamaForCausalLM`` (and Llama-architecture checkpoints such as
    Mistral-style configs loaded as Llama): block = ``input_layernorm + self_attn`` then
    ``post_attention_layernorm + mlp``; units ``model.layers.k.self_attn`` / ``.mlp``."""

    name = "hf-llama"
    module = "transformers.models.llama.modeling_llama"
    classes = ("LlamaModel", "LlamaForCausalLM")
    base_attr, layers_attr, count_key = "model", "layers", "num_hidden_layers"
    branches = (("self_attn", "input_layernorm", "self_attn"), ("mlp", "post_attention_layernorm", "mlp"))
    neutral = ("embed_tokens", "norm", "rotary_emb")


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
        self.suffixes = [s for s, _, _ in adapter.branches]

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
            for suffix, (_, _, attr) in zip(self.suffixes, self.adapter.branches):
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
    """The :class:`HFCausalLMView` of a GPT-2 or Llama model: its blocks are ``blocks.k``."""

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
