"""The low-resolution cascade end to end in Snakemake, on tiny data (tests/workflow/cascade.yaml:
5 cases of 25x32x27 voxels, a 16^3 patch covering 19 % of them, every fold, 1 epoch).

For CI time Snakemake makes only the cascade's chain (37 jobs): both stages on every fold,
the cascade's evaluations, both stages' postprocessing and the cascade's test-image ensemble,
not the plain 3D run, benchmarks and plots of tables.md (test_workflow.py runs those rules);
the best configuration and the tables are then made here from what it wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.datasets.layout import read_label_file
from nnpipe.evaluation.best import Study
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.pipeline import CaseMeta
from nnpipe.preprocessing.previous import previous_to_grid

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "workflow" / "cascade.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
NNPIPE = Path(sys.executable).with_name("nnpipe")
DATA = "results/casctest"
LOW, CASC = "3d_lowres-fp32-1gpu", "3d_cascade-fp32-1gpu"
pytestmark = pytest.mark.workflow


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def snakemake(workdir: Path, *args: str, timeout: int = 1200):
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(CONFIG), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


TARGETS = (f"{DATA}/ensemble/{CASC}", f"{DATA}/postprocess/{LOW}.json",
           *(f"{DATA}/evaluate/{CASC}/fold{f}.csv" for f in range(5)))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cascade")
    res = snakemake(work, *TARGETS)
    assert res.returncode == 0, res.stderr[-4000:]
    return work


def test_both_stages_are_planned_and_trained_on_every_fold(study):
    data = study / DATA
    full = Plan.load(data / "plans" / "3d.json")
    low = Plan.load(data / "plans" / "3d_lowres.json")
    casc = Plan.load(data / "plans" / "3d_cascade.json")
    assert low.configuration == "3d_lowres"
    assert all(a > b for a, b in zip(low.full_spacing, full.full_spacing, strict=True))
    assert (casc.previous_stage, casc.patch_size, casc.full_spacing) == (
        "3d_lowres", full.patch_size, full.full_spacing)
    for run in (LOW, CASC):
        for fold in range(5):
            assert (data / "train" / run / f"fold{fold}" / "final.pt").is_file()
            assert (data / "predict" / run / f"fold{fold}").is_dir()
        assert (data / "postprocess" / f"{run}.json").is_file()
    assert (data / "preprocessed" / "3d_lowres" / "manifest.json").is_file()
    assert not (data / "preprocessed" / "3d_cascade").exists()  # it trains on the 3D folder


def test_cascade_trains_on_held_out_low_resolution_predictions(study):
    """Each case's extra input is the low-resolution prediction of the fold that held it
    out, on the 3D preprocessed grid."""
    data = study / DATA
    record = json.loads((data / "previous" / CASC / "previous.json").read_text())
    assert record["predictions"] == [f"{DATA}/predict/{LOW}/fold{f}" for f in range(5)]
    splits = json.loads((data / "splits.json").read_text())
    manifest = json.loads((data / "preprocessed" / "3d" / "manifest.json").read_text())
    plan = Plan.from_dict(manifest["plan"])
    for fold, split in enumerate(splits):
        for case in split["val"]:
            values, _ = read_label_file(data / "predict" / LOW / f"fold{fold}" / f"{case}.nii.gz")
            expected = previous_to_grid(plan.label_table.to_indices(values),
                                        CaseMeta.from_dict(manifest["cases"][case]))
            np.testing.assert_array_equal(
                np.load(data / "previous" / CASC / f"{case}_prev.npy"), expected)


def test_tables_and_best_configuration_include_both_stages(study, monkeypatch, tmp_path):
    from nnpipe.config import load_config
    from nnpipe.evaluation.best import best_record, find_best
    from nnpipe.report.tables import render_study

    monkeypatch.chdir(study)  # results_dir is relative
    text = render_study(load_config(CONFIG), study / "tables.md", cascade=True,
                        cascade_why="test")
    for row in ("3", "3d_lowres", "3d_cascade"):
        assert f"\n| {row} | 1 | " in text
    assert re.search(r"\n\| 3d_cascade \| 1 \| 2 \| \d+\.\d+ ± \d+\.\d+ \(5 folds\)", text)
    best = find_best(study / DATA, [LOW, CASC], range(5), study / DATA / "best.json")
    assert [c["name"] for c in best["candidates"]] == [LOW, CASC]
    assert all(c["dice"] is not None for c in best["candidates"])
    # the cascade as the choice: its low-resolution stage is recorded with it
    record = best_record(Study(study / DATA), [best["candidates"][1]], range(5),
                         "casctest", study / DATA / "best.json")
    (member,) = record["best"]["members"]
    assert member["previous"]["run"] == LOW
    assert member["previous"]["plan"] == "plans/3d_lowres.json"


def test_predict_chains_the_stages_for_new_images(study, tmp_path):
    """`nnpipe predict --model train/3d_cascade-...` runs the 3d_lowres fold models first;
    with the run's postprocessing it writes what the study's ensemble job wrote."""
    data = study / DATA
    out = tmp_path / "pred"
    res = subprocess.run([str(NNPIPE), "predict", "--model", str(data / "train" / CASC),
                          "--input", str(data / "raw" / "imagesTs"), "--out", str(out),
                          # the study's inference settings (cascade.yaml: no TTA)
                          "--device", "cpu", "--no-tta"], capture_output=True, text=True,
                         env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ensemble = sorted((data / "ensemble" / CASC).glob("*.nii.gz"))
    assert ensemble
    for path in ensemble:
        np.testing.assert_array_equal(np.asarray(nib.load(out / path.name).dataobj),
                                      np.asarray(nib.load(path).dataobj))


def test_nothing_to_do_after_a_complete_run(study):
    res = snakemake(study, "-n", *TARGETS)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr
