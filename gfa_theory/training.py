"""The training loop: resumable, deterministic on CPU, DDP-ready, with the gradient tracker.

One optimizer step is::

    loss = model(x, y)                # mean over the supervised heads
    loss.backward()                   # DDP: gradients all-reduced here
    tracker.step()                    # A += ||grad|| per unit (raw gradient, before changes)
    hook(model, step) for on_after_backward hooks, then gradient-norm equalization
    clip_grad_norm_(grad_clip)
    optimizer.step(); scheduler.step()

:func:`train` writes one result directory per config (see :mod:`gfa_theory.runs`), checkpoints
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
import dataclasses
import math
import os
import platform
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import __version__
from .config import _merge, apply_overrides, config_hash, from_dict, load_json, to_dict
from .data import BatchSampler, DataConfig, Dataset, TextData, eval_batches, load_data
from .errors import ConfigError, TrainingError
from .models import MODELS, build_model
from .runs import (CHECKPOINT_FILE, CONFIG_FILE, SNAPSHOT_DIR, DONE_FILE, GRADIENTS_FILE, METRICS_FILE,
                   load_run, results_root, save_torch_atomic, write_csv_atomic, write_json_atomic,
                   write_text_atomic)
from .tracking import GradientTracker, UnitNorms, equalize_gradients_

# Which data each trainable model reads.
MODEL_TASKS = {"gpt": "text", "resnet": "image"}
AfterBackward = Callable[[nn.Module, int], None]
METRIC_COLUMNS = ["step", "split", "loss", "accuracy", "lr"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, logging and tracking settings of one run.

    Intervals count optimizer steps; 0 means "only at the end". ``track``: which units the
    gradient tracker records ("none" disables it). ``series_points``: length of the
    downsampled per-step gradient series. ``intervention``: "equalize" rescales each block's
    gradient to the mean block norm before every update (SPEC study 3).
    """

    steps: int = 400
    batch_size: int = 32  # global batch: split across DDP ranks
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9  # SGD momentum (AdamW uses betas 0.9, 0.99)
    weight_decay: float = 0.1  # on weight matrices / conv kernels only, never biases or norms
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 20  # linear warmup from lr / warmup_steps
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    seed: int = 0
    device: str = "cpu"
    eval_interval: int = 100
    eval_batches: int = 8
    checkpoint_interval: int = 100
    log_interval: int = 10
    intervention: Literal["none", "equalize"] = "none"
    track: Literal["branch", "block", "both", "none"] = "both"
    track_stream: bool = True
    series_points: int = 100

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"train.{name} must be {what}, got {getattr(self, name)!r}")

        check("steps", self.steps >= 1, ">= 1")
        check("batch_size", self.batch_size >= 1, ">= 1")
        check("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number")
        check("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")
        check("weight_decay", self.weight_decay >= 0, ">= 0")
        check("warmup_steps", self.warmup_steps >= 0, ">= 0")
        check("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]")
        check("grad_clip", self.grad_clip >= 0, ">= 0 (0 disables clipping)")
        for name in ("eval_interval", "checkpoint_interval"):
            check(name, getattr(self, name) >= 0, ">= 0 (0: only at the end)")
        check("eval_batches", self.eval_batches >= 1, ">= 1")
        check("log_interval", self.log_interval >= 1, ">= 1")
        check("series_points", self.series_points >= 1, ">= 1")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"train.device: {self.device!r} is not a torch device") from None

    @property
    def series_every(self) -> int:
        return max(1, math.ceil(self.steps / self.series_points))


def _family_defaults(model_name: str) -> tuple[DataConfig, TrainConfig]:
    """Data and training defaults of each model family: sized to finish in minutes on 2 CPU cores."""
    if model_name == "resnet":
        return DataConfig(dataset="digits"), TrainConfig(
            steps=600, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4, warmup_steps=30,
            eval_interval=100, eval_batches=100)
    return DataConfig(dataset="text"), TrainConfig()


@dataclass
class RunConfig:
    """Everything that determines a run's results: model (by registry name), data, training.

    JSON / ``--set`` form: ``{"model_name": "gpt", "model": {...}, "data": {...}, "train": {...}}``.
    Sections left out (``None``) take the model family's defaults (:func:`default_run_config`).
    """

    model_name: str = "gpt"
    model: Any = None  # the model's config dataclass (GPTConfig, ResNetConfig)
    # None: the family's defaults (annotated without Optional so loading errors stay specific)
    data: DataConfig = None  # type: ignore[assignment]
    train: TrainConfig = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.model_name not in MODEL_TASKS:
            raise ConfigError(f"unknown model '{self.model_name}' (trainable: {', '.join(MODEL_TASKS)})")
        cfg_cls = MODELS[self.model_name][0]
        if self.model is None:
            self.model = cfg_cls()
        elif isinstance(self.model, dict):
            self.model = from_dict(cfg_cls, self.model, prefix="model.")
        elif not isinstance(self.model, cfg_cls):
            raise ConfigError(f"config key 'model': expected an object of {cfg_cls.__name__} fields, "
                              f"got {self.model!r}")
        data, train = _family_defaults(self.model_name)
        self.data = data if self.data is None else self.data
        self.train = train if self.train is None else self.train
        task = MODEL_TASKS[self.model_name]
        if self.data.task != task:
            raise ConfigError(f"model '{self.model_name}' trains on {task} data, "
                              f"but data.dataset is '{self.data.dataset}'")

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Strict loading; keys left out take the model family's defaults."""
        if not isinstance(data, dict):
            raise ConfigError("a run config must be a JSON object")
        name = data.get("model_name", "gpt")
        if name not in MODEL_TASKS:
            raise ConfigError(f"unknown model '{name}' (trainable: {', '.join(MODEL_TASKS)})")
        return from_dict(cls, _merge(to_dict(cls(name)), data))

    def to_dict(self) -> dict:
        return to_dict(self)

    def hash(self) -> str:
        return config_hash(self)


def default_run_config(model_name: str) -> RunConfig:
    """The defaults behind ``gfa train --model NAME``."""
    return RunConfig(model_name)


def build_run_config(model_name: str, config_file: str | os.PathLike | None = None,
                     overrides: Sequence[str] | None = None) -> RunConfig:
    """Defaults for ``model_name`` <- optional JSON file <- ``key=value`` overrides (nested keys:
    ``model.n_blocks=8``, ``train.steps=200``, ``data.text_file=corpus.txt``)."""
    data = to_dict(default_run_config(model_name))
    if config_file is not None:
        loaded = load_json(config_file)
        if loaded.get("model_name", model_name) != model_name:
            raise ConfigError(f"config file {config_file} is for model '{loaded['model_name']}', "
                              f"not '{model_name}'")
        data = _merge(data, loaded)
    data = apply_overrides(data, list(overrides or []))
    if data.get("model_name") != model_name:
        raise ConfigError("model_name cannot be overridden: use --model")
    return RunConfig.from_dict(data)


# ---- resolution against the data -------------------------------------------------------------

def resolve(cfg: RunConfig) -> tuple[RunConfig, Dataset]:
    """Load the data and fill the model fields it determines (vocabulary, classes, image shape)."""
    data = load_data(cfg.data)
    if cfg.model_name == "gpt":
        model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size)
        data.check_seq_len(model.block_size)
    else:
        model = dataclasses.replace(cfg.model, in_channels=data.in_channels,
                                    num_classes=data.n_classes, image_size=data.image_size)
    return dataclasses.replace(cfg, model=model), data


def _hook_names(hooks: Sequence[AfterBackward]) -> list[str]:
    return [f"{getattr(h, '__module__', '?')}.{getattr(h, '__qualname__', type(h).__qualname__)}"
            for h in hooks]


def run_key(cfg: RunConfig, hooks: Sequence[AfterBackward] = ()) -> str:
    """``<model>-<hash>``: the hash covers the resolved config, the data sha256 and hook names."""
    resolved, data = resolve(cfg)
    payload = {"config": to_dict(resolved), "data_sha256": data.sha256}
    if hooks:
        payload["hooks"] = _hook_names(hooks)
    return f"{cfg.model_name}-{config_hash(payload)}"


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
    dev = torch.device(tc.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={tc.device!r} but no CUDA device is available")
        if world.size > 1:
            dev = torch.device("cuda", world.local_rank)
        if dev.index is not None:
            torch.cuda.set_device(dev)
    return dev


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
                                           series_every=tc.series_every, max_steps=tc.steps)
        self.block_norms = UnitNorms(self.raw_model.units("block")) if tc.intervention == "equalize" else None
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
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        _, loss = self.model(x, y)
        loss.backward()
        self.step += 1
        if self.tracker is not None:
            self.tracker.step()
        for hook in self.hooks:
            hook(self.raw_model, self.step)
        if self.block_norms is not None:
            equalize_gradients_(self.block_norms)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip, foreach=True)
        self.optimizer.step()
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

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        """Loss and accuracy of the final head on the fixed evaluation batches of ``split``."""
        model = self.raw_model
        was_training = model.training
        model.eval()
        tc = self.cfg.train
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        count = 0
        for x, y in eval_batches(self.data, split, tc.batch_size, tc.eval_batches, self.seq_len,
                                 seed=self.cfg.data.split_seed):
            x, y = x.to(self.device), y.to(self.device)
            logits, loss = model(x, y, final_only=True)
            n = y.numel()  # tokens (text) or images
            loss_sum += loss.double() * n
            correct += (logits.argmax(dim=-1) == y).sum()
            count += n
        model.train(was_training)
        return {"step": self.step, "split": split, "loss": float(loss_sum) / count,
                "accuracy": int(correct) / count, "lr": self.lr_at(max(self.step - 1, 0))}

    # ---- checkpoints -------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": np.random.get_state()}
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
                "loss_sum": self._loss_sum.cpu(), "loss_n": self._loss_n, "bad": self._bad.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.tracker is not None:
            self.tracker.load_state_dict(state["tracker"])
        rngs = state["rng"]
        if len(rngs) != self.world.size:
            raise TrainingError(f"checkpoint was written by {len(rngs)} processes, "
                                f"this run has {self.world.size}: resume with the same world size")
        rng = rngs[self.world.rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
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
              world: World, num_params: int) -> dict:
    info: dict[str, Any] = {"dataset": cfg.data.dataset, "source": data.source, "sha256": data.sha256}
    if isinstance(data, TextData):
        info.update(vocab_size=data.vocab_size, train_tokens=len(data.train), val_tokens=len(data.val))
    else:
        info.update(n_classes=data.n_classes, train_size=len(data.y_train), val_size=len(data.y_val))
    return {"run_id": run_id, "config": to_dict(cfg), "seed": cfg.train.seed, "data": info,
            "hooks": _hook_names(hooks), "num_params": num_params, "world_size": world.size,
            "versions": {"gfa_theory": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}


@contextlib.contextmanager
def _run_lock(path: Path, enabled: bool):
    """Exclusive lock on a run directory: two processes never train the same run at once.

    The OS drops it when the holder dies (even by SIGKILL), so a rerun can always take over.
    """
    if not enabled:
        yield
        return
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:  # pragma: no cover
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _loaded(rdir: Path, trained: bool) -> RunResult:
    cfg, model, metrics, gradients = load_run(rdir)
    return RunResult(rdir, cfg, model, metrics, gradients, trained)


def train(cfg: RunConfig, out_root: str | os.PathLike | None = None, resume: bool = True,
          progress: bool = True, on_after_backward: Sequence[AfterBackward] = ()) -> RunResult:
    """Train ``cfg`` into ``<out_root>/<model>-<hash>/`` (see :mod:`gfa_theory.runs`).

    ``resume``: a complete run is read back instead of retrained, and a partial one continues
    from its last checkpoint; with ``resume=False`` the run starts over. ``on_after_backward``:
    user hooks ``hook(model, step)`` called after backward, before clipping and the update
    (their names enter the run's hash). Raises :class:`TrainingError` on a non-finite loss,
    keeping the last good checkpoint.
    """
    hooks = list(on_after_backward)
    world = _init_world(cfg.train.device)
    try:
        resolved, data = resolve(cfg)
        key = run_key(resolved, hooks)
        rdir = results_root(out_root) / key
        if resume and (rdir / DONE_FILE).is_file():  # finished: read back, no lock (read-only is fine)
            return _loaded(rdir, trained=False)
        with _run_lock(rdir, world.main):
            world.barrier()
            if resume and (rdir / DONE_FILE).is_file():  # finished while we waited for the lock
                return _loaded(rdir, trained=False)
            world.barrier()  # every rank has looked before rank 0 may remove DONE below
            return _train(resolved, data, key, rdir, resume, progress, hooks, world)
    finally:
        if world.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: RunConfig, data: Dataset, key: str, rdir: Path, resume: bool, progress: bool,
           hooks: list[AfterBackward], world: World) -> RunResult:
    from tqdm.auto import tqdm  # noqa: PLC0415

    tc = cfg.train
    trainer = Trainer(cfg, data, world, hooks)
    ckpt_path = rdir / CHECKPOINT_FILE
    rows: list[dict] = []
    last_ckpt = 0
    if resume and ckpt_path.is_file():
        # on the CPU: RNG states must stay there; load_state_dict moves the rest to the device
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("run_id") != key:
            raise TrainingError(f"{ckpt_path} belongs to run {state.get('run_id')}, not {key}")
        trainer.load_state_dict(state)
        rows, last_ckpt = list(state["metrics"]), trainer.step
    elif world.main:
        for name in (DONE_FILE, CHECKPOINT_FILE, METRICS_FILE, GRADIENTS_FILE):
            (rdir / name).unlink(missing_ok=True)
    if world.main:  # temporary files of a writer that was killed mid-write
        for tmp in rdir.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    n_params = sum(p.numel() for p in trainer.raw_model.parameters())
    info = _run_info(key, cfg, data, hooks, world, n_params)
    if world.main:
        write_json_atomic(rdir / CONFIG_FILE, info)
    world.barrier()

    def check_finite() -> None:
        bad = trainer.first_bad_step()
        if bad:
            kept = (f"the last good checkpoint (step {last_ckpt}) is kept in {rdir}" if last_ckpt
                    else "no checkpoint had been written yet")
            raise TrainingError(f"non-finite training loss at step {bad} of run {key}: stopped; {kept}")

    def checkpoint() -> None:
        state = trainer.state_dict()  # a collective under DDP: every rank takes part
        if world.main:
            state.update(run_id=key, metrics=rows)
            save_torch_atomic(ckpt_path, state)
            # model weights at every checkpoint step, kept (small): rank stability across
            # training checkpoints is measured on these (pruning study)
            save_torch_atomic(rdir / SNAPSHOT_DIR / f"step-{trainer.step}.pt",
                              {"step": trainer.step, "model": trainer.raw_model.state_dict()})
            write_csv_atomic(rdir / METRICS_FILE, pd.DataFrame(rows, columns=METRIC_COLUMNS))
        world.barrier()

    if trainer.step == 0 and tc.eval_interval and world.main:
        rows.append(trainer.evaluate())
    bar = tqdm(total=tc.steps, initial=trainer.step, desc=key, dynamic_ncols=True,
               disable=not (progress and world.main))
    with bar:
        while trainer.step < tc.steps:
            trainer.train_step()
            s = trainer.step
            bar.update(1)
            final = s == tc.steps
            if s % tc.log_interval == 0 or final:
                check_finite()
                row = trainer.log_train()
                if world.main:
                    rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            if world.main and ((tc.eval_interval and s % tc.eval_interval == 0) or final):
                rows.append(trainer.evaluate())
            if tc.checkpoint_interval and s % tc.checkpoint_interval == 0 and not final:
                check_finite()
                checkpoint()
                last_ckpt = s
    check_finite()
    checkpoint()
    if world.main:
        if trainer.tracker is not None:
            grads = trainer.tracker.to_frame()
        else:
            grads = pd.DataFrame(columns=["unit", "kind", "index", "quantity", "step", "value", "fan_in"])
        grads.insert(0, "seed", tc.seed)
        grads.insert(0, "run_id", key)
        write_csv_atomic(rdir / GRADIENTS_FILE, grads)
        write_text_atomic(rdir / DONE_FILE, f"{key}\n")  # last: marks the directory complete
    world.barrier()
    return _loaded(rdir, trained=True)
