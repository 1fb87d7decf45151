"""Studies beyond one process pool: a real local Dask cluster of 2 workers gives the local pool's
bytes; SLURM's path through submitit's local executor; two processes racing for one run train it
once; a worker SIGKILLed mid-run is retried and its run resumes; a run that keeps failing is
reported while the rest finish; an unreachable scheduler is one line within seconds."""
import importlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import distributed
import pytest

from experiments.__main__ import main as experiments_main
from experiments.executors import CONNECT_TIMEOUT_S, RETRIES, Executor, TasksFailed, WorkerLost, make_executor
from experiments.runner import Context, run_many
from gfa_theory.errors import ConfigError
from gfa_theory.train.lifecycle import train
from gfa_theory.train.run_config import build_run_config, run_key
from gfa_theory.train.store import CHECKPOINT_FILE, CONFIG_FILE, DONE_FILE, FAULT_ENV, FAULT_ONCE_ENV, is_complete

ROOT = Path(__file__).resolve().parent.parent
# the tiniest run with two checkpoints (steps 2 and 4), as in test_run_store
ARGS = ["model.n_blocks=1", "model.n_embd=8", "model.n_head=1", "model.d_ff=8", "model.block_size=8",
        "train.batch_size=4", "train.steps=4", "train.eval_interval=2", "train.eval_batches=1",
        "train.checkpoint_interval=2", "train.log_interval=2", "train.warmup_steps=1", "train.series_points=2"]
BYTES = (CONFIG_FILE, "metrics.csv", "gradients.csv", DONE_FILE)
# two smoke studies whose tables hold only trained numbers (no wall-clock timings); repetition also
# maps its ablations over the workers
STUDIES = ("fanin_vs_gradients", "repetition")

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_of(*extra: str):
    return build_run_config("gpt", overrides=[*ARGS, *extra])


@pytest.fixture(scope="session")
def dask_address():
    """One local Dask cluster of 2 worker processes (one thread each) for the whole session,
    its scheduler told the executor's retry bound."""
    with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, scheduler_port=0)
    try:
        yield cluster.scheduler_address.replace("tcp://", "dask://")
    finally:
        cluster.close()


def _same_run_bytes(a: Path, b: Path) -> None:
    for name in BYTES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), (a, name)


def _reference(root: Path, cfgs) -> list[Path]:
    """The runs trained here, one after another, on one thread (the local pool's numbers)."""
    return [train(c, root, progress=False).run_dir for c in cfgs]


def test_two_smoke_studies_on_a_dask_cluster_match_the_local_pool_byte_for_byte(smoke_root, tmp_path, dask_address):
    metas = {}
    for name in STUDIES:
        mod = importlib.import_module(f"experiments.{name}")
        # the local executor on one worker, as test_experiments runs it (the runs are shared with it);
        # the local pool on 2 workers gives the same bytes (test_local_pool_worker_killed_...)
        with Context("smoke", smoke_root, jobs=1, progress=False) as ctx:
            mod.run(ctx=ctx)
        with Context("smoke", tmp_path, jobs=0, progress=False, executor=dask_address) as ctx:
            mod.run(ctx=ctx)
        local, remote = smoke_root / "studies" / "smoke" / name, tmp_path / "studies" / "smoke" / name
        tables = sorted(p.name for p in local.glob("*.csv"))
        assert tables and tables == sorted(p.name for p in remote.glob("*.csv"))
        for t in tables:
            assert (local / t).read_bytes() == (remote / t).read_bytes(), (name, t)
        metas[name] = json.loads((remote / "meta.json").read_text())
        for run in metas[name]["runs"]:  # same hash, same directory, same bytes
            _same_run_bytes(smoke_root / run, tmp_path / run)
    assert {(m["executor"], m["workers"]) for m in metas.values()} == {("dask", 2)}
    assert all(m["runs_trained"] > 0 for m in metas.values())


def test_two_processes_racing_for_one_run_train_it_once(tmp_path):
    cfg = cfg_of()
    go = tmp_path / "go"
    script = ("import sys, time\nfrom pathlib import Path\n"
              "from gfa_theory.train.lifecycle import train\nfrom gfa_theory.train.run_config import RunConfig\n"
              "import json\ncfg = RunConfig.from_dict(json.loads(sys.argv[1]))\n"
              "Path(sys.argv[3]).touch()\n"
              "while not Path(sys.argv[2]).exists(): time.sleep(0.002)\n"
              "print('trained' if train(cfg, sys.argv[4], progress=False).trained else 'reused')\n")
    env = {**{k: v for k, v in os.environ.items() if k not in (FAULT_ENV, FAULT_ONCE_ENV)},
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg.to_dict()), str(go),
                               str(tmp_path / f"ready{i}"), str(tmp_path / "shared")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both start at once
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert sorted(o.strip() for o, _ in outs) == ["reused", "trained"], outs
    (ref,) = _reference(tmp_path / "ref", [cfg])
    _same_run_bytes(ref, tmp_path / "shared" / ref.name)


def _set_worker_env(address: str, env: dict[str, str | None]) -> None:
    code = "import os\n" + "".join(f"os.environ[{k!r}] = {v!r}\n" if v is not None else f"os.environ.pop({k!r}, None)\n"
                                   for k, v in env.items())
    with distributed.Client(address.replace("dask://", "tcp://"), timeout=CONNECT_TIMEOUT_S) as client:
        client.run(exec, code)


def test_dask_worker_killed_mid_run_is_retried_and_the_run_resumes(tmp_path, dask_address, capfd):
    cfgs = [cfg_of(f"train.seed={s}") for s in (0, 1)]
    once = tmp_path / "killed"
    # every worker is armed, the first to write a checkpoint dies (SIGKILL) right after it
    _set_worker_env(dask_address, {FAULT_ENV: "checkpoint:1", FAULT_ONCE_ENV: str(once)})
    try:
        with Context("smoke", tmp_path / "dask", jobs=2, progress=False, executor=dask_address) as ctx:
            results = run_many(cfgs, ctx)
    finally:
        _set_worker_env(dask_address, {FAULT_ENV: None, FAULT_ONCE_ENV: None})
    assert once.exists()  # a worker did die mid-run
    for ref, res in zip(_reference(tmp_path / "local", cfgs), results):
        assert res.trained and res.run_dir.name == ref.name
        _same_run_bytes(ref, res.run_dir)


def test_local_pool_worker_killed_mid_run_is_retried_and_the_run_resumes(tmp_path, monkeypatch, capfd):
    cfgs = [cfg_of(f"train.seed={s}") for s in (2, 3)]
    monkeypatch.setenv(FAULT_ENV, "checkpoint:1")  # spawned workers inherit it
    monkeypatch.setenv(FAULT_ONCE_ENV, str(tmp_path / "killed"))
    with Context("smoke", tmp_path / "pool", jobs=2, progress=False) as ctx:
        results = run_many(cfgs, ctx)
    monkeypatch.delenv(FAULT_ENV)
    assert (tmp_path / "killed").exists() and "worker lost" in capfd.readouterr().err
    for ref, res in zip(_reference(tmp_path / "local", cfgs), results):
        _same_run_bytes(ref, res.run_dir)


def test_failing_run_is_reported_while_the_rest_finish_then_one_line_exit_2(tmp_path, dask_address, capsys):
    good, bad = cfg_of("train.seed=5"), cfg_of("train.seed=6")
    bad_dir = tmp_path / run_key(bad)
    bad_dir.mkdir(parents=True)
    (bad_dir / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")  # a partial run that cannot resume
    with Context("smoke", tmp_path, jobs=2, progress=False, executor=dask_address) as ctx:
        with pytest.raises(TasksFailed) as info:
            run_many([bad, good], ctx)
    msg = str(info.value)
    assert "\n" not in msg and "1 of 2" in msg and str(bad_dir) in msg and "checkpoint.pt" in msg
    assert is_complete(tmp_path / run_key(good))  # the rest finished
    assert f"run {bad_dir} failed" in capsys.readouterr().err  # reported when it happened


def test_slurm_path_through_submitit_local_executor_resumes_a_killed_job(tmp_path, monkeypatch, capfd):
    cfg = cfg_of("train.seed=7")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the jobs import experiments, as from a checkout
    monkeypatch.setenv(FAULT_ENV, "checkpoint:1")  # the first job dies after its first checkpoint
    monkeypatch.setenv(FAULT_ONCE_ENV, str(tmp_path / "killed"))
    with Context("smoke", tmp_path / "slurm", jobs=2, progress=False, executor="slurm-local?timeout_min=5") as ctx:
        (res,) = run_many([cfg], ctx)
    monkeypatch.delenv(FAULT_ENV)
    assert (tmp_path / "killed").exists() and "ended without a result); retry 1 of" in capfd.readouterr().err
    (ref,) = _reference(tmp_path / "local", [cfg])
    assert res.trained and res.run_dir.name == ref.name
    _same_run_bytes(ref, res.run_dir)


class _Dies(Executor):
    """An executor whose every worker dies (what a run that keeps killing its worker looks like)."""

    name = "dies"

    def __init__(self) -> None:
        super().__init__(jobs=2)
        self.submitted: list[tuple] = []

    def submit(self, fn, args):
        self.submitted.append(args)
        return args

    def wait_any(self, handles):
        return handles

    def result(self, handle):
        if handle[0] == "bad":
            raise WorkerLost("killed")
        return handle[1]


def test_lost_workers_are_retried_a_bounded_number_of_times_while_the_rest_finish(capsys):
    ex = _Dies()
    with pytest.raises(TasksFailed) as info:
        ex.map(str, [("good", 1), ("bad", 2), ("good", 3)], "train", progress=False, labels=["r1", "r2", "r3"])
    assert ex.submitted.count(("bad", 2)) == 1 + RETRIES and ex.submitted.count(("good", 1)) == 1
    msg = str(info.value)
    assert msg == f"1 of 3 train tasks failed on executor dies: r2 (worker lost {RETRIES + 1} times (killed))"
    assert f"r2: worker lost (killed); retry {RETRIES} of {RETRIES}" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_within_seconds(tmp_path, capsys):
    t0 = time.time()
    code = experiments_main(["repetition", "--profile", "smoke", "--out", str(tmp_path), "--no-progress",
                             "--executor", f"dask://127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot reach the Dask scheduler" in err[0], err
    assert time.time() - t0 < CONNECT_TIMEOUT_S + 10


@pytest.mark.parametrize("spec", ["ray://host:1", "dask://host", "local?x=1", "slurmx"])
def test_unknown_executor_is_a_user_error(spec, tmp_path):
    with pytest.raises(ConfigError, match="executor"):
        make_executor(spec, 0, tmp_path)
