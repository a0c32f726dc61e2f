"""The study grammar (nnpipe.study): names and paths round-trip, and the rules use them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnpipe.config import study_config
from nnpipe.report.tables import TableGrid, study_plots
from nnpipe.study import (
    CONFIGURATION_DIMS,
    CONFIGURATIONS,
    FILES,
    INNER_FILES,
    PRECISIONS,
    WILDCARDS,
    StudyPaths,
    bench_name,
    configuration_dim,
    parse_path,
    parse_run_name,
    previous_run,
    run_name,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", CONFIGURATIONS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_run_name_round_trips(config, precision):
    name = run_name(config, precision, 8)
    assert parse_run_name(name) == {"config": config, "precision": precision, "gpus": 8}


def test_run_name_of_a_dim_and_a_bad_name():
    assert run_name(3, "fp32", 1) == "3d-fp32-1gpu"
    with pytest.raises(ValueError, match="'4d-fp32-1gpu' is not"):
        parse_run_name("4d-fp32-1gpu")


def test_every_path_of_a_study_is_under_its_dataset_folder():
    p = StudyPaths("results", "mine")
    paths = [p.tables, p.plots, p.log("train/2d-fp32-1gpu/fold0"),
             p.timing("train/2d-fp32-1gpu/fold0"), p.best, p.eval_csv(2, "fp32", 1, 0),
             p.train_json("3d_cascade", "bf16", 2, 4), p.bench_json("train", 3, "fp32", 2, 1),
             p.plot("dice-per-class")]
    assert all(x.startswith("results/mine/") for x in paths), paths
    assert p.eval_csv(2, "fp32", 1, 0) == "results/mine/evaluate/2d-fp32-1gpu/fold0.csv"
    assert p.timing("best") == "results/mine/logs/best.tsv"
    assert p.bench_json("train", 3, "fp32", 2, 1) == \
        "results/mine/benchmark/train-3d-fp32-bs2-1gpu.json"
    assert bench_name("predict", 2, "bf16", 8, 1) == "predict-2d-bf16-bs8-1gpu"
    assert p.latest_tables == "results/tables.md"
    assert p.relative(p.plot("throughput")) == "plots/throughput.png"


@pytest.mark.parametrize("kind", sorted(FILES))
def test_every_kind_round_trips_fields_path_fields(kind):
    """fields -> path -> fields for every kind of file, under a results_dir with folders."""
    paths = StudyPaths("/data/project/results", "Dataset002_Heart")
    fields = {k: v for k, v in SAMPLE.items() if "{" + k + "}" in FILES[kind] and k != "dataset"}
    if kind in ("log", "timing"):
        fields["job"] = "train/3d-fp32-1gpu/fold0"
    path = paths.path(kind, **fields)
    file = parse_path(path)
    assert (file.results_dir, file.dataset, file.kind) == (paths.results_dir, paths.dataset,
                                                            kind)
    assert dict(file.fields) == fields
    assert file.path == path


def test_parse_path_reads_a_run_and_a_cell_and_refuses_other_paths():
    f = parse_path("results/d/train/3d_lowres-amp-2gpu/fold3/final.pt")
    assert (f.kind, f.run, f.fields["fold"]) == ("model", "3d_lowres-amp-2gpu", 3)
    assert parse_path("results/d/predict/2d-fp32-1gpu/fold0/").kind == "predictions"
    cell = parse_path("results/d/benchmark/train-2d-bf16-bs8-1gpu.json")
    assert dict(cell.fields) == {"mode": "train", "dim": 2, "precision": "bf16", "bs": 8,
                                 "gpus": 1}
    with pytest.raises(ValueError, match="belongs to no run"):
        _ = cell.run
    for bad in ("results/d/train/4d-fp32-1gpu/fold0/final.pt", "results/d/unknown.txt",
                "results/d/evaluate/3d-fp16-1gpu/fold0.csv"):
        with pytest.raises(ValueError, match="is no file of a study"):
            parse_path(bad)


def test_paths_name_missing_fields_and_configurations_their_dims():
    paths = StudyPaths("results", "d")
    assert paths.path("model", config=3, precision="fp32", gpus=1, fold=0) == \
        "results/d/train/3d-fp32-1gpu/fold0/final.pt"
    assert paths.run_file("decision", "2d-bf16-4gpu") == "results/d/postprocess/2d-bf16-4gpu.json"
    with pytest.raises(ValueError, match="needs the fields config, precision, gpus, fold"):
        paths.path("model", config="3d")
    with pytest.raises(ValueError, match="no file kind 'weights'"):
        paths.template("weights")
    assert {c: configuration_dim(c) for c in CONFIGURATIONS} == dict(CONFIGURATION_DIMS)
    with pytest.raises(ValueError, match="unknown configuration '3d_fullres'"):
        configuration_dim("3d_fullres")
    assert previous_run("3d_cascade-bf16-2gpu") == "3d_lowres-bf16-2gpu"
    assert previous_run("3d-bf16-2gpu") is None


def test_plots_the_tables_link_are_under_the_dataset_folder():
    grid = TableGrid.from_study(study_config({"grid": {"dims": [2]}}))
    for *_, path in study_plots(grid):
        assert path.startswith("plots/"), path  # relative to results/<dataset>/


def test_rules_log_and_time_every_job_under_the_dataset():
    """Every log: and benchmark: of rules/*.smk is under {LOGS} (results/<dataset>/logs) and
    no rule writes the top-level logs/ or benchmarks/ folders."""
    text = "".join(p.read_text() for p in sorted((ROOT / "rules").glob("*.smk")))
    entries = re.findall(r"^\s+(log|benchmark):\n\s+(\S.*)$", text, flags=re.M)
    assert len(entries) > 20
    for kind, value in entries:
        assert value.startswith(('f"{LOGS}/', 'f"{STUDY_PATHS.logs}/')), (kind, value)
    assert '"logs/' not in text and '"benchmarks/' not in text


# ---------------------------------------------------------------- against the Snakefile

# Prints every rule's declared outputs, logs and benchmark files as JSON: the Snakefile read
# by Snakemake itself (in a subprocess: reading a workflow changes the working directory).
_DECLARED = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                      snakefile=Path("Snakefile"), workdir=Path("."))._workflow
    json.dump({r.name: {"output": [str(f) for f in r.output],
                        "log": [str(f) for f in r.log],
                        "benchmark": [str(r.benchmark)] if r.benchmark else []}
               for r in wf.rules}, sys.stdout)
"""
# one value of each wildcard, none the first of its set (a prefix must not match)
SAMPLE = {"dataset": "Dataset002_Heart", "config": "3d_cascade", "precision": "bf16",
          "gpus": 16, "fold": 4, "dim": 3, "bs": 12, "mode": "predict", "name": "scans",
          "part": 2, "parts": 3, "ensemble": "2d-fp32-1gpu+3d_cascade-fp32-1gpu"}


@pytest.fixture(scope="module")
def declared() -> dict[str, dict[str, list[str]]]:
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _DECLARED], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def _constraints(template: str) -> tuple[str, dict[str, str]]:
    """A Snakemake template without its wildcard constraints, and the constraints."""
    found: dict[str, str] = {}

    def strip(m: re.Match[str]) -> str:
        found[m[1]] = m[2]
        return "{" + m[1] + "}"

    return re.sub(r"\{(\w+),((?:[^{}]|\{[^{}]*\})+)\}", strip, template), found


def _fill(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(SAMPLE[m[1]]), template)


def test_every_declared_output_is_a_grammar_template_and_round_trips(declared):
    """Each rule's outputs are exactly :data:`nnpipe.study.FILES` templates (the configured
    study's dataset as its {dataset}); filled with values, a path reads back (path -> fields)
    to those values and is written again (fields -> path) unchanged; every kind of the
    grammar but the logs is some rule's output."""
    kinds = set()
    for rule, files in declared.items():
        if rule == "latest_tables":  # results/tables.md: of no dataset (test below)
            continue
        for declared_path in files["output"]:
            template, constraints = _constraints(declared_path)
            assert constraints.pop("dataset") == "embedded", (rule, declared_path)
            for name, regex in constraints.items():  # the grammar's sets, or narrower
                if rule not in ("predict_part", "gather_predictions"):  # the sets' names
                    assert regex == WILDCARDS[name], (rule, name, regex)
            path = _fill(template)
            file = parse_path(path)
            kinds.add(file.kind)
            assert (file.results_dir, file.dataset) == ("results", SAMPLE["dataset"]), path
            if rule != "previous":  # the one output with a field fixed: config 3d_cascade
                assert StudyPaths("results", "{dataset}").template(file.kind) == template, \
                    (rule, template)
            wanted = {k: SAMPLE[k] for k in re.findall(r"\{(\w+)\}", template)
                      if k != "dataset"}
            if rule == "previous":  # previous/3d_cascade-...: the config is fixed
                wanted["config"] = "3d_cascade"
            assert dict(file.fields) == wanted, (rule, path)
            assert file.path == path, (rule, path)
    assert kinds == set(FILES) - {"log", "timing"} - INNER_FILES


def test_every_declared_log_and_timing_round_trips(declared):
    """Logs and Snakemake timings are under results/<dataset>/logs/ and read back as such."""
    n = 0
    for rule, files in declared.items():
        for kind in ("log", "benchmark"):
            for declared_path in files[kind]:
                path = _fill(_constraints(declared_path)[0])
                file = parse_path(path)
                assert file.kind == ("log" if kind == "log" else "timing"), (rule, path)
                assert file.path == path
                n += 1
    assert n > 20


def test_the_declared_tables_are_the_study_paths(declared):
    paths = StudyPaths("results", "embedded")
    assert declared["latest_tables"]["output"] == [paths.latest_tables]
    assert _constraints(declared["tables"]["output"][0])[0] == \
        StudyPaths("results", "{dataset}").tables


def test_every_list_of_precisions_and_configurations_is_the_grammar_set():
    """The sets are written once (nnpipe.study); the config schema's enums, the training
    precisions and the plots' colours are tables over the same set."""
    import yaml

    from nnpipe.planning.cascade import CONFIGURATIONS as PLANNED
    from nnpipe.report.plots import PRECISION_COLOURS, PRECISION_ORDER
    from nnpipe.training.precision import _PRECISIONS

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    props = schema["properties"]
    for section in ("grid", "benchmark"):
        assert props[section]["properties"]["precisions"]["items"]["enum"] == list(PRECISIONS)
    assert tuple(_PRECISIONS) == PRECISIONS
    assert tuple(PRECISION_COLOURS) == PRECISION_ORDER == PRECISIONS
    assert PLANNED == CONFIGURATION_DIMS
