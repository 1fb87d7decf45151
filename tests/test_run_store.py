"""The run store: kill-safe at every write boundary, a cache hit only for the same numbers,
corrupt or foreign files refused in one line, SIGTERM like SIGINT, lock waits announced,
umask-honouring files, no lock-only leftovers, environment faults, devices."""
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from gfa_theory.train import lifecycle as training
from gfa_theory.cli import main
from gfa_theory.errors import ConfigError, RunStoreError, StorageError
from gfa_theory.methods.taper_timing import TimingConfig
from gfa_theory.train import store
from gfa_theory.train.lifecycle import get_or_train, train
from gfa_theory.train.run_config import (
    RunConfig,
    TrainConfig,
    build_run_config,
    resolve,
    run_key,
)
from gfa_theory.train.store import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    FAULT_ENV,
    FAULT_POINTS,
    LOCK_FILE,
    is_complete,
    make_dirs,
    run_dir,
    write_text_atomic,
)

# the tiniest run with two checkpoints (steps 2 and 4): every write boundary happens twice
ARGS = ["model.n_blocks=1", "model.n_embd=8", "model.n_head=1", "model.d_ff=8", "model.block_size=8",
        "train.batch_size=4", "train.steps=4", "train.eval_interval=2", "train.eval_batches=1",
        "train.checkpoint_interval=2", "train.log_interval=2", "train.warmup_steps=1", "train.series_points=2"]
BYTES = (CONFIG_FILE, "metrics.csv", "gradients.csv", DONE_FILE)
ONE_THREAD = {**{k: v for k, v in os.environ.items() if k != FAULT_ENV}, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_of(*extra: str) -> RunConfig:
    return build_run_config("gpt", overrides=[*ARGS, *extra])


def _cli(root, *extra):
    return [sys.executable, "-m", "gfa_theory.cli", "train", "--model", "gpt", "--no-progress",
            "--out", str(root), "--set", *ARGS, *extra]


def _gfa(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _train_cli(capsys, root, *extra) -> tuple[int, str, str]:
    return _gfa(capsys, "train", "--model", "gpt", "--no-progress", "--out", str(root), "--set", *ARGS, *extra)


def _one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gfa: error: "), (code, err)
    return lines[0]


def _files(rdir):
    return sorted(str(p.relative_to(rdir)) for p in rdir.rglob("*") if p.is_file() and p.name != LOCK_FILE)


def _tensors_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_run(rdir, ref):
    """Every file of run ``rdir`` equals the uninterrupted reference ``ref``."""
    assert _files(rdir) == _files(ref)
    for name in BYTES:
        assert (rdir / name).read_bytes() == (ref / name).read_bytes(), name
    a = torch.load(rdir / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(ref / CHECKPOINT_FILE, weights_only=True)
    assert a["step"] == b["step"] and _tensors_equal(a["model"], b["model"])
    for snap in (ref / "snapshots").iterdir():
        x, y = (torch.load(d / "snapshots" / snap.name, weights_only=True) for d in (rdir, ref))
        assert x["step"] == y["step"] and _tensors_equal(x["model"], y["model"]), snap.name


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The uninterrupted run of ARGS."""
    return train(cfg_of(), tmp_path_factory.mktemp("ref"), progress=False).run_dir


# ---- kill-safe at every write boundary ---------------------------------------------------------

BOUNDARIES = ["config", "snapshot:1", "metrics:1", "checkpoint:1", "snapshot:2", "metrics:2",
              "checkpoint:2", "gradients", "done"]


def test_every_boundary_is_covered():
    assert {b.split(":")[0] for b in BOUNDARIES} == set(FAULT_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_sigkill_at_each_write_boundary_then_rerun_matches(tmp_path, reference, boundary):
    proc = subprocess.run(_cli(tmp_path), env={**ONE_THREAD, FAULT_ENV: boundary},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    rdir = tmp_path / reference.name
    assert not is_complete(rdir)
    rerun = train(cfg_of(), tmp_path, progress=False)
    assert rerun.trained and rerun.run_dir == rdir
    assert_same_run(rdir, reference)
    assert not list(rdir.rglob(".*.tmp"))


# ---- a cache hit means the same numbers ----------------------------------------------------------

def test_config_records_the_numeric_environment(reference):
    env = json.loads((reference / CONFIG_FILE).read_text())["environment"]
    assert env["num_threads"] == torch.get_num_threads() == 1
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["numpy"] and env["python"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_hash_covers_torch_version_isa_and_resolved_device(monkeypatch):
    cfg = cfg_of()
    key = run_key(cfg)
    if not torch.cuda.is_available():  # auto resolves to the CPU: the same run as device=cpu
        assert run_key(cfg_of("train.device=auto")) == key
        assert resolve(cfg_of("train.device=auto"))[0].train.device == "cpu"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO_ISA")
    assert run_key(cfg) != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert run_key(cfg) != key


def test_other_thread_count_is_refused_not_reused(tmp_path, reference):
    shutil.copytree(reference, tmp_path / reference.name)
    torch.set_num_threads(2)
    try:
        with pytest.raises(RunStoreError, match=r"num_threads=1, this process has num_threads=2.*"
                                                 r"OMP_NUM_THREADS=1.*--force"):
            get_or_train(cfg_of(), tmp_path)
        again = get_or_train(cfg_of(), tmp_path, force=True)  # --force retrains with 2 threads
        assert again.trained
        assert json.loads((again.run_dir / CONFIG_FILE).read_text())["environment"]["num_threads"] == 2
    finally:
        torch.set_num_threads(1)


def test_force_retrains_a_finished_run(tmp_path, reference):
    shutil.copytree(reference, tmp_path / reference.name)
    (tmp_path / reference.name / "snapshots" / "stale.pt").write_bytes(b"x")
    assert not get_or_train(cfg_of(), tmp_path).trained
    again = get_or_train(cfg_of(), tmp_path, force=True)
    assert again.trained
    assert_same_run(again.run_dir, reference)


def _corrupt(rdir, case, other):
    if case == "truncated-checkpoint":
        data = (rdir / CHECKPOINT_FILE).read_bytes()
        (rdir / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
        return CHECKPOINT_FILE
    if case == "garbage-config":
        (rdir / CONFIG_FILE).write_bytes(b"\x00{not json")
        return CONFIG_FILE
    if case == "config-of-another-run":
        shutil.copy(other / CONFIG_FILE, rdir / CONFIG_FILE)
        return CONFIG_FILE
    if case == "checkpoint-of-another-run":
        shutil.copy(other / CHECKPOINT_FILE, rdir / CHECKPOINT_FILE)
        return CHECKPOINT_FILE
    if case == "missing-snapshot":
        (rdir / "snapshots" / "step-2.pt").unlink()
        return "step-2.pt"
    raise AssertionError(case)


@pytest.fixture(scope="module")
def other(tmp_path_factory, one_thread):
    """Another finished run (seed 1), to take foreign files from."""
    return train(cfg_of("train.seed=1"), tmp_path_factory.mktemp("other"), progress=False).run_dir


@pytest.mark.parametrize("case", ["truncated-checkpoint", "garbage-config", "config-of-another-run",
                                  "checkpoint-of-another-run", "missing-snapshot"])
def test_corrupt_or_foreign_run_is_one_line_error_then_force_retrains(tmp_path, capsys, reference, other, case):
    rdir = tmp_path / "root" / reference.name
    shutil.copytree(reference, rdir)
    name = _corrupt(rdir, case, other)
    line = _one_line_error(*_train_cli(capsys, tmp_path / "root")[::2])
    assert name in line and str(rdir) in line and "--force" in line and "delete" in line
    code, out, err = _train_cli(capsys, tmp_path / "root", "--force")
    assert code == 0, err
    assert_same_run(rdir, reference)


def test_truncated_checkpoint_of_a_partial_run_is_one_line_error(tmp_path, capsys, reference):
    rdir = tmp_path / reference.name
    shutil.copytree(reference, rdir)
    (rdir / DONE_FILE).unlink()
    (rdir / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 truncated")
    line = _one_line_error(*_train_cli(capsys, tmp_path)[::2])
    assert CHECKPOINT_FILE in line and "--force" in line


# ---- SIGTERM, lock waits, umask, failed starts ------------------------------------------------------

@pytest.mark.slow
def test_sigterm_checkpoints_exits_130_and_rerun_resumes_identically(tmp_path):
    long = ["train.steps=300", "train.checkpoint_interval=50", "train.eval_interval=100",
            "train.log_interval=10", "train.series_points=10"]
    ref = train(cfg_of(*long), tmp_path / "ref", progress=False).run_dir
    root = tmp_path / "termed"
    proc = subprocess.Popen(_cli(root, *long), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ONE_THREAD)
    deadline = time.monotonic() + 240
    while not (root / ref.name / CHECKPOINT_FILE).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM: stopped at step" in err and err.strip().splitlines()[-1] == "gfa: interrupted"
    rdir = root / ref.name
    assert not is_complete(rdir)
    step = torch.load(rdir / CHECKPOINT_FILE, weights_only=True)["step"]
    assert 50 <= step < 300
    train(cfg_of(*long), root, progress=False)
    assert_same_run(rdir, ref)


def test_sigterm_handler_is_restored_after_train(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    train(cfg_of(), tmp_path, progress=False)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.slow
def test_waiting_on_another_process_lock_says_so(tmp_path, reference):
    rdir = run_dir(cfg_of(), tmp_path)
    rdir.mkdir(parents=True)
    with open(rdir / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen(_cli(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=ONE_THREAD)
        try:
            ready, _, _ = select.select([proc.stderr], [], [], 120)
            assert ready, "no message while waiting for the lock"
            line = proc.stderr.readline().strip()
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    assert line == f"waiting for another process training run {rdir.name} ({rdir})"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_run(rdir, reference)


def test_result_files_honour_the_umask(tmp_path, reference):
    old = os.umask(0o022)
    try:
        assert (write_text_atomic(tmp_path / "a.txt", "x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (write_text_atomic(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
    for name in (*BYTES, CHECKPOINT_FILE, "snapshots/step-2.pt"):
        assert ((reference / name).stat().st_mode & 0o777) == 0o666 & ~old, name


def test_failed_start_leaves_no_lock_only_directory(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ConfigError("broken trainer")

    monkeypatch.setattr(training, "Trainer", broken)
    with pytest.raises(ConfigError, match="broken trainer"):
        train(cfg_of(), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- environment faults -------------------------------------------------------------------------

def test_results_root_that_is_a_file_is_one_line_error(tmp_path, capsys):
    root = tmp_path / "results"
    root.write_text("not a folder")
    line = _one_line_error(*_train_cli(capsys, root)[::2])
    assert str(root) in line and ("not a folder" in line or "not a directory" in line)
    with pytest.raises(StorageError, match=f"{re.escape(str(root))} is a file, not a folder: .*--out"):
        train(cfg_of(), root, progress=False)  # the run store itself, whoever calls it
    assert root.read_text() == "not a folder"


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permission denied")])
def test_failed_replace_leaves_nothing_half_written(tmp_path, monkeypatch, code, words):
    def fail(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store.os, "replace", fail)
    target = tmp_path / "out" / "metrics.csv"
    with pytest.raises(StorageError, match=f"cannot write {re.escape(str(target))}: .*{words}"):
        write_text_atomic(target, "step\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_read_only_results_root_is_one_line_error(tmp_path, capsys, monkeypatch):
    real = os.mkdir
    root = tmp_path / "ro"

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    line = _one_line_error(*_train_cli(capsys, root)[::2])
    assert str(root) in line and "read-only" in line
    with pytest.raises(StorageError, match="read-only"):
        make_dirs(root / "x")


def test_disk_full_during_training_is_one_line_error_keeping_nothing_half_written(tmp_path, capsys, monkeypatch):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(CHECKPOINT_FILE):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    line = _one_line_error(*_train_cli(capsys, tmp_path)[::2])
    assert "disk is full" in line and CHECKPOINT_FILE in line
    (rdir,) = tmp_path.iterdir()
    assert not (rdir / CHECKPOINT_FILE).exists() and not is_complete(rdir)
    assert not list(rdir.rglob(".*.tmp"))


# ---- devices ----------------------------------------------------------------------------------

def test_meta_device_is_refused():
    with pytest.raises(ConfigError, match="'meta' is not a device that can train"):
        TrainConfig(device="meta")
    with pytest.raises(ConfigError, match="not a torch device"):
        TrainConfig(device="gpu")
    assert TrainConfig(device="auto").device == "auto"


def test_absent_device_names_the_available_ones(tmp_path):
    absent = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ConfigError, match=r"train.device='cuda(:99)?' is not available on this machine "
                                          r"\(available: cpu"):
        train(cfg_of(f"train.device={absent}"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # refused before any directory is made
    with pytest.raises(ConfigError, match="available: cpu"):
        TimingConfig(device=absent)


def test_stored_cuda_config_still_loads_without_cuda():
    cfg = RunConfig.from_dict({**cfg_of().to_dict(), "train": {**cfg_of().to_dict()["train"], "device": "cuda"}})
    assert cfg.train.device == "cuda" and run_key(cfg) != run_key(cfg_of())


def test_auto_resolves_and_is_recorded(tmp_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert TimingConfig(device="auto").device == expected
    if expected == "cpu":
        r = train(cfg_of("train.device=auto"), tmp_path, progress=False)
        saved = json.loads((r.run_dir / CONFIG_FILE).read_text())
        assert saved["config"]["train"]["device"] == "cpu" and saved["environment"]["device"] == "cpu"
