"""The package's residual models and their registry.

Every model here is a Pre-LN-style residual stack that also describes itself for the theory:

* ``layout() -> Layout``: its residual wiring (blocks, branches, supervision set S, shared groups);
* ``units(kind) -> list[Unit]``: its named branch or block units (embeddings, stems and heads are
  not units), so measurement and theory refer to the same things;
* ``disabled`` / ``ablate(names)``: post hoc ablation of units by name (a disabled branch writes
  nothing to the stream; a disabled block skips all of its branches);
* ``forward(x, targets=None, final_only=False) -> (logits, loss)``: ``logits`` are the final
  head's; ``loss`` is the mean over the supervised heads, or the final head's alone with
  ``final_only=True`` (what evaluation reports).

Use :func:`build_model` to build one by registry name from a config, a dict or ``key=value``
overrides. What every model family (these two, torchvision ResNets, Hugging Face GPT-2) tells
the rest of the package is in the adapter registry, :mod:`gfa_theory.models.families`.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from gfa_theory.config import build, from_dict
from gfa_theory.errors import ConfigError
from gfa_theory.models.base import MAX_BLOCKS, MAX_DIM, ResidualModel, unwrap
from gfa_theory.models.gpt import GPT, GPTConfig
from gfa_theory.models.resnet import ResNet, ResNetConfig

MODELS: dict[str, tuple[type, type]] = {"gpt": (GPTConfig, GPT), "resnet": (ResNetConfig, ResNet)}


def build_config(name: str, config: Any = None) -> Any:
    """The config of model ``name`` from a config object, a dict, or a list of ``key=value``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}' (choices: {', '.join(sorted(MODELS))})")
    cfg_cls = MODELS[name][0]
    if config is None:
        return cfg_cls()
    if isinstance(config, cfg_cls):
        return config
    if isinstance(config, dict):
        return from_dict(cfg_cls, config)
    if isinstance(config, (list, tuple)) and all(isinstance(s, str) for s in config):
        return build(cfg_cls, overrides=list(config))
    raise ConfigError(f"config for model '{name}' must be a {cfg_cls.__name__}, a dict or key=value strings")


def build_model(name: str, config: Any = None) -> nn.Module:
    """Build registry model ``name`` ('gpt' or 'resnet') from a config, dict or overrides."""
    cfg = build_config(name, config)
    return MODELS[name][1](cfg)


__all__ = ["GPT", "GPTConfig", "MAX_BLOCKS", "MAX_DIM", "MODELS", "ResNet", "ResNetConfig", "ResidualModel",
           "build_config", "build_model", "unwrap"]
