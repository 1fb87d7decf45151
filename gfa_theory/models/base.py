"""What every residual model of this package shares: size limits, the supervision set, ablation.

:class:`ResidualModel` is the model protocol the measurements rely on (``units``, ``layout``,
``ablate``, ``forward(x, targets=None, final_only=False) -> (logits, loss)``); :func:`unwrap`
takes a model out of its DDP / DataParallel / ``torch.compile`` wrappers, once, at each public
entry point of the floors above.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gfa_theory.errors import ConfigError

# Upper bounds of model sizes, checked by the configs before anything is allocated (whether a
# model within them fits in memory is a separate check: gfa_theory.train.memory).
MAX_DIM = 2 ** 31 - 1  # any width, vocabulary, context or channel count (torch's int32 kernels)
MAX_BLOCKS = 100_000  # residual blocks / applications (a config loops over them)


def bounded(name: str, value: Any, low: int = 1, high: int = MAX_DIM) -> None:
    """``value`` must be an integer in ``low..high`` (one-line :class:`ConfigError` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else f"~{float(value):.3g}"
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {what} <= {high:,}, got {shown}")


def supervised_blocks(spec: Any, B: int, what: str = "supervision") -> list[int]:
    """The supervision set S as sorted 1-based block indices; the last block is always read."""
    if spec == "final":
        return [B]
    if spec == "all":
        return list(range(1, B + 1))
    if isinstance(spec, str) or not isinstance(spec, (list, tuple)):
        raise ConfigError(f"{what} must be 'final', 'all' or a list of 1-based block indices, got {spec!r}")
    for m in spec:
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= B:
            raise ConfigError(f"{what} index {m!r} is out of range 1..{B}")
    if len(set(spec)) != len(spec):
        raise ConfigError(f"{what} lists a block twice: {list(spec)}")
    return sorted(set(spec) | {B})


def check_kind(kind: str) -> None:
    """Units come in two kinds: ``branch`` and ``block``."""
    if kind not in ("branch", "block"):
        raise ConfigError(f"unit kind must be 'branch' or 'block', got {kind!r}")


NormRole = Literal["pre", "out", "post", "head", "skip"]


class NormCall(NamedTuple):
    """One call of a norm (or skip map) in a forward pass, and where it sits in the wiring
    (:mod:`gfa_theory.theory.gains`): ``pre`` / ``out`` on branch ``index``'s input / output,
    ``post`` after the sum that writes stream position ``index``, ``head`` on the read-out of
    supervised block ``index``, ``skip`` on the skip path into position ``index`` (a projection).
    ``relu``: the call is a whole block whose output is a ReLU of the sum (a post-activation
    ResNet), so the gain is read from the output's sign pattern, not from the module's Jacobian."""

    module: nn.Module
    role: NormRole
    index: int
    name: str
    relu: bool = False


class ResidualModel(nn.Module):
    """Ablation by unit name, shared by the package's models (and the views that put other
    families behind the same protocol); models that apply a block several times (a shared
    group) can also skip single applications (``skips_applications``)."""

    skips_applications = False  # True where the forward pass honours `skipped`

    def __init__(self) -> None:
        super().__init__()
        self.disabled: set[str] = set()  # unit names currently ablated
        self.skipped: frozenset[int] = frozenset()  # 1-based block applications currently skipped

    def unit_names(self) -> set[str]:
        """Every valid ablation name: branch and block units."""
        if not hasattr(self, "_unit_names"):
            self._unit_names = {u.name for k in ("branch", "block") for u in self.units(k)}
        return self._unit_names

    def check_unit_names(self, names: Iterable[str]) -> set[str]:
        names = set(names)
        unknown = sorted(names - self.unit_names())
        if unknown:
            raise ConfigError(f"unknown unit '{unknown[0]}' (valid: {', '.join(sorted(self.unit_names()))})")
        return names

    @contextmanager
    def ablate(self, names: Iterable[str]) -> Iterator["ResidualModel"]:
        """Temporarily disable the named units (added to any already disabled)."""
        names = self.check_unit_names(names)
        previous = self.disabled
        self.disabled = set(previous) | names
        try:
            yield self
        finally:
            self.disabled = previous

    @contextmanager
    def skip_applications(self, positions: Iterable[int]) -> Iterator["ResidualModel"]:
        """Temporarily skip the given 1-based block applications (positions in the layout's block
        order): each writes nothing to the stream, while the other applications of a shared group
        keep running. Skipping every application of a group equals ablating the group."""
        if not self.skips_applications:
            raise ConfigError(f"{type(self).__name__} cannot skip single block applications")
        positions = set(positions)
        n = len(self.layout().blocks)
        bad = sorted(a for a in positions if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= n)
        if bad:
            raise ConfigError(f"block application {bad[0]!r} is out of range 1..{n}")
        previous = self.skipped
        self.skipped = frozenset(previous | positions)
        try:
            yield self
        finally:
            self.skipped = previous


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def logits_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    final_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, loss)`` of a :class:`ResidualModel` (the final head's loss with ``final_only``,
    else the mean over its supervised heads) or of a plain classifier (cross-entropy of its
    output, e.g. a torchvision ResNet)."""
    if isinstance(model, ResidualModel):
        return model(x, y, final_only=final_only)
    logits = model(x)
    return logits, F.cross_entropy(logits, y)
