"""The tables rule itself (rules/tables.smk, workflow/scripts/tables.py) on a recorded noisy run.

Snakemake resolves the rule's declared inputs in a results tree whose upstream outputs are
already there (the benchmark cells are the two cells recorded on the shared 2-core VM at
load 21, tests/report/data/noisy_run.json) and runs only the tables and latest_tables jobs:
the script reads the files it is given, named by the study grammar, and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nnpipe.benchmark.steady import step_stats
from nnpipe.datasets.layout import load_dataset
from nnpipe.planning.fingerprint import compute_fingerprint
from nnpipe.study import StudyPaths

ROOT = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).with_name("data") / "noisy_run.json"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
RUN = {"config": "2d", "precision": "fp32", "gpus": 1}
pytestmark = pytest.mark.workflow

CONFIG = {
    "dataset": {"name": "noisy", "source": "embedded"},
    "grid": {"dims": [2], "precisions": ["fp32"], "gpus": [1], "folds": [0]},
    "planning": {"cascade": "off"},
    "inference": {"ensemble": False},
    "benchmark": {"precisions": ["fp32"], "gpus": [1], "train_batch_sizes_2d": [8],
                  "predict_batch_sizes_2d": [8]},
}


def recorded_cells() -> list[dict]:
    """The recorded cells as the benchmark stage writes them: step statistics and samples/s
    from the mean step time (nnpipe.benchmark.throughput)."""
    cells = []
    for r in json.loads(RECORDED.read_text())["records"]:
        stats = step_stats([t / 1000.0 for t in r["step_ms"]])
        mean_s = stats["latency_ms"]["mean"] / 1000.0
        cells.append({**r, **stats, "throughput": r["batch_size"] * r["gpus"] / mean_s})
    return cells


def upstream_tree(work: Path, raw: Path) -> dict[str, int]:
    """Every file the tables' DAG holds before the tables, as the stages would have left
    them (placeholders where the tables do not read a file), each with its depth in the
    DAG: a later stage's file is newer, so Snakemake finds them all up to date."""
    p = StudyPaths(str(work / "results"), "noisy")
    shutil.copytree(raw, p.raw)
    fp = compute_fingerprint(load_dataset(Path(p.raw)), progress=False)
    Path(p.path("fingerprint")).parent.mkdir(parents=True)
    Path(p.path("fingerprint")).write_text(json.dumps(fp.to_dict()))
    depth: dict[str, int] = {p.path("dataset_json"): 0, p.path("fingerprint"): 1}
    placeholders = {
        p.path("plan", config="2d"): 2, p.splits: 1, p.path("manifest", config="2d"): 3,
        p.path("model", **RUN, fold=0): 4, p.path("metrics", **RUN, fold=0): 4,
        p.path("predictions", **RUN, fold=0): 5, p.path("summary", **RUN, fold=0): 6,
        p.path("decision", **RUN): 6, p.path("crossval"): 7,
        **{p.path(kind, **RUN): 7 for kind in ("curves_plot", "overlays_plot")},
        p.path("dice_plot"): 7, p.path("throughput_plot"): 5,
    }
    for path, d in placeholders.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith((".pt", ".json", ".csv", ".png")):
            Path(path).write_bytes(b"{}" if path.endswith(".json") else b"x")
        else:  # a directory output (predictions, crossval)
            Path(path).mkdir()
        depth[path] = d
    scores = p.path("scores", **RUN, fold=0)
    pd.DataFrame({"case": ["a", "b"], "dice_1": [0.6, 0.8],
                  "dice_mean": [0.6, 0.8]}).to_csv(scores, index=False)
    train = p.path("train_json", **RUN, fold=0)
    Path(train).write_text(json.dumps({"time_to_train_s": 90.0, "batch_size": 4}))
    depth |= {scores: 6, train: 4}
    for cell in recorded_cells():
        path = p.path("benchmark", mode=cell["mode"], dim=cell["dim"],
                      precision=cell["precision"], bs=cell["batch_size"], gpus=cell["gpus"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(cell))
        depth[path] = 4
    name = "2d-fp32-1gpu"
    Path(p.best).write_text(json.dumps({"folds": [0], "best": {"name": name}, "candidates": [
        {"name": name, "runs": [name], "dice": 0.70, "dice_before_postprocessing": 0.69,
         "n_cases": 2, "postprocess_applied": [], "postprocess": f"postprocess/{name}.json"}]}))
    depth[p.best] = 8
    for path, d in depth.items():
        os.utime(path, (1_700_000_000 + 100 * d,) * 2)
    return depth


def test_tables_rule_reads_its_declared_inputs_on_a_recorded_noisy_run(tiny_study, tmp_path):
    work = tmp_path / "work"
    upstream_tree(work, tiny_study.raw)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile",
         str(config), "--cores", "1", "--rerun-triggers", "mtime", "--", "results/tables.md"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    # only the two table jobs ran: every other output of the DAG was there
    ran = re.findall(r"^(?:local)?rule (\w+):", res.stdout + res.stderr, flags=re.M)
    assert sorted(ran) == ["latest_tables", "tables"], res.stderr[-3000:]
    for out, plots in ((work / "results" / "noisy" / "tables.md", "plots/"),
                       (work / "results" / "tables.md", "noisy/plots/")):
        text = out.read_text()
        # the train cell's steps spread widely but its mean and median agree: a number;
        # the predict cell's steps fell in two groups: not a result, and what to do
        assert re.search(r"\| 2 \| 1 \| 8 \| 2\.56 \(median 3\.07, p90 1\.44\) \|", text), text
        assert ("not a result: mean 606.6 ms vs median 133.7 ms step, 354% apart: two groups "
                "of step times") in text
        assert "70.00 (1 fold)" in text and "1.5 min" in text  # the run's CSV and train.json
        assert "| **2d-fp32-1gpu** (chosen) |" in text  # best.json
        assert "Classes scored: 1 = " in text  # raw/dataset.json
        assert f"[2d-fp32-1gpu]({plots}curves-2d-fp32-1gpu.png)" in text
        assert "not rendered" not in text and "missing:" not in text
