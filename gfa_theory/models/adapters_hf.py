"""Adapter of Hugging Face GPT-2 (``GPT2Model`` / ``GPT2LMHeadModel``) for fan-in and tracking.

transformers is looked up in ``sys.modules``, never imported here: a model of it exists only
once the user has imported it.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.adapter import DTYPE, Adapter, TupleOutput, copy_with
from gfa_theory.models.base import check_kind
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Block, Layout


class HFGPT2Adapter(Adapter):
    """``GPT2Model`` / ``GPT2LMHeadModel``: block = ``ln_1 + attn`` then ``ln_2 + mlp``.

    ``attn`` returns ``(output, weights)``; its surrogate returns a tuple too. Units are named by
    module path (``transformer.h.0.attn`` in an LM-head model, ``h.0.attn`` in a bare one).
    """

    name = "hf-gpt2"

    def matches(self, model):
        mod = sys.modules.get("transformers.models.gpt2.modeling_gpt2")
        return mod is not None and isinstance(model, (mod.GPT2Model, mod.GPT2LMHeadModel))

    def _base(self, model) -> tuple[str, nn.Module]:
        base = getattr(model, "transformer", model)
        if getattr(base.config, "add_cross_attention", False):
            raise ConfigError("GPT-2 with cross-attention is not supported by the fan-in adapter")
        return ("transformer." if base is not model else ""), base

    def layout(self, model):
        prefix, base = self._base(model)
        return Layout(tuple(Block(2, False, f"{prefix}h.{k}") for k in range(len(base.h))))

    def units(self, model, kind="branch"):
        check_kind(kind)
        prefix, base = self._base(model)
        out = []
        for k, blk in enumerate(base.h):
            name, b = f"{prefix}h.{k}", k + 1
            if kind == "block":
                out.append(Unit(name, "block", b, list(blk.parameters()), [blk.attn, blk.mlp], (b,)))
                continue
            for j, (f, ln) in enumerate(((blk.attn, blk.ln_1), (blk.mlp, blk.ln_2))):
                i = 2 * b - 1 + j
                out.append(Unit(f"{name}.{'attn' if j == 0 else 'mlp'}", "branch", i,
                                list(ln.parameters()) + list(f.parameters()), [f], (i,)))
        return out

    def surrogate(self, model, gains):
        prefix, base = self._base(model)
        replace: dict[nn.Module, nn.Module] = {base.wte: nn.Identity(), base.wpe: nn.Identity()}
        if hasattr(model, "lm_head"):
            replace[model.lm_head] = nn.Identity()
        for k, blk in enumerate(base.h):
            name = f"{prefix}h.{k}"
            replace.update({blk.ln_1: nn.Identity(), blk.ln_2: nn.Identity(),
                            blk.attn: TupleOutput(gains[f"{name}.attn"]), blk.mlp: gains[f"{name}.mlp"]})
        sur = copy_with(model, replace)
        sur_base = getattr(sur, "transformer", sur)
        x0 = torch.ones(1, 1, 1, dtype=DTYPE)  # (batch, T, C) = one element

        def loss() -> torch.Tensor:
            x = x0
            for blk in sur_base.h:  # GPT2Model.forward's block loop; only the final head reads
                out = blk(x)
                x = out[0] if isinstance(out, tuple) else out  # older releases return a tuple
            return x.sum()

        return loss
