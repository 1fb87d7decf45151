"""The training loop: resumable, deterministic on CPU, DDP-ready, with the gradient tracker.

One optimizer step is::

    loss = model(x, y)                # mean over the supervised heads
    loss.backward()                   # DDP: gradients all-reduced here
    tracker.step()                    # A += ||grad|| per unit (raw gradient, before changes)
    hook(model, step) for on_after_backward hooks, then the gradient intervention
                                      # (equalize / global_rescale), if any
    clip_grad_norm_(grad_clip)
    optimizer.step()                  # then the update intervention (equalize_update), if any
    scheduler.step()

:func:`train` writes one result directory per config (see :mod:`gfa_theory.train.store`), checkpoints
every ``checkpoint_interval`` steps and, when rerun with the same config after a crash, resumes
from the last checkpoint and produces byte-identical results to an uninterrupted run (on CPU).
Under ``torchrun`` the same code runs data-parallel: every rank draws the same global batch and
trains on its slice, rank 0 evaluates and writes.

A non-finite loss is caught without a host synchronization per step: the first bad step is
recorded on the device and checked at every logging and checkpoint step (so training stops at
most ``log_interval`` steps later, naming the first bad step); a checkpoint is written only after
that check passes, so the last checkpoint on disk is always a good one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory import __version__
from gfa_theory.config import to_dict
from gfa_theory.devices import check_device
from gfa_theory.errors import GFAError, RunStoreError, TrainingError
from gfa_theory.instrument.evaluation import evaluate
from gfa_theory.instrument.gains import GainMonitor, heldout_gains
from gfa_theory.instrument.tracking import (
    GradientTracker,
    UnitNorms,
    equalize_gradients_,
    equalize_updates_,
    rescale_gradients_globally_,
    snapshot_params,
)
from gfa_theory.models import build_model
from gfa_theory.train.data import BatchSampler, Dataset, TextData, run_eval_batches
from gfa_theory.train.run_config import (
    METRIC_COLUMNS,
    AfterBackward,
    RunConfig,
    TrainConfig,
    env_mismatch,
    environment,
    hook_names,
    resolve,
    resolved_run_key,
)
from gfa_theory.train.store import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    GRADIENTS_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SNAPSHOT_DIR,
    fault_point,
    load_run,
    make_dirs,
    numpy_rng_plain,
    numpy_rng_state,
    read_checkpoint,
    read_config,
    results_root,
    save_torch_atomic,
    storage_error,
    unreadable,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

# ---- schedule, optimizer ----------------------------------------------------------------------

def lr_multiplier(tc: TrainConfig, k: int) -> float:
    """Learning-rate factor of optimizer step ``k`` (0-based): linear warmup, then cosine/constant."""
    if k < tc.warmup_steps:
        return (k + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return 1.0
    progress = min(1.0, (k - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps))
    return tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # decay weight matrices / conv kernels; biases, norms and gains are left alone
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.99))
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)


# ---- distributed -------------------------------------------------------------------------------

@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialized the process group (and destroy it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def _init_world(device: str) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    dist = torch.distributed
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
        owns = True
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _device(tc: TrainConfig, world: World) -> torch.device:
    dev = check_device(tc.device, "train.device")
    if dev.type == "cuda":
        if world.size > 1:
            dev = torch.device("cuda", world.local_rank)
        if dev.index is not None:
            torch.cuda.set_device(dev)
    return dev


# ---- branch gains sampled during training (TrainConfig.gain_every) ---------------------------

GAINS_FILE = "gains.csv"  # the sampled gains of a run with gain_every (gfa_theory.instrument.gains)
GAIN_PROBES = 2  # Gaussian VJP probes per branch Jacobian gain (fixed: gains.csv of a config is one table)


def _gain_monitor(model: nn.Module, tc: TrainConfig, world: "World") -> GainMonitor | None:
    """The gain sampler of a run with ``gain_every`` (rank 0 only: it measures its own batch slice)."""
    if not tc.gain_every or not world.main:
        return None
    return GainMonitor(model, tc.gain_every, GAIN_PROBES, seed=tc.seed)


def _sample_gains(monitor: GainMonitor, model: nn.Module, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
    """Gains at ``step`` updates on the batch about to be trained on, in eval mode: no dropout draw
    from the global RNG and no BatchNorm running-statistics update, so training is unchanged (the
    probes have their own generator and ``.grad`` is untouched)."""
    if not monitor.due(step):
        return
    model.eval()
    try:
        monitor.maybe(step, x, y)
    finally:
        model.train()


def _gain_rows(monitor: GainMonitor) -> dict[str, list]:
    """The sampled rows as plain columns (a checkpoint holds them: a resumed run writes the same table)."""
    return _frame_rows(monitor.to_frame())


def _frame_rows(df: pd.DataFrame) -> dict[str, list]:
    return {c: [None if pd.isna(v) else v for v in df[c].tolist()] for c in df.columns}


HELDOUT_GAINS_FILE = "heldout_gains.csv"  # gains on held-out batches at train.heldout_gain_steps
HELDOUT_GAIN_BATCHES = 2  # validation batches per sample when train.heldout_gain_batches is None


class HeldoutGains:
    """Branch and norm gains on fixed validation batches at the declared steps of a run
    (``train.heldout_gain_steps``). The batches are the run's first evaluation
    batches, drawn once with the data's split seed, so sampling leaves the training RNG alone."""

    def __init__(self, model: nn.Module, cfg: RunConfig, data: Dataset) -> None:
        tc = cfg.train
        self.model, self.steps = model, frozenset(tc.heldout_gain_steps)
        self.seed = tc.seed
        n = tc.heldout_gain_batches or HELDOUT_GAIN_BATCHES
        self._batches = lambda: list(run_eval_batches(data, cfg, "val", n_batches=n))
        self.batches: list | None = None
        self.frames: list[pd.DataFrame] = []

    def maybe(self, step: int, device: torch.device) -> None:
        if step not in self.steps:
            return
        if self.batches is None:
            self.batches = [(x.to(device), y.to(device)) for x, y in self._batches()]
        # eval mode but BatchNorm on batch statistics, every module's mode and buffer restored after
        self.frames.append(heldout_gains(self.model, self.batches, GAIN_PROBES, self.seed + step, step))

    def to_frame(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame(columns=["step", "unit", "index", "quantity", "value"])
        return pd.concat(self.frames, ignore_index=True)


# ---- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Model, optimizer, schedule, sampler and tracker of one run, stepped one update at a time.

    ``cfg`` must be resolved (see :func:`resolve`). ``train_step`` performs one update without
    any host synchronization; losses are accumulated on the device until :meth:`log_train`.
    """

    def __init__(self, cfg: RunConfig, data: Dataset, world: World | None = None,
                 on_after_backward: Sequence[AfterBackward] = ()) -> None:
        self.cfg, self.data = cfg, data
        self.world = world or World()
        tc = cfg.train
        self.device = _device(tc, self.world)
        torch.manual_seed(tc.seed)  # model initialization (and dropout) follow the seed
        self.raw_model = build_model(cfg.model_name, cfg.model).to(self.device)
        self.model: nn.Module = self.raw_model
        if self.world.size > 1:
            if self.device.type == "cuda":
                self.raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.raw_model, device_ids=ids)
        self.optimizer = make_optimizer(self.raw_model, tc)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_multiplier, tc))
        self.seq_len = cfg.model.block_size if isinstance(data, TextData) else None
        self.sampler = BatchSampler(data, tc.batch_size, tc.seed, self.seq_len,
                                    self.world.rank, self.world.size)
        self.tracker = None
        if tc.track != "none":
            self.tracker = GradientTracker(self.raw_model, kind=tc.track, stream=tc.track_stream,
                                           series_every=tc.series_every, max_steps=tc.steps,
                                           accumulate=bool(tc.accumulate), track_updates=bool(tc.track_updates))
        self.gains = _gain_monitor(self.raw_model, tc, self.world)
        # every rank measures the same batches (a SyncBatchNorm in batch mode needs all of them);
        # rank 0 writes the table
        self.heldout_gains = HeldoutGains(self.raw_model, cfg, data) if tc.heldout_gain_steps else None
        self.block_norms = UnitNorms(self.raw_model.units("block")) if tc.intervention != "none" else None
        self.hooks = list(on_after_backward)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.step = 0
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_n = 0
        self._bad = torch.zeros((), dtype=torch.long, device=self.device)  # first non-finite step

    def lr_at(self, k: int) -> float:
        """Learning rate of optimizer step ``k`` (0-based)."""
        return self.cfg.train.lr * lr_multiplier(self.cfg.train, k)

    def train_step(self) -> None:
        x, y = self.sampler.next()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.gains is not None:
            _sample_gains(self.gains, self.raw_model, self.step, x, y)
        if self.heldout_gains is not None:
            self.heldout_gains.maybe(self.step, self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        _, loss = self.model(x, y)
        loss.backward()
        self.step += 1
        if self.tracker is not None:
            self.tracker.step()
        for hook in self.hooks:
            hook(self.raw_model, self.step)
        intervention = self.cfg.train.intervention
        if intervention == "equalize":
            equalize_gradients_(self.block_norms)
        elif intervention == "global_rescale":
            rescale_gradients_globally_(self.block_norms)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip, foreach=True)
        updates = self.tracker is not None and self.tracker.track_updates
        if updates:
            self.tracker.before_update()
        before = snapshot_params(self.block_norms) if intervention == "equalize_update" else None
        self.optimizer.step()
        if before is not None:  # before the tracker reads the step: U is the applied update
            equalize_updates_(self.block_norms, before)
        if updates:
            self.tracker.after_update()
        self.scheduler.step()
        loss = loss.detach()
        self._loss_sum += loss
        self._loss_n += 1
        self._bad = torch.where(torch.isfinite(loss) | (self._bad > 0), self._bad,
                                torch.full_like(self._bad, self.step))

    def first_bad_step(self) -> int:
        """The first step with a non-finite loss on any rank (0: none). Synchronizes."""
        bad = self._bad.clone()
        if self.world.size > 1:
            # ranks disagree only if a loss went non-finite locally; report the earliest
            bad = torch.where(bad > 0, bad, torch.full_like(bad, 2 ** 62))
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MIN)
            bad = torch.where(bad == 2 ** 62, torch.zeros_like(bad), bad)
        return int(bad)

    def log_train(self) -> dict:
        """Mean training loss since the last log (over the global batch). Synchronizes."""
        total = torch.stack([self._loss_sum, torch.tensor(float(self._loss_n), dtype=torch.float64,
                                                          device=self.device)])
        if self.world.size > 1:
            torch.distributed.all_reduce(total)
        loss = float(total[0] / total[1]) if float(total[1]) else float("nan")
        self._loss_sum.zero_()
        self._loss_n = 0
        return {"step": self.step, "split": "train", "loss": loss, "accuracy": float("nan"),
                "lr": self.lr_at(self.step - 1)}

    def evaluate(self, split: str = "val") -> dict:
        """Loss and accuracy of the final head on the fixed evaluation batches of ``split``."""
        ev = evaluate(self.raw_model, run_eval_batches(self.data, self.cfg, split))
        return {"step": self.step, "split": split, "loss": ev.loss, "accuracy": ev.accuracy,
                "lr": self.lr_at(max(self.step - 1, 0))}

    # ---- checkpoints -------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": numpy_rng_plain(np.random.get_state())}  # tensors: loads weights_only
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self) -> dict:
        """Everything an exact resume needs (every rank's RNG state under DDP)."""
        rng = self._rng_state()
        if self.world.size > 1:
            gathered: list = [None] * self.world.size
            torch.distributed.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        return {"step": self.step, "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": rngs,
                "tracker": None if self.tracker is None else self.tracker.state_dict(),
                "loss_sum": self._loss_sum.cpu(), "loss_n": self._loss_n, "bad": self._bad.cpu(),
                **({} if self.gains is None else {"gains": _gain_rows(self.gains)}),
                **({} if self.heldout_gains is None else
                   {"heldout_gains": _frame_rows(self.heldout_gains.to_frame())})}

    def load_state_dict(self, state: dict) -> None:
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.tracker is not None:
            self.tracker.load_state_dict(state["tracker"])
        if self.gains is not None:
            self.gains.frames = [pd.DataFrame(state["gains"])] if state["gains"]["step"] else []
        if self.heldout_gains is not None:
            rows = state["heldout_gains"]
            self.heldout_gains.frames = [pd.DataFrame(rows)] if rows["step"] else []
        rngs = state["rng"]
        if len(rngs) != self.world.size:
            raise TrainingError(f"checkpoint was written by {len(rngs)} processes, "
                                f"this run has {self.world.size}: resume with the same world size")
        rng = rngs[self.world.rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(numpy_rng_state(rng["numpy"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self._loss_sum.copy_(state["loss_sum"])
        self._loss_n = int(state["loss_n"])
        self._bad.copy_(state["bad"])


# ---- results -------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """A finished run. ``trained`` is False when it was read back from an earlier run."""

    run_dir: Path
    config: RunConfig
    model: nn.Module
    metrics: pd.DataFrame
    gradients: pd.DataFrame
    trained: bool


def _run_info(run_id: str, cfg: RunConfig, data: Dataset, hooks: Sequence[AfterBackward],
              world: World, num_params: int, env: dict) -> dict:
    info: dict[str, Any] = {"dataset": cfg.data.dataset, "source": data.source, "sha256": data.sha256}
    if isinstance(data, TextData):
        info.update(vocab_size=data.vocab_size, train_tokens=len(data.train), val_tokens=len(data.val))
    else:
        info.update(n_classes=data.n_classes, train_size=len(data.y_train), val_size=len(data.y_val))
    return {"run_id": run_id, "config": to_dict(cfg), "seed": cfg.train.seed, "data": info,
            "hooks": hook_names(hooks), "num_params": num_params, "world_size": world.size,
            "versions": {"gfa_theory": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "environment": env}


def _remove_if_only_lock(path: Path) -> None:
    """A start that failed before writing anything leaves no directory holding only a lock."""
    try:
        if os.listdir(path) == [LOCK_FILE]:
            (path / LOCK_FILE).unlink()
            path.rmdir()
    except OSError:
        pass


@contextlib.contextmanager
def _run_lock(path: Path, enabled: bool, key: str = ""):
    """Exclusive lock on a run directory: two processes never train the same run at once.

    The OS drops it when the holder dies (even by SIGKILL), so a rerun can always take over. A
    process that has to wait says so on stderr first. The holder removes the directory on the way
    out if it holds nothing but the lock (a failed start); a waiter then finds its lock file gone
    and starts over on a fresh one.
    """
    if not enabled:
        yield
        return
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:  # pragma: no cover
        yield
        return
    lock = path / LOCK_FILE
    while True:
        make_dirs(path)
        try:
            fh = open(lock, "a")  # noqa: SIM115  (held until the end of the block below)
        except FileNotFoundError:  # the directory was removed in between: make it again
            continue
        except OSError as exc:
            raise storage_error(exc, lock, "create the lock file") from None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process training run {key} ({path})", file=sys.stderr, flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(lock))
            except FileNotFoundError:
                same = False
        except BaseException:
            fh.close()
            raise
        if same:
            break
        fh.close()  # locked a lock file that its holder has since removed: take the new one
    try:
        yield
    finally:
        try:
            _remove_if_only_lock(path)  # still holding the lock: no one else is writing here
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


class _Interrupt:
    """SIGINT and SIGTERM during :func:`train`. Inside the training loop (one process) the
    signal is noted and the loop stops at the end of the current step, writes a checkpoint and
    raises KeyboardInterrupt; elsewhere, under DDP or on a second signal, KeyboardInterrupt is
    raised at once (the last checkpoint on disk is kept)."""

    def __init__(self) -> None:
        self.deferred = False  # True while the loop checks `pending` after every step
        self.pending: str | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.deferred and self.pending is None:
            self.pending = signal.Signals(signum).name
            return
        raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts():
    """Route SIGINT / SIGTERM through an :class:`_Interrupt` (main thread, default handlers only)."""
    stop = _Interrupt()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) is default:
                old[sig] = signal.signal(sig, stop.handler)
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _checkpoint_steps(tc: TrainConfig) -> list[int]:
    """Steps with a checkpoint (and a weight snapshot): every ``checkpoint_interval``, and the last."""
    ci = tc.checkpoint_interval
    return sorted(set(range(ci, tc.steps, ci) if ci else ()) | {tc.steps})


def _missing_artifacts(rdir: Path, tc: TrainConfig) -> list[str]:
    """The files a finished run must hold (what the studies read) that ``rdir`` lacks."""
    names = [CONFIG_FILE, METRICS_FILE, GRADIENTS_FILE, CHECKPOINT_FILE,
             *(f"{SNAPSHOT_DIR}/step-{s}.pt" for s in _checkpoint_steps(tc)),
             *([GAINS_FILE] if tc.gain_every else []),
             *([HELDOUT_GAINS_FILE] if tc.heldout_gain_steps else [])]
    return [n for n in names if not (rdir / n).is_file()]


def _loaded(rdir: Path, trained: bool) -> RunResult:
    cfg, model, metrics, gradients = load_run(rdir)
    return RunResult(rdir, cfg, model, metrics, gradients, trained)


def _reuse(rdir: Path, key: str, cfg: RunConfig, device: torch.device) -> RunResult:
    """A finished run, read back only after checking that it is what it claims to be: the DONE
    marker and config.json name this run and config, it was trained in the same numeric
    environment (:data:`_CHECKED`), its checkpoint loads and is this run's last step, and every
    artifact is there. Anything else is a one-line RunStoreError naming the file."""
    remedy = f"delete {rdir} or retrain it with --force"
    done = rdir / DONE_FILE
    try:
        marker = done.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:
        raise unreadable(done, exc, rdir) from None
    if marker != key:
        raise RunStoreError(f"{done} names run {marker[:80]!r}, not {key}: {remedy}")
    meta = read_config(rdir)
    cfile = rdir / CONFIG_FILE
    if meta.get("run_id") != key:
        raise RunStoreError(f"{cfile} belongs to run {str(meta.get('run_id'))[:80]!r}, not {key}: {remedy}")
    if meta["config"] != json.loads(json.dumps(to_dict(cfg))):
        raise RunStoreError(f"{cfile} records another config than the one of run {key}: {remedy}")
    problem = env_mismatch(meta.get("environment"), environment(device), key, rdir, "reuse")
    if problem:
        raise RunStoreError(problem)
    ckpt = rdir / CHECKPOINT_FILE
    state = read_checkpoint(ckpt, run=rdir)
    if state.get("run_id") != key or state.get("step") != cfg.train.steps:
        raise RunStoreError(f"{ckpt} holds step {state.get('step')!r} of run {str(state.get('run_id'))[:80]!r}, "
                            f"not the final step {cfg.train.steps} of {key}: {remedy}")
    del state
    missing = _missing_artifacts(rdir, cfg.train)
    if missing:
        raise RunStoreError(f"run {key} in {rdir} is marked complete but {rdir / missing[0]} is missing: {remedy}")
    return _loaded(rdir, trained=False)


def train(cfg: RunConfig, out_root: str | os.PathLike | None = None, resume: bool = True,
          progress: bool = True, on_after_backward: Sequence[AfterBackward] = (),
          force: bool = False) -> RunResult:
    """Train ``cfg`` into ``<out_root>/<model>-<hash>/`` (see :mod:`gfa_theory.train.store`).

    ``resume``: a complete run is read back instead of retrained (once checked: intact files, same
    run, same numeric environment, else a one-line RunStoreError), and a partial one continues
    from its last checkpoint; with ``resume=False`` or ``force=True`` the run starts over from
    scratch. ``on_after_backward``: user hooks ``hook(model, step)`` called after backward, before
    clipping and the update (their names enter the run's hash). Raises :class:`TrainingError` on
    a non-finite loss, keeping the last good checkpoint. SIGINT or SIGTERM stop at the end of the
    current step with a checkpoint and raise KeyboardInterrupt; the same call then resumes.
    """
    hooks = list(on_after_backward)
    resume = resume and not force
    device = check_device(cfg.train.device, "train.device")  # before any directory is made
    world = _init_world(device.type)
    try:
        with _interrupts() as stop:
            resolved, data = resolve(cfg)
            key = resolved_run_key(resolved, data, hooks)
            rdir = results_root(out_root) / key
            if resume and (rdir / DONE_FILE).is_file():  # finished: read back, no lock (read-only is fine)
                return _reuse(rdir, key, resolved, device)
            with _run_lock(rdir, world.main, key):
                world.barrier()
                if resume and (rdir / DONE_FILE).is_file():  # finished while we waited for the lock
                    return _reuse(rdir, key, resolved, device)
                world.barrier()  # every rank has looked before rank 0 may remove DONE below
                return _train(resolved, data, key, rdir, resume, progress, hooks, world, stop)
    finally:
        if world.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: RunConfig, data: Dataset, key: str, rdir: Path, resume: bool, progress: bool,
           hooks: list[AfterBackward], world: World, stop: _Interrupt | None = None) -> RunResult:
    run = _RunWriter(Trainer(cfg, data, world, hooks), key, rdir, world, stop or _Interrupt())
    if resume and run.ckpt_path.is_file():
        run.resume()
    elif world.main:  # from scratch: nothing of an earlier attempt may survive
        for name in (DONE_FILE, CHECKPOINT_FILE, METRICS_FILE, GRADIENTS_FILE, CONFIG_FILE):
            (rdir / name).unlink(missing_ok=True)
        shutil.rmtree(rdir / SNAPSHOT_DIR, ignore_errors=True)
    if world.main:  # temporary files of a writer that was killed mid-write
        for tmp in rdir.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    run.write_config(data, hooks)
    run.loop(progress)
    run.finish()
    return _loaded(rdir, trained=True)


class _RunWriter:
    """One training run and its directory: resume, the step loop with its logs, evaluations
    and checkpoints, and the final files. Rank 0 writes; every rank takes part in collectives."""

    def __init__(self, trainer: Trainer, key: str, rdir: Path, world: World, stop: _Interrupt) -> None:
        self.trainer, self.key, self.rdir, self.world, self.stop = trainer, key, rdir, world, stop
        self.env = environment(trainer.device)
        self.ckpt_path = rdir / CHECKPOINT_FILE
        self.rows: list[dict] = []  # metrics.csv rows
        self.last_ckpt = 0

    def resume(self) -> None:
        """Continue from the checkpoint on disk, once it is known to be this run's."""
        key, rdir, ckpt_path = self.key, self.rdir, self.ckpt_path
        remedy = f"delete {rdir} or retrain it with --force"
        # on the CPU: RNG states must stay there; load_state_dict moves the rest to the device
        state = read_checkpoint(ckpt_path, "cpu", run=rdir)
        if state.get("run_id") != key:
            raise RunStoreError(f"{ckpt_path} belongs to run {str(state.get('run_id'))[:80]!r}, not {key}: {remedy}")
        problem = env_mismatch(state.get("environment"), self.env, key, rdir, "resume")
        if problem:
            raise RunStoreError(problem)
        try:
            self.trainer.load_state_dict(state)
            self.rows = list(state["metrics"])
        except GFAError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise RunStoreError(f"{ckpt_path} does not fit run {key} ({type(exc).__name__}): {remedy}") from None
        self.last_ckpt = self.trainer.step

    def write_config(self, data: Dataset, hooks: list[AfterBackward]) -> None:
        n_params = sum(p.numel() for p in self.trainer.raw_model.parameters())
        info = _run_info(self.key, self.trainer.cfg, data, hooks, self.world, n_params, self.env)
        if self.world.main:
            write_json_atomic(self.rdir / CONFIG_FILE, info)
            fault_point("config")
        self.world.barrier()

    def check_finite(self) -> None:
        bad = self.trainer.first_bad_step()
        if bad:
            kept = (f"the last good checkpoint (step {self.last_ckpt}) is kept in {self.rdir}" if self.last_ckpt
                    else "no checkpoint had been written yet")
            raise TrainingError(f"non-finite training loss at step {bad} of run {self.key}: stopped; {kept}")

    def full_state(self) -> dict:
        state = self.trainer.state_dict()  # a collective under DDP: every rank takes part
        state.update(run_id=self.key, metrics=self.rows, environment=self.env)
        return state

    def checkpoint(self) -> None:
        state = self.full_state()
        if self.world.main:
            # the weight snapshot and metrics first, checkpoint.pt last: a checkpoint on disk
            # always has the files of its step (and earlier ones) beside it, so a kill anywhere in
            # between resumes from the previous checkpoint and rewrites the same files.
            # Snapshots: model weights at every checkpoint step, kept (small): rank stability
            # across training checkpoints is measured on these (pruning study)
            step = self.trainer.step
            save_torch_atomic(self.rdir / SNAPSHOT_DIR / f"step-{step}.pt",
                              {"step": step, "model": self.trainer.raw_model.state_dict()})
            fault_point("snapshot")
            self.write_metrics()
            fault_point("metrics")
            save_torch_atomic(self.ckpt_path, state)
            fault_point("checkpoint")
        self.world.barrier()

    def write_metrics(self) -> None:
        """``metrics.csv`` with every row so far, atomically (rank 0). Written after each
        evaluation too, so a long run's curve can be watched; a kill leaves rows past the last
        checkpoint, which its resumption rewrites identically."""
        write_csv_atomic(self.rdir / METRICS_FILE, pd.DataFrame(self.rows, columns=METRIC_COLUMNS))

    def evaluate(self) -> None:
        """A held-out evaluation (rank 0): its row, and metrics.csv rewritten."""
        self.rows.append(self.trainer.evaluate())
        self.write_metrics()

    def interrupted(self) -> None:  # one process only (stop.deferred is never set under DDP)
        self.check_finite()
        save_torch_atomic(self.ckpt_path, self.full_state())  # exact resume from any step
        print(f"{self.stop.pending or 'interrupted'}: stopped at step {self.trainer.step} of run {self.key}; "
              f"checkpoint written to {self.ckpt_path}: rerun the same command to resume", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def after_step(self, bar: Any) -> None:
        """Log, evaluate and checkpoint after a step, as the intervals say."""
        trainer, tc, world = self.trainer, self.trainer.cfg.train, self.world
        s = trainer.step
        final = s == tc.steps
        if s % tc.log_interval == 0 or final:
            self.check_finite()
            row = trainer.log_train()
            if world.main:
                self.rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        if world.main and ((tc.eval_interval and s % tc.eval_interval == 0) or final):
            self.evaluate()
        if tc.checkpoint_interval and s % tc.checkpoint_interval == 0 and not final:
            self.check_finite()
            self.checkpoint()
            self.last_ckpt = s

    def loop(self, progress: bool) -> None:
        """Train to ``train.steps`` (from wherever the trainer is), stopping cleanly on a signal."""
        from tqdm.auto import tqdm  # noqa: PLC0415  (third-party, imported when a run trains)

        trainer, tc, world, stop = self.trainer, self.trainer.cfg.train, self.world, self.stop
        if trainer.step == 0 and tc.eval_interval and world.main:
            self.evaluate()
        bar = tqdm(total=tc.steps, initial=trainer.step, desc=self.key, dynamic_ncols=True,
                   disable=not (progress and world.main))
        with bar:
            stop.deferred = world.size == 1
            try:
                while trainer.step < tc.steps:
                    trainer.train_step()
                    bar.update(1)
                    self.after_step(bar)
                    if stop.pending:
                        self.interrupted()
            finally:
                stop.deferred = False
            if stop.pending:  # a signal between the last check and the line above
                self.interrupted()

    def finish(self) -> None:
        """The final checkpoint, gradients.csv and, once every file is there, DONE."""
        self.check_finite()
        self.checkpoint()
        key, rdir, tc = self.key, self.rdir, self.trainer.cfg.train
        if self.world.main:
            tracker = self.trainer.tracker
            if tracker is not None:
                grads = tracker.to_frame()
            else:
                grads = pd.DataFrame(columns=["unit", "kind", "index", "quantity", "step", "value", "fan_in"])
            grads.insert(0, "seed", tc.seed)
            grads.insert(0, "run_id", key)
            write_csv_atomic(rdir / GRADIENTS_FILE, grads)
            fault_point("gradients")
            if self.trainer.gains is not None:
                write_csv_atomic(rdir / GAINS_FILE, self.trainer.gains.to_frame().assign(run_id=key, seed=tc.seed))
            if self.trainer.heldout_gains is not None:
                write_csv_atomic(rdir / HELDOUT_GAINS_FILE,
                                 self.trainer.heldout_gains.to_frame().assign(run_id=key, seed=tc.seed))
            missing = _missing_artifacts(rdir, tc)
            if missing:  # never mark a run complete that the studies cannot read
                raise TrainingError(f"run {key} in {rdir}: {', '.join(missing)} missing after training; "
                                    f"not marking it complete")
            fault_point("done")
            write_text_atomic(rdir / DONE_FILE, f"{key}\n")  # last: marks the directory complete
        self.world.barrier()


def get_or_train(cfg, root: str | os.PathLike | None = None, progress: bool = False,
                 force: bool = False, **kwargs):
    """The run of ``cfg`` under ``root``: trained once, then read back (keyed by its hash).

    A partial run (killed or interrupted) resumes from its last checkpoint; a finished one is
    checked before it is reused (see :func:`train`). ``force``: retrain
    from scratch even if the run is complete. Extra keyword arguments go to
    :func:`train`.
    """
    return train(cfg, root, resume=True, progress=progress, force=force, **kwargs)
