"""No import cycles inside the nnpipe package.

A cycle makes the outcome of ``import`` depend on which module is imported first (a name
may not be defined yet when the other module asks for it), so it breaks in one entry point
and not in another. The check reads the source (no imports run): every ``import`` and
``from ... import`` of an nnpipe module becomes an edge, and the graph must be acyclic.

Two graphs: the module-level imports of the whole package (what ``import X`` executes), and,
for :mod:`nnpipe.data`, every import including those inside functions (the DALI backend is
imported on demand by :mod:`nnpipe.data.loader`, so :mod:`nnpipe.data.dali` must not import
the loader back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nnpipe

PACKAGE_DIR = Path(nnpipe.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module, nested: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements run by importing the module (``nested``: also those in functions).

    ``if TYPE_CHECKING:`` blocks never run, so they are left out.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ClassDef) or (  # a class body runs at import time
                    nested and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
                visit(node.body)

    visit(tree.body)
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path], nested: bool) -> set[str]:
    """The nnpipe modules ``name`` imports.

    ``from pkg import x`` depends on ``pkg.x`` when that is a module, else on ``pkg`` itself.
    Parent packages that Python imports implicitly are not edges: a package's ``__init__``
    importing its own submodules is not a cycle.
    """
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path)), nested):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = name.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def import_graph(nested: bool, prefix: str = "nnpipe") -> dict[str, set[str]]:
    modules = all_modules()
    return {name: {t for t in imported_modules(name, path, modules, nested)
                   if t.startswith(prefix)}
            for name, path in modules.items() if name.startswith(prefix)}


@pytest.mark.parametrize(("graph", "cycle"), [
    ({"a": {"b"}, "b": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
])
def test_find_cycle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_imported_modules_resolves_from_and_relative_imports(tmp_path: Path) -> None:
    source = ("from __future__ import annotations\n"
              "from typing import TYPE_CHECKING\n"
              "from nnpipe.data import loader\n"
              "from nnpipe.data.staging import BatchStager\n"
              "from . import sampling\n"
              "import nnpipe.config\n"
              "if TYPE_CHECKING:\n"
              "    from nnpipe.data.dali import DaliLoader\n"
              "def f():\n"
              "    from nnpipe.data import augment\n")
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = dict.fromkeys(["nnpipe.data.loader", "nnpipe.data.staging", "nnpipe.data.sampling",
                             "nnpipe.config", "nnpipe.data.dali", "nnpipe.data.augment",
                             "nnpipe.data", "nnpipe.data.mod"], path)
    top = imported_modules("nnpipe.data.mod", path, modules, nested=False)
    assert top == {"nnpipe.data.loader", "nnpipe.data.staging", "nnpipe.data.sampling",
                   "nnpipe.config"}
    every = imported_modules("nnpipe.data.mod", path, modules, nested=True)
    assert every == top | {"nnpipe.data.augment"}


def test_no_module_level_import_cycle_in_nnpipe() -> None:
    graph = import_graph(nested=False)
    assert "nnpipe.data.loader" in graph  # the scan found the package
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_import_cycle_in_nnpipe_data_even_through_function_imports() -> None:
    graph = import_graph(nested=True, prefix="nnpipe.data")
    assert "nnpipe.data.loader" in graph["nnpipe.data"]
    assert "nnpipe.data.dali" in graph["nnpipe.data.loader"]  # on demand, inside a function
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"
