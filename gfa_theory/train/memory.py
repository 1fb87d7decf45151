"""Will it fit? Memory estimates from a config alone, checked before anything is allocated.

``gfa train --set model.n_blocks=100000`` must fail in a second with one line, not after the
machine has spent minutes swapping its way into the OOM killer. The estimate counts, in float32:

* the parameters, exactly as the package's models build them (:func:`param_count`);
* their gradients and the optimizer state (AdamW: two moments; SGD: one momentum buffer);
* the activations autograd keeps for one training batch (:func:`activation_floats`): per
  Transformer block and token ``6C + 4 * inner + 2 * d_ff + heads * T`` (LayerNorm outputs,
  q/k/v, attention output and probabilities, the FFN hidden layer before and after the GELU,
  the residual sums), plus ``C + 2 * vocab`` per token and supervised head; per ResNet block
  and image ``2 * c_in * H * W + 5 * c_out * H' * W'``;
* a fixed :data:`BASE_BYTES` for the interpreter, torch and the data.

Fields the data determine (vocabulary, image shape, classes) are taken as the data set has them
(:data:`TEXT_VOCAB`, :data:`IMAGE_SHAPES`), not from the config, which training overrides too.

It is compared with the memory of the machine (:func:`available_memory`: physical RAM, or the
container's cgroup limit when that is lower). It errs high, never by more than a small factor,
so a refusal means the run could not have finished here.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from gfa_theory.errors import ConfigError
from gfa_theory.models import GPTConfig

FLOAT_BYTES = 4
BASE_BYTES = 2 ** 30  # interpreter, torch, pandas, scipy, data, the tracker: measured ~1 GiB
# (in_channels, image_size, classes) of the image datasets: resolved from the data at training
# time (see gfa_theory.train.run_config.resolve), known here before any data is loaded
IMAGE_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}
# Character vocabulary assumed for text (the default corpus has 103 characters; a text file with
# a larger alphabet adds 2 * vocab floats per token and head, and vocab * n_embd parameters)
TEXT_VOCAB = 128


# ---- the machine -------------------------------------------------------------------------------

def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2 ** 60:  # "max" / a huge number: no limit
            return int(text)
    return None


def available_memory() -> int | None:
    """Bytes of memory this process may use: physical RAM, or a lower cgroup (container) limit.
    ``None`` where the platform does not say (the check is then skipped)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        total = None
    limit = _cgroup_limit()
    candidates = [m for m in (total, limit) if m and m > 0]
    return min(candidates) if candidates else None


def gib(n: float) -> str:
    """``n`` bytes in GiB, readable for tiny and astronomically large values alike."""
    g = n / 2 ** 30
    return f"{g:.3g} GiB" if g < 1e6 else f"{g:.2e} GiB"


# ---- parameters ----------------------------------------------------------------------------------

def _gpt_blocks(m: Any) -> list[tuple[int, int, int]]:
    """(heads, inner attention width, d_ff) of each unique block of a GPTConfig."""
    return [(h, h * hd, d) for h, hd, d in zip(m.heads(), m.head_dims(), m.ffn())]


def param_count(name: str, m: Any) -> int:
    """Parameters of model ``name`` ('gpt' or 'resnet') built from config ``m`` (exact)."""
    if name == "gpt":
        C, V, T, bias = m.n_embd, m.vocab_size, m.block_size, int(m.bias)
        ln = C * (1 + bias)
        n = V * C + T * C + ln  # token and position embeddings, final LayerNorm
        if not m.tie_embeddings:
            n += V * C
        for _, inner, d in _gpt_blocks(m):
            n += 2 * ln + C * 3 * inner + inner * C + C * d + d * C
            n += bias * (3 * inner + C + d + C)
        return n
    if name == "resnet":
        post = m.variant == "post"
        w0 = m.widths[0]
        n = 9 * m.in_channels * w0 + (2 * w0 if post else 0)
        c_in, outs = w0, []
        for s, (blocks, c_out) in enumerate(zip(m.blocks_per_stage, m.widths)):
            for j in range(blocks):
                stride = 2 if s > 0 and j == 0 else 1
                n += 9 * c_in * c_out + 9 * c_out * c_out + 2 * c_out + 2 * (c_out if post else c_in)
                if stride != 1 or c_in != c_out:
                    n += c_in * c_out + (2 * c_out if post else 0)
                c_in = c_out
                outs.append(c_out)
        for b in m.supervised():
            ch = outs[b - 1]
            n += ch * m.num_classes + m.num_classes + (0 if post else 2 * ch)
        return n
    raise ConfigError(f"no memory estimate for model '{name}'")


def activation_floats(name: str, m: Any, batch: int) -> int:
    """Floats autograd keeps for one training batch of ``batch`` sequences / images."""
    if name == "gpt":
        T, C, V = m.block_size, m.n_embd, m.vocab_size
        blocks = _gpt_blocks(m)
        per_token = 2 * C  # embeddings
        for u in m.schedule():
            h, inner, d = blocks[u]
            per_token += 6 * C + 4 * inner + 2 * d + h * T
        per_token += len(m.supervised()) * (C + 2 * V)
        return batch * T * per_token
    if name == "resnet":
        side = m.image_size
        per_image = (m.in_channels + m.widths[0]) * side ** 2  # input, stem
        c_in = m.widths[0]
        for s, (blocks, c_out) in enumerate(zip(m.blocks_per_stage, m.widths)):
            for j in range(blocks):
                out = (side + 1) // 2 if s > 0 and j == 0 else side  # stride 2 at a stage change
                per_image += 2 * c_in * side ** 2 + 5 * c_out * out ** 2
                c_in, side = c_out, out
        return batch * per_image
    raise ConfigError(f"no memory estimate for model '{name}'")


# ---- estimates and the check ---------------------------------------------------------------------

def training_estimate(cfg: Any) -> dict[str, int]:
    """Bytes one training process of run config ``cfg`` (a RunConfig) needs, by part."""
    m = cfg.model  # its data-determined fields are replaced by the data's, as training does
    if cfg.model_name == "gpt":
        m = dataclasses.replace(m, vocab_size=TEXT_VOCAB)
    elif cfg.data.dataset in IMAGE_SHAPES:
        c, s, k = IMAGE_SHAPES[cfg.data.dataset]
        m = dataclasses.replace(m, in_channels=c, image_size=s, num_classes=k)
    params = param_count(cfg.model_name, m)
    states = 2 if cfg.train.optimizer == "adamw" else 1
    parts = {"params": params,
             "weights": params * FLOAT_BYTES * (2 + states),  # weights, gradients, optimizer state
             "activations": activation_floats(cfg.model_name, m, cfg.train.batch_size) * FLOAT_BYTES,
             "base": BASE_BYTES}
    parts["total"] = parts["weights"] + parts["activations"] + parts["base"]
    return parts


def check_fits(needed: int, what: str, detail: str = "", advice: str = "make the model smaller") -> None:
    """Refuse (one-line :class:`ConfigError`) when ``needed`` bytes exceed the machine's memory."""
    have = available_memory()
    if have is not None and needed > have:
        raise ConfigError(f"{what} needs about {gib(needed)} of memory{detail}, more than the "
                          f"{gib(have)} this machine has: {advice}")


def check_training_memory(cfg: Any) -> dict[str, int]:
    """:func:`training_estimate` of ``cfg``, refused if it exceeds :func:`available_memory`."""
    est = training_estimate(cfg)
    states = "AdamW moments" if cfg.train.optimizer == "adamw" else "SGD momentum"
    check_fits(est["total"], f"training this {cfg.model_name} model",
               f" ({est['params']:,} parameters: {gib(est['weights'])} for weights, gradients and "
               f"{states}; {gib(est['activations'])} of activations for a batch of "
               f"{cfg.train.batch_size})", "make the model or train.batch_size smaller")
    return est


def check_model_memory(name: str, m: Any, copies: int = 2) -> int:
    """Building ``copies`` float32 copies of model ``name`` (no training), refused if too big."""
    params = param_count(name, m)
    needed = params * FLOAT_BYTES * copies + BASE_BYTES
    check_fits(needed, f"building this {name} model", f" ({params:,} parameters)")
    return needed


def check_calibration_memory(batches: int, batch_size: int, item_bytes: int, what: str) -> int:
    """``batches`` calibration batches of ``batch_size`` items of ``item_bytes`` each, drawn at
    once (inputs and targets), refused if they exceed the machine's memory."""
    needed = batches * batch_size * item_bytes + BASE_BYTES
    check_fits(needed, what, f" ({batches:,} batches of {batch_size:,})",
               "pass a smaller --calib-batches (a few batches rank the blocks as well as many)")
    return needed


def check_inference_memory(taper: Any, batch: int) -> int:
    """``gfa bench taper``: the uniform and the tapered model of ``taper`` (a TaperConfig) side by
    side, each running a forward pass of ``batch`` sequences (no autograd), refused if too big."""
    uniform = GPTConfig(vocab_size=taper.vocab_size, block_size=taper.block_size, n_embd=taper.n_embd,
                        n_blocks=taper.B, n_head=taper.n_head, d_ff=taper.d_ff)
    params = param_count("gpt", uniform)  # the tapered model is no larger
    C, T, V, h = taper.n_embd, taper.block_size, taper.vocab_size, taper.n_head
    per_token = 4 * C + 3 * h * taper.head_dim + h * T + taper.d_ff + 2 * V  # one block's peak
    needed = 2 * params * FLOAT_BYTES + batch * T * per_token * FLOAT_BYTES + BASE_BYTES
    check_fits(needed, "timing these models", f" ({params:,} parameters each, a batch of {batch} x {T} tokens)",
               "make the model, --batch or --context smaller")
    return needed
