"""A `predict:` set of new images in 3 parts as SLURM jobs, one part killed mid-way and
resumed by the profile's retry, then gathered: every case once, the labels of one job.

Uses the local cluster of test_slurm.py (scripts/slurm/start-local-slurm.sh; skipped without
root or apt). About 2-3 min on 2 cores: each SLURM job costs 10-15 s of scheduling, and the
plugin's status checks back off to tens of seconds.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from nnpipe.cli import main
from nnpipe.datasets.embedded import generate_embedded
from nnpipe.model import build_unet
from nnpipe.training.checkpoint import save_checkpoint

from .conftest import HERE
from .test_slurm import cluster, finish, job_states  # noqa: F401  (cluster: a fixture)
from .test_slurm import snakemake as _snakemake

pytestmark = pytest.mark.slurm
TARGET = "results/slurmtest/predictions/scans"
PART1_LOG = "results/slurmtest/logs/predictions/scans/part1-of-3.log"


def _study(work: Path, tiny_study) -> Path:
    """9 images, an untrained 3D model of the tiny study's plan, and the SLURM test config
    with the set `scans` (3 parts, flip TTA so that a case takes seconds: time to kill)."""
    raw = generate_embedded(work / "new", n_train=9, n_test=0, seed=11, resolution_mm=6.0,
                            progress=False)
    torch.manual_seed(0)
    plan = tiny_study.plans[3]
    net = build_unet(plan, deep_supervision=False, out_channels=plan.num_classes)
    model = work / "model" / "fold0" / "final.pt"
    save_checkpoint(model, {"model": net.state_dict(), "plan": plan.to_dict(),
                            "settings": {"regions": False}})
    config = yaml.safe_load((HERE / "config.yaml").read_text())
    config["inference"]["tta"] = True
    config["predict"] = {"scans": {"input": str(raw / "imagesTr"), "model": str(model),
                                   "parts": 3}}
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _kill_part_1_after_its_first_case(work: Path, timeout: float = 300) -> str:
    """scancel part 1's SLURM job as soon as its log shows one finished case; its job id."""
    log = work / PART1_LOG
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and "-> results" in log.read_text():
            for job, (state, comment) in job_states().items():
                if "predict_part" in comment and comment.endswith("scans_1_3") \
                        and state == "RUNNING":
                    subprocess.run(["scancel", "--signal=KILL", "--full", job], check=True)
                    return job
        time.sleep(0.1)
    pytest.fail("part 1 never logged a finished case")


def test_three_parts_one_killed_and_resumed(cluster, tiny_study, tmp_path):  # noqa: F811
    config = _study(tmp_path, tiny_study)
    proc = _snakemake(tmp_path, TARGET, "--configfile", str(config), timeout=900)
    killed = _kill_part_1_after_its_first_case(tmp_path)
    rc, out = finish(proc)
    assert rc == 0, out[-5000:]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == 4 and killed in submitted  # 3 parts + the retry of part 1
    assert f"SLURM-job '{killed}' failed" in out and "Trying to restart" in out
    # the retry skipped the case finished before the kill and predicted the rest
    log = (tmp_path / PART1_LOG).read_text()
    assert len(re.findall(r": exists, skipped", log)) >= 1, log
    # every case once, the labels of one job over the whole folder
    images = Path(yaml.safe_load(config.read_text())["predict"]["scans"]["input"])
    assert main(["predict", "-m", str(tmp_path / "model"), "-i", str(images), "-o",
                 str(tmp_path / "one"), "--config", str(config)]) == 0
    gathered = sorted(p.name for p in (tmp_path / TARGET).glob("*.nii.gz"))
    assert gathered == sorted(p.name for p in images.glob("*.nii.gz")) and len(gathered) == 9
    for name in gathered:
        np.testing.assert_array_equal(
            np.asarray(nib.load(tmp_path / TARGET / name).dataobj),
            np.asarray(nib.load(tmp_path / "one" / name).dataobj))
    assert not list((tmp_path / f"{TARGET}.parts").glob(".*.part*"))  # no leftovers
