"""Run Snakemake itself on a tiny study: end to end, partial reruns, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.benchmark.steady import record_failure

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: Path = CONFIG, timeout: int = 900):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("study")
    (work / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", work / "config" / "config.yaml")
    res = snakemake(work, "results/tables.md")
    assert res.returncode == 0, res.stderr[-4000:]
    return work


def test_tables_hold_numbers_from_the_runs(study):
    text = (study / "results" / "tables.md").read_text()
    # every Dice cell of the grid is a measured mean ± std over the two folds
    dice = re.findall(r"(\d+\.\d+) ± (\d+\.\d+) \(2 folds\)", text)
    assert len(dice) == 2, text
    for mean, _ in dice:
        assert 0.0 <= float(mean) <= 100.0
    for dim in (2, 3):
        record = json.loads((study / f"results/wftest/benchmark/train-{dim}d-fp32-bs2-1gpu.json")
                            .read_text())
        # a measured cell, or (too few timed steps, two groups of step times on a busy
        # machine) one marked: never a number printed as a result when it is not one
        if record_failure(record) is None:
            assert f"{record['throughput']:.2f}" in text
        else:
            assert "not a result: " in text and f"{record['throughput']:.2f}" not in text


def test_prediction_keeps_source_geometry(study):
    raw = study / "results" / "wftest" / "raw"
    splits = json.loads((study / "results" / "wftest" / "splits.json").read_text())
    case = splits[0]["val"][0]
    pred = nib.load(study / f"results/wftest/predict/3d-fp32-1gpu/fold0/{case}.nii.gz")
    src = nib.load(raw / "imagesTr" / f"{case}.nii.gz")
    assert pred.shape == src.shape[:3]
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
    assert pred.get_data_dtype() == np.uint8


def test_ensemble_and_postprocessing_outputs(study):
    ds = study / "results" / "wftest"
    test_images = sorted(p.name for p in (ds / "raw" / "imagesTs").glob("*.nii.gz"))
    for run in ("2d-fp32-1gpu", "3d-fp32-1gpu"):
        decision = json.loads((ds / "postprocess" / f"{run}.json").read_text())
        assert set(decision["classes"]) == {"1", "2", "3"}
        assert len(decision["cases"]) == 2  # the validation cases of both folds (1 each)
        written = sorted(p.name for p in (ds / "ensemble" / run).glob("*.nii.gz"))
        assert written == test_images and written
        pred = nib.load(ds / "ensemble" / run / written[0])
        src = nib.load(ds / "raw" / "imagesTs" / written[0])
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
        summary = json.loads((ds / "evaluate" / run / "fold0.json").read_text())
        assert set(summary["foreground_mean"]) == {"dice", "iou", "hd95", "nsd"}


def test_best_configuration_and_its_portable_model(study, tmp_path, monkeypatch):
    from nnpipe.cli import main

    ds = study / "results" / "wftest"
    best = json.loads((ds / "best.json").read_text())
    runs = ["2d-fp32-1gpu", "3d-fp32-1gpu"]
    assert [c["name"] for c in best["candidates"]] == [*runs, "+".join(runs)]
    for c in best["candidates"]:
        assert c["n_cases"] == 2 and (c["dice"] is None or 0.0 <= c["dice"] <= 1.0)
    scored = [c for c in best["candidates"] if c["dice"] is not None]
    assert best["best"]["name"] == max(scored, key=lambda c: c["dice"])["name"]
    for run in runs:  # the fold predictions kept their probabilities for the ensemble
        assert len(list((ds / "predict" / run / "fold0").glob("*.npz"))) == 1
    text = (study / "results" / "tables.md").read_text()
    assert "## Best configuration" in text and f"**{best['best']['name']}** (chosen)" in text
    # predict with best.json, export it, and predict from the zip with no results folder
    monkeypatch.chdir(tmp_path)
    images = str(ds / "raw" / "imagesTs")
    assert main(["predict", "--model", str(ds / "best.json"), "--input", images,
                 "--output", "a", "--device", "cpu"]) == 0
    assert main(["export", "--model", str(ds / "best.json"), "--out", "m.zip"]) == 0
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (tmp_path / "m.zip").rename(fresh / "m.zip")
    monkeypatch.chdir(fresh)
    assert main(["predict", "--model", "m.zip", "--input", images, "--output", "b",
                 "--device", "cpu"]) == 0
    a, b = sorted((tmp_path / "a").glob("*.nii.gz")), sorted((fresh / "b").glob("*.nii.gz"))
    assert [p.name for p in a] == [p.name for p in b] and a
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(nib.load(x).dataobj),
                                      np.asarray(nib.load(y).dataobj))


def test_training_outputs(study):
    run = study / "results" / "wftest" / "train" / "2d-fp32-1gpu" / "fold1"
    summary = json.loads((run / "train.json").read_text())
    assert summary["epochs"] == 2 and summary["time_to_train_s"] > 0
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert not (run / "last.pt").exists()


def test_forcing_one_fold_reruns_only_its_chain(study):
    target = "results/wftest/train/3d-fp32-1gpu/fold1/final.pt"
    res = snakemake(study, "-n", "--forcerun", target, "results/tables.md")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, flags=re.M))
    counts.pop("total", None)
    # the fold's chain: its run's curves and overlays and the Dice box plot show it too, and
    # the run's postprocessing decision and fold ensemble use its model and predictions
    assert counts == {"train": "1", "predict": "1", "evaluate": "1", "plot_curves": "1",
                      "plot_overlays": "1", "plot_dice": "1", "postprocess": "1",
                      "ensemble": "1", "best": "1", "tables": "1", "latest_tables": "1",
                      "all": "1"}
    assert "fold1" in res.stdout
    # fold0's model is read by the ensemble, never rebuilt
    assert re.search(r"output: \S*fold0/final\.pt", res.stdout) is None


def test_plots_linked_from_tables_and_in_the_html_report(study):
    text = (study / "results" / "wftest" / "tables.md").read_text()
    links = re.findall(r"\]\((plots/[\w.-]+\.png)\)", text)
    # Dice box plot, curves and overlays of the two runs, throughput (under two tables)
    assert sorted(set(links)) == sorted(
        ["plots/dice-per-class.png", "plots/throughput.png"]
        + [f"plots/{kind}-{dim}d-fp32-1gpu.png" for kind in ("curves", "overlays")
           for dim in (2, 3)])
    assert "not rendered" not in text
    for link in links:
        assert (study / "results" / "wftest" / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    # results/tables.md, the configured study's copy, links the same PNGs from results/
    latest = (study / "results" / "tables.md").read_text()
    assert sorted(set(re.findall(r"\]\((wftest/plots/[\w.-]+\.png)\)", latest))) == sorted(
        f"wftest/{link}" for link in set(links))
    events = list((study / "results/wftest/train/3d-fp32-1gpu/fold0/tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents.")
    res = snakemake(study, "--report", "results/report.html")
    assert res.returncode == 0, res.stderr[-3000:]
    html = (study / "results" / "report.html").read_text()
    for needle in ("overlays-3d-fp32-1gpu.png", "dice-per-class.png", "throughput.png",
                   "worst, median and best case", "Training curves", "nnU-Net for PyTorch"):
        assert needle in html, needle


def test_nothing_to_do_after_a_complete_run(study):
    res = snakemake(study, "-n", "results/tables.md")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_bad_label_stops_planning_naming_the_case(tmp_path):
    from nnpipe.datasets.embedded import generate_embedded

    data = generate_embedded(tmp_path / "data", n_train=5, n_test=0, seed=1, resolution_mm=8.0,
                             progress=False)
    label_path = data / "labelsTr" / "BRATS_002.nii.gz"
    img = nib.load(label_path)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 7  # not listed in dataset.json
    nib.save(nib.Nifti1Image(arr, img.affine), label_path)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(CONFIG.read_text().replace("source: embedded", f"source: local\n  path: {data}")
                   .replace("name: wftest", "name: badcase"))
    work = tmp_path / "work"
    work.mkdir()
    res = snakemake(work, "results/badcase/plans/3d.json", config=cfg)
    assert res.returncode != 0
    log = (work / "results" / "badcase" / "logs" / "plans" / "fingerprint.log").read_text()
    assert "BRATS_002" in log and "[7]" in log
    # the reason is on the terminal too (profiles/default: show-failed-logs), not only in the log
    assert "BRATS_002" in res.stdout + res.stderr
    # and how to go on (the Snakefile's onerror, which Ctrl-C reaches too)
    assert "run the same command again to resume" in res.stderr
    assert not (work / "results" / "badcase" / "plans" / "fingerprint.json").exists()


def _small_config(tmp_path: Path, name: str, seed: int, **replace: str) -> Path:
    """The test config as a 2D-only study named `name`: one fold of one epoch, no ensemble,
    no benchmarks."""
    text = (CONFIG.read_text().replace("name: wftest", f"name: {name}")
            .replace("seed: 3", f"seed: {seed}").replace("dims: [2, 3]", "dims: [2]")
            .replace("folds: [0, 1]", "folds: [0]").replace("epochs: 2", "epochs: 1")
            .replace("batch_size: 2}", "batch_size: 2, ensemble: false}"))
    text = text.replace("benchmark:\n", "benchmark:\n  enabled: false\n")
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


def test_two_studies_in_one_folder_keep_their_own_outputs_and_logs(tmp_path):
    """A second dataset's study runs (no "Nothing to be done" because results/tables.md
    exists) and touches nothing of the first: outputs, logs, timings, tables, plots."""
    work = tmp_path / "work"
    work.mkdir()
    one, two = _small_config(tmp_path, "one", 1), _small_config(tmp_path, "two", 2)
    res = snakemake(work, "results/tables.md", config=one)
    assert res.returncode == 0, res.stderr[-4000:]
    first = _tree(work / "results" / "one")
    assert "logs/train/2d-fp32-1gpu/fold0.log" in first
    assert not [k for k in first if k.startswith("ensemble/")]  # inference.ensemble: false
    assert "logs/train/2d-fp32-1gpu/fold0.tsv" in first  # Snakemake's benchmark: timing
    assert "tables.md" in first and "plots/dice-per-class.png" in first
    assert not (work / "logs").exists() and not (work / "benchmarks").exists()
    res = snakemake(work, "results/tables.md", config=two)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Nothing to be done" not in res.stdout + res.stderr
    assert _tree(work / "results" / "one") == first  # not one file of study one touched
    assert (work / "results" / "two" / "logs" / "train" / "2d-fp32-1gpu" / "fold0.log").is_file()
    latest = (work / "results" / "tables.md").read_text()
    assert "dataset `two`" in latest and "](two/plots/dice-per-class.png)" in latest
    assert "dataset `one`" in (work / "results" / "one" / "tables.md").read_text()
    # back to the first study: only results/tables.md is made again, from its outputs
    res = snakemake(work, "-n", "results/tables.md", config=one)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, flags=re.M))
    assert counts == {"latest_tables": "1", "total": "1"}, res.stdout


def test_preflight_and_config_errors_stop_in_one_paragraph(tmp_path):
    """Before any job: a typo gets "did you mean", amp on a machine without a CUDA GPU is
    refused (both in one paragraph on stderr, rc 1, nothing planned)."""
    import torch

    work = tmp_path / "work"
    work.mkdir()
    typo = _small_config(tmp_path, "typo", 1, **{"training:": "trainng:"})
    res = snakemake(work, "-n", "results/tables.md", config=typo)
    assert res.returncode == 1
    err = [line for line in res.stderr.splitlines() if line.startswith("nnpipe:")]
    assert len(err) == 1 and "unknown key `trainng` (did you mean `training`?)" in err[0]
    assert len(res.stderr.splitlines()) < 10, res.stderr  # no schema dump, no traceback
    if torch.cuda.is_available():
        return
    amp = _small_config(tmp_path, "amp", 1, **{"precisions: [fp32]": "precisions: [amp]"})
    res = snakemake(work, "results/tables.md", config=amp)
    assert res.returncode == 1
    assert ("nnpipe: this study cannot run on this machine (nothing was started): "
            "grid.precisions has amp, which needs a CUDA GPU") in res.stderr
    assert "Building DAG" not in res.stdout + res.stderr
    assert not (work / "results").exists()
