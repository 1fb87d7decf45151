"""``gfa train`` and ``gfa bench tracker``: output, and one-line errors with exit code 2."""
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
