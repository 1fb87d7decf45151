"""Residual layouts: which branches write the stream, where heads read it, what is shared.

A layout is the wiring the fan-in theory needs and nothing else (notation: the table in
:mod:`gfa_theory.theory.symbolic`):

* blocks ``b = 1..B``, each with ``k_b >= 1`` branches. In a *sequential* block each branch
  reads the stream and writes a new stream position (``x_i = x_{i-1} + f_i(Norm(x_{i-1}))``);
  in a *parallel* block (GPT-J style) all branches read the block input and write one position.
* branches ``i = 1..N`` numbered in forward order;
* the supervision set ``S`` as block indices whose output a loss head reads (the last block is
  always read);
* ``shared``: groups of blocks applied with one parameter group (parameter-shared repetition);
  the blocks of a group must have the same branch structure.

JSON form (1-based block indices)::

    {"blocks": [{"branches": 2, "parallel": false}, ...],
     "supervision": [2, 4], "shared": [[3, 4]]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from gfa_theory.errors import LayoutError

MAX_FILE_BYTES = 64 * 2 ** 20  # a layout file of ~2 million blocks; larger is not a layout


@dataclass(frozen=True)
class Block:
    """One residual block: ``branches`` functional branches, sequential or parallel."""

    branches: int = 2
    parallel: bool = False
    name: str | None = None

    @property
    def width(self) -> int:
        """Number of stream positions this block writes."""
        return 1 if self.parallel else self.branches


@dataclass(frozen=True)
class Branch:
    """Branch ``index`` (1-based, forward order) of block ``block`` (1-based).

    ``slot`` is its 0-based place inside the block and ``position`` the stream position it
    writes (``x_position``; positions start at 1, ``x_0`` is the embedding).
    """

    index: int
    block: int
    slot: int
    position: int


@dataclass(frozen=True)
class Layout:
    blocks: tuple[Block, ...]
    supervision: tuple[int, ...] = ()
    shared: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        blocks = tuple(self.blocks)
        if not blocks:
            raise LayoutError("layout has no blocks: need at least one")
        for b, blk in enumerate(blocks, start=1):
            if not isinstance(blk, Block):
                raise LayoutError(f"block {b} is not a Block")
            if isinstance(blk.branches, bool) or not isinstance(blk.branches, int):
                raise LayoutError(f"block {b}: 'branches' must be an integer, got {blk.branches!r}")
            if blk.branches < 1:
                raise LayoutError(f"block {b}: 'branches' must be >= 1, got {blk.branches}")
            if not isinstance(blk.parallel, bool):
                raise LayoutError(f"block {b}: 'parallel' must be true or false")
        B = len(blocks)
        sup = set()
        for m in self.supervision:
            if isinstance(m, bool) or not isinstance(m, int):
                raise LayoutError(f"supervision index {m!r} is not an integer")
            if not 1 <= m <= B:
                raise LayoutError(f"supervision index {m} is out of range 1..{B}")
            sup.add(m)
        sup.add(B)  # the output head always reads the last block
        seen: dict[int, int] = {}
        groups = []
        for g, group in enumerate(self.shared, start=1):
            group = tuple(group)
            if not group:
                raise LayoutError(f"shared group {g} is empty")
            for b in group:
                if isinstance(b, bool) or not isinstance(b, int):
                    raise LayoutError(f"shared group {g}: block index {b!r} is not an integer")
                if not 1 <= b <= B:
                    raise LayoutError(f"shared group {g}: block index {b} is out of range 1..{B}")
                if b in seen:
                    raise LayoutError(f"block {b} appears in shared groups {seen[b]} and {g}")
                seen[b] = g
            ref = blocks[group[0] - 1]
            for b in group[1:]:
                other = blocks[b - 1]
                if (other.branches, other.parallel) != (ref.branches, ref.parallel):
                    raise LayoutError(
                        f"shared group {g}: blocks {group[0]} and {b} have different branch structure "
                        f"({ref.branches} {'parallel' if ref.parallel else 'sequential'} vs "
                        f"{other.branches} {'parallel' if other.parallel else 'sequential'})"
                    )
            groups.append(tuple(sorted(group)))
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "supervision", tuple(sorted(sup)))
        object.__setattr__(self, "shared", tuple(groups))

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def sequential(cls, N: int, supervision: str | Iterable[int] = "final") -> "Layout":
        """``N`` single-branch blocks (one branch = one block); ``supervision`` 'final' or 'all'."""
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise LayoutError(f"number of branches must be a positive integer, got {N!r}")
        return cls([Block(1)] * N, supervision=_supervision(supervision, N))

    @classmethod
    def transformer(cls, B: int, parallel: bool = False,
                    supervision: str | Iterable[int] = "final") -> "Layout":
        """``B`` Transformer blocks of two branches (attention, MLP)."""
        if isinstance(B, bool) or not isinstance(B, int) or B < 1:
            raise LayoutError(f"number of blocks must be a positive integer, got {B!r}")
        return cls([Block(2, parallel)] * B, supervision=_supervision(supervision, B))

    @classmethod
    def from_dict(cls, data: Any) -> "Layout":
        if not isinstance(data, dict):
            raise LayoutError("layout must be a JSON object with a 'blocks' list")
        unknown = sorted(set(data) - {"blocks", "supervision", "shared", "name"})
        if unknown:
            raise LayoutError(f"unknown layout key '{unknown[0]}' (valid: blocks, supervision, shared)")
        raw_blocks = data.get("blocks")
        if not isinstance(raw_blocks, list):
            raise LayoutError("layout needs a 'blocks' list")
        blocks = []
        for b, rb in enumerate(raw_blocks, start=1):
            if not isinstance(rb, dict):
                raise LayoutError(f"block {b} must be an object like {{\"branches\": 2}}")
            extra = sorted(set(rb) - {"branches", "parallel", "name"})
            if extra:
                raise LayoutError(f"block {b}: unknown key '{extra[0]}' (valid: branches, parallel, name)")
            blocks.append(Block(rb.get("branches", 2), rb.get("parallel", False), rb.get("name")))
        sup = data.get("supervision", [])
        if not isinstance(sup, list):
            raise LayoutError("'supervision' must be a list of block indices")
        shared = data.get("shared", [])
        if not isinstance(shared, list) or not all(isinstance(g, list) for g in shared):
            raise LayoutError("'shared' must be a list of lists of block indices")
        return cls(tuple(blocks), tuple(sup), tuple(tuple(g) for g in shared))

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LayoutError(f"layout is not valid JSON: {exc}") from None
        except RecursionError:
            raise LayoutError("layout JSON is nested too deeply") from None
        except ValueError as exc:  # e.g. an integer beyond Python's digit limit
            raise LayoutError(f"layout is not usable JSON: {str(exc).split(';')[0]}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> "Layout":
        p = Path(path)
        if not p.is_file():
            raise LayoutError(f"layout file not found: {p}")
        try:
            if p.stat().st_size > MAX_FILE_BYTES:
                raise LayoutError(f"layout file {p} is {p.stat().st_size:,} bytes: at most "
                                  f"{MAX_FILE_BYTES // 2 ** 20} MiB")
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise LayoutError(f"layout file {p} is not UTF-8 text") from None
        except OSError as exc:
            raise LayoutError(f"layout file {p} is unreadable: {exc.strerror or exc}") from None
        return cls.from_json(text)

    def to_dict(self) -> dict:
        blocks = []
        for blk in self.blocks:
            d: dict[str, Any] = {"branches": blk.branches, "parallel": blk.parallel}
            if blk.name is not None:
                d["name"] = blk.name
            blocks.append(d)
        return {"blocks": blocks, "supervision": list(self.supervision),
                "shared": [list(g) for g in self.shared]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # ---- derived wiring -----------------------------------------------------------------
    @property
    def B(self) -> int:
        """Number of blocks (applications)."""
        return len(self.blocks)

    @property
    def N(self) -> int:
        """Number of functional branches."""
        return sum(b.branches for b in self.blocks)

    @property
    def n_positions(self) -> int:
        """Number of stream positions written (``x_1 .. x_n_positions``)."""
        return sum(b.width for b in self.blocks)

    def branches(self) -> list[Branch]:
        out, i, p = [], 0, 0
        for b, blk in enumerate(self.blocks, start=1):
            for j in range(blk.branches):
                i += 1
                out.append(Branch(i, b, j, p + (1 if blk.parallel else j + 1)))
            p += blk.width
        return out

    def block_end(self, b: int) -> int:
        """Stream position written last by block ``b`` (what a head on block ``b`` reads)."""
        return sum(blk.width for blk in self.blocks[:b])

    def head_positions(self) -> list[int]:
        return [self.block_end(m) for m in self.supervision]

    def writers(self) -> list[int]:
        """``writers()[p-1]`` = number of branches writing stream position ``p``."""
        w = []
        for blk in self.blocks:
            w.extend([blk.branches] if blk.parallel else [1] * blk.branches)
        return w

    def groups(self) -> list[tuple[int, ...]]:
        """Every parameter group: the shared groups plus each unshared block on its own."""
        in_group = {b for g in self.shared for b in g}
        singles = [(b,) for b in range(1, self.B + 1) if b not in in_group]
        return sorted(list(self.shared) + singles, key=lambda g: g[0])


def _supervision(spec: str | Iterable[int], B: int) -> tuple[int, ...]:
    if spec == "final":
        return (B,)
    if spec == "all":
        return tuple(range(1, B + 1))
    if isinstance(spec, str):
        raise LayoutError(f"supervision must be 'final', 'all' or a list of block indices, got {spec!r}")
    return tuple(spec)
