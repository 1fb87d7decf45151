"""``GradientFanInCallback`` for Lightning (``lightning.pytorch``): the accumulated gradient ``A``
of every block and branch, read before Lightning clips the gradient.

Usage::

    trainer = L.Trainer(callbacks=[GradientFanInCallback()], gradient_clip_val=1.0,
                        accumulate_grad_batches=4)
    trainer.fit(module)          # -> trainer.log_dir/gradients.csv

Why ``on_before_optimizer_step`` is enough here. Lightning's precision plugin runs, per optimizer
step, the closure (forward and backward of the step's last micro-batch; earlier micro-batches of
``accumulate_grad_batches`` only accumulated into ``.grad``), then the callbacks'
``on_before_optimizer_step``, then the module's, and only then ``_clip_gradients``
(``Precision._after_closure``, Lightning 2.x). So ``.grad`` there is the step's whole accumulated
gradient, unclipped; under DDP it is already all-reduced (the last micro-batch's backward syncs),
and under fp16 mixed precision the plugin has already unscaled it. The callback reads it with the
tracker's one fused norm per step (no host synchronization) and logs ``gfa/A/<kind>/<unit>`` and
``gfa/grad_norm/<kind>/<unit>`` (this step's norm) through ``pl_module.log_dict`` to the trainer's
loggers, as device scalars the loggers read at their own interval.

The model: the LightningModule itself if the registry knows it, else its first submodule that
the registry knows (this package's GPT/ResNet, torchvision ResNets, Hugging Face GPT-2).

Limits: FSDP, DeepSpeed and model-parallel strategies shard the gradients (refused); with several
optimizers each ``optimizer.step()`` would count as a step (refused); an optimizer that calls its
closure several times per step (LBFGS) records every call; under fp16 a step whose gradient
overflowed (which the scaler skips) is not recorded (the check is the one host sync, and fp16's
scaler syncs there anyway).

At the end of ``fit`` it writes ``gradients.csv`` (the long format of a ``gfa train`` run, with the
theory's fan-in) atomically into ``out_dir`` (default: ``trainer.log_dir``), from global rank 0.
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import (
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
)

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.tracking import Kind
from gfa_theory.integrations.recording import Recording


class GradientFanInCallback(pl.Callback):
    """Record pre-clip accumulated gradients per unit during ``Trainer.fit`` (module docstring).

    ``out_dir``: where ``gradients.csv`` goes (default: ``trainer.log_dir``).
    ``kind``: ``"both"`` (blocks and branches), ``"block"`` or ``"branch"``.
    ``series_every``: window of the per-step ``grad_norm`` series in ``gradients.csv``.
    ``log``: log the per-unit scalars with ``pl_module.log_dict``.
    ``run_id``: the ``run_id`` column (default: the name of ``out_dir``); ``seed``: the ``seed``
    column (default: the seed of ``lightning.seed_everything``, if one was set).
    """

    def __init__(self, out_dir: str | os.PathLike | None = None, kind: Kind = "both",
                 series_every: int = 1, log: bool = True, run_id: str | None = None,
                 seed: int | None = None) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.kind, self.series_every, self.log = kind, series_every, log
        self.run_id, self.seed = run_id, seed
        self.recording: Recording | None = None
        self._scaler = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.strategy, (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy)):
            raise ConfigError(f"GradientFanInCallback: {type(trainer.strategy).__name__} shards the gradients; "
                              "per-unit norms of the global gradient are not available there")
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"GradientFanInCallback needs exactly one optimizer, the module has "
                              f"{len(trainer.optimizers)}")
        if self.recording is not None:
            self.recording.close()
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.recording = Recording(pl_module, self.kind, self.series_every, max_steps)
        self._scaler = getattr(trainer.precision_plugin, "scaler", None)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        rec = self.recording
        sq = rec.squared()
        if self._scaler is not None and not bool(torch.isfinite(sq).all()):
            return  # fp16 overflow: the scaler skips this optimizer step
        norm = rec.record(sq)
        if self.log:
            pl_module.log_dict(rec.step_scalars(norm), on_step=True, on_epoch=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recording is None:
            return
        out = self.out_dir if self.out_dir is not None else Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:  # log_dir above is collective: every rank asks for it
            seed = self.seed if self.seed is not None else _global_seed()
            self.recording.write(out, self.run_id or out.resolve().name, seed)
        self.recording.close()

    def frame(self):
        """The long table written to ``gradients.csv`` (``run_id``/``seed`` columns aside)."""
        if self.recording is None:
            raise ConfigError("GradientFanInCallback has recorded nothing yet: fit first")
        return self.recording.tracker.to_frame()


def _global_seed() -> int | None:
    value = os.environ.get("PL_GLOBAL_SEED")  # set by lightning.seed_everything
    return int(value) if value and value.lstrip("-").isdigit() else None
