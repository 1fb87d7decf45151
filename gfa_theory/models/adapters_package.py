"""Adapters of this package's own families, :class:`~gfa_theory.models.gpt.GPT` and
:class:`~gfa_theory.models.resnet.ResNet`: fan-in surrogates, block hooks for the post hoc
scorers, and block removal for pruning (a smaller model with a new config and copied weights).
"""
from __future__ import annotations

import abc
import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from gfa_theory.models.adapter import (
    DTYPE,
    PrunableAdapter,
    Record,
    ScorableAdapter,
    copy_with,
)
from gfa_theory.models.gpt import BRANCHES, GPT
from gfa_theory.models.resnet import ResNet
from gfa_theory.models.units import Unit


class _PackageAdapter(ScorableAdapter, PrunableAdapter):
    """What the package's models say about themselves (``layout()``, ``units(kind)``) and the
    mechanics of rebuilding one without some blocks."""

    def layout(self, model):
        return model.layout()

    def units(self, model, kind="branch"):
        return model.units(kind)

    @abc.abstractmethod
    def _rebuild(self, model: nn.Module, remove: set[str]) -> tuple[nn.Module, dict]:
        """The smaller model (fresh weights) and the state dict that fills it."""

    def remove_blocks(self, model, remove):
        # Building the smaller model draws initial weights: keep the caller's RNG stream untouched.
        with torch.random.fork_rng(devices=[]):
            new, state = self._rebuild(model, remove)
        p = next(model.parameters())
        new = new.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)
        new.load_state_dict(state)
        new.train(model.training)
        return new


class GPTAdapter(_PackageAdapter):
    """Block ``h.u`` = attention ``h.u.attn`` then MLP ``h.u.mlp``, each behind its LayerNorm."""

    name = "gpt"

    def matches(self, model):
        return isinstance(model, GPT)

    def surrogate(self, model, gains):
        replace: dict[nn.Module, nn.Module] = {m: nn.Identity() for m in (model.wte, model.wpe, model.ln_f,
                                                                          model.lm_head)}
        for u, blk in enumerate(model.h):
            replace.update({blk.ln_1: nn.Identity(), blk.ln_2: nn.Identity(),
                            blk.attn: gains[f"h.{u}.attn"], blk.mlp: gains[f"h.{u}.mlp"]})
        sur = copy_with(model, replace)
        sur.disabled = set()  # fan-in is a property of the architecture, not of an ablation
        x0 = torch.ones(1, 1, 1, dtype=DTYPE)  # (batch, T, C) = one element
        return lambda: sum(h.sum() for h in sur.streams(x0).values())

    # ---- post hoc scorers ------------------------------------------------------------------------
    def block_modules(self, model):
        return list(model.h)

    def record_key(self, unit: Unit) -> tuple:
        parts = unit.name.split(".")
        return (int(parts[1]), parts[2]) if unit.kind == "branch" else (int(parts[1]),)

    @contextmanager
    def record_branch_io(self, model) -> Iterator[list[Record]]:
        """``(unique block, branch name, x_in, x_in + f)`` per branch application."""
        records: list[Record] = []
        handles = []
        for u, blk in enumerate(model.h):
            for name, norm in zip(BRANCHES, (blk.ln_1, blk.ln_2)):
                state: dict = {}
                # the pre-norm's input is exactly the stream this branch reads
                handles.append(norm.register_forward_pre_hook(
                    lambda mod, args, state=state: state.__setitem__("x", args[0].detach())))
                handles.append(getattr(blk, name).register_forward_hook(
                    lambda mod, args, out, u=u, name=name, state=state:
                    records.append((u, name, state["x"], state["x"] + out.detach()))))
        try:
            yield records
        finally:
            for h in handles:
                h.remove()

    # ---- pruning -----------------------------------------------------------------------------------
    def removable_blocks(self, model):
        return [u.name for u in model.units("block")]  # every block (one must stay)

    def applications(self, model):
        return [f"h.{u}" for u in model.schedule]

    def _rebuild(self, model: GPT, remove: set[str]) -> tuple[GPT, dict]:
        cfg = model.config
        kept = [u for u in range(len(model.h)) if f"h.{u}" not in remove]
        unique = {u: j for j, u in enumerate(kept)}  # old unique block -> new
        survivors = [a for a, u in enumerate(model.schedule, start=1) if u in unique]
        apps = {a: j for j, a in enumerate(survivors, start=1)}  # old application -> new
        schedule = [unique[model.schedule[a - 1]] for a in survivors]
        per_block = {name: [getattr(cfg, name)[u] for u in kept] if isinstance(getattr(cfg, name), (list, tuple))
                     else getattr(cfg, name) for name in ("n_head", "d_ff")}
        new_cfg = dataclasses.replace(
            cfg, n_blocks=len(kept), **per_block,
            block_schedule=None if cfg.block_schedule is None else schedule,
            supervision=_remap_supervision(cfg.supervision, model.supervised, apps))
        new = GPT(new_cfg)
        new.disabled = _remap_disabled(model.disabled, "h", unique)
        return new, _renamed(model.state_dict(), "h", unique)


class ResNetAdapter(_PackageAdapter):
    """Block ``blocks.k`` = ``shortcut(x) + branch(x)``; its one branch is ``blocks.k.branch``."""

    name = "resnet"

    def matches(self, model):
        return isinstance(model, ResNet)

    def surrogate(self, model, gains):
        replace: dict[nn.Module, nn.Module] = {model.stem: nn.Identity(), model.heads: nn.ModuleDict()}
        for k, blk in enumerate(model.blocks):
            replace.update({blk.branch: gains[f"blocks.{k}.branch"], blk.shortcut: nn.Identity()})
        sur = copy_with(model, replace)
        sur.disabled = set()
        x0 = torch.ones(1, 1, 1, 1, dtype=DTYPE)  # (batch, C, H, W) = one element, positive
        return lambda: sum(h.sum() for h in sur.streams(x0).values())

    # ---- post hoc scorers ------------------------------------------------------------------------
    def block_modules(self, model):
        return list(model.blocks)

    def aligned_input(self, block, x):
        return block.shortcut(x)  # compare what the identity (or projection) path carries

    # ---- pruning -----------------------------------------------------------------------------------
    def removable_blocks(self, model):
        return [f"blocks.{k}" for k, blk in enumerate(model.blocks) if isinstance(blk.shortcut, nn.Identity)]

    def _rebuild(self, model: ResNet, remove: set[str]) -> tuple[ResNet, dict]:
        cfg = model.config
        kept = [k for k in range(len(model.blocks)) if f"blocks.{k}" not in remove]
        index = {k: j for j, k in enumerate(kept)}  # 0-based block -> new
        stage = [s for s, n in enumerate(cfg.blocks_per_stage) for _ in range(n)]
        per_stage = [sum(1 for k in kept if stage[k] == s) for s in range(len(cfg.blocks_per_stage))]
        B_old, B_new = len(model.blocks), len(kept)
        new_cfg = dataclasses.replace(
            cfg, blocks_per_stage=per_stage,
            supervision=_remap_supervision(cfg.supervision, model.supervised, {k + 1: j + 1 for k, j in index.items()}))
        new = ResNet(new_cfg)
        # Heads are keyed by 1-based block; the final head always moves to the new last block (it is
        # the head the ablated model reads), intermediate heads follow their block.
        heads = {k + 1: j + 1 for k, j in index.items() if j + 1 != B_new and str(k + 1) in model.heads}
        heads[B_old] = B_new
        state = _renamed(_renamed(model.state_dict(), "blocks", index), "heads", heads)
        new.disabled = _remap_disabled(model.disabled, "blocks", index)
        return new, state


# ---- renaming after a removal --------------------------------------------------------------------
def _renamed(state: dict, prefix: str, mapping: dict[int, int]) -> dict:
    """``state`` with keys ``prefix.<old>.rest`` renamed to ``prefix.<new>.rest`` (dropped when
    ``old`` is not in ``mapping``); other keys unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix + "."):
            _, old, rest = key.split(".", 2)
            if int(old) in mapping:
                out[f"{prefix}.{mapping[int(old)]}.{rest}"] = value
        else:
            out[key] = value
    return out


def _remap_supervision(spec: Any, supervised: list[int], new_index: dict[int, int]) -> Any:
    """Heads on removed applications go; 'final' and 'all' stay what they say."""
    if spec in ("final", "all"):
        return spec
    return [new_index[m] for m in supervised if m in new_index]


def _remap_disabled(disabled: set[str], prefix: str, mapping: dict[int, int]) -> set[str]:
    out = set()
    for name in disabled:
        _, old, *rest = name.split(".")
        if int(old) in mapping:
            out.add(".".join([prefix, str(mapping[int(old)]), *rest]))
    return out
