"""Files from someone else: nothing in them runs, a loaded model is the model in the files, every
input is checked against what it belongs to and bounded, and a failure is one line (exit 2).

Each red-team reproduction of the untrusted-input review is one case here: a payload planted in
every file the package reads (it would create a marker file if it ever ran), HF directories with
missing, unexpected or reshaped weights, remote code, outputs that must not be overwritten,
mismatched logs and configs, sizes that would hang or exhaust memory, and malformed files.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from gfa_theory.cli import main
from gfa_theory.errors import GFAError
from gfa_theory.models import GPTConfig
from gfa_theory.train.run_config import RunConfig, TrainConfig, recorded_run_key
from gfa_theory.train.store import CHECKPOINT_FILE, CONFIG_FILE, DONE_FILE, GRADIENTS_FILE, load_run

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")


class Payload:
    """Unpickling this creates ``marker``: proof that a file's pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cfg(seed: int = 0) -> RunConfig:
    return RunConfig("gpt", GPTConfig.tiny(n_blocks=3, block_size=16, n_embd=16, n_head=2, d_ff=32),
                     train=TrainConfig(steps=4, batch_size=4, eval_interval=0, eval_batches=1, checkpoint_interval=2,
                                       warmup_steps=1, series_points=2, seed=seed))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run (seed 0)."""
    from gfa_theory.train.lifecycle import train

    return train(_cfg(0), tmp_path_factory.mktemp("runs"), progress=False).run_dir


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the run (tests tamper with it), in its own results root."""
    dst = tmp_path / "root" / finished.name
    shutil.copytree(finished, dst)
    return dst


def _gfa(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, *argv, match: str | None = None) -> str:
    """``gfa *argv`` exits 2 with exactly one ``gfa: error:`` line and nothing on stdout."""
    start = time.perf_counter()
    code, out, err = _gfa(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("gfa: error: "), err[-2000:]
    assert out == ""
    assert time.perf_counter() - start < 20
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def _plant(file: Path, marker: Path) -> None:
    """Add a pickled payload to a torch file of ours (its other contents kept)."""
    state = torch.load(file, weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, file)


def _rekey(run: Path) -> None:
    """Make an edited config.json self-consistent again (run id, DONE marker): what a forger does."""
    meta = json.loads((run / CONFIG_FILE).read_text())
    meta["run_id"] = recorded_run_key(meta)
    (run / CONFIG_FILE).write_text(json.dumps(meta))
    (run / DONE_FILE).write_text(meta["run_id"])


# ---- 1. nothing from a file is executed ---------------------------------------------------------

def _load_run(run, tmp_path):
    load_run(run)


def _prune_run(run, tmp_path):
    code = main(["prune", str(run), "--method", "last", "-k", "1", "--out", str(tmp_path / "out")])
    assert code == 2


def _reuse(run, tmp_path):
    from gfa_theory.train.lifecycle import train

    train(_cfg(0), run.parent, progress=False)


def _resume(run, tmp_path):
    from gfa_theory.train.lifecycle import train

    (run / DONE_FILE).unlink()
    train(_cfg(0), run.parent, progress=False)


@pytest.mark.parametrize("reader", [_load_run, _prune_run, _reuse, _resume], ids=["load_run", "gfa-prune", "reuse",
                                                                                 "resume"])
def test_checkpoint_payload_never_runs(run, tmp_path, capsys, reader):
    marker = tmp_path / "PWNED"
    _plant(run / CHECKPOINT_FILE, marker)
    try:
        reader(run, tmp_path)
    except GFAError as exc:
        assert CHECKPOINT_FILE in str(exc) and "\n" not in str(exc)
    else:
        assert reader is _prune_run, "a planted checkpoint was accepted"
    capsys.readouterr()
    assert not marker.exists()


def test_snapshot_payload_never_runs(run, tmp_path):
    from experiments.pruning import _context_rankings
    from gfa_theory.errors import RunStoreError

    marker = tmp_path / "PWNED"
    _plant(run / "snapshots" / "step-2.pt", marker)
    loaded = load_run(run)
    with pytest.raises(RunStoreError, match="step-2.pt"):
        _context_rankings(str(run), loaded.config, loaded.model, loaded.gradients, [None], 1, 0, 4, 1, {})
    assert not marker.exists()


def test_pruned_checkpoint_payload_never_runs(run, tmp_path, capsys):
    from gfa_theory.methods.pruning import load_pruned

    out = tmp_path / "pruned"
    assert _gfa(capsys, "prune", run, "--method", "last", "-k", "1", "--out", out)[0] == 0
    assert load_pruned(out).config.n_blocks == 2  # our own file loads weights_only
    marker = tmp_path / "PWNED"
    _plant(out / CHECKPOINT_FILE, marker)
    with pytest.raises(GFAError, match="checkpoint.pt"):
        load_pruned(out)
    assert not marker.exists()


def test_old_checkpoints_with_a_numpy_rng_state_still_load(run, tmp_path):
    """A run written before RNG states became tensors (numpy's array and torch's version string
    in its checkpoint) is still reused and resumed: only their globals are allowlisted."""
    import numpy as np

    from gfa_theory.train.lifecycle import train
    from gfa_theory.train.store import numpy_rng_plain, numpy_rng_state
    from gfa_theory.untrusted import load_torch

    state = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    for rng in state["rng"]:
        name, keys, *rest = rng["numpy"]
        rng["numpy"] = (name, keys.numpy().astype(np.uint32), *rest)  # the old form
    state["environment"]["torch"] = torch.__version__  # a TorchVersion, as old checkpoints hold it
    torch.save(state, run / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="ndarray|_reconstruct|TorchVersion"):
        torch.load(run / CHECKPOINT_FILE, weights_only=True)  # not loadable without the allowlist
    assert load_torch(run / CHECKPOINT_FILE)["step"] == 4
    final = load_run(run).model.state_dict()
    assert not train(_cfg(0), run.parent, progress=False).trained  # reused
    (run / DONE_FILE).unlink()
    resumed = train(_cfg(0), run.parent, progress=False)  # resumes from the old-format checkpoint
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())
    # both forms restore numpy's generator exactly
    np.random.seed(7)
    before = np.random.get_state()
    for form in (numpy_rng_plain(before), before):
        np.random.set_state(numpy_rng_state(form))
        assert np.array_equal(np.random.get_state()[1], before[1]) and np.random.get_state()[2:] == before[2:]


# ---- Hugging Face directories ----------------------------------------------------------------------

def _hf_config():
    return transformers.GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=64, n_positions=32)


@pytest.fixture(scope="module")
def hf_src(tmp_path_factory):
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("hf") / "final"
    transformers.AutoModelForCausalLM.from_config(_hf_config()).save_pretrained(src)
    return src


@pytest.fixture
def hf(hf_src, tmp_path):
    dst = tmp_path / "src" / "final"
    shutil.copytree(hf_src, dst)
    return dst


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(d / "model.safetensors")


def _save_weights(d: Path, sd: dict) -> None:
    from safetensors.torch import save_file

    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _hf_prune(d, out, *extra):
    return ["prune", d, "--method", "magnitude", "-k", "1", "--out", out, *extra]


def test_malicious_pytorch_model_bin_never_runs(hf, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    (hf / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": torch.zeros(64, 16), "x": Payload(marker)}, hf / "pytorch_model.bin")
    _refused(capsys, *_hf_prune(hf, tmp_path / "out"), match="pytorch_model.bin")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_shard_index_pointing_outside_the_directory_is_refused(hf, tmp_path, capsys):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(hf / "model.safetensors", outside)
    index = {"metadata": {}, "weight_map": {k: "../../elsewhere.safetensors" for k in _weights_of(outside)}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(capsys, *_hf_prune(hf, tmp_path / "out"), match="outside the model directory")


def _weights_of(file: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(file)


@pytest.mark.parametrize("where", ["config", "tokenizer"])
def test_remote_code_is_refused_before_transformers_can_prompt(hf, tmp_path, capsys, where):
    marker = tmp_path / "REMOTE"
    (hf / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    auto_map = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model", "AutoTokenizer": ["evil.Tok", None]}
    if where == "config":
        _edit_config(hf, model_type="evil", auto_map=auto_map)
    else:
        (hf / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    _refused(capsys, *_hf_prune(hf, tmp_path / "out"), match="auto_map")
    assert not marker.exists()


def test_remote_code_prompt_never_reaches_stdout(hf, tmp_path, capsys, monkeypatch):
    """``echo y | gfa prune DIR --format json`` on a known model type that still asks for its own
    code: one line on stderr, nothing on stdout (no ``[y/N]`` prompt), no code run."""
    import io

    marker = tmp_path / "REMOTE"
    (hf / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    _edit_config(hf, auto_map={"AutoModelForCausalLM": "evil.Model"})
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    _refused(capsys, *_hf_prune(hf, tmp_path / "out"), "--format", "json", match="auto_map")
    assert not marker.exists() and sys.stdin.read() == "y\n"  # nothing asked for an answer


# ---- 2. a loaded model is the model in the files --------------------------------------------------

def _drop_layer(d):
    _save_weights(d, {k: v for k, v in _weights(d).items() if not k.startswith("transformer.h.1.")})


def _add_key(d):
    _save_weights(d, {**_weights(d), "transformer.h.9.mlp.extra": torch.zeros(3)})


def _reshape(d):
    sd = _weights(d)
    sd["transformer.h.0.ln_1.weight"] = torch.ones(5)
    _save_weights(d, sd)


@pytest.mark.parametrize("tamper,match", [(_drop_layer, "missing transformer.h.1."),
                                          (_add_key, "unexpected transformer.h.9.mlp.extra"),
                                          (_reshape, "wrong shape transformer.h.0.ln_1.weight")],
                         ids=["missing", "unexpected", "shape"])
def test_hf_weights_that_do_not_match_the_config_are_refused_by_name(hf, tmp_path, capsys, tamper, match):
    tamper(hf)
    _refused(capsys, *_hf_prune(hf, tmp_path / "out"), match=match)
    assert not (tmp_path / "out").exists()  # no model with random tensors written


def test_package_files_with_missing_or_unexpected_keys_are_refused_by_name(run, tmp_path):
    from gfa_theory.methods.pruning import load_pruned, save_pruned
    from gfa_theory.models import build_model
    from gfa_theory.models.storage import load_model, save_model

    state = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    del state["model"]["h.1.ln_1.weight"]
    torch.save(state, run / CHECKPOINT_FILE)
    with pytest.raises(GFAError, match="missing h.1.ln_1.weight"):
        load_run(run)
    small = GPTConfig.tiny(n_blocks=2, block_size=16, n_embd=16, n_head=2, d_ff=32)
    out = tmp_path / "pruned"
    save_pruned(build_model("gpt", small), out)
    pruned = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    pruned["model"]["h.7.extra"] = torch.zeros(1)
    torch.save(pruned, out / CHECKPOINT_FILE)
    with pytest.raises(GFAError, match="unexpected h.7.extra"):
        load_pruned(out)
    save_model(build_model("gpt", small), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["n_blocks"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(GFAError, match="do not fit"):
        load_model(tmp_path / "m")
    del meta["model_name"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(GFAError, match="model_name"):  # item 7: load_model without model_name
        load_model(tmp_path / "m")


# ---- 4. outputs are never overwritten by another job ----------------------------------------------

def test_two_checkpoints_of_one_name_are_different_prunes(hf, tmp_path, capsys):
    other = tmp_path / "other" / "final"
    shutil.copytree(hf, other)
    sd = _weights(other)
    sd["transformer.h.0.ln_1.weight"] = sd["transformer.h.0.ln_1.weight"] + 1
    _save_weights(other, sd)
    out = tmp_path / "out"
    assert _gfa(capsys, *_hf_prune(hf, out))[0] == 0
    first = (out / "model.safetensors").read_bytes()
    line = _refused(capsys, *_hf_prune(other, out), match="another gfa prune")
    assert str(other.resolve()) not in line and str(hf.resolve()) in line  # it names the recorded source
    assert (out / "model.safetensors").read_bytes() == first
    assert _gfa(capsys, *_hf_prune(hf, out))[0] == 0  # the very same prune again: replaced
    sd["transformer.h.0.ln_1.weight"] = sd["transformer.h.0.ln_1.weight"] + 1
    _save_weights(hf, sd)  # same path, new content: another prune
    _refused(capsys, *_hf_prune(hf, out), match="content sha256")


def _char_tokenizer():
    from tokenizers import Tokenizer, models

    vocab = {"[UNK]": 0, **{c: k + 1 for k, c in enumerate("abcdefghijklmnopqrstuvwxyz .,")}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_no_file_of_an_earlier_prune_survives_and_no_symlink_is_followed(hf, tmp_path, capsys):
    with_tok = tmp_path / "tok" / "final"
    shutil.copytree(hf, with_tok)
    _char_tokenizer().save_pretrained(with_tok)
    out = tmp_path / "out"
    assert _gfa(capsys, *_hf_prune(with_tok, out))[0] == 0
    assert (out / "tokenizer.json").is_file()
    assert _gfa(capsys, *_hf_prune(hf, out, "--force"))[0] == 0
    assert not (out / "tokenizer.json").exists()  # replaced whole, not merged
    # --force into a directory holding a planted symlink: the link is replaced, its target untouched
    target = tmp_path / "precious.json"
    target.write_text("keep me")
    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "notes.txt").write_text("mine")
    (forced / "config.json").symlink_to(target)
    assert _gfa(capsys, *_hf_prune(hf, forced, "--force"))[0] == 0
    assert target.read_text() == "keep me"
    assert not (forced / "config.json").is_symlink() and (forced / "notes.txt").read_text() == "mine"
    assert json.loads((forced / "config.json").read_text())["n_layer"] == 3


def test_full_disk_during_an_hf_prune_leaves_nothing_behind(hf, tmp_path, capsys, monkeypatch):
    real = transformers.PreTrainedModel.save_pretrained

    def full(self, path, *a, **kw):
        (Path(path) / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "res" / "out"
    _refused(capsys, *_hf_prune(hf, out), match="disk is full")
    assert list((tmp_path / "res").iterdir()) == []  # no --out, no temporary directory
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", real)
    assert _gfa(capsys, *_hf_prune(hf, out))[0] == 0  # the rerun is not refused


# ---- 5. every input is checked against what it belongs to -----------------------------------------

def test_a_swapped_run_config_is_refused(run, tmp_path, capsys):
    other = json.loads((run / CONFIG_FILE).read_text())  # the config.json of the seed-1 run
    other["config"]["train"]["seed"] = other["seed"] = 1
    other["run_id"] = recorded_run_key(other)
    assert other["run_id"] != run.name
    (run / CONFIG_FILE).write_text(json.dumps(other))
    with pytest.raises(GFAError, match="DONE"):
        load_run(run)
    _refused(capsys, "prune", run, "--method", "last", "-k", "1", "--out", tmp_path / "out")
    # a forger who also rewrites DONE still meets the checkpoint's own run id
    _rekey(run)
    with pytest.raises(GFAError, match="checkpoint.pt holds step 4 of run"):
        load_run(run)


def test_gradients_of_another_run_are_refused(run):
    g = (run / GRADIENTS_FILE).read_text().replace(run.name, "gpt-000000000000")
    (run / GRADIENTS_FILE).write_text(g)
    with pytest.raises(GFAError, match="gpt-000000000000"):
        load_run(run)


def _log(path: Path, values: list, prefix: str = "transformer.h.") -> Path:
    rows = ["unit,kind,index,quantity,step,value"] + [f"{prefix}{b},block,{b + 1},A,,{v}" for b, v in enumerate(values)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("values,match", [
    ([3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], "8 blocks and the model 4"),  # 8-layer log on a 4-layer model
    ([3.0, 2.0], "no A for transformer.h.2"),
    (["nan", 2.0, 1.0, 0.5], "finite number >= 0"),
    (["inf", 2.0, 1.0, 0.5], "finite number >= 0"),
    ([3.0, -2.0, 1.0, 0.5], "finite number >= 0"),
    ([3.0, "lots", 1.0, 0.5], "'lots'"),  # item 7: a non-numeric value
], ids=["8-on-4", "2-on-4", "nan", "inf", "negative", "not-a-number"])
def test_hf_gradient_log_must_belong_to_the_model(hf, tmp_path, capsys, values, match):
    log = _log(tmp_path / "gradients.csv", values)
    _refused(capsys, "prune", hf, "--method", "cascadeflow", "--gradients", log, "-k", "1", "--out",
             tmp_path / "out", match=match)


def test_zero_a_is_reported(hf, tmp_path, capsys):
    log = _log(tmp_path / "gradients.csv", [3.0, 0.0, 1.0, 0.5])
    code, out, err = _gfa(capsys, "prune", hf, "--method", "cascadeflow", "--gradients", log, "-k", "1",
                          "--out", tmp_path / "out", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["ranking"]["details"]["zero"] == ["transformer.h.1"]
    assert "transformer.h.1 accumulated no gradient" in err


def _edit_gradients(run: Path, fn) -> None:
    import pandas as pd

    g = pd.read_csv(run / GRADIENTS_FILE)
    fn(g).to_csv(run / GRADIENTS_FILE, index=False)


def _final_a(g):
    return (g["kind"] == "block") & (g["quantity"] == "A") & g["step"].isna()


@pytest.mark.parametrize("edit,match", [
    (lambda g: g[~(_final_a(g) & (g["unit"] == "h.2"))], "no A for h.2"),
    (lambda g: __import__("pandas").concat([g, g[_final_a(g) & (g["unit"] == "h.2")].assign(unit="h.3")]),
     "blocks the model lacks (h.3)"),
    (lambda g: g.assign(value=g["value"].where(~(_final_a(g) & (g["unit"] == "h.1")), float("nan"))),
     "finite number >= 0"),
    (lambda g: g.astype({"value": object}).assign(value=g["value"].astype(object).where(
        ~(_final_a(g) & (g["unit"] == "h.1")), "x")), "'x'"),
], ids=["fewer-blocks", "more-blocks", "nan", "not-a-number"])
def test_taper_from_run_checks_the_log_against_the_config(run, capsys, edit, match):
    _edit_gradients(run, edit)
    _refused(capsys, "taper", "--from-run", run, match=match)


def test_taper_from_run_plans_a_tiny_run_whose_gradient_grows_with_depth(run, capsys):
    """Tiny runs often end with a later block above block 1 in A; normalizing by block 1 pinned
    that block at full width and refused ("cannot reach ... x uniform params")."""
    order = {"h.0": 1.0, "h.1": 2.0, "h.2": 3.0}
    _edit_gradients(run, lambda g: g.assign(value=[order[u] if a else v for u, v, a in
                                                  zip(g["unit"], g["value"], _final_a(g))]))
    code, out, err = _gfa(capsys, "taper", "--from-run", run, "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["blocks"][-1]["multiplier"] == 1.0 and d["blocks"][0]["multiplier"] < 1.0  # the most A: full width
    assert d["params_ratio"] < 1


# ---- 6. sizes are bounded before anything is allocated --------------------------------------------

def test_layout_of_ten_million_parallel_branches_is_refused_fast(tmp_path, capsys):
    f = tmp_path / "layout.json"
    f.write_text('{"blocks": [{"branches": 10000000, "parallel": true}]}')
    _refused(capsys, "fanin", "--layout", f, match="10,000,000 branches")


@pytest.mark.parametrize("blocks", [50_000, 2 ** 31 - 1])
def test_taper_from_run_bounds_the_blocks(run, capsys, blocks):
    meta = json.loads((run / CONFIG_FILE).read_text())
    meta["config"]["model"]["n_blocks"] = blocks
    (run / CONFIG_FILE).write_text(json.dumps(meta))
    _refused(capsys, "taper", "--from-run", run, match="at most 10,000")


def test_load_run_and_prune_check_memory_before_building(run, tmp_path, capsys):
    meta = json.loads((run / CONFIG_FILE).read_text())
    meta["config"]["model"].update(n_embd=1_000_000, n_head=1)
    (run / CONFIG_FILE).write_text(json.dumps(meta))
    _rekey(run)
    with pytest.raises(GFAError, match="needs about"):
        load_run(run)
    _refused(capsys, "prune", run, "--method", "last", "-k", "1", "--out", tmp_path / "out", match="needs about")


def test_hf_model_too_big_for_memory_is_refused_before_loading(hf, tmp_path, capsys):
    _edit_config(hf, n_embd=1_000_000, n_head=1)
    _refused(capsys, *_hf_prune(hf, tmp_path / "out"), match="needs about")


def test_calibration_size_is_bounded(hf, tmp_path, capsys):
    _refused(capsys, "prune", hf, "--method", "bi", "-k", "1", "--out", tmp_path / "out", "--calib-batches", 10_000,
             "--batch-size", 10_000, "--seq-len", 10_000, match="--calib-batches")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory-less"])
def test_gradient_log_must_be_a_regular_file(hf, tmp_path, capsys, kind):
    if kind == "dev-zero":
        log = Path("/dev/zero")
    elif kind == "fifo":
        log = tmp_path / "fifo"
        os.mkfifo(log)
    else:
        log = tmp_path / "missing.csv"
    _refused(capsys, "prune", hf, "--method", "cascadeflow", "--gradients", log, "-k", "1", "--out", tmp_path / "out",
             match=str(log))


def test_run_table_on_a_device_is_refused(run):
    (run / GRADIENTS_FILE).unlink()
    (run / GRADIENTS_FILE).symlink_to("/dev/zero")
    with pytest.raises(GFAError, match="not a regular file"):
        load_run(run)


# ---- 7. one line for every failure, with a message that names the file and the fix -----------------

@pytest.mark.parametrize("case,match", [
    ("n_layer-four", "n_layer"),
    ("deep-json", "nests deeper"),
    ("not-json", "not valid JSON"),
    ("zero-layers", "0 layers"),
    ("truncated-safetensors", "truncated"),
])
def test_malformed_hf_directories_are_one_line(hf, tmp_path, capsys, case, match):
    if case == "n_layer-four":
        _edit_config(hf, n_layer="four")
    elif case == "deep-json":
        (hf / "config.json").write_text("[" * 100_000)
    elif case == "not-json":
        (hf / "config.json").write_text('{"model_type": "gpt2", ')
    elif case == "zero-layers":
        _edit_config(hf, n_layer=0)
    else:
        data = (hf / "model.safetensors").read_bytes()
        (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
    line = _refused(capsys, *_hf_prune(hf, tmp_path / "out"), match=match)
    assert "gfa train" not in line and "0..-1" not in line


@pytest.mark.parametrize("model,match", [
    ({"n_blocks": 4, "n_head": []}, "'n_head'"),
    ({"n_blocks": 4, "n_head": [4, "a"]}, "'n_head'"),
    ({"n_blocks": "4"}, "'n_blocks'"),
    ("DEEP", "nests deeper"),
], ids=["n_head-empty", "n_head-string", "n_blocks-string", "deep"])
def test_taper_model_config_is_checked(tmp_path, capsys, model, match):
    f = tmp_path / "model.json"
    f.write_text("[" * 100_000 if model == "DEEP" else json.dumps(model))
    _refused(capsys, "taper", "--model-config", f, match=match)


def test_deeply_nested_run_config_is_one_line(run, tmp_path, capsys):
    (run / CONFIG_FILE).write_text("[" * 100_000)
    with pytest.raises(GFAError, match="nests deeper"):
        load_run(run)
    _refused(capsys, "prune", run, "--method", "last", "-k", "1", "--out", tmp_path / "out", match="nests deeper")
