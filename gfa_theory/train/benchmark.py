"""The timing method of ``gfa bench`` (:func:`interleaved_times`) and the tracker-overhead benchmark.

Method shared by every benchmark (``gfa bench tracker`` here, ``gfa bench taper`` in
:mod:`gfa_theory.methods.taper_timing`): the variants are built in one process, warmed up, then
timed in short interleaved blocks (the order alternates each repeat) and compared by the
median of the per-repeat ratios, so drift and other load on the machine hit both alike.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from gfa_theory.train.loop import Trainer
from gfa_theory.train.run_config import RunConfig, default_run_config, resolve


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(steps: Sequence[Callable[[], None]], repeats: int, block: int,
                      device: torch.device) -> list[list[float]]:
    """Seconds per call of each function, one entry per repeat, timed in interleaved blocks
    (a progress bar on stderr when it is a terminal: ``gfa bench`` runs for minutes)."""
    times: list[list[float]] = [[] for _ in steps]
    for r in tqdm(range(repeats), desc="timing", disable=None, leave=False):
        order = list(range(len(steps)))
        if r % 2:
            order.reverse()
        for k in order:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(block):
                steps[k]()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / block)
    return times


def tracker_overhead(cfg: RunConfig | None = None, repeats: int = 50, block: int = 2,
                     warmup: int = 5) -> dict:
    """Training-step time of ``cfg`` (default: the default GPT) with / without the tracker.

    Both trainers start from the same seed and run the same steps; the tracker keeps the
    config's settings (default: branch and block units, stream-gradient hooks).
    ``overhead_ratio`` is the median over repeats of (tracked block time / plain block time);
    ``gradient_norms_s`` times the per-step parameter-gradient pass of ``tracker.step()`` alone
    (on the tracked trainer's last gradients), a noise-free lower bound on the overhead.
    """
    if repeats < 1 or block < 1 or warmup < 0:
        raise ValueError("repeats and block must be >= 1, warmup >= 0")
    cfg = cfg or default_run_config("gpt")
    if cfg.train.track == "none":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, track="both"))
    cfg, data = resolve(cfg)
    total = warmup + repeats * block
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=max(cfg.train.steps, total)))
    plain_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, track="none"))
    plain, tracked = Trainer(plain_cfg, data), Trainer(cfg, data)
    for _ in range(warmup):
        plain.train_step()
        tracked.train_step()
    device = tracked.device
    t_plain, t_tracked = interleaved_times([plain.train_step, tracked.train_step], repeats, block, device)
    t_norms = _gradient_norms_time(tracked.tracker, device)
    return _overhead_summary(t_plain, t_tracked, t_norms, repeats, block, warmup, tracked.tracker, cfg, device)


def _gradient_norms_time(tracker, device: torch.device, n_calls: int = 50) -> float:
    """Seconds per call of the per-step parameter-gradient work of ``tracker.step()``."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_calls):
        tracker.norms.squared()
    _sync(device)
    return (time.perf_counter() - t0) / n_calls


def _overhead_summary(t_plain: list[float], t_tracked: list[float], t_norms: float, repeats: int,
                      block: int, warmup: int, tracker, cfg: RunConfig, device: torch.device) -> dict:
    ratios = [b / a for a, b in zip(t_plain, t_tracked)]
    median_plain, median_tracked = statistics.median(t_plain), statistics.median(t_tracked)
    return {
        "overhead_ratio": statistics.median(ratios),
        "ratio_of_medians": median_tracked / median_plain,
        "ratio_of_minimums": min(t_tracked) / min(t_plain),  # least disturbed by other load
        "step_s_without": median_plain,
        "step_s_with": median_tracked,
        "gradient_norms_s": t_norms,
        "gradient_norms_fraction": t_norms / median_plain,
        "repeats": repeats,
        "steps_per_repeat": block,
        "warmup_steps": warmup,
        "units": len(tracker.units),
        "stream_hooks": tracker.stream,
        "model": cfg.model_name,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
