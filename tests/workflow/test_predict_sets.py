"""The `predict:` config section through Snakemake: 3 parts, a killed part resumed, the
gather, and which files each kind of `model` asks for."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from nnpipe.cli import main
from nnpipe.model import build_unet
from nnpipe.training.checkpoint import save_checkpoint

from .test_workflow import CONFIG, snakemake

pytestmark = pytest.mark.workflow
TARGET = "results/wftest/predictions/scans"


def study_with_set(work: Path, tiny_study, model: str, parts: int = 3) -> Path:
    """A study folder: the workflow test config plus a set of 5 images named `scans`."""
    images = work / "scans"
    images.mkdir(parents=True)
    for path in sorted((tiny_study.raw / "imagesTr").glob("*.nii.gz"))[:5]:
        shutil.copy(path, images / path.name)
    config = yaml.safe_load(CONFIG.read_text())
    config["predict"] = {"scans": {"input": "scans", "model": model, "parts": parts}}
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def untrained_model(tiny_study, path: Path) -> Path:
    torch.manual_seed(0)
    plan = tiny_study.plans[3]
    net = build_unet(plan, deep_supervision=False, out_channels=plan.num_classes)
    save_checkpoint(path, {"model": net.state_dict(), "plan": plan.to_dict(),
                           "settings": {"regions": False}})
    return path


def labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_three_parts_a_killed_part_resumed_and_gathered(tiny_study, tmp_path):
    model = untrained_model(tiny_study, tmp_path / "model" / "fold0" / "final.pt")
    config = study_with_set(tmp_path, tiny_study, str(model))
    res = snakemake(tmp_path, TARGET, "--cores", "3", config=config)
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / TARGET
    parts_dir = tmp_path / f"{TARGET}.parts"
    logs = sorted((tmp_path / "results/wftest/logs/predictions/scans").glob("part*-of-3.log"))
    assert [p.name for p in logs] == [f"part{i}-of-3.log" for i in range(3)]
    # the same labels as one `nnpipe predict` over the whole folder, every case once
    assert main(["predict", "-m", str(model), "-i", str(tmp_path / "scans"), "-o",
                 str(tmp_path / "one"), "--config", str(config)]) == 0
    one, gathered = labels(tmp_path / "one"), labels(out)
    assert sorted(gathered) == sorted(one) and len(one) == 5
    for name in one:
        np.testing.assert_array_equal(gathered[name], one[name])

    # part 1 killed: its record never written (so no gather either), one of its cases
    # unfinished (a temporary file left behind, no label map); the rerun redoes that part
    # only, skipping its finished case, then the gather
    record = parts_dir / "part1-of-3.json"
    killed, finished = sorted(yaml.safe_load(record.read_text())["files"])
    record.unlink()
    shutil.rmtree(out)
    (parts_dir / f"{killed}.nii.gz").unlink()
    leftover = parts_dir / f".{killed}.nii.gz.abcd1234.part.nii.gz"
    leftover.write_bytes(b"half a file")
    res = snakemake(tmp_path, TARGET, "--cores", "3", config=config)
    assert res.returncode == 0, res.stderr[-4000:]
    log = (tmp_path / "results/wftest/logs/predictions/scans/part1-of-3.log").read_text()
    assert f"{finished}: exists, skipped" in log and f"-> {TARGET}.parts/{killed}.nii.gz" in log
    assert not leftover.exists()
    jobs = re.findall(r"^(?:local)?rule (\w+):", res.stdout + res.stderr, re.M)
    assert sorted(jobs) == ["gather_predictions", "predict_part"], jobs  # part 1, the gather
    again = labels(out)
    assert sorted(again) == sorted(one)
    for name in one:
        np.testing.assert_array_equal(again[name], one[name])


@pytest.mark.parametrize(("model", "expected"), [
    ("best", ["results/wftest/best.json"]),
    ("3d-fp32-1gpu", ["results/wftest/train/3d-fp32-1gpu/fold0/final.pt",
                      "results/wftest/train/3d-fp32-1gpu/fold1/final.pt",
                      "results/wftest/postprocess/3d-fp32-1gpu.json"]),
])
def test_model_of_a_set_is_built_by_the_study(tiny_study, tmp_path, model, expected):
    config = study_with_set(tmp_path, tiny_study, model, parts=2)
    res = snakemake(tmp_path, TARGET, "-n", "--printshellcmds", config=config)
    assert res.returncode == 0, res.stderr[-4000:]
    shell = [line for line in (res.stdout + res.stderr).splitlines()
             if "nnpipe predict" in line and "--part-record" in line]
    assert len(shell) == 2  # one job per part
    for path in expected:
        assert all(path in line for line in shell), (path, shell)
    assert "--part 0 --parts 2" in "\n".join(shell)


def test_lint_is_clean_for_the_new_rules(tiny_study, tmp_path):
    config = study_with_set(tmp_path, tiny_study, "best")
    res = snakemake(tmp_path, "--lint", config=config)
    text = res.stdout + res.stderr
    assert "predict_sets" not in text, text[-3000:]  # no lint of the files or their rules
