"""The `predict:` config section with an nnU-Net v2 model as `model` (a dataset folder of two
configurations, `configuration` picking one): 3 parts through
Snakemake give the files of one `nnpipe predict --model <v2 folder>` over the whole folder,
byte for byte; a part that lost its record and a case is redone alone."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnpipe.cli import main
from nnpipe.v2.network import build_network
from tests.v2.conftest import PLAIN_KWARGS, plans_json, v2_aliases, write_checkpoint, write_image

from .test_workflow import CONFIG, snakemake

pytestmark = pytest.mark.workflow
TARGET = "results/wftest/predictions/v2scans"


def v2_model(root: Path) -> Path:
    """A one-fold v2 trained-model folder (random PlainConvUNet, 3 classes, CT)."""
    folder = root / "Dataset901_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    plans = plans_json(PLAIN_KWARGS, "PlainConvUNet", [8, 16, 16], [2.0, 1.0, 1.0],
                       [0, 1, 2], ["CTNormalization"], [False])
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 2, "file_ending": ".nii.gz", "name": "Test"}))
    torch.manual_seed(7)
    net = build_network("PlainConvUNet", PLAIN_KWARGS, 1, 3)
    write_checkpoint(folder / "fold_0" / "checkpoint_final.pth",
                     v2_aliases({k: v.clone() for k, v in net.state_dict().items()}),
                     "3d_fullres")
    return folder


def study(work: Path, model: Path, parts: int = 3) -> Path:
    """The workflow test config plus the set `v2scans`: 5 images in v2's layout."""
    rng = np.random.default_rng(0)
    for k in range(5):
        image = np.zeros((8, 18, 16), np.float32)
        image[1:7, 2:16, 1:15] = rng.uniform(-100, 300, (6, 14, 14))
        write_image(work / "scans" / f"case_{k:03d}_0000.nii.gz", image,
                    spacing=(1.1, 0.9, 3.0))
    config = yaml.safe_load(CONFIG.read_text())
    # the dataset folder (it holds a 2d model too): the configuration picks the 3d one
    config["predict"] = {"v2scans": {"input": "scans", "model": str(model.parent),
                                     "configuration": "3d_fullres", "parts": parts,
                                     "layout": "nnunetv2"}}  # v2's own: accepted
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def raw(folder: Path) -> dict[str, bytes]:
    """Each label map's NIfTI bytes (the gzip wrapper holds a time)."""
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(folder.glob("*.nii.gz"))}


def test_a_v2_model_folder_in_three_parts(tmp_path: Path) -> None:
    model = v2_model(tmp_path / "v2")
    shutil.copytree(model, model.parent / "nnUNetTrainer__nnUNetPlans__2d")  # never loaded
    config = study(tmp_path, model)
    res = snakemake(tmp_path, TARGET, "--cores", "2", config=config)
    assert res.returncode == 0, res.stderr[-4000:]
    logs = tmp_path / "results/wftest/logs/predictions/v2scans"
    assert sorted(p.name for p in logs.glob("part*-of-3.log")) == [
        f"part{i}-of-3.log" for i in range(3)]
    assert "with nnU-Net v2 model nnUNetTrainer__nnUNetPlans__3d_fullres" in (
        logs / "part0-of-3.log").read_text()
    # what one `nnpipe predict` over the whole folder writes (the workflow's settings)
    assert main(["predict", "--model", str(model), "-i", str(tmp_path / "scans"), "-o",
                 str(tmp_path / "one"), "--config", str(config)]) == 0
    one, gathered = raw(tmp_path / "one"), raw(tmp_path / TARGET)
    assert sorted(one) == [f"case_{k:03d}.nii.gz" for k in range(5)]
    assert gathered == one

    # part 1 loses its record and one of its cases (and the gathered folder is gone, as
    # after a killed run): the rerun redoes that part only, then gathers
    parts = tmp_path / f"{TARGET}.parts"
    record = parts / "part1-of-3.json"
    lost = sorted(json.loads(record.read_text())["files"])[0]
    record.unlink()
    (parts / f"{lost}.nii.gz").unlink()
    shutil.rmtree(tmp_path / TARGET)
    res = snakemake(tmp_path, TARGET, "--cores", "2", config=config)
    assert res.returncode == 0, res.stderr[-4000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):", res.stdout + res.stderr, re.M)
    assert sorted(jobs) == ["gather_predictions", "predict_part"], jobs
    log = (logs / "part1-of-3.log").read_text()
    assert f"-> {TARGET}.parts/{lost}.nii.gz" in log and "predict 2 case(s)" in log
    assert raw(tmp_path / TARGET) == one
