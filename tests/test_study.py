"""The study grammar (nnpipe.study): names and paths round-trip, and the rules use them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnpipe.config import study_config
from nnpipe.report.tables import TableGrid, study_plots
from nnpipe.study import (
    CONFIGURATIONS,
    PRECISIONS,
    StudyPaths,
    bench_name,
    parse_run_name,
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
