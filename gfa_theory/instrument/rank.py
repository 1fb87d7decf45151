"""Gradient effective rank: over how many directions each unit's weight gradients spread.

Two spectra per weight matrix of a unit (every parameter with ``ndim >= 2``; a conv kernel
``(out, in, k, k)`` is read as the ``(out, in*k*k)`` matrix it applies):

``effective_rank`` / ``stable_rank``
    of the accumulated gradient matrix ``A_M = sum_t g_t`` (the matrix counterpart of the
    tracker's ``G_norm``), from its singular values ``s_k``.
``window_effective_rank`` / ``window_stable_rank``
    of the last ``W`` per-step gradients: the singular values of the stacked ``(W, P)`` matrix
    ``X`` whose rows are the flattened ``g_t`` (``P`` the matrix's parameters).

Definitions (singular values ``s_k``, ``p_k = s_k / sum_j s_j``):

* effective rank ``exp(-sum_k p_k log p_k)`` (Roy & Vetterli, 2007);
* stable rank ``||M||_F^2 / ||M||_2^2 = sum_k s_k^2 / s_1^2``.

Both lie in ``[1, rank M]`` and ``stable <= effective`` always: ``sum s^2 / s_1^2 <=
sum s / s_1 = exp(H_inf(p)) <= exp(H_1(p))`` (Renyi entropies fall with their order). A zero
matrix has neither (NaN). No singular value is thresholded: both are continuous measures, and a
cut-off would drop exactly the long tail the effective rank is meant to count.

Why the window uses ``X`` and how it is computed: ``X``'s squared singular values are the
eigenvalues of the uncentred gradient second moment ``C = X^T X / W`` (times ``W``), so
``window_stable_rank = tr C / ||C||_2``, the usual effective rank of a covariance, and both
ranks use the same definitions as the accumulated matrix (gradient units, not squared ones).
Uncentred on purpose: the mean gradient (drift) is part of what accumulates; ``W`` identical
gradients give rank 1, ``W`` orthogonal ones of equal norm rank ``W``. The singular values are
``sqrt(svdvals(X X^T))`` of the ``W x W`` Gram, formed in float64 on the gradients' device:
``W^2 P`` multiply-adds and no ``W x P`` decomposition; float64 resolves float32 gradients with
room to spare.

Per unit, a row with ``matrix == UNIT`` holds the parameter-weighted mean over the unit's
matrices (weights ``numel``, NaN matrices left out): the rank an average parameter of the unit
sees, the same per-parameter accounting as ``A``. The ranks are bounded by ``min(m, n)``
(and by ``W``), so compare units of equal shapes or read them next to those bounds.

Memory of :class:`RankMonitor`: a ring buffer of ``W`` float32 copies of the monitored matrices
(``W x`` their parameter count), plus one float32 copy for the running sum unless a
:class:`~gfa_theory.instrument.tracking.GradientTracker` with ``accumulate=True`` supplies it.
At sampled steps the Gram needs a transient float64 copy of one matrix's buffer at a time.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.instrument.tracking import GradientTracker, Kind, discover_units
from gfa_theory.models.base import unwrap
from gfa_theory.models.units import Unit

QUANTITIES = ("effective_rank", "stable_rank", "window_effective_rank", "window_stable_rank")
UNIT = "(unit)"  # the ``matrix`` of a unit's parameter-weighted mean
COLUMNS = ["step", "unit", "index", "matrix", "quantity", "value"]


def as_matrix(t: torch.Tensor) -> torch.Tensor | None:
    """The matrix a weight applies: 2-D as is, ``(out, ...)`` as ``(out, prod(...))``; None for
    vectors (biases, norm gains)."""
    return t.reshape(t.shape[0], -1) if t.ndim >= 2 else None


def _f64(t: torch.Tensor) -> torch.Tensor:
    # MPS has no float64: decompose there on the CPU
    return (t.cpu() if t.device.type == "mps" else t).detach().to(torch.float64)


def singular_values(M: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D tensor, in float64."""
    if M.ndim != 2:
        raise ConfigError(f"singular values need a matrix, got a tensor of shape {tuple(M.shape)}")
    return torch.linalg.svdvals(_f64(M))


def window_singular_values(X: torch.Tensor) -> torch.Tensor:
    """Singular values of the ``(W, P)`` window ``X`` from its ``W x W`` Gram (module docstring)."""
    X = _f64(X)
    return torch.linalg.svdvals(X @ X.T).clamp_min(0.0).sqrt()


def effective_rank(s: torch.Tensor) -> float:
    """``exp`` of the entropy of ``s / sum s`` (NaN when every singular value is 0)."""
    total = s.sum()
    if not bool(total > 0):
        return math.nan
    p = s / total
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


def stable_rank(s: torch.Tensor) -> float:
    """``sum s^2 / max(s)^2`` (NaN when every singular value is 0)."""
    top = s.max() if s.numel() else s.new_zeros(())
    if not bool(top > 0):
        return math.nan
    return float(s.square().sum() / top.square())


def ranks(s: torch.Tensor, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}effective_rank": effective_rank(s), f"{prefix}stable_rank": stable_rank(s)}


def matrix_ranks(M: torch.Tensor) -> dict[str, float]:
    """Effective and stable rank of a weight-shaped tensor (conv kernels reshaped)."""
    m = as_matrix(M)
    if m is None:
        raise ConfigError(f"a rank needs a weight matrix, got a tensor of shape {tuple(M.shape)}")
    return ranks(singular_values(m))


def window_ranks(X: torch.Tensor) -> dict[str, float]:
    """Window effective and stable rank of stacked flattened gradients ``X`` of shape ``(W, P)``."""
    if X.ndim != 2:
        raise ConfigError(f"a gradient window is a (W, P) matrix, got shape {tuple(X.shape)}")
    return ranks(window_singular_values(X), "window_")


def unit_matrices(model: nn.Module, unit: Unit) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the unit's weight matrices, each once, named as in the model."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    seen: set[int] = set()
    out = []
    for p in unit.params:
        if p.ndim >= 2 and id(p) not in seen:
            seen.add(id(p))
            out.append((names.get(id(p), f"param{len(out)}"), p))
    return out


def unit_means(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ``matrix == UNIT``: per (step, unit, index, quantity) the ``numel``-weighted mean of
    the matrices' values; ``df`` needs a ``numel`` column. NaN values are left out (all NaN: NaN)."""
    keys = ["step", "unit", "index", "quantity"]
    w = df["numel"].where(df["value"].notna(), 0).astype(float)
    parts = pd.DataFrame({"wv": w * df["value"].fillna(0.0), "w": w})
    sums = parts.groupby([df[k] for k in keys], dropna=False, sort=False).sum()
    out = (sums["wv"] / sums["w"]).rename("value").reset_index()  # 0 / 0 is NaN
    return out.assign(matrix=UNIT)[COLUMNS]


def _frame(rows: list[tuple], step: int | None) -> pd.DataFrame:
    """Per-matrix rows ``(unit, index, matrix, numel, quantity, value)`` -> the long frame with
    the units' weighted means appended."""
    df = pd.DataFrame(rows, columns=["unit", "index", "matrix", "numel", "quantity", "value"])
    df.insert(0, "step", pd.array([step] * len(df), dtype="Int64"))
    return pd.concat([df[COLUMNS], unit_means(df)], ignore_index=True) if len(df) else df[COLUMNS]


class RankMonitor:
    """Gradient ranks of each unit's weight matrices during training (module docstring).

    Call ``monitor.step(step)`` once per optimizer step after ``loss.backward()`` (it only reads
    ``.grad``). Every ``every`` steps it measures the accumulated ranks and, once ``window``
    gradients are stored, the window ranks; ``to_frame()`` is the long table. ``window=None``
    keeps no ring buffer. ``tracker``: a ``GradientTracker(accumulate=True)`` over the same
    parameters whose running sums are read instead of keeping another copy (its ``step()`` must
    then be called too).
    """

    def __init__(self, model: nn.Module, window: int | None = 16, every: int = 50,
                 units: Sequence[Unit] | None = None, kind: Kind = "branch",
                 tracker: GradientTracker | None = None) -> None:
        for name, v in (("every", every), ("window", 1 if window is None else window)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        self.model, self.window, self.every = unwrap(model), window, every
        self.units = list(units) if units is not None else discover_units(self.model, kind)
        self.matrices = {u.name: unit_matrices(self.model, u) for u in self.units}
        params = {id(p): p for mats in self.matrices.values() for _, p in mats}
        if not params:
            raise ConfigError("the units to monitor have no weight matrix")
        self.params = list(params.values())
        self.owns_sums = tracker is None
        self._sums = self._resolve_sums(tracker)
        self._ring = [torch.zeros(window, p.numel(), dtype=torch.float32, device=p.device)
                      for p in self.params] if window else []
        self._where = {id(p): k for k, p in enumerate(self.params)}
        self.seen = 0  # gradients recorded (host counter: no sync)
        self.frames: list[pd.DataFrame] = []

    def _resolve_sums(self, tracker: GradientTracker | None) -> list[torch.Tensor]:
        if tracker is None:
            return [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        if not tracker.accumulate:
            raise ConfigError("RankMonitor(tracker=...) needs GradientTracker(accumulate=True)")
        held = {id(p): s for p, s in zip(tracker.norms.params, tracker.grad_sum)}
        missing = [p for p in self.params if id(p) not in held]
        if missing:
            raise ConfigError(f"the tracker does not accumulate {len(missing)} monitored matrices")
        return [held[id(p)] for p in self.params]

    @torch.no_grad()
    def record(self) -> None:
        """Push the current ``.grad`` (zeros where None) into the ring and the running sums."""
        grads = [p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                 for p in self.params]
        if self._ring:
            slot = self.seen % self.window  # row order is irrelevant to singular values
            torch._foreach_copy_([r[slot] for r in self._ring], grads)
        if self.owns_sums:
            torch._foreach_add_(self._sums, [g.view_as(s).to(torch.float32) for g, s in zip(grads, self._sums)])
        self.seen += 1

    def step(self, step: int) -> bool:
        """Record this step's gradients; measure when ``step % every == 0``. True if measured."""
        self.record()
        if step % self.every:
            return False
        self.frames.append(self.measure(step))
        return True

    @torch.no_grad()
    def measure(self, step: int | None = None) -> pd.DataFrame:
        """The long table now: per unit and matrix, the accumulated ranks and (when the ring is
        full) the window ranks, plus the units' weighted means (``matrix == UNIT``)."""
        full = bool(self._ring) and self.seen >= self.window
        cache: dict[int, dict[str, float]] = {}
        rows = []
        for u in self.units:
            for name, p in self.matrices[u.name]:
                k = self._where[id(p)]
                if k not in cache:  # a matrix shared by several units is decomposed once
                    cache[k] = matrix_ranks(self._sums[k])
                    if full:
                        cache[k].update(window_ranks(self._ring[k]))
                rows += [(u.name, u.index, name, p.numel(), q, v) for q, v in cache[k].items()]
        return _frame(rows, step)

    def to_frame(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame(columns=COLUMNS).astype({"step": "Int64"})
        return pd.concat(self.frames, ignore_index=True)
