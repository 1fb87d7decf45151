"""The run store: one result directory per run, named by its config hash, written atomically.

A run lives in ``<root>/<model>-<hash>/`` where ``root`` is ``--out``, else the ``GFA_RESULTS``
environment variable, else ``./results``, and the hash covers the resolved config (model, data,
training, seed, the resolved device: ``auto`` enters as ``cpu`` or ``cuda``), the data's sha256,
any user gradient hooks, and the numeric environment that changes the numbers on the same
hardware: the torch version, the device type and, for CPU runs, the CPU's vector instruction set
(see :func:`gfa_theory.train.run_config.run_key`). The directory holds::

    config.json     resolved config, seed, data sha256, versions, environment (device, threads, ISA)
    metrics.csv     step, split, loss, accuracy, lr
    gradients.csv   the tracker's long table (run_id, seed, unit, kind, index, quantity, ...)
    checkpoint.pt   latest checkpoint while training; the final state once complete
    snapshots/      model weights at every checkpoint step: step-<s>.pt
    DONE            written last, once every file above exists: a directory without it is
                    never read as a result
    .lock           flock'd while a process trains the run (kept; the OS releases the lock)

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash (or SIGKILL) never leaves a half-written file under a final name.
Files get the permissions of the umask (0644 under umask 022). A file or folder that cannot be
written (disk full, read-only, no permission, a file where a folder should be) is a one-line
:class:`~gfa_theory.errors.StorageError` naming the path; a stored file that cannot be read
back is a :class:`~gfa_theory.errors.RunStoreError` naming it.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory.config import loads_checked
from gfa_theory.errors import DataError, GFAError, RunStoreError, StorageError
from gfa_theory.models import build_model
from gfa_theory.train.memory import check_model_memory
from gfa_theory.train.run_config import RunConfig, recorded_run_key, run_key
from gfa_theory.untrusted import MAX_JSON_BYTES, MAX_LOG_BYTES, load_torch, regular_file

RESULTS_ENV = "GFA_RESULTS"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
GRADIENTS_FILE = "gradients.csv"
CHECKPOINT_FILE = "checkpoint.pt"
SNAPSHOT_DIR = "snapshots"  # model weights at each checkpoint step: step-<s>.pt
DONE_FILE = "DONE"
LOCK_FILE = ".lock"  # flock'd while a process trains the run
FAULT_ENV = "GFA_FAULT_AT"  # tests: "<boundary>[:<n>]" SIGKILLs the process there (see fault_point)
FAULT_ONCE_ENV = "GFA_FAULT_ONCE"  # tests: a file path; only the process that creates it is killed
FAULT_POINTS = ("config", "snapshot", "metrics", "checkpoint", "gradients", "done")


# ---- fault injection -----------------------------------------------------------------------

_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A write boundary of a run: with ``GFA_FAULT_AT=<name>[:<n>]`` the process SIGKILLs
    itself the ``n``-th time (default 1) it gets here, so tests can kill it at every boundary.

    Boundaries (:data:`FAULT_POINTS`): ``config`` after config.json, ``snapshot`` / ``metrics`` /
    ``checkpoint`` after each of a checkpoint's files (in that order), ``gradients`` after
    gradients.csv, ``done`` right before the DONE marker. With ``GFA_FAULT_ONCE=<file>`` only the
    first process to get there (the one that creates ``<file>``) is killed: one worker of a
    pool or cluster dies, and the retried run goes through.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, nth = spec.partition(":")
    if where != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == (int(nth) if nth.isdigit() else 1):
        once = os.environ.get(FAULT_ONCE_ENV)
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


# ---- environment faults ----------------------------------------------------------------------

_WHERE = "choose another results root (--out or $GFA_RESULTS)"
_HINTS = {
    errno.ENOSPC: "the disk is full: free space or " + _WHERE,
    errno.EDQUOT: "the disk quota is exceeded: free space or " + _WHERE,
    errno.EROFS: "the file system is read-only: " + _WHERE,
    errno.EACCES: "permission denied: " + _WHERE,
    errno.EPERM: "permission denied: " + _WHERE,
    errno.EEXIST: "it exists and is not a folder: " + _WHERE,
}


def storage_error(exc: OSError, path: str | os.PathLike, action: str = "write") -> StorageError:
    """A one-line :class:`StorageError` for ``exc`` raised while trying to ``action`` ``path``."""
    path = Path(path)
    if exc.errno == errno.ENOTDIR:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        hint = (f"{blocker} is a file, not a folder: " if blocker else "a part of it is a file, not a folder: ") + _WHERE
    else:
        hint = _HINTS.get(exc.errno or 0, f"{exc.strerror or exc}: " + _WHERE)
    err = StorageError(f"cannot {action} {path}: {hint}")
    err.errno = exc.errno
    return err


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p path``, failures as a :class:`StorageError` naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path, "create the folder") from None
    return path


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (no race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(old)
    return old


# ---- atomic writes ------------------------------------------------------------------------

def _atomic(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600 files; follow the umask
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, GFAError):
            raise storage_error(exc, path) from None
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
    """``<model>-<hash>`` of a run config (see :func:`gfa_theory.train.run_config.run_key`)."""
    return run_key(cfg)


def run_dir(cfg, root: str | os.PathLike | None = None) -> Path:
    """The result directory of ``cfg`` under ``root`` (see :func:`results_root`)."""
    return results_root(root) / run_id(cfg)


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / DONE_FILE).is_file()


# ---- reading results ------------------------------------------------------------------------

class LoadedRun(NamedTuple):
    """A finished run: unpacks as ``config, model, metrics, gradients``."""

    config: Any  # gfa_theory.train.run_config.RunConfig
    model: nn.Module  # final weights, eval mode, on CPU
    metrics: pd.DataFrame
    gradients: pd.DataFrame


def _remedy(run: Path) -> str:
    return f"delete {run} or retrain it with --force"


def unreadable(file: str | os.PathLike, exc: BaseException, run: str | os.PathLike | None = None) -> RunStoreError:
    """A one-line :class:`RunStoreError` for a stored file of run ``run`` that cannot be read."""
    file = Path(file)
    run = Path(run) if run is not None else file.parent
    if isinstance(exc, FileNotFoundError):
        return RunStoreError(f"{file} is missing: {_remedy(run)}")
    lines = str(exc).strip().splitlines()
    detail = f": {lines[0][:160]}" if lines else ""
    return RunStoreError(f"cannot read {file} ({type(exc).__name__}{detail}): the file is truncated, "
                         f"corrupt or not from gfa; {_remedy(run)}")


def read_config(path: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of run directory ``path``."""
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise DataError(f"no {CONFIG_FILE} in {path}: not a gfa run directory")
    try:
        regular_file(p, "run config", MAX_JSON_BYTES)
        meta = loads_checked(p.read_text(encoding="utf-8"), str(p))  # deep nesting: one line
    except GFAError as exc:
        raise RunStoreError(f"{exc}: {_remedy(Path(path))}") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise unreadable(p, exc) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise RunStoreError(f"{p} is not a gfa run config (no 'config' object): {_remedy(Path(path))}")
    return meta


def read_checkpoint(file: str | os.PathLike, map_location: str | torch.device = "cpu",
                    run: str | os.PathLike | None = None) -> dict:
    """A checkpoint or snapshot file (a dict holding ``model``); a RunStoreError if unreadable.

    Loaded with ``weights_only=True`` (:func:`gfa_theory.untrusted.load_torch`): a pickled
    object in the file is refused, never run."""
    file = Path(file)
    try:
        state = load_torch(file, map_location)
    except Exception as exc:  # noqa: BLE001  (truncated zip, forbidden pickle, I/O error: all "unreadable")
        raise unreadable(file, exc, run) from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunStoreError(f"{file} is not a gfa checkpoint (no model weights): "
                            f"{_remedy(Path(run) if run is not None else file.parent)}")
    return state


def numpy_rng_plain(state: tuple) -> tuple:
    """``np.random.get_state()`` with its key array as an int64 tensor: a checkpoint that holds
    it loads with ``weights_only=True`` and no allowlist."""
    name, keys, pos, has_gauss, cached = state
    return (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))


def numpy_rng_state(state: tuple) -> tuple:
    """The ``np.random.set_state`` tuple of :func:`numpy_rng_plain`'s form (or of the ndarray
    form older checkpoints hold)."""
    name, keys, *rest = state
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), *rest)


def _read_csv(path: str | os.PathLike, name: str) -> pd.DataFrame:
    file = Path(path) / name
    if file.exists():
        try:
            regular_file(file, "run table", MAX_LOG_BYTES)  # a device or fifo would never end
        except DataError as exc:
            raise RunStoreError(f"{exc}; {_remedy(Path(path))}") from None
    try:
        return pd.read_csv(file)
    except Exception as exc:  # noqa: BLE001  (parser, empty file, encoding, I/O)
        raise unreadable(file, exc) from None


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    return _read_csv(path, METRICS_FILE)


def read_gradients(path: str | os.PathLike) -> pd.DataFrame:
    df = _read_csv(path, GRADIENTS_FILE)
    for col in ("step", "fan_in", "index", "seed"):
        if col in df:
            try:
                df[col] = df[col].astype("Int64")
            except (TypeError, ValueError) as exc:
                raise unreadable(Path(path) / GRADIENTS_FILE, exc) from None
    return df


def load_run(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Config, model with its final weights, metrics and gradients of a complete run.

    Reads whatever a finished run holds, whatever machine trained it (a CUDA run loads on a
    CPU-only machine); a file that cannot be read back is a one-line RunStoreError naming it.
    """
    path = Path(path)
    if not is_complete(path):
        raise GFAError(f"run {path} is not complete (no {DONE_FILE} marker): train it first")
    meta = read_config(path)
    try:
        cfg = RunConfig.from_dict(meta["config"])
    except GFAError as exc:
        raise RunStoreError(f"{path / CONFIG_FILE} does not hold a valid run config ({exc}): "
                            f"{_remedy(path)}") from None
    key = _check_identity(path, meta)
    check_model_memory(cfg.model_name, cfg.model)  # before anything is allocated
    state = read_checkpoint(path / CHECKPOINT_FILE, map_location)
    ckpt = path / CHECKPOINT_FILE
    if state.get("run_id", key) != key or state.get("step", cfg.train.steps) != cfg.train.steps:
        raise RunStoreError(f"{ckpt} holds step {state.get('step')!r} of run {str(state.get('run_id'))[:80]!r}, "
                            f"not the final step {cfg.train.steps} of {key} ({CONFIG_FILE}): {_remedy(path)}")
    model = build_model(cfg.model_name, cfg.model)
    load_weights(model, state["model"], ckpt, f"the model of {path / CONFIG_FILE}", _remedy(path))
    model.eval()
    gradients = read_gradients(path)
    if "run_id" in gradients and len(gradients) and set(gradients["run_id"].astype(str)) != {key}:
        other = sorted(set(gradients["run_id"].astype(str)) - {key})[0]
        raise RunStoreError(f"{path / GRADIENTS_FILE} holds gradients of run {other[:80]!r}, not {key}: "
                            f"{_remedy(path)}")
    return LoadedRun(cfg, model, read_metrics(path), gradients)


def _check_identity(path: Path, meta: dict) -> str:
    """The run id of ``path``, once its DONE marker, config.json's ``run_id`` and the key its
    recorded config, data and environment hash to all agree (as reuse checks them)."""
    cfile = path / CONFIG_FILE
    key = meta.get("run_id")
    try:
        recorded = recorded_run_key(meta)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RunStoreError(f"{cfile} lacks the data or environment record of its run: {_remedy(path)}") from None
    if key != recorded:
        raise RunStoreError(f"{cfile} names run {str(key)[:80]!r} but its config, data and environment are those "
                            f"of run {recorded}: {_remedy(path)}")
    try:
        marker = (path / DONE_FILE).read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:
        raise unreadable(path / DONE_FILE, exc, path) from None
    if marker != key:
        raise RunStoreError(f"{path / DONE_FILE} names run {marker[:80]!r}, not {key} of {cfile}: {_remedy(path)}")
    return key


def load_weights(model: nn.Module, weights: Any, file: Path, what: str, remedy: str) -> None:
    """``model.load_state_dict(weights)`` (strict); keys or shapes that differ are one line
    naming them and ``file``."""
    if not isinstance(weights, dict):
        raise RunStoreError(f"{file} holds no state dict of weights: {remedy}")
    want = model.state_dict()
    missing = [k for k in want if k not in weights]
    unexpected = [k for k in weights if k not in want]
    shapes = [k for k in want if k in weights and (not isinstance(weights[k], torch.Tensor)
                                                   or weights[k].shape != want[k].shape)]
    problems = [f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    if problems:
        raise RunStoreError(f"the weights in {file} do not fit {what} ({'; '.join(problems)}): {remedy}")
    model.load_state_dict(weights)



def snapshots(path: str | os.PathLike) -> dict[int, Path]:
    """``{step: file}`` of the model-weight snapshots a run kept at its checkpoint steps."""
    d = Path(path) / SNAPSHOT_DIR
    return {int(p.stem.split("-")[1]): p for p in sorted(d.glob("step-*.pt"))} if d.is_dir() else {}
