"""How studies run: the :class:`Context`, the one way tasks are dispatched, and the run cache.

* :class:`Context` says where and how a study runs (profile, results root, executor and how many
  tasks at once, ``force``, progress bars).
* :func:`map_in_workers` is the one way the studies dispatch tasks: it applies a top-level function
  to every item through the context's executor (:mod:`experiments.executors`: the local process
  pool by default, or Dask or SLURM), each task on one torch thread (small models parallelize better
  across runs than inside one), or in this process, also on one thread, when one local worker is
  asked for. The thread count is part of a run's numeric environment, so every path computes the same.
* :func:`run_many` trains the runs a study needs through it and the result cache of
  :mod:`gfa_theory.train.store`: a run keyed by its config hash is never trained twice, so studies
  share runs. A finished run is read back through the store's reuse checks
  (:func:`gfa_theory.train.lifecycle.train` with ``resume=True``: the config, checkpoint and the
  recorded thread count must match), so a study never silently reuses a run trained otherwise.
* :func:`start` is the common opening of a study: its context, clock, plan and runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch

from gfa_theory.errors import ConfigError, TrainingError
from gfa_theory.train.lifecycle import RunResult, train
from gfa_theory.train.run_config import RunConfig, run_key
from gfa_theory.train.store import is_complete, results_root

from .executors import RUN_THREADS, Executor, check_spec, make_executor
from .plans import PROFILES, StudyPlan, plan

T = TypeVar("T")


@dataclass
class Context:
    """Where and how a study runs. ``force`` retrains runs once per process (shared runs too).
    ``executor`` and ``jobs``: see :mod:`experiments.executors`; the executor is started on the
    first task and stopped by :meth:`close` (or at the end of a ``with`` block)."""

    profile: str = "default"
    root: Path = field(default_factory=lambda: results_root())
    jobs: int = 0  # tasks at once, for every executor; 0 = its default (local: CPU cores, at most 8)
    force: bool = False
    progress: bool = True
    retrained: set = field(default_factory=set)  # run keys retrained in this process
    executor: str = "local"
    _pool: Executor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile '{self.profile}' (choices: {', '.join(PROFILES)})")
        self.root = Path(self.root)
        check_spec(self.executor)

    def study_dir(self, name: str) -> Path:
        return self.root / "studies" / self.profile / name

    def pool(self) -> Executor:
        """The executor, started on first use."""
        if self._pool is None:
            self._pool = make_executor(self.executor, self.jobs, self.root)
        return self._pool

    def usage(self) -> dict:
        """Which executor this context dispatches to, and how many tasks it runs at once (None
        until it has been started)."""
        return {"executor": self.executor.split("?", 1)[0].split("://", 1)[0],
                "workers": None if self._pool is None else self._pool.workers}

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- dispatching tasks -------------------------------------------------------------------------

@contextlib.contextmanager
def run_threads() -> Iterator[None]:
    """Torch on :data:`RUN_THREADS` threads inside the block, as in a worker process."""
    before = torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_in_workers(fn: Callable[..., T], items: Sequence[tuple], ctx: Context, desc: str,
                   labels: Sequence[str] | None = None) -> list[T]:
    """``[fn(*item) for item in items]`` through ``ctx``'s executor (``fn`` must be importable: a
    module-level function), with one progress bar; results in item order. A task that fails is
    reported (``labels``: what names each item, e.g. its run directory) while the others finish,
    then :class:`~experiments.executors.TasksFailed` lists the failures."""
    return ctx.pool().map(fn, items, desc, ctx.progress, labels)


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
        map_in_workers(_train_or_diverge if diverged_as_none else _train_run, tasks, ctx, desc=f"train {desc}",
                       labels=[f"run {ctx.root / k}" for k in todo])
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
