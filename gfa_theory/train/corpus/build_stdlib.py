"""Rebuild (or audit) the shipped source-code corpus ``stdlib_py.txt.gz`` from a CPython 3.11.7
standard library.

Run from the repository root with CPython 3.11.7::

    python gfa_theory/train/corpus/build_stdlib.py          # write stdlib_py.txt.gz + stdlib_py_files.txt
    python gfa_theory/train/corpus/build_stdlib.py --check  # rebuild in memory, compare to the shipped files

Selection rule: every ``*.py`` file under the standard library folder, by relative POSIX path in
sorted order, except those whose first path component is ``site-packages``, ``test`` (the
regression suite: deliberately odd Unicode, generated data), ``encodings`` (generated codec
tables), ``pydoc_data`` (documentation, the source of the default corpus) or starts with
``config-`` (build files), and any under ``__pycache__``. Each file is decoded as UTF-8 (strict),
every character outside tab, newline and printable ASCII (32..126) becomes the unknown symbol
U+FFFD, and the file ends with the document separator U+001E. The corpus is these documents
concatenated, gzip level 9, mtime 0. ``stdlib_py_files.txt`` lists every selected file with the
sha256 of its bytes and its length in characters, so a rebuild can be audited file by file.

The package never runs this script and never reads the running Python's standard library: it reads
the shipped file and checks its sha256 (``gfa_theory.train.data.STDLIB_SHA256``).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import platform
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "stdlib_py.txt.gz"
MANIFEST = HERE / "stdlib_py_files.txt"
PYTHON = "3.11.7"  # the release whose standard library the shipped corpus is
EXCLUDED_TOP = ("site-packages", "test", "encodings", "pydoc_data")
SEPARATOR = "\x1e"  # ends every document (file)
UNKNOWN = "\ufffd"  # stands for every character outside ALLOWED
ALLOWED = frozenset("\t\n" + "".join(chr(c) for c in range(32, 127)))


def selected(stdlib: Path) -> list[Path]:
    """The selection rule (see the module docstring), sorted by relative POSIX path."""
    keep = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        top = rel.parts[0]
        if top in EXCLUDED_TOP or top.startswith("config-") or "__pycache__" in rel.parts:
            continue
        keep.append(rel)
    return sorted(keep, key=lambda rel: rel.as_posix())


def document(raw: bytes) -> str:
    text = raw.decode("utf-8")
    return "".join(ch if ch in ALLOWED else UNKNOWN for ch in text) + SEPARATOR


def build(stdlib: Path) -> tuple[str, str]:
    """(corpus text, manifest text)."""
    docs, lines = [], []
    for rel in selected(stdlib):
        raw = (stdlib / rel).read_bytes()
        docs.append(document(raw))
        lines.append(f"{hashlib.sha256(raw).hexdigest()}  {len(docs[-1]) - 1:8d}  {rel.as_posix()}")
    text = "".join(docs)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    head = [f"# CPython {PYTHON} standard library: the {len(lines)} files of gfa_theory/train/corpus/stdlib_py.txt.gz",
            f"# corpus: {len(text)} characters, sha256 {sha} (decoded text)",
            "# columns: sha256 of the file's bytes, characters, path relative to the standard library"]
    return text, "\n".join(head + lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="rebuild or check the shipped standard-library corpus")
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                    help="standard library folder (default: the running Python's)")
    ap.add_argument("--check", action="store_true", help="compare a rebuild with the shipped files; write nothing")
    args = ap.parse_args(argv)
    if platform.python_version() != PYTHON and args.stdlib == Path(sysconfig.get_paths()["stdlib"]):
        print(f"this is Python {platform.python_version()}; the corpus is CPython {PYTHON}'s standard library "
              "(run it with that Python or pass --stdlib)", file=sys.stderr)
        return 2
    text, manifest = build(args.stdlib)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if args.check:
        shipped = gzip.decompress(CORPUS.read_bytes()).decode("utf-8")
        same = shipped == text and MANIFEST.read_text(encoding="utf-8") == manifest
        print(f"{'identical' if same else 'DIFFERENT'}: rebuilt sha256 {sha}, "
              f"shipped {hashlib.sha256(shipped.encode('utf-8')).hexdigest()}")
        return 0 if same else 1
    raw = gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)
    CORPUS.write_bytes(raw)
    MANIFEST.write_text(manifest, encoding="utf-8")
    print(f"{len(text)} characters, {len(raw)} bytes gzipped, sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
