"""Branch gains measured on a live model: what the gain-aware theory takes as input.

At a sampled step, one forward and backward pass on a batch gives, per branch application
``i`` (notation: :mod:`gfa_theory.theory.symbolic`; gains: :mod:`gfa_theory.theory.gains`):

=====================  =========================================================================
quantity               meaning
=====================  =========================================================================
``stream_rms``         RMS of the stream ``x_{i-1}`` the branch reads (before any norm)
``branch_rms``         RMS of the branch output ``y_i`` it adds to the stream
``jacobian_gain``      ``sqrt(sum_k ||J_i^T u_k||^2 / sum_k ||u_k||^2)`` over Gaussian probes
                       ``u_k``: the RMS singular value of the branch Jacobian ``J_i = dy_i/dx_{i-1}``
                       (``||J_i||_F / sqrt(dim y)``), the scalar ``g_i`` of the theory
``stream_grad_norm``   ``||dL/dy_i||``: the gradient at the stream position branch ``i`` writes
``contribution_norm``  ``||c_i||``, ``c_i = J_i^T dL/dy_i``: what branch ``i`` passes down to
                       ``x_{i-1}`` (every path whose lowest branch is ``i``)
``alignment``          cosine of ``c_i`` with the identity path ``dL/dx`` at the last stream
                       position (NaN where the shapes differ, e.g. across ResNet stages)
=====================  =========================================================================

For a sequential stack with one head the gradient at the stream input telescopes exactly:
``dL/dx_0 = dL/dx_last + sum_i c_i``, so ``alignment`` and ``contribution_norm`` say which of the
theory's two limits (aligned sum, orthogonal root-sum-of-squares) the measured norm follows. The
identity path is read at the last position: under deep supervision it carries only the final
head, and under Post-LN the "identity" passes through the norms.

With ``norms=True`` the table also holds each norm's backward gain (the RMS singular value of
its Jacobian, by the same probes) where the model declares its norms (``norm_calls()``: this
package's GPT and ResNets), one row per call, ``index`` the branch, position or head it serves:
``pre_norm_gain`` / ``out_norm_gain`` (the norm a branch reads through / writes through),
``post_norm_gain`` (after the sum writing position ``index``: Post-LN, Mix-LN, DeepNorm; a
post-activation ResNet's ReLU), ``head_norm_gain`` (``ln_f`` on head ``index``) and
``skip_gain`` (a projection shortcut into position ``index``). :func:`predict_profile` turns a
table into every account's profile of ``A``, with and without these norm gains.

Where the stream is read: models with ``tap_branches()`` (this package's GPT) report the exact
stream input; for other registered families the input of each branch unit's output module is
taken, which is the stream where the branch reads it directly (the ResNets) but the normalised
stream in a Pre-LN model that keeps its norm outside the output module.

Cost: one forward, one backward to the branch outputs, then ``1 + probes`` backward passes
through each branch alone (about ``2 + probes`` backward passes in all). ``.grad`` is untouched
and the probes come from their own generator, so training is unaffected.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gfa_theory.errors import ConfigError
from gfa_theory.models.base import NormCall, logits_and_loss, unwrap
from gfa_theory.models.families import get_units
from gfa_theory.models.gpt import Tap
from gfa_theory.theory import gains as theory

QUANTITIES = ("stream_rms", "branch_rms", "jacobian_gain", "stream_grad_norm",
              "contribution_norm", "alignment")
# norm role (gfa_theory.models.base.NormCall) -> its quantity in the gains table
NORM_QUANTITIES = {"pre": "pre_norm_gain", "out": "out_norm_gain", "post": "post_norm_gain",
                   "head": "head_norm_gain", "skip": "skip_gain"}


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().square().mean().sqrt())


def jacobian_gain(y: torch.Tensor, x: torch.Tensor, probes: int = 4,
                  generator: torch.Generator | None = None) -> float:
    """RMS singular value of ``J = dy/dx`` from ``probes`` Gaussian VJPs (``y`` computed from
    ``x`` in the current graph, which is kept): ``sqrt(sum ||J^T u||^2 / sum ||u||^2)``."""
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ConfigError(f"probes must be a positive integer, got {probes!r}")
    num = den = 0.0
    for _ in range(probes):
        u = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        (v,) = torch.autograd.grad(y, x, u, retain_graph=True)
        num += float(v.double().square().sum())
        den += float(u.double().square().sum())
    return (num / den) ** 0.5


@contextmanager
def _hooked_taps(model: nn.Module) -> Iterator[list[Tap]]:
    """Taps from forward hooks on each branch unit's output modules (applications in order)."""
    taps: list[Tap] = []
    handles = []
    for u in get_units(model, "branch"):
        apps = list(u.applications or (u.index,))
        calls = [0]

        def hook(module, inputs, output, u=u, apps=apps, calls=calls):
            if calls[0] < len(apps) and torch.is_tensor(output) and inputs and torch.is_tensor(inputs[0]):
                taps.append(Tap(apps[calls[0]], u.name, inputs[0], output))
            calls[0] += 1

        handles += [m.register_forward_hook(hook) for m in u.outputs[:1]]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _norm_taps(model: nn.Module, calls: list[NormCall]) -> Iterator[list[tuple[NormCall, torch.Tensor, torch.Tensor]]]:
    """``(call, input, output)`` of every declared norm call of the forward passes run inside,
    matched to the declaration in call order (a forward pass that calls them otherwise is refused
    when the context closes)."""
    seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    handles = []
    for m in {id(c.module): c.module for c in calls}.values():
        handles.append(m.register_forward_hook(
            lambda mod, inp, out: seen.append((mod, inp[0], out)) if inp and torch.is_tensor(inp[0]) else None))
    matched: list[tuple[NormCall, torch.Tensor, torch.Tensor]] = []
    try:
        yield matched
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(calls) or any(m is not c.module for (m, _, _), c in zip(seen, calls)):
        raise ConfigError(f"{type(model).__name__}: the forward pass called {len(seen)} norms, "
                          f"not the {len(calls)} its norm_calls() declares, in that order")
    matched.extend((c, i, o) for c, (_, i, o) in zip(calls, seen))


@dataclass
class BranchGradients:
    """One forward/backward pass, kept for measuring: taps (by branch index), the gradient at
    each branch output, each branch's contribution ``c_i`` and the identity path (and, when
    asked for, every declared norm call with its input and output)."""

    taps: list[Tap]
    stream_grads: list[torch.Tensor]
    contributions: list[torch.Tensor]
    identity: torch.Tensor
    loss: torch.Tensor
    norm_taps: list[tuple[NormCall, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def branch_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     final_only: bool = False, norms: bool = False) -> BranchGradients:
    """Forward ``(x, y)`` with every branch tapped and split the gradient by branch; ``norms``:
    tap the model's declared norm calls too (none where it declares none)."""
    model = unwrap(model)
    tap = model.tap_branches if hasattr(model, "tap_branches") else lambda: _hooked_taps(model)
    calls = model.norm_calls(final_only) if norms and hasattr(model, "norm_calls") else []
    with ExitStack() as stack:
        stack.enter_context(torch.enable_grad())
        taps = stack.enter_context(tap())
        norm_taps = stack.enter_context(_norm_taps(model, calls))
        _, loss = logits_and_loss(model, x, y, final_only=final_only)
    taps = sorted(taps, key=lambda t: t.index)
    if not taps:
        raise ConfigError(f"model {type(model).__name__} exposes no branch to measure")
    if not all(t.x.requires_grad and t.y.requires_grad for t in taps):
        raise ConfigError("branch inputs and outputs must be in the autograd graph (gradients on)")
    grads = torch.autograd.grad(loss, [t.y for t in taps], retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t.y) if g is None else g for t, g in zip(taps, grads)]
    contrib = [torch.autograd.grad(t.y, t.x, g, retain_graph=True)[0] for t, g in zip(taps, grads)]
    return BranchGradients(taps, grads, contrib, grads[-1], loss, norm_taps)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("nan")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def relu_gain(out: torch.Tensor) -> float:
    """RMS singular value of a ReLU's Jacobian read from its output: ``sqrt(fraction > 0)``."""
    return float((out.detach() > 0).double().mean().sqrt())


def measure_gains(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probes: int = 4,
                  seed: int = 0, step: int | None = None, final_only: bool = False,
                  norms: bool = False) -> pd.DataFrame:
    """The table of the module docstring for one batch: columns step, unit, index (branch ``i``),
    quantity, value; one row per branch application and quantity (and, with ``norms``, one per
    declared norm call: :data:`NORM_QUANTITIES`; the branch rows are the same either way)."""
    bg = branch_gradients(model, x, y, final_only, norms)
    gen = torch.Generator(device=bg.loss.device).manual_seed(seed)
    rows = []
    for t, g, c in zip(bg.taps, bg.stream_grads, bg.contributions):
        values = {"stream_rms": _rms(t.x), "branch_rms": _rms(t.y),
                  "jacobian_gain": jacobian_gain(t.y, t.x, probes, gen),
                  "stream_grad_norm": float(g.double().norm()),
                  "contribution_norm": float(c.double().norm()),
                  "alignment": _cosine(c, bg.identity)}
        rows += [(step, t.unit, t.index, q, values[q]) for q in QUANTITIES]
    for call, i, o in bg.norm_taps:  # after the branches: their probes are drawn first, as without norms
        value = relu_gain(o) if call.relu else jacobian_gain(o, i, probes, gen)
        rows.append((step, call.name, call.index, NORM_QUANTITIES[call.role], value))
    df = pd.DataFrame(rows, columns=["step", "unit", "index", "quantity", "value"])
    df["step"] = df["step"].astype("Int64")
    return df


class GainMonitor:
    """Measure gains every ``every`` steps during training and keep the frames.

    Call ``monitor.maybe(step, x, y)`` with the step's batch, outside the optimizer's
    backward/step (it does not touch ``.grad``); ``monitor.to_frame()`` is the long table.
    """

    def __init__(self, model: nn.Module, every: int = 50, probes: int = 4, seed: int = 0) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer, got {every!r}")
        self.model, self.every, self.probes, self.seed = model, every, probes, seed
        self.frames: list[pd.DataFrame] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def maybe(self, step: int, x: torch.Tensor, y: torch.Tensor) -> bool:
        if not self.due(step):
            return False
        self.frames.append(measure_gains(self.model, x, y, self.probes, self.seed + step, step))
        return True

    def to_frame(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame(columns=["step", "unit", "index", "quantity", "value"])
        return pd.concat(self.frames, ignore_index=True)


# ---- gains on held-out batches, on a declared schedule -----------------------------------------

@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout draw) except BatchNorm, which normalises by the batch as in training;
    its running statistics are restored on exit, so measuring leaves the model as it was. At
    initialization the running statistics are (0, 1): in eval mode a BatchNorm's gain would be
    about 1, not what the first training steps see."""
    was = {m: m.training for m in model.modules()}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in bns]
    model.eval()
    for m in bns:
        m.train()
    try:
        yield model
    finally:
        for m, buf in zip(bns, saved):
            for k, v in buf.items():
                getattr(m, k).copy_(v)
        for m, t in was.items():
            m.train(t)


def heldout_gains(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], probes: int = 2,
                  seed: int = 0, step: int | None = None) -> pd.DataFrame:
    """Branch and norm gains (``norms=True``) on held-out ``batches``, under
    :func:`batch_statistics`, averaged over the batches: one row per (unit, index, quantity)."""
    model = unwrap(model)
    if not batches:
        raise ConfigError("held-out gains need at least one batch")
    with batch_statistics(model):
        frames = [measure_gains(model, x, y, probes, seed + k, step, norms=True)
                  for k, (x, y) in enumerate(batches)]
    df = pd.concat(frames, ignore_index=True)
    out = df.groupby(["unit", "index", "quantity"], sort=False, dropna=False)["value"].mean().reset_index()
    out.insert(0, "step", pd.array([step] * len(out), dtype="Int64"))
    return out


def window_steps(steps: int, fraction: float, samples: int) -> list[int]:
    """The sample steps of the first ``fraction`` of a ``steps``-step run: ``samples`` steps
    spaced evenly over ``0 .. floor(fraction * steps)`` (step 0 alone for ``fraction = 0``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a positive integer, got {samples!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"a training fraction must be in [0, 1], got {fraction!r}")
    end = min(int(np.floor(fraction * steps)), steps - 1)  # the loop measures before steps 0..steps-1
    return sorted({int(round(v)) for v in np.linspace(0, end, samples)})


def early_gain_steps(steps: int, fractions: Sequence[float] = (0.0, 0.01, 0.05, 0.25),
                     samples: int = 4) -> tuple[int, ...]:
    """Every step :func:`window_steps` needs for these fractions (a ``heldout_gain_steps`` value)."""
    return tuple(sorted({s for f in fractions for s in window_steps(steps, f, samples)}))


def window_means(table: pd.DataFrame, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Per (index, quantity): the mean over the sampled ``steps`` (None: every step of the table).
    The rows of a shared module's applications keep their own index (one per application)."""
    t = table if steps is None else table[table["step"].isin(list(steps))]
    if steps is not None and set(steps) - set(t["step"].dropna().astype(int)):
        missing = sorted(set(steps) - set(t["step"].dropna().astype(int)))
        raise ConfigError(f"the gains table has no sample at step(s) {missing[:5]}")
    return t.pivot_table(index="index", columns="quantity", values="value", aggfunc="mean")


def _per_index(means: pd.DataFrame, quantity: str, indices: Sequence[int]) -> list[float] | None:
    if quantity not in means.columns:
        return None
    col = means[quantity]
    values = [float(col.get(i, np.nan)) for i in indices]
    if any(not np.isfinite(v) for v in values):
        return None
    return values


def predict_profile(model: nn.Module, table: pd.DataFrame, norms: bool = True,
                    steps: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Every account's branch profile of ``A`` (:data:`gfa_theory.theory.gains.ACCOUNTS`, one
    value per branch application ``i``) from a gains table (:func:`measure_gains` /
    :func:`heldout_gains` rows; averaged over ``steps``, or over all its rows).

    The branch gains are the measured ``jacobian_gain`` (a branch's own norms included), the skip
    gains ``alpha`` of a GPT config. With ``norms`` the measured norm gains enter where the wiring
    puts them (:mod:`gfa_theory.theory.gains`): the norm after each sum (``post_norm_gain``), the
    heads' norms, the branch output norms and projection shortcuts; where the table has none of a
    role, that role's gains are 1."""
    model = unwrap(model)
    layout = model.layout()
    means = window_means(table, steps)
    g = _per_index(means, "jacobian_gain", range(1, layout.N + 1))
    if g is None:
        raise ConfigError(f"the gains table lacks a jacobian_gain for some of the {layout.N} branches")
    P = layout.n_positions
    cfg = getattr(model, "config", None)
    alpha = float(cfg.norms().alpha) if callable(getattr(cfg, "norms", None)) else 1.0
    identity = [alpha] * P
    wiring: dict[str, list[float] | None] = {}
    if norms:
        skip = means["skip_gain"] if "skip_gain" in means.columns else pd.Series(dtype=float)
        identity = [alpha * float(skip[p]) if p in skip.index and np.isfinite(skip[p]) else alpha
                    for p in range(1, P + 1)]
        post = means["post_norm_gain"] if "post_norm_gain" in means.columns else pd.Series(dtype=float)
        wiring["norms"] = [float(post[p]) if p in post.index and np.isfinite(post[p]) else 1.0
                           for p in range(1, P + 1)]
        wiring["heads"] = _per_index(means, "head_norm_gain", layout.supervision)
        out = means["out_norm_gain"] if "out_norm_gain" in means.columns else pd.Series(dtype=float)
        wiring["out"] = [float(out[i]) if i in out.index and np.isfinite(out[i]) else 1.0
                         for i in range(1, layout.N + 1)]
    return theory.accounts(layout, g, identity=None if all(a == 1.0 for a in identity) else identity, **wiring)


def unit_profile(model: nn.Module, per_branch: Sequence[float], kind: str = "branch") -> np.ndarray:
    """A per-application branch profile summed onto the model's units of ``kind`` (a shared unit
    sums its applications; a block sums its branches), in the order of ``model.units(kind)``."""
    model = unwrap(model)
    layout = model.layout()
    v = np.asarray(per_branch, dtype=np.float64)
    if v.shape != (layout.N,):
        raise ConfigError(f"a branch profile needs {layout.N} values, got {v.shape}")
    by_block: dict[int, list[int]] = {}
    for br in layout.branches():
        by_block.setdefault(br.block, []).append(br.index)
    out = []
    for u in get_units(model, kind):
        apps = list(u.applications or (u.index,))
        idx = apps if kind == "branch" else [i for b in apps for i in by_block[b]]
        out.append(float(v[[i - 1 for i in idx]].sum()))
    return np.array(out)
