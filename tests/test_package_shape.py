"""The shape of the package, read from its source: no import cycles, no module over 450 lines,
no public function or class without a docstring. Modules still waiting for their split or their
docstrings are listed with the issue that owns them (strict xfail: the entry must go when the
work lands)."""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "nwot_fast"
MAX_LINES = 450
SPLIT_PENDING = {"cli.py": "issue 22: cli/ by command group"}
DOCSTRINGS_PENDING = {
    **{name: "issue 23" for name in ("scan.py", "evaluate.py")},
    "scoring.py": "issue 19: config + scorer",
    "cli.py": "issue 22: cli/ split",
    "search.py": "issue 22: docstrings outside the engine",
}


def _modules() -> Dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, modules) -> Set[str]:
    """The package modules ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # A module reaching into its own package (``from . import sibling``) is no cycle.
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: List[List[str]] = []

    def visit(name: str, path: List[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 40 and any(graph.values())  # the walk found the package and its imports
    assert cycles == []


def _case(relative: str, pending: Dict[str, str]):
    return pytest.param(relative, marks=pytest.mark.xfail(reason=pending[relative], strict=True)) \
        if relative in pending else relative


FILES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("relative", [_case(f, SPLIT_PENDING) for f in FILES])
def test_module_fits(relative):
    lines = len((PACKAGE / relative).read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative}: {lines} lines (at most {MAX_LINES}: one job per module)"


@pytest.mark.parametrize("relative", [_case(f, DOCSTRINGS_PENDING) for f in FILES])
def test_public_names_have_docstrings(relative):
    tree = ast.parse((PACKAGE / relative).read_text())
    missing = []

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not child.name.startswith("_"):
                if ast.get_docstring(child) is None:
                    missing.append(prefix + child.name)
                if isinstance(child, ast.ClassDef):
                    walk(child, prefix + child.name + ".")

    walk(tree, "")
    assert missing == [], f"{relative}: no docstring for {', '.join(missing)}"
