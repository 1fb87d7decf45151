"""Latency and throughput of CascadeFormer (width-tapered) vs uniform Transformers.

Behind ``gfa bench taper`` and the timing half of ``experiments/cascadeformer.py``. The method
is the one of :mod:`gfa_theory.train.benchmark`: every model is built in one process, warmed up, then timed
in short blocks interleaved across the models (:func:`gfa_theory.train.benchmark.interleaved_times`, the
order reversed every other repeat), so drift and other load on the machine hit every model alike.

* **latency**: seconds per forward pass at batch 1 and a fixed context ``T`` (inference mode);
* **throughput**: tokens per second of a forward pass at a large batch (``batch * T`` tokens).

A model's ratio against the baseline is the median over repeats of the *per-repeat* ratio
(``t_model / t_base`` for latency, ``t_base / t_model`` for throughput, so a faster model has a
latency ratio below 1 and a throughput ratio above 1); the interquartile range of the per-repeat
ratios is the spread. Timing does not depend on the values of dense weights, so untrained models
(``gfa bench taper``) time like trained ones; the torch thread count is fixed while timing and
reported.
"""
from __future__ import annotations

import contextlib
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

MODES = ("latency", "throughput")


@dataclass(frozen=True)
class TimingConfig:
    """How to time: ``context`` tokens per sequence, ``batch`` sequences for throughput,
    ``repeats`` interleaved blocks of ``latency_calls`` / ``throughput_calls`` forward passes
    after ``warmup`` untimed passes per model and mode, with ``threads`` torch threads, on
    ``device`` (``auto``: CUDA when present, else the CPU)."""

    context: int = 64
    batch: int = 64
    repeats: int = 30
    warmup: int = 5
    latency_calls: int = 10
    throughput_calls: int = 2
    threads: int = 1
    device: str = "cpu"
    seed: int = 0  # of the random input tokens

    def __post_init__(self) -> None:
        for name in ("context", "batch", "repeats", "latency_calls", "throughput_calls", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"timing '{name}' must be a positive integer, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"timing 'warmup' must be an integer >= 0, got {self.warmup!r}")
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


def time_models(models: Mapping[str, nn.Module], vocab_size: int, cfg: TimingConfig) -> pd.DataFrame:
    """Seconds per forward pass of every model, per mode and repeat (long format).

    Columns: ``model``, ``mode`` (latency | throughput), ``repeat``, ``seconds`` (per forward
    pass), ``tokens_per_s``, ``threads``. All models see the same input tokens.
    """
    if not models:
        raise ConfigError("time_models needs at least one model")
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    inputs = {"latency": torch.randint(0, vocab_size, (1, cfg.context), generator=g).to(device),
              "throughput": torch.randint(0, vocab_size, (cfg.batch, cfg.context), generator=g).to(device)}
    calls = {"latency": cfg.latency_calls, "throughput": cfg.throughput_calls}
    names = list(models)
    for m in models.values():
        m.to(device).eval()
    rows = []
    with fixed_threads(cfg.threads) as threads, torch.inference_mode():
        for mode in MODES:
            x = inputs[mode]
            steps = [(lambda m=models[n], x=x: m(x)) for n in names]  # noqa: E731 (bind per model)
            for step in steps:  # warm-up: allocator, kernels, caches
                for _ in range(cfg.warmup):
                    step()
            times = interleaved_times(steps, cfg.repeats, calls[mode], device)
            tokens = x.numel()
            for n, ts in zip(names, times):
                rows += [{"model": n, "mode": mode, "repeat": r, "seconds": t, "tokens_per_s": tokens / t,
                          "threads": threads} for r, t in enumerate(ts)]
    return pd.DataFrame(rows)


def _quantiles(v: np.ndarray) -> tuple[float, float, float]:
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return float(q50), float(q25), float(q75)


def timing_summary(times: pd.DataFrame, baseline: str = "uniform") -> pd.DataFrame:
    """One row per model: median (and IQR) latency in ms, throughput in tokens/s, and the median
    (and IQR) of the per-repeat ratios against ``baseline``."""
    if baseline not in set(times["model"]):
        raise ConfigError(f"baseline model '{baseline}' was not timed")
    rows = []
    for name in dict.fromkeys(times["model"]):
        row: dict = {"model": name}
        for mode in MODES:
            t = times[(times.model == name) & (times["mode"] == mode)].sort_values("repeat")
            b = times[(times.model == baseline) & (times["mode"] == mode)].sort_values("repeat")
            sec, tok = t["seconds"].to_numpy(), t["tokens_per_s"].to_numpy()
            # paired by repeat: both were timed in the same interleaved round
            ratio = sec / b["seconds"].to_numpy() if mode == "latency" else b["seconds"].to_numpy() / sec
            med, lo, hi = _quantiles(ratio)
            if mode == "latency":
                row["latency_ms"], row["latency_ms_q25"], row["latency_ms_q75"] = (1e3 * v for v in _quantiles(sec))
            else:
                row["throughput_tok_s"], row["throughput_tok_s_q25"], row["throughput_tok_s_q75"] = _quantiles(tok)
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
    return {
        "latency_ratio": float(t.latency_ratio), "throughput_ratio": float(t.throughput_ratio),
        "latency_ratio_q25": float(t.latency_ratio_q25), "latency_ratio_q75": float(t.latency_ratio_q75),
        "throughput_ratio_q25": float(t.throughput_ratio_q25), "throughput_ratio_q75": float(t.throughput_ratio_q75),
        "latency_ms_uniform": float(u.latency_ms), "latency_ms_tapered": float(t.latency_ms),
        "throughput_tok_s_uniform": float(u.throughput_tok_s), "throughput_tok_s_tapered": float(t.throughput_tok_s),
        "params_uniform": params["uniform"], "params_tapered": params["tapered"],
        "params_ratio": params["tapered"] / params["uniform"],
        "flops_ratio": tapered.flops_per_token() / base.flops_per_token(),
        "schedule": taper.schedule, "r": taper.r, "alpha": taper.alpha, "blocks": taper.B,
        "n_embd": taper.n_embd, "head_dim": tapered.head_dim,
        "n_head": ",".join(map(str, tapered.n_head)), "d_ff": ",".join(map(str, tapered.d_ff)),
        "quantum": taper.quantum, **{k: v for k, v in asdict(timing).items() if k != "seed"},
        "weights": "untrained (dense-layer timing does not depend on weight values)",
        "torch_version": torch.__version__,
    }

