"""Typed dataclass configs: strict loading, ``key=value`` overrides, stable hashes.

Every model, training run and study is described by a plain stdlib dataclass. Loading one from
JSON or from command-line overrides is strict and goes through pydantic (:func:`from_dict`): an
unknown key, a value of the wrong type or a non-finite number raises a one-line
:class:`~gfa_theory.errors.ConfigError` naming the key, never a silent default or conversion.
Hostile input (deep nesting, huge integers, huge files) is refused here too, before any of it
reaches a config.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import pydantic
from pydantic import ConfigDict, TypeAdapter

from gfa_theory.errors import ConfigError, GFAError

T = TypeVar("T")

# Hostile-input limits, checked before anything is built from a config.
INT_LIMIT = 2 ** 63 - 1  # any integer config value (torch's int64); fields have tighter bounds
SEED_MAX = 2 ** 32 - 1  # seeds: numpy's RandomState (scikit-learn splits) takes 0..2**32-1
MAX_DEPTH = 32  # nesting of a config file or --set value (a real config nests 3 deep)
MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config file is a few hundred bytes

# Strict JSON semantics: no str -> int or float -> int coercion, bool is not an integer, an
# integer is a valid float, a list a valid tuple; unknown keys and NaN / infinity are refused.
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def short_repr(value: Any, limit: int = 60) -> str:
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
        raise ConfigError(f"{name} must be an integer in 0..{SEED_MAX} (2**32-1), got {short_repr(value)}")


# ---- hostile JSON ------------------------------------------------------------------------------
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


def loads_checked(text: str, what: str) -> Any:
    """``json.loads`` with one-line errors for hostile input (deep nesting, huge integers);
    malformed JSON still raises ``json.JSONDecodeError``."""
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



def _check_integers(data: Any, prefix: str) -> None:
    """Refuse any integer outside +-:data:`INT_LIMIT` (before a config's own bounds run)."""
    todo = [(prefix.rstrip("."), data)]
    while todo:
        key, node = todo.pop()
        if isinstance(node, dict):
            todo.extend((f"{key}.{k}" if key else str(k), v) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            todo.extend((f"{key}[{n}]", v) for n, v in enumerate(node))
        elif isinstance(node, int) and not isinstance(node, bool) and not -INT_LIMIT <= node <= INT_LIMIT:
            raise ConfigError(f"config key '{key}': {short_repr(node)} is out of range "
                              f"(integers must lie within +-{INT_LIMIT})")


# ---- dicts <-> dataclasses ---------------------------------------------------------------------
def to_dict(cfg: Any) -> dict:
    """A plain JSON-ready dict of a (nested) dataclass config.

    A field declared with ``metadata={"omit_if_none": True}`` is left out while it is None, so
    adding such an optional field to a config keeps every existing config's hash."""
    return json.loads(json.dumps(_plain(cfg)))


def _plain(obj: Any) -> Any:
    """:func:`dataclasses.asdict`, less the ``omit_if_none`` fields that are None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config: identical configs share result directories."""
    payload = cfg if isinstance(cfg, dict) else to_dict(cfg)
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    # pydantic takes no config for a bare dataclass type; a one-item tuple around it carries
    # STRICT into the dataclass and every dataclass nested in it (so item 0 leads every loc)
    return TypeAdapter(tuple[cls], config=STRICT)


def _json_value(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise ConfigError(f"config value {short_repr(obj)} is not JSON data")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a JSON-like dict, strictly (see :data:`STRICT`).

    The dataclass's own ``__post_init__`` checks run as usual; their :class:`ConfigError`
    comes out unchanged. ``prefix`` is prepended to key names in messages (``model.``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config for {cls.__name__} must be a JSON object")
    _check_integers(data, prefix)
    try:
        return _adapter(cls).validate_json(json.dumps([data], default=_json_value))[0]
    except pydantic.ValidationError as exc:
        raise _explain(exc, cls, prefix) from None
    except TypeError as exc:  # a __post_init__ refusing a value pydantic let through
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from None


# ---- pydantic errors as one line -----------------------------------------------------------------
def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if _is_union(tp) or get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _locate(cls: type, loc: tuple, prefix: str) -> tuple[str, Any, type, bool]:
    """Follow a pydantic error location through the annotations of ``cls``: the dotted key,
    the annotation there, the dataclass owning the key, and whether a union of several types
    is what failed (pydantic then reports one error per member; the key is what matters)."""
    key, tp, owner = prefix.rstrip("."), cls, cls
    parts = list(loc)
    while parts:
        if _is_union(tp):
            arms = [a for a in get_args(tp) if a is not type(None)]
            if len(arms) > 1:
                return key, tp, owner, True
            tp = arms[0]  # Optional[X]: pydantic reports X's error at the same place
            continue
        part = parts.pop(0)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            owner, key = tp, f"{key}.{part}" if key else part
            tp = typing.get_type_hints(tp).get(part, Any)
        elif get_origin(tp) in (list, tuple) and isinstance(part, int):
            args = [a for a in get_args(tp) if a is not Ellipsis]
            key, tp = f"{key}[{part}]", (args[part] if len(args) > 1 else args[0]) if args else Any
        else:  # inside Any (a free-form dict): keep the path as pydantic gives it
            key = f"{key}.{part}"
    return key, tp, owner, _is_union(tp) and len([a for a in get_args(tp) if a is not type(None)]) > 1


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "finite_number": "a finite number",
             "bool_type": "true/false", "string_type": "a string", "list_type": "a list",
             "tuple_type": "a list", "dataclass_type": "an object", "dataclass_args_type": "an object"}


def _explain(exc: pydantic.ValidationError, cls: type, prefix: str) -> ConfigError | GFAError:
    """The first error of ``exc`` as one line: unknown keys first (sorted), as they were before
    any type was looked at; a refusal by a ``__post_init__`` comes out as it was raised."""
    errors = exc.errors(include_url=False)
    unknown = sorted((e for e in errors if e["type"] == "unexpected_keyword_argument"),
                     key=lambda e: [str(p) for p in e["loc"]])
    err = (unknown or errors)[0]
    loc, value = err["loc"][1:], err.get("input")
    raised = (err.get("ctx") or {}).get("error")
    key, tp, owner, union = _locate(cls, loc, prefix)
    if isinstance(raised, GFAError):
        return raised
    if err["type"] == "unexpected_keyword_argument":
        valid = ", ".join(sorted(f.name for f in dataclasses.fields(owner) if f.init))
        return ConfigError(f"unknown config key '{key}' for {owner.__name__} (valid: {valid})")
    if isinstance(raised, Exception):  # a ValueError from a __post_init__
        return ConfigError(f"invalid {owner.__name__}: {raised}")
    if union:
        return ConfigError(f"config key '{key}': {short_repr(value)} is not a valid {_type_name(tp)}")
    if err["type"] == "literal_error":
        choices = ", ".join(repr(a) for a in get_args(tp))
        return ConfigError(f"config key '{key}': {short_repr(value)} is not one of {choices}")
    if err["type"] in ("too_short", "too_long"):
        return ConfigError(f"config key '{key}': expected {len(get_args(tp))} items, got {len(value)}")
    if err["type"] == "missing_argument":
        return ConfigError(f"config key '{key}' is missing")
    expected = _EXPECTED.get(err["type"], _type_name(tp))
    return ConfigError(f"config key '{key}': expected {expected}, got {short_repr(value)}")


# ---- files and overrides -----------------------------------------------------------------------
def load_json(path: str | Path) -> dict:
    """Read a JSON object from a file, with one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes: more than the "
                              f"{MAX_CONFIG_BYTES // 2 ** 20} MiB a config can be")
        data = loads_checked(p.read_text(encoding="utf-8"), f"config file {p}")
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
        return loads_checked(text, f"value {short_repr(text, 40)}")
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """``data`` with ``key=value`` overrides applied (dotted keys reach nested configs)."""
    out = json.loads(json.dumps(data))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{short_repr(item, 40)}' must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts) or len(parts) > MAX_DEPTH:
            raise ConfigError(f"override '{short_repr(item, 40)}': '{short_repr(key, 40)}' is not a config key")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a nested config")
        node[parts[-1]] = parse_value(raw)
    return out


def parse_overrides(overrides: list[str] | dict | None) -> dict:
    """``key=value`` strings as a dict (a dict is taken as it is): keyword arguments for
    constructors outside this package (torchvision, transformers)."""
    if isinstance(overrides, dict):
        return dict(overrides)
    return apply_overrides({}, overrides)


def merge(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, nested dicts merged key by key."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def build(cls: type[T], base: T | None = None, config_file: str | Path | None = None,
          overrides: list[str] | None = None) -> T:
    """Defaults <- optional JSON file <- ``key=value`` overrides, validated strictly."""
    data = to_dict(base if base is not None else cls())
    if config_file is not None:
        data = merge(data, load_json(config_file))
    return from_dict(cls, apply_overrides(data, overrides))


__all__ = ["INT_LIMIT", "MAX_CONFIG_BYTES", "MAX_DEPTH", "SEED_MAX", "STRICT", "apply_overrides", "build",
           "check_seed", "config_hash", "from_dict", "load_json", "merge", "parse_overrides", "parse_value",
           "short_repr", "to_dict"]
