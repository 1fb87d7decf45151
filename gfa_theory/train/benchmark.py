"""The timing method of ``gfa bench`` (:func:`interleaved_times`) and the tracker- and gain-monitor-overhead
benchmarks (:func:`tracker_overhead`, :func:`gain_overhead`).

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


def gain_overhead(cfg: RunConfig | None = None, every: int = 50, repeats: int = 6, warmup: int = 3) -> dict:
    """Training-step time of ``cfg`` with ``train.gain_every = every`` against the same run without
    it, and a second copy of the plain run (the A/A control: what a ratio of identical variants
    reads on this machine). Each repeat times one sampling period (``every`` steps, one sample) of
    every variant, interleaved, the order alternating; ``overhead_ratio`` is the median over
    repeats of (with gains / plain), ``aa_ratio`` the same for the two plain copies, with the
    min-max spread of each; ``sample_s`` times one gain measurement alone."""
    if repeats < 1 or every < 1 or warmup < 0:
        raise ValueError("repeats and every must be >= 1, warmup >= 0")
    cfg = cfg or default_run_config("gpt")
    cfg, data = resolve(cfg)
    total = warmup + repeats * every + 1
    base = dataclasses.replace(cfg.train, steps=max(cfg.train.steps, total), gain_every=None)
    plain_cfg = dataclasses.replace(cfg, train=base)
    gains_cfg = dataclasses.replace(cfg, train=dataclasses.replace(base, gain_every=every))
    plain, twin, gains = Trainer(plain_cfg, data), Trainer(plain_cfg, data), Trainer(gains_cfg, data)
    for tr in (plain, twin, gains):  # the same steps: sampling falls at the start of each timed period
        for _ in range(warmup):
            tr.train_step()
        while tr.step % every:
            tr.train_step()
    device = gains.device
    t_plain, t_twin, t_gains = interleaved_times([plain.train_step, twin.train_step, gains.train_step],
                                                 repeats, every, device)
    x, y = gains.sampler.next()
    _sync(device)
    t0 = time.perf_counter()
    gains.gains.maybe(0, x.to(device), y.to(device))
    _sync(device)
    sample_s = time.perf_counter() - t0
    ratios = [g / p for p, g in zip(t_plain, t_gains)]
    aa = [b / a for a, b in zip(t_plain, t_twin)]
    median_plain = statistics.median(t_plain)
    return {
        "overhead_ratio": statistics.median(ratios),
        "overhead_ratio_min": min(ratios), "overhead_ratio_max": max(ratios),
        "aa_ratio": statistics.median(aa), "aa_ratio_min": min(aa), "aa_ratio_max": max(aa),
        "ratio_of_minimums": min(t_gains) / min(t_plain),
        "step_s_without": median_plain,
        "step_s_with": statistics.median(t_gains),
        "sample_s": sample_s,
        "sample_in_steps": sample_s / median_plain,
        "expected_overhead": 1 + sample_s / median_plain / every,
        "gain_every": every,
        "probes": gains.gains.probes,
        "repeats": repeats,
        "warmup_steps": warmup,
        "model": cfg.model_name,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
