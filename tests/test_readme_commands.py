"""The README's command blocks, run as printed (tiny where a command would run for minutes).

Every ```bash block of the README is marked: a ``<!-- tested -->`` block runs here, each ``gfa``
line through the ``gfa`` entry point (:func:`gfa_theory.cli.main`, in this process, so torch is
imported once) in a temporary folder holding the files the commands name (a layout file, a text
file, and the Hugging Face run the README's Trainer example writes); a ``pip install`` line
is the wheel test's (``tests/test_packaging.py``). A ``<!-- tested-NAME -->`` block is run by the
test that looks for that mark (``tested-prune``: ``tests/test_hf_families.py``, after the README's
Trainer example), and a ``<!-- not run here: ... -->`` block says where it is covered instead. Long commands get the arguments of :data:`APPEND` added and the
values of :data:`SHRINK` lowered (a later option wins); every other word runs as written. The
README's Python blocks are run by ``tests/test_packaging.py``.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from gfa_theory.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(?:<!-- (tested|tested-[a-z-]+|not run here: [^>]*) -->\n)?```bash\n(.*?)```", re.DOTALL)

TINY_MODEL = ["model.n_blocks=4", "model.n_embd=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16"]
TINY_TRAIN = ["train.steps=3", "train.batch_size=4", "train.eval_batches=1", "train.warmup_steps=0"]
APPEND = {("train",): ["--set", *TINY_MODEL, *TINY_TRAIN, "--no-progress"],
          ("bench", "tracker"): ["--repeats", "2", "--warmup", "0", "--steps", "1", "--set", *TINY_MODEL,
                                 "train.batch_size=4", "train.device=cpu"],
          ("bench", "gains"): ["--repeats", "2", "--warmup", "0", "--set", *TINY_MODEL, "train.batch_size=4",
                               "train.device=cpu"],
          ("bench", "taper"): ["--repeats", "2", "--warmup", "0", "--blocks", "2", "--batch", "2", "--context", "8",
                               "--device", "cpu"]}
SHRINK = {"--heal-steps": "2", "--calib-batches": "2", "--every": "2"}
HASH = "gpt-<hash>"  # the README's placeholder for a run directory: the first run the block trains


def bash_blocks() -> list[tuple[str | None, str]]:
    """(mark, text) of every ```bash block of the README, in order."""
    return MARK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def commands(block: str) -> list[list[str]]:
    """The command lines of a block as argument lists (continuations joined, comments dropped)."""
    lines = block.replace("\\\n", " ").splitlines()
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def tiny(argv: list[str]) -> list[str]:
    out = [SHRINK.get(prev, word) if k else word for k, (prev, word) in enumerate(zip([""] + argv, argv))]
    for key, extra in APPEND.items():
        if tuple(out[:len(key)]) == key:
            if any(w.startswith("train.heldout_gain_steps=") for w in out):  # its steps reach 100
                extra = [*extra, "--set", "train.steps=101"]
            return out + extra
    return out


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """A user's folder with what the README's commands read: my_layout.json, my-domain.txt (text
    of the user's own), and hf-run/ (its checkpoint-8 and gradients.csv) written by running the
    README's own Trainer example there."""
    pytest.importorskip("transformers")
    from gfa_theory.train.data import pydoc_corpus

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GFA_RESULTS", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    blocks = [{"branches": 2, "parallel": False}] * 4
    (tmp_path / "my_layout.json").write_text(json.dumps({"blocks": blocks, "supervision": [2, 4], "shared": [[3, 4]]}))
    (tmp_path / "my-domain.txt").write_text(pydoc_corpus()[:200_000], encoding="utf-8")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    trainer = [b for b in re.findall(r"<!-- tested -->\n```python\n(.*?)```", text, flags=re.DOTALL)
               if "GradientFanInCallback" in b][0]
    exec(compile(trainer, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102  (the README's own code)
    return tmp_path


def test_every_bash_block_is_marked():
    blocks = bash_blocks()
    assert blocks, "no ```bash blocks found in the README"
    unmarked = [text.splitlines()[0] for mark, text in blocks if not mark]
    assert not unmarked, f"README bash blocks without <!-- tested --> or <!-- not run here: why -->: {unmarked}"
    assert sum(mark == "tested" for mark, _ in blocks) >= 2


@pytest.mark.slow
def test_tested_bash_blocks_run(readme_folder, capsys):
    run_dir = None
    for mark, text in bash_blocks():
        if mark != "tested":
            continue
        for argv in commands(text):
            if argv[0] == "pip":
                continue  # installing the package: tests/test_packaging.py builds and installs the wheel
            assert argv[0] == "gfa", f"a tested block runs gfa commands only: {shlex.join(argv)}"
            if any(HASH in w for w in argv):
                assert run_dir is not None, f"{shlex.join(argv)}: no run trained before it in the README"
                argv = [w.replace(HASH, run_dir) for w in argv]
            before = set(Path("results").glob("gpt-*"))
            capsys.readouterr()
            code = main(tiny(argv[1:]))
            out = capsys.readouterr()
            assert code == 0, f"{shlex.join(argv)} -> exit {code}\n{out.out[-1500:]}\n{out.err[-1500:]}"
            assert out.out.strip(), f"{shlex.join(argv)} printed nothing"
            new = sorted(set(Path("results").glob("gpt-*")) - before)
            run_dir = run_dir or (new[0].name if new else None)
