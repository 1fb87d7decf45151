"""The adapter protocol: what a model family tells the rest of the package about its models.

Every family (this package's GPT and ResNet, torchvision ResNets, Hugging Face GPT-2, or one a
user registers) has one :class:`Adapter` in the registry of :mod:`gfa_theory.models.families`;
nothing else in the package looks at a model's class or attributes. An adapter says:

* ``matches(model) -> bool``;
* ``layout(model) -> Layout``: blocks, branches per block, parallel or not, supervision, shared;
* ``units(model, kind) -> list[Unit]`` for ``kind`` in ``"branch"``, ``"block"``: names,
  parameters (shared ones listed once), ``outputs`` (the modules whose output is the branch
  output) and ``applications`` (layout branch indices ``i`` of a branch unit, block indices ``b``
  of a block unit, in forward order);
* ``surrogate(model, gains) -> Callable[[], Tensor]``: a function returning the sum of the heads
  of a copy of ``model`` (see :func:`copy_with`) in which branch unit ``name`` is replaced by
  ``gains[name]`` and norms, embeddings, heads and projection shortcuts by the identity, run on
  a positive one-element stream of dtype :data:`DTYPE` (so post-addition ReLUs are the identity).

Two optional capabilities, as abstract subclasses:

* :class:`ScorableAdapter`: the model follows :class:`~gfa_theory.models.base.ResidualModel`'s
  protocol and its blocks can be hooked by the post hoc scorers (block modules, the stream each
  block reads and writes, the input and output of each branch);
* :class:`PrunableAdapter`: its blocks can be physically removed (which ones, how, and the
  model the scorers run on).
"""
from __future__ import annotations

import abc
import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from gfa_theory.models.base import ResidualModel
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Layout

DTYPE = torch.float64  # path counts are integers: float64 keeps them exact far beyond any depth
# (unique block, x_in aligned to x_out, x_out) per block application; a branch record has the
# branch name after the block: (unique block, branch, x_in, x_in + f)
Record = tuple


class TupleOutput(nn.Module):
    """Wraps a surrogate for modules that return ``(output, extras...)`` (e.g. HF attention)."""

    def __init__(self, inner: nn.Module, extras: int = 1) -> None:
        super().__init__()
        self.inner, self.extras = inner, extras

    def forward(self, *args: Any, **kwargs: Any) -> tuple:
        x = args[0] if args else kwargs["hidden_states"]  # Llama passes it by keyword
        return (self.inner(x),) + (None,) * self.extras


def copy_with(model: nn.Module, replace: dict[nn.Module, nn.Module]) -> nn.Module:
    """A deep copy of ``model`` in which each module in ``replace`` is swapped for its value.

    The replaced modules (and their parameters) are never copied, so neutralizing a large
    embedding or head costs nothing; a module shared by several parents maps to one replacement.
    """
    memo: dict[int, Any] = {id(old): new for old, new in replace.items()}
    return copy.deepcopy(model, memo)


class Adapter(abc.ABC):
    """How to read one model family's residual wiring (see the module docstring)."""

    name = "adapter"

    @abc.abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter reads ``model``."""

    @abc.abstractmethod
    def layout(self, model: nn.Module) -> Layout:
        """The model's residual layout."""

    @abc.abstractmethod
    def units(self, model: nn.Module, kind: str = "branch") -> list[Unit]:
        """The model's branch or block units, in layout order."""

    @abc.abstractmethod
    def surrogate(self, model: nn.Module, gains: dict[str, nn.Module]) -> Callable[[], torch.Tensor]:
        """A loss function of the model with its branches swapped for the given gains."""

    def wiring(self) -> str | None:
        """Each branch's residual update with the modules named (where its norms sit), for a
        family whose layers say it differently from one another; ``None``: nothing to add."""
        return None


class ScorableAdapter(Adapter):
    """A family the post hoc scorers (:mod:`gfa_theory.instrument.importance`) run on: its
    models are :class:`ResidualModel` s and their block applications can be recorded."""

    @abc.abstractmethod
    def block_modules(self, model: nn.Module) -> list[nn.Module]:
        """The unique block modules, indexed like the model's block units (``blocks.k``, ``h.k``)."""

    def aligned_input(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The stream ``x`` a block reads, carried to where its output lives: through its
        shortcut when the block has one (a projection changes the shape), else unchanged."""
        return x

    def record_key(self, unit: Unit) -> tuple:
        """The key of ``unit`` in the records: ``(unique block,)``, plus the branch name for a
        branch of a multi-branch block."""
        return (int(unit.name.split(".")[1]),)

    @contextmanager
    def record_block_io(self, model: nn.Module) -> Iterator[list[Record]]:
        """Record ``(unique block, x_in aligned to x_out, x_out)`` for every block application."""
        records: list[Record] = []
        handles = []
        for u, blk in enumerate(self.block_modules(model)):
            def hook(mod, args, out, u=u):
                records.append((u, self.aligned_input(mod, args[0]).detach(), out.detach()))
            handles.append(blk.register_forward_hook(hook))
        try:
            yield records
        finally:
            for h in handles:
                h.remove()

    def record_branch_io(self, model: nn.Module):
        """Record every branch application: ``(unique block, [branch,] x_in, x_in + f)``. A
        family of one branch per block records its blocks."""
        return self.record_block_io(model)


class PrunableAdapter(Adapter):
    """A family whose blocks CascadeFlow Pruning and its baselines can remove
    (:mod:`gfa_theory.methods.pruning`)."""

    @abc.abstractmethod
    def removable_blocks(self, model: nn.Module) -> list[str]:
        """Block unit names that can go, in forward order (a block whose shortcut changes the
        stream's shape cannot)."""

    @abc.abstractmethod
    def remove_blocks(self, model: nn.Module, remove: set[str]) -> nn.Module:
        """A new model without the blocks named in ``remove`` (removable ones, checked by the
        caller): the surviving weights, on ``model``'s device and dtype and in its train / eval
        mode; ``model`` and the caller's RNG stream are left untouched."""

    def scoring_view(self, model: nn.Module) -> tuple[ResidualModel, dict[str, str]]:
        """The model the post hoc scorers run on and its block unit names -> ``model``'s."""
        return model, {u.name: u.name for u in self.units(model, "block")}

    def applications(self, model: nn.Module) -> list[str]:
        """Block unit name at each block application ``1..B`` (a shared block repeats)."""
        return [u.name for u in self.units(model, "block")]
