"""The trainer: one run's model, optimizer, schedule, sampler and tracker, stepped one update at a time.

One optimizer step is::

    loss = model(x, y)                # mean over the supervised heads
    loss.backward()                   # DDP: gradients all-reduced here
    tracker.step()                    # A += ||grad|| per unit (raw gradient, before changes)
    hook(model, step) for on_after_backward hooks, then the gradient intervention
                                      # (equalize / global_rescale), if any
    clip_grad_norm_(grad_clip)
    optimizer.step()                  # then the update intervention (equalize_update), if any
    scheduler.step()

:class:`Trainer` holds everything an exact resume needs (:meth:`Trainer.state_dict`). Under
``torchrun`` the same code runs data-parallel: every rank draws the same global batch and trains on
its slice. A non-finite loss is recorded on the device without a host synchronization per step
(:meth:`Trainer.first_bad_step` reads it). The run around a trainer -- its directory, lock,
signals, checkpoints and the checks before a finished run is reused -- is
:mod:`gfa_theory.train.lifecycle` (:func:`~gfa_theory.train.lifecycle.train`).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory.devices import check_device
from gfa_theory.errors import TrainingError
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
from gfa_theory.train.run_config import AfterBackward, RunConfig, TrainConfig
from gfa_theory.train.store import numpy_rng_plain, numpy_rng_state

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


def init_world(device: str) -> World:
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
