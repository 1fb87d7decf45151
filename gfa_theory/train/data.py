"""Training data that ships with installed packages: nothing is downloaded at run time.

* **text** (for the Transformer): the default corpus is the CPython 3.11.7 documentation topics
  (:mod:`pydoc_data.topics` joined in sorted-key order), shipped inside this package as
  ``gfa_theory/train/corpus/pydoc_topics.txt.gz`` and checked against :data:`CORPUS_SHA256` on load,
  so it is identical on every supported Python (the running Python's own ``pydoc_data`` differs
  between releases and is never read). The text is Python documentation, (c) Python Software
  Foundation, PSF License (see ``gfa_theory/train/corpus/README.txt``). ``text_file`` reads any UTF-8
  file instead. Character-level vocabulary (the sorted set of characters), the first
  ``1 - val_fraction`` of the characters train, the rest validate.
* **source code** (``data.corpus=stdlib``, for runs that need more tokens): 845 Python files of the
  CPython 3.11.7 standard library (12.2 M characters), shipped as ``corpus/stdlib_py.txt.gz`` and
  checked against :data:`STDLIB_SHA256`; rebuilt and audited by ``corpus/build_stdlib.py``. Its
  vocabulary is bounded by construction: tab, newline, printable ASCII, the document separator
  U+001E and the unknown symbol U+FFFD (every other character, 381 in all). Whole files
  validate: a file goes to validation when the first 8 bytes of its text's sha256, read as a
  fraction of 2**64, fall below ``val_fraction``, so windows never straddle the split and the
  held-out files come from every package, not only the last ones in sorted order.
* **images** (for the ResNet): scikit-learn's 8x8 digits (default; stratified split seeded by
  ``split_seed``) or CIFAR-10 read by torchvision from ``data_dir`` (downloaded only when
  ``download`` is true).

Batches come from :class:`BatchSampler`, driven by its own ``torch.Generator`` whose state is
part of every training checkpoint. Evaluation batches are fixed (the same windows / images at
every evaluation and for every training seed), so validation curves are comparable.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import numpy as np
import torch

from gfa_theory.config import check_seed
from gfa_theory.errors import ConfigError, DataError

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")
CIFAR10_FOLDER = "cifar-10-batches-py"

# The default text corpus, shipped as package data (see the module docstring).
CORPUS_FILE = Path(__file__).parent / "corpus" / "pydoc_topics.txt.gz"
CORPUS_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"  # decoded text
CORPUS_ORIGIN = "CPython 3.11.7"
# The source-code corpus (data.corpus=stdlib), shipped the same way (see the module docstring).
STDLIB_FILE = Path(__file__).parent / "corpus" / "stdlib_py.txt.gz"
STDLIB_SHA256 = "1a7a86e2f23d095959f1c87c1875ec47e7867bbd728731167cdb816e5c877344"  # decoded text
DOCUMENT_SEPARATOR = "\x1e"  # ends every file of the stdlib corpus (build_stdlib.py)
CORPORA = ("pydoc", "stdlib")  # data.corpus values; "pydoc" (the default) is stored as None


@dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on.

    ``dataset``: "text" (Transformer), "digits" or "cifar10" (ResNet). ``text_file``: a UTF-8
    file for "text" (None: the CPython docs corpus). ``data_dir``: the folder that holds
    ``cifar-10-batches-py/`` for "cifar10". ``split_seed`` fixes the digits train/validation
    split and the text evaluation windows independently of the training seed, so every seed is
    scored on the same held-out data. ``corpus``: which shipped text corpus "text" reads,
    "pydoc" (the default, stored as None and left out of the config so existing runs keep their
    hashes) or "stdlib" (Python source code, 26 times larger).
    """

    dataset: Literal["text", "digits", "cifar10"] = "text"
    text_file: Union[str, None] = None
    val_fraction: float = 0.1
    data_dir: Union[str, None] = None
    download: bool = False
    split_seed: int = 0
    corpus: Union[Literal["pydoc", "stdlib"], None] = field(default=None, metadata={"omit_if_none": True})

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check_seed("data.split_seed", self.split_seed)
        if self.corpus == "pydoc":  # the default is one value, whichever way it was written
            object.__setattr__(self, "corpus", None)
        if self.corpus is not None and self.dataset != "text":
            raise ConfigError(f"data.corpus only applies to dataset 'text', not '{self.dataset}'")
        if self.corpus is not None and self.text_file is not None:
            raise ConfigError("data.corpus and data.text_file both choose the text: set one")
        if self.text_file is not None and self.dataset != "text":
            raise ConfigError(f"data.text_file only applies to dataset 'text', not '{self.dataset}'")
        if self.dataset == "cifar10" and self.data_dir is None:
            raise ConfigError("dataset 'cifar10' needs data.data_dir (the folder holding "
                              f"{CIFAR10_FOLDER}/)")
        if self.download and self.dataset != "cifar10":
            raise ConfigError("data.download only applies to dataset 'cifar10'")

    @property
    def task(self) -> Literal["text", "image"]:
        return "text" if self.dataset == "text" else "image"


# ---- text ---------------------------------------------------------------------------------

@dataclass
class TextData:
    """A character-level corpus split into train / validation token streams (int64)."""

    vocab: str
    train: torch.Tensor
    val: torch.Tensor
    sha256: str
    source: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        index = {ch: k for k, ch in enumerate(self.vocab)}
        try:
            return torch.tensor([index[ch] for ch in text], dtype=torch.long)
        except KeyError as exc:
            raise DataError(f"character {exc.args[0]!r} is not in the corpus vocabulary") from None

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.vocab[int(k)] for k in ids)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def windows(self, split: str, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``x`` (B, T) and next-token targets ``y`` (B, T) at the given offsets."""
        tokens = self.split(split)
        idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]  # (B, T+1)
        chunk = tokens[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def epochs(self, tokens: int | float) -> float:
        """Passes over the training split that ``tokens`` training tokens make (a study refuses or
        flags a point above about one: beyond it the model can memorize the split)."""
        return float(tokens) / len(self.train)

    def check_seq_len(self, seq_len: int) -> None:
        shortest = min(len(self.train), len(self.val))
        if seq_len + 1 > shortest:
            raise DataError(f"text corpus too short: the smaller split has {shortest} characters, "
                            f"a training window needs seq_len + 1 = {seq_len + 1}")


def _shipped_text(path: str | os.PathLike, sha256: str, what: str) -> str:
    """A corpus shipped as package data, gunzipped, decoded and checked against ``sha256``;
    damage is a one-line :class:`DataError`."""
    path = Path(path)
    fix = "reinstall gfa-theory (pip install --force-reinstall gfa-theory) or set data.text_file"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{what} {path} is unreadable ({exc.strerror or exc}); {fix}") from None
    try:
        text = gzip.decompress(raw).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} {path} is corrupt ({reason}); {fix}") from None
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if sha != sha256:
        raise DataError(f"{what} {path} is corrupt (sha256 {sha[:12]}, expected {sha256[:12]}); {fix}")
    return text


def pydoc_corpus() -> str:
    """The shipped default corpus: CPython 3.11.7's ``pydoc_data.topics`` joined in sorted-key
    order, read from :data:`CORPUS_FILE` and verified against :data:`CORPUS_SHA256`."""
    return _shipped_text(CORPUS_FILE, CORPUS_SHA256, "default text corpus")


def stdlib_corpus() -> str:
    """The shipped source-code corpus (``data.corpus=stdlib``): 845 files of CPython 3.11.7's
    standard library, each ended by :data:`DOCUMENT_SEPARATOR`, read from :data:`STDLIB_FILE` and
    verified against :data:`STDLIB_SHA256`."""
    return _shipped_text(STDLIB_FILE, STDLIB_SHA256, "stdlib text corpus")


def read_text_file(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.exists():
        raise DataError(f"text file not found: {p}")
    if not p.is_file():
        raise DataError(f"text file is not a regular file: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {p} is not UTF-8 (invalid byte at offset {exc.start})") from None
    if not text:
        raise DataError(f"text file {p} is empty")
    return text


def _encoder(vocab: str):
    """Text -> int64 token ids of ``vocab`` (every character of the text must be in it)."""
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(ch) for ch in vocab]] = np.arange(len(vocab))
    return lambda text: torch.from_numpy(lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)])


def make_text_data(text: str, val_fraction: float, source: str) -> TextData:
    """Character vocabulary + a deterministic contiguous split (the last ``val_fraction``)."""
    if not text:
        raise DataError(f"text corpus {source} is empty")
    vocab = "".join(sorted(set(text)))
    tokens = _encoder(vocab)(text)
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    if len(tokens) - n_val < 2:
        raise DataError(f"text corpus {source} has only {len(tokens)} characters: too short to split")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TextData(vocab, tokens[:-n_val].clone(), tokens[-n_val:].clone(), sha, source)


def in_validation(document: str, val_fraction: float) -> bool:
    """Whether a whole document validates: the first 8 bytes of its sha256, as a fraction of
    2**64, fall below ``val_fraction`` (decided by its content alone, not its position)."""
    head = hashlib.sha256(document.encode("utf-8")).digest()[:8]
    return int.from_bytes(head, "big") < val_fraction * 2 ** 64


def make_document_data(text: str, val_fraction: float, source: str) -> TextData:
    """A corpus of documents, each ended by :data:`DOCUMENT_SEPARATOR`, split by whole document
    (:func:`in_validation`); each split is its documents in corpus order, separators kept (the
    model sees where a file ends). The vocabulary is the sorted set of the whole text's characters."""
    docs = [doc + DOCUMENT_SEPARATOR for doc in text.split(DOCUMENT_SEPARATOR)[:-1]]
    if not docs or "".join(docs) != text:
        raise DataError(f"text corpus {source} is not a sequence of documents each ended by U+001E")
    val = [in_validation(doc, val_fraction) for doc in docs]
    train_text = "".join(d for d, v in zip(docs, val) if not v)
    val_text = "".join(d for d, v in zip(docs, val) if v)
    if len(train_text) < 2 or len(val_text) < 2:
        raise DataError(f"text corpus {source}: data.val_fraction={val_fraction} leaves a split "
                        f"with fewer than 2 characters ({len(train_text)} train, {len(val_text)} validation)")
    vocab = "".join(sorted(set(text)))
    encode = _encoder(vocab)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TextData(vocab, encode(train_text), encode(val_text), sha, source)


# ---- images -------------------------------------------------------------------------------

@dataclass
class ImageData:
    """Images kept raw (uint8 / small ints, to keep CIFAR-10 compact) and normalized per batch.

    A batch is ``(x.float() / scale - mean) / std`` with per-channel ``mean``/``std`` computed
    on the training split.
    """

    x_train: torch.Tensor  # (N, C, H, W), raw
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    scale: float
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    n_classes: int
    sha256: str
    source: str

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return (self.x_train, self.y_train) if name == "train" else (self.x_val, self.y_val)

    def items(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized images ``x`` (B, C, H, W) float32 with standard contiguous strides, labels ``y``.

        Every image batch leaves the data layer through here (training, evaluation, pruning
        calibration), in one definite memory format: the strides of ``torch.empty(shape)``.
        With one channel, ``x[index]`` keeps the stored strides, e.g. (64, 1, 8, 1) for digits,
        which are contiguous and channels_last at once (``.contiguous()`` leaves them as they
        are), and oneDNN's AVX2 convolution backward (torch 2.14.1, x86 CPUs without AVX-512)
        corrupts the heap on such input. ``clone(memory_format=contiguous_format)`` always
        allocates fresh standard strides.
        """
        x, y = self.split(split)
        xb = x[index].float().div_(self.scale)
        xb = (xb - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return xb.clone(memory_format=torch.contiguous_format), y[index]


def _normalizer(x_train: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    xs = x_train.astype(np.float64) / scale
    mean = xs.mean(axis=(0, 2, 3))
    std = xs.std(axis=(0, 2, 3))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _array_sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_digits_data(val_fraction: float, split_seed: int) -> ImageData:
    from sklearn.datasets import load_digits  # noqa: PLC0415  (scikit-learn: only for image runs)
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    x = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = digits.target.astype(np.int64)
    sha = _array_sha(x, y)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, stratify=y,
                                              random_state=split_seed)
    mean, std = _normalizer(x_tr, 16.0)
    return ImageData(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_va),
                     torch.from_numpy(y_va), 16.0, mean, std, 10, sha, "sklearn.datasets.load_digits")


def cifar10_missing(data_dir: str | os.PathLike) -> list[str]:
    folder = Path(data_dir) / CIFAR10_FOLDER
    return [name for name in CIFAR10_FILES if not (folder / name).is_file()]


def load_cifar10_data(data_dir: str, download: bool) -> ImageData:
    """CIFAR-10 from ``data_dir``: the official train set trains, the test batch validates."""
    from torchvision.datasets import CIFAR10  # noqa: PLC0415  (torchvision: only for CIFAR-10 runs)

    missing = cifar10_missing(data_dir)
    if missing and not download:
        raise DataError(
            f"CIFAR-10 not found in {data_dir}: expected {CIFAR10_FOLDER}/data_batch_1..5, "
            f"test_batch and batches.meta (missing: {', '.join(missing)}); "
            "set data.download=true to fetch it")
    try:
        train = CIFAR10(root=data_dir, train=True, download=download)
        test = CIFAR10(root=data_dir, train=False, download=False)
    except RuntimeError as exc:  # torchvision's integrity check failed
        raise DataError(f"CIFAR-10 in {data_dir} is unreadable: {exc}") from None
    x_tr = train.data.transpose(0, 3, 1, 2).copy()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    x_va = test.data.transpose(0, 3, 1, 2).copy()
    y_tr = np.asarray(train.targets, dtype=np.int64)
    y_va = np.asarray(test.targets, dtype=np.int64)
    sha = _array_sha(x_tr, y_tr, x_va, y_va)
    mean, std = _normalizer(x_tr, 255.0)
    return ImageData(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_va),
                     torch.from_numpy(y_va), 255.0, mean, std, 10, sha,
                     f"torchvision CIFAR10 ({CIFAR10_FOLDER})")


# ---- entry point --------------------------------------------------------------------------

Dataset = Union[TextData, ImageData]


def _file_stamp(cfg: DataConfig) -> tuple:
    """Cache key part that changes when the data file changes on disk."""
    if cfg.dataset != "text":
        return ()
    try:
        st = os.stat(cfg.text_file if cfg.text_file is not None
                     else STDLIB_FILE if cfg.corpus == "stdlib" else CORPUS_FILE)
    except OSError:
        return ("missing",)
    return (st.st_size, st.st_mtime_ns)


def load_data(cfg: DataConfig) -> Dataset:
    """Load (and cache in-process) the dataset described by ``cfg``."""
    return _load_cached(cfg, _file_stamp(cfg))


@functools.lru_cache(maxsize=8)
def _load_cached(cfg: DataConfig, stamp: tuple) -> Dataset:
    if cfg.dataset == "text":
        if cfg.corpus == "stdlib":
            source = f"gfa_theory/train/corpus/stdlib_py.txt.gz (standard library of {CORPUS_ORIGIN})"
            return make_document_data(stdlib_corpus(), cfg.val_fraction, source)
        if cfg.text_file is None:
            source = f"gfa_theory/train/corpus/pydoc_topics.txt.gz (pydoc_data.topics of {CORPUS_ORIGIN})"
            return make_text_data(pydoc_corpus(), cfg.val_fraction, source)
        return make_text_data(read_text_file(cfg.text_file), cfg.val_fraction, str(cfg.text_file))
    if cfg.dataset == "digits":
        return load_digits_data(cfg.val_fraction, cfg.split_seed)
    return load_cifar10_data(cfg.data_dir, cfg.download)


# ---- batches ------------------------------------------------------------------------------

class BatchSampler:
    """Seeded training batches: random text windows, or image epochs without replacement.

    Every rank of a distributed run holds an identical sampler and draws the same *global*
    batch; :meth:`next` then returns this rank's contiguous slice, so the union over ranks is
    exactly the batch a single process would train on.
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, seq_len: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size={batch_size} is not divisible by the "
                              f"{world_size} distributed processes")
        if isinstance(data, TextData):
            if seq_len is None:
                raise ValueError("text batches need seq_len")
            data.check_seq_len(seq_len)
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self._perm: torch.Tensor | None = None  # current image epoch
        self._pos = 0

    def _global_index(self) -> torch.Tensor:
        if isinstance(self.data, TextData):
            high = len(self.data.train) - self.seq_len
            return torch.randint(0, high, (self.batch_size,), generator=self.generator)
        n = len(self.data.y_train)
        parts, need = [], self.batch_size
        while need:
            if self._perm is None or self._pos >= n:
                self._perm, self._pos = torch.randperm(n, generator=self.generator), 0
            take = self._perm[self._pos:self._pos + need]
            parts.append(take)
            self._pos += len(take)
            need -= len(take)
        return torch.cat(parts)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._global_index()
        per_rank = self.batch_size // self.world_size
        index = index[self.rank * per_rank:(self.rank + 1) * per_rank]
        if isinstance(self.data, TextData):
            return self.data.windows("train", index, self.seq_len)
        return self.data.items("train", index)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm, self._pos = state["perm"], int(state["pos"])


def eval_batches(data: Dataset, split: str, batch_size: int, n_batches: int,
                 seq_len: int | None = None, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed evaluation batches of a split (identical at every call).

    Text: ``n_batches`` batches of random windows drawn from a generator seeded with ``seed``.
    Images: the split in order, at most ``n_batches`` batches (``n_batches <= 0``: all of it).
    """
    if isinstance(data, TextData):
        tokens = data.split(split)
        g = torch.Generator().manual_seed(seed)
        for _ in range(n_batches):
            starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=g)
            yield data.windows(split, starts, seq_len)
        return
    n = len(data.split(split)[1])
    stop = n if n_batches <= 0 else min(n, n_batches * batch_size)
    for start in range(0, stop, batch_size):
        yield data.items(split, torch.arange(start, min(start + batch_size, stop)))


def run_eval_batches(data: Dataset, run: Any, split: str = "val", n_batches: int | None = None,
                     batch_size: int | None = None, seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed evaluation batches of a run (``run``: its :class:`~gfa_theory.train.run_config.RunConfig`),
    drawn lazily (``list()`` them to score several models on them).

    By default exactly what the run's training evaluations score: ``train.eval_batches``
    batches of ``train.batch_size``, text windows drawn with ``data.split_seed``. A study that
    scores on its own held-out set passes ``n_batches``, ``batch_size`` and ``seed``. Text
    windows are ``model.block_size`` tokens long; images come in order (see :func:`eval_batches`).
    """
    tc = run.train
    seq_len = run.model.block_size if isinstance(data, TextData) else None
    return eval_batches(data, split, tc.batch_size if batch_size is None else batch_size,
                        tc.eval_batches if n_batches is None else n_batches, seq_len,
                        seed=run.data.split_seed if seed is None else seed)
