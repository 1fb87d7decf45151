"""The run lifecycle: a run's directory from start to DONE, around one :class:`~gfa_theory.train.loop.Trainer`.

:func:`train` writes one result directory per config (see :mod:`gfa_theory.train.store`) under an
exclusive lock (:func:`run_lock`: ``flock`` on the run's ``.lock``, held across processes and across
nodes that share the results root through a file system with working locks), checkpoints every
``checkpoint_interval`` steps and, when rerun with the same config after a crash, resumes from the
last checkpoint and produces byte-identical results to an uninterrupted run (on CPU). Rank 0
evaluates and writes under ``torchrun``.

A finished run is recognized from its small files only (the ``DONE`` marker, ``config.json`` and
the presence of every artifact: :func:`reuse`); its checkpoint is then read once, for the final
weights, and checked to be this run's last step. A checkpoint is written only after the
non-finite check passes, so the last checkpoint on disk is always a good one. SIGINT and SIGTERM
stop at the end of the current step with a checkpoint (:func:`interrupts`).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory import __version__
from gfa_theory.config import to_dict
from gfa_theory.devices import check_device
from gfa_theory.errors import GFAError, RunStoreError, TrainingError
from gfa_theory.train.data import Dataset, TextData
from gfa_theory.train.loop import GAINS_FILE, HELDOUT_GAINS_FILE, Trainer, World, init_world
from gfa_theory.train.run_config import (
    METRIC_COLUMNS,
    AfterBackward,
    RunConfig,
    TrainConfig,
    env_mismatch,
    environment,
    hook_names,
    resolve,
    resolved_run_key,
)
from gfa_theory.train.store import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    GRADIENTS_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SNAPSHOT_DIR,
    fault_point,
    load_run,
    make_dirs,
    read_checkpoint,
    read_config,
    results_root,
    save_torch_atomic,
    storage_error,
    unreadable,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

# ---- results -------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """A finished run. ``trained`` is False when it was read back from an earlier run."""

    run_dir: Path
    config: RunConfig
    model: nn.Module
    metrics: pd.DataFrame
    gradients: pd.DataFrame
    trained: bool


def _run_info(run_id: str, cfg: RunConfig, data: Dataset, hooks: Sequence[AfterBackward],
              world: World, num_params: int, env: dict) -> dict:
    info: dict[str, Any] = {"dataset": cfg.data.dataset, "source": data.source, "sha256": data.sha256}
    if isinstance(data, TextData):
        info.update(vocab_size=data.vocab_size, train_tokens=len(data.train), val_tokens=len(data.val))
    else:
        info.update(n_classes=data.n_classes, train_size=len(data.y_train), val_size=len(data.y_val))
    return {"run_id": run_id, "config": to_dict(cfg), "seed": cfg.train.seed, "data": info,
            "hooks": hook_names(hooks), "num_params": num_params, "world_size": world.size,
            "versions": {"gfa_theory": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "environment": env}


def _remove_if_only_lock(path: Path) -> None:
    """A start that failed before writing anything leaves no directory holding only a lock."""
    try:
        if os.listdir(path) == [LOCK_FILE]:
            (path / LOCK_FILE).unlink()
            path.rmdir()
    except OSError:
        pass


@contextlib.contextmanager
def run_lock(path: Path, enabled: bool, key: str = ""):
    """Exclusive lock on a run directory: two processes never train the same run at once.

    The OS drops it when the holder dies (even by SIGKILL), so a rerun can always take over. A
    process that has to wait says so on stderr first. The holder removes the directory on the way
    out if it holds nothing but the lock (a failed start); a waiter then finds its lock file gone
    and starts over on a fresh one.
    """
    if not enabled:
        yield
        return
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:  # pragma: no cover
        yield
        return
    lock = path / LOCK_FILE
    while True:
        make_dirs(path)
        try:
            fh = open(lock, "a")  # noqa: SIM115  (held until the end of the block below)
        except FileNotFoundError:  # the directory was removed in between: make it again
            continue
        except OSError as exc:
            raise storage_error(exc, lock, "create the lock file") from None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process training run {key} ({path})", file=sys.stderr, flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(lock))
            except FileNotFoundError:
                same = False
        except BaseException:
            fh.close()
            raise
        if same:
            break
        fh.close()  # locked a lock file that its holder has since removed: take the new one
    try:
        yield
    finally:
        try:
            _remove_if_only_lock(path)  # still holding the lock: no one else is writing here
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


class Interrupt:
    """SIGINT and SIGTERM during :func:`train`. Inside the training loop (one process) the
    signal is noted and the loop stops at the end of the current step, writes a checkpoint and
    raises KeyboardInterrupt; elsewhere, under DDP or on a second signal, KeyboardInterrupt is
    raised at once (the last checkpoint on disk is kept)."""

    def __init__(self) -> None:
        self.deferred = False  # True while the loop checks `pending` after every step
        self.pending: str | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.deferred and self.pending is None:
            self.pending = signal.Signals(signum).name
            return
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts():
    """Route SIGINT / SIGTERM through an :class:`Interrupt` (main thread, default handlers only)."""
    stop = Interrupt()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) is default:
                old[sig] = signal.signal(sig, stop.handler)
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def checkpoint_steps(tc: TrainConfig) -> list[int]:
    """Steps with a checkpoint (and a weight snapshot): every ``checkpoint_interval``, and the last."""
    ci = tc.checkpoint_interval
    return sorted(set(range(ci, tc.steps, ci) if ci else ()) | {tc.steps})


def missing_artifacts(rdir: Path, tc: TrainConfig) -> list[str]:
    """The files a finished run must hold (what the studies read) that ``rdir`` lacks."""
    names = [CONFIG_FILE, METRICS_FILE, GRADIENTS_FILE, CHECKPOINT_FILE,
             *(f"{SNAPSHOT_DIR}/step-{s}.pt" for s in checkpoint_steps(tc)),
             *([GAINS_FILE] if tc.gain_every else []),
             *([HELDOUT_GAINS_FILE] if tc.heldout_gain_steps else [])]
    return [n for n in names if not (rdir / n).is_file()]


def _loaded(rdir: Path, trained: bool) -> RunResult:
    cfg, model, metrics, gradients = load_run(rdir)
    return RunResult(rdir, cfg, model, metrics, gradients, trained)


def reuse(rdir: Path, key: str, cfg: RunConfig, device: torch.device) -> RunResult:
    """A finished run, read back only after checking that it is what it claims to be. It is
    recognized from its small files, without loading the checkpoint: the DONE marker and
    config.json name this run and config, it was trained in the same numeric environment, and
    every artifact is there. The checkpoint is then read once, for the final weights, and must
    be this run's last step. Anything else is a one-line RunStoreError naming the file."""
    remedy = f"delete {rdir} or retrain it with --force"
    done = rdir / DONE_FILE
    try:
        marker = done.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:
        raise unreadable(done, exc, rdir) from None
    if marker != key:
        raise RunStoreError(f"{done} names run {marker[:80]!r}, not {key}: {remedy}")
    meta = read_config(rdir)
    cfile = rdir / CONFIG_FILE
    if meta.get("run_id") != key:
        raise RunStoreError(f"{cfile} belongs to run {str(meta.get('run_id'))[:80]!r}, not {key}: {remedy}")
    if meta["config"] != json.loads(json.dumps(to_dict(cfg))):
        raise RunStoreError(f"{cfile} records another config than the one of run {key}: {remedy}")
    problem = env_mismatch(meta.get("environment"), environment(device), key, rdir, "reuse")
    if problem:
        raise RunStoreError(problem)
    missing = missing_artifacts(rdir, cfg.train)
    if missing:
        raise RunStoreError(f"run {key} in {rdir} is marked complete but {rdir / missing[0]} is missing: {remedy}")

    # the checkpoint is read once, by load_run, which also checks it holds this run's final step
    return _loaded(rdir, trained=False)


def train(cfg: RunConfig, out_root: str | os.PathLike | None = None, resume: bool = True,
          progress: bool = True, on_after_backward: Sequence[AfterBackward] = (),
          force: bool = False) -> RunResult:
    """Train ``cfg`` into ``<out_root>/<model>-<hash>/`` (see :mod:`gfa_theory.train.store`).

    ``resume``: a complete run is read back instead of retrained (once checked: intact files, same
    run, same numeric environment, else a one-line RunStoreError), and a partial one continues
    from its last checkpoint; with ``resume=False`` or ``force=True`` the run starts over from
    scratch. ``on_after_backward``: user hooks ``hook(model, step)`` called after backward, before
    clipping and the update (their names enter the run's hash). Raises :class:`TrainingError` on
    a non-finite loss, keeping the last good checkpoint. SIGINT or SIGTERM stop at the end of the
    current step with a checkpoint and raise KeyboardInterrupt; the same call then resumes.
    """
    hooks = list(on_after_backward)
    resume = resume and not force
    device = check_device(cfg.train.device, "train.device")  # before any directory is made
    world = init_world(device.type)
    try:
        with interrupts() as stop:
            resolved, data = resolve(cfg)
            key = resolved_run_key(resolved, data, hooks)
            rdir = results_root(out_root) / key
            if resume and (rdir / DONE_FILE).is_file():  # finished: read back, no lock (read-only is fine)
                return reuse(rdir, key, resolved, device)
            with run_lock(rdir, world.main, key):
                world.barrier()
                if resume and (rdir / DONE_FILE).is_file():  # finished while we waited for the lock
                    return reuse(rdir, key, resolved, device)
                world.barrier()  # every rank has looked before rank 0 may remove DONE below
                return _train(resolved, data, key, rdir, resume, progress, hooks, world, stop)
    finally:
        if world.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: RunConfig, data: Dataset, key: str, rdir: Path, resume: bool, progress: bool,
           hooks: list[AfterBackward], world: World, stop: Interrupt | None = None) -> RunResult:
    run = RunWriter(Trainer(cfg, data, world, hooks), key, rdir, world, stop or Interrupt())
    if resume and run.ckpt_path.is_file():
        run.resume()
    elif world.main:  # from scratch: nothing of an earlier attempt may survive
        for name in (DONE_FILE, CHECKPOINT_FILE, METRICS_FILE, GRADIENTS_FILE, CONFIG_FILE):
            (rdir / name).unlink(missing_ok=True)
        shutil.rmtree(rdir / SNAPSHOT_DIR, ignore_errors=True)
    if world.main:  # temporary files of a writer that was killed mid-write
        for tmp in rdir.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    run.write_config(data, hooks)
    run.loop(progress)
    run.finish()
    return _loaded(rdir, trained=True)


class RunWriter:
    """One training run and its directory: resume, the step loop with its logs, evaluations
    and checkpoints, and the final files. Rank 0 writes; every rank takes part in collectives."""

    def __init__(self, trainer: Trainer, key: str, rdir: Path, world: World, stop: Interrupt) -> None:
        self.trainer, self.key, self.rdir, self.world, self.stop = trainer, key, rdir, world, stop
        self.env = environment(trainer.device)
        self.ckpt_path = rdir / CHECKPOINT_FILE
        self.rows: list[dict] = []  # metrics.csv rows
        self.last_ckpt = 0

    def resume(self) -> None:
        """Continue from the checkpoint on disk, once it is known to be this run's."""
        key, rdir, ckpt_path = self.key, self.rdir, self.ckpt_path
        remedy = f"delete {rdir} or retrain it with --force"
        # on the CPU: RNG states must stay there; load_state_dict moves the rest to the device
        state = read_checkpoint(ckpt_path, "cpu", run=rdir)
        if state.get("run_id") != key:
            raise RunStoreError(f"{ckpt_path} belongs to run {str(state.get('run_id'))[:80]!r}, not {key}: {remedy}")
        problem = env_mismatch(state.get("environment"), self.env, key, rdir, "resume")
        if problem:
            raise RunStoreError(problem)
        try:
            self.trainer.load_state_dict(state)
            self.rows = list(state["metrics"])
        except GFAError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise RunStoreError(f"{ckpt_path} does not fit run {key} ({type(exc).__name__}): {remedy}") from None
        self.last_ckpt = self.trainer.step

    def write_config(self, data: Dataset, hooks: list[AfterBackward]) -> None:
        n_params = sum(p.numel() for p in self.trainer.raw_model.parameters())
        info = _run_info(self.key, self.trainer.cfg, data, hooks, self.world, n_params, self.env)
        if self.world.main:
            write_json_atomic(self.rdir / CONFIG_FILE, info)
            fault_point("config")
        self.world.barrier()

    def check_finite(self) -> None:
        bad = self.trainer.first_bad_step()
        if bad:
            kept = (f"the last good checkpoint (step {self.last_ckpt}) is kept in {self.rdir}" if self.last_ckpt
                    else "no checkpoint had been written yet")
            raise TrainingError(f"non-finite training loss at step {bad} of run {self.key}: stopped; {kept}")

    def full_state(self) -> dict:
        state = self.trainer.state_dict()  # a collective under DDP: every rank takes part
        state.update(run_id=self.key, metrics=self.rows, environment=self.env)
        return state

    def checkpoint(self) -> None:
        state = self.full_state()
        if self.world.main:
            # the weight snapshot and metrics first, checkpoint.pt last: a checkpoint on disk
            # always has the files of its step (and earlier ones) beside it, so a kill anywhere in
            # between resumes from the previous checkpoint and rewrites the same files.
            # Snapshots: model weights at every checkpoint step, kept (small): rank stability
            # across training checkpoints is measured on these (pruning study)
            step = self.trainer.step
            save_torch_atomic(self.rdir / SNAPSHOT_DIR / f"step-{step}.pt",
                              {"step": step, "model": self.trainer.raw_model.state_dict()})
            fault_point("snapshot")
            self.write_metrics()
            fault_point("metrics")
            save_torch_atomic(self.ckpt_path, state)
            fault_point("checkpoint")
        self.world.barrier()

    def write_metrics(self) -> None:
        """``metrics.csv`` with every row so far, atomically (rank 0). Written after each
        evaluation too, so a long run's curve can be watched; a kill leaves rows past the last
        checkpoint, which its resumption rewrites identically."""
        write_csv_atomic(self.rdir / METRICS_FILE, pd.DataFrame(self.rows, columns=METRIC_COLUMNS))

    def evaluate(self) -> None:
        """A held-out evaluation (rank 0): its row, and metrics.csv rewritten."""
        self.rows.append(self.trainer.evaluate())
        self.write_metrics()

    def interrupted(self) -> None:  # one process only (stop.deferred is never set under DDP)
        self.check_finite()
        save_torch_atomic(self.ckpt_path, self.full_state())  # exact resume from any step
        print(f"{self.stop.pending or 'interrupted'}: stopped at step {self.trainer.step} of run {self.key}; "
              f"checkpoint written to {self.ckpt_path}: rerun the same command to resume", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def after_step(self, bar: Any) -> None:
        """Log, evaluate and checkpoint after a step, as the intervals say."""
        trainer, tc, world = self.trainer, self.trainer.cfg.train, self.world
        s = trainer.step
        final = s == tc.steps
        if s % tc.log_interval == 0 or final:
            self.check_finite()
            row = trainer.log_train()
            if world.main:
                self.rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        if world.main and ((tc.eval_interval and s % tc.eval_interval == 0) or final):
            self.evaluate()
        if tc.checkpoint_interval and s % tc.checkpoint_interval == 0 and not final:
            self.check_finite()
            self.checkpoint()
            self.last_ckpt = s

    def loop(self, progress: bool) -> None:
        """Train to ``train.steps`` (from wherever the trainer is), stopping cleanly on a signal."""
        from tqdm.auto import tqdm  # noqa: PLC0415  (third-party, imported when a run trains)

        trainer, tc, world, stop = self.trainer, self.trainer.cfg.train, self.world, self.stop
        if trainer.step == 0 and tc.eval_interval and world.main:
            self.evaluate()
        bar = tqdm(total=tc.steps, initial=trainer.step, desc=self.key, dynamic_ncols=True,
                   disable=not (progress and world.main))
        with bar:
            stop.deferred = world.size == 1
            try:
                while trainer.step < tc.steps:
                    trainer.train_step()
                    bar.update(1)
                    self.after_step(bar)
                    if stop.pending:
                        self.interrupted()
            finally:
                stop.deferred = False
            if stop.pending:  # a signal between the last check and the line above
                self.interrupted()

    def finish(self) -> None:
        """The final checkpoint, gradients.csv and, once every file is there, DONE."""
        self.check_finite()
        self.checkpoint()
        key, rdir, tc = self.key, self.rdir, self.trainer.cfg.train
        if self.world.main:
            tracker = self.trainer.tracker
            if tracker is not None:
                grads = tracker.to_frame()
            else:
                grads = pd.DataFrame(columns=["unit", "kind", "index", "quantity", "step", "value", "fan_in"])
            grads.insert(0, "seed", tc.seed)
            grads.insert(0, "run_id", key)
            write_csv_atomic(rdir / GRADIENTS_FILE, grads)
            fault_point("gradients")
            if self.trainer.gains is not None:
                write_csv_atomic(rdir / GAINS_FILE, self.trainer.gains.to_frame().assign(run_id=key, seed=tc.seed))
            if self.trainer.heldout_gains is not None:
                write_csv_atomic(rdir / HELDOUT_GAINS_FILE,
                                 self.trainer.heldout_gains.to_frame().assign(run_id=key, seed=tc.seed))
            missing = missing_artifacts(rdir, tc)
            if missing:  # never mark a run complete that the studies cannot read
                raise TrainingError(f"run {key} in {rdir}: {', '.join(missing)} missing after training; "
                                    f"not marking it complete")
            fault_point("done")
            write_text_atomic(rdir / DONE_FILE, f"{key}\n")  # last: marks the directory complete
        self.world.barrier()


def get_or_train(cfg, root: str | os.PathLike | None = None, progress: bool = False,
                 force: bool = False, **kwargs):
    """The run of ``cfg`` under ``root``: trained once, then read back (keyed by its hash).

    A partial run (killed or interrupted) resumes from its last checkpoint; a finished one is
    checked before it is reused (see :func:`train`). ``force``: retrain
    from scratch even if the run is complete. Extra keyword arguments go to
    :func:`train`.
    """
    return train(cfg, root, resume=True, progress=progress, force=force, **kwargs)
