"""A Pre-LN decoder-only Transformer, nanoGPT-plain, that knows its residual layout.

Block ``b`` is two residual branches, attention ``2b-1`` and MLP ``2b`` (see :mod:`gfa_theory.theory.layout`)::

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

or, for a parallel (GPT-J) block, ``x = x + attn(ln_1(x)) + mlp(ln_2(x))``. The residual width
``C = n_embd`` is constant so identity paths are exact; the number of heads and the FFN hidden
size can differ per block (a width taper is a config). ``block_schedule`` lists which unique
block runs at each application, so ``[0, 1, 2, 3, 3, 3]`` applies block 3 three times with the
same weights (parameter-shared repetition): the layout then has ``B = 6`` blocks and one shared
group. Deep supervision puts a head (the final LayerNorm and the shared, tied ``lm_head``) on
each supervised block output; the training loss is the mean of the heads' losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.base import (
    MAX_BLOCKS,
    MAX_DIM,
    ResidualModel,
    bounded,
    check_kind,
    supervised_blocks,
)
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Block as LayoutBlock
from gfa_theory.theory.layout import Layout

BRANCHES = ("attn", "mlp")  # forward order of the two branches in a block


def _positive(name: str, value: int, high: int = MAX_DIM) -> None:
    bounded(name, value, 1, high)


@dataclass
class GPTConfig:
    """Transformer config. Lists are per *unique* block (length ``n_blocks``); ``supervision``
    indices are 1-based *applications* (positions in ``block_schedule``)."""

    vocab_size: int = 128  # set from the data's character vocabulary
    block_size: int = 64  # context length T
    n_embd: int = 128  # residual width C, constant over depth
    n_blocks: int = 4  # unique blocks
    n_head: int | list[int] = 4  # heads, one value or one per block
    d_ff: int | list[int] = 512  # FFN hidden size, one value or one per block
    head_dim: int | None = None  # None: n_embd // n_head (attention inner width = C)
    parallel: bool = False  # GPT-J style blocks
    supervision: Literal["final", "all"] | list[int] = "final"
    block_schedule: list[int] | None = None  # unique block per application; None = range(n_blocks)
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_embd"):
            _positive(name, getattr(self, name))
        _positive("n_blocks", self.n_blocks, MAX_BLOCKS)
        for name in ("n_head", "d_ff"):
            values = self._per_block(name)
            for v in values:
                _positive(f"{name} entry", v)
        if self.head_dim is None:
            for b, h in enumerate(self.heads()):
                if self.n_embd % h:
                    raise ConfigError(f"n_head={h} (block {b}) does not divide n_embd={self.n_embd}")
        else:
            _positive("head_dim", self.head_dim)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.block_schedule is not None:
            if not isinstance(self.block_schedule, (list, tuple)) or not self.block_schedule:
                raise ConfigError("block_schedule must be a non-empty list of block indices")
            if len(self.block_schedule) > MAX_BLOCKS:
                raise ConfigError(f"block_schedule has {len(self.block_schedule):,} applications: "
                                  f"at most {MAX_BLOCKS:,}")
            for u in self.block_schedule:
                if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < self.n_blocks:
                    raise ConfigError(f"block_schedule entry {u!r} is out of range 0..{self.n_blocks - 1}")
            unused = sorted(set(range(self.n_blocks)) - set(self.block_schedule))
            if unused:
                raise ConfigError(f"block_schedule never applies block {unused[0]}: every block must be used")
        supervised_blocks(self.supervision, len(self.schedule()))

    def _per_block(self, name: str) -> list[int]:
        value = getattr(self, name)
        if isinstance(value, (list, tuple)):
            if len(value) != self.n_blocks:
                raise ConfigError(f"{name} has {len(value)} entries but n_blocks={self.n_blocks}")
            return list(value)
        return [value] * self.n_blocks

    def heads(self) -> list[int]:
        """Number of heads of each unique block."""
        return self._per_block("n_head")

    def ffn(self) -> list[int]:
        """FFN hidden size of each unique block."""
        return self._per_block("d_ff")

    def head_dims(self) -> list[int]:
        return [self.head_dim or self.n_embd // h for h in self.heads()]

    def schedule(self) -> list[int]:
        """Unique block index (0-based) applied at each application 1..B."""
        return list(self.block_schedule) if self.block_schedule is not None else list(range(self.n_blocks))

    def supervised(self) -> list[int]:
        """Supervision set S as sorted 1-based application indices (the last is always read)."""
        return supervised_blocks(self.supervision, len(self.schedule()))

    @classmethod
    def tiny(cls, **overrides) -> "GPTConfig":
        """A few-thousand-parameter model for tests."""
        kw = dict(vocab_size=11, block_size=8, n_embd=16, n_blocks=2, n_head=2, d_ff=32)
        kw.update(overrides)
        return cls(**kw)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, head_dim: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, head_dim, dropout
        inner = n_head * head_dim
        self.c_attn = nn.Linear(n_embd, 3 * inner, bias=bias)
        self.c_proj = nn.Linear(inner, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, T, _ = x.shape  # (batch, T, C)
        inner = self.n_head * self.head_dim
        q, k, v = self.c_attn(x).split(inner, dim=2)
        # (batch, T, inner) -> (batch, heads, T, head_dim)
        q, k, v = (z.view(n, T, self.n_head, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(n, T, inner)
        return self.resid_dropout(self.c_proj(y))  # (batch, T, C)


class MLP(nn.Module):
    def __init__(self, n_embd: int, d_ff: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, d_ff, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(d_ff, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, head_dim: int, d_ff: int, parallel: bool,
                 bias: bool, dropout: float) -> None:
        super().__init__()
        self.parallel = parallel
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, head_dim, bias, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, d_ff, bias, dropout)

    def forward(self, x: torch.Tensor, skip: frozenset[str] = frozenset()) -> torch.Tensor:
        # x: (batch, T, C). A branch named in `skip` is ablated: it writes nothing to the stream.
        if self.parallel:  # both branches read the block input x_{b-1}
            out = x
            if "attn" not in skip:
                out = out + self.attn(self.ln_1(x))
            if "mlp" not in skip:
                out = out + self.mlp(self.ln_2(x))
            return out
        if "attn" not in skip:
            x = x + self.attn(self.ln_1(x))
        if "mlp" not in skip:
            x = x + self.mlp(self.ln_2(x))
        return x


class GPT(ResidualModel):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.schedule = config.schedule()
        self.supervised = config.supervised()
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(
            Block(C, h, hd, d, config.parallel, config.bias, config.dropout)
            for h, hd, d in zip(config.heads(), config.head_dims(), config.ffn())
        )
        self.ln_f = nn.LayerNorm(C, bias=config.bias)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scaling of the projections that write the stream, by the number of branches N
        std = 0.02 / math.sqrt(2 * len(self.schedule))
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                final_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx``, ``targets``: (batch, T) token ids. Returns the final head's logits
        (batch, T, vocab) and the loss (mean over heads; the final head's with ``final_only``)."""
        n, T = idx.shape
        if T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # x_0: (batch, T, C)
        streams = self.streams(x, final_only=final_only or targets is None)
        logits = [self.lm_head(self.ln_f(h)) for h in streams.values()]  # each (batch, T, vocab)
        loss = None
        if targets is not None:
            losses = [F.cross_entropy(lg.reshape(-1, lg.size(-1)), targets.reshape(-1), ignore_index=-1)
                      for lg in logits]
            loss = torch.stack(losses).mean()
        return logits[-1], loss

    def streams(self, x: torch.Tensor, final_only: bool = False) -> dict[int, torch.Tensor]:
        """Run the blocks on stream ``x_0``; return ``{m: stream after application m}`` for each
        supervised application m in S (only the last with ``final_only``), the last one last."""
        skips = self._skips()
        B = len(self.schedule)
        out: dict[int, torch.Tensor] = {}
        for a, u in enumerate(self.schedule, start=1):
            x = self.h[u](x, skips[u])
            if a == B or (not final_only and a in self.supervised):
                out[a] = x
        return out

    def _skips(self) -> list[frozenset[str]]:
        """Ablated branch names of each unique block, from ``self.disabled``."""
        if not self.disabled:
            return [frozenset()] * len(self.h)
        self.check_unit_names(self.disabled)
        return [frozenset(BRANCHES) if f"h.{u}" in self.disabled
                else frozenset(n for n in BRANCHES if f"h.{u}.{n}" in self.disabled)
                for u in range(len(self.h))]

    # ---- theory-facing description ----------------------------------------------------------
    def layout(self) -> Layout:
        """B = len(schedule) blocks of two branches; shared groups = applications of one block."""
        blocks = [LayoutBlock(2, self.config.parallel, f"h.{u}") for u in self.schedule]
        shared = [tuple(self._applications(u)) for u in range(len(self.h))]
        return Layout(tuple(blocks), tuple(self.supervised), tuple(g for g in shared if len(g) > 1))

    def _applications(self, u: int) -> list[int]:
        return [a for a, v in enumerate(self.schedule, start=1) if v == u]

    def units(self, kind: str = "branch") -> list[Unit]:
        """Branch units ``h.u.attn`` / ``h.u.mlp`` (pre-norm included) or block units ``h.u``,
        ``u`` the unique block index, ordered by first application."""
        check_kind(kind)
        order = sorted(range(len(self.h)), key=lambda u: self._applications(u)[0])
        out = []
        for u in order:
            blk, apps = self.h[u], self._applications(u)
            if kind == "block":
                out.append(Unit(f"h.{u}", "block", apps[0], list(blk.parameters()),
                                [blk.attn, blk.mlp], tuple(apps)))
                continue
            for j, (name, ln) in enumerate(zip(BRANCHES, (blk.ln_1, blk.ln_2))):
                f = getattr(blk, name)
                branch_apps = tuple(2 * a - 1 + j for a in apps)
                out.append(Unit(f"h.{u}.{name}", "branch", branch_apps[0],
                                list(ln.parameters()) + list(f.parameters()), [f], branch_apps))
        return out

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n
