"""Pruning Hugging Face checkpoints: load a model directory, build calibration text, write the
pruned model back with ``save_pretrained``.

Ranking and removal are :mod:`gfa_theory.methods.pruning`'s, through the Hugging Face adapters
of the model-family registry (GPT-2 and the Llama-like decoder families); this module only
reads and writes checkpoints and their text.

Calibration text (the decision). The data-based methods (``bi``, ``angular``, ``taylor``,
``ablation``), healing and the before/after evaluation read the package's default corpus (the
CPython documentation topics shipped with it), or the user's own UTF-8 file (``--text FILE``),
tokenized with the **checkpoint's own tokenizer** and split like ``gfa train`` splits text: the
last 10% (``held_out``) is held out. Calibration and healing windows come from the first part
only, evaluation windows from the held-out part only (each window lies inside its part, drawn
with fixed seeds), so nothing is healed and evaluated on the same tokens. A directory without a
tokenizer gets no substitute: random token ids would rank blocks by how they treat noise, so a
method that needs text is a one-line error there, and the methods that need none
(``cascadeflow`` from a ``gradients.csv``, ``magnitude``, ``random``, ``last``) work and skip the
evaluation.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError, DataError, StorageError
from gfa_theory.methods.hf_checkpoint import TOKENIZER_FILES, load_causal_lm, load_tokenizer
from gfa_theory.train.data import TextData, eval_batches, pydoc_corpus, read_text_file
from gfa_theory.train.store import storage_error
from gfa_theory.untrusted import MAX_JSON_BYTES, MAX_LOG_BYTES, read_json, regular_file

VAL_FRACTION = 0.1  # as gfa train's default text split
CORPUS_CHARS = 400_000  # the corpus prefix tokenized: plenty of windows, tokenized in about a second
MAX_TEXT_BYTES = 256 * 2 ** 20  # a --text file larger than this is refused before it is read


@dataclass
class Checkpoint:
    """A loaded Hugging Face causal LM directory: the model (eval mode) and its tokenizer, if any."""

    path: Path
    model: nn.Module
    tokenizer: Any | None


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face model directory (a ``config.json`` with ``model_type``);
    False for a gfa run (its ``config.json`` holds ``run_id``). A ``config.json`` that is neither
    (unreadable, not JSON, too deep) is a one-line :class:`DataError` naming it."""
    cfg = Path(path) / "config.json"
    if not (cfg.exists() or cfg.is_symlink()):
        return False
    try:
        data = read_json(cfg, "config file", MAX_JSON_BYTES)
    except DataError as exc:
        raise DataError(f"{exc}: {path} is neither a gfa run nor a Hugging Face model directory") from None
    return isinstance(data, dict) and "model_type" in data and "run_id" not in data


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether a Hugging Face directory holds tokenizer files."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def require_tokenizer(path: str | os.PathLike) -> None:
    """The one-line refusal of a method that scores on text, for a directory without a tokenizer."""
    if not has_tokenizer(path):
        raise ConfigError(f"{path} has no tokenizer: this method scores blocks on text "
                          "(use cascadeflow --gradients FILE, magnitude, random or last)")


def load_checkpoint(path: str | os.PathLike, copies: int = 2) -> Checkpoint:
    """The model of a Hugging Face directory (``AutoModelForCausalLM``) and its tokenizer when
    the directory has one, read as :mod:`gfa_theory.methods.hf_checkpoint` says (nothing from
    the files runs; a missing or unexpected weight is refused); anything unusable is a one-line
    :class:`DataError`. ``copies``: float32 copies of the model the caller will hold."""
    path = Path(path)
    model = load_causal_lm(path, copies)
    tokenizer = load_tokenizer(path) if has_tokenizer(path) else None
    return Checkpoint(path, model, tokenizer)


def context_length(model: nn.Module) -> int:
    """The longest sequence the model's position embeddings take."""
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    raise ConfigError(f"{type(model).__name__}'s config names no context length")


def corpus_tokens(checkpoint: Checkpoint, text_file: str | os.PathLike | None = None,
                  held_out: float = VAL_FRACTION) -> TextData:
    """The default corpus, or ``text_file``, tokenized with the checkpoint's tokenizer and split
    into a first part (calibration, healing) and the last ``held_out`` fraction (evaluation)."""
    require_tokenizer(checkpoint.path)
    if not 0 < held_out < 1:
        raise ConfigError(f"--held-out must be a fraction in (0, 1), got {held_out}")
    if text_file is None:
        text, where = pydoc_corpus()[:CORPUS_CHARS], "the default corpus"
    else:  # a regular file of bounded size (a fifo or /dev/zero would never end), then UTF-8
        text = read_text_file(regular_file(text_file, "--text file", MAX_TEXT_BYTES))
        where = Path(text_file).name
    ids = torch.tensor(checkpoint.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    vocab = checkpoint.model.config.vocab_size
    if len(ids) and int(ids.max()) >= vocab:
        raise DataError(f"the tokenizer of {checkpoint.path} yields token {int(ids.max())}, beyond the "
                        f"model's vocab_size {vocab}")
    n_val = max(1, int(len(ids) * held_out))
    if len(ids) - n_val < 2:
        raise DataError(f"{where} has {len(ids)} tokens: too short to split")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TextData("", ids[:-n_val], ids[-n_val:], sha,
                    f"{where}, last {held_out:.0%} held out, {type(checkpoint.tokenizer).__name__}")


def text_batches(data: TextData, split: str, n: int, batch_size: int, seq_len: int,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed batches of ``seq_len``-token windows and their next tokens from ``split``."""
    data.check_seq_len(seq_len)
    return list(eval_batches(data, split, batch_size, n, seq_len, seed=seed))


def gradient_log_file(path: str | os.PathLike) -> Path:
    """The tracker log ``path`` names (the file, or ``gradients.csv`` in the directory): a
    regular file of bounded size (``/dev/zero`` or a fifo would never end)."""
    path = Path(path)
    return regular_file(path / "gradients.csv" if path.is_dir() else path, "gradient log", MAX_LOG_BYTES)


def read_gradient_log(path: str | os.PathLike) -> pd.DataFrame:
    """A tracker log (``gradients.csv`` as written by ``gfa train`` or the integrations'
    callbacks): the file itself or the directory holding it. Whether it belongs to the model is
    checked where it is used (:func:`gfa_theory.instrument.tracking.block_totals`)."""
    file = gradient_log_file(path)
    try:
        frame = pd.read_csv(file)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read the gradient log {file}: {str(exc).splitlines()[0]}") from None
    if "step" in frame:
        frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    return frame


def save_checkpoint(model: nn.Module, tokenizer: Any | None, out: str | os.PathLike) -> Path:
    """``save_pretrained`` of the pruned model (safetensors + config.json) and of the tokenizer;
    a failed write (disk full, ...) is a one-line :class:`StorageError` naming ``out``."""
    out = Path(out)
    try:
        model.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    except OSError as exc:
        raise storage_error(exc, out) from None
    except Exception as exc:  # noqa: BLE001  (safetensors reports I/O errors as its own type)
        if type(exc).__name__ != "SafetensorError":
            raise
        raise StorageError(f"cannot write {out}: {str(exc).splitlines()[0][:200]}") from None
    return out


__all__ = ["Checkpoint", "context_length", "corpus_tokens", "gradient_log_file", "is_hf_checkpoint", "load_checkpoint",
           "has_tokenizer", "read_gradient_log", "require_tokenizer", "save_checkpoint", "text_batches"]
