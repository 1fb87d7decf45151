"""One directory per model: this package's GPT and ResNet (uniform, tapered or pruned) saved as
``config.json`` + ``model.safetensors`` and rebuilt with one call each.

``config.json`` holds the model's registry name and its full config (per-block widths of a
tapered GPT, the surviving blocks of a pruned one), so :func:`load_model` needs nothing else;
weights go through safetensors (tied tensors are stored once). Both files are written to
temporary names first and renamed, so a directory never holds half a model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights
from torch import nn

from gfa_theory import __version__
from gfa_theory.config import to_dict
from gfa_theory.errors import ConfigError, DataError, GFAError
from gfa_theory.models import MODELS, build_model
from gfa_theory.models.base import unwrap

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "gfa-theory model"


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a package model into directory ``path`` (created if missing); returns ``path``."""
    model = unwrap(model)
    names = [name for name, (_, cls) in MODELS.items() if type(model) is cls]
    if not names:
        raise ConfigError(f"save_model writes this package's models ({', '.join(MODELS)}), not "
                          f"{type(model).__name__} (a Hugging Face model has save_pretrained)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "model_name": names[0], "config": to_dict(model.config), "gfa_theory": __version__}
    tmp_weights, tmp_config = path / f".{WEIGHTS_FILE}.tmp", path / f".{CONFIG_FILE}.tmp"
    _save_weights(model, str(tmp_weights))
    tmp_config.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp_weights, path / WEIGHTS_FILE)
    os.replace(tmp_config, path / CONFIG_FILE)
    return path


def load_model(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild the model :func:`save_model` wrote into ``path``, in eval mode; a directory whose
    config or weights do not fit (missing, unexpected or reshaped tensors) is one line."""
    path = Path(path)
    try:
        meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path} holds no readable {CONFIG_FILE} of a saved model ({str(exc)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path / CONFIG_FILE} was not written by gfa_theory.models.save_model")
    if meta.get("model_name") not in MODELS or not isinstance(meta.get("config"), dict):
        raise DataError(f"{path / CONFIG_FILE} names no model of this package (model_name: "
                        f"{str(meta.get('model_name'))[:40]!r}, choices {', '.join(MODELS)}) or no config: save it again")
    try:
        model = build_model(meta["model_name"], meta["config"])
    except GFAError as exc:
        raise DataError(f"{path / CONFIG_FILE} holds no valid {meta['model_name']} config ({exc})") from None
    if not (path / WEIGHTS_FILE).is_file():
        raise DataError(f"{path} has no {WEIGHTS_FILE}")
    try:
        _load_weights(model, str(path / WEIGHTS_FILE), device=device)  # strict: every key, no extra
    except Exception as exc:  # noqa: BLE001  (a truncated file, missing or unexpected keys, a shape)
        raise DataError(f"the weights in {path / WEIGHTS_FILE} do not fit {path / CONFIG_FILE} "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    return model.to(device).eval()


__all__ = ["load_model", "save_model"]
