"""Sparse annotations through a tiny Snakemake study: the plan records the ignore value, no
output channel is trained for it, no prediction holds it, evaluation scores annotated voxels
only and says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CONFIG = ROOT / "tests" / "workflow" / "sparse.yaml"
RUN = "results/wfsparse/evaluate/3d-fp32-1gpu"
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(CONFIG), "--cores", "2", *targets]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def test_sparse_study_never_predicts_ignore(tmp_path: Path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    targets = [f"{RUN}/fold{f}.csv" for f in (0, 1)] + ["results/wfsparse/ensemble/3d-fp32-1gpu"]
    res = snakemake(tmp_path, *targets)
    assert res.returncode == 0, res.stderr[-4000:]
    ds = tmp_path / "results" / "wfsparse"
    plan = json.loads((ds / "plans" / "3d.json").read_text())
    assert plan["label_scheme"]["ignore"] == 4 and plan["num_classes"] == 4
    refs = [nib.load(p).get_fdata() for p in sorted((ds / "raw" / "labelsTr").iterdir())]
    assert all((r == 4).any() for r in refs)  # the references really are sparse
    preds = sorted((ds / "predict").rglob("*.nii.gz")) + sorted((ds / "ensemble").rglob(
        "*.nii.gz"))
    assert len(preds) == 3  # one validation case in each of the two folds + 1 test case
    for p in preds:
        values = set(np.unique(np.asarray(nib.load(p).dataobj)).tolist())
        assert values <= {0, 1, 2, 3}, (p, values)
    for fold in (0, 1):
        table = pd.read_csv(tmp_path / RUN / f"fold{fold}.csv")
        assert table["annotated_fraction"].between(0.3, 0.7).all()
        summary = json.loads((tmp_path / RUN / f"fold{fold}.json").read_text())
        assert summary["sparse_annotations"]["ignore_label"] == 4
