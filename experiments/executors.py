"""Where a study's tasks run: one interface over the local process pool, Dask and SLURM.

A study is a grid of independent tasks (training runs, then per-run analyses). An
:class:`Executor` applies a module-level function to every item, at most ``jobs`` at a time, with
one progress bar in this process however many machines do the work, and returns the results in
item order. ``--executor`` (or ``$GFA_EXECUTOR``) chooses it:

* ``local`` (default): spawned worker processes on this machine (``jobs`` 0 = CPU cores, at most 8;
  one job runs in this process);
* ``dask``: a Dask scheduler, at ``$DASK_SCHEDULER_ADDRESS`` when set, else a local cluster of
  ``jobs`` worker processes started here; ``dask://HOST:PORT``: the scheduler at that address
  (``jobs`` 0 = every worker thread of the cluster). When the cluster's workers declare a ``GPU``
  resource, every task asks for one;
* ``slurm[?key=value&...]``: one SLURM job per task through submitit (``key=value``: submitit's
  executor parameters, e.g. ``slurm_partition=gpu&gpus_per_node=1&timeout_min=240``);
  ``slurm-local[?...]``: the same jobs as local processes (submitit's local executor).

Every task runs on :data:`RUN_THREADS` torch threads, whatever runs it: the thread count is part
of a run's numeric environment, so every executor computes the same bytes on CPU. Runs share the
results root: the run store's lock keeps two workers from training one run at once, and a run
whose worker dies resumes from its last checkpoint. Faults: a task whose worker is lost (killed,
preempted, out of memory) is retried, at most :data:`RETRIES` times (Dask: the local cluster's
scheduler is told the same bound; a remote scheduler keeps its own ``allowed-failures``); a task
that raises, or is lost once too often, is reported on stderr with its label and error while the
others finish, then :class:`TasksFailed` (one line, exit 2) lists every failure.
"""
from __future__ import annotations

import abc
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import torch
from tqdm.auto import tqdm

from gfa_theory.errors import ConfigError, GFAError, one_line

T = TypeVar("T")
RUN_THREADS = 1  # torch threads of every study run and analysis task
RETRIES = 2  # a task whose worker is lost runs at most 1 + RETRIES times (a run resumes each time)
CONNECT_TIMEOUT_S = 5  # an unreachable scheduler is an error after this long, not a hang
EXECUTOR_ENV = "GFA_EXECUTOR"
DASK_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
MAX_LOCAL_JOBS = 8  # default local pool: CPU cores, at most this many
MAX_POOL = 256  # worker processes at most (each holds a model, torch and its data)
CLUSTER_EXTRA = "pip install 'gfa-theory[cluster]'"


class TasksFailed(GFAError):
    """Tasks of a study failed (after their retries) while the others finished."""


class WorkerLost(Exception):
    """The worker of a task died before returning (SIGKILL, preemption, out of memory).
    ``final``: the engine has already retried it as often as allowed."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def in_worker(fn: Callable[..., T], args: tuple) -> T:
    """``fn(*args)`` on :data:`RUN_THREADS` torch threads (what every executor runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


@dataclass
class _Failure:
    label: str
    error: str


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"


class Executor(abc.ABC):
    """Applies a function to items, at most :attr:`jobs` at once; subclasses say how one task is
    submitted, waited for and read back."""

    name = "executor"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    # ---- what a backend provides ------------------------------------------------------------
    @abc.abstractmethod
    def submit(self, fn: Callable, args: tuple) -> Any:
        """A handle for ``fn(*args)`` running on the backend."""

    @abc.abstractmethod
    def wait_any(self, handles: list) -> list:
        """Some finished handles among ``handles`` (blocks until at least one is)."""

    @abc.abstractmethod
    def result(self, handle: Any) -> Any:
        """The task's value; WorkerLost when its worker died, else the task's own exception."""

    def close(self) -> None:
        pass

    @property
    def workers(self) -> int:
        """How many tasks run at once (the report's "where the time goes" records it)."""
        return self.jobs

    def describe(self) -> str:
        return self.name

    # ---- the one loop -----------------------------------------------------------------------
    def map(self, fn: Callable[..., T], items: Sequence[tuple], desc: str, progress: bool = True,
            labels: Sequence[str] | None = None) -> list[T]:
        """``[fn(*item) for item in items]`` with one progress bar; see the module docstring for
        retries and failures (:class:`TasksFailed` once every other task has finished)."""
        n = len(items)
        labels = list(labels) if labels is not None else [f"{desc} task {i}" for i in range(n)]
        out: list[Any] = [None] * n
        attempts = [0] * n
        failures: list[_Failure] = []
        pending, running = deque(range(n)), {}
        window = max(1, min(self.jobs, n)) if self.jobs > 0 else max(n, 1)
        with tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
            while pending or running:
                while pending and len(running) < window:
                    i = pending.popleft()
                    attempts[i] += 1
                    h = self.submit(fn, items[i])
                    running[id(h)] = (h, i)
                for h in self.wait_any([h for h, _ in running.values()]):
                    _, i = running.pop(id(h))
                    try:
                        out[i] = self.result(h)
                        bar.update(1)
                    except WorkerLost as exc:
                        if attempts[i] <= RETRIES and not exc.final:
                            bar.write(f"{labels[i]}: worker lost ({exc}); retry {attempts[i]} of {RETRIES}", file=sys.stderr)
                            pending.append(i)
                        else:
                            lost = "worker lost" if exc.final else f"worker lost {attempts[i]} times"
                            failures.append(_Failure(labels[i], f"{lost} ({exc})"))
                            bar.write(f"{labels[i]} failed: {failures[-1].error}", file=sys.stderr)
                            bar.update(1)
                    except Exception as exc:  # noqa: BLE001  (reported, the others go on)
                        if not isinstance(exc, GFAError):  # a bug: keep its traceback on stderr
                            bar.write("".join(traceback.format_exception(exc)).rstrip(), file=sys.stderr)
                        failures.append(_Failure(labels[i], _describe(exc)))
                        bar.write(f"{labels[i]} failed: {failures[-1].error}", file=sys.stderr)
                        bar.update(1)
        if failures:
            listed = "; ".join(f"{f.label} ({f.error})" for f in failures)
            raise TasksFailed(f"{len(failures)} of {n} {desc} tasks failed on executor {self.describe()}: {listed}")
        return out


# ---- this machine ------------------------------------------------------------------------------

class LocalPool(Executor):
    """Spawned worker processes on this machine, a fresh pool for every map (one job runs in
    this process)."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        super().__init__(jobs if jobs > 0 else max(1, min(os.cpu_count() or 1, MAX_LOCAL_JOBS)))
        self._pool = None
        self._futures: set = set()  # the futures of the current pool

    def map(self, fn, items, desc, progress=True, labels=None):
        if min(self.jobs, len(items)) <= 1:  # in this process, on the same thread count as a worker
            return _Inline(1).map(fn, items, desc, progress, labels)
        try:
            return super().map(fn, items, desc, progress, labels)
        finally:
            self.close()

    def submit(self, fn, args):
        if self._pool is None:
            import multiprocessing as mp  # noqa: PLC0415
            from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
            self._pool = ProcessPoolExecutor(min(self.jobs, MAX_POOL), mp_context=mp.get_context("spawn"))
        fut = self._pool.submit(in_worker, fn, args)
        self._futures.add(fut)
        return fut

    def wait_any(self, handles):
        from concurrent.futures import FIRST_COMPLETED, wait  # noqa: PLC0415
        return list(wait(handles, return_when=FIRST_COMPLETED).done)

    def result(self, handle):
        from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415
        try:
            return handle.result()
        except BrokenProcessPool as exc:
            # one dead worker breaks the pool: every task in flight on it is lost (and retried)
            if handle in self._futures:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool, self._futures = None, set()
            raise WorkerLost("a worker process of the local pool died") from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._futures = None, set()


class _Inline(Executor):
    """Tasks one after another in this process (``--jobs 1``)."""

    name = "local"

    def submit(self, fn, args):
        try:
            return (True, in_worker(fn, args))
        except Exception as exc:  # noqa: BLE001  (read back by result, like a worker's)
            return (False, exc)

    def wait_any(self, handles):
        return handles

    def result(self, handle):
        ok, value = handle
        if not ok:
            raise value
        return value


# ---- Dask ----------------------------------------------------------------------------------------

def _import_distributed():
    try:
        import distributed  # noqa: PLC0415
    except ImportError:
        raise ConfigError(f"--executor dask needs Dask distributed: {CLUSTER_EXTRA}") from None
    return distributed


class DaskExecutor(Executor):
    """Tasks on a Dask cluster: the scheduler at ``address``, else a local cluster of ``jobs``
    worker processes (one thread each) started here and stopped by :meth:`close`."""

    name = "dask"

    def __init__(self, jobs: int, address: str | None = None) -> None:
        super().__init__(jobs)
        distributed = _import_distributed()
        import dask  # noqa: PLC0415
        self._cluster = None
        self.address = address
        if address is None:
            n = jobs if jobs > 0 else max(1, min(os.cpu_count() or 1, MAX_LOCAL_JOBS))
            with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES}):
                self._cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                         dashboard_address=None, scheduler_port=0)
            self.jobs = n
            target = self._cluster
        else:
            target = address
        try:
            self.client = distributed.Client(target, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self._close_cluster()
            raise ConfigError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s "
                              f"({type(exc).__name__}): start it (dask scheduler) or check the address") from None
        info = self.client.scheduler_info(n_workers=-1)["workers"].values()
        self._threads = sum(int(w.get("nthreads", 1)) for w in info)
        # on GPU workers every task asks for one GPU: one run per GPU at a time
        self.resources = {"GPU": 1} if any("GPU" in (w.get("resources") or {}) for w in info) else None

    @property
    def workers(self) -> int:
        return min(self.jobs, self._threads) if self.jobs > 0 else self._threads

    def describe(self) -> str:
        return f"dask ({self.address or 'local cluster'})"

    def submit(self, fn, args):
        return self.client.submit(in_worker, fn, args, pure=False, resources=self.resources)

    def wait_any(self, handles):
        distributed = _import_distributed()
        return list(distributed.wait(handles, return_when="FIRST_COMPLETED").done)

    def result(self, handle):
        distributed = _import_distributed()
        try:
            return handle.result()
        except distributed.KilledWorker as exc:
            # the scheduler has already retried it on other workers (allowed-failures)
            raise WorkerLost(f"Dask gave up after its workers died running it: {exc}", final=True) from None
        finally:
            handle.release()

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self._close_cluster()


# ---- SLURM (submitit) ----------------------------------------------------------------------------

class SubmititExecutor(Executor):
    """One SLURM job per task (``cluster="slurm"``), or submitit's local executor (``"local"``:
    the same jobs as processes here). Logs and pickles go to ``folder``."""

    POLL_S = 0.5

    def __init__(self, jobs: int, cluster: str, folder: str, parameters: dict) -> None:
        super().__init__(jobs)
        try:
            import submitit  # noqa: PLC0415
        except ImportError:
            raise ConfigError(f"--executor slurm needs submitit: {CLUSTER_EXTRA}") from None
        self.name = "slurm" if cluster == "slurm" else "slurm-local"
        self._submitit = submitit
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            self.executor.update_parameters(**parameters)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"--executor {self.name}: {exc}") from None

    def submit(self, fn, args):
        return self.executor.submit(in_worker, fn, args)

    def wait_any(self, handles):
        while True:
            done = [h for h in handles if h.done()]
            if done:
                return done
            time.sleep(self.POLL_S)

    def result(self, handle):
        utils = self._submitit.core.utils
        try:
            return handle.result()
        except utils.UncompletedJobError as exc:  # killed, preempted, timed out: no result written
            raise WorkerLost(f"job {handle.job_id} ended without a result") from exc
        except utils.FailedJobError as exc:  # the task raised: its traceback's last line says what
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            raise TasksFailedInJob(f"job {handle.job_id}: {lines[-1].strip() if lines else exc}") from None


class TasksFailedInJob(GFAError):
    """A SLURM job's task raised (its message is the last line of the job's traceback)."""


# ---- choosing one --------------------------------------------------------------------------------

SCHEMES = ("local", "dask", "dask://HOST:PORT", "slurm[?k=v&...]", "slurm-local[?k=v&...]")


def check_spec(spec: str) -> str:
    """The executor spec, checked for its form only (nothing is started or contacted)."""
    kind = spec.split("?", 1)[0].split("://", 1)[0]
    if kind not in ("local", "dask", "slurm", "slurm-local") or (kind == "local" and spec != "local"):
        raise ConfigError(f"unknown executor '{spec}' (choices: {', '.join(SCHEMES)})")
    if spec.startswith("dask://") and not urlsplit(spec).port:
        raise ConfigError(f"executor '{spec}' needs a port: dask://HOST:PORT")
    return spec


def default_spec() -> str:
    return os.environ.get(EXECUTOR_ENV) or "local"


def _parameters(query: str) -> dict:
    return {k: int(v) if v.lstrip("-").isdigit() else v for k, v in parse_qsl(query, keep_blank_values=True)}


def make_executor(spec: str, jobs: int, results: str | os.PathLike) -> Executor:
    """The executor of ``spec`` (see the module docstring): ``jobs`` runs at most at once."""
    check_spec(spec)
    if spec == "local":
        return LocalPool(jobs)
    if spec.startswith("dask"):
        if spec.startswith("dask://"):
            u = urlsplit(spec)
            return DaskExecutor(jobs, f"tcp://{u.hostname}:{u.port}")
        return DaskExecutor(jobs, os.environ.get(DASK_ADDRESS_ENV) or None)
    kind, _, query = spec.partition("?")
    return SubmititExecutor(jobs, "slurm" if kind == "slurm" else "local",
                            os.path.join(os.fspath(results), "submitit", "%j"), _parameters(query))

