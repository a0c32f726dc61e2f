"""docs/development.md's package map is true: every module of src/nnpipe belongs to a row, and
every import (module level or inside a function) goes to a package its row allows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_import_cycles import import_graph, package_of

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "development.md"
FOUNDATION_ROWS = 10  # "*foundation* means the first ten rows"
# the root package's __init__: its version and the lazily loaded public API
ROOT_IMPORTS = {"nnpipe.version", "nnpipe.predictor"}


def read_map(text: str) -> dict[str, set[str]]:
    """The map's rows as ``{"nnpipe.<row>": {"nnpipe.<allowed>", ...}}`` (foundation and
    "every row above" expanded, the root ``nnpipe`` allowed everywhere).

    Raises:
        ValueError: if the section or its table is missing, or a row names an unknown one.
    """
    if "## Package map" not in text:
        raise ValueError("docs/development.md has no '## Package map' section")
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    if not rows:
        raise ValueError("the package map has no rows")
    names = [re.fullmatch(r"`([\w]+)`", r[0]).group(1) for r in rows]  # type: ignore[union-attr]
    foundation = set(names[:FOUNDATION_ROWS])
    allowed: dict[str, set[str]] = {}
    for i, (name, row) in enumerate(zip(names, rows, strict=True)):
        words = {w.strip() for w in row[2].split(",")} - {"—", ""}
        if words == {"every row above"}:
            words = set(names[:i])
        if "foundation" in words:
            words = (words - {"foundation"}) | foundation
        unknown = words - set(names[:i])
        if unknown:
            raise ValueError(f"row {name!r} may import {sorted(unknown)}, which are not rows "
                             "above it")
        allowed[f"nnpipe.{name}"] = {f"nnpipe.{w}" for w in words} | {"nnpipe"}
    allowed["nnpipe"] = set(ROOT_IMPORTS)
    return allowed


def test_read_map_expands_foundation_and_refuses_a_row_below():
    head = "## Package map\n\n| package | owns | may import |\n|---|---|---|\n"
    rows = "".join(f"| `f{i}` | x | — |\n" for i in range(FOUNDATION_ROWS))
    text = head + rows + "| `a` | x | foundation |\n| `b` | x | a, f0 |\n"
    allowed = read_map(text)
    assert allowed["nnpipe.a"] == {f"nnpipe.f{i}" for i in range(FOUNDATION_ROWS)} | {"nnpipe"}
    assert allowed["nnpipe.b"] == {"nnpipe.a", "nnpipe.f0", "nnpipe"}
    assert allowed["nnpipe"] == ROOT_IMPORTS
    with pytest.raises(ValueError, match="'a' may import \\['b'\\]"):
        read_map(head + rows + "| `a` | x | b |\n| `b` | x | — |\n")


def test_every_module_has_a_row():
    allowed = read_map(DOC.read_text())
    packages = {package_of(m) for m in import_graph(nested=True)} - {"nnpipe"}
    missing = sorted(packages - set(allowed))
    assert not missing, (f"{missing} not in the package map of docs/development.md: add a row "
                         "saying what it owns and what it may import")


def test_every_import_is_one_the_map_allows():
    allowed = read_map(DOC.read_text())
    wrong = sorted(f"{m} -> {t}" for m, targets in import_graph(nested=True).items()
                   for t in targets
                   if package_of(t) != package_of(m)
                   and package_of(t) not in allowed.get(package_of(m), set()))
    assert not wrong, ("imports the package map of docs/development.md does not allow (move "
                       f"the code, or change the map if the layering really changed): {wrong}")
