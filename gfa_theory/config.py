"""Typed dataclass configs: strict loading, ``key=value`` overrides, stable hashes.

Every model, training run and study is described by a dataclass. Loading from JSON or from
command-line overrides is strict: an unknown key or a value of the wrong type raises
:class:`~gfa_theory.errors.ConfigError` naming the key, never a silent default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from gfa_theory.errors import ConfigError

T = TypeVar("T")

# Hostile-input limits, checked before anything is built from a config.
INT_LIMIT = 2 ** 63 - 1  # any integer config value (torch's int64); fields have tighter bounds
SEED_MAX = 2 ** 32 - 1  # seeds: numpy's RandomState (scikit-learn splits) takes 0..2**32-1
MAX_DEPTH = 32  # nesting of a config file or --set value (a real config nests 3 deep)
MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config file is a few hundred bytes


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages stay one short line)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return "<an integer with too many digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_seed(name: str, value: Any) -> None:
    """Seeds are integers in 0..2**32-1: the range every RNG the package seeds accepts
    (torch takes more, numpy's RandomState behind the scikit-learn split does not)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{name} must be an integer in 0..{SEED_MAX} (2**32-1), got {_short(value)}")


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (iterative: deep input cannot exhaust the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            todo.extend((v, d + 1) for v in node)
    return deepest


def _loads(text: str, what: str) -> Any:
    """``json.loads`` with one-line errors for hostile input (deep nesting, huge integers)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        raise ConfigError(f"{what}: {str(exc).split(';')[0]}") from None
    if _depth(value) > MAX_DEPTH:
        raise ConfigError(f"{what} nests deeper than {MAX_DEPTH} levels")
    return value


def to_dict(cfg: Any) -> dict:
    """A plain JSON-ready dict of a (nested) dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config: identical configs share result directories."""
    payload = cfg if isinstance(cfg, dict) else to_dict(cfg)
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting JSON lists to tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}': {_short(value)} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key '{key}': {_short(value)} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {_short(value)}")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],)
        if origin is tuple and args and len(args) > 1:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{n}]") for n, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{n}]") for n, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected an object, got {_short(value)}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {_short(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value <= INT_LIMIT:
                raise ConfigError(f"config key '{key}': {_short(value)} is out of range "
                                  f"(integers must lie within +-{INT_LIMIT})")
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {_short(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}': expected a finite number, got {_short(value)}")
            return number
        raise ConfigError(f"config key '{key}': expected a number, got {_short(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {_short(value)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {_short(value)}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build ``cls`` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config for {cls.__name__} must be a JSON object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__}"
            f" (valid: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from None


def load_json(path: str | Path) -> dict:
    """Read a JSON object from a file, with one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes: more than the "
                              f"{MAX_CONFIG_BYTES // 2 ** 20} MiB a config can be")
        data = _loads(p.read_text(encoding="utf-8"), f"config file {p}")
    except OSError as exc:
        raise ConfigError(f"config file {p} is unreadable: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object")
    return data


def parse_value(text: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, lists, true/false), else a string.

    JSON that parses but is hostile (nested deeper than :data:`MAX_DEPTH`, an integer of
    thousands of digits) is a :class:`ConfigError`, not a string."""
    try:
        return _loads(text, f"value {_short(text, 40)}")
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key=value`` (dotted keys reach nested configs) to a config dict."""
    out = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{_short(item, 40)}' must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts) or len(parts) > MAX_DEPTH:
            raise ConfigError(f"override '{_short(item, 40)}': '{_short(key, 40)}' is not a config key")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a nested config")
        node[parts[-1]] = parse_value(raw)
    return out


def build(cls: type[T], base: T | None = None, config_file: str | Path | None = None,
          overrides: list[str] | None = None) -> T:
    """Defaults <- optional JSON file <- ``key=value`` overrides, validated strictly."""
    data = to_dict(base if base is not None else cls())
    if config_file is not None:
        data = _merge(data, load_json(config_file))
    return from_dict(cls, apply_overrides(data, overrides))


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
