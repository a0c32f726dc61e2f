"""Render the configuration reference (docs/configuration.md) from the config schema.

The schema is the one source of truth for every key's type, default and description, so the
reference is generated from it rather than written by hand; tests/test_docs.py fails when the
committed page differs from what this module renders. Regenerate with::

    python -m nnpipe.docs --out docs/configuration.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from nnpipe.config import load_schema

HEADER = """\
# Configuration reference

<!-- Generated from config/schema.yaml by `python -m nnpipe.docs --out docs/configuration.md`.
     Do not edit by hand: tests/test_docs.py fails when this page and the schema differ. -->

A study is one YAML file (`config/config.yaml` by default, another with
`snakemake --configfile FILE`). Snakemake validates it against `config/schema.yaml` before any
job runs, fills in the defaults below and rejects unknown keys; the `nnpipe` commands do the
same with `--config FILE`. A key written `a.b` is key `b` inside section `a:`. One key can also
be set on the command line, e.g. `snakemake --config gpus_per_node=8`.
"""


# JSON Schema keywords the study schema uses. Any other key in a key's schema is a mistake the
# validator ignores silently, typically an unquoted YAML flow mapping cut at a comma:
# `{description: Seed, same bytes.}` parses as description "Seed" plus a key "same bytes.".
KEYWORDS = frozenset({
    "$schema", "type", "description", "default", "enum", "properties", "additionalProperties",
    "required", "items", "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "pattern",
})


def check_keywords(schema: dict[str, Any], path: str = "") -> None:
    """Raise ValueError naming every key of `schema` (recursively) that is no JSON Schema
    keyword, so a description cut short by YAML never reaches the reference silently."""
    stray = list(_stray(schema, path))
    if stray:
        raise ValueError("schema: not JSON Schema keywords (quote the description before "
                         "them?): " + "; ".join(stray))


def _stray(schema: dict[str, Any], path: str) -> Iterator[str]:
    for key in schema:
        if key not in KEYWORDS:
            yield f"{path or '(top)'}: {key!r}"
    for name, sub in schema.get("properties", {}).items():
        yield from _stray(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _stray(schema["additionalProperties"], f"{path}.<NAME>")
    if isinstance(schema.get("items"), dict):
        yield from _stray(schema["items"], f"{path}[]")


def _one_line(text: str) -> str:
    """A description as one Markdown table cell: whitespace collapsed, pipes escaped, and `<`
    escaped so that `<case>.npz` is not read as an HTML tag."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _value(value: Any) -> str:
    """A default or enum value as it is written in YAML (JSON spelling: [] {} "" true)."""
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _bounds(schema: dict[str, Any]) -> list[str]:
    marks = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}
    return [f"{sign} {schema[k]}" for k, sign in marks.items() if k in schema]


def _type(schema: dict[str, Any]) -> str:
    """The type of one key in words: base type, allowed values, bounds, pattern, length."""
    kind = schema.get("type", "any")
    if kind == "array":
        text = f"list of {_type(schema.get('items', {}))}"
        if "minItems" in schema:
            n = schema["minItems"]
            text += f"; at least {n} item" + ("" if n == 1 else "s")
        return text
    parts = [kind]
    if "enum" in schema:
        parts.append("one of " + ", ".join(_value(v) for v in schema["enum"]))
    parts += _bounds(schema)
    if "pattern" in schema:
        parts.append(f"matching `{schema['pattern']}`")
    return " ".join(parts[:1]) + ("" if len(parts) == 1 else ", " + ", ".join(parts[1:]))


def _rows(schema: dict[str, Any], prefix: str) -> Iterator[str]:
    """Table rows of the non-object keys under `schema` (depth first, schema order); nested
    objects below the first level get their own rows, named by their dotted path."""
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if sub.get("type") == "object":
            yield from _rows(sub, f"{key}.")
            continue
        yield (f"| `{key}` | {_type(sub)} | {_value(sub.get('default'))} "
               f"| {_one_line(sub.get('description', ''))} |")


def _table(rows: list[str]) -> list[str]:
    return ["| key | type | default | description |", "|---|---|---|---|", *rows]


def render(schema: dict[str, Any]) -> str:
    """The whole reference page for `schema` (a JSON Schema of the study, as a dict).

    Raises:
        ValueError: the schema holds a key that is no JSON Schema keyword (check_keywords).
    """
    check_keywords(schema)
    lines = [HEADER, _one_line(schema.get("description", "")), ""]
    properties = schema.get("properties", {})
    top = {k: v for k, v in properties.items() if v.get("type") != "object"}
    if top:
        lines += ["## Top-level keys", "", *_table(list(_rows({"properties": top}, ""))), ""]
    for name, sub in properties.items():
        if sub.get("type") != "object":
            continue
        lines += [f"## `{name}`", "", _one_line(sub.get("description", "")), ""]
        nested = [k for k, v in sub.get("properties", {}).items() if v.get("type") == "object"]
        for key in nested:
            desc = _one_line(sub["properties"][key].get("description", ""))
            lines += [f"`{name}.{key}`: {desc}", ""]
        entry = sub.get("additionalProperties")
        if isinstance(entry, dict):  # a mapping NAME -> entry (the predict section)
            lines += [*_table(list(_rows(entry, f"{name}.<NAME>."))), ""]
            continue
        lines += [*_table(list(_rows(sub, f"{name}."))), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render docs/configuration.md from the schema.")
    p.add_argument("--schema", type=Path, help="schema YAML (default: the package's, the "
                   "file config/schema.yaml links to)")
    p.add_argument("--out", type=Path, help="file to write (default: print)")
    p.add_argument("--check", type=Path, metavar="FILE",
                   help="exit 1 if FILE differs from what would be rendered")
    args = p.parse_args(argv)
    schema = yaml.safe_load(args.schema.read_text()) if args.schema else load_schema()
    try:
        text = render(schema)
    except ValueError as err:
        print(f"nnpipe.docs: {err}", file=sys.stderr)
        return 2
    if args.check:
        if args.check.read_text() != text:
            print(f"{args.check} is stale: run python -m nnpipe.docs --out {args.check}",
                  file=sys.stderr)
            return 1
        return 0
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
