"""``GradientFanInCallback`` for ``transformers.Trainer``: the accumulated gradient ``A`` of every
block and branch, read **before** the Trainer clips the gradient.

Usage::

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    GradientFanInCallback().attach(trainer)   # before the report_to integrations
    trainer.train()                           # -> args.output_dir/gradients.csv

Why hooks. In ``Trainer._inner_training_loop`` the optimizer step of the last micro-batch runs
``_clip_grad_norm`` (when ``max_grad_norm > 0``, the default 1.0) and only then the
``on_pre_optimizer_step`` callback, so a callback that reads ``.grad`` there records the
*clipped* gradient (``transformers`` 4.45 to 5.x). This callback instead registers a
``register_post_accumulate_grad_hook`` on every tracked parameter: each backward (micro-batch)
writes the norm of the parameter's accumulated ``.grad`` into a device buffer, so after the last
micro-batch the buffer holds the norms of the step's whole accumulated gradient, taken before the
Trainer touches it. ``on_pre_optimizer_step`` maps them to unit norms (one small matrix product)
and ``on_optimizer_step`` commits them to the tracker as one step, so each optimizer step is one
record of its accumulated gradient. No per-step host synchronization; the per-unit values reach
the host only when the Trainer logs.

Limits (each refused with a one-line error rather than recorded wrong):

* Multi-process training (DDP, FSDP, DeepSpeed: ``args.world_size > 1`` or a DeepSpeed/FSDP
  config): the hooks fire before the all-reduce, on each rank's local gradient, and the norm of
  the global gradient cannot be rebuilt from per-rank norms. Use ``source="step"`` with
  ``max_grad_norm=0`` there under DDP: it reads the all-reduced ``.grad`` at
  ``on_pre_optimizer_step``, which is then unclipped. FSDP and DeepSpeed shard or own the
  gradients and are not supported.
* ``source="step"`` with ``max_grad_norm > 0`` (it would record clipped gradients).

fp16 with a loss scaler: the hooks see the scaled gradient; the callback divides by the
scaler's scale of that step and drops a step the scaler skips (inf/NaN gradients). A resumed
``trainer.train(resume_from_checkpoint=...)`` accumulates ``A`` from the resumed step on.

Reporting: at every Trainer log the callback adds ``gfa/A/<kind>/<unit>`` (accumulated so far)
and ``gfa/grad_norm/<kind>/<unit>`` (mean over the steps since the previous log) to the logs
dict, so every ``report_to`` integration (TensorBoard, W&B, ...) receives them. The Trainer calls
callbacks in list order and puts ``callbacks=[...]`` after its integrations, whose ``on_log``
would then have run already: :meth:`GradientFanInCallback.attach` puts the callback first (and
takes the per-unit values out again right before the console printer). At
every checkpoint save and at the end it writes ``gradients.csv`` (the long format of a
``gfa train`` run, with the theory's fan-in) atomically into ``out_dir`` (default
``args.output_dir``), from the main process only.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.tracking import Kind
from gfa_theory.integrations.recording import PREFIX, Recording

Source = Literal["hooks", "step"]


class GradientFanInCallback(TrainerCallback):
    """Record pre-clip accumulated gradients per unit during ``Trainer.train()`` (module docstring).

    ``out_dir``: where ``gradients.csv`` goes (default: ``args.output_dir``).
    ``kind``: ``"both"`` (blocks and branches), ``"block"`` or ``"branch"``.
    ``source``: ``"hooks"`` (pre-clip, one process) or ``"step"`` (``.grad`` at
    ``on_pre_optimizer_step``: needs ``max_grad_norm=0``; works under DDP).
    ``series_every``: window of the per-step ``grad_norm`` series in ``gradients.csv``.
    ``log``: add the per-unit scalars to the Trainer's logs.
    ``run_id``: the ``run_id`` column (default: the name of ``out_dir``).
    """

    def __init__(self, out_dir: str | os.PathLike | None = None, kind: Kind = "both",
                 source: Source = "hooks", series_every: int = 1, log: bool = True,
                 run_id: str | None = None) -> None:
        if source not in ("hooks", "step"):
            raise ConfigError(f"source must be 'hooks' or 'step', got {source!r}")
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.kind, self.source, self.series_every, self.log = kind, source, series_every, log
        self.run_id = run_id
        self.recording: Recording | None = None
        self._pending: torch.Tensor | None = None
        self._logged_step = -1
        self._attached = False

    def attach(self, trainer) -> GradientFanInCallback:
        """Put this callback first in ``trainer``'s callbacks, so that the values it adds to the
        logs reach the ``report_to`` integrations (which run after it), and keep them off the
        console progress line (dozens of numbers per log); returns ``self``."""
        callbacks = trainer.callback_handler.callbacks
        for cb in [cb for cb in callbacks if cb is self or isinstance(cb, _HideFromConsole)]:
            callbacks.remove(cb)
        callbacks.insert(0, self)
        printers = [k for k, cb in enumerate(callbacks) if isinstance(cb, (ProgressCallback, PrinterCallback))]
        if printers:
            callbacks.insert(printers[0], _HideFromConsole())
        self._attached = True
        return self

    # ---- checks ---------------------------------------------------------------------------------
    def _check(self, args) -> None:
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise ConfigError("GradientFanInCallback: DeepSpeed and FSDP shard the gradients; "
                              "per-unit norms of the global gradient are not available there")
        if self.source == "hooks" and args.world_size > 1:
            raise ConfigError(f"GradientFanInCallback: with {args.world_size} processes the pre-clip hooks "
                              "see each rank's local gradient; use source='step' with max_grad_norm=0")
        if self.source == "step" and args.max_grad_norm and args.max_grad_norm > 0:
            raise ConfigError(f"GradientFanInCallback(source='step') reads .grad after the Trainer clipped "
                              f"it to max_grad_norm={args.max_grad_norm}: set max_grad_norm=0 or use "
                              "source='hooks'")

    def output_dir(self, args) -> Path:
        return self.out_dir if self.out_dir is not None else Path(args.output_dir)

    # ---- training events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check(args)
        if self.log and not self._attached:
            warnings.warn("GradientFanInCallback was passed to the Trainer without .attach(trainer): the "
                          "report_to integrations run before it and will not see its per-unit values",
                          stacklevel=2)
        if self.recording is not None:
            self.recording.close()
        max_steps = state.max_steps if state.max_steps and state.max_steps > 0 else None
        self.recording = Recording(model, self.kind, self.series_every, max_steps,
                                   pre_clip_hooks=self.source == "hooks")
        self._pending, self._logged_step = None, -1

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        sq = self.recording.squared()
        scaler = getattr(optimizer, "scaler", None)  # accelerate's optimizer under fp16
        if self.source == "hooks" and scaler is not None and scaler.is_enabled():
            sq = sq / scaler.get_scale() ** 2  # the hooks saw the loss-scaled gradient
        self._pending = sq

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        sq, self._pending = self._pending, None
        if sq is None or getattr(optimizer, "step_was_skipped", False):
            return  # a loss-scale overflow: the optimizer did not step
        self.recording.record(sq)

    def on_log(self, args, state, control, logs=None, **kwargs):
        rec = self.recording
        if not self.log or rec is None or logs is None or rec.tracker.steps == 0:
            return
        if state.global_step > self._logged_step:  # once per step (not again with eval/final logs)
            self._logged_step = state.global_step
            logs.update(rec.scalars())

    def on_save(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if self.recording is None:
            return
        self._write(args, state)
        self.recording.close()

    def _write(self, args, state) -> None:
        if self.recording is None or not state.is_world_process_zero:
            return
        out = self.output_dir(args)
        run_id = self.run_id or out.resolve().name
        self.recording.write(out, run_id, args.seed)

    def frame(self):
        """The long table written to ``gradients.csv`` so far (``run_id``/``seed`` columns aside)."""
        if self.recording is None:
            raise ConfigError("GradientFanInCallback has recorded nothing yet: train first")
        return self.recording.tracker.to_frame()


class _HideFromConsole(TrainerCallback):
    """Drops the per-unit scalars from the logs right before the console printer sees them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in [k for k in logs or () if k.startswith(PREFIX + "/")]:
            del logs[key]
