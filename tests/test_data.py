"""Data: the fixed corpus and its hash, deterministic splits and batches, clear errors."""
import gzip
import hashlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import gfa_theory.train.data as data_mod
from gfa_theory.errors import ConfigError, DataError
from gfa_theory.config import config_hash, to_dict
from gfa_theory.train.data import (
    CORPUS_SHA256,
    DOCUMENT_SEPARATOR,
    STDLIB_SHA256,
    BatchSampler,
    DataConfig,
    eval_batches,
    in_validation,
    load_data,
    make_document_data,
    make_text_data,
    pydoc_corpus,
    stdlib_corpus,
)
from gfa_theory.train.run_config import RunConfig, build_run_config, resolve, training_epochs

# sha256 of the shipped default corpus (CPython 3.11.7's pydoc_data.topics, sorted-key order):
# the number every recorded result names; it must not move with the running Python.
PINNED_CORPUS_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"


# sha256 of the shipped source-code corpus (data.corpus=stdlib; corpus/build_stdlib.py rebuilds it).
PINNED_STDLIB_SHA256 = "1a7a86e2f23d095959f1c87c1875ec47e7867bbd728731167cdb816e5c877344"
# The default profile's run ids less their numerics key (torch version, device type, CPU
# instruction set: those differ between machines), sorted, one a line, hashed: computed with the
# code before data.corpus existed. A new data option left at its default must not move them.
PINNED_DEFAULT_PROFILE_IDS = (93, "5d5f0975c5c745be7414081dfed723c77b10dc01578dc98d18932b863e4f029a")


@pytest.fixture(scope="module")
def corpus():
    return load_data(DataConfig())


def test_pydoc_corpus_is_fixed_and_hashed(corpus):
    text = pydoc_corpus()
    assert CORPUS_SHA256 == PINNED_CORPUS_SHA256
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == PINNED_CORPUS_SHA256
    assert corpus.sha256 == PINNED_CORPUS_SHA256
    assert corpus.source == "gfa_theory/train/corpus/pydoc_topics.txt.gz (pydoc_data.topics of CPython 3.11.7)"
    assert corpus.vocab == "".join(sorted(set(text)))
    # contiguous split: the last 10 % validates, nothing lost or reordered
    assert len(corpus.val) == round(0.1 * len(text))
    assert corpus.decode(torch.cat([corpus.train, corpus.val])) == text
    assert corpus.decode(corpus.encode("def f(x):")) == "def f(x):"


def test_default_corpus_is_shipped_not_read_from_the_running_python(monkeypatch):
    """The default corpus is package data: another Python's pydoc_data changes nothing."""
    raw = data_mod.CORPUS_FILE.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0: the file is byte-reproducible
    fake = types.ModuleType("pydoc_data.topics")
    fake.topics = {"a": "a different Python's topics"}
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", fake)
    data_mod._load_cached.cache_clear()
    try:
        assert hashlib.sha256(pydoc_corpus().encode("utf-8")).hexdigest() == PINNED_CORPUS_SHA256
        assert load_data(DataConfig()).sha256 == PINNED_CORPUS_SHA256
    finally:
        data_mod._load_cached.cache_clear()


@pytest.mark.parametrize("content, match", [
    (None, "is unreadable"),
    (b"plain text, not gzip", "is corrupt"),
    ("truncated", "is corrupt"),
    (gzip.compress(b"\xff\xfe not UTF-8", mtime=0), "is corrupt"),
    (gzip.compress("some other corpus".encode("utf-8"), mtime=0), r"is corrupt \(sha256 \w{12}, expected 37d06970fc92\)"),
], ids=["missing", "not-gzip", "truncated", "not-utf8", "wrong-text"])
def test_damaged_default_corpus_is_a_one_line_error(tmp_path, monkeypatch, content, match):
    p = tmp_path / "pydoc_topics.txt.gz"
    if content == "truncated":
        content = data_mod.CORPUS_FILE.read_bytes()[:1000]
    if content is not None:
        p.write_bytes(content)
    monkeypatch.setattr(data_mod, "CORPUS_FILE", p)
    data_mod._load_cached.cache_clear()
    try:
        with pytest.raises(DataError, match=match) as err:
            load_data(DataConfig())
    finally:
        data_mod._load_cached.cache_clear()
    message = str(err.value)
    assert "\n" not in message and "default text corpus" in message and "reinstall gfa-theory" in message


@pytest.fixture(scope="module")
def stdlib():
    return load_data(DataConfig(corpus="stdlib"))


def test_stdlib_corpus_is_pinned_bounded_and_split_by_whole_file(stdlib):
    text = stdlib_corpus()
    assert STDLIB_SHA256 == PINNED_STDLIB_SHA256 == stdlib.sha256
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == PINNED_STDLIB_SHA256
    assert len(text) == 12_227_966 and len(stdlib.train) + len(stdlib.val) == len(text)
    # bounded vocabulary: newline, printable ASCII, the file separator, the unknown symbol
    assert stdlib.vocab == "".join(sorted(set(text))) and stdlib.vocab_size == 98
    assert set(stdlib.vocab) <= set("\n\x1e\ufffd" + "".join(map(chr, range(32, 127))))
    docs = [d + DOCUMENT_SEPARATOR for d in text.split(DOCUMENT_SEPARATOR)[:-1]]
    assert len(docs) == 845
    vocab = np.array(list(stdlib.vocab))
    val_text = "".join(vocab[stdlib.val.numpy()])
    val_docs = [d + DOCUMENT_SEPARATOR for d in val_text.split(DOCUMENT_SEPARATOR)[:-1]]
    # whole files validate, spread over the corpus, about val_fraction of it
    assert "".join(val_docs) == val_text and set(val_docs) <= set(docs)
    assert val_docs == [d for d in docs if in_validation(d, 0.1)]
    positions = [docs.index(d) for d in val_docs]
    assert positions[0] < 200 and positions[-1] > 645
    assert 0.05 < len(stdlib.val) / len(text) < 0.2
    train_head = "".join(vocab[stdlib.train[:5000].numpy()])
    assert train_head == "".join(d for d in docs if d not in set(val_docs))[:5000]


def test_stdlib_manifest_matches_the_shipped_corpus():
    """The build script's file list (sha256 of each file's bytes, characters, path) describes the
    shipped corpus document by document: an audit needs no rebuild to see which file is where."""
    lines = (data_mod.STDLIB_FILE.parent / "stdlib_py_files.txt").read_text(encoding="utf-8").splitlines()
    rows = [ln.split() for ln in lines if not ln.startswith("#")]
    assert PINNED_STDLIB_SHA256 in lines[1]
    paths = [r[2] for r in rows]
    assert paths == sorted(paths) and len(set(paths)) == 845
    assert not any(p.split("/")[0] in ("test", "encodings", "pydoc_data", "site-packages") for p in paths)
    docs = stdlib_corpus().split(DOCUMENT_SEPARATOR)[:-1]
    assert [int(r[1]) for r in rows] == [len(d) for d in docs]
    assert docs[paths.index("__future__.py")].startswith('"""Record of phased-in incompatible language changes.')
    assert data_mod.STDLIB_FILE.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_document_split_rules():
    docs = [f"doc {k}\n" + DOCUMENT_SEPARATOR for k in range(200)]
    d = make_document_data("".join(docs), 0.25, "docs")
    val = [x for x in docs if in_validation(x, 0.25)]
    assert 30 < len(val) < 70  # about a quarter of the documents
    assert d.decode(d.val) == "".join(val) and d.decode(d.train) == "".join(x for x in docs if x not in val)
    with pytest.raises(DataError, match="ended by U\\+001E"):
        make_document_data("no separator at the end", 0.1, "docs")
    with pytest.raises(DataError, match="leaves a split with fewer than 2"):
        make_document_data("".join(docs[:3]), 1e-9, "docs")


@pytest.mark.parametrize("content, match", [
    ("truncated", "is corrupt"),
    (gzip.compress("x\x1e".encode("utf-8"), mtime=0), r"is corrupt \(sha256 \w{12}, expected 1a7a86e2f23d\)"),
], ids=["truncated", "wrong-text"])
def test_damaged_stdlib_corpus_is_a_one_line_error(tmp_path, monkeypatch, capsys, content, match):
    p = tmp_path / "stdlib_py.txt.gz"
    p.write_bytes(data_mod.STDLIB_FILE.read_bytes()[:1000] if content == "truncated" else content)
    monkeypatch.setattr(data_mod, "STDLIB_FILE", p)
    data_mod._load_cached.cache_clear()
    try:
        with pytest.raises(DataError, match=match) as err:
            load_data(DataConfig(corpus="stdlib"))
        from gfa_theory.cli import main  # noqa: PLC0415
        code = main(["train", "--model", "gpt", "--no-progress", "--out", str(tmp_path / "runs"),
                     "--set", "data.corpus=stdlib", "train.steps=1"])
    finally:
        data_mod._load_cached.cache_clear()
    assert "\n" not in str(err.value) and "stdlib text corpus" in str(err.value)
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and len(stderr.splitlines()) == 1 and "stdlib text corpus" in stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_corpus_option_keeps_every_default_hash():
    assert "corpus" not in to_dict(DataConfig())
    assert DataConfig(corpus="pydoc") == DataConfig()  # the default, however it is written
    default = build_run_config("gpt")
    assert build_run_config("gpt", overrides=["data.corpus=pydoc"]).hash() == default.hash()
    assert build_run_config("gpt", overrides=["data.corpus=stdlib"]).hash() != default.hash()
    for bad, match in [(["data.corpus=stdlib", "data.text_file=x.txt"], "set one"),
                       (["data.corpus=web"], "data.corpus")]:
        with pytest.raises(ConfigError, match=match):
            build_run_config("gpt", overrides=bad)
    with pytest.raises(ConfigError, match="only applies to dataset 'text'"):
        DataConfig(dataset="digits", corpus="stdlib")


def test_default_profile_run_ids_are_unchanged():
    import importlib  # noqa: PLC0415

    ids = set()
    for name in ("cascadeformer", "equalization", "fanin_vs_gradients", "gradients_vs_importance",
                 "mechanism", "pruning", "repetition"):
        for _, cfg in importlib.import_module(f"experiments.{name}").configs("default"):
            if isinstance(cfg, RunConfig):
                resolved, data = resolve(cfg)
                ids.add(f"{resolved.model_name}-"
                        f"{config_hash({'config': to_dict(resolved), 'data_sha256': data.sha256})}")
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    assert (len(ids), digest) == PINNED_DEFAULT_PROFILE_IDS


def test_epochs_of_a_run(corpus, stdlib):
    cfg = build_run_config("gpt")  # 400 steps of 32 windows of 64 tokens
    assert training_epochs(cfg) == pytest.approx(400 * 32 * 64 / len(corpus.train))
    assert corpus.epochs(len(corpus.train)) == 1.0
    big = build_run_config("gpt", overrides=["data.corpus=stdlib"])
    assert training_epochs(big) == pytest.approx(400 * 32 * 64 / len(stdlib.train))
    assert training_epochs(build_run_config("resnet")) == pytest.approx(600 * 64 / len(load_data(
        DataConfig(dataset="digits")).y_train))


def test_text_file_roundtrip_and_split(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abcabcabcd" * 10, encoding="utf-8")
    d = load_data(DataConfig(text_file=str(p), val_fraction=0.2))
    assert d.vocab == "abcd" and d.vocab_size == 4
    assert len(d.train) == 80 and len(d.val) == 20
    assert d.decode(d.val) == ("abcabcabcd" * 10)[-20:]
    assert d.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    # a changed file is reloaded, not served from the cache
    p.write_text("xyzxyzxyz" * 20, encoding="utf-8")
    assert load_data(DataConfig(text_file=str(p), val_fraction=0.2)).vocab == "xyz"


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"", "is empty"),
    (b"ok \xff\xfe bad", "not UTF-8"),
], ids=["missing", "empty", "not-utf8"])
def test_text_file_errors(tmp_path, content, match):
    p = tmp_path / "corpus.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_data(DataConfig(text_file=str(p)))


def test_text_batches_seeded_resumable_and_shifted(corpus):
    a = BatchSampler(corpus, 8, seed=3, seq_len=16)
    b = BatchSampler(corpus, 8, seed=3, seq_len=16)
    xa, ya = a.next()
    xb, yb = b.next()
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (8, 16) and torch.equal(xa[:, 1:], ya[:, :-1])  # next-token targets
    state = a.state_dict()
    want = [a.next() for _ in range(3)]
    c = BatchSampler(corpus, 8, seed=99, seq_len=16)
    c.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(want, [c.next() for _ in range(3)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(BatchSampler(corpus, 8, seed=4, seq_len=16).next()[0], xa)


@pytest.mark.parametrize("dataset", ["text", "digits"])
def test_ranks_split_the_global_batch(corpus, dataset):
    data = corpus if dataset == "text" else load_data(DataConfig(dataset="digits"))
    seq = 16 if dataset == "text" else None
    whole = BatchSampler(data, 8, seed=0, seq_len=seq).next()
    parts = [BatchSampler(data, 8, seed=0, seq_len=seq, rank=r, world_size=2).next() for r in range(2)]
    for k in range(2):
        assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
    with pytest.raises(ConfigError, match="not divisible"):
        BatchSampler(data, 7, seed=0, seq_len=seq, world_size=2)


def test_digits_split_is_stratified_seeded_and_normalized():
    d = load_data(DataConfig(dataset="digits"))
    assert d.x_train.shape[1:] == (1, 8, 8) and d.n_classes == 10 and d.in_channels == 1
    assert len(d.y_train) + len(d.y_val) == 1797
    # stratified: every class keeps its share in the validation split
    val_share = np.bincount(d.y_val.numpy(), minlength=10) / len(d.y_val)
    all_share = np.bincount(np.concatenate([d.y_train.numpy(), d.y_val.numpy()]), minlength=10) / 1797
    assert np.abs(val_share - all_share).max() < 0.01
    x, _ = d.items("train", torch.arange(len(d.y_train)))
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3
    again = load_data(DataConfig(dataset="digits", split_seed=0))
    other = load_data(DataConfig(dataset="digits", split_seed=1))
    assert torch.equal(again.y_val, d.y_val) and not torch.equal(other.y_val, d.y_val)
    assert other.sha256 == d.sha256  # the hash identifies the data, not the split


def test_image_epochs_without_replacement():
    d = load_data(DataConfig(dataset="digits"))
    n = len(d.y_train)
    s = BatchSampler(d, n // 4 + 1, seed=0)
    seen = torch.cat([s._global_index() for _ in range(4)])
    first_epoch = seen[:n]
    assert torch.equal(first_epoch.sort().values, torch.arange(n))


def test_eval_batches_are_fixed(corpus):
    a = list(eval_batches(corpus, "val", 4, 3, seq_len=8))
    b = list(eval_batches(corpus, "val", 4, 3, seq_len=8))
    assert len(a) == 3 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    d = load_data(DataConfig(dataset="digits"))
    batches = list(eval_batches(d, "val", 64, 0))  # 0: the whole split
    assert sum(len(y) for _, y in batches) == len(d.y_val)


def test_cifar10_missing_files_named(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1\.\.5, test_batch"):
        load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "cifar10"}, "needs data.data_dir"),
    ({"dataset": "digits", "text_file": "a.txt"}, "only applies to dataset 'text'"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"download": True}, "download only applies"),
], ids=["cifar-no-dir", "text-file-on-images", "val-fraction", "download-on-text"])
def test_data_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kwargs)


def test_too_short_corpus():
    d = make_text_data("abcdefghij" * 3, 0.1, "short")
    with pytest.raises(DataError, match="too short"):
        BatchSampler(d, 2, seed=0, seq_len=8)


# ---- image batches: one definite memory format (the oneDNN AVX2 crash) ----------------------------
def _standard(x: torch.Tensor) -> bool:
    return x.stride() == torch.empty(x.shape).stride()


def test_image_batches_have_standard_contiguous_strides():
    """Digits images have one channel, so ``x[index]`` has strides like (64, 1, 8, 1): contiguous
    and channels_last at once, and oneDNN's AVX2 convolution backward corrupts the heap on them.
    Every batch leaving the data layer must have the strides of a fresh tensor."""
    from types import SimpleNamespace

    from gfa_theory.methods.pruning import calibration_batches

    d = load_data(DataConfig(dataset="digits"))
    assert not _standard(d.x_train)  # the stored images really are ambiguous
    sampler = BatchSampler(d, 16, seed=0)
    ranked = BatchSampler(d, 16, seed=0, rank=1, world_size=2)
    cfg = SimpleNamespace(train=SimpleNamespace(batch_size=16), model_name="resnet")
    batches = [sampler.next() for _ in range(3)] + [ranked.next()] + list(eval_batches(d, "val", 16, 0)) \
        + list(eval_batches(d, "train", 7, 2)) + calibration_batches(cfg, d, 2)
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert _standard(x), x.stride()
        assert y.dtype == torch.long and y.is_contiguous()


_CONV_ON_DATA_BATCHES = """
import torch
torch.set_num_threads(1)
from gfa_theory.train.data import BatchSampler, DataConfig, eval_batches, load_data
from gfa_theory.models import build_model
from gfa_theory.train.run_config import build_run_config
cfg = build_run_config("resnet", overrides=["model.blocks_per_stage=[1,1]", "model.widths=[4,8]"])
torch.manual_seed(0)
model = build_model("resnet", cfg.model).train()
data = load_data(DataConfig(dataset="digits"))
sampler = BatchSampler(data, 16, seed=0)
batches = [sampler.next() for _ in range(4)] + list(eval_batches(data, "val", 16, 2))
for x, y in batches:
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
print("conv ok")
"""


def test_resnet_forward_backward_on_data_layer_batches_under_avx2():
    """The package's ResNet, forward and backward, on batches the data layer really produces, in a
    fresh process with oneDNN capped at AVX2 (as on x86 CPUs without AVX-512) and one thread:
    with the ambiguous strides this aborted with heap corruption. The cap is ignored off x86."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CONV_ON_DATA_BATCHES], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "conv ok" in proc.stdout, \
        f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[:3]}"
