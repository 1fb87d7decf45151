"""Reading files someone else wrote: nothing in them is executed, every size is bounded first.

A results folder, a checkpoint or a model directory may come from anywhere, so every reader of
the package goes through these helpers:

* :func:`regular_file`: the path is a regular file of bounded size (``/dev/zero``, a fifo or a
  directory would hang or exhaust a reader), else a one-line :class:`DataError` naming it;
* :func:`read_json`: a bounded JSON file, refused when it nests deeper than a config can;
* :func:`load_torch`: ``torch.load`` with ``weights_only=True``: tensors, containers and plain
  numbers only. Training checkpoints written before RNG states were stored as tensors hold a
  numpy RNG state (an ``ndarray``) and torch's version string; exactly the globals rebuilding
  those take are allowlisted, nothing else, so those runs stay reusable.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.torch_version import TorchVersion

from gfa_theory.config import loads_checked
from gfa_theory.errors import DataError, GFAError

MAX_JSON_BYTES = 64 * 2 ** 20  # a model's config.json or a shard index is kilobytes
MAX_LOG_BYTES = 2 ** 30  # a tracker log (gradients.csv) or metrics table of a long run is megabytes

_np_core = getattr(np, "_core", None) or np.core
# what unpickling the numpy RNG tuple of a pre-tensor checkpoint takes: an array rebuilt from
# its dtype (uint32), and TorchVersion (the str subclass of torch.__version__ in its environment)
LEGACY_CHECKPOINT_GLOBALS = [_np_core.multiarray._reconstruct, np.ndarray, np.dtype,
                             type(np.dtype(np.uint32)), TorchVersion]


def regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> Path:
    """``path`` when it is a regular file (following symbolic links) of at most ``max_bytes``;
    a one-line :class:`DataError` naming it otherwise."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"{what} {p} not found") from None
    except OSError as exc:
        raise DataError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, fifo or socket)"
        raise DataError(f"{what} {p} is {kind}: give a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataError(f"{what} {p} is {st.st_size:,} bytes, more than the {max_bytes:,} such a file can be")
    return p


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed JSON of a regular file of at most ``max_bytes``, nested at most as deep as a
    config; anything else is a one-line :class:`DataError` naming the file."""
    p = regular_file(path, what, max_bytes)
    try:
        return loads_checked(p.read_text(encoding="utf-8"), f"{what} {p}")
    except GFAError as exc:
        raise DataError(str(exc)) from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{what} {p} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None


def load_torch(file: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(file, weights_only=True)``, with only :data:`LEGACY_CHECKPOINT_GLOBALS`
    allowlisted. Errors propagate (callers name the file and the remedy)."""
    with torch.serialization.safe_globals(LEGACY_CHECKPOINT_GLOBALS):
        return torch.load(file, map_location=map_location, weights_only=True)


__all__ = ["LEGACY_CHECKPOINT_GLOBALS", "MAX_JSON_BYTES", "MAX_LOG_BYTES", "load_torch", "read_json", "regular_file"]
