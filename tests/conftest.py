"""Shared test helpers: a hypothesis strategy for random residual layouts."""
from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

from gfa_theory.theory.layout import Block, Layout


@st.composite
def random_layouts(draw, max_blocks: int = 24, max_branches: int = 3) -> Layout:
    """Layouts with sequential and parallel blocks of 1..max_branches branches, a random
    supervision subset and shared groups of structurally equal blocks."""
    B = draw(st.integers(1, max_blocks))
    blocks = [Block(draw(st.integers(1, max_branches)), draw(st.booleans())) for _ in range(B)]
    supervision = draw(st.lists(st.integers(1, B), unique=True, max_size=B))
    # A block joins group `label` (0 = unshared); only blocks of one structure can share.
    labels = draw(st.lists(st.integers(0, 3), min_size=B, max_size=B))
    groups: dict[tuple, list[int]] = {}
    for b, (blk, label) in enumerate(zip(blocks, labels), start=1):
        if label:
            groups.setdefault((label, blk.branches, blk.parallel), []).append(b)
    shared = tuple(tuple(g) for g in groups.values() if len(g) > 1)
    return Layout(tuple(blocks), tuple(supervision), shared)


@pytest.fixture(scope="session")
def layouts():
    """The :func:`random_layouts` strategy factory (use with ``st.data()``)."""
    return random_layouts


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """One results root for every smoke-profile study in the session: runs are trained once and
    shared between the study tests and the reproduce test, exactly as the result cache does."""
    return tmp_path_factory.mktemp("smoke_results")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread: intra-op threads only contend on a shared CPU.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
