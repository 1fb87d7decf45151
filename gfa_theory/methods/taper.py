"""CascadeFormer width schedules: attention heads and FFN width that shrink with depth.

The residual width ``C`` stays constant so every identity path stays exact; only the branch
widths taper. A schedule maps block ``b = 1..B`` to a width multiplier ``s_b`` in (0, 1]:

* ``uniform``: ``s_b = 1`` (the baseline);
* ``linear``:  ``s_b = 1 - (1 - r) (b-1)/(B-1)``;
* ``fanin``:   ``s_b = max(r, (F(b)/F(1))^alpha)`` with ``F(b)`` the block fan-in derived by
  :mod:`gfa_theory.theory.symbolic` for the B-block layout (width follows the gradient it receives);
* ``cosine``:  ``s_b = r + (1 - r)(1 + cos(pi (b-1)/(B-1)))/2``;
* ``step``:    ``s_b = 1`` for the first ``ceil(step_at * B)`` blocks, ``r`` after;
* ``inverse``: ``s_b = r + (1 - r) (b-1)/(B-1)``, widening with depth (OpenELM / DeLighT's
  layer-wise scaling): the opposite of what fan-in predicts, a rival taper at the same budget;
* ``narrow``:  ``s_b = r`` for every block: the uniform model shrunk to a budget (the control that
  separates *where* the width goes from *how much* there is);
* ``measured``: ``s_b = max(r, (g_b/max g)^alpha)`` with ``g_b`` a measured per-block profile
  (``profile``: e.g. the accumulated training gradient ``A`` of each block of a finished run,
  :func:`gradient_profile`): the data-driven twin of ``fanin``; or the profile *predicted before
  training* from the gains of a randomly initialized model (:func:`predicted_profile`). The block
  that received the most gradient is full width: in a trained Pre-LN stack ``A`` falls with depth
  and that is block 1; in a short or shallow run a later block can top it, and it then keeps the width.

Widths are rounded to hardware-friendly sizes: whole heads of a fixed ``head_dim`` and FFN
sizes that are multiples of ``quantum``. ``match`` finds the strength ``r`` (or ``alpha``)
whose tapered model has a target fraction of the uniform model's parameters or FLOPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.gains import heldout_gains, predict_profile, unit_profile
from gfa_theory.instrument.tracking import block_totals
from gfa_theory.models import GPT, GPTConfig
from gfa_theory.theory.gains import ACCOUNTS
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.symbolic import block_fan_in
from gfa_theory.train.data import DataConfig, eval_batches, load_data
from gfa_theory.train.memory import BASE_BYTES, FLOAT_BYTES, activation_floats, check_fits, param_count

Schedule = Literal["uniform", "linear", "fanin", "cosine", "step", "inverse", "narrow", "measured"]
SCHEDULES: tuple[str, ...] = ("uniform", "linear", "fanin", "cosine", "step", "inverse", "narrow", "measured")
# schedules whose width never grows with depth and whose first block is full width
SHRINKING: tuple[str, ...] = ("uniform", "linear", "fanin", "cosine", "step", "measured")
# schedules whose strength ``match`` solves through alpha (r is their floor), not r
_ALPHA_MATCHED = ("fanin", "measured")


@dataclass(frozen=True)
class TaperConfig:
    """What to taper: a uniform model of ``B`` blocks with ``n_head`` heads and ``d_ff`` FFN."""

    B: int = 8
    n_embd: int = 128
    n_head: int = 4
    d_ff: int = 512
    schedule: Schedule = "linear"
    r: float = 0.5  # width multiplier of the last block (the taper strength)
    alpha: float = 1.0  # exponent of the fan-in schedule
    step_at: float = 0.5  # step schedule: fraction of blocks kept at full width
    quantum: int = 32  # FFN sizes are multiples of this
    min_heads: int = 1
    supervision: Literal["final", "all"] = "final"  # which fan-in profile the fanin schedule follows
    vocab_size: int = 96
    block_size: int = 64
    profile: tuple[float, ...] | None = None  # the measured schedule's per-block profile g_b

    def __post_init__(self) -> None:
        for name in ("B", "n_embd", "n_head", "d_ff", "quantum", "min_heads", "vocab_size", "block_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2 ** 31 - 1:
                raise ConfigError(f"taper '{name}' must be a positive integer <= 2**31-1, got {v!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_head={self.n_head} does not divide n_embd={self.n_embd}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        if not 0 < self.r <= 1:
            raise ConfigError(f"taper strength r must be in (0, 1], got {self.r}")
        if not 0 <= self.step_at <= 1:
            raise ConfigError(f"step_at must be in [0, 1], got {self.step_at}")
        if not 0 <= self.alpha < math.inf:  # NaN fails too (it would silently give r everywhere)
            raise ConfigError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.min_heads > self.n_head:
            raise ConfigError(f"min_heads={self.min_heads} exceeds n_head={self.n_head}")
        if self.schedule == "measured":
            g = self.profile
            if g is None or len(g) != self.B:
                raise ConfigError(f"the measured schedule needs a profile of B={self.B} per-block values, "
                                  f"got {0 if g is None else len(g)}")
            if not all(math.isfinite(v) and v > 0 for v in g):
                raise ConfigError("the measured profile must hold finite positive values")
            object.__setattr__(self, "profile", tuple(float(v) for v in g))
        elif self.profile is not None:
            raise ConfigError(f"a profile shapes the measured schedule, not {self.schedule!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TaperPlan:
    """Per-block widths of a (tapered) model; ``multipliers`` before rounding."""

    config: TaperConfig
    multipliers: tuple[float, ...]
    n_head: tuple[int, ...]
    d_ff: tuple[int, ...]
    fan_in: tuple[int, ...] = field(default=())

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    def params(self) -> int:
        return count_params(self.config.n_embd, self.n_head, self.head_dim, self.d_ff,
                            self.config.vocab_size, self.config.block_size)

    def flops_per_token(self) -> float:
        return flops_per_token(self.config.n_embd, self.n_head, self.head_dim, self.d_ff,
                               self.config.vocab_size, self.config.block_size)

    def model_overrides(self) -> dict:
        """The GPT config fields that realize this plan."""
        return {"n_blocks": self.config.B, "n_embd": self.config.n_embd, "head_dim": self.head_dim,
                "n_head": list(self.n_head), "d_ff": list(self.d_ff)}

    def rows(self) -> list[dict]:
        return [{"block": b + 1, "multiplier": round(self.multipliers[b], 4),
                 "fan_in": self.fan_in[b] if self.fan_in else None,
                 "n_head": self.n_head[b], "attn_width": self.n_head[b] * self.head_dim,
                 "d_ff": self.d_ff[b]} for b in range(self.config.B)]

    def to_dict(self) -> dict:
        uniform = uniform_plan(self.config)
        return {"config": self.config.__dict__, "blocks": self.rows(), "params": self.params(),
                "flops_per_token": self.flops_per_token(),
                "params_ratio": self.params() / uniform.params(),
                "flops_ratio": self.flops_per_token() / uniform.flops_per_token()}


def multipliers(cfg: TaperConfig) -> tuple[list[float], list[int]]:
    """Width multipliers ``s_b`` (unrounded) and, for reference, the block fan-in."""
    B, r = cfg.B, cfg.r
    pos = [(b / (B - 1)) if B > 1 else 0.0 for b in range(B)]  # 0 at the first block, 1 at the last
    fan = list(block_fan_in(Layout.transformer(B, supervision=cfg.supervision)).values())  # F(b), b = 1..B
    if cfg.schedule == "uniform":
        s = [1.0] * B
    elif cfg.schedule == "linear":
        s = [1 - (1 - r) * u for u in pos]
    elif cfg.schedule == "cosine":
        s = [r + (1 - r) * (1 + math.cos(math.pi * u)) / 2 for u in pos]
    elif cfg.schedule == "step":
        keep = math.ceil(cfg.step_at * B)
        s = [1.0 if b < keep else r for b in range(B)]
    elif cfg.schedule == "inverse":
        s = [r + (1 - r) * u for u in pos]
    elif cfg.schedule == "narrow":
        s = [r] * B
    elif cfg.schedule == "measured":
        top = max(cfg.profile)  # normalizing by g_1 alone would pin every block above it at full width
        s = [max(r, (v / top) ** cfg.alpha) for v in cfg.profile]
    else:  # fanin
        s = [max(r, (f / fan[0]) ** cfg.alpha) for f in fan]
    return s, fan


def _round_to(x: float, q: int) -> int:
    return max(q, int(q * round(x / q)))


def plan(cfg: TaperConfig) -> TaperPlan:
    """Round the schedule to whole heads and FFN multiples of ``quantum``."""
    s, fan = multipliers(cfg)
    heads = tuple(max(cfg.min_heads, min(cfg.n_head, round(cfg.n_head * m))) for m in s)
    d_ff = tuple(min(_round_to(cfg.d_ff, cfg.quantum), _round_to(cfg.d_ff * m, cfg.quantum)) for m in s)
    return TaperPlan(cfg, tuple(s), heads, d_ff, tuple(fan))


def uniform_plan(cfg: TaperConfig) -> TaperPlan:
    return plan(replace(cfg, schedule="uniform", profile=None))


def budget_ratio(p: TaperPlan, budget: Literal["params", "flops"] = "params") -> float:
    """The plan's parameters (or forward FLOPs per token) over the full-width uniform model's."""
    base = uniform_plan(p.config)
    return p.params() / base.params() if budget == "params" else p.flops_per_token() / base.flops_per_token()


def match(cfg: TaperConfig, target: float, budget: Literal["params", "flops"] = "params",
          iters: int = 40, nearest: bool = False) -> TaperPlan:
    """Bisect the taper strength so the plan has ``target`` x the uniform budget. Rounded sizes
    make the result approximate: the closest achievable plan not above the target is returned, or
    with ``nearest`` the closest on either side (the fairer match for a coarse control, e.g. a
    narrow uniform model whose widths move in whole heads across all blocks at once)."""
    if cfg.schedule == "uniform":
        raise ConfigError("the uniform schedule has no strength to match a budget with")
    if not 0 < target <= 1:
        raise ConfigError(f"budget target must be a fraction in (0, 1], got {target}")
    base = uniform_plan(cfg)
    cost = (lambda p: p.params() / base.params()) if budget == "params" else \
        (lambda p: p.flops_per_token() / base.flops_per_token())
    # one strength s in [0, 1] (0: no taper, 1: the strongest); cost falls as s grows, so bisect
    # for the mildest taper that meets the budget
    if cfg.schedule in _ALPHA_MATCHED:  # s scales alpha; r stays the floor
        # a measured profile may fall only slightly (g_B / g_1 near 1): it needs a far larger alpha
        top = 16.0 if cfg.schedule == "fanin" else 1e3
        make = lambda s: plan(replace(cfg, alpha=top * s))  # noqa: E731
    else:  # s lowers the last block's width r
        make = lambda s: plan(replace(cfg, r=1.0 - (1.0 - 1e-3) * s))  # noqa: E731
    best = make(1.0)
    if cost(best) > target + 1e-9:
        raise ConfigError(_unreachable(cfg, target, budget, cost(best)))
    lo, hi, above = 0.0, 1.0, make(0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        p = make(mid)
        if cost(p) > target:
            lo, above = mid, p
        else:
            hi, best = mid, p
    if nearest and cost(above) - target < target - cost(best):
        return above
    return best


def _unreachable(cfg: TaperConfig, target: float, budget: str, reached: float) -> str:
    """Why no strength of the schedule meets the budget, and what to change: the embedding, the
    head and the norms are part of the budget but no taper shrinks them."""
    zero = (0,) * cfg.B
    base = uniform_plan(cfg)
    if budget == "params":
        fixed = count_params(cfg.n_embd, zero, cfg.head_dim, zero, cfg.vocab_size, cfg.block_size) / base.params()
    else:
        fixed = flops_per_token(cfg.n_embd, zero, cfg.head_dim, zero, cfg.vocab_size,
                                cfg.block_size) / base.flops_per_token()
    strongest = (f"every block after the first at the floor r={cfg.r:g}" if cfg.schedule in _ALPHA_MATCHED
                 else "the last block at the narrowest whole head and FFN quantum")
    floor = "lower --r, " if cfg.schedule in _ALPHA_MATCHED else ""
    least = math.ceil(reached * 1000) / 1000  # printed rounded up: a fraction the taper does reach
    return (f"cannot reach {target:.3f} x uniform {budget} with schedule {cfg.schedule}: its strongest taper "
            f"({strongest}) reaches {reached:.3f} x, because the embedding and head, which no taper shrinks, are "
            f"{100 * fixed:.0f} % of the {budget} at vocab {cfg.vocab_size} and width {cfg.n_embd}; {floor}ask for "
            f"at least {least:.3f}, or give sizes where the blocks dominate (larger --n-embd and --d-ff, "
            "or a smaller --vocab)")


def gradient_profile(gradients, B: int) -> tuple[float, ...]:
    """Per-block accumulated training gradient ``A`` (final, block units ``h.0 .. h.{B-1}``) from a
    run's gradient table (:func:`gfa_theory.train.store.read_gradients`), in block order: the
    ``profile`` of the measured schedule. A ConfigError when the table lacks any of them."""
    g = gradients
    need = {"unit", "kind", "quantity", "value"}
    if not need <= set(g.columns):
        raise ConfigError("the gradient table has no block-level accumulated gradients (columns "
                          f"{', '.join(sorted(need - set(g.columns)))} missing)")
    final = g["step"].isna() if "step" in g.columns else True
    rows = g[(g["kind"] == "block") & (g["quantity"] == "A") & final]
    if rows.empty:
        raise ConfigError("the gradient table has no accumulated gradient A of any block "
                          "(a run trained with block tracking is needed)")
    units = [f"h.{b}" for b in range(B)]
    by_unit = block_totals(rows, "A", units, "the gradient table")
    zero = [u for u in units if by_unit[u] == 0]
    if zero:
        raise ConfigError(f"block {zero[0]} has A = 0 (frozen, or never reached by a gradient): a width "
                          "proportional to A would be zero there")
    return tuple(by_unit[u] for u in units)


# ---- the profile predicted before training ----------------------------------------------------
PREDICT_ACCOUNTS = tuple(a for a in ACCOUNTS if a != "counts")  # the accounts that use gains
MAX_PREDICT_BATCHES = 16  # held-out batches the gains are averaged over (each a few backward passes)


@dataclass(frozen=True)
class PredictConfig:
    """How :func:`predicted_profile` measures: ``batches`` validation windows of ``batch_size``
    sequences of the shipped corpus (drawn with its split seed), the model initialized with
    ``seed``, ``probes`` Gaussian probes per Jacobian, norm gains included (``norms``)."""

    account: str = "product"
    seed: int = 0
    batches: int = 2
    batch_size: int = 4
    probes: int = 2
    norms: bool = True

    def __post_init__(self) -> None:
        if self.account not in PREDICT_ACCOUNTS:
            raise ConfigError(f"unknown account {self.account!r} (choose from {', '.join(PREDICT_ACCOUNTS)})")
        for name, high in (("batches", MAX_PREDICT_BATCHES), ("batch_size", 64), ("probes", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
                raise ConfigError(f"predict {name} must be an integer in 1..{high}, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"predict seed must be a non-negative integer, got {self.seed!r}")


def predicted_profile(model_cfg, pc: PredictConfig = PredictConfig()) -> tuple[float, ...]:
    """Per unique block, the predicted profile of ``A`` at initialization: a GPT of ``model_cfg``
    (a :class:`~gfa_theory.models.GPTConfig`; its vocabulary set from the corpus) initialized with
    ``pc.seed``, its branch and norm gains measured on held-out windows of the shipped corpus
    (:func:`gfa_theory.instrument.gains.heldout_gains`), put through the account ``pc.account``
    and summed per block. On the CPU, and leaving the caller's RNG state alone: the same
    config and seed give the same profile."""
    if not isinstance(model_cfg, GPTConfig):
        raise ConfigError(f"a predicted profile needs a GPT config, got {type(model_cfg).__name__}")
    data = load_data(DataConfig())
    cfg = replace(model_cfg, vocab_size=data.vocab_size, dropout=0.0)
    data.check_seq_len(cfg.block_size)
    need = (3 * param_count("gpt", cfg) + (2 + pc.probes) * activation_floats("gpt", cfg, pc.batch_size)) \
        * FLOAT_BYTES + BASE_BYTES
    check_fits(need, "measuring the gains of this model", advice="make the model or the batch smaller")
    batches = list(eval_batches(data, "val", pc.batch_size, pc.batches, cfg.block_size,
                                seed=DataConfig().split_seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pc.seed)
        model = GPT(cfg)
    table = heldout_gains(model, batches, pc.probes, pc.seed, step=0)
    per_branch = predict_profile(model, table, norms=pc.norms)[pc.account]
    return tuple(float(v) for v in unit_profile(model, per_branch, "block"))


# ---- analytic cost model (what the tables report next to measured latency) ------------------
def count_params(C: int, n_head: tuple[int, ...], head_dim: int, d_ff: tuple[int, ...],
                 vocab_size: int, block_size: int, bias: bool = True) -> int:
    """Parameters of a GPT with per-block widths (tied embeddings, LayerNorms with bias)."""
    total = vocab_size * C + block_size * C + 2 * C  # token + position embeddings, final LN
    for h, f in zip(n_head, d_ff):
        a = h * head_dim
        total += 2 * 2 * C  # two LayerNorms
        total += 3 * C * a + a * C + (3 * a + C if bias else 0)  # qkv + output projection
        total += 2 * C * f + (f + C if bias else 0)  # FFN
    return int(total)


def flops_per_token(C: int, n_head: tuple[int, ...], head_dim: int, d_ff: tuple[int, ...],
                    vocab_size: int, block_size: int) -> float:
    """Forward FLOPs per token (2 per multiply-add; causal attention averaged over the context)."""
    total = 2.0 * C * vocab_size  # LM head
    for h, f in zip(n_head, d_ff):
        a = h * head_dim
        total += 2.0 * (3 * C * a + a * C)  # projections
        total += 2.0 * 2 * a * (block_size + 1) / 2  # QK^T and AV over ~T/2 keys on average
        total += 2.0 * 2 * C * f  # FFN
    return total
