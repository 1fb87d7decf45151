"""What a practitioner installs: the wheel, in a fresh virtual environment, works outside the
checkout (``gfa`` fanin/train/prune run from a user's folder that holds its own ``experiments``
package, nothing is written into site-packages, the checkout-only commands say so in one line),
and the README's Quick start code runs as printed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT = ["model.n_blocks=3", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
            "train.steps=2", "train.batch_size=4", "train.eval_batches=1", "train.warmup_steps=0"]


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or egg-info changes."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "gfa_theory", src / "gfa_theory",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
              "-w", tmp / "dist", src], tmp, timeout=180))
    (wheel,) = (tmp / "dist").glob("gfa_theory-*.whl")
    return wheel


def _venv(tmp: Path, wheel: Path) -> tuple[Path, Path]:
    """A fresh venv holding only the wheel; torch and the other dependencies come from this
    environment's site-packages through a .pth line (a path there, not a reinstall)."""
    venv = tmp / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", venv], tmp))
    py = venv / "bin" / "python"
    _ok(_run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
             tmp, timeout=180))
    site = Path(_ok(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)).stdout.strip())
    (site / "zz_outer_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py, site


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("gfa_theory-")} == {"gfa_theory"}
    assert "gfa_theory/train/corpus/pydoc_topics.txt.gz" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    py, site = _venv(tmp_path, wheel)
    gfa = py.parent / "gfa"

    user = tmp_path / "user"  # a user's project folder with a package named like the checkout's
    (user / "experiments").mkdir(parents=True)
    (user / "experiments" / "__init__.py").write_text(
        "raise ImportError('the user\\'s own experiments package: gfa must never import it')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{py.parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")

    # the wheel's gfa_theory, not the checkout's editable one; the dependencies import
    where = _ok(_run([py, "-c", "import gfa_theory, torch, pandas; print(gfa_theory.__file__)"], user, env))
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    before = _listing(site)

    fanin = _ok(_run([gfa, "fanin", "--branches", "4"], user, env))
    assert fanin.stdout.strip()
    _ok(_run([gfa, "train", "--model", "gpt", "--set", *TINY_GPT, "--out", "results", "--no-progress"], user, env))
    (run_dir,) = (user / "results").glob("gpt-*")
    assert (run_dir / "DONE").is_file() and (run_dir / "gradients.csv").is_file()
    _ok(_run([gfa, "prune", run_dir, "--method", "cascadeflow", "-k", "1", "--out", "pruned"], user, env))
    assert (user / "pruned" / "evaluation.json").is_file()

    for command in ("study", "reproduce"):
        proc = _run([gfa, command, "--profile", "smoke"], user, env)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "checkout" in proc.stderr, proc.stderr
        assert not proc.stdout

    assert _listing(site) == before  # nothing written into site-packages


def readme_blocks() -> list[str]:
    """The README's Python code blocks marked ``<!-- tested -->``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- tested -->\n```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_tested_quick_start():
    blocks = readme_blocks()
    assert len(blocks) == 2
    assert "GradientTracker" in blocks[0] and "GradientFanInCallback" in blocks[1]


@pytest.mark.slow
@pytest.mark.parametrize("k, expect", [(0, "h.3"), (1, "transformer.h.3")])
def test_readme_quick_start_block_runs(tmp_path, k, expect):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = _ok(_run([sys.executable, "-c", readme_blocks()[k]], tmp_path, env, timeout=180))
    assert expect in proc.stdout and "fan_in" in proc.stdout, proc.stdout
    if k == 0:  # the Quick start shows the effect it describes: A falls from the first block to the last
        rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s*\d+\s+h\.\d+\s", line)]
        a_over_max = [float(r[-1]) for r in rows]
        assert len(rows) == 8 and a_over_max[0] == 1.0 and a_over_max[-1] < 0.5, proc.stdout
