"""A 2D dataset (every case a single slice) through Snakemake: planned 2D only.

The `fingerprint` checkpoint tells the study's input functions that the dataset has no third
dimension, so the 3D runs of grid.dims are left out of the DAG (no 3D plan job that would
fail) and tables.md says why instead of showing 3D rows as missing.
"""

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

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
pytestmark = pytest.mark.workflow

NAME = "wf2d"
LEFT_OUT = f"3D runs left out: every case of `{NAME}` is a single slice (a 2D dataset)."


def snakemake(workdir: Path, *args: str, config: Path, timeout: int = 900):
    """Snakemake on this repository's Snakefile, as tests/workflow/test_workflow.py runs it."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _disc_case(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A noisy (size, size, 1) image with a bright disc, and its label (1 inside the disc)."""
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cx, cy = rng.integers(10, size - 10, 2)
    r = rng.integers(4, 8)
    label = ((x - cx) ** 2 + (y - cy) ** 2 <= r**2).astype(np.uint8)
    image = (rng.normal(100.0, 10.0, (size, size)) + 200.0 * label).astype(np.float32)
    return image[..., None], label[..., None]


def make_2d_dataset(root: Path, n_train: int = 6, n_test: int = 1) -> Path:
    """An MSD-layout folder of (32, 32, 1) NIfTI cases, 1 mm pixels, 5 mm slice."""
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    ids = [f"disc_{i:03d}" for i in range(n_train + n_test)]
    for i, cid in enumerate(ids):
        image, label = _disc_case(rng)
        folder = "imagesTr" if i < n_train else "imagesTs"
        nib.save(nib.Nifti1Image(image, affine), root / folder / f"{cid}.nii.gz")
        if i < n_train:
            nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{cid}.nii.gz")
    meta = {
        "name": NAME,
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ"},
        "numTraining": n_train,
        "numTest": n_test,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ids[:n_train]],
        "test": [f"./imagesTs/{c}.nii.gz" for c in ids[n_train:]],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def make_config(tmp: Path) -> Path:
    """tests/workflow/config.yaml (grid.dims [2, 3], 2 folds, 2 epochs) on the 2D folder."""
    data = make_2d_dataset(tmp / "data")
    text = CONFIG.read_text()
    text = re.sub(r"dataset:\n  name: wftest\n  source: embedded\n  embedded: \{[^}]*\}\n",
                  f"dataset: {{name: {NAME}, source: local, path: {data}}}\n", text)
    assert f"name: {NAME}" in text and "dims: [2, 3]" in text and "folds: [0, 1]" in text
    cfg = tmp / "config2d.yaml"
    cfg.write_text(text)
    return cfg


@pytest.fixture(scope="module")
def study2d(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("study2d")
    cfg = make_config(tmp)
    work = tmp / "work"
    work.mkdir()
    # before the fingerprint exists, the dry run stops at the checkpoint: no 3D job is named
    dry = snakemake(work, "-n", "results/tables.md", config=cfg)
    assert dry.returncode == 0, dry.stderr[-4000:]
    # no 3D run or plan (3d-fp32-1gpu, plans/3d.json); a bare "3d" may be in the workflow id
    assert "fingerprint" in dry.stdout and not re.search(r"3d[-./_]", dry.stdout)
    res = snakemake(work, "results/tables.md", config=cfg)
    assert res.returncode == 0, res.stderr[-4000:]
    return work


def test_no_3d_job_is_run(study2d):
    ds = study2d / "results" / NAME
    assert (ds / "plans" / "2d.json").is_file()
    assert not (ds / "plans" / "3d.json").exists()
    for stage in ("train", "predict", "evaluate", "ensemble", "benchmark", "preprocessed"):
        folder = ds / stage
        assert not [p.name for p in folder.glob("*3d*")] if folder.is_dir() else True, stage
    assert not list((study2d / "results" / NAME / "plots").glob("*3d*"))
    log = (study2d / "results" / NAME / "logs" / "plans" / "fingerprint.log").read_text()
    assert "2D dataset" in log


def test_2d_runs_are_evaluated(study2d):
    ds = study2d / "results" / NAME
    for fold in (0, 1):
        scores = ds / "evaluate" / "2d-fp32-1gpu" / f"fold{fold}.csv"
        assert scores.is_file()
        assert "dice_mean" in scores.read_text().splitlines()[0]
    test_pred = list((ds / "ensemble" / "2d-fp32-1gpu").glob("*.nii.gz"))
    assert [p.name for p in test_pred] == ["disc_006.nii.gz"]
    assert nib.load(test_pred[0]).shape == (32, 32, 1)


def test_tables_say_why_3d_is_left_out(study2d):
    text = (study2d / "results" / "tables.md").read_text()
    assert LEFT_OUT in text
    # no 3D row in any table, and no 3D cell named as missing
    assert not re.search(r"^\| 3 \|", text, flags=re.M), text
    assert "3d-" not in text, text
    row = r"^\| 2 \| 1 \| \d+ \| \d+\.\d+ ± \d+\.\d+ \(2 folds\)"
    assert re.search(row, text, flags=re.M), text
    assert "not rendered" not in text


def test_complete_study_has_nothing_to_do(study2d):
    res = snakemake(study2d, "-n", "results/tables.md", config=study2d.parent / "config2d.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Nothing to be done" in res.stdout + res.stderr


def test_forcing_one_2d_fold_reruns_only_its_chain(study2d):
    target = f"results/{NAME}/train/2d-fp32-1gpu/fold1/final.pt"
    res = snakemake(study2d, "-n", "--forcerun", target, "results/tables.md",
                    config=study2d.parent / "config2d.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, flags=re.M))
    counts.pop("total", None)
    assert counts == {"train": "1", "predict": "1", "evaluate": "1", "plot_curves": "1",
                      "plot_overlays": "1", "plot_dice": "1", "postprocess": "1",
                      "ensemble": "1", "best": "1", "tables": "1", "latest_tables": "1",
                      "all": "1"}
    assert not re.search(r"3d[-./_]", res.stdout)  # no 3D run (the workflow id may hold "3d")
