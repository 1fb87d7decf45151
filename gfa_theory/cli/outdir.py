"""What an ``--out`` directory may already hold, per command (checked before anything is written).

* ``gfa train`` / ``gfa study``: ``--out`` is a *results root*: it holds many run directories
  (``<model>-<hash>/``, reused by hash) and ``studies/``; anything else may sit beside them. It
  must not itself be a run directory, a ``gfa prune`` result or a ``gfa reproduce`` folder:
  runs would be nested inside another result. Never allowed (no override).
* ``gfa prune``: ``--out`` must be missing, empty, or hold the result of an earlier ``gfa prune``
  of the same run (or Hugging Face checkpoint) with the same options (rerunning a command replaces its own result).
  Anything else (another prune's result, a run, unrelated files) needs ``--force``.
* ``gfa reproduce``: ``--out`` must be missing, empty, or hold only files that ``gfa reproduce``
  writes (figures, tables, stamps, the report): it is redrawn in place. Anything else needs
  ``--force``.

A refusal is one :class:`~gfa_theory.errors.ConfigError` line, and nothing in the directory is
touched. "The same prune" means the same resolved source path with the same content hash
(:func:`source_identity`) and the same options, never merely a source of the same name.

``gfa prune`` writes its result into a fresh temporary directory next to ``--out`` and moves it
into place (:func:`staged`): a crash or a full disk leaves nothing behind, no file of an earlier
result survives into the new one, and a symbolic link inside ``--out`` is replaced, never
written through.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from gfa_theory.errors import ConfigError, StorageError
from gfa_theory.train.store import storage_error

RUN_MARKERS = ("DONE", "config.json", "checkpoint.pt", "metrics.csv", "gradients.csv", "snapshots")
PRUNE_FILES = ("checkpoint.pt", "evaluation.json", "report.md", "scores.png")
# what save_pretrained writes for a pruned Hugging Face checkpoint (model, generation config, tokenizer)
HF_PRUNE_FILES = re.compile(r"config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors"
                            r"|model\.safetensors\.index\.json|tokenizer.*|vocab\.(json|txt)|merges\.txt"
                            r"|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)")
STAMP_SUFFIX = ".stamp.json"
REPORT_FILES = ("REPORT.md", "claims.csv", "claims.csv" + STAMP_SUFFIX)


def _entries(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise ConfigError(f"--out {path} cannot be listed: {exc.strerror or exc}") from None


def _is_temp(name: str) -> bool:
    """A temporary file of an atomic write that was interrupted (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _json_keys(path: Path) -> set[str]:
    """Top-level keys of a small JSON object file (empty when it is not one)."""
    try:
        if path.stat().st_size > 2 ** 20:
            return set()
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def kind_of(path: Path) -> str | None:
    """What ``path`` holds, in words, when it is a gfa result; ``None`` otherwise (a file that
    merely shares a name with ours, e.g. a project's own config.json, does not count)."""
    names = set(_entries(path))
    if "evaluation.json" in names and "source_run" in _json_keys(path / "evaluation.json"):
        return "the result of gfa prune"
    if "DONE" in names or ("config.json" in names and {"run_id", "config"} <= _json_keys(path / "config.json")):
        return "a gfa run directory"
    if any(n.endswith(STAMP_SUFFIX) for n in names) or {"REPORT.md", "claims.csv"} <= names:
        return "figures and tables of gfa reproduce"
    if "meta.json" in names and "config_hashes" in _json_keys(path / "meta.json"):
        return "the tables of a gfa study"
    return None


def _usable_dir(path: Path) -> bool:
    """False when ``path`` does not exist; True for a directory; a refusal for anything else."""
    if not path.exists():
        if path.is_symlink():
            raise ConfigError(f"--out {path} is a broken symbolic link")
        return False
    if not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a directory")
    return True


def check_results_root(out: str | Path) -> None:
    """``gfa train`` / ``gfa study``: ``out`` may be any directory but a run or result itself."""
    path = Path(out)
    if not _usable_dir(path):
        return
    kind = kind_of(path)
    if kind is not None:
        raise ConfigError(f"results root {path} holds {kind}: runs would be written inside it; "
                          "choose another --out (a results root holds run directories)")


def source_identity(root: str | Path, files: Iterable[str | Path]) -> dict[str, str]:
    """The resolved path of a prune's source and the sha256 over its ``files`` (name and bytes):
    two checkpoints of one name, or one directory whose files changed, are different sources."""
    digest = hashlib.sha256()
    for file in sorted(Path(f) for f in files):
        with open(file, "rb") as fh:
            digest.update(f"{file.name}\0{hashlib.file_digest(fh, 'sha256').hexdigest()}\0".encode())
    return {"path": str(Path(root).resolve()), "sha256": digest.hexdigest()}


def prune_request(args: Any, source_run: str, needs_data: bool, source: dict | None = None,
                  gradients: dict | None = None, text: dict | None = None) -> dict[str, Any]:
    """The options of a ``gfa prune`` that determine its result (as ``evaluation.json`` records
    them); ``source`` / ``gradients`` / ``text``: :func:`source_identity` of the model, of a
    gradient log and of a ``--text`` file. ``compare``: the methods after the first one."""
    methods = list(getattr(args, "methods", [args.method]))
    return {"source_run": source_run, "source": source, "gradients_source": gradients, "method": args.method,
            "k": args.k, "quantity": args.quantity if "cascadeflow" in methods else None, "seed": args.seed,
            "calibration_batches": args.calib_batches if needs_data else 0,
            "heal": {"steps": args.heal_steps, "lr": args.heal_lr if args.heal_steps else None},
            "compare": methods[1:], "text_source": text, "held_out": getattr(args, "held_out", None)}


def _recorded_request(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads((path / "evaluation.json").read_text(encoding="utf-8"))
        return {"source_run": report["source_run"], "source": report.get("source"),
                "gradients_source": report.get("gradients_source"), "method": report["method"], "k": report["k"],
                "quantity": report["quantity"], "seed": report["seed"],
                "calibration_batches": report["calibration_batches"],
                "heal": {"steps": report["heal"]["steps"], "lr": report["heal"]["lr"]},
                "compare": report.get("compare", []), "text_source": report.get("text_source"),
                "held_out": report.get("held_out_fraction")}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _shown(key: str, value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"{key}={value.get('path')} (content sha256 {str(value['sha256'])[:12]})"
    return f"{key}={value!r}"


def check_prune_out(out: str | Path, request: dict[str, Any], force: bool) -> None:
    """``gfa prune --out``: missing, empty, or this very request's earlier result (see module doc)."""
    path = Path(out)
    if not _usable_dir(path) or force:
        return
    names = [n for n in _entries(path) if not _is_temp(n)]
    if not names:
        return
    ours = all(n in PRUNE_FILES or HF_PRUNE_FILES.fullmatch(n) for n in names)
    if ours and "evaluation.json" in names:
        earlier = _recorded_request(path)
        if earlier == request:
            return  # the same prune again: its result is replaced
        if earlier is not None:
            diff = [_shown(k, earlier[k]) for k in request if earlier[k] != request[k]]
            raise ConfigError(f"--out {path} holds the result of another gfa prune ({', '.join(diff)}): "
                              "choose another directory, or pass --force to replace it")
    kind = kind_of(path) or f"{len(names)} other file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
    raise ConfigError(f"--out {path} holds {kind}: choose an empty or new directory, "
                      "or pass --force to write into it anyway")


def _only_prune_files(path: Path) -> bool:
    """``path`` is a real directory holding nothing but what a prune writes (or nothing)."""
    if path.is_symlink():
        return False
    return all(n in PRUNE_FILES or HF_PRUNE_FILES.fullmatch(n) or _is_temp(n) for n in _entries(path))


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished result ``tmp`` to ``out``: whole when ``out`` is missing or holds only
    an earlier prune's files (none of them survives); file by file into a directory that holds
    other files (``--force``), ``evaluation.json`` last, each ``os.replace`` replacing whatever
    name is there (a symbolic link included) without following it."""
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    if _only_prune_files(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old.tmp", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    names = sorted(p.name for p in tmp.iterdir())
    (out / "evaluation.json").unlink(missing_ok=True)  # a directory with it is complete: it goes first
    for name in sorted(names, key=lambda n: n == "evaluation.json"):
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise StorageError(f"cannot write {out / name}: it is a folder; choose another --out")
        os.replace(tmp / name, out / name)


@contextlib.contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A fresh temporary directory next to ``out`` to write a prune's result into; moved into
    place when the block ends without an error, removed in every case (see the module doc)."""
    out = Path(os.path.abspath(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise storage_error(exc, out, "create the folder") from None
    try:
        yield tmp
        _publish(tmp, out)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise storage_error(exc, out) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reproduce_names(keys: Iterable[str], exts: Iterable[str] = ("png", "pdf", "csv", "md", "tex")) -> set[str]:
    """Every file name ``gfa reproduce`` may write for outputs ``keys``."""
    names = set(REPORT_FILES)
    for key in keys:
        for ext in exts:
            names |= {f"{key}.{ext}", f"{key}.{ext}{STAMP_SUFFIX}"}
    return names


def check_figures_out(out: str | Path, allowed: set[str], force: bool) -> None:
    """``gfa reproduce --out``: missing, empty, or only files ``gfa reproduce`` writes."""
    path = Path(out)
    if not _usable_dir(path) or force:
        return
    foreign = [n for n in _entries(path) if n not in allowed and not re.fullmatch(r"\..*\.tmp", n)]
    if foreign:
        kind = kind_of(path)
        what = kind if kind and kind != "figures and tables of gfa reproduce" else "other files"
        raise ConfigError(f"--out {path} holds {what} ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}), not only gfa reproduce outputs: "
                          "choose an empty or new directory, or pass --force to write into it anyway")
