"""No import cycles in the nnpipe package or the measuring tools, between modules or packages.

A cycle makes the outcome of ``import`` depend on which module is imported first (a name
may not be defined yet when the other module asks for it), so it breaks in one entry point
and not in another; hidden inside a function it still ties two modules into one. The check
reads the source (no imports run): every ``import`` and ``from ... import`` of an nnpipe or
``benchmarks`` module becomes an edge, wherever it stands (module level, function bodies,
``try`` and ``with`` blocks; only ``if TYPE_CHECKING:`` blocks are left out, as they never
run), and the graph must be acyclic: between modules, and between packages (each
``nnpipe.<sub>`` one node; the package map in docs/development.md, checked by
``tests/test_room_map.py``, says which may import which).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nnpipe

PACKAGE_DIR = Path(nnpipe.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = ROOT / "benchmarks"  # the measuring tools: import nnpipe, never imported by it


def module_name(path: Path, base: Path = PACKAGE_DIR.parent) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    """nnpipe's modules and the measuring tools' (their tests left out)."""
    found = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
    found.update({module_name(p, ROOT): p for p in sorted(TOOLS_DIR.rglob("*.py"))
                  if "tests" not in p.relative_to(TOOLS_DIR).parts})
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module, nested: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of a module: those run by importing it (``nested=False``: module
    level, class bodies and the blocks around them), or every one anywhere in the file
    (``nested=True``: function bodies too, at any depth).

    ``if TYPE_CHECKING:`` blocks never run, so they are left out.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if not nested and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return  # runs when called, not when imported
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
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


def package_of(module: str) -> str:
    """The package a module belongs to for the package graph: ``nnpipe.<sub>`` (a top-level
    module such as ``nnpipe.labels`` is its own), ``benchmarks`` for the tools."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "nnpipe" else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` with each module replaced by its package; imports inside a package dropped."""
    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        here = package_of(name)
        out.setdefault(here, set()).update(package_of(t) for t in targets
                                           if package_of(t) != here)
    return out


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


def test_import_nodes_reads_nested_blocks_and_skips_type_checking() -> None:
    source = ("import nnpipe.a\n"
              "if TYPE_CHECKING:\n"
              "    import nnpipe.hidden\n"
              "else:\n"
              "    import nnpipe.b\n"
              "class C:\n"
              "    import nnpipe.c\n"
              "    def m(self):\n"
              "        with x:\n"
              "            try:\n"
              "                import nnpipe.d\n"
              "            except ImportError:\n"
              "                def inner():\n"
              "                    from nnpipe import e\n")
    tree = ast.parse(source)
    names = {n.names[0].name if isinstance(n, ast.Import) else f"{n.module}.{n.names[0].name}"
             for n in _import_nodes(tree, nested=True)}
    assert names == {"nnpipe.a", "nnpipe.b", "nnpipe.c", "nnpipe.d", "nnpipe.e"}
    top = {n.names[0].name for n in _import_nodes(tree, nested=False)
           if isinstance(n, ast.Import)}
    assert top == {"nnpipe.a", "nnpipe.b", "nnpipe.c"}


def test_package_graph_collapses_modules() -> None:
    graph = {"nnpipe.a.x": {"nnpipe.a.y", "nnpipe.b.z"}, "nnpipe.a.y": set(),
             "nnpipe.b.z": {"nnpipe.labels"}, "nnpipe.labels": set(),
             "benchmarks.t": {"nnpipe.a.x"}}
    assert package_graph(graph) == {"nnpipe.a": {"nnpipe.b"}, "nnpipe.b": {"nnpipe.labels"},
                                    "nnpipe.labels": set(), "benchmarks": {"nnpipe.a"}}


def test_no_module_level_import_cycle_in_nnpipe() -> None:
    graph = import_graph(nested=False)
    assert "nnpipe.data.loader" in graph  # the scan found the package
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_import_cycle_in_nnpipe_data_even_through_function_imports() -> None:
    graph = import_graph(nested=True, prefix="nnpipe.data")
    assert "nnpipe.data.loader" in graph["nnpipe.data"]
    assert "nnpipe.data.dali" in graph["nnpipe.data.loader"]  # on demand, inside a function
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_import_cycle_between_modules_even_through_function_imports() -> None:
    graph = import_graph(nested=True, prefix="")
    assert "benchmarks.accuracy_compare" in graph  # the tools are scanned too
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph(import_graph(nested=True, prefix=""))
    assert {"nnpipe.inference", "nnpipe.training", "benchmarks"} <= set(graph)
    assert find_cycle(graph) is None, f"package cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_nnpipe_never_imports_the_measuring_tools() -> None:
    graph = import_graph(nested=True, prefix="")
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith("nnpipe")
                   for t in targets if t.startswith("benchmarks"))
    assert not wrong, f"the installed package imports the measuring tools: {wrong}"
