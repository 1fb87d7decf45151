"""How studies run: the :class:`Context`, the one process pool and the run cache.

* :class:`Context` says where and how a study runs (profile, results root, worker processes,
  ``force``, progress bars).
* :func:`map_in_workers` is the one process pool of the studies: it applies a top-level function
  to every item in worker processes with one torch thread each (small models parallelize better
  across runs than inside one), or in this process, also on one thread, when one worker is asked
  for. The thread count is part of a run's numeric environment, so every path computes the same.
* :func:`run_many` trains the runs a study needs through that pool and the result cache of
  :mod:`gfa_theory.train.store`: a run keyed by its config hash is never trained twice, so studies
  share runs. A finished run is read back through the store's reuse checks
  (:func:`gfa_theory.train.loop.train` with ``resume=True``: the config, checkpoint and the
  recorded thread count must match), so a study never silently reuses a run trained otherwise.
* :func:`start` is the common opening of a study: its context, clock, plan and runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from tqdm.auto import tqdm

from gfa_theory.errors import ConfigError, TrainingError
from gfa_theory.train.loop import RunResult, train
from gfa_theory.train.run_config import RunConfig, run_key
from gfa_theory.train.store import is_complete, results_root

from .plans import PROFILES, StudyPlan, plan

T = TypeVar("T")
RUN_THREADS = 1  # torch threads of every study run and analysis worker


@dataclass
class Context:
    """Where and how a study runs. ``force`` retrains runs once per process (shared runs too)."""

    profile: str = "default"
    root: Path = field(default_factory=lambda: results_root())
    jobs: int = 0  # worker processes; 0 = number of CPU cores (at most 8)
    force: bool = False
    progress: bool = True
    retrained: set = field(default_factory=set)  # run keys retrained in this process

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile '{self.profile}' (choices: {', '.join(PROFILES)})")
        self.root = Path(self.root)
        if self.jobs <= 0:
            self.jobs = max(1, min(os.cpu_count() or 1, 8))

    def study_dir(self, name: str) -> Path:
        return self.root / "studies" / self.profile / name


# ---- the process pool ----------------------------------------------------------------------------

@contextlib.contextmanager
def run_threads() -> Iterator[None]:
    """Torch on :data:`RUN_THREADS` threads inside the block, as in a worker process."""
    before = torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _in_worker(fn: Callable[..., T], args: tuple) -> T:
    torch.set_num_threads(RUN_THREADS)  # a worker process runs nothing else
    return fn(*args)


def map_in_workers(fn: Callable[..., T], items: Sequence[tuple], ctx: Context, desc: str) -> list[T]:
    """``[fn(*item) for item in items]``, in up to ``ctx.jobs`` spawned worker processes (``fn``
    must be importable: a module-level function), with a progress bar; results in item order.
    A worker's exception is re-raised here."""
    out: list[T] = [None] * len(items)  # type: ignore[list-item]
    jobs = min(ctx.jobs, len(items))
    with tqdm(total=len(items), desc=desc, disable=not ctx.progress, dynamic_ncols=True) as bar:
        if jobs <= 1:
            with run_threads():
                for i, args in enumerate(items):
                    out[i] = fn(*args)
                    bar.update(1)
        else:
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                futs = {pool.submit(_in_worker, fn, args): i for i, args in enumerate(items)}
                for f in as_completed(futs):
                    out[futs[f]] = f.result()
                    bar.update(1)
    return out


# ---- the run cache -------------------------------------------------------------------------------

def _train_run(cfg_dict: dict, root: str, resume: bool) -> str:
    """Train one run (a worker task: plain arguments in, the run directory out)."""
    cfg = RunConfig.from_dict(cfg_dict)
    return str(train(cfg, root, resume=resume, progress=False).run_dir)


def _train_or_diverge(cfg_dict: dict, root: str, resume: bool) -> str | None:
    """:func:`_train_run`, but None when the loss went non-finite (the run keeps its last good
    checkpoint, so a rerun diverges again at the same step, deterministically)."""
    try:
        return _train_run(cfg_dict, root, resume)
    except TrainingError:
        return None


def run_many(cfgs: Sequence[RunConfig], ctx: Context, desc: str = "runs",
             diverged_as_none: bool = False) -> list[RunResult | None]:
    """Train (or read back) every config; results in the order given.

    Runs missing from the cache, or all of them once per process under ``ctx.force``, are
    trained in the pool; then every run is read back through the store's checks. With
    ``diverged_as_none`` a run whose loss went non-finite (a learning-rate sweep) is None
    instead of stopping the study.
    """
    keys = [run_key(c) for c in cfgs]
    todo: dict[str, RunConfig] = {}
    for k, c in zip(keys, cfgs):
        fresh = ctx.force and k not in ctx.retrained
        if (fresh or not is_complete(ctx.root / k)) and k not in todo:
            todo[k] = c
    if todo:
        tasks = [(c.to_dict(), str(ctx.root), not (ctx.force and k not in ctx.retrained)) for k, c in todo.items()]
        map_in_workers(_train_or_diverge if diverged_as_none else _train_run, tasks, ctx, desc=f"train {desc}")
        if ctx.force:
            ctx.retrained.update(todo)
    out = []
    with run_threads():  # the thread count the runs were trained with: the reuse check compares it
        for k, c in zip(keys, cfgs):
            if diverged_as_none and not is_complete(ctx.root / k):
                out.append(None)
                continue
            res = train(c, ctx.root, resume=True, progress=False)
            out.append(dataclasses.replace(res, trained=k in todo))
    return out


class Opening(NamedTuple):
    """What :func:`start` hands a study: its context, start time, plan, runs and their results."""

    ctx: Context
    started: float
    plan: StudyPlan
    runs: list[tuple[dict, RunConfig]]  # (descriptors, config) of every run, in study order
    results: list[RunResult]


def start(name: str, configs: Callable[[str], list[tuple[dict, RunConfig]]], profile: str,
          ctx: Context | None) -> Opening:
    """The common opening of a study's ``run``: context, clock, plan and its (cached) runs."""
    ctx = ctx or Context(profile)
    started = time.time()
    runs = configs(ctx.profile)
    results = run_many([c for _, c in runs], ctx, desc=name)
    return Opening(ctx, started, plan(ctx.profile), runs, results)
