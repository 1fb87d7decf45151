"""`gfa fanin` through a subprocess: every format, and every malformed input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sympy as sp

LAYOUT = {
    "blocks": [{"branches": 2}, {"branches": 2, "parallel": True}, {"branches": 3}, {"branches": 3}],
    "supervision": [2],
    "shared": [[3, 4]],
}


def gfa(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gfa_theory.cli", "fanin", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture()
def layout_file(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(LAYOUT))
    return str(path)


@pytest.mark.parametrize("supervision, expected", [
    ("final", [12 - i + 1 for i in range(1, 13)]),
    ("all", [(12 - i + 1) * (12 - i + 2) // 2 for i in range(1, 13)]),
], ids=["linear", "quadratic"])
def test_branches_json(supervision, expected):
    proc = gfa("--branches", "12", "--supervision", supervision, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["N"] == 12
    assert [br["index"] for br in out["branches"]] == list(range(1, 13))
    assert [br["fan_in"] for br in out["branches"]] == expected
    first = out["branches"][0]["paths_by_order"]
    assert first[0] + first[1] == expected[0]
    assert [bl["fan_in"] for bl in out["blocks"]] == expected


def test_layout_json_with_parallel_subset_supervision_and_sharing(layout_file):
    proc = gfa("--layout", layout_file, "--format", "json", "--check")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [br["fan_in"] for br in out["branches"]] == [14, 12, 8, 8, 6, 5, 4, 3, 2, 1]
    assert [br["block"] for br in out["branches"]] == [1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    assert out["branches"][0]["paths_by_order"] == [2, 12, 37, 77, 105, 91, 49, 15, 2]
    assert [bl["fan_in"] for bl in out["blocks"]] == [26, 16, 15, 6]
    shared = [g for g in out["groups"] if g["shared"]]
    assert shared == [{"blocks": [3, 4], "shared": True, "applications": [[5, 8], [6, 9], [7, 10]],
                       "fan_in": 21, "fan_in_by_slot": [9, 7, 5],
                       "paths_by_order": [6, 15, 20, 15, 6, 1]}]
    assert out["check"]["agree"] and out["check"]["mismatches"] == 0


def test_table_format(layout_file):
    proc = gfa("--layout", layout_file, "--check")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[1].split()
    assert header[:5] == ["i", "block", "slot", "F(i)", "F/max"] and header[5] == "k=0"
    assert lines[2].split()[:5] == ["1", "1", "0", "14", "1.000"]
    assert any(line.split()[:2] == ["3,4", "21"] for line in lines)  # shared-group table
    assert any(line.strip().startswith("k=0..3: paths through exactly k later branches") for line in lines)  # legend
    assert lines[-1].startswith("autograd check: agrees")


def test_branches_table_and_latex():
    table = gfa("--branches", "5", "--supervision", "all")
    assert table.returncode == 0, table.stderr
    assert "F(i) = (N - i + 1)*(N - i + 2)/2" in table.stdout
    latex = gfa("--branches", "5", "--format", "latex")
    assert latex.returncode == 0, latex.stderr
    assert r"\begin{tabular}" in latex.stdout and r"\end{tabular}" in latex.stdout
    assert r"F(i) = N - i + 1" in latex.stdout
    assert r"1 & 1 & 5 & 1.000 & 1 & 4 & 6 & 4 \\" in latex.stdout


@pytest.mark.parametrize("supervision", ["final", "all"])
def test_symbolic_json_is_sympy_parsable(supervision):
    proc = gfa("--symbolic", "--supervision", supervision, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    symbols = {name: sp.Symbol(name) for name in out["variables"]}
    F = sp.parse_expr(out["fan_in"], local_dict=symbols)
    N, i = symbols["N"], symbols["i"]
    assert F.free_symbols == {N, i}
    exact = sp.sympify(out["srepr"]["fan_in"])  # carries the integer assumptions
    assert sp.simplify(exact.subs({s: symbols[s.name] for s in exact.free_symbols}) - F) == 0
    for n in (1, 7, 40):
        profile = [F.subs({N: n, i: k}) for k in range(1, n + 1)]
        expected = [n - k + 1 if supervision == "final" else (n - k + 1) * (n - k + 2) // 2
                    for k in range(1, n + 1)]
        assert profile == expected
    assert out["latex"]["fan_in"].startswith("F(i) = ")
    G = sp.parse_expr(out["generating_function"], local_dict=symbols)
    assert G.free_symbols == {N, i, symbols["t"]}


def test_symbolic_table_and_latex_with_check():
    table = gfa("--symbolic", "--check")
    assert table.returncode == 0, table.stderr
    assert "F(i)     = N - i + 1" in table.stdout and "autograd check: agrees" in table.stdout
    latex = gfa("--symbolic", "--supervision", "all", "--format", "latex")
    assert latex.returncode == 0, latex.stderr
    assert r"\frac{r \left(r + 1\right) \left(r + 2\right)}{6}" in latex.stdout


def test_max_order_truncates_json():
    proc = gfa("--branches", "30", "--supervision", "all", "--format", "json", "--max-order", "2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert all(len(br["paths_by_order"]) <= 3 for br in out["branches"])
    assert out["branches"][0]["fan_in"] == 30 * 31 // 2


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return str(path)


BAD_LAYOUTS = {
    "zero_branches": (json.dumps({"blocks": [{"branches": 0}]}), "'branches' must be >= 1"),
    "negative_branches": (json.dumps({"blocks": [{"branches": -2}]}), "'branches' must be >= 1"),
    "supervision_out_of_range": (json.dumps({"blocks": [{"branches": 2}], "supervision": [3]}),
                                 "supervision index 3 is out of range"),
    "shared_different_structure": (
        json.dumps({"blocks": [{"branches": 2}, {"branches": 2, "parallel": True}],
                    "shared": [[1, 2]]}), "different branch structure"),
    "invalid_json": ('{"blocks": [', "not valid JSON"),
    "unknown_key": (json.dumps({"blocks": [{"branches": 2, "width": 3}]}), "unknown key 'width'"),
}


@pytest.mark.parametrize("name", list(BAD_LAYOUTS))
def test_malformed_layout_file(tmp_path, name):
    text, message = BAD_LAYOUTS[name]
    proc = gfa("--layout", _write(tmp_path, text))
    assert_one_line_error(proc, message)


@pytest.mark.parametrize("args, message", [
    (["--branches", "0"], "positive integer"),
    (["--branches", "-3"], "positive integer"),
    (["--branches", "three"], "invalid int value"),
    ([], "one of the arguments --branches --layout --symbolic"),
    (["--branches", "3", "--symbolic"], "not allowed with"),
    (["--layout", "does-not-exist.json"], "layout file not found"),
    (["--branches", "3", "--format", "yaml"], "invalid choice"),
    (["--symbolic", "--supervision", "half"], "invalid choice"),
    (["--branches", "3", "--max-order", "-1"], "--max-order must be >= 0"),
    (["--branches", "3000", "--format", "json"], "pass --max-order"),
    (["--symbolic", "--max-order", "2"], "not --symbolic"),
], ids=["zero", "negative", "not_int", "no_source", "two_sources", "missing_file", "bad_format",
        "bad_supervision", "negative_max_order", "too_big_for_every_order", "symbolic_max_order"])
def test_malformed_arguments(tmp_path, args, message):
    assert_one_line_error(gfa(*args, cwd=tmp_path), message)


def test_supervision_flag_rejected_with_layout_file(layout_file):
    assert_one_line_error(gfa("--layout", layout_file, "--supervision", "all"),
                          "a layout file carries its own")


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gfa: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
