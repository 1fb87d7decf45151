"""Torch devices by name: ``auto``, checks against the devices this machine has.

``auto`` means CUDA when a CUDA device is present, else the CPU. A name is checked in two
steps: :func:`parse_device` (syntax; ``meta`` is refused: it holds no data, so nothing can
train or be timed on it) when a config is built, and :func:`check_device` (is it present
here?) only when something is about to run on it, so that the stored config of a GPU run can
still be read on a machine without one.
"""
from __future__ import annotations

import torch

from gfa_theory.errors import ConfigError

AUTO = "auto"


def available_devices() -> list[str]:
    """Device names usable on this machine, e.g. ``["cpu"]`` or ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += [f"xpu:{i}" for i in range(xpu.device_count())]
    return names


def parse_device(name: str, what: str = "device") -> str:
    """``name`` if it is ``auto`` or a torch device other than ``meta``; else a ConfigError."""
    if name == AUTO:
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{what}: {name!r} is not a torch device "
                          f"(use auto, cpu, cuda, cuda:<index> or mps)") from None
    if dev.type == "meta":
        raise ConfigError(f"{what}: 'meta' is not a device that can train or run a model "
                          f"(it holds no data): use auto, cpu or cuda")
    return name


def resolve_device_name(name: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is present, else ``cpu``; any other name unchanged."""
    if name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _present(dev: torch.device) -> bool:
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available() and dev.index in (None, 0)
    if dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu is not None and xpu.is_available() and (dev.index is None or dev.index < xpu.device_count())
    return False


def check_device(name: str, what: str = "device") -> torch.device:
    """The torch device ``name`` resolves to, if this machine has it; else a one-line
    ConfigError naming the devices that are available."""
    dev = torch.device(resolve_device_name(parse_device(name, what)))
    if not _present(dev):
        raise ConfigError(f"{what}={name!r} is not available on this machine "
                          f"(available: {', '.join(available_devices())})")
    return dev
