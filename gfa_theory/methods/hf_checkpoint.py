"""Reading a Hugging Face model directory someone else wrote, so that the model loaded is the
model in the files and nothing in them runs.

Before transformers reads anything: ``config.json`` is bounded JSON naming a ``model_type``
transformers ships and no ``auto_map`` (a directory's own Python code is never imported:
``trust_remote_code=False`` on every call, so no ``[y/N]`` prompt either); the layer count is
1..:data:`MAX_LAYERS`; the model is built on the meta device (no memory) to count its
parameters against the machine's memory (:func:`gfa_theory.train.memory.check_fits`); the
weight files are regular files inside the directory (a shard index naming a path outside it is
refused), safetensors headers are read and ``.bin`` files loaded ``weights_only`` on the meta
device, and their shapes compared with the model's. After loading, any missing, unexpected or
mismatched key is refused by name: transformers would fill a missing tensor with random values
and the prune would write it out as if trained. Every refusal is one :class:`DataError` line.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from gfa_theory.errors import ConfigError, DataError
from gfa_theory.train.memory import BASE_BYTES, FLOAT_BYTES, check_fits
from gfa_theory.untrusted import load_torch, read_json, regular_file

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = ("tokenizer.json", TOKENIZER_CONFIG, "vocab.json", "tokenizer.model")
# the weight files transformers reads from a local directory, in the order it prefers them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_LAYERS = 1024  # decoders in use have at most a few hundred layers
MAX_WEIGHT_BYTES = 2 ** 42  # one weight file (4 TiB): beyond any machine this runs on
MAX_TOKENIZER_BYTES = 2 ** 30


def transformers_module():
    try:
        import transformers  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise ConfigError("pruning a Hugging Face checkpoint needs 'transformers' "
                          "(pip install 'gfa-theory[hf]')") from None
    return transformers


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0][:200] if lines else type(exc).__name__)


def _listed(keys: list[str], n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


@contextlib.contextmanager
def quiet(tf) -> Iterator[None]:
    """transformers' warnings, load reports and progress bars off while a directory is read:
    a refusal is then the only line on stderr, and nothing reaches stdout."""
    logging = tf.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _refuse_remote_code(file: Path, data: Any) -> None:
    if isinstance(data, dict) and "auto_map" in data:
        raise DataError(f"{file} names the directory's own Python code (auto_map): gfa never runs code from a "
                        "model directory; use a model type transformers ships")


def read_config(path: Path, tf) -> dict:
    """``config.json`` of a model directory: bounded JSON, a known ``model_type``, no ``auto_map``."""
    file = path / CONFIG_FILE
    data = read_json(file, "Hugging Face config")
    if not isinstance(data, dict):
        raise DataError(f"{file} is not a JSON object: not a Hugging Face model config")
    _refuse_remote_code(file, data)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in tf.CONFIG_MAPPING:
        raise DataError(f"{file}: model_type {str(model_type)[:60]!r} is not one transformers "
                        f"{tf.__version__} ships (a custom model needs its own code, which gfa never runs)")
    return data


def _inside(path: Path, name: Any, index: Path) -> Path:
    """Shard ``name`` of ``index``, refused unless it is a relative path inside ``path``."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise DataError(f"{index} names shard {str(name)[:80]!r}, outside the model directory: refused")
    return regular_file(path / name, "weight shard", MAX_WEIGHT_BYTES)


def weight_files(path: Path) -> tuple[list[Path], bool]:
    """The weight files transformers would read from ``path`` (checked) and whether they are
    safetensors."""
    for name in WEIGHT_FILES:
        file = path / name
        if not (file.exists() or file.is_symlink()):
            continue
        safetensors = name.startswith("model.safetensors")
        if not name.endswith(".index.json"):
            return [regular_file(file, "weight file", MAX_WEIGHT_BYTES)], safetensors
        index = read_json(file, "shard index")
        shards = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(shards, dict) or not shards:
            raise DataError(f"{file} has no 'weight_map' of tensor names to shard files")
        return sorted({_inside(path, shard, file) for shard in shards.values()}), safetensors
    raise DataError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES[::2])})")


def file_shapes(files: list[Path], safetensors: bool) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in the weight files, read without loading a weight (safetensors
    headers; ``.bin`` files ``weights_only`` on the meta device: a pickled object is refused)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            if safetensors:
                from safetensors import safe_open  # noqa: PLC0415  (with transformers)

                with safe_open(str(file), "pt") as fh:
                    shapes.update({k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
            else:
                state = load_torch(file, "meta")
                if not isinstance(state, dict):
                    raise ValueError("not a state dict")
                shapes.update({k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001  (truncated header, forbidden pickle, I/O: all "unreadable")
            kind = "safetensors file" if safetensors else "weights-only PyTorch file"
            raise DataError(f"{file} is not a readable {kind} ({type(exc).__name__}: {_first_line(exc)[:120]}): "
                            "it is truncated, corrupt or holds pickled code; copy it again") from None
    return shapes


def load_causal_lm(path: str | os.PathLike, copies: int = 2) -> nn.Module:
    """The ``AutoModelForCausalLM`` of directory ``path`` (eval mode), checked as the module
    docstring says; ``copies``: float32 copies of the model the caller will hold (memory check)."""
    tf = transformers_module()
    path = Path(path)
    cfile = path / CONFIG_FILE
    read_config(path, tf)
    with quiet(tf):
        try:
            config = tf.AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        except Exception as exc:  # noqa: BLE001  (a wrong type or value in the file: its fault, not ours)
            raise DataError(f"{cfile} is not a valid config ({_first_line(exc)}): fix it or copy it again") from None
        layers = getattr(config, "num_hidden_layers", None)
        if isinstance(layers, bool) or not isinstance(layers, int):
            raise DataError(f"{cfile} gives no integer layer count (num_hidden_layers): fix it")
        if not 1 <= layers <= MAX_LAYERS:
            raise DataError(f"{cfile} describes a model with {layers} layers: a prunable model has 1..{MAX_LAYERS}")
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                skeleton = tf.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{cfile} does not describe a model transformers can build "
                            f"({type(exc).__name__}: {_first_line(exc)}): fix it") from None
        params = sum(p.numel() for p in skeleton.parameters())
        check_fits(params * FLOAT_BYTES * copies + BASE_BYTES, f"pruning this {config.model_type} model",
                   f" ({params:,} parameters, {copies} copies)", "prune it on a machine with more memory")
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        del skeleton
        files, safetensors = weight_files(path)
        shapes = file_shapes(files, safetensors)
        wrong = [k for k, shape in shapes.items() if k in expected and shape != expected[k]]
        if wrong:
            k = sorted(wrong)[0]
            raise DataError(f"the weights in {path} do not fit its {CONFIG_FILE}: wrong shape {_listed(wrong)} "
                            f"({k}: {list(shapes[k])} in the file, {list(expected[k])} in the config)")
        try:
            model, info = tf.AutoModelForCausalLM.from_pretrained(
                path, trust_remote_code=False, local_files_only=True, use_safetensors=safetensors,
                output_loading_info=True)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot load the weights of {path} ({type(exc).__name__}: {_first_line(exc)})") from None
    problems = [f"{label} {_listed(list(info.get(key) or []))}" for key, label in
                (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "wrong shape"))
                if info.get(key)]
    if problems:
        raise DataError(f"the weights in {path} do not match its {CONFIG_FILE} ({'; '.join(problems)}): "
                        "transformers would fill the gaps with random values; fix or copy the files again")
    return model.eval()


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer of ``path``: no ``auto_map`` in ``tokenizer_config.json``, regular files
    only, ``trust_remote_code=False``."""
    tf = transformers_module()
    path = Path(path)
    for name in TOKENIZER_FILES:
        if (path / name).exists() or (path / name).is_symlink():
            regular_file(path / name, "tokenizer file", MAX_TOKENIZER_BYTES)
    if (path / TOKENIZER_CONFIG).exists():
        _refuse_remote_code(path / TOKENIZER_CONFIG, read_json(path / TOKENIZER_CONFIG, "tokenizer config"))
    with quiet(tf):
        try:
            return tf.AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot load the tokenizer of {path} ({type(exc).__name__}: {_first_line(exc)})") from None


__all__ = ["MAX_LAYERS", "TOKENIZER_FILES", "WEIGHT_FILES", "file_shapes", "load_causal_lm", "load_tokenizer", "quiet", "read_config",
           "weight_files"]
