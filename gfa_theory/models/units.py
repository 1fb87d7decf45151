"""Units: the named branches and blocks that theory and measurement both refer to."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn


@dataclass
class Unit:
    """One measured unit of a model.

    ``kind`` is ``"branch"`` (one residual branch, its pre-norm included) or ``"block"``
    (all branches of a block). ``index`` is the 1-based branch index ``i`` (for a branch) or
    block index ``b`` (for a block) in the layout, counting the *first* application of a shared
    group. ``params`` are the unit's parameters, each listed once even when the unit is applied
    several times. ``outputs`` are the modules whose forward output is the unit's branch output
    ``f_i(Norm(x))``: a tensor hook there reads the gradient arriving at the stream position the
    branch writes (summed over applications).
    """

    name: str
    kind: Literal["branch", "block"]
    index: int
    params: list[nn.Parameter]
    outputs: list[nn.Module] = field(default_factory=list)
    applications: tuple[int, ...] = ()  # layout indices (branch i or block b) where it is applied

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)
