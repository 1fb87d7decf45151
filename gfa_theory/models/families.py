"""The model-family registry: the one place that knows which family a model belongs to.

:data:`ADAPTERS` holds one :class:`~gfa_theory.models.adapter.Adapter` per family (this
package's GPT and ResNet, torchvision ResNets, Hugging Face GPT-2 and the Llama-like decoder
families of :data:`~gfa_theory.models.adapters_hf.DECODER_FAMILIES`, and the scoring views of the
foreign families); :func:`hf_families` lists the Hugging Face ones (what the README lists);
:func:`find_adapter` picks a model's, optionally one with a capability (post hoc scoring,
pruning). To add a family, subclass the adapter protocol and call :func:`register_adapter`.

It also counts the fan-in of any registered model by autograd on its own wiring
(:func:`module_fan_in`): the model is copied with every functional branch swapped for a
scalar-gain surrogate (:class:`~gfa_theory.theory.path_counts.ScalarGain`, ``f(x) = t x + probe``)
and every norm, embedding and head neutralized to the identity, while every identity and
shortcut path stays as the model wires it (a projection shortcut or torchvision ``downsample``
becomes the identity: it is a path of order 0, not a branch). The model's own block code then
runs on a one-element stream ``x_0 = 1``, and the loss is the sum of the heads, so the gradient
arriving at each probe is exactly ``G_i(t)`` and ``F(i) = G_i(0) + G_i'(0)``
(:func:`~gfa_theory.theory.path_counts.first_order_counts`). Each branch unit gets one surrogate
with one shared probe, so a parameter-shared unit applied at several positions sums its
applications as a shared parameter does (the group fan-in ``F(P)``); each application also adds
its own zero probe, which gives the per-branch ``F(i)`` in the same backward pass. A unit applied
a different number of times than its layout says is an error: the adapter's layout disagrees
with the model's wiring.

Finally, :func:`parse_model_spec` builds a model of any family by name (``gpt``,
``torchvision:resnet18``, ``hf:gpt2``, ``hf:llama``, ``hf:qwen2``, ...).
"""
from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

from gfa_theory.config import parse_overrides
from gfa_theory.errors import ConfigError
from gfa_theory.models import build_model
from gfa_theory.models.adapter import (
    DTYPE,
    Adapter,
    PrunableAdapter,
    ScorableAdapter,
    TupleOutput,
    copy_with,
)
from gfa_theory.models.adapters_hf import (
    DECODER_FAMILIES,
    HFCausalLMView,
    HFCausalLMViewAdapter,
    HFDecoderAdapter,
    HFGPT2Adapter,
)
from gfa_theory.models.adapters_package import GPTAdapter, ResNetAdapter
from gfa_theory.models.adapters_torchvision import (
    TorchvisionResNetAdapter,
    TorchvisionView,
    TorchvisionViewAdapter,
)
from gfa_theory.models.base import check_kind, unwrap
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Layout
from gfa_theory.theory.path_counts import ScalarGain, first_order_counts

A = TypeVar("A", bound=Adapter)

ADAPTERS: list[Adapter] = [GPTAdapter(), ResNetAdapter(), TorchvisionResNetAdapter(), TorchvisionViewAdapter(),
                           HFGPT2Adapter(), *(HFDecoderAdapter(f) for f in DECODER_FAMILIES),
                           HFCausalLMViewAdapter()]
VIEWS = (TorchvisionViewAdapter, HFCausalLMViewAdapter)  # the package's own wrappers, not families

# What is missing when no adapter of a capability reads a model (``{model}``, ``{names}``).
_MISSING = {
    Adapter: "no fan-in adapter for {model} (supported: {names}; see gfa_theory.models.families)",
    ScorableAdapter: "the post hoc scorers hook the blocks of {names} models, not of {model}",
    PrunableAdapter: "pruning supports {names} models, not {model}",
}


def register_adapter(adapter: Adapter) -> None:
    """Add an adapter; it is tried before the built-in ones."""
    ADAPTERS.insert(0, adapter)


def find_adapter(model: nn.Module, capability: type[A] = Adapter) -> A:
    """The first registered adapter that reads ``model`` and has ``capability`` (an adapter
    class: :class:`Adapter`, :class:`ScorableAdapter` or :class:`PrunableAdapter`). ``model``
    is the user's module itself: the public entry points :func:`unwrap` it first, once."""
    for adapter in ADAPTERS:
        if isinstance(adapter, capability) and adapter.matches(model):
            return adapter
    template = _MISSING.get(capability, _MISSING[Adapter])
    raise ConfigError(template.format(model=type(model).__name__, names=", ".join(supported_families(capability))))


def supported_families(capability: type[Adapter] = Adapter) -> list[str]:
    """Names of the registered families with ``capability`` (what a refusal lists)."""
    return [a.name for a in ADAPTERS if isinstance(a, capability) and not isinstance(a, VIEWS)]


def hf_families() -> list[tuple[str, str]]:
    """``(hf:<key> spec, label)`` of every registered Hugging Face family, in registry order."""
    return [(f"hf:{a.name.removeprefix('hf-')}", a.label) for a in ADAPTERS
            if a.name.startswith("hf-") and not isinstance(a, VIEWS)]


def module_layout(model: nn.Module) -> Layout:
    """The residual layout of a supported model."""
    model = unwrap(model)
    return find_adapter(model).layout(model)


get_layout = module_layout  # the name the gradient tracker looks up


def get_units(model: nn.Module, kind: str = "branch") -> list[Unit]:
    """Branch or block units of a supported model (what the gradient tracker measures)."""
    check_kind(kind)
    model = unwrap(model)
    return find_adapter(model).units(model, kind)


# ---- fan-in counted by autograd ---------------------------------------------------------------------
class AppliedGain(ScalarGain):
    """A branch surrogate that also adds a fresh zero probe at each application.

    ``probe`` (shared by all applications) collects ``G_P(t) = sum of G_i(t)`` over the unit's
    applications, as a shared parameter's gradient does; ``application_probes[k]`` collects the
    ``G_i(t)`` of its k-th application alone.
    """

    def __init__(self, t: torch.Tensor, applications: int) -> None:
        super().__init__(t)
        self.application_probes = [torch.zeros((), dtype=t.dtype, requires_grad=True)
                                   for _ in range(applications)]
        self.calls = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.calls >= len(self.application_probes):
            raise RuntimeError(f"branch surrogate applied more than the {len(self.application_probes)} "
                               "times its layout says: the adapter's layout disagrees with the model")
        z = self.application_probes[self.calls]
        self.calls += 1
        return super().forward(x) + z


def _count(v: float) -> int | float:
    r = round(v)
    return r if abs(v - r) < 1e-6 else v


def _branch_owners(adapter: Adapter, layout: Layout, units: list[Unit]) -> dict[int, tuple[Unit, int]]:
    """Layout branch ``i`` -> (its unit, which application of the unit it is)."""
    by_branch: dict[int, tuple[Unit, int]] = {}
    for u in units:
        for k, i in enumerate(u.applications):
            if i in by_branch:
                raise RuntimeError(f"branch {i} claimed by units {by_branch[i][0].name} and {u.name}")
            by_branch[i] = (u, k)
    if sorted(by_branch) != list(range(1, layout.N + 1)):
        raise RuntimeError(f"{adapter.name}: branch units do not cover the layout's branches 1..{layout.N}")
    return by_branch


def _autograd_counts(adapter: Adapter, model: nn.Module, layout: Layout, units: list[Unit],
                     by_branch: dict[int, tuple[Unit, int]]) -> tuple[dict[str, int | float], list, list]:
    """``F`` of every unit (summed over its applications) and ``G(0)``, ``G'(0)`` of every
    branch ``i = 1..N``, by one double backward through the model's surrogate."""
    with torch.enable_grad():
        t = torch.zeros((), dtype=DTYPE, requires_grad=True)
        gains = {u.name: AppliedGain(t, len(u.applications)) for u in units}
        run = adapter.surrogate(model, gains)
        shared_probes = [gains[u.name].probe for u in units]
        app_probes = [gains[by_branch[i][0].name].application_probes[by_branch[i][1]]
                      for i in range(1, layout.N + 1)]
        order0, order1 = first_order_counts(run, t, shared_probes + app_probes)
    for u in units:
        if gains[u.name].calls != len(u.applications):
            raise RuntimeError(f"{adapter.name}: unit {u.name} ran {gains[u.name].calls} times, "
                               f"its layout says {len(u.applications)}")
    n = len(units)
    unit_F = {u.name: _count(order0[k] + order1[k]) for k, u in enumerate(units)}
    return unit_F, order0[n:], order1[n:]


def _fan_in_rows(adapter: Adapter, layout: Layout, by_branch: dict[int, tuple[Unit, int]],
                 unit_F: dict[str, int | float], G0: list, G1: list) -> dict:
    """The counts in the JSON shape of :meth:`~gfa_theory.theory.symbolic.FanInResult.to_dict`."""
    branch_rows = []
    for br in layout.branches():
        g0, g1 = _count(G0[br.index - 1]), _count(G1[br.index - 1])
        branch_rows.append({"index": br.index, "block": br.block, "slot": br.slot,
                            "position": br.position, "name": by_branch[br.index][0].name,
                            "fan_in": g0 + g1, "paths_by_order": [g0, g1]})
    top = max(r["fan_in"] for r in branch_rows) or 1
    for r in branch_rows:
        r["fan_in_normalized"] = r["fan_in"] / top
    members: dict[int, list[dict]] = {}
    for r in branch_rows:
        members.setdefault(r["block"], []).append(r)
    block_rows = [{"block": b, "name": layout.blocks[b - 1].name, "branches": [r["index"] for r in rs],
                   "fan_in": sum(r["fan_in"] for r in rs),
                   "paths_by_order": [sum(r["paths_by_order"][k] for r in rs) for k in (0, 1)]}
                  for b, rs in members.items()]
    group_rows = []
    for group in layout.groups():
        slots = len(members[group[0]])
        applications = [[members[b][s]["index"] for b in group] for s in range(slots)]
        slot_units = [by_branch[apps[0]][0] for apps in applications]
        for u, apps in zip(slot_units, applications):
            if list(u.applications) != apps:
                raise RuntimeError(f"{adapter.name}: unit {u.name} is applied at {list(u.applications)} "
                                   f"but the layout's group {list(group)} says {apps}")
        by_slot = [unit_F[u.name] for u in slot_units]  # autograd-summed over shared applications
        group_rows.append({"blocks": list(group), "shared": len(group) > 1, "applications": applications,
                           "names": [u.name for u in slot_units], "fan_in": sum(by_slot),
                           "fan_in_by_slot": by_slot})
    return {"model": adapter.name, "source": "autograd", "wiring": adapter.wiring(), "N": layout.N, "B": layout.B,
            "layout": layout.to_dict(), "max_order": 1, "branches": branch_rows,
            "blocks": block_rows, "groups": group_rows}


def module_fan_in(model: nn.Module) -> dict:
    """Fan-in of ``model`` counted by autograd on its surrogate, in the JSON shape of
    :meth:`gfa_theory.theory.symbolic.FanInResult.to_dict` (``paths_by_order`` holds orders 0 and 1),
    plus the unit ``name`` of each branch, block and group slot and the family's ``wiring``
    (:meth:`Adapter.wiring`)."""
    model = unwrap(model)
    adapter = find_adapter(model)
    layout = adapter.layout(model)
    units = adapter.units(model, "branch")
    by_branch = _branch_owners(adapter, layout, units)
    unit_F, G0, G1 = _autograd_counts(adapter, model, layout, units, by_branch)
    return _fan_in_rows(adapter, layout, by_branch, unit_F, G0, G1)


# ---- building models by name ----------------------------------------------------------------------
TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet")
# GPT-2 small's depth (12 blocks) with narrow widths: fan-in depends on the wiring only, and a
# full-width model would cost seconds and half a gigabyte for nothing. --set restores any size.
HF_GPT2_DEFAULTS = {"n_layer": 12, "n_embd": 64, "n_head": 4, "n_positions": 128, "vocab_size": 256}
HF_LLAMA_DEFAULTS = {"num_hidden_layers": 12, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 128, "vocab_size": 256}
# spec name -> (config class, model class, defaults) in transformers; the decoder families
# share Llama's small widths (grouped-query attention: 2 key/value heads for 4 query heads)
HF_FAMILIES = {"gpt2": ("GPT2Config", "GPT2LMHeadModel", HF_GPT2_DEFAULTS),
               **{f.key: (f.config_class, f.model_class, {**HF_LLAMA_DEFAULTS, **f.tiny}) for f in DECODER_FAMILIES}}


def parse_model_spec(spec: str, overrides: list[str] | dict | None = None) -> nn.Module:
    """Build a model from ``gpt``, ``resnet``, ``torchvision:NAME`` (weights=None) or ``hf:<family>``
    (``hf:gpt2``, ``hf:llama``, ``hf:qwen2``, ...: from a config, never pretrained weights), with
    ``key=value`` overrides."""
    if spec in ("gpt", "resnet"):
        return build_model(spec, overrides)
    family, _, name = spec.partition(":")
    kwargs = parse_overrides(overrides)
    if family == "torchvision":
        import torchvision  # noqa: PLC0415  (optional family: imported only when asked for)

        choices = sorted(n for n in torchvision.models.list_models(module=torchvision.models)
                         if n.startswith(TORCHVISION_FAMILIES))
        if name not in choices:
            raise ConfigError(f"unknown torchvision model '{name}' (choices: {', '.join(choices)})")
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"torchvision:{name}: {exc}") from None
    if family == "hf":
        if name not in HF_FAMILIES:
            raise ConfigError(f"unknown Hugging Face model '{name}' (choices: {', '.join(HF_FAMILIES)})")
        return _hf_model(name, kwargs)
    raise ConfigError(f"unknown model '{spec}' (choices: gpt, resnet, torchvision:NAME, "
                      f"{', '.join('hf:' + k for k in HF_FAMILIES)})")


def _hf_model(name: str, kwargs: dict) -> nn.Module:
    try:
        import transformers  # noqa: PLC0415  (optional family)
    except ImportError:
        raise ConfigError(f"hf:{name} needs the 'transformers' package (pip install 'gfa-theory[hf]')") from None
    config_name, model_name, defaults = HF_FAMILIES[name]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)
    reference = config_cls().to_dict()
    unknown = sorted(set(kwargs) - set(reference))
    if unknown:
        raise ConfigError(f"unknown {config_name} key '{unknown[0]}'")
    try:
        kw = {**defaults, **kwargs}
        for special in ("bos_token_id", "eos_token_id", "pad_token_id"):  # GPT-2's 50256 is outside a small vocab
            if isinstance(reference.get(special), int):
                kw.setdefault(special, kw["vocab_size"] - 1)
        return model_cls(config_cls(**kw))
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"hf:{name}: {exc}") from None


__all__ = ["ADAPTERS", "Adapter", "AppliedGain", "DECODER_FAMILIES", "DTYPE", "HF_FAMILIES", "hf_families",
           "supported_families", "HF_GPT2_DEFAULTS", "HF_LLAMA_DEFAULTS", "HFCausalLMView", "PrunableAdapter", "ScorableAdapter",
           "TorchvisionView", "TupleOutput", "copy_with", "find_adapter", "get_layout", "get_units",
           "module_fan_in", "module_layout", "parse_model_spec", "register_adapter", "unwrap"]
