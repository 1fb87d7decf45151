"""A Pre-LN decoder-only Transformer, nanoGPT-plain, that knows its residual layout.

Block ``b`` is two residual branches, attention ``2b-1`` and MLP ``2b`` (see :mod:`gfa_theory.theory.layout`)::

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

or, for a parallel (GPT-J) block, ``x = x + attn(ln_1(x)) + mlp(ln_2(x))``. ``GPTConfig.norm``
(a :class:`NormConfig`; None is the Pre-LN above, bit for bit) places the norms otherwise, per
application ``b`` of ``B``::

    pre    x = alpha x + f(s_b ln(x))            (s_b = 1/sqrt(b) with depth_scaling, else 1)
    post   x = ln(alpha x + f(x))                (the original Transformer; DeepNorm with alpha)
    peri   x = alpha x + ln_out(f(s_b ln(x)))    (the branch output normalised too)
    mix    post for b <= floor(mix_post_fraction * B), pre after (Mix-LN)

and the embedding ``x_0`` is multiplied by ``embedding_scale``. The stream topology, hence
:meth:`GPT.layout` and the fan-in, is the same for every placement: each branch still reads the
previous position and writes the next. What changes is the gain of each path: under ``post`` the
skip into a position passes through its LayerNorm (gain about ``1/RMS`` of the sum, not 1),
under ``alpha != 1`` it is ``alpha`` (the skip gains ``a_p`` of
:mod:`gfa_theory.theory.gains`), and the branch gains scale with ``s_b`` and with ``1/RMS(x)``
of the stream a pre-norm reads. The residual width
``C = n_embd`` is constant so identity paths are exact; the number of heads and the FFN hidden
size can differ per block (a width taper is a config). ``block_schedule`` lists which unique
block runs at each application, so ``[0, 1, 2, 3, 3, 3]`` applies block 3 three times with the
same weights (parameter-shared repetition): the layout then has ``B = 6`` blocks and one shared
group. Deep supervision puts a head (the final LayerNorm and the shared, tied ``lm_head``) on
each supervised block output; the training loss is the mean of the heads' losses.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal, NamedTuple

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

BRANCHES = ("attn", "mlp")  # forward order of the two branches in a block
ALL_BRANCHES = frozenset(BRANCHES)  # a skipped application: neither branch writes


def _positive(name: str, value: int, high: int = MAX_DIM) -> None:
    bounded(name, value, 1, high)


Placement = Literal["pre", "post", "peri", "mix"]


@dataclass(frozen=True)
class NormConfig:
    """Where the norms sit and how the stream is scaled (see the module docstring)."""

    placement: Placement = "pre"
    mix_post_fraction: float = 0.25  # mix: fraction of applications (from the first) in Post-LN
    depth_scaling: bool = False  # LayerNorm Scaling: pre-norm output of application b * 1/sqrt(b)
    alpha: float = 1.0  # skip gain: x <- alpha x + branch (DeepNorm-style residual scaling)
    embedding_scale: float = 1.0  # x_0 = embedding_scale * (token + position embedding)

    def __post_init__(self) -> None:
        if self.placement not in ("pre", "post", "peri", "mix"):
            raise ConfigError(f"norm.placement must be 'pre', 'post', 'peri' or 'mix', got {self.placement!r}")
        if not isinstance(self.mix_post_fraction, (int, float)) or not 0.0 <= self.mix_post_fraction <= 1.0:
            raise ConfigError(f"norm.mix_post_fraction must be in [0, 1], got {self.mix_post_fraction!r}")
        if not isinstance(self.depth_scaling, bool):
            raise ConfigError(f"norm.depth_scaling must be true or false, got {self.depth_scaling!r}")
        for name in ("alpha", "embedding_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1e6:
                raise ConfigError(f"norm.{name} must be a positive number below 1e6, got {v!r}")

    def mode(self, a: int, B: int) -> str:
        """Norm placement of application ``a`` (1-based) of ``B``: 'pre', 'post' or 'peri'."""
        if self.placement == "mix":
            return "post" if a <= math.floor(self.mix_post_fraction * B) else "pre"
        return self.placement

    def pre_scale(self, a: int) -> float:
        """Factor on the pre-norm output of application ``a`` (LayerNorm Scaling: 1/sqrt(a))."""
        return 1.0 / math.sqrt(a) if self.depth_scaling else 1.0


class Tap(NamedTuple):
    """Branch ``index`` (``i``, of unit ``unit``): the stream it reads and its output, in the graph."""

    index: int
    unit: str
    x: torch.Tensor  # (batch, T, C) stream input x_{i-1} (before any norm)
    y: torch.Tensor  # (batch, T, C) branch output, what it adds to the stream


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
    # None = Pre-LN; left out of to_dict while None so that existing run hashes stay the same
    norm: NormConfig | None = field(default=None, metadata={"omit_if_none": True})

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

    def norms(self) -> NormConfig:
        """The norm placement (the default Pre-LN when ``norm`` is None)."""
        return self.norm if self.norm is not None else NormConfig()

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
                 bias: bool, dropout: float, out_norm: bool = False) -> None:
        super().__init__()
        self.parallel = parallel
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, head_dim, bias, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, d_ff, bias, dropout)
        if out_norm:  # Peri-LN: one more LayerNorm on each branch output
            self.ln_1o = nn.LayerNorm(n_embd, bias=bias)
            self.ln_2o = nn.LayerNorm(n_embd, bias=bias)

    def forward(self, x: torch.Tensor, skip: frozenset[str] = frozenset(), mode: str = "pre",
                scale: float = 1.0, alpha: float = 1.0, taps: list | None = None) -> torch.Tensor:
        # x: (batch, T, C). A branch named in `skip` is ablated: it writes nothing to the stream.
        # mode/scale/alpha: the norm placement of this application (NormConfig); `taps` collects
        # (slot, stream input, branch output) for the gain measurements.
        if mode == "pre" and scale == 1.0 and alpha == 1.0 and taps is None:
            return self._pre_ln(x, skip)  # today's Pre-LN, op for op
        if self.parallel:
            ys = [self._branch(j, x, mode, scale, taps) for j, n in enumerate(BRANCHES) if n not in skip]
            out = alpha * x if alpha != 1.0 else x
            for y in ys:
                out = out + y
            return self.ln_1(out) if mode == "post" else out
        for j, (name, ln) in enumerate(zip(BRANCHES, (self.ln_1, self.ln_2))):
            y = None if name in skip else self._branch(j, x, mode, scale, taps)
            x = alpha * x if alpha != 1.0 else x
            x = x if y is None else x + y
            x = ln(x) if mode == "post" else x
        return x

    def _pre_ln(self, x: torch.Tensor, skip: frozenset[str]) -> torch.Tensor:
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

    def _branch(self, j: int, x: torch.Tensor, mode: str, scale: float, taps: list | None) -> torch.Tensor:
        """Output of branch slot ``j`` reading stream ``x`` (its norms included, the skip not)."""
        f = self.attn if j == 0 else self.mlp
        if mode == "post":
            y = f(x)
        else:
            h = (self.ln_1 if j == 0 else self.ln_2)(x)
            y = f(h * scale if scale != 1.0 else h)
            if mode == "peri":
                y = (self.ln_1o if j == 0 else self.ln_2o)(y)
        if taps is not None:
            taps.append((j, x, y))
        return y

    def out_norms(self, j: int) -> list[nn.Module]:
        """Peri-LN output norm of slot ``j`` (none otherwise)."""
        name = ("ln_1o", "ln_2o")[j]
        return [getattr(self, name)] if hasattr(self, name) else []


class GPT(ResidualModel):
    skips_applications = True

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.schedule = config.schedule()
        self.supervised = config.supervised()
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C)
        self.drop = nn.Dropout(config.dropout)
        self.norm = config.norms()
        B = len(self.schedule)
        self.modes = [self.norm.mode(a, B) for a in range(1, B + 1)]  # per application
        peri = {u for u, md in zip(self.schedule, self.modes) if md == "peri"}
        self.h = nn.ModuleList(
            Block(C, h, hd, d, config.parallel, config.bias, config.dropout, u in peri)
            for u, (h, hd, d) in enumerate(zip(config.heads(), config.head_dims(), config.ffn()))
        )
        self._taps: list | None = None  # set by tap_branches()
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
        x = self.wte(idx) + self.wpe(pos)
        if self.norm.embedding_scale != 1.0:
            x = x * self.norm.embedding_scale
        x = self.drop(x)  # x_0: (batch, T, C)
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
        nc = self.norm
        for a, u in enumerate(self.schedule, start=1):
            taps = None if self._taps is None else []
            skip = ALL_BRANCHES if a in self.skipped else skips[u]  # one application of a shared group
            x = self.h[u](x, skip, self.modes[a - 1], nc.pre_scale(a) if self.modes[a - 1] != "post"
                          else 1.0, nc.alpha, taps)
            for j, xin, y in taps or ():
                self._taps.append(Tap(2 * a - 1 + j, f"h.{u}.{BRANCHES[j]}", xin, y))
            if a == B or (not final_only and a in self.supervised):
                out[a] = x
        return out

    @contextmanager
    def tap_branches(self) -> Iterator[list[Tap]]:
        """Collect a :class:`Tap` per branch application of the forward passes run inside."""
        self._taps = []
        try:
            yield self._taps
        finally:
            self._taps = None

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
        """B = len(schedule) blocks of two branches; shared groups = applications of one block.

        The same for every norm placement (the wiring does not change, the path gains do: see
        the module docstring)."""
        blocks = [LayoutBlock(2, self.config.parallel, f"h.{u}") for u in self.schedule]
        shared = [tuple(self._applications(u)) for u in range(len(self.h))]
        return Layout(tuple(blocks), tuple(self.supervised), tuple(g for g in shared if len(g) > 1))

    def _applications(self, u: int) -> list[int]:
        return [a for a, v in enumerate(self.schedule, start=1) if v == u]

    def norm_calls(self, final_only: bool = False) -> list[NormCall]:
        """Every LayerNorm call of one forward pass with targets, in call order, with its place in
        the wiring: the pre-norm a branch reads through (pre, peri), Peri-LN's output norm, the
        norm after each sum under Post-LN (Mix-LN's first applications; DeepNorm), ``ln_f`` on
        each head. Ablated or skipped units change the calls: refused."""
        if self.disabled or self.skipped:
            raise ConfigError("norm calls of a model with ablated units or skipped applications are not declared")
        calls, B = [], len(self.schedule)
        position = {br.index: br.position for br in self.layout().branches()}
        for a, u in enumerate(self.schedule, start=1):
            blk, mode = self.h[u], self.modes[a - 1]
            for j, name in enumerate(("ln_1", "ln_2")):
                i = 2 * a - 1 + j
                if mode != "post":
                    calls.append(NormCall(getattr(blk, name), "pre", i, f"h.{u}.{name}"))
                    if mode == "peri":
                        calls.append(NormCall(getattr(blk, name + "o"), "out", i, f"h.{u}.{name}o"))
                elif not self.config.parallel:
                    calls.append(NormCall(getattr(blk, name), "post", position[i], f"h.{u}.{name}"))
            if mode == "post" and self.config.parallel:  # one sum, normalised by ln_1
                calls.append(NormCall(blk.ln_1, "post", position[2 * a], f"h.{u}.ln_1"))
        heads = [B] if final_only else [m for m in self.supervised]
        calls += [NormCall(self.ln_f, "head", m, "ln_f") for m in heads]
        return calls

    def units(self, kind: str = "branch") -> list[Unit]:
        """Branch units ``h.u.attn`` / ``h.u.mlp`` (pre-norm included) or block units ``h.u``,
        ``u`` the unique block index, ordered by first application. A unit's output module is
        what writes the stream (the output norm under Peri-LN); under Post-LN the LayerNorm
        after the addition lies between it and the stream position."""
        check_kind(kind)
        order = sorted(range(len(self.h)), key=lambda u: self._applications(u)[0])
        out = []
        for u in order:
            blk, apps = self.h[u], self._applications(u)
            if kind == "block":
                outs = [(blk.out_norms(j) or [f])[0] for j, f in enumerate((blk.attn, blk.mlp))]
                out.append(Unit(f"h.{u}", "block", apps[0], list(blk.parameters()), outs, tuple(apps)))
                continue
            for j, (name, ln) in enumerate(zip(BRANCHES, (blk.ln_1, blk.ln_2))):
                f = getattr(blk, name)
                branch_apps = tuple(2 * a - 1 + j for a in apps)
                post = [o for m in blk.out_norms(j) for o in m.parameters()]
                out.append(Unit(f"h.{u}.{name}", "branch", branch_apps[0],
                                list(ln.parameters()) + list(f.parameters()) + post,
                                blk.out_norms(j) or [f], branch_apps))
        return out

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n
