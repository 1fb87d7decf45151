"""Latency and throughput of CascadeFormer (width-tapered) vs uniform Transformers.

Behind ``gfa bench taper`` and the timing half of ``experiments/cascadeformer.py``. The method
is the one of :mod:`gfa_theory.train.benchmark`: every model is built in one process, warmed up, then timed
in short blocks interleaved across the models (:func:`gfa_theory.train.benchmark.interleaved_times`, the
order reversed every other repeat), so drift and other load on the machine hit every model alike.

* **latency**: seconds per forward pass at batch 1 and a fixed context ``T`` (inference mode);
* **throughput**: tokens per second of a forward pass at a large batch (``batch * T`` tokens);
* **train_latency**: seconds per training step (forward, backward and an AdamW step) at batch 1;
* **train_throughput**: tokens per second of a training step at ``train_batch`` sequences.

Training steps run on deep copies of the models (the timed weights change; the caller's do not).

A model's ratio against the baseline is the median over repeats of the *per-repeat* ratio
(``t_model / t_base`` for latency, ``t_base / t_model`` for throughput, so a faster model has a
latency ratio below 1 and a throughput ratio above 1); the interquartile range of the per-repeat
ratios is the spread. Timing does not depend on the values of dense weights, so untrained models
(``gfa bench taper``) time like trained ones; the torch thread count is fixed while timing and
reported.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory.devices import check_device
from gfa_theory.errors import ConfigError
from gfa_theory.methods.taper import TaperConfig, TaperPlan, plan, uniform_plan
from gfa_theory.models import GPT, GPTConfig
from gfa_theory.train.benchmark import interleaved_times

MODES = ("latency", "throughput", "train_latency", "train_throughput")
# per mode: (batch size field or 1, calls field, training step?)
_MODE = {"latency": (None, "latency_calls", False), "throughput": ("batch", "throughput_calls", False),
         "train_latency": (None, "train_calls", True), "train_throughput": ("train_batch", "train_calls", True)}


@dataclass(frozen=True)
class TimingConfig:
    """How to time: ``context`` tokens per sequence, ``batch`` sequences for throughput,
    ``repeats`` interleaved blocks of ``latency_calls`` / ``throughput_calls`` forward passes
    (``train_calls`` training steps at batch 1 and at ``train_batch``) after ``warmup`` untimed
    calls per model and mode, with ``threads`` torch threads, on ``device`` (``auto``: CUDA when
    present, else the CPU). ``modes``: which of :data:`MODES` to time."""

    context: int = 64
    batch: int = 64
    repeats: int = 30
    warmup: int = 5
    latency_calls: int = 10
    throughput_calls: int = 2
    threads: int = 1
    device: str = "cpu"
    seed: int = 0  # of the random input tokens
    train_batch: int = 16
    train_calls: int = 1
    modes: tuple[str, ...] = MODES

    def __post_init__(self) -> None:
        for name in ("context", "batch", "repeats", "latency_calls", "throughput_calls", "threads", "train_batch",
                     "train_calls"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"timing '{name}' must be a positive integer, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"timing 'warmup' must be an integer >= 0, got {self.warmup!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"timing modes must be among {', '.join(MODES)}, got {', '.join(bad) or 'none'}")
        object.__setattr__(self, "modes", tuple(self.modes))
        # "auto" -> cuda or cpu here, so results record the device that was timed
        object.__setattr__(self, "device", str(check_device(self.device, "timing device")))


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[int]:
    """Run the block with ``n`` intra-op torch threads, restoring the previous setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step (forward, backward, AdamW) of ``model`` as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        opt.step()
    return step


def time_models(models: Mapping[str, nn.Module], vocab_size: int, cfg: TimingConfig) -> pd.DataFrame:
    """Seconds per call (forward pass or training step) of every model, per mode and repeat.

    Columns: ``model``, ``mode`` (one of :data:`MODES`), ``repeat``, ``seconds`` (per call),
    ``tokens_per_s``, ``threads``. All models see the same input tokens; every mode interleaves
    all models (an A/A copy among them is timed exactly like the others).
    """
    if not models:
        raise ConfigError("time_models needs at least one model")
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    names = list(models)
    for m in models.values():
        m.to(device).eval()
    rows = []
    with fixed_threads(cfg.threads) as threads:
        for mode in cfg.modes:
            batch_field, calls_field, train = _MODE[mode]
            n = getattr(cfg, batch_field) if batch_field else 1
            x = torch.randint(0, vocab_size, (n, cfg.context), generator=g).to(device)
            y = torch.randint(0, vocab_size, (n, cfg.context), generator=g).to(device)
            if train:
                copies = {k: copy.deepcopy(models[k]).train() for k in names}
                steps = [_train_step(copies[k], x, y) for k in names]
                ctx = contextlib.nullcontext()
            else:
                steps = [(lambda m=models[k], x=x: m(x)) for k in names]  # noqa: E731 (bind per model)
                ctx = torch.inference_mode()
            with ctx:
                for step in steps:  # warm-up: allocator, kernels, caches (and the optimizer state)
                    for _ in range(cfg.warmup):
                        step()
                times = interleaved_times(steps, cfg.repeats, getattr(cfg, calls_field), device)
            tokens = x.numel()
            for k, ts in zip(names, times):
                rows += [{"model": k, "mode": mode, "repeat": r, "seconds": t, "tokens_per_s": tokens / t,
                          "threads": threads} for r, t in enumerate(ts)]
    return pd.DataFrame(rows)


def _quantiles(v: np.ndarray) -> tuple[float, float, float]:
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return float(q50), float(q25), float(q75)


def timing_summary(times: pd.DataFrame, baseline: str = "uniform") -> pd.DataFrame:
    """One row per model: median (and IQR) latency in ms, throughput in tokens/s, and the median
    (and IQR) of the per-repeat ratios against ``baseline``, for every timed mode (a training
    mode's columns are prefixed ``train_``: ``train_latency_ms``, ``train_throughput_ratio`` ...)."""
    if baseline not in set(times["model"]):
        raise ConfigError(f"baseline model '{baseline}' was not timed")
    modes = [m for m in MODES if m in set(times["mode"])]
    rows = []
    for name in dict.fromkeys(times["model"]):
        row: dict = {"model": name}
        for mode in modes:
            t = times[(times.model == name) & (times["mode"] == mode)].sort_values("repeat")
            b = times[(times.model == baseline) & (times["mode"] == mode)].sort_values("repeat")
            sec, tok = t["seconds"].to_numpy(), t["tokens_per_s"].to_numpy()
            # paired by repeat: both were timed in the same interleaved round
            latency = mode.endswith("latency")
            ratio = sec / b["seconds"].to_numpy() if latency else b["seconds"].to_numpy() / sec
            med, lo, hi = _quantiles(ratio)
            if latency:
                row[f"{mode}_ms"], row[f"{mode}_ms_q25"], row[f"{mode}_ms_q75"] = (1e3 * v for v in _quantiles(sec))
            else:
                row[f"{mode}_tok_s"], row[f"{mode}_tok_s_q25"], row[f"{mode}_tok_s_q75"] = _quantiles(tok)
            row[f"{mode}_ratio"], row[f"{mode}_ratio_q25"], row[f"{mode}_ratio_q75"] = med, lo, hi
        row["repeats"] = int(times[times.model == name]["repeat"].nunique())
        row["threads"] = int(times["threads"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


# ---- the default pair (``gfa bench taper``) ---------------------------------------------------

def gpt_from_plan(p: TaperPlan, seed: int = 0) -> nn.Module:
    """The GPT that realizes a taper plan (seeded initialization)."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=p.config.vocab_size, block_size=p.config.block_size,
                         **p.model_overrides()))


def bench_taper(taper: TaperConfig | None = None, timing: TimingConfig | None = None) -> dict:
    """Time the tapered model of ``taper`` (default: ``TaperConfig()``, linear, r = 0.5) against
    the uniform model of the same depth and residual width. Untrained weights: the timing of
    dense layers does not depend on their values. Returns a flat dict (ratios first)."""
    taper = taper or TaperConfig()
    timing = timing or TimingConfig(context=taper.block_size)
    if timing.context > taper.block_size:
        raise ConfigError(f"context {timing.context} exceeds the models' block_size {taper.block_size}")
    if taper.schedule == "uniform":
        raise ConfigError("the tapered model's schedule must not be 'uniform' (it is timed against uniform)")
    tapered, base = plan(taper), uniform_plan(taper)
    models = {"uniform": gpt_from_plan(base), "tapered": gpt_from_plan(tapered)}
    summary = timing_summary(time_models(models, taper.vocab_size, timing)).set_index("model")
    u, t = summary.loc["uniform"], summary.loc["tapered"]
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    ratios = {f"{m}_ratio{q}": float(t[f"{m}_ratio{q}"]) for m in timing.modes for q in ("", "_q25", "_q75")}
    absolute = {}
    for m in timing.modes:
        unit = "ms" if m.endswith("latency") else "tok_s"
        absolute |= {f"{m}_{unit}_uniform": float(u[f"{m}_{unit}"]), f"{m}_{unit}_tapered": float(t[f"{m}_{unit}"])}
    return {
        **ratios, **absolute,
        "params_uniform": params["uniform"], "params_tapered": params["tapered"],
        "params_ratio": params["tapered"] / params["uniform"],
        "flops_ratio": tapered.flops_per_token() / base.flops_per_token(),
        "schedule": taper.schedule, "r": taper.r, "alpha": taper.alpha, "blocks": taper.B,
        "n_embd": taper.n_embd, "head_dim": tapered.head_dim,
        "n_head": ",".join(map(str, tapered.n_head)), "d_ff": ",".join(map(str, tapered.d_ff)),
        "quantum": taper.quantum,
        **{k: (",".join(v) if k == "modes" else v) for k, v in asdict(timing).items() if k != "seed"},
        "weights": "untrained (dense-layer timing does not depend on weight values)",
        "torch_version": torch.__version__,
    }

