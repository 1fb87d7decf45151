"""Result directories: one per run, named by its config hash, written atomically.

A run lives in ``<root>/<model>-<hash>/`` where ``root`` is ``--out``, else the ``GFA_RESULTS``
environment variable, else ``./results``, and the hash covers the resolved config (model, data,
training, seed), the data's sha256 and any user gradient hooks. The directory holds::

    config.json     resolved config, seed, data sha256, package / torch / python versions
    metrics.csv     step, split, loss, accuracy, lr
    gradients.csv   the tracker's long table (run_id, seed, unit, kind, index, quantity, ...)
    checkpoint.pt   latest checkpoint while training; the final state once complete
    DONE            written last: a directory without it is never read as a result

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash (or SIGKILL) never leaves a half-written file under a final name.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pandas as pd
import torch
from torch import nn

from .errors import DataError, GFAError

RESULTS_ENV = "GFA_RESULTS"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
GRADIENTS_FILE = "gradients.csv"
CHECKPOINT_FILE = "checkpoint.pt"
SNAPSHOT_DIR = "snapshots"  # model weights at each checkpoint step: step-<s>.pt
DONE_FILE = "DONE"


# ---- atomic writes ------------------------------------------------------------------------

def _atomic(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    # repr-exact floats and "\n" line ends: same numbers give byte-identical files
    return write_text_atomic(path, df.to_csv(index=False, lineterminator="\n"))


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return _atomic(path, lambda fh: torch.save(obj, fh))


# ---- locations ----------------------------------------------------------------------------

def results_root(out: str | os.PathLike | None = None) -> Path:
    """``out``, else ``$GFA_RESULTS``, else ``./results``."""
    if out is not None:
        return Path(out)
    return Path(os.environ.get(RESULTS_ENV) or "results")


def run_id(cfg) -> str:
    """``<model>-<hash>`` of a run config (see :func:`gfa_theory.training.run_key`)."""
    from .training import run_key  # noqa: PLC0415  (training imports this module)

    return run_key(cfg)


def run_dir(cfg, root: str | os.PathLike | None = None) -> Path:
    """The result directory of ``cfg`` under ``root`` (see :func:`results_root`)."""
    return results_root(root) / run_id(cfg)


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / DONE_FILE).is_file()


# ---- reading results ------------------------------------------------------------------------

class LoadedRun(NamedTuple):
    """A finished run: unpacks as ``config, model, metrics, gradients``."""

    config: Any  # gfa_theory.training.RunConfig
    model: nn.Module  # final weights, eval mode, on CPU
    metrics: pd.DataFrame
    gradients: pd.DataFrame


def read_config(path: str | os.PathLike) -> dict:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise DataError(f"no {CONFIG_FILE} in {path}: not a gfa run directory")
    return json.loads(p.read_text(encoding="utf-8"))


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(Path(path) / METRICS_FILE)


def read_gradients(path: str | os.PathLike) -> pd.DataFrame:
    df = pd.read_csv(Path(path) / GRADIENTS_FILE)
    for col in ("step", "fan_in", "index", "seed"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def load_run(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Config, model with its final weights, metrics and gradients of a complete run."""
    from .models import build_model  # noqa: PLC0415
    from .training import RunConfig  # noqa: PLC0415

    path = Path(path)
    if not is_complete(path):
        raise GFAError(f"run {path} is not complete (no {DONE_FILE} marker): train it first")
    meta = read_config(path)
    cfg = RunConfig.from_dict(meta["config"])
    model = build_model(cfg.model_name, cfg.model)
    state = torch.load(path / CHECKPOINT_FILE, map_location=map_location, weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(cfg, model, read_metrics(path), read_gradients(path))


def get_or_train(cfg, root: str | os.PathLike | None = None, progress: bool = False, **kwargs):
    """The run of ``cfg`` under ``root``: trained once, then read back (keyed by its hash).

    A partial run (killed or interrupted) resumes from its last checkpoint. Extra keyword
    arguments go to :func:`gfa_theory.training.train`.
    """
    from .training import train  # noqa: PLC0415

    return train(cfg, root, resume=True, progress=progress, **kwargs)


def snapshots(path: str | os.PathLike) -> dict[int, Path]:
    """``{step: file}`` of the model-weight snapshots a run kept at its checkpoint steps."""
    d = Path(path) / SNAPSHOT_DIR
    return {int(p.stem.split("-")[1]): p for p in sorted(d.glob("step-*.pt"))} if d.is_dir() else {}
