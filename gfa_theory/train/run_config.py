"""What a run is: its typed config, its resolution against the data, and its hash.

:class:`RunConfig` bundles the model config (by registry name), :class:`~gfa_theory.train.data.DataConfig`
and :class:`TrainConfig`; :func:`build_run_config` layers defaults <- JSON file <- ``key=value``
overrides; :func:`resolve` fills what the data determines (vocabulary, classes, image shape);
:func:`run_key` names the run's result directory ``<model>-<hash>``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from gfa_theory.config import (
    apply_overrides,
    check_seed,
    config_hash,
    from_dict,
    load_json,
    merge,
    short_repr,
    to_dict,
)
from gfa_theory.devices import parse_device, resolve_device_name
from gfa_theory.errors import ConfigError
from gfa_theory.models import MAX_DIM, MODELS
from gfa_theory.train.data import DataConfig, Dataset, load_data

# Upper bounds of the training settings (hostile input is refused before anything is built).
MAX_STEPS = 10 ** 9  # optimizer steps (and every interval counted in steps)
MAX_POINTS = 10 ** 6  # series points, evaluation batches
MAX_LR = 10.0  # no optimizer here trains at a larger learning rate: it diverges at once

# Which data each trainable model reads.
MODEL_TASKS = {"gpt": "text", "resnet": "image"}
AfterBackward = Callable[[nn.Module, int], None]
METRIC_COLUMNS = ["step", "split", "loss", "accuracy", "lr"]
# train.intervention values: before the update on the gradients, or after it on the step
INTERVENTIONS = ("none", "equalize", "global_rescale", "equalize_update")


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, logging and tracking settings of one run.

    Intervals count optimizer steps; 0 means "only at the end". ``track``: which units the
    gradient tracker records ("none" disables it). ``series_points``: length of the
    downsampled per-step gradient series. ``accumulate`` / ``track_updates``: the tracker's opt-in
    totals (``G_norm``, ``noise_floor`` / ``U``, ``displacement``). ``gain_every``: sample branch gains every so
    many steps into gains.csv (:mod:`gfa_theory.instrument.gains`). ``intervention`` (the equalization
    study; :data:`INTERVENTIONS`): "equalize" rescales each block's gradient to the mean block norm
    before every update; "global_rescale", its control, multiplies every block's gradient by one
    common factor that changes their joint norm exactly as "equalize" would; "equalize_update"
    rescales each block's applied step (after the optimizer) to the mean block step norm. ``device``: ``auto``
    (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:<index>``, ``mps``; whether
    the machine has it is checked when training starts (a stored CUDA config still loads here).
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
    intervention: Literal["none", "equalize", "global_rescale", "equalize_update"] = "none"
    track: Literal["branch", "block", "both", "none"] = "both"
    track_stream: bool = True
    series_points: int = 100
    # Opt-in tracker totals (see gfa_theory.instrument.tracking): ``accumulate`` adds ``G_norm`` and
    # ``noise_floor``, ``track_updates`` adds ``U`` and ``displacement``. Off is stored as None and
    # left out of the config, so runs without them keep their hashes.
    accumulate: bool | None = field(default=None, metadata={"omit_if_none": True})
    track_updates: bool | None = field(default=None, metadata={"omit_if_none": True})
    # Branch gains sampled during training (gfa_theory.instrument.gains): every ``gain_every`` steps
    # the loop measures them on the step's batch into gains.csv. None (off) is left out of the
    # config, so runs without it keep their hashes.
    gain_every: int | None = field(default=None, metadata={"omit_if_none": True})
    # Branch and norm gains on held-out batches at declared steps (before the update of that
    # step; gfa_theory.instrument.gains.heldout_gains) into heldout_gains.csv: the gains a
    # prediction made before or early in training can use (early_gain_steps makes a schedule).
    # ``heldout_gain_batches`` validation batches per sample (None: 2). Both None (off) are left
    # out of the config, so runs without them keep their hashes.
    heldout_gain_steps: tuple[int, ...] | None = field(default=None, metadata={"omit_if_none": True})
    heldout_gain_batches: int | None = field(default=None, metadata={"omit_if_none": True})

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"train.{name} must be {what}, got {short_repr(getattr(self, name))}")

        check("steps", 1 <= self.steps <= MAX_STEPS, f"in 1..{MAX_STEPS:.0e}")
        check("batch_size", 1 <= self.batch_size <= MAX_DIM, f"in 1..{MAX_DIM}")
        check("lr", 0 < self.lr <= MAX_LR, f"a number in (0, {MAX_LR:g}]")
        check("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")
        check("weight_decay", 0 <= self.weight_decay < math.inf, "a finite number >= 0")
        check("warmup_steps", 0 <= self.warmup_steps <= MAX_STEPS, f"in 0..{MAX_STEPS:.0e}")
        check("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]")
        check("grad_clip", 0 <= self.grad_clip < math.inf, "a finite number >= 0 (0 disables clipping)")
        for name in ("eval_interval", "checkpoint_interval"):
            check(name, 0 <= getattr(self, name) <= MAX_STEPS, "in 0..1e+09 (0: only at the end)")
        check("eval_batches", 1 <= self.eval_batches <= MAX_POINTS, f"in 1..{MAX_POINTS:.0e}")
        check("log_interval", 1 <= self.log_interval <= MAX_STEPS, f"in 1..{MAX_STEPS:.0e}")
        # more points than steps keeps every step (the series cannot be longer than the run)
        check("series_points", 1 <= self.series_points <= MAX_POINTS, f"in 1..{MAX_POINTS:.0e}")
        if self.gain_every is not None:
            check("gain_every", not isinstance(self.gain_every, bool) and 1 <= self.gain_every <= MAX_STEPS,
                  f"None (off) or in 1..{MAX_STEPS:.0e}")
        if self.heldout_gain_steps is not None:
            hs = self.heldout_gain_steps
            check("heldout_gain_steps", isinstance(hs, (list, tuple)) and 1 <= len(hs) <= min(MAX_POINTS, self.steps)
                  and all(not isinstance(s, bool) and isinstance(s, int) and 0 <= s < self.steps for s in hs),
                  "None (off) or a non-empty list of distinct steps in 0..steps-1")
            check("heldout_gain_steps", len(set(hs)) == len(hs), "a list of distinct steps")
            object.__setattr__(self, "heldout_gain_steps", tuple(sorted(hs)))
        if self.heldout_gain_batches is not None:
            check("heldout_gain_batches", self.heldout_gain_steps is not None,
                  "None unless heldout_gain_steps is set (it sizes those samples)")
            check("heldout_gain_batches", not isinstance(self.heldout_gain_batches, bool)
                  and 1 <= self.heldout_gain_batches <= 1000, "None (2) or in 1..1000")
        check_seed("train.seed", self.seed)
        parse_device(self.device, "train.device")
        for name in ("accumulate", "track_updates"):
            if getattr(self, name) is False:  # off is one value, whichever way it was written
                object.__setattr__(self, name, None)

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
        return from_dict(cls, merge(to_dict(cls(name)), data))

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
        data = merge(data, loaded)
    data = apply_overrides(data, list(overrides or []))
    if data.get("model_name") != model_name:
        raise ConfigError("model_name cannot be overridden: use --model")
    return RunConfig.from_dict(data)


# ---- resolution against the data -------------------------------------------------------------

def resolve(cfg: RunConfig) -> tuple[RunConfig, Dataset]:
    """Load the data and fill the model fields it determines (vocabulary, classes, image shape);
    ``train.device=auto`` becomes the device it stands for here (``cuda`` or ``cpu``)."""
    device = resolve_device_name(cfg.train.device)
    if device != cfg.train.device:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    data = load_data(cfg.data)
    if cfg.model_name == "gpt":
        model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size)
        data.check_seq_len(model.block_size)
    else:
        model = dataclasses.replace(cfg.model, in_channels=data.in_channels,
                                    num_classes=data.n_classes, image_size=data.image_size)
    return dataclasses.replace(cfg, model=model), data


def training_epochs(cfg: RunConfig, data: Dataset | None = None) -> float:
    """Passes over the training split that ``cfg`` trains: ``steps * batch_size`` windows of
    ``block_size`` tokens (text) or images, over the split's length. A run above about one epoch
    measures memorization as well as learning; a study flags or refuses such a point."""
    data = load_data(cfg.data) if data is None else data
    samples = cfg.train.steps * cfg.train.batch_size
    if cfg.model_name == "gpt":
        return data.epochs(samples * cfg.model.block_size)
    return samples / len(data.y_train)


def hook_names(hooks: Sequence[AfterBackward]) -> list[str]:
    return [f"{getattr(h, '__module__', '?')}.{getattr(h, '__qualname__', type(h).__qualname__)}"
            for h in hooks]


def numerics_key(device: str | torch.device) -> dict:
    """The part of the numeric environment that enters a run's hash: what changes the numbers
    of a run for the same config on the same kind of device (see :func:`run_key`)."""
    dev = torch.device(resolve_device_name(str(device)))
    key = {"torch": torch.__version__, "device": dev.type}
    if dev.type == "cpu":  # vectorized CPU kernels (AVX2, AVX512, ...) sum in different orders
        key["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return key


# Recorded fields a finished (or partial) run must share with this process to be reused (or
# resumed): a cache hit must mean the same numbers. The thread count is checked rather than
# hashed: a process may change it at will (the studies' worker processes use one thread while
# their parent looks runs up by key), and a run key must not depend on it.
_CHECKED = {"cpu": ("device_type", "torch", "cpu_capability", "num_threads"),
            "other": ("device_type", "torch")}


def environment(device: torch.device) -> dict:
    """What a run's numbers depend on besides its config and data (``environment`` in config.json)."""
    env: dict[str, Any] = {
        "device": str(device), "device_type": device.type, "torch": str(torch.__version__),
        "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "num_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda, device_name=torch.cuda.get_device_name(device))
    return env


def _checked(env: dict) -> dict:
    fields = _CHECKED["cpu" if env.get("device_type") == "cpu" else "other"]
    return {f: env.get(f) for f in fields}


def env_mismatch(recorded: Any, current: dict, key: str, rdir: Path, what: str) -> str | None:
    """One line naming the first checked field where ``recorded`` differs from ``current``."""
    recorded = recorded if isinstance(recorded, dict) else {}
    for field, cur in _checked(current).items():
        rec = recorded.get(field)
        if rec != cur:
            if field == "num_threads" and isinstance(rec, int):
                fix = (f"set OMP_NUM_THREADS={rec} (or torch.set_num_threads({rec})) to {what} it, "
                       f"or pass --force to retrain it from scratch")
            else:
                fix = f"pass --force to retrain it from scratch here (or delete {rdir})"
            return (f"run {key} in {rdir} was trained with {field}={rec!r}, this process has "
                    f"{field}={cur!r} (the numbers depend on it): {fix}")
    return None


def run_key(cfg: RunConfig, hooks: Sequence[AfterBackward] = ()) -> str:
    """``<model>-<hash>``: the hash covers the resolved config (``auto`` device resolved), the data
    sha256, hook names and :func:`numerics_key` (torch version, device type, CPU instruction set)."""
    return resolved_run_key(*resolve(cfg), hooks)


def resolved_run_key(resolved: RunConfig, data: Dataset, hooks: Sequence[AfterBackward] = ()) -> str:
    """:func:`run_key` of a config already resolved against its ``data`` (:func:`resolve`)."""
    return _key(to_dict(resolved), data.sha256, numerics_key(resolved.train.device), hook_names(hooks))


def _key(config: dict, data_sha256: str, numerics: dict, hooks: list[str]) -> str:
    payload = {"config": config, "data_sha256": data_sha256, "numerics": numerics}
    if hooks:
        payload["hooks"] = hooks
    return f"{config['model_name']}-{config_hash(payload)}"


def recorded_run_key(meta: dict) -> str:
    """The :func:`run_key` a stored run's ``config.json`` (``meta``) hashes to: its resolved
    config, data sha256, hooks and recorded numeric environment (wherever it was trained)."""
    env = meta["environment"]
    numerics = {"torch": env["torch"], "device": env["device_type"]}
    if env["device_type"] == "cpu":
        numerics["cpu_capability"] = env["cpu_capability"]
    return _key(meta["config"], meta["data"]["sha256"], numerics, list(meta.get("hooks") or []))
