"""One house with one-way doors: the import graph of gfa_theory, experiments and figures.

Every ``.py`` file is parsed with :mod:`ast` (nothing is imported); its imports are the
``import`` and ``from ... import`` statements anywhere in it (module level, inside functions,
under ``if TYPE_CHECKING``) and ``importlib.import_module("...")`` calls with a string literal.
Only imports of the three trees count; an import names the deepest module it reaches
(``from gfa_theory.theory import symbolic`` -> ``gfa_theory.theory.symbolic``).

The rules (README, "Repository layout"):

* gfa_theory never imports experiments or figures; experiments never imports figures;
* inside gfa_theory, floors: theory < models < instrument < train < methods < cli (and
  integrations, beside cli); a module imports its own floor or floors below. ``__init__``,
  ``errors``, ``config`` and ``devices`` of the top package are the ground floor, importable
  from anywhere;
* no import cycles among modules;
* an import inside a function only in gfa_theory/cli (start-up speed), and never one that would
  close a cycle at the top of the module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ("gfa_theory", "experiments", "figures")
GROUND = {"gfa_theory", "gfa_theory.errors", "gfa_theory.config", "gfa_theory.devices", "gfa_theory.untrusted"}
FLOORS = {"theory": 1, "models": 2, "instrument": 3, "train": 4, "methods": 5, "cli": 6, "integrations": 6}
LAZY_ALLOWED = ("gfa_theory.cli",)  # packages where a function may import (start-up speed)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for tree in TREES for p in sorted((ROOT / tree).rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The deepest project module ``name`` reaches (``a.b.c`` -> ``a.b`` when c is an attribute)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


class _Imports(ast.NodeVisitor):
    """``(target module, line, inside a function)`` for every project import of one module."""

    def __init__(self, module: str) -> None:
        self.module, self.depth, self.found = module, 0, []

    def _add(self, name: str | None, node: ast.AST) -> None:
        target = _resolve(name) if name else None
        if target is not None and target != self.module:
            self.found.append((target, node.lineno, self.depth > 0))

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = _package(self.module).split(".")
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        for alias in node.names:
            full = f"{base}.{alias.name}" if base else alias.name
            self._add(full if full in MODULES else base, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    out = {}
    for module, path in MODULES.items():
        visitor = _Imports(module)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        out[module] = visitor.found
    return out


IMPORTS = _imports()


def _edges(top_level_only: bool = False) -> dict[str, set[str]]:
    return {m: {t for t, _, lazy in found if not (top_level_only and lazy)} for m, found in IMPORTS.items()}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def _tree(module: str) -> str:
    return module.split(".")[0]


def _floor(module: str) -> tuple[str, int]:
    if module in GROUND:
        return "ground", 0
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in FLOORS:
        raise AssertionError(f"{module} belongs to no floor: add it to FLOORS (or GROUND) in this test")
    return parts[1], FLOORS[parts[1]]


def _path(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import path ``start -> ... -> goal`` (breadth first), or None."""
    previous: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        nxt = []
        for node in todo:
            for target in sorted(edges.get(node, ())):
                if target in previous:
                    continue
                previous[target] = node
                if target == goal:
                    path = [goal]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1]
                nxt.append(target)
        todo = nxt
    return None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on a cycle (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in edges}
    cycles, seen = [], set()
    for root in sorted(edges):
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(sorted(edges[root])))]
        colour[root] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = BLACK
                stack.pop()
            elif colour.get(child, BLACK) == GREY:
                cycle = [n for n, _ in stack][[n for n, _ in stack].index(child):] + [child]
                if not seen.issuperset(cycle):
                    cycles.append(cycle)
                    seen.update(cycle)
            elif colour.get(child) == WHITE:
                colour[child] = GREY
                stack.append((child, iter(sorted(edges[child]))))
    return cycles


def _check(violations: list[str], what: str) -> None:
    assert not violations, f"{len(violations)} {what}:\n" + "\n".join(violations)


# ---- (a) and (b): one-way doors between the trees and the floors -----------------------------------
def test_the_import_graph_is_seen():
    """The walker finds the imports it is meant to judge (guards against a vacuous pass)."""
    assert {"gfa_theory.theory.symbolic", "gfa_theory.cli.fanin", "gfa_theory.models.families"} <= set(MODULES)
    assert "gfa_theory.theory.layout" in _edges()["gfa_theory.theory.symbolic"]
    assert "gfa_theory.theory.symbolic" in _edges()["gfa_theory.cli.fanin"]
    assert any(m.startswith("experiments") for m in MODULES) and any(m.startswith("figures") for m in MODULES)


def test_gfa_theory_never_imports_experiments_or_figures():
    _check([f"{_where(m, line)}: {m} imports {t}" for m, found in IMPORTS.items() if _tree(m) == "gfa_theory"
            for t, line, _ in found if _tree(t) in ("experiments", "figures")],
           "imports from the installed package into the checkout")


def test_experiments_never_import_figures():
    _check([f"{_where(m, line)}: {m} imports {t}" for m, found in IMPORTS.items() if _tree(m) == "experiments"
            for t, line, _ in found if _tree(t) == "figures"], "imports of figures by the studies")


def test_gfa_theory_imports_only_its_own_floor_or_below():
    violations = []
    for m, found in IMPORTS.items():
        if _tree(m) != "gfa_theory":
            continue
        floor, height = _floor(m)
        for t, line, _ in found:
            if _tree(t) != "gfa_theory":
                continue
            t_floor, t_height = _floor(t)
            if not (t_floor == floor or t_height < height):
                violations.append(f"{_where(m, line)}: {m} ({floor}) imports {t} ({t_floor})")
    _check(violations, "imports up the floors")


# ---- (c) no cycles -------------------------------------------------------------------------------------
def test_no_import_cycles():
    _check([" -> ".join(c) for c in _cycles(_edges())], "import cycles")


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# ---- (d) imports inside functions ----------------------------------------------------------------------
def test_imports_inside_functions_only_in_the_cli():
    _check([f"{_where(m, line)}: {m} imports {t} inside a function" for m, found in IMPORTS.items()
            if not m.startswith(LAZY_ALLOWED) for t, line, lazy in found if lazy],
           "imports inside functions outside gfa_theory/cli (move them to the top of the module)")


def test_no_import_inside_a_function_dodges_a_cycle():
    top = _edges(top_level_only=True)
    violations = []
    for m, found in IMPORTS.items():
        for t, line, lazy in found:
            back = _path(top, t, m) if lazy else None
            if back is not None:
                violations.append(f"{_where(m, line)}: {m} imports {t} inside a function; at the top it "
                                  f"would close the cycle {' -> '.join([m] + back)}")
    _check(violations, "imports inside functions that dodge a cycle")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _tree(m) == "gfa_theory"))
def test_every_module_says_what_it_is_for(module):
    """Each file of the package opens with a docstring stating its one job."""
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 4, f"{MODULES[module].relative_to(ROOT)} has no module docstring"
