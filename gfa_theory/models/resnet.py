"""A small-image ResNet (8x8 digits, 32x32 CIFAR) that knows its residual layout.

Every basic block is one residual branch (a one-branch block of :mod:`gfa_theory.theory.layout`):
``x_b = shortcut(x_{b-1}) + f_b(x_{b-1})``.

* ``variant="preact"`` (He et al. 2016, identity mappings): ``f = conv(relu(bn(conv(relu(bn(x))))))``,
  nothing after the addition, so the identity path is clean; the stem is a bare conv and each
  head normalizes (BN, ReLU) before pooling, like the final LayerNorm of a Pre-LN Transformer.
* ``variant="post"`` (the classic ResNet): ``f = bn(conv(relu(bn(conv(x)))))`` and a ReLU after
  the addition.

The shortcut is the identity, or a 1x1 projection (stride 2 at a stage change, or when the width
changes): a path of order 0, not a branch. Blocks are numbered ``b = 1..B`` over all stages;
deep supervision puts a pooled linear head on each supervised block output and the training
loss is the mean of the heads' losses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.base import (
    MAX_BLOCKS,
    MAX_DIM,
    NormCall,
    ResidualModel,
    bounded,
    check_kind,
    supervised_blocks,
)
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Block as LayoutBlock
from gfa_theory.theory.layout import Layout


@dataclass
class ResNetConfig:
    in_channels: int = 1  # 1 for digits, 3 for CIFAR-10
    num_classes: int = 10
    image_size: int = 8  # inputs are (batch, in_channels, image_size, image_size)
    variant: Literal["preact", "post"] = "preact"
    blocks_per_stage: list[int] = field(default_factory=lambda: [2, 2, 2])
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # channels of each stage
    supervision: Literal["final", "all"] | list[int] = "final"  # 1-based block indices

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "image_size"):
            bounded(name, getattr(self, name))
        if self.variant not in ("preact", "post"):
            raise ConfigError(f"variant must be 'preact' or 'post', got {self.variant!r}")
        for name in ("blocks_per_stage", "widths"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{name} must be a non-empty list of positive integers")
            for k, v in enumerate(values):
                # The first stage may be empty when later stages exist (the stem then feeds the
                # first stage change): what pruning every identity block of stage 1 leaves.
                low = 0 if name == "blocks_per_stage" and k == 0 and len(values) > 1 else 1
                if isinstance(v, bool) or not isinstance(v, int) or v < low:
                    raise ConfigError(f"{name} entries must be positive integers, got {v!r}")
                bounded(f"{name} entry", v, low, MAX_BLOCKS if name == "blocks_per_stage" else MAX_DIM)
        if len(self.blocks_per_stage) != len(self.widths):
            raise ConfigError(f"blocks_per_stage has {len(self.blocks_per_stage)} stages "
                              f"but widths has {len(self.widths)}")
        if self.B > MAX_BLOCKS:
            raise ConfigError(f"blocks_per_stage adds up to {self.B:,} blocks: at most {MAX_BLOCKS:,}")
        supervised_blocks(self.supervision, self.B)

    @property
    def B(self) -> int:
        """Number of residual blocks (= branches)."""
        return sum(self.blocks_per_stage)

    def supervised(self) -> list[int]:
        return supervised_blocks(self.supervision, self.B)

    @classmethod
    def tiny(cls, **overrides) -> "ResNetConfig":
        kw = dict(blocks_per_stage=[1, 2], widths=[4, 8])
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def cifar(cls, **overrides) -> "ResNetConfig":
        """ResNet-20-like shape for 32x32 RGB images."""
        kw = dict(in_channels=3, image_size=32, blocks_per_stage=[3, 3, 3], widths=[16, 32, 64])
        kw.update(overrides)
        return cls(**kw)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """``shortcut(x) + branch(x)`` (then ReLU for the post-activation variant)."""

    def __init__(self, c_in: int, c_out: int, stride: int, variant: str) -> None:
        super().__init__()
        self.post = variant == "post"
        self.out_channels = c_out
        if self.post:
            self.branch = nn.Sequential(
                _conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU(),
                _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out))
        else:
            self.branch = nn.Sequential(
                nn.BatchNorm2d(c_in), nn.ReLU(), _conv3x3(c_in, c_out, stride),
                nn.BatchNorm2d(c_out), nn.ReLU(), _conv3x3(c_out, c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection: the order-0 path changes shape
            proj = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            self.shortcut = nn.Sequential(proj, nn.BatchNorm2d(c_out)) if self.post else proj

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        # x: (batch, c_in, H, W) -> (batch, c_out, H / stride, W / stride); `skip` ablates the branch
        out = self.shortcut(x) if skip else self.shortcut(x) + self.branch(x)
        return F.relu(out) if self.post else out


class Head(nn.Module):
    """Pooled linear classifier on a stream position (normalized first in the preact variant)."""

    def __init__(self, channels: int, num_classes: int, variant: str) -> None:
        super().__init__()
        self.norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU()) if variant == "preact" else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(dim=(2, 3)))  # (batch, C, H, W) -> (batch, classes)


class ResNet(ResidualModel):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        v, w0 = config.variant, config.widths[0]
        self.stem = (_conv3x3(config.in_channels, w0) if v == "preact" else
                     nn.Sequential(_conv3x3(config.in_channels, w0), nn.BatchNorm2d(w0), nn.ReLU()))
        blocks, c_in = [], w0
        for s, (n_blocks, c_out) in enumerate(zip(config.blocks_per_stage, config.widths)):
            for j in range(n_blocks):
                stride = 2 if s > 0 and j == 0 else 1
                blocks.append(ResidualBlock(c_in, c_out, stride, v))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.supervised = config.supervised()
        self.heads = nn.ModuleDict({str(m): Head(blocks[m - 1].out_channels, config.num_classes, v)
                                    for m in self.supervised})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                final_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: (batch, in_channels, H, W) images, ``targets``: (batch,) labels. Returns the
        final head's logits (batch, classes) and the loss (mean over heads, or the final one's)."""
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ConfigError(f"ResNet expects images of shape (batch, {c}, {s}, {s}), got {tuple(x.shape)}")
        streams = self.streams(self.stem(x), final_only=final_only or targets is None)
        logits = [self.heads[str(m)](h) for m, h in streams.items()]
        loss = None
        if targets is not None:
            loss = torch.stack([F.cross_entropy(lg, targets) for lg in logits]).mean()
        return logits[-1], loss

    def streams(self, x: torch.Tensor, final_only: bool = False) -> dict[int, torch.Tensor]:
        """Run the blocks on stream ``x_0`` (the stem output); ``{m: x_m}`` for m in S, last last."""
        off = self._disabled_blocks()
        B = len(self.blocks)
        out: dict[int, torch.Tensor] = {}
        for b, blk in enumerate(self.blocks, start=1):
            x = blk(x, skip=b in off)
            if b == B or (not final_only and b in self.supervised):
                out[b] = x
        return out

    def _disabled_blocks(self) -> set[int]:
        if not self.disabled:
            return set()
        self.check_unit_names(self.disabled)
        # one branch per block: disabling the block or its branch is the same ablation
        return {k + 1 for k in range(len(self.blocks))
                if f"blocks.{k}" in self.disabled or f"blocks.{k}.branch" in self.disabled}

    def norm_calls(self, final_only: bool = False) -> list[NormCall]:
        """The norms and skip maps on the wiring, in call order: a projection shortcut (skip into
        position ``b``; with its BatchNorm in the post variant), the first BatchNorm of a
        pre-activation branch (pre) or the last of a post-activation one (out), the ReLU after a
        post-activation sum (post), a pre-activation head's BatchNorm and ReLU (head)."""
        if self.disabled:
            raise ConfigError("norm calls of a model with ablated units are not declared")
        calls = []
        for k, blk in enumerate(self.blocks):
            b = k + 1
            if not isinstance(blk.shortcut, nn.Identity):
                calls.append(NormCall(blk.shortcut, "skip", b, f"blocks.{k}.shortcut"))
            if blk.post:
                calls.append(NormCall(blk.branch[4], "out", b, f"blocks.{k}.branch.4"))
                calls.append(NormCall(blk, "post", b, f"blocks.{k}", relu=True))
            else:
                calls.append(NormCall(blk.branch[0], "pre", b, f"blocks.{k}.branch.0"))
        if self.config.variant == "preact":
            heads = [self.config.B] if final_only else self.supervised
            calls += [NormCall(self.heads[str(m)].norm, "head", m, f"heads.{m}.norm") for m in heads]
        return calls

    def layout(self) -> Layout:
        blocks = tuple(LayoutBlock(1, False, f"blocks.{k}") for k in range(len(self.blocks)))
        return Layout(blocks, tuple(self.supervised))

    def units(self, kind: str = "branch") -> list[Unit]:
        """Branch units ``blocks.k.branch`` (without the shortcut: a projection is on the order-0
        path) or block units ``blocks.k`` (branch and shortcut); ``k`` 0-based, index ``k + 1``."""
        check_kind(kind)
        out = []
        for k, blk in enumerate(self.blocks):
            if kind == "branch":
                out.append(Unit(f"blocks.{k}.branch", "branch", k + 1, list(blk.branch.parameters()),
                                [blk.branch], (k + 1,)))
            else:
                out.append(Unit(f"blocks.{k}", "block", k + 1, list(blk.parameters()),
                                [blk.branch], (k + 1,)))
        return out
