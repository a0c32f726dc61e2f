"""README.md and docs/: every command in a fenced code block is one the tools accept, every
relative link and anchor resolves, every YAML example is a valid study config, and the
configuration reference is the one nnpipe.docs renders from the schema.

Commands are parsed, never run: `nnpipe` with the CLI's own argparse parser, `snakemake` with
Snakemake's (plus: profiles and config files exist, targets are outputs of a rule), `make`
against the Makefile's targets, `python -m nnpipe.X` and `python -m benchmarks.X` by importing
X and parsing its arguments with its own parser, `bash scripts/...` by the script's existence.
Each documented `benchmarks.X` module also runs, from the project root as the docs say, with
`--help` in a fresh interpreter (the measuring tools live outside the installed package).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from nnpipe import docs
from nnpipe.cli import _parser
from nnpipe.config import load_schema

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
CHECKED = {"nnpipe", "snakemake", "make", "python", "python3", "bash", "torchrun"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first content line
    lang: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    path: Path
    line: int
    words: tuple[str, ...]

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {shlex.join(self.words)}"


def blocks(path: Path) -> Iterator[Block]:
    """Fenced code blocks of a Markdown file (``` fences, indented ones in lists too)."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i + 1
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            i += 1
        yield Block(path, start + 1, lang, tuple(s[indent:] for s in lines[start:i]))
        i += 1


def commands(path: Path) -> Iterator[Command]:
    """Shell commands of the shell blocks whose first word is a tool checked here (leading
    VAR=value words dropped, `\\` continuations joined, comments removed)."""
    for block in blocks(path):
        if block.lang not in SHELL_LANGS:
            continue
        text, first = "", 0
        for n, line in enumerate(block.lines):
            if not text:
                first = block.line + n
            if line.rstrip().endswith("\\"):
                text += line.rstrip()[:-1] + " "
                continue
            text += line
            words = text.split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words and words[0] in CHECKED:
                split = shlex.split(text, comments=True)
                while split and re.fullmatch(r"[A-Z_]+=\S*", split[0]):
                    split = split[1:]
                yield Command(path, first, tuple(split))
            text = ""


ALL_COMMANDS = [c for path in DOC_FILES for c in commands(path)]


def _by(tool: str) -> list[Command]:
    return [c for c in ALL_COMMANDS if c.words[0] == tool]


def _parse(parser: argparse.ArgumentParser, args: list[str], where: str) -> argparse.Namespace:
    """parse_args, turning argparse's exit into a test failure that names the command."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}\n{err.getvalue().strip()}")


def _ids(cmds: list[Command]) -> list[str]:
    return [f"{c.path.name}:{c.line}" for c in cmds]


# ---- nnpipe


NNPIPE = _by("nnpipe") + [c for c in _by("torchrun") if "nnpipe" in c.words]


def test_the_docs_show_the_main_commands():
    subcommands = {c.words[1] for c in NNPIPE if len(c.words) > 1}
    assert {"predict", "export", "train", "benchmark"} <= subcommands
    assert _by("snakemake") and _by("make")


@pytest.mark.parametrize("cmd", NNPIPE, ids=_ids(NNPIPE))
def test_nnpipe_command_parses(cmd: Command):
    words = list(cmd.words)
    if words[0] == "torchrun":  # torchrun ... -m nnpipe ARGS
        words = words[words.index("nnpipe"):]
    _parse(_parser(), words[1:], cmd.where())


# ---- snakemake


def _is_rule_output(target: str) -> bool:
    """Whether a documented target is a rule's output: a file of the study grammar
    (:func:`nnpipe.study.parse_path`) under ``results/`` of a kind some rule writes
    (tests/test_study.py checks those kinds against the outputs the Snakefile declares);
    the placeholders ``<dataset>`` and ``<name>`` stand for a dataset's name."""
    from nnpipe.study import INNER_FILES, parse_path

    path = target.replace("<dataset>", "Dataset001_Mine").replace("<name>", "Dataset001_Mine")
    if path == "results/tables.md":  # the configured study's copy
        return True
    try:
        file = parse_path(path)
    except ValueError:
        return False
    return file.results_dir == "results" and file.kind not in INNER_FILES | {"log", "timing"}


SNAKEMAKE = _by("snakemake")


@pytest.fixture(scope="module")
def snakemake_parser() -> argparse.ArgumentParser:
    from snakemake.cli import get_argument_parser

    return get_argument_parser()


@pytest.mark.parametrize("cmd", SNAKEMAKE, ids=_ids(SNAKEMAKE))
def test_snakemake_command_parses(cmd: Command, snakemake_parser: argparse.ArgumentParser):
    args = _parse(snakemake_parser, list(cmd.words[1:]), cmd.where())
    profiles = args.profile if isinstance(args.profile, list) else [args.profile]
    for profile in filter(None, profiles):
        assert (ROOT / profile).is_dir(), f"{cmd.where()}: no profile {profile}"
    for configfile in args.configfile or []:
        # --configfile takes several values: a target written after it is read as a config
        # file (Snakemake then has no target), so every value must be a YAML or JSON file
        assert str(configfile).endswith((".yaml", ".yml", ".json")), \
            f"{cmd.where()}: --configfile swallows {configfile}; put targets before it"
        if str(configfile).startswith("config/"):
            assert (ROOT / configfile).is_file(), f"{cmd.where()}: no {configfile}"
    for target in [*args.targets, *(args.forcerun or [])]:
        assert _is_rule_output(target), f"{cmd.where()}: {target} is no output of a rule in rules/"


def test_rule_outputs_are_known_paths():
    for path in ("results/tables.md", "results/embedded/train/3d-fp32-1gpu/fold2/final.pt",
                 "results/<name>/plans/fingerprint.json", "results/embedded/plots/throughput.png",
                 "results/Dataset001_Mine/tables.md"):
        assert _is_rule_output(path), path
    for path in ("results/embedded/train/3d-fp32-1gpu/fold2/nope.pt",
                 "results/embedded/train/3d-fp32-1gpu/fold2",  # inside a rule's output
                 "results/embedded/logs/download.log", "elsewhere/embedded/best.json"):
        assert not _is_rule_output(path), path


# ---- make, python -m, bash scripts


MAKE = _by("make")


@pytest.mark.parametrize("cmd", MAKE, ids=_ids(MAKE))
def test_make_target_exists(cmd: Command):
    targets = set(re.findall(r"^([\w.-]+)\s*:", (ROOT / "Makefile").read_text(), flags=re.M))
    for word in cmd.words[1:]:
        if "=" not in word:  # VAR=value sets a variable
            assert word in targets, f"{cmd.where()}: no make target {word!r}"


PYTHON = [c for c in _by("python") + _by("python3") if c.words[1:2] == ("-m",)]


class _Parsed(Exception):
    """Raised instead of running a module's main() once its arguments parsed."""


@pytest.mark.parametrize("cmd", PYTHON, ids=_ids(PYTHON))
def test_python_module_imports_and_parses(cmd: Command, monkeypatch: pytest.MonkeyPatch):
    name, args = cmd.words[2], list(cmd.words[3:])
    assert name.startswith(("nnpipe.", "benchmarks.")), cmd.where()
    module = importlib.import_module(name)
    main = getattr(module, "main", None)
    if main is None:
        return
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                original(self, argv, namespace)
        except SystemExit as exit_:
            if exit_.code == 0:  # --help printed the usage
                raise _Parsed from None
            pytest.fail(f"{cmd.where()}\n{err.getvalue().strip()}")
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(_Parsed):
        main(args)


# `python -m benchmarks.X` runs from the project root (``-m`` puts it on sys.path); one
# fresh interpreter per documented module, so a tool that imports only in the test session
# (pytest's pythonpath) fails here
TOOLS = sorted({c.words[2] for c in PYTHON if c.words[2].startswith("benchmarks.")})


def test_the_docs_show_the_measuring_tools():
    assert {"benchmarks.accuracy_compare", "benchmarks.predict_compare",
            "benchmarks.preprocess_compare"} <= set(TOOLS)


@pytest.mark.parametrize("module", TOOLS)
def test_measuring_tool_runs_from_the_project_root(module: str):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")  # this checkout's nnpipe, never ROOT itself
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"python -m {module} --help:\n{done.stderr[-2000:]}"
    assert "usage:" in done.stdout


BASH = _by("bash")


@pytest.mark.parametrize("cmd", BASH, ids=_ids(BASH))
def test_bash_script_exists(cmd: Command):
    assert (ROOT / cmd.words[1]).is_file(), f"{cmd.where()}: no {cmd.words[1]}"


# ---- links, YAML examples


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    in_code = {n for b in blocks(path) for n in range(b.line - 1, b.line + len(b.lines) + 1)}
    return {_slug(m.group(1)) for n, line in enumerate(path.read_text().splitlines(), 1)
            if n not in in_code and (m := re.match(r"^#+\s+(.*)$", line))}


def _links(path: Path) -> Iterator[tuple[int, str]]:
    in_code = {n for b in blocks(path) for n in range(b.line, b.line + len(b.lines))}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if n not in in_code:
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if not re.match(r"^[a-z]+:", target):
                    yield n, target


LINKS = [(path, n, target) for path in DOC_FILES for n, target in _links(path)]


@pytest.mark.parametrize("path,line,target", LINKS,
                         ids=[f"{p.name}:{n}" for p, n, _ in LINKS])
def test_relative_link_resolves(path: Path, line: int, target: str):
    where = f"{path.relative_to(ROOT)}:{line}: {target}"
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    assert dest.exists(), f"{where}: no such file"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), f"{where}: no heading with anchor #{anchor}"


YAML = [b for path in DOC_FILES for b in blocks(path) if b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML, ids=[f"{b.path.name}:{b.line}" for b in YAML])
def test_yaml_example_is_a_valid_study_config(block: Block):
    config = yaml.safe_load("\n".join(block.lines))
    try:
        jsonschema.validate(config, load_schema())
    except jsonschema.ValidationError as err:
        pytest.fail(f"{block.path.relative_to(ROOT)}:{block.line}: {err.message}")


# ---- the configuration reference (nnpipe.docs)


def test_configuration_reference_is_current():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    expected = docs.render(schema)
    assert (ROOT / "docs" / "configuration.md").read_text() == expected, (
        "docs/configuration.md is stale: run python -m nnpipe.docs --out docs/configuration.md")


def test_reference_names_every_key_with_type_default_and_description():
    schema = {"properties": {
        "top": {"type": "integer", "minimum": 0, "default": 3, "description": "A | b."},
        "sec": {"type": "object", "description": "Section.", "properties": {
            "mode": {"type": "string", "enum": ["x", "y"], "default": "x",
                     "description": "Write <case>.npz."},
            "inner": {"type": "object", "description": "Inner.", "properties": {
                "n": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                      "default": [1], "description": "N."}}}}}}}
    text = docs.render(schema)
    assert "| `top` | integer, ≥ 0 | `3` | A \\| b. |" in text
    assert '| `sec.mode` | string, one of `"x"`, `"y"` | `"x"` | Write &lt;case>.npz. |' in text
    assert "| `sec.inner.n` | list of integer; at least 1 item | `[1]` | N. |" in text
    assert "`sec.inner`: Inner." in text


def test_reference_refuses_a_description_cut_short_by_yaml():
    # `{description: Seed, same bytes.}` is a YAML flow mapping with a second key
    schema = yaml.safe_load("properties: {seed: {type: integer, description: Seed, same bytes.}}")
    with pytest.raises(ValueError, match=r"seed: 'same bytes\.'"):
        docs.render(schema)
