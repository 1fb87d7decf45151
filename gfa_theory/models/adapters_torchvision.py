"""Adapters of torchvision ResNets (BasicBlock and Bottleneck), and the view that puts one behind
this package's model protocol so that the post hoc scorers and pruning run on it unchanged.

torchvision is looked up in ``sys.modules``, never imported here: a model of it exists only once
the user has imported it.
"""
from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from gfa_theory.models.adapter import DTYPE, PrunableAdapter, ScorableAdapter, copy_with
from gfa_theory.models.base import ResidualModel, check_kind
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Block, Layout

LAYERS = ("layer1", "layer2", "layer3", "layer4")  # torchvision's stages, in forward order


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of a torchvision ResNet in forward order: ``layer2.0`` ..."""
    return [(f"{layer}.{j}", blk) for layer in LAYERS for j, blk in enumerate(getattr(model, layer))]


class TorchvisionResNetAdapter(PrunableAdapter):
    """Each BasicBlock / Bottleneck is one branch (conv..bn); ``downsample`` is the shortcut.

    The surrogate swaps ``conv1`` for the gain and every later branch module (bn, conv, the
    block's ReLU) for the identity. The ReLU a block applies after its addition is the same
    module as the one inside its branch; on the positive surrogate stream it is the identity.
    """

    name = "torchvision-resnet"
    STEM = ("conv1", "bn1", "relu", "maxpool", "fc")

    def matches(self, model):
        tvm = sys.modules.get("torchvision.models")
        return tvm is not None and isinstance(model, tvm.ResNet)

    @staticmethod
    def _branch_modules(blk: nn.Module) -> list[nn.Module]:
        names = [n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") if hasattr(blk, n)]
        return [getattr(blk, n) for n in names]

    def layout(self, model):
        return Layout(tuple(Block(1, False, name) for name, _ in blocks(model)))

    def units(self, model, kind="branch"):
        check_kind(kind)
        out = []
        for b, (name, blk) in enumerate(blocks(model), start=1):
            last = self._branch_modules(blk)[-1]  # bn2 (BasicBlock) or bn3 (Bottleneck)
            if kind == "branch":
                params = [p for m in self._branch_modules(blk) for p in m.parameters()]
                out.append(Unit(f"{name}.branch", "branch", b, params, [last], (b,)))
            else:
                out.append(Unit(name, "block", b, list(blk.parameters()), [last], (b,)))
        return out

    def surrogate(self, model, gains):
        replace: dict[nn.Module, nn.Module] = {getattr(model, n): nn.Identity() for n in self.STEM}
        for name, blk in blocks(model):
            first, *rest = self._branch_modules(blk)
            replace[first] = gains[f"{name}.branch"]
            replace.update({m: nn.Identity() for m in rest + [blk.relu]})
            if blk.downsample is not None:
                replace[blk.downsample] = nn.Identity()
        sur = copy_with(model, replace)
        x0 = torch.ones(1, 1, 1, 1, dtype=DTYPE)  # the model's own forward on a 1x1 image
        return lambda: sur(x0).sum()

    # ---- pruning -----------------------------------------------------------------------------------
    def removable_blocks(self, model):
        return [name for name, blk in blocks(model) if blk.downsample is None]

    def remove_blocks(self, model, remove):
        new = copy.deepcopy(model)
        for layer in LAYERS:
            seq = getattr(new, layer)
            # an emptied layer1 is an empty Sequential: the identity, as the removed blocks were
            setattr(new, layer, nn.Sequential(*[blk for j, blk in enumerate(seq) if f"{layer}.{j}" not in remove]))
        return new

    def scoring_view(self, model):
        view = TorchvisionView(model)
        return view, {f"blocks.{k}": name for k, name in enumerate(view.names)}


class _TorchvisionBlock(nn.Module):
    """A torchvision block seen as ``shortcut(x) + branch(x)`` with the package's ``skip`` flag."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.shortcut = block.downsample if block.downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        # An ablated block keeps the ReLU after the addition; block inputs are post-ReLU (>= 0),
        # so for an identity shortcut this is exactly the identity: ablation == removal.
        return torch.relu(self.shortcut(x)) if skip else self.block(x)


class TorchvisionView(ResidualModel):
    """A torchvision ResNet behind this package's model protocol, so that the post hoc scorers of
    :mod:`gfa_theory.instrument.importance` run on it unchanged: ``units(kind)`` (named ``blocks.k`` /
    ``blocks.k.branch``, ``k`` 0-based over layer1..layer4), ``ablate(names)`` and
    ``forward(x, targets=None, final_only=False) -> (logits, loss)``. It shares the wrapped
    model's parameters and replays torchvision's ``ResNet._forward_impl`` (a subclass with its own
    forward is not followed).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        named = blocks(net)
        self.names = [name for name, _ in named]  # torchvision name of blocks.k
        self.blocks = nn.ModuleList(_TorchvisionBlock(blk) for _, blk in named)

    def units(self, kind: str = "branch") -> list[Unit]:
        check_kind(kind)
        out = []
        for k, tv in enumerate(TorchvisionResNetAdapter().units(self.net, kind)):
            name = f"blocks.{k}.branch" if kind == "branch" else f"blocks.{k}"
            out.append(Unit(name, kind, k + 1, tv.params, tv.outputs, (k + 1,)))
        return out

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                final_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        net = self.net
        if self.disabled:
            self.check_unit_names(self.disabled)
        off = {k for k in range(len(self.blocks))
               if f"blocks.{k}" in self.disabled or f"blocks.{k}.branch" in self.disabled}
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))  # (batch, C, H, W)
        for k, blk in enumerate(self.blocks):
            x = blk(x, skip=k in off)
        logits = net.fc(torch.flatten(net.avgpool(x), 1))  # (batch, classes)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


class TorchvisionViewAdapter(ScorableAdapter):
    """The :class:`TorchvisionView` of a torchvision ResNet: its blocks are ``blocks.k``."""

    name = "torchvision-resnet-view"

    def matches(self, model):
        return isinstance(model, TorchvisionView)

    def layout(self, model):
        return Layout(tuple(Block(1, False, f"blocks.{k}") for k in range(len(model.blocks))))

    def units(self, model, kind="branch"):
        return model.units(kind)

    def surrogate(self, model, gains):
        named = {f"{tv}.branch": gains[f"blocks.{k}.branch"] for k, tv in enumerate(model.names)}
        return TorchvisionResNetAdapter().surrogate(model.net, named)

    def block_modules(self, model):
        return list(model.blocks)

    def aligned_input(self, block, x):
        return block.shortcut(x)
