"""``gfa train`` and ``gfa bench tracker``: output, one-line errors with exit code 2, conflicting options,
the output formats of every subcommand, and a start-up that imports no subcommand for ``gfa --help``."""
import json

import pytest

from gfa_theory.cli import main

TINY = ["model.n_blocks=2", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
        "train.batch_size=8", "train.steps=6", "train.eval_interval=3", "train.eval_batches=2",
        "train.checkpoint_interval=3", "train.log_interval=3", "train.warmup_steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _gfa(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_train_prints_fan_in_table_and_spearman(tmp_path, capsys):
    code, out, err = _gfa(capsys, "train", "--model", "gpt", "--no-progress", "--out", str(tmp_path),
                          "--set", *TINY)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("run gpt-") and "trained in" in lines[0]
    rows = [ln.split() for ln in lines if ln.startswith("h.")]
    assert [r[0] for r in rows] == ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp"]
    assert [int(r[1]) for r in rows] == [4, 3, 2, 1]  # F(i) = N - i + 1
    assert [float(r[2]) for r in rows] == [1.0, 0.75, 0.5, 0.25]
    assert max(float(r[4]) for r in rows) == 1.0
    assert any(ln.startswith("Spearman rho(A, F) over 4 branch units") for ln in lines)
    # the same command again reads the finished run back
    code, out, _ = _gfa(capsys, "train", "--model", "gpt", "--no-progress", "--out", str(tmp_path),
                        "--set", *TINY)
    assert code == 0 and "read from an earlier run" in out.splitlines()[0]


def test_config_file_and_set_merge(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"n_blocks": 3}, "train": {"steps": 4}}))
    code, out, err = _gfa(capsys, "train", "--model", "gpt", "--no-progress", "--out", str(tmp_path),
                          "--set", *[s for s in TINY if not s.startswith(("model.n_blocks", "train.steps"))],
                          "--config", str(cfg), "--set", "train.steps=3")
    assert code == 0, err
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["model"]["n_blocks"] == 3 and saved["config"]["train"]["steps"] == 3
    assert saved["config"]["model"]["vocab_size"] == saved["data"]["vocab_size"]
    assert len(saved["data"]["sha256"]) == 64 and saved["versions"]["torch"]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", [
    "unknown-key", "wrong-type", "heads-not-dividing", "zero-blocks", "missing-text-file",
    "empty-text-file", "non-utf8-text-file", "missing-cifar", "bad-override", "unknown-section-key",
    "bad-config-file", "dataset-for-other-model", "non-positive-lr",
])
def test_malformed_input_is_one_line_exit_2(tmp_path, capsys, case):
    args = {
        "unknown-key": ["--set", "model.n_layers=3"],
        "wrong-type": ["--set", "train.steps=many"],
        "heads-not-dividing": ["--set", "model.n_head=3"],
        "zero-blocks": ["--set", "model.n_blocks=0"],
        "missing-text-file": ["--set", f"data.text_file={tmp_path / 'nope.txt'}"],
        "empty-text-file": ["--set", f"data.text_file={_write(tmp_path / 'e.txt', b'')}"],
        "non-utf8-text-file": ["--set", f"data.text_file={_write(tmp_path / 'b.txt', b'ab' + bytes([0xFF]))}"],
        "missing-cifar": ["--model", "resnet", "--set", "data.dataset=cifar10", f"data.data_dir={tmp_path}"],
        "bad-override": ["--set", "train.steps"],
        "unknown-section-key": ["--set", "optim.lr=1"],
        "bad-config-file": ["--config", str(_write(tmp_path / "c.json", b"{not json"))],
        "dataset-for-other-model": ["--set", "data.dataset=digits"],
        "non-positive-lr": ["--set", "train.lr=0"],
    }[case]
    model = [] if "--model" in args else ["--model", "gpt"]
    code, out, err = _gfa(capsys, "train", *model, "--no-progress", "--out", str(tmp_path), *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gfa: error: "), err
    assert out == ""
    if case == "missing-cifar":
        assert "data_batch_1..5" in lines[0] and "test_batch" in lines[0]


def test_bench_tracker_json(capsys):
    small = ["model.n_blocks=1", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=8",
             "train.batch_size=4"]
    code, out, err = _gfa(capsys, "bench", "tracker", "--format", "json", "--repeats", "3", "--steps", "1",
                          "--warmup", "1", "--set", *small)
    assert code == 0, err
    result = json.loads(out)
    assert result["overhead_ratio"] > 0 and result["repeats"] == 3 and result["units"] == 3
    assert result["step_s_with"] > 0 and result["step_s_without"] > 0


def test_bare_loop_trains_the_same_model_on_the_same_data_as_the_package():
    """The reference of ``gfa bench loop`` is the package's step, less the package: with the
    tracker off both reach identical parameters (same init, windows, optimizer, schedule, clip)."""
    import torch

    from gfa_theory.train.benchmark import BareLoop
    from gfa_theory.train.loop import Trainer
    from gfa_theory.train.run_config import build_run_config, resolve

    cfg, data = resolve(build_run_config("gpt", overrides=[*TINY, "train.track=none"]))
    package, bare = Trainer(cfg, data), BareLoop(cfg, data, torch.device("cpu"))
    for _ in range(3):
        package.train_step()
        bare.step()
    assert all(torch.equal(a, b) for a, b in zip(package.raw_model.state_dict().values(),
                                                 bare.model.state_dict().values()))


SMALL_POINT = ["model.n_blocks=2", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=8",
               "train.batch_size=4"]


def test_bench_loop_json(capsys):
    code, out, err = _gfa(capsys, "bench", "loop", "--format", "json", "--repeats", "2", "--steps", "1",
                          "--warmup", "1", "--set", *SMALL_POINT)
    assert code == 0, err
    result = json.loads(out)
    for key in ("package_ratio", "untracked_ratio", "aa_ratio"):
        assert result[f"{key}_min"] <= result[f"{key}_q1"] <= result[key] <= result[f"{key}_q3"] <= result[f"{key}_max"]
        assert result[key] > 0
    assert result["tokens_per_step"] == 32 and result["tokens_per_s_bare"] > 0
    assert result["data"].startswith("gfa_theory/train/corpus/stdlib_py.txt.gz")  # the scale point's corpus


def test_bench_sizes_table_and_json(capsys):
    args = ["bench", "sizes", "--widths", "8,16", "--repeats", "2", "--steps", "1", "--warmup", "0",
            "--set", *SMALL_POINT]
    code, out, err = _gfa(capsys, *args, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["n_embd"] for r in rows] == [8, 16] and rows[0]["params"] < rows[1]["params"]
    assert rows[0]["time_ratio"] == 1.0 and all(r["tokens_per_s"] > 0 and r["n_blocks"] == 2 for r in rows)
    code, out, err = _gfa(capsys, *args)
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["n_embd", "params"] and "n_blocks: 2" in out
    code, _, err = _gfa(capsys, "bench", "sizes", "--widths", "17", "--repeats", "1", "--set", *SMALL_POINT)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "n_head" in err


def test_metrics_csv_gains_a_row_at_every_evaluation(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from gfa_theory.train import loop as training

    seen = []  # val rows on disk when each evaluation starts
    original = training.Trainer.evaluate

    def spy(self, split="val"):
        files = list(tmp_path.glob("gpt-*/metrics.csv"))
        seen.append(int((pd.read_csv(files[0])["split"] == "val").sum()) if files else 0)
        return original(self, split)

    monkeypatch.setattr(training.Trainer, "evaluate", spy)
    small = [s for s in TINY if not s.startswith(("train.eval_interval", "train.checkpoint_interval"))]
    code, _, err = _gfa(capsys, "train", "--model", "gpt", "--no-progress", "--out", str(tmp_path), "--set", *small,
                        "train.eval_interval=2", "train.checkpoint_interval=100")
    assert code == 0, err
    assert seen == [0, 1, 2, 3]  # steps 0, 2, 4, 6; no checkpoint before the end


@pytest.mark.parametrize("argv, both", [
    (["taper", "--blocks", "4", "--schedule", "fanin", "--alpha", "0.5", "--match", "flops=0.85"], ("--match", "--alpha")),
    (["taper", "--blocks", "4", "--r", "0.4", "--match", "params=0.8"], ("--match", "--r")),
    (["taper", "--blocks", "4", "--alpha", "2"], ("--alpha", "--schedule")),
    (["fanin", "--branches", "8", "--max-order", "5"], ("--max-order", "--format")),
    (["taper", "--blocks", "4", "--step-at", "0.3"], ("--step-at", "--schedule")),
    (["taper", "--model-config", "x.json", "--vocab", "50"], ("--model-config", "--vocab")),
    (["prune", "r", "--method", "last", "-k", "1", "--out", "o", "--quantity", "A_rms"], ("--quantity", "--method")),
    (["prune", "r", "--method", "magnitude", "-k", "1", "--out", "o", "--calib-batches", "4"],
     ("--calib-batches", "--method")),
    (["prune", "r", "--method", "bi", "-k", "1", "--out", "o", "--heal-lr", "0.1"], ("--heal-lr", "--heal-steps")),
    (["prune", "r", "--method", "last", "-k", "1", "--out", "o", "--gradients", "g.csv"], ("--gradients", "--method")),
])
def test_conflicting_options_are_one_error_naming_both(argv, both, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _gfa(capsys, *argv)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("gfa: error: ") and all(opt in line for opt in both), line


def test_taper_budget_follows_vocabulary_and_context(capsys):
    runs = {}
    for vocab, context in ((96, 64), (50257, 1024)):
        code, out, err = _gfa(capsys, "taper", "--blocks", "4", "--vocab", str(vocab), "--context", str(context),
                              "--format", "json")
        assert code == 0, err
        runs[vocab] = json.loads(out)
    assert runs[50257]["params"] > runs[96]["params"] + 50257 * 128 - 96 * 128 - 1
    assert runs[50257]["params_ratio"] > runs[96]["params_ratio"]  # the embedding is not tapered


def test_taper_reads_a_model_config(tmp_path, capsys):
    cfg = tmp_path / "gpt.json"
    cfg.write_text(json.dumps({"vocab_size": 200, "block_size": 32, "n_embd": 64, "n_blocks": 6, "n_head": 2,
                               "d_ff": 128}))
    code, out, err = _gfa(capsys, "taper", "--model-config", str(cfg), "--format", "json")
    assert code == 0, err
    plan = json.loads(out)
    assert len(plan["blocks"]) == 6 and plan["config"]["vocab_size"] == 200 and plan["config"]["block_size"] == 32


@pytest.mark.parametrize("argv", [["taper", "--blocks", "3"], ["fanin", "--branches", "3"],
                                  ["fanin", "--symbolic"]])
def test_csv_and_latex_formats(argv, capsys):
    code, out, err = _gfa(capsys, *argv, "--format", "csv")
    assert code == 0, err
    from io import StringIO

    import pandas as pd

    frame = pd.read_csv(StringIO(out))
    assert len(frame) >= 3
    code, out, err = _gfa(capsys, *argv, "--format", "latex")
    assert code == 0 and ("tabular" in out or r"\[" in out), err


def test_every_printing_subcommand_offers_the_same_formats():
    import argparse

    from gfa_theory.cli import COMMANDS, build_parser
    from gfa_theory.cli.formats import FORMATS

    def format_choices(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from format_choices(sub)
            elif "--format" in action.option_strings:
                yield parser.prog, tuple(action.choices)

    found = dict(x for name in COMMANDS for x in format_choices(build_parser(only=name)))
    assert {"gfa fanin", "gfa train", "gfa taper", "gfa prune", "gfa bench tracker", "gfa bench taper"} <= set(found)
    assert set(found.values()) == {FORMATS}


def test_help_does_not_import_torch_and_is_plain():
    import subprocess
    import sys

    code = ("import sys; from gfa_theory.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'sympy', 'scipy', 'transformers') if m in sys.modules)\n"
            "print('IMPORTED', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "IMPORTED []" in out, out
    assert "fanin" in out and "prune" in out
    bench = subprocess.run([sys.executable, "-m", "gfa_theory.cli", "bench", "--help"], capture_output=True,
                           text=True, check=True).stdout
    assert "``" not in bench and ":mod:" not in bench
