"""Hostile input and existing output directories: one line on stderr, exit 2, nothing written.

Every refusal here must come before any model, data or directory is created, within seconds;
``gfa ... | head`` must end quietly.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.__main__ import main as experiments_main
from figures.__main__ import main as figures_main
from gfa_theory.cli import EXIT_BROKEN_PIPE, main
from gfa_theory.cli.outdir import check_figures_out, check_results_root

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = "1" + "0" * 30  # 10**30


# the studies and figures run from the checkout: ``python -m experiments`` / ``python -m figures``
CHECKOUT_MAINS = {"study": (experiments_main, "experiments"), "reproduce": (figures_main, "figures")}


def _prog(argv) -> str:
    return CHECKOUT_MAINS[argv[0]][1] if argv and argv[0] in CHECKOUT_MAINS else "gfa"


def _gfa(capsys, *argv) -> tuple[int, str, str]:
    argv = [str(a) for a in argv]
    try:
        if argv and argv[0] in CHECKOUT_MAINS:
            code = CHECKOUT_MAINS[argv[0]][0](argv[1:])
        else:
            code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its bytes (directories: '<dir>')."""
    return {str(p.relative_to(root)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _refused(capsys, tmp_path, *argv, match: str | None = None) -> str:
    """Run ``gfa *argv`` (or a checkout entry point); assert exit 2, one ``<prog>: error:`` line, no stdout, nothing written
    under ``tmp_path`` and a quick answer. Returns the error line."""
    before = _snapshot(tmp_path)
    start = time.perf_counter()
    code, out, err = _gfa(capsys, *argv)
    elapsed = time.perf_counter() - start
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"{_prog(argv)}: error: "), err
    assert out == ""
    assert _snapshot(tmp_path) == before  # no file or directory created, none changed
    assert elapsed < 10, f"refusal took {elapsed:.1f} s"
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


# ---- item 6: hostile and extreme input ------------------------------------------------------

def _deep_json(tmp_path: Path) -> Path:
    p = tmp_path / "inputs" / "deep.json"
    p.parent.mkdir(exist_ok=True)
    p.write_text("[" * 100_000)
    return p


TRAIN_CASES = {
    # a model or batch that cannot fit in memory: refused from the config alone
    "memory-blocks": (["--set", "model.n_blocks=100000", "model.n_embd=4096"], "needs about"),
    "memory-width": (["--set", "model.n_embd=1000000", "model.n_head=1"], "needs about"),
    "memory-ffn": (["--set", "model.d_ff=2000000000"], "needs about"),
    "memory-batch": (["--set", "train.batch_size=1000000000"], "train.batch_size smaller"),
    "memory-resnet": (["--model", "resnet", "--set", "model.widths=[100000,100000,100000]"], "needs about"),
    # absurd integers
    "blocks-zero": (["--set", "model.n_blocks=0"], "n_blocks"),
    "blocks-negative": (["--set", "model.n_blocks=-1"], "n_blocks"),
    "blocks-too-many": (["--set", "model.n_blocks=100001"], "100,000"),
    "blocks-1e30": (["--set", f"model.n_blocks={HUGE}"], "out of range"),
    "steps-1e30": (["--set", f"train.steps={HUGE}"], "out of range"),
    "steps-too-many": (["--set", "train.steps=100000000000"], "train.steps"),
    "schedule-too-long": (["--set", f"model.block_schedule={[0] * 100_001}".replace(" ", "")], "block_schedule"),
    "series-points": (["--set", "train.series_points=10000000"], "train.series_points"),
    "eval-batches": (["--set", "train.eval_batches=1000000000"], "train.eval_batches"),
    # learning rates: non-finite or huge
    "lr-nan": (["--set", "train.lr=NaN"], "finite"),
    "lr-inf": (["--set", "train.lr=Infinity"], "finite"),
    "lr-overflow": (["--set", "train.lr=1e400"], "finite"),
    "lr-huge": (["--set", "train.lr=1e308"], "(0, 10]"),
    "lr-eleven": (["--set", "train.lr=11"], "(0, 10]"),
    "lr-negative": (["--set", "train.lr=-0.1"], "train.lr"),
    "weight-decay-inf": (["--set", "train.weight_decay=Infinity"], "finite"),
    "dropout-nan": (["--set", "model.dropout=NaN"], "finite"),
    # seeds outside 0..2**32-1
    "seed-negative": (["--set", "train.seed=-1"], "0..4294967295"),
    "seed-2**32": (["--set", f"train.seed={2 ** 32}"], "0..4294967295"),
    "split-seed-2**32": (["--set", f"data.split_seed={2 ** 32}"], "0..4294967295"),
    # malformed config files and --set values
    "deep-config-file": (["--config", "DEEP"], "nests deeper"),
    "deep-set-value": (["--set", "model.n_blocks=" + "[" * 50 + "]" * 50], "nests deeper"),
    "recursion-set-value": (["--set", "model.n_blocks=" + "[" * 100_000], "nests deeper"),
    "digits-set-value": (["--set", "model.n_blocks=" + "9" * 5000], "4300 digits"),
    "config-not-object": (["--config", "LIST"], "JSON object"),
    "config-is-directory": (["--config", "DIR"], "not found"),
    "set-without-value": (["--set", "train.steps"], "key=value"),
    "set-empty-key": (["--set", "=3"], "not a config key"),
    "set-empty-part": (["--set", "model..n_blocks=3"], "not a config key"),
    "set-not-a-number": (["--set", "train.lr=fast"], "expected a number"),
    "set-into-a-number": (["--set", "train.lr.x=1"], "not a nested config"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_hostile_input(tmp_path, capsys, case):
    args, match = TRAIN_CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "list.json").write_text("[1, 2]")
    args = [{"DEEP": str(_deep_json(tmp_path)), "LIST": str(inputs / "list.json"), "DIR": str(inputs)}.get(a, a)
            for a in args]
    model = [] if "--model" in args else ["--model", "gpt"]
    out = tmp_path / "out"
    _refused(capsys, tmp_path, "train", *model, "--no-progress", "--out", out, *args, match=match)
    assert not out.exists()


def test_memory_refusal_names_the_estimate_and_the_limit(tmp_path, capsys):
    line = _refused(capsys, tmp_path, "train", "--model", "gpt", "--out", tmp_path / "out",
                    "--set", "model.n_embd=1000000", "model.n_head=1")
    assert "16,004,326,002,048 parameters" in line and "GiB" in line and "this machine has" in line


def test_memory_estimate_is_exact_in_parameters_and_fits_the_defaults():
    from gfa_theory.models import GPTConfig, ResNetConfig, build_model
    from gfa_theory.train.memory import available_memory, param_count, training_estimate
    from gfa_theory.train.run_config import default_run_config

    for name, cfg in [("gpt", GPTConfig.tiny(n_head=[1, 2], d_ff=[8, 16], head_dim=4, tie_embeddings=False)),
                      ("gpt", GPTConfig(block_schedule=[0, 1, 2, 3, 3], bias=False)),
                      ("resnet", ResNetConfig.cifar(variant="post", supervision="all")),
                      ("resnet", ResNetConfig(blocks_per_stage=[0, 2, 1], widths=[4, 8, 8]))]:
        assert param_count(name, cfg) == sum(p.numel() for p in build_model(name, cfg).parameters())
    have = available_memory()
    assert have is None or have > 2 ** 28
    for name in ("gpt", "resnet"):  # the defaults are far below any machine that runs the tests
        assert training_estimate(default_run_config(name))["total"] < 2 * 2 ** 30


def test_train_refuses_before_anything_is_imported_into_memory(tmp_path):
    """The real CLI in a fresh process: the memory refusal comes within seconds, one line."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gfa_theory.cli", "train", "--model", "gpt", "--out",
                          str(tmp_path / "out"), "--set", "model.n_blocks=100000", "model.n_embd=4096"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("gfa: error: "), res.stderr
    assert time.perf_counter() - start < 20
    assert list(tmp_path.iterdir()) == []


OTHER_CASES = {
    "taper-blocks-huge": (["taper", "--blocks", 10 ** 9], "--blocks"),
    "taper-blocks-zero": (["taper", "--blocks", 0], "--blocks"),
    "taper-alpha-nan": (["taper", "--blocks", 4, "--schedule", "fanin", "--alpha", "nan"], "alpha"),
    "taper-width-huge": (["taper", "--blocks", 4, "--n-embd", 10 ** 12, "--heads", 1], "n_embd"),
    "taper-match-nan": (["taper", "--blocks", 4, "--match", "params=nan"], "fraction"),
    "prune-k-negative": (["prune", "RUN", "--method", "last", "-k", -1, "--out", "OUT"], "-k"),
    "prune-heal-steps-negative": (["prune", "RUN", "--method", "last", "-k", 1, "--out", "OUT",
                                   "--heal-steps", -1], "--heal-steps"),
    "prune-heal-steps-huge": (["prune", "RUN", "--method", "last", "-k", 1, "--out", "OUT",
                               "--heal-steps", HUGE], "--heal-steps"),
    "prune-heal-lr-nan": (["prune", "RUN", "--method", "last", "-k", 1, "--out", "OUT", "--heal-lr", "nan",
                           "--heal-steps", 1],
                          "--heal-lr"),
    "prune-heal-lr-huge": (["prune", "RUN", "--method", "last", "-k", 1, "--out", "OUT", "--heal-lr", "1e308",
                            "--heal-steps", 1],
                           "(0, 10]"),
    "prune-seed": (["prune", "RUN", "--method", "random", "-k", 1, "--out", "OUT", "--seed", 2 ** 32],
                   "0..4294967295"),
    "prune-calib-huge": (["prune", "RUN", "--method", "bi", "-k", 1, "--out", "OUT", "--calib-batches",
                          10 ** 9], "--calib-batches"),
    "bench-tracker-memory": (["bench", "tracker", "--set", "model.n_embd=1000000", "model.n_head=1"],
                             "needs about"),
    "bench-tracker-lr": (["bench", "tracker", "--set", "train.lr=NaN"], "finite"),
    "bench-tracker-repeats": (["bench", "tracker", "--repeats", 10 ** 9], "--repeats"),
    "bench-tracker-warmup": (["bench", "tracker", "--warmup", -1], "--warmup"),
    "bench-sizes-widths-many": (["bench", "sizes", "--widths", ",".join(["64"] * 17)], "1 to 16"),
    "bench-sizes-widths-bad": (["bench", "sizes", "--widths", "64,x"], "--widths"),
    "bench-sizes-memory": (["bench", "sizes", "--widths", "64,1000000", "--set", "model.n_head=1"], "needs about"),
    "bench-loop-corpus": (["bench", "loop", "--set", "data.corpus=web"], "data.corpus"),
    "bench-taper-blocks": (["bench", "taper", "--blocks", 10 ** 9], "--blocks"),
    "bench-taper-threads": (["bench", "taper", "--threads", 10 ** 6], "--threads"),
    "bench-taper-batch-memory": (["bench", "taper", "--batch", 10 ** 9], "needs about"),
    "bench-taper-r-nan": (["bench", "taper", "--r", "nan"], "r must be"),
    "fanin-branches-huge": (["fanin", "--branches", 10 ** 9], "--branches"),
    "fanin-branches-1e30": (["fanin", "--branches", HUGE], "--branches"),
    "fanin-max-order-huge": (["fanin", "--branches", 50_000, "--format", "json", "--max-order", 10 ** 9],
                             "--max-order"),
    "fanin-check-huge": (["fanin", "--branches", 50_000, "--check"], "autograd check"),
    "fanin-layout-deep": (["fanin", "--layout", "DEEP"], "nested too deeply"),
    "fanin-layout-huge": (["fanin", "--layout", "HUGE_LAYOUT"], "stream positions"),
    "fanin-model-memory": (["fanin", "--model", "gpt", "--set", "n_blocks=100000", "--set", "n_embd=4096"], "needs about"),
    "fanin-hf-memory": (["fanin", "--model", "hf:gpt2", "--set", "n_embd=100000"], "needs about"),
    "study-jobs": (["study", "pruning", "--jobs", 10 ** 9, "--out", "OUT"], "--jobs"),
    "reproduce-jobs": (["reproduce", "--jobs", 10 ** 9, "--out", "OUT"], "--jobs"),
}


@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_other_commands_refuse_hostile_input(tmp_path, capsys, case):
    args, match = OTHER_CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    huge = inputs / "huge_layout.json"
    huge.write_text(json.dumps({"blocks": [{"branches": 10 ** 9}]}))
    subst = {"RUN": str(tmp_path / "no-such-run"), "OUT": str(tmp_path / "out"),
             "DEEP": str(_deep_json(tmp_path)), "HUGE_LAYOUT": str(huge)}
    argv = [subst.get(str(a), str(a)) for a in args]
    _refused(capsys, tmp_path, *argv, match=match)
    assert not (tmp_path / "out").exists()


# ---- item 7: a reader that goes away early --------------------------------------------------

def test_closed_stdout_pipe_exits_quietly(tmp_path):
    """``gfa fanin --branches 20000 | head -1``: no BrokenPipeError traceback, status 141."""
    proc = subprocess.Popen([sys.executable, "-m", "gfa_theory.cli", "fanin", "--branches", "20000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away with ~1 MB still to come
    err = proc.stderr.read()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert first.startswith(b"N = 20000 branches")
    assert err == b"", err.decode()
    assert proc.returncode == EXIT_BROKEN_PIPE


def test_closed_pipe_through_a_shell(tmp_path):
    script = f'"{sys.executable}" -m gfa_theory.cli fanin --branches 20000 | head -1'
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("N = 20000 branches")
    assert res.stderr == ""


# ---- item 2: no overwrite ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished GPT run (the source of the prunes below)."""
    from gfa_theory.models import GPTConfig
    from gfa_theory.train.lifecycle import train
    from gfa_theory.train.run_config import RunConfig, TrainConfig

    cfg = RunConfig("gpt", GPTConfig.tiny(n_blocks=3, block_size=16, n_embd=16, n_head=2, d_ff=32),
                    train=TrainConfig(steps=4, batch_size=4, eval_interval=0, eval_batches=1,
                                      checkpoint_interval=0, warmup_steps=1, series_points=2))
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir


def _prune(run_dir, out, *extra):
    return ["prune", str(run_dir), "--method", "last", "-k", "1", "--out", str(out), *map(str, extra)]


def test_prune_refuses_a_directory_holding_a_run(finished_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other-run"
    shutil.copytree(finished_run, other)
    before = _snapshot(other)
    _refused(capsys, tmp_path, *_prune(finished_run, other), match="gfa run directory")
    assert _snapshot(other) == before
    code, _, err = _gfa(capsys, *_prune(finished_run, other, "--force"))
    assert code == 0, err
    assert (other / "evaluation.json").is_file() and (other / "DONE").is_file()  # written beside


def test_prune_refuses_unrelated_files_and_another_prune(finished_run, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine")
    _refused(capsys, tmp_path, *_prune(finished_run, mixed), match="notes.txt")

    out = tmp_path / "pruned"
    code, _, err = _gfa(capsys, *_prune(finished_run, out))
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "evaluation.json"}
    # the very same prune again replaces its own result
    code, _, err = _gfa(capsys, *_prune(finished_run, out))
    assert code == 0, err
    first = _snapshot(out)
    # a different prune into it: refused, nothing touched, the differing option named
    line = _refused(capsys, tmp_path, *_prune(finished_run, out, "--seed", "3"), match="another gfa prune")
    assert "seed=0" in line
    _refused(capsys, tmp_path, "prune", finished_run, "--method", "magnitude", "-k", 2, "--out", out)
    assert _snapshot(out) == first
    code, _, err = _gfa(capsys, *_prune(finished_run, out, "--seed", "3", "--force"))
    assert code == 0, err
    assert json.loads((out / "evaluation.json").read_text())["seed"] == 3


def test_prune_into_a_file_or_its_run_is_refused(finished_run, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    _refused(capsys, tmp_path, *_prune(finished_run, f, "--force"), match="not a directory")
    before = _snapshot(finished_run)
    _refused(capsys, tmp_path, *_prune(finished_run, finished_run, "--force"), match="run directory")
    assert _snapshot(finished_run) == before


def _result_dirs(root: Path, finished_run: Path) -> dict[str, Path]:
    """A run directory, a prune result and a reproduce folder, each a copy under ``root``."""
    import shutil

    run = root / "a-run"
    shutil.copytree(finished_run, run)
    prune = root / "a-prune"
    prune.mkdir()
    (prune / "checkpoint.pt").write_bytes(b"weights")
    (prune / "evaluation.json").write_text(json.dumps({"source_run": "gpt-0123456789ab"}))
    figs = root / "figures"
    figs.mkdir()
    (figs / "F1.png").write_bytes(b"png")
    (figs / "F1.png.stamp.json").write_text("{}")
    (figs / "REPORT.md").write_text("# report")
    return {"run": run, "prune": prune, "figures": figs}


@pytest.mark.parametrize("command", ["train", "study"])
@pytest.mark.parametrize("kind", ["run", "prune", "figures"])
def test_results_root_must_not_be_a_result(finished_run, tmp_path, capsys, command, kind):
    target = _result_dirs(tmp_path, finished_run)[kind]
    argv = (["train", "--model", "gpt", "--no-progress", "--force"] if command == "train"
            else ["study", "pruning", "--profile", "smoke", "--force"])
    _refused(capsys, tmp_path, *argv, "--out", target, match="results root")


def test_results_root_may_hold_runs_and_other_files(tmp_path):
    (tmp_path / "gpt-0123456789ab").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "config.json").write_text('{"lr": 1}')  # a project's own files, not gfa results
    (tmp_path / "REPORT.md").write_text("# notes")
    check_results_root(tmp_path)  # a root: fine
    check_results_root(tmp_path / "new")


def test_reproduce_refuses_foreign_files_unless_forced(tmp_path, capsys, monkeypatch):
    import figures.build

    built = []
    monkeypatch.setattr(figures.build, "build", lambda args: built.append(args.out) or 0)
    out = tmp_path / "figs"
    out.mkdir()
    (out / "F1.png").write_bytes(b"png")  # an earlier reproduce output: fine
    (out / "paper.tex").write_text("\\documentclass{article}")  # not ours
    _refused(capsys, tmp_path, "reproduce", "--out", out, match="paper.tex")
    assert built == []
    code, _, err = _gfa(capsys, "reproduce", "--out", out, "--force")
    assert code == 0 and built == [str(out)], err
    (out / "paper.tex").unlink()
    code, _, err = _gfa(capsys, "reproduce", "--out", out)
    assert code == 0 and len(built) == 2, err


def test_reproduce_accepts_its_own_committed_outputs():
    from figures.build import default_out, own_names

    check_figures_out(default_out("default"), own_names(), force=False)
    assert os.path.basename(default_out("default")) == "generated"
