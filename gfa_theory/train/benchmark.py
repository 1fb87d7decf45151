"""The timing method of ``gfa bench`` (:func:`interleaved_times`), the tracker- and gain-monitor-overhead
benchmarks (:func:`tracker_overhead`, :func:`gain_overhead`), the package's training step against a bare
PyTorch loop (:func:`loop_overhead`) and tokens/s along a ladder of model widths (:func:`size_throughput`).

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

from gfa_theory.models import build_model
from gfa_theory.train.data import TextData
from gfa_theory.train.loop import Trainer, lr_multiplier, make_optimizer
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


class BareLoop:
    """The reference a training step is judged against: the same model (same seed, same
    initialization), AdamW/SGD with the same parameter groups and schedule, random windows of the
    same training tokens, clipping, written as a plain PyTorch loop with nothing else in it."""

    def __init__(self, cfg: RunConfig, data: TextData, device: torch.device) -> None:
        tc = cfg.train
        torch.manual_seed(tc.seed)
        self.model = build_model(cfg.model_name, cfg.model).to(device)
        self.optimizer = make_optimizer(self.model, tc)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: lr_multiplier(tc, k))
        self.tokens, self.T, self.B = data.train.to(device), cfg.model.block_size, tc.batch_size
        self.offsets = torch.arange(self.T + 1, device=device)
        self.generator = torch.Generator(device=device).manual_seed(tc.seed)
        self.clip = tc.grad_clip

    def step(self) -> None:
        starts = torch.randint(0, len(self.tokens) - self.T, (self.B,), generator=self.generator,
                               device=self.tokens.device)
        chunk = self.tokens[starts[:, None] + self.offsets]  # (B, T+1)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        _, loss = self.model(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        self.optimizer.step()
        self.scheduler.step()


def _spread(name: str, ratios: list[float]) -> dict:
    """Median, interquartile range and min-max of per-repeat ratios (the IQR is what a shared
    machine's load disturbs least)."""
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {name: statistics.median(ratios), f"{name}_q1": q1, f"{name}_q3": q3,
            f"{name}_min": min(ratios), f"{name}_max": max(ratios)}


def loop_overhead(cfg: RunConfig, repeats: int = 20, block: int = 5, warmup: int = 3) -> dict:
    """Training-step time of the package (:class:`Trainer`, with ``cfg``'s tracking, and with the
    tracker off) against :class:`BareLoop` on the same model, data and optimizer, and a second bare
    loop (the A/A control: what a ratio of identical loops reads on this machine). The four are
    timed in interleaved blocks of ``block`` steps; each ratio is the median over repeats of
    (variant / bare) with its quartiles and min-max; tokens/s counts ``batch_size * block_size`` per step."""
    if repeats < 1 or block < 1 or warmup < 0:
        raise ValueError("repeats and block must be >= 1, warmup >= 0")
    if cfg.model_name != "gpt":
        raise ValueError("the bare-loop benchmark times the GPT on text")
    cfg, data = resolve(cfg)
    total = warmup + repeats * block
    base = dataclasses.replace(cfg.train, steps=max(cfg.train.steps, total))
    cfg = dataclasses.replace(cfg, train=base)
    plain_cfg = dataclasses.replace(cfg, train=dataclasses.replace(base, track="none", gain_every=None))
    package, plain = Trainer(cfg, data), Trainer(plain_cfg, data)
    device = package.device
    bare, twin = BareLoop(cfg, data, device), BareLoop(cfg, data, device)
    steps = [bare.step, twin.step, plain.train_step, package.train_step]
    for _ in range(warmup):
        for step in steps:
            step()
    t_bare, t_twin, t_plain, t_package = interleaved_times(steps, repeats, block, device)
    tokens = cfg.train.batch_size * cfg.model.block_size
    med = {k: statistics.median(v) for k, v in
           {"bare": t_bare, "twin": t_twin, "plain": t_plain, "package": t_package}.items()}
    return {
        **_spread("package_ratio", [p / b for b, p in zip(t_bare, t_package)]),
        **_spread("untracked_ratio", [p / b for b, p in zip(t_bare, t_plain)]),
        **_spread("aa_ratio", [t / b for b, t in zip(t_bare, t_twin)]),
        "step_s_bare": med["bare"], "step_s_untracked": med["plain"], "step_s_package": med["package"],
        "tokens_per_s_bare": tokens / med["bare"], "tokens_per_s_package": tokens / med["package"],
        "params": package.raw_model.num_params(), "tokens_per_step": tokens,
        "track": cfg.train.track, "gain_every": cfg.train.gain_every,
        "repeats": repeats, "steps_per_repeat": block, "warmup_steps": warmup,
        "data": data.source, "device": str(device), "threads": torch.get_num_threads(),
    }


def size_throughput(cfg: RunConfig, widths: Sequence[int], repeats: int = 10, block: int = 3,
                    warmup: int = 2) -> list[dict]:
    """Tokens/s of the package's training step (``cfg``'s tracking) at each residual width ``C`` in
    ``widths`` (FFN hidden ``4 C``, ``cfg``'s heads, blocks, context and batch), the sizes timed in
    interleaved blocks. One row per width: parameters (without position embeddings), median step
    time with its min-max, tokens/s, and the median over repeats of this width's step time over
    the first width's (``time_ratio``)."""
    if repeats < 1 or block < 1 or warmup < 0:
        raise ValueError("repeats and block must be >= 1, warmup >= 0")
    if not widths:
        raise ValueError("widths must name at least one width")
    total = warmup + repeats * block
    trainers = []
    for width in widths:
        model = dataclasses.replace(cfg.model, n_embd=width, d_ff=4 * width)
        train = dataclasses.replace(cfg.train, steps=max(cfg.train.steps, total))
        resolved, data = resolve(dataclasses.replace(cfg, model=model, train=train))
        trainers.append(Trainer(resolved, data))
    for _ in range(warmup):
        for tr in trainers:
            tr.train_step()
    device = trainers[0].device
    times = interleaved_times([tr.train_step for tr in trainers], repeats, block, device)
    rows = []
    for width, tr, t in zip(widths, trainers, times):
        tokens = tr.cfg.train.batch_size * tr.cfg.model.block_size
        step_s = statistics.median(t)
        rows.append({
            "n_embd": width, "n_blocks": tr.cfg.model.n_blocks, "params": tr.raw_model.num_params(),
            "step_s": step_s, "step_s_min": min(t), "step_s_max": max(t), "tokens_per_s": tokens / step_s,
            "time_ratio": statistics.median([a / b for a, b in zip(t, times[0])]),
            "tokens_per_step": tokens, "track": tr.cfg.train.track, "repeats": repeats,
            "steps_per_repeat": block, "data": tr.data.source, "device": str(device),
            "threads": torch.get_num_threads()})
    return rows
