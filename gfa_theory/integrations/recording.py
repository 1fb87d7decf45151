"""What the framework callbacks share: the tracked model, pre-clip gradient hooks, logged
scalars and the ``gradients.csv`` they write.

A :class:`Recording` wraps the package's :class:`~gfa_theory.instrument.tracking.GradientTracker`
(units and fan-in from the model-family registry, fused per-unit norms, no host synchronization
per step). A callback feeds it one step per optimizer step, either from the tracker's own read of
``.grad`` (where the framework calls back before clipping: Lightning) or from
:class:`PreClipHooks` (where it calls back only after clipping: ``transformers.Trainer``).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.tracking import GradientTracker, Kind, UnitNorms
from gfa_theory.models.families import find_adapter, supported_families
from gfa_theory.models.units import Unit
from gfa_theory.train.store import GRADIENTS_FILE, write_csv_atomic

PREFIX = "gfa"  # logged scalars: gfa/<quantity>/<kind>/<unit>, e.g. gfa/A/block/transformer.h.0


def _supported(model: nn.Module) -> bool:
    try:
        find_adapter(model)
    except ConfigError:
        return False
    return True


def tracked_model(root: nn.Module) -> nn.Module:
    """``root``, or its first submodule (in ``modules()`` order) that a registry adapter supports:
    a LightningModule, a PEFT model or a DDP / torch.compile wrapper holding a Qwen2 is searched
    for the Qwen2."""
    for module in root.modules():
        if _supported(module):
            return module
    raise ConfigError(f"no model the gfa registry supports inside {type(root).__name__} "
                      f"(supported: {', '.join(supported_families())}; or register an adapter with "
                      "gfa_theory.models.families.register_adapter)")


def scalar_name(quantity: str, unit: Unit) -> str:
    return f"{PREFIX}/{quantity}/{unit.kind}/{unit.name}"


class PreClipHooks:
    """The squared norm of each tracked parameter's accumulated gradient, taken by a
    ``register_post_accumulate_grad_hook`` every time backward accumulates into its ``.grad``.

    After the last micro-batch of an optimizer step the buffer holds the norms of the whole
    step's accumulated gradient, read before anything the trainer does to ``.grad`` afterwards
    (clipping). Each hook writes one device scalar (no host synchronization); a parameter that got
    no gradient this step reads as zero, as in :class:`~gfa_theory.instrument.tracking.UnitNorms`.
    """

    def __init__(self, norms: UnitNorms) -> None:
        self.norms = norms
        self.buf = torch.zeros(len(norms.params), dtype=torch.float32, device=norms.device)
        self.handles = [p.register_post_accumulate_grad_hook(partial(self._on_grad, j))
                        for j, p in enumerate(norms.params) if p.requires_grad]

    def _on_grad(self, j: int, param: nn.Parameter) -> None:
        torch.linalg.vector_norm(param.grad, dtype=torch.float32, out=self.buf[j])

    @torch.no_grad()
    def take(self) -> torch.Tensor:
        """Per-unit squared norms of this step's accumulated gradients; clears the buffer."""
        sq = self.norms.M @ self.buf.to(self.norms.dtype).square()
        self.buf.zero_()
        return sq

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class Recording:
    """A :class:`GradientTracker` on the registry-supported model inside ``root``, plus what
    the callbacks report: ``pre_clip_hooks`` installs :class:`PreClipHooks`."""

    def __init__(self, root: nn.Module, kind: Kind = "both", series_every: int = 1,
                 max_steps: int | None = None, pre_clip_hooks: bool = False) -> None:
        self.model = tracked_model(root)
        self.tracker = GradientTracker(self.model, kind=kind, series_every=series_every, max_steps=max_steps)
        self.units = self.tracker.units
        self.hooks = PreClipHooks(self.tracker.norms) if pre_clip_hooks else None
        self._A_logged = torch.zeros_like(self.tracker.A)  # A and step count at the last report
        self._steps_logged = 0

    def squared(self) -> torch.Tensor:
        """This step's per-unit squared norms: from the hooks when installed, else from ``.grad``."""
        return self.hooks.take() if self.hooks is not None else self.tracker.norms.squared()

    def record(self, sq: torch.Tensor) -> torch.Tensor:
        """Add one optimizer step; returns its per-unit gradient norms (on the device)."""
        return self.tracker.record(sq)

    # ---- reporting ------------------------------------------------------------------------------
    def scalars(self) -> dict[str, float]:
        """``A`` of every unit and its mean gradient norm since the previous call, as floats
        (one host synchronization)."""
        A = self.tracker.A.detach().to("cpu", torch.float64)
        window = max(self.tracker.steps - self._steps_logged, 1)
        mean = (A - self._A_logged) / window
        self._A_logged, self._steps_logged = A, self.tracker.steps
        out: dict[str, float] = {}
        for u, a, g in zip(self.units, A.tolist(), mean.tolist()):
            out[scalar_name("A", u)] = a
            out[scalar_name("grad_norm", u)] = g
        return out

    def step_scalars(self, norm: torch.Tensor) -> dict[str, torch.Tensor]:
        """``A`` and this step's gradient norm of every unit, as device scalars (no sync)."""
        out: dict[str, torch.Tensor] = {}
        for u, a, g in zip(self.units, self.tracker.A.unbind(), norm.unbind()):
            out[scalar_name("A", u)] = a
            out[scalar_name("grad_norm", u)] = g
        return out

    def frame(self, run_id: str, seed: int | None) -> pd.DataFrame:
        """The long table of a ``gfa train`` run's ``gradients.csv`` (same columns and order)."""
        df = self.tracker.to_frame()
        df.insert(0, "seed", pd.array([seed] * len(df), dtype="Int64"))
        df.insert(0, "run_id", run_id)
        return df

    def write(self, out_dir: str | os.PathLike, run_id: str, seed: int | None) -> Path:
        """Write ``out_dir/gradients.csv`` atomically; returns its path."""
        return write_csv_atomic(Path(out_dir) / GRADIENTS_FILE, self.frame(run_id, seed))

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
        self.tracker.remove_hooks()
