"""Stamps: every figure and table says which profile, seeds, runs, corpus and code made it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from gfa_theory import __version__
from gfa_theory.train.store import write_text_atomic


def merge(metas: Iterable[dict], profile: str, output: str) -> dict:
    """One stamp from the ``meta.json`` of the studies an output was built from."""
    metas = [m for m in metas if m]
    pick = lambda key: sorted({v for m in metas for v in m.get(key, [])})  # noqa: E731
    return {"output": output, "profile": profile, "package_version": __version__,
            "studies": sorted({m["study"] for m in metas}), "seeds": pick("seeds"),
            "config_hashes": pick("config_hashes"), "data_sha256": pick("data_sha256")}


def line(stamp: dict) -> str:
    """A one-line human-readable stamp (figure footers, table footers)."""
    sha = ",".join(s[:12] for s in stamp["data_sha256"]) or "-"
    hashes = stamp["config_hashes"]
    runs = f"{len(hashes)} runs" if hashes else "no training runs"
    return (f"gfa-theory {stamp['package_version']} | profile {stamp['profile']} | seeds "
            f"{','.join(map(str, stamp['seeds'])) or '-'} | {runs} | data sha256 {sha}")


def write_sidecar(path: Path, stamp: dict) -> Path:
    side = path.with_suffix(path.suffix + ".stamp.json")
    write_text_atomic(side, json.dumps(stamp, indent=1))
    return side
