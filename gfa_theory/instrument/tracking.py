"""Accumulated training gradient ``A`` of every branch / block, at almost no cost.

:class:`GradientTracker` is called once per optimizer step, between ``loss.backward()`` and
``optimizer.step()``. It reads the gradient the loss delivered to each unit's parameters
**before** any gradient clipping or intervention (gradient-norm equalization, user hooks): ``A``
measures what the network's wiring delivers, not what the optimizer was allowed to apply. Under
DDP it runs after the all-reduce, so it reads the synchronized (global-batch) gradient.

Per unit it accumulates, on the gradients' device and without any host synchronization:

==============  ==============================================================================
quantity        meaning
==============  ==============================================================================
``A``           ``sum_t ||g_t||_2`` over steps, ``g_t`` the unit's parameter gradient
``A_sq``        ``sum_t ||g_t||_2^2``
``A_rms``       ``sum_t ||g_t||_2 / sqrt(numel)``: per-parameter RMS, comparable across widths
``A_stream``    ``sum_t sum_a ||dL/dy_a||_2``: the gradient arriving at the unit's branch
                output ``y_a`` (the stream position it writes), summed over its applications
                ``a`` (shared units, several output modules) — only with ``stream=True``
``numel``       number of parameters of the unit (each shared parameter counted once)
``grad_norm``   series: mean of ``||g_t||_2`` over each window of ``series_every`` steps
``stream_grad_norm``  series: the same for the stream gradient
==============  ==============================================================================

Opt-in accumulations (each costs one more copy of the tracked parameters, on their device):

==============  ==============================================================================
``G_norm``      ``||sum_t g_t||_2`` (``accumulate=True``): the net gradient; with ``A`` it
                separates drift from minibatch noise
``noise_floor`` ``T sigma`` (``accumulate=True``): the ``A`` that minibatch noise alone would
                accumulate, under the random-walk model ``g_t = mu + e_t`` (``mu`` constant,
                ``e_t`` independent, zero mean, ``E||e_t||^2 = sigma^2``). Then
                ``E sum||g_t||^2 = T(||mu||^2 + sigma^2)`` and ``E||sum g_t||^2 = T^2 ||mu||^2 +
                T sigma^2``, so ``sigma^2 = (T A_sq - G_norm^2) / (T (T - 1))`` (clipped at 0);
                pure noise gives ``noise_floor ~ A``, a constant gradient gives 0. A drifting
                ``mu`` also counts as noise, so it is an upper bound on the noise share; the
                norms are float32, so a floor below about ``1e-3 A`` is not resolved
``U``           ``sum_t ||theta_(t+1) - theta_t||_2`` (``track_updates=True``): the applied
                update, read by :meth:`GradientTracker.before_update` /
                :meth:`GradientTracker.after_update` around ``optimizer.step()``
``displacement``  ``||theta_T - theta_0||_2`` (``track_updates=True``; ``theta_0`` at construction)
==============  ==============================================================================

A parameter used by several applications of a unit (parameter-shared repetition) appears once
in the unit: its ``.grad`` already sums the applications. The per-step work is one fused
``torch._foreach_norm`` over all tracked gradients, one small matrix product mapping parameter
norms to unit norms, and a few vector additions.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.base import unwrap
from gfa_theory.models.families import get_units, module_layout
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.symbolic import fan_in

Kind = Literal["branch", "block", "both"]
# quantity names in the long frame: totals (step is NA) and per-step series
TOTALS = ("A", "A_sq", "A_rms", "A_stream", "numel")
SERIES = ("grad_norm", "stream_grad_norm")
ACCUMULATED = ("G_norm", "noise_floor", "U", "displacement")  # opt-in totals


def discover_units(model: nn.Module, kind: Kind = "branch") -> list[Unit]:
    """Units of a model of any registered family (:mod:`gfa_theory.models.families`)."""
    if kind not in ("branch", "block", "both"):
        raise ConfigError(f"unit kind must be 'branch', 'block' or 'both', got {kind!r}")
    kinds = ("branch", "block") if kind == "both" else (kind,)
    return [u for k in kinds for u in get_units(model, k)]


def discover_layout(model: nn.Module) -> Layout | None:
    """The model's :class:`~gfa_theory.theory.layout.Layout` when its family is registered, else
    None (fan-in is then simply unknown)."""
    try:
        return module_layout(model)
    except ConfigError:
        return None


def unit_fan_in(layout, units: Sequence[Unit]) -> list[int]:
    """Fan-in of each unit: ``F(P) = sum`` over the branches where its parameters are applied.

    A branch unit applied at branches ``i in applications`` has ``sum_i F(i)``; a block unit
    applied at blocks ``b`` has the sum over those blocks' branches.
    """
    F = fan_in(layout)
    by_block: dict[int, list[int]] = {}
    for br in layout.branches():
        by_block.setdefault(br.block, []).append(br.index)
    out = []
    for u in units:
        apps = u.applications or (u.index,)
        branches = list(apps) if u.kind == "branch" else [i for b in apps for i in by_block[b]]
        out.append(sum(F[i - 1] for i in branches))
    return out


class UnitNorms:
    """Per-unit gradient norms of a fixed list of units, computed in one fused pass.

    ``M`` maps the (deduplicated) parameters to units: ``||g_unit||^2 = M @ ||g_param||^2``, so
    a parameter listed by several units (e.g. a branch and its block) is read once.
    """

    def __init__(self, units: Sequence[Unit], dtype: torch.dtype = torch.float64) -> None:
        params: list[nn.Parameter] = []
        where: dict[int, int] = {}
        rows: list[list[int]] = []
        for u in units:
            cols = []
            for p in u.params:
                if id(p) not in where:
                    where[id(p)] = len(params)
                    params.append(p)
                if where[id(p)] not in cols:  # shared parameters count once per unit
                    cols.append(where[id(p)])
            rows.append(cols)
        if not params:
            raise ConfigError("the units to track have no parameters")
        self.params = params
        self.device = params[0].device
        self.dtype = dtype if self.device.type != "mps" else torch.float32
        M = torch.zeros(len(units), len(params), dtype=self.dtype)
        for r, cols in enumerate(rows):
            M[r, cols] = 1.0
        self.M = M.to(self.device)
        self.numel = torch.tensor([sum(params[c].numel() for c in cols) for cols in rows],
                                  dtype=self.dtype, device=self.device)
        self._zero = torch.zeros((), device=self.device)

    def grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else self._zero for p in self.params]

    def unit_norms(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-unit 2-norms of per-parameter tensors aligned with ``params`` (no host sync)."""
        norms = torch._foreach_norm(list(tensors), 2, dtype=torch.float32)
        return (self.M @ torch.stack(norms).to(self.dtype).square()).sqrt()

    def squared(self) -> torch.Tensor:
        """``||g_unit||^2`` for every unit, a (U,) tensor on the device (no host sync)."""
        norms = torch._foreach_norm(self.grads(), 2, dtype=torch.float32)
        sq = torch.stack(norms).to(self.dtype).square()  # (P,)
        return self.M @ sq  # (U,)


class GradientTracker:
    """Accumulate per-unit gradient statistics during training (see the module docstring).

    ``units``: the units to track (default: discovered from the model for ``kind``).
    ``stream``: also hook each unit's ``outputs`` modules to read the residual-stream gradient.
    ``series_every``: window of the downsampled per-step series (1 keeps every step).
    ``max_steps``: preallocates the series buffer (it grows on device when exceeded).
    ``fan_in``: per-unit fan-in (a list aligned with the units, or ``{name: F}``); by default
    computed from the model's layout when it has one.
    ``process_group``: the DDP group whose ranks each hold part of the batch (default: the
    initialized default group, if any); only needed for the stream gradient, which is local
    to each rank, while parameter gradients are already all-reduced.
    ``accumulate``: keep ``sum_t g_t`` per parameter (``G_norm``, ``noise_floor``; fed by
    :meth:`step`, or by :meth:`add_gradients` where :meth:`record` is used).
    ``track_updates``: keep ``theta_0`` and accumulate the applied updates (``U``,
    ``displacement``); call :meth:`before_update` and :meth:`after_update` around the
    optimizer step.
    """

    def __init__(self, model: nn.Module, units: Sequence[Unit] | None = None, kind: Kind = "branch",
                 stream: bool = False, series_every: int = 1, max_steps: int | None = None,
                 fan_in: Sequence[int] | dict[str, int] | None = None, process_group=None,
                 accumulate: bool = False, track_updates: bool = False) -> None:
        if isinstance(series_every, bool) or not isinstance(series_every, int) or series_every < 1:
            raise ConfigError(f"series_every must be a positive integer, got {series_every!r}")
        model = unwrap(model)
        self.units = list(units) if units is not None else discover_units(model, kind)
        if not self.units:
            raise ConfigError(f"model {type(model).__name__} has no units to track")
        names = [u.name for u in self.units]
        keys = [(u.kind, u.name) for u in self.units]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"duplicate unit names to track: {names}")
        self.norms = UnitNorms(self.units)
        self.device, self.dtype = self.norms.device, self.norms.dtype
        self.series_every = series_every
        self.stream = stream
        self.steps = 0  # optimizer steps recorded (host-side counter: no sync)
        U = len(self.units)
        zeros = partial(torch.zeros, dtype=self.dtype, device=self.device)
        self.A, self.A_sq, self.A_stream = zeros(U), zeros(U), zeros(U)
        cap = max(1, math.ceil((max_steps or 64) / series_every))
        self.series = zeros(U, cap)  # window sums of ||g||
        self.stream_series = zeros(U, cap if stream else 0)
        self.fan_in = self._resolve_fan_in(model, fan_in)
        self._group = process_group
        self._handles: list = []
        if stream:
            self._hook_outputs()
        self.accumulate, self.track_updates = bool(accumulate), bool(track_updates)
        params = self.norms.params
        self.grad_sum = [torch.zeros_like(p, dtype=torch.float32) for p in params] if accumulate else []
        self.theta0 = [p.detach().clone() for p in params] if track_updates else []
        self.U = zeros(U)
        self._before: list[torch.Tensor] = []

    # ---- configuration helpers ------------------------------------------------------------
    def _hook_outputs(self) -> None:
        """One forward hook per distinct output module (a branch unit and its block unit share
        them); ``_out_map`` sums module norms into unit norms like ``UnitNorms.M`` does for params."""
        mods: list[nn.Module] = []
        where: dict[int, int] = {}
        out_map = []
        for u in self.units:
            if not u.outputs:
                raise ConfigError(f"unit {u.name} names no output module: cannot hook its stream gradient")
            row = set()
            for mod in u.outputs:
                if id(mod) not in where:
                    where[id(mod)] = len(mods)
                    mods.append(mod)
                row.add(where[id(mod)])
            out_map.append(sorted(row))
        self._out_map = torch.zeros(len(self.units), len(mods), dtype=self.dtype)
        for k, cols in enumerate(out_map):
            self._out_map[k, cols] = 1.0
        self._out_map = self._out_map.to(self.device)
        # ||dL/dy|| of each (module, application) this step, written once by its tensor hook
        self._stream_buf = torch.zeros(len(mods), 4, dtype=torch.float32, device=self.device)
        self._apps = [0] * len(mods)
        for j, mod in enumerate(mods):
            self._handles.append(mod.register_forward_hook(partial(self._on_forward, j)))

    def _resolve_fan_in(self, model: nn.Module, fan_in) -> list[int] | None:
        if fan_in is None:
            layout = discover_layout(model)
            return None if layout is None else unit_fan_in(layout, self.units)
        if isinstance(fan_in, dict):
            return [fan_in.get(u.name) for u in self.units]
        fan_in = list(fan_in)
        if len(fan_in) != len(self.units):
            raise ConfigError(f"fan_in has {len(fan_in)} entries for {len(self.units)} units")
        return fan_in

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ---- stream-gradient hooks ------------------------------------------------------------
    def _on_forward(self, j: int, module: nn.Module, inputs, output) -> None:
        y = output if torch.is_tensor(output) else next((o for o in output if torch.is_tensor(o)), None)
        if y is None or not torch.is_grad_enabled() or not y.requires_grad:
            return  # evaluation passes do not count
        slot = self._apps[j]
        self._apps[j] += 1
        if slot >= self._stream_buf.shape[1]:  # more applications than foreseen: grow on device
            self._stream_buf = _grow(self._stream_buf)
        y.register_hook(partial(self._on_stream_grad, j, slot))

    def _on_stream_grad(self, j: int, slot: int, grad: torch.Tensor) -> None:
        torch.linalg.vector_norm(grad, dtype=torch.float32, out=self._stream_buf[j, slot])

    def _stream_norms(self) -> torch.Tensor:
        """Per-unit stream gradient of this step: ``sum_a ||dL/dy_a||`` over the global batch."""
        norms = self._stream_buf.to(self.dtype)  # (module, application)
        world = 1
        if self._group is not None or (torch.distributed.is_available() and torch.distributed.is_initialized()):
            world = torch.distributed.get_world_size(self._group)
        if world > 1:
            # Each rank's loss is the mean over its share of the batch: its stream gradient is
            # `world` times its slice of the global-batch gradient.
            sq = norms.square()
            torch.distributed.all_reduce(sq, group=self._group)
            norms = sq.sqrt() / world
        self._stream_buf.zero_()
        self._apps = [0] * len(self._apps)
        return self._out_map @ norms.sum(dim=1)

    # ---- per step ------------------------------------------------------------------------------
    def _slot(self) -> int:
        slot = (self.steps - 1) // self.series_every
        if slot >= self.series.shape[1]:
            self.series = _grow(self.series)
            if self.stream:
                self.stream_series = _grow(self.stream_series)
        return slot

    @torch.no_grad()
    def step(self) -> None:
        """Record the current ``.grad`` of every unit (call after backward, before the update)."""
        self.record(self.norms.squared())
        if self.accumulate:
            self.add_gradients()

    @torch.no_grad()
    def add_gradients(self, grads: Sequence[torch.Tensor | None] | None = None) -> None:
        """Add this step's gradients (default: the current ``.grad``, aligned with
        ``norms.params``) to ``sum_t g_t``. One fused add; parameters without a gradient add 0."""
        if not self.accumulate:
            raise ConfigError("add_gradients needs GradientTracker(accumulate=True)")
        grads = [p.grad for p in self.norms.params] if grads is None else list(grads)
        pairs = [(s, g) for s, g in zip(self.grad_sum, grads) if g is not None]
        if pairs:
            torch._foreach_add_([s for s, _ in pairs], [g.to(torch.float32) for _, g in pairs])

    @torch.no_grad()
    def before_update(self) -> None:
        """Snapshot the parameters just before ``optimizer.step()`` (``track_updates=True``)."""
        if not self.track_updates:
            raise ConfigError("before_update needs GradientTracker(track_updates=True)")
        if not self._before:
            self._before = [p.detach().clone() for p in self.norms.params]
        else:
            torch._foreach_copy_(self._before, [p.detach() for p in self.norms.params])

    @torch.no_grad()
    def after_update(self) -> torch.Tensor:
        """Add ``||theta_after - theta_before||`` per unit to ``U``; returns this step's (U,)."""
        if not self._before:
            raise ConfigError("after_update without before_update: call it right before optimizer.step()")
        step = self.norms.unit_norms(torch._foreach_sub([p.detach() for p in self.norms.params],
                                                        self._before))
        self.U += step
        return step

    @torch.no_grad()
    def record(self, sq: torch.Tensor) -> torch.Tensor:
        """Record one step from per-unit squared gradient norms ``sq`` (a (U,) tensor on the
        tracker's device) computed elsewhere, e.g. by gradient hooks that ran before a trainer
        clipped the gradients (:mod:`gfa_theory.integrations`). Returns the step's unit norms."""
        self.steps += 1
        sq = sq.to(self.dtype)
        norm = sq.sqrt()
        self.A += norm
        self.A_sq += sq
        slot = self._slot()
        self.series[:, slot] += norm
        if self.stream:
            s = self._stream_norms()
            self.A_stream += s
            self.stream_series[:, slot] += s
        return norm

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        n = self._used()
        state = {"units": [u.name for u in self.units], "kinds": [u.kind for u in self.units],
                 "steps": self.steps, "series_every": self.series_every, "stream": self.stream,
                 "A": self.A, "A_sq": self.A_sq, "A_stream": self.A_stream,
                 "series": self.series[:, :n], "stream_series": self.stream_series[:, :n]}
        if self.accumulate:
            state["grad_sum"] = [t.detach().cpu().clone() for t in self.grad_sum]
        if self.track_updates:
            state["U"] = self.U
            state["theta0"] = [t.detach().cpu().clone() for t in self.theta0]
        return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in state.items()}

    def load_state_dict(self, state: dict) -> None:
        names = [u.name for u in self.units]
        if state["units"] != names or state["series_every"] != self.series_every \
                or state["stream"] != self.stream:
            raise ConfigError("tracker checkpoint does not match the tracked units/settings")
        for key, on in (("grad_sum", self.accumulate), ("theta0", self.track_updates)):
            if on and key not in state:
                raise ConfigError(f"tracker checkpoint has no '{key}': it was saved without this option")
        self.steps = int(state["steps"])
        for key in ("A", "A_sq", "A_stream"):
            getattr(self, key).copy_(state[key])
        if self.accumulate:
            torch._foreach_copy_(self.grad_sum, [t.to(s) for t, s in zip(state["grad_sum"], self.grad_sum)])
        if self.track_updates:
            self.U.copy_(state["U"])
            torch._foreach_copy_(self.theta0, [t.to(s) for t, s in zip(state["theta0"], self.theta0)])
        for key in ("series", "stream_series"):
            buf = getattr(self, key)
            saved = state[key]
            while buf.shape[1] < saved.shape[1]:
                buf = _grow(buf)
            buf.zero_()
            buf[:, :saved.shape[1]] = saved.to(buf)
            setattr(self, key, buf)

    def _used(self) -> int:
        return math.ceil(self.steps / self.series_every)

    # ---- export --------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Long format: unit, kind, index, quantity, step (NA for totals), value, fan_in."""
        A = self.A.cpu().double().numpy()
        numel = self.norms.numel.cpu().double().numpy()
        totals = {"A": A, "A_sq": self.A_sq.cpu().double().numpy(), "A_rms": A / np.sqrt(numel)}
        if self.stream:
            totals["A_stream"] = self.A_stream.cpu().double().numpy()
        totals["numel"] = numel
        totals.update(self.accumulated())
        n = self._used()
        ends = np.minimum(np.arange(1, n + 1) * self.series_every, self.steps)  # window ends
        counts = ends - np.arange(n) * self.series_every  # the last window may be partial
        series = {"grad_norm": self.series[:, :n].cpu().double().numpy() / counts}
        if self.stream:
            series["stream_grad_norm"] = self.stream_series[:, :n].cpu().double().numpy() / counts
        rows = []
        fan = self.fan_in or [None] * len(self.units)
        for k, u in enumerate(self.units):
            for q, values in totals.items():
                rows.append((u.name, u.kind, u.index, q, None, float(values[k]), fan[k]))
            for q, values in series.items():
                for w in range(n):
                    rows.append((u.name, u.kind, u.index, q, int(ends[w]), float(values[k, w]), fan[k]))
        df = pd.DataFrame(rows, columns=["unit", "kind", "index", "quantity", "step", "value", "fan_in"])
        df["step"] = df["step"].astype("Int64")
        df["fan_in"] = df["fan_in"].astype("Int64")
        return df

    @torch.no_grad()
    def accumulated(self) -> dict[str, np.ndarray]:
        """The opt-in totals of the module docstring that this tracker keeps, per unit."""
        out: dict[str, np.ndarray] = {}
        if self.accumulate:
            G = self.norms.unit_norms(self.grad_sum).cpu().double().numpy()
            T = self.steps
            A_sq = self.A_sq.cpu().double().numpy()
            var = (T * A_sq - G ** 2) / (T * (T - 1)) if T > 1 else np.full_like(G, np.nan)
            out["G_norm"] = G
            out["noise_floor"] = T * np.sqrt(np.clip(var, 0.0, None))
        if self.track_updates:
            out["U"] = self.U.cpu().double().numpy()
            moved = torch._foreach_sub([p.detach() for p in self.norms.params], self.theta0)
            out["displacement"] = self.norms.unit_norms(moved).cpu().double().numpy()
        return out

    def totals(self, quantity: str = "A", kind: str | None = None) -> pd.DataFrame:
        """One row per unit: unit, kind, index, fan_in and the accumulated ``quantity``."""
        df = self.to_frame()
        df = df[(df["quantity"] == quantity) & df["step"].isna()]
        if kind is not None:
            df = df[df["kind"] == kind]
        return df.drop(columns=["quantity", "step"]).rename(columns={"value": quantity}).reset_index(drop=True)


def block_totals(rows: pd.DataFrame, quantity: str, units: Sequence[str], source: str = "the gradient log") -> dict[str, float]:
    """``{unit: total}`` for exactly the block ``units`` of a model, from ``rows``: the frame's
    final ``quantity`` totals of kind ``block`` (one per unit). A log that does not belong to
    the model (other block names, more or fewer blocks) or holds a value that is not a finite
    number >= 0 is a one-line ConfigError naming ``source``: truncating it, or ranking by NaN,
    would give an answer about another model."""
    values = pd.to_numeric(rows["value"], errors="coerce").to_numpy(float)  # NaN where not a number
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if len(bad):
        unit, raw = rows["unit"].iloc[bad[0]], rows["value"].iloc[bad[0]]
        raise ConfigError(f"{source} holds {quantity} = {str(raw)[:40]!r} for block {unit}: a total must be a "
                          "finite number >= 0 (the file is corrupt or not a tracker log)")
    found = [str(u) for u in rows["unit"]]
    extra, lacking = sorted(set(found) - set(units)), [u for u in units if u not in set(found)]
    if extra or lacking:
        what = [f"blocks the model lacks ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"] if extra else []
        what += [f"no {quantity} for {', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}"] if lacking else []
        raise ConfigError(f"{source} has {len(set(found))} blocks and the model {len(units)}: {'; '.join(what)}; "
                          "it is the log of another model")
    return {u: float(v) for u, v in zip(found, values) if u in set(units)}


def _grow(buf: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(buf.shape[0], max(1, 2 * buf.shape[1]), dtype=buf.dtype, device=buf.device)
    out[:, :buf.shape[1]] = buf
    return out


@torch.no_grad()
def _equalizing_scale(norm: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-unit factors taking every unit's norm to the mean unit norm (a zero unit keeps 1)."""
    return torch.where(norm > eps, norm.mean() / norm.clamp_min(eps), torch.ones_like(norm))


def _scale_units_(norms: UnitNorms, tensors: Sequence[torch.Tensor | None], scale: torch.Tensor) -> None:
    """Multiply, in place, each tensor aligned with ``norms.params`` by its unit's factor."""
    # a parameter in one unit gets that unit's scale (units of one kind do not overlap)
    per_param = (norms.M.T @ scale) / norms.M.sum(dim=0).clamp_min(1.0)  # (P,)
    pairs = [(t, f) for t, f in zip(tensors, per_param.unbind()) if t is not None]
    if pairs:
        torch._foreach_mul_([t for t, _ in pairs], [f.to(t.dtype) for t, f in pairs])


def equalize_gradients_(norms: UnitNorms, eps: float = 1e-12) -> torch.Tensor:
    """Gradient-norm equalization: rescale each unit's gradient to the mean unit norm, in place.

    Used with the block units (the equalization intervention, ``train.intervention=equalize``). Parameters outside the units (embeddings, heads)
    are left alone; a unit with a zero gradient stays zero. Returns the (U,) scale factors.
    """
    scale = _equalizing_scale(norms.squared().sqrt(), eps)
    _scale_units_(norms, [p.grad for p in norms.params], scale)
    return scale


def rescale_gradients_globally_(norms: UnitNorms, eps: float = 1e-12) -> torch.Tensor:
    """The control of :func:`equalize_gradients_`: one common factor on every unit's gradient,
    chosen so that their joint norm becomes what equalization would make it (``mean / rms`` of
    the unit norms, at most 1), while the ratios between units stay as they were
    (``train.intervention=global_rescale``). Returns the (U,) factors (all equal)."""
    norm = norms.squared().sqrt()
    total = norm.square().sum().sqrt()
    equalized = (norm * _equalizing_scale(norm, eps)).square().sum().sqrt()
    common = torch.where(total > eps, equalized / total.clamp_min(eps), torch.ones_like(total))
    scale = common.expand_as(norm).clone()
    _scale_units_(norms, [p.grad for p in norms.params], scale)
    return scale


def snapshot_params(norms: UnitNorms) -> list[torch.Tensor]:
    """Copies of the units' parameters, taken before ``optimizer.step()`` for :func:`equalize_updates_`."""
    return [p.detach().clone() for p in norms.params]


@torch.no_grad()
def equalize_updates_(norms: UnitNorms, before: Sequence[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """Update-norm equalization (trust-ratio style), after ``optimizer.step()``: rescale each unit's
    applied step ``theta - before`` to the mean unit step norm, in place (``train.intervention=
    equalize_update``). Unlike rescaling gradients, this survives Adam's per-coordinate
    normalization; the optimizer's state (moments, momentum) is left as the optimizer made it.
    Returns the (U,) scale factors."""
    params = [p.detach() for p in norms.params]
    delta = torch._foreach_sub(params, list(before))
    scale = _equalizing_scale(norms.unit_norms(delta), eps)
    _scale_units_(norms, delta, scale)
    torch._foreach_add_(delta, list(before))
    torch._foreach_copy_(params, delta)
    return scale

