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
overrides.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from torch import nn

from gfa_theory.config import build, from_dict
from gfa_theory.errors import ConfigError


class ResidualModel(nn.Module):
    """Ablation by unit name, shared by the package's models (defined before the model imports
    below so that ``gpt.py`` and ``resnet.py`` can subclass it)."""

    def __init__(self) -> None:
        super().__init__()
        self.disabled: set[str] = set()  # unit names currently ablated

    def unit_names(self) -> set[str]:
        """Every valid ablation name: branch and block units."""
        if not hasattr(self, "_unit_names"):
            self._unit_names = {u.name for k in ("branch", "block") for u in self.units(k)}
        return self._unit_names

    def check_unit_names(self, names: Iterable[str]) -> set[str]:
        names = set(names)
        unknown = sorted(names - self.unit_names())
        if unknown:
            raise ConfigError(f"unknown unit '{unknown[0]}' (valid: {', '.join(sorted(self.unit_names()))})")
        return names

    @contextmanager
    def ablate(self, names: Iterable[str]) -> Iterator["ResidualModel"]:
        """Temporarily disable the named units (added to any already disabled)."""
        names = self.check_unit_names(names)
        previous = self.disabled
        self.disabled = set(previous) | names
        try:
            yield self
        finally:
            self.disabled = previous


# Upper bounds of model sizes, checked by the configs before anything is allocated (whether a
# model within them fits in memory is a separate check: gfa_theory.train.memory).
MAX_DIM = 2 ** 31 - 1  # any width, vocabulary, context or channel count (torch's int32 kernels)
MAX_BLOCKS = 100_000  # residual blocks / applications (a config loops over them)


def _bounded(name: str, value: Any, low: int = 1, high: int = MAX_DIM) -> None:
    """``value`` must be an integer in ``low..high`` (one-line :class:`ConfigError` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else f"~{float(value):.3g}"
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {what} <= {high:,}, got {shown}")


def _supervised_blocks(spec: Any, B: int, what: str = "supervision") -> list[int]:
    """The supervision set S as sorted 1-based block indices; the last block is always read."""
    if spec == "final":
        return [B]
    if spec == "all":
        return list(range(1, B + 1))
    if isinstance(spec, str) or not isinstance(spec, (list, tuple)):
        raise ConfigError(f"{what} must be 'final', 'all' or a list of 1-based block indices, got {spec!r}")
    for m in spec:
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= B:
            raise ConfigError(f"{what} index {m!r} is out of range 1..{B}")
    if len(set(spec)) != len(spec):
        raise ConfigError(f"{what} lists a block twice: {list(spec)}")
    return sorted(set(spec) | {B})


from gfa_theory.models.gpt import GPT, GPTConfig  # noqa: E402  (needs ResidualModel above)
from gfa_theory.models.resnet import ResNet, ResNetConfig  # noqa: E402

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


__all__ = ["GPT", "GPTConfig", "MODELS", "ResNet", "ResNetConfig", "ResidualModel",
           "build_config", "build_model"]
