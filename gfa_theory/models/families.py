"""Fan-in of a real ``nn.Module``, counted by autograd on its own wiring (SPEC section 2).

The model is copied with every functional branch swapped for a scalar-gain surrogate
(:class:`~gfa_theory.theory.path_counts.ScalarGain`, ``f(x) = t x + probe``) and every norm, embedding and
head neutralized to the identity, while every identity and shortcut path stays as the model
wires it (a projection shortcut or torchvision ``downsample`` becomes the identity: it is a path
of order 0, not a branch). The model's own block code then runs on a one-element stream
``x_0 = 1``, and the loss is the sum of the heads, so the gradient arriving at each probe is
exactly ``G_i(t)`` and ``F(i) = G_i(0) + G_i'(0)`` (:func:`~gfa_theory.theory.path_counts.first_order_counts`).

Each branch unit gets one surrogate with one shared probe, so a parameter-shared unit applied at
several positions sums its applications as a shared parameter does (the group fan-in ``F(P)``);
each application also adds its own zero probe, which gives the per-branch ``F(i)`` in the same
backward pass. A unit applied a different number of times than its layout says is an error: the
adapter's layout disagrees with the model's wiring.

Adding a model family
---------------------
Subclass :class:`Adapter`, implement its four methods and call :func:`register_adapter`:

* ``matches(model) -> bool``;
* ``layout(model) -> Layout``: blocks, branches per block, parallel or not, supervision, shared;
* ``units(model, kind) -> list[Unit]`` for ``kind`` in ``"branch"``, ``"block"``: names,
  parameters (shared ones listed once), ``outputs`` (the modules whose output is the branch
  output) and ``applications`` (layout branch indices ``i`` of a branch unit, block indices ``b``
  of a block unit, in forward order);
* ``surrogate(model, gains) -> Callable[[], Tensor]``: a function returning the sum of the heads
  of a copy of ``model`` (see :func:`copy_with`) in which branch unit ``name`` is replaced by
  ``gains[name]`` and norms, embeddings, heads and projection shortcuts by the identity, run on
  a positive one-element stream of dtype :data:`DTYPE` (so post-addition ReLUs are the identity).
"""
from __future__ import annotations

import abc
import copy
import sys
from typing import Any, Callable

import torch
from torch import nn

from gfa_theory.config import parse_value
from gfa_theory.errors import ConfigError
from gfa_theory.models.units import Unit
from gfa_theory.theory.layout import Block, Layout
from gfa_theory.theory.path_counts import ScalarGain, first_order_counts

DTYPE = torch.float64  # path counts are integers: float64 keeps them exact far beyond any depth


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


class TupleOutput(nn.Module):
    """Wraps a surrogate for modules that return ``(output, extras...)`` (e.g. HF attention)."""

    def __init__(self, inner: nn.Module, extras: int = 1) -> None:
        super().__init__()
        self.inner, self.extras = inner, extras

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
        return (self.inner(x),) + (None,) * self.extras


def copy_with(model: nn.Module, replace: dict[nn.Module, nn.Module]) -> nn.Module:
    """A deep copy of ``model`` in which each module in ``replace`` is swapped for its value.

    The replaced modules (and their parameters) are never copied, so neutralizing a large
    embedding or head costs nothing; a module shared by several parents maps to one replacement.
    """
    memo: dict[int, Any] = {id(old): new for old, new in replace.items()}
    return copy.deepcopy(model, memo)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_kind(kind: str) -> None:
    if kind not in ("branch", "block"):
        raise ConfigError(f"unit kind must be 'branch' or 'block', got {kind!r}")


class Adapter(abc.ABC):
    """How to read one model family's residual wiring (see the module docstring)."""

    name = "adapter"

    @abc.abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter reads ``model``."""

    @abc.abstractmethod
    def layout(self, model: nn.Module) -> Layout:
        """The model's residual layout."""

    @abc.abstractmethod
    def units(self, model: nn.Module, kind: str = "branch") -> list[Unit]:
        """The model's branch or block units, in layout order."""

    @abc.abstractmethod
    def surrogate(self, model: nn.Module, gains: dict[str, nn.Module]) -> Callable[[], torch.Tensor]:
        """A loss function of the model with its branches swapped for the given gains."""


# ---- this package's models --------------------------------------------------------------------
class GPTAdapter(Adapter):
    name = "gpt"

    def matches(self, model):
        from gfa_theory.models import GPT
        return isinstance(model, GPT)

    def layout(self, model):
        return model.layout()

    def units(self, model, kind="branch"):
        return model.units(kind)

    def surrogate(self, model, gains):
        replace: dict[nn.Module, nn.Module] = {m: nn.Identity() for m in (model.wte, model.wpe, model.ln_f,
                                                                          model.lm_head)}
        for u, blk in enumerate(model.h):
            replace.update({blk.ln_1: nn.Identity(), blk.ln_2: nn.Identity(),
                            blk.attn: gains[f"h.{u}.attn"], blk.mlp: gains[f"h.{u}.mlp"]})
        sur = copy_with(model, replace)
        sur.disabled = set()  # fan-in is a property of the architecture, not of an ablation
        x0 = torch.ones(1, 1, 1, dtype=DTYPE)  # (batch, T, C) = one element
        return lambda: sum(h.sum() for h in sur.streams(x0).values())


class ResNetAdapter(Adapter):
    name = "resnet"

    def matches(self, model):
        from gfa_theory.models import ResNet
        return isinstance(model, ResNet)

    def layout(self, model):
        return model.layout()

    def units(self, model, kind="branch"):
        return model.units(kind)

    def surrogate(self, model, gains):
        replace: dict[nn.Module, nn.Module] = {model.stem: nn.Identity(), model.heads: nn.ModuleDict()}
        for k, blk in enumerate(model.blocks):
            replace.update({blk.branch: gains[f"blocks.{k}.branch"], blk.shortcut: nn.Identity()})
        sur = copy_with(model, replace)
        sur.disabled = set()
        x0 = torch.ones(1, 1, 1, 1, dtype=DTYPE)  # (batch, C, H, W) = one element, positive
        return lambda: sum(h.sum() for h in sur.streams(x0).values())


# ---- torchvision ResNets (BasicBlock and Bottleneck) ---------------------------------------------
class TorchvisionResNetAdapter(Adapter):
    """Each BasicBlock / Bottleneck is one branch (conv..bn); ``downsample`` is the shortcut.

    The surrogate swaps ``conv1`` for the gain and every later branch module (bn, conv, the
    block's ReLU) for the identity. The ReLU a block applies after its addition is the same
    module as the one inside its branch; on the positive surrogate stream it is the identity.
    """

    name = "torchvision-resnet"
    STEM = ("conv1", "bn1", "relu", "maxpool", "fc")

    def matches(self, model):
        tvm = sys.modules.get("torchvision.models")
        return tvm is not None and isinstance(model, tvm.ResNet)

    def _blocks(self, model) -> list[tuple[str, nn.Module]]:
        return [(f"{layer}.{j}", blk) for layer in ("layer1", "layer2", "layer3", "layer4")
                for j, blk in enumerate(getattr(model, layer))]

    @staticmethod
    def _branch_modules(blk: nn.Module) -> list[nn.Module]:
        names = [n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") if hasattr(blk, n)]
        return [getattr(blk, n) for n in names]

    def layout(self, model):
        return Layout(tuple(Block(1, False, name) for name, _ in self._blocks(model)))

    def units(self, model, kind="branch"):
        _check_kind(kind)
        out = []
        for b, (name, blk) in enumerate(self._blocks(model), start=1):
            last = self._branch_modules(blk)[-1]  # bn2 (BasicBlock) or bn3 (Bottleneck)
            if kind == "branch":
                params = [p for m in self._branch_modules(blk) for p in m.parameters()]
                out.append(Unit(f"{name}.branch", "branch", b, params, [last], (b,)))
            else:
                out.append(Unit(name, "block", b, list(blk.parameters()), [last], (b,)))
        return out

    def surrogate(self, model, gains):
        replace: dict[nn.Module, nn.Module] = {getattr(model, n): nn.Identity() for n in self.STEM}
        for name, blk in self._blocks(model):
            first, *rest = self._branch_modules(blk)
            replace[first] = gains[f"{name}.branch"]
            replace.update({m: nn.Identity() for m in rest + [blk.relu]})
            if blk.downsample is not None:
                replace[blk.downsample] = nn.Identity()
        sur = copy_with(model, replace)
        x0 = torch.ones(1, 1, 1, 1, dtype=DTYPE)  # the model's own forward on a 1x1 image
        return lambda: sur(x0).sum()


# ---- Hugging Face GPT-2 -------------------------------------------------------------------------
class HFGPT2Adapter(Adapter):
    """``GPT2Model`` / ``GPT2LMHeadModel``: block = ``ln_1 + attn`` then ``ln_2 + mlp``.

    ``attn`` returns ``(output, weights)``; its surrogate returns a tuple too. Units are named by
    module path (``transformer.h.0.attn`` in an LM-head model, ``h.0.attn`` in a bare one).
    """

    name = "hf-gpt2"

    def matches(self, model):
        mod = sys.modules.get("transformers.models.gpt2.modeling_gpt2")
        return mod is not None and isinstance(model, (mod.GPT2Model, mod.GPT2LMHeadModel))

    def _base(self, model) -> tuple[str, nn.Module]:
        base = getattr(model, "transformer", model)
        if getattr(base.config, "add_cross_attention", False):
            raise ConfigError("GPT-2 with cross-attention is not supported by the fan-in adapter")
        return ("transformer." if base is not model else ""), base

    def layout(self, model):
        prefix, base = self._base(model)
        return Layout(tuple(Block(2, False, f"{prefix}h.{k}") for k in range(len(base.h))))

    def units(self, model, kind="branch"):
        _check_kind(kind)
        prefix, base = self._base(model)
        out = []
        for k, blk in enumerate(base.h):
            name, b = f"{prefix}h.{k}", k + 1
            if kind == "block":
                out.append(Unit(name, "block", b, list(blk.parameters()), [blk.attn, blk.mlp], (b,)))
                continue
            for j, (f, ln) in enumerate(((blk.attn, blk.ln_1), (blk.mlp, blk.ln_2))):
                i = 2 * b - 1 + j
                out.append(Unit(f"{name}.{'attn' if j == 0 else 'mlp'}", "branch", i,
                                list(ln.parameters()) + list(f.parameters()), [f], (i,)))
        return out

    def surrogate(self, model, gains):
        prefix, base = self._base(model)
        replace: dict[nn.Module, nn.Module] = {base.wte: nn.Identity(), base.wpe: nn.Identity()}
        if hasattr(model, "lm_head"):
            replace[model.lm_head] = nn.Identity()
        for k, blk in enumerate(base.h):
            name = f"{prefix}h.{k}"
            replace.update({blk.ln_1: nn.Identity(), blk.ln_2: nn.Identity(),
                            blk.attn: TupleOutput(gains[f"{name}.attn"]), blk.mlp: gains[f"{name}.mlp"]})
        sur = copy_with(model, replace)
        sur_base = getattr(sur, "transformer", sur)
        x0 = torch.ones(1, 1, 1, dtype=DTYPE)  # (batch, T, C) = one element

        def loss() -> torch.Tensor:
            x = x0
            for blk in sur_base.h:  # GPT2Model.forward's block loop; only the final head reads
                out = blk(x)
                x = out[0] if isinstance(out, tuple) else out  # older releases return a tuple
            return x.sum()

        return loss


ADAPTERS: list[Adapter] = [GPTAdapter(), ResNetAdapter(), TorchvisionResNetAdapter(), HFGPT2Adapter()]


def register_adapter(adapter: Adapter) -> None:
    """Add an adapter; it is tried before the built-in ones."""
    ADAPTERS.insert(0, adapter)


def find_adapter(model: nn.Module) -> Adapter:
    model = unwrap(model)
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    raise ConfigError(f"no fan-in adapter for {type(model).__name__} "
                      f"(supported: {', '.join(a.name for a in ADAPTERS)}; see gfa_theory.models.families)")


# ---- public API ---------------------------------------------------------------------------------
def module_layout(model: nn.Module) -> Layout:
    """The residual layout of a supported model."""
    model = unwrap(model)
    return find_adapter(model).layout(model)


get_layout = module_layout  # the name the gradient tracker looks up


def get_units(model: nn.Module, kind: str = "branch") -> list[Unit]:
    """Branch or block units of a supported model (what the gradient tracker measures)."""
    _check_kind(kind)
    model = unwrap(model)
    return find_adapter(model).units(model, kind)


def _count(v: float) -> int | float:
    r = round(v)
    return r if abs(v - r) < 1e-6 else v


def module_fan_in(model: nn.Module) -> dict:
    """Fan-in of ``model`` counted by autograd on its surrogate, in the JSON shape of
    :meth:`gfa_theory.theory.symbolic.FanInResult.to_dict` (``paths_by_order`` holds orders 0 and 1),
    plus the unit ``name`` of each branch, block and group slot."""
    model = unwrap(model)
    adapter = find_adapter(model)
    layout = adapter.layout(model)
    units = adapter.units(model, "branch")
    by_branch: dict[int, tuple[Unit, int]] = {}  # layout branch i -> (unit, k-th application)
    for u in units:
        for k, i in enumerate(u.applications):
            if i in by_branch:
                raise RuntimeError(f"branch {i} claimed by units {by_branch[i][0].name} and {u.name}")
            by_branch[i] = (u, k)
    if sorted(by_branch) != list(range(1, layout.N + 1)):
        raise RuntimeError(f"{adapter.name}: branch units do not cover the layout's branches 1..{layout.N}")

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
    G0, G1 = order0[n:], order1[n:]

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
    return {"model": adapter.name, "source": "autograd", "N": layout.N, "B": layout.B,
            "layout": layout.to_dict(), "max_order": 1, "branches": branch_rows,
            "blocks": block_rows, "groups": group_rows}


# ---- building models by name ----------------------------------------------------------------------
TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet")
# GPT-2 small's depth (12 blocks) with narrow widths: fan-in depends on the wiring only, and a
# full-width model would cost seconds and half a gigabyte for nothing. --set restores any size.
HF_GPT2_DEFAULTS = {"n_layer": 12, "n_embd": 64, "n_head": 4, "n_positions": 128, "vocab_size": 256}


def _overrides_dict(overrides: list[str] | dict | None) -> dict:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_value(raw)
    return out


def parse_model_spec(spec: str, overrides: list[str] | dict | None = None) -> nn.Module:
    """Build a model from ``gpt``, ``resnet``, ``torchvision:NAME`` (weights=None) or ``hf:gpt2``
    (from a GPT2Config, never pretrained weights), with ``key=value`` overrides."""
    if spec in ("gpt", "resnet"):
        from gfa_theory.models import build_model
        return build_model(spec, overrides)
    family, _, name = spec.partition(":")
    kwargs = _overrides_dict(overrides)
    if family == "torchvision":
        import torchvision
        choices = sorted(n for n in torchvision.models.list_models(module=torchvision.models)
                         if n.startswith(TORCHVISION_FAMILIES))
        if name not in choices:
            raise ConfigError(f"unknown torchvision model '{name}' (choices: {', '.join(choices)})")
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"torchvision:{name}: {exc}") from None
    if family == "hf":
        if name != "gpt2":
            raise ConfigError(f"unknown Hugging Face model '{name}' (choices: gpt2)")
        try:
            from transformers import GPT2Config, GPT2LMHeadModel
        except ImportError:
            raise ConfigError("hf:gpt2 needs the 'transformers' package (pip install 'gfa-theory[test]')") from None
        valid = set(GPT2Config().to_dict())
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ConfigError(f"unknown GPT2Config key '{unknown[0]}'")
        try:
            kw = {**HF_GPT2_DEFAULTS, **kwargs}
            for special in ("bos_token_id", "eos_token_id"):  # GPT-2's 50256 is outside a small vocab
                kw.setdefault(special, kw["vocab_size"] - 1)
            cfg = GPT2Config(**kw)
            return GPT2LMHeadModel(cfg)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"hf:gpt2: {exc}") from None
    raise ConfigError(f"unknown model '{spec}' (choices: gpt, resnet, torchvision:NAME, hf:gpt2)")


__all__ = ["ADAPTERS", "Adapter", "AppliedGain", "DTYPE", "TupleOutput", "copy_with", "find_adapter",
           "get_layout", "get_units", "module_fan_in", "module_layout", "parse_model_spec", "register_adapter",
           "unwrap"]
