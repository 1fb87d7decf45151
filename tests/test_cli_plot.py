"""``gfa plot RUN``: one run's A against F as a PNG; bad input is one line and exit 2; and the
smoke profile says on the console that its numbers mean nothing."""
from __future__ import annotations

import io

import matplotlib.image as mpimg
import pytest

from gfa_theory.cli import main
from gfa_theory.cli.plot import unit_table
from gfa_theory.train.store import read_gradients

TINY = ["model.n_blocks=3", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
        "train.steps=4", "train.batch_size=2", "train.eval_interval=0", "train.checkpoint_interval=0",
        "train.eval_batches=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot_runs")
    assert main(["train", "--model", "gpt", "--no-progress", "--out", str(root), "--set", *TINY]) == 0
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


def test_plot_writes_a_png_of_the_runs_numbers(run_dir, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert "3 block units" in capsys.readouterr().out
    img = mpimg.imread(io.BytesIO(out.read_bytes()), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 200
    g = read_gradients(run_dir)
    expected = g[(g.kind == "block") & (g.quantity == "A") & g.step.isna()].sort_values("index")
    table = unit_table(run_dir, "block", "A")
    assert table["A"].tolist() == pytest.approx(expected["value"].tolist())
    assert table["F"].tolist() == [11, 7, 3]  # two branches per block: F = (6 + 5), (4 + 3), (2 + 1)
    assert main(["plot", str(run_dir), "--kind", "branch", "--out", str(tmp_path / "b.png")]) == 0


@pytest.mark.parametrize("case", ["exists", "no-run", "not-png", "no-quantity"])
def test_plot_refuses_bad_input_in_one_line(case, run_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    args = {"exists": [str(run_dir), "--out", str(out)],
            "no-run": [str(tmp_path), "--out", str(out)],
            "not-png": [str(run_dir), "--out", str(tmp_path / "x.pdf")],
            "no-quantity": [str(run_dir), "--quantity", "nope", "--out", str(out)]}[case]
    if case == "exists":
        out.write_bytes(b"someone else's")
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gfa: error:") and len(err.strip().splitlines()) == 1, err
    if case == "exists":
        assert out.read_bytes() == b"someone else's"  # never overwritten without --force
    else:
        assert not out.exists()


def test_smoke_profile_says_its_numbers_mean_nothing(smoke_root, tmp_path, capsys):
    from experiments.__main__ import main as study_main
    from experiments.plans import caveat
    from figures.__main__ import main as figures_main

    assert study_main(["gradients_vs_importance", "--profile", "smoke", "--out", str(smoke_root),
                       "--jobs", "1", "--no-progress"]) == 0
    assert "mean nothing" in capsys.readouterr().out
    assert figures_main(["--profile", "smoke", "--only", "F1", "--out", str(tmp_path / "figs"),
                         "--results", str(smoke_root), "--no-progress"]) == 0
    assert "mean nothing" in capsys.readouterr().out
    assert caveat("lesson") is None and caveat("default") is None
