"""Training runs end to end, resumes exactly after SIGKILL, and checkpoints on SIGTERM."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SETTINGS = {"training": {"epochs": 4, "steps_per_epoch": 12, "val_patches": 2,
                         "deterministic": True, "learning_rate": 0.003}}


def _command(study, out: Path) -> list[str]:
    return [sys.executable, "-m", "nnpipe", "train", "--config-json", json.dumps(SETTINGS),
            "--preprocessed", str(study.preprocessed[3]), "--splits", str(study.splits),
            "--fold", "1", "--precision", "fp32", "--threads", "1", "--out", str(out)]


def _run(study, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(study, out), capture_output=True, text=True, timeout=300)


def _interrupt(study, out: Path, sig: int) -> subprocess.Popen:
    """Start training and send ``sig`` as soon as the first epoch's last.pt exists."""
    proc = subprocess.Popen(_command(study, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    return proc


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tiny_study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    res = _run(tiny_study, out)
    assert res.returncode == 0, res.stderr
    return out


def test_outputs_of_a_finished_run(uninterrupted):
    summary = json.loads((uninterrupted / "train.json").read_text())
    assert summary["epochs"] == 4 and summary["fold"] == 1 and summary["time_to_train_s"] > 0
    rows = list(csv.DictReader((uninterrupted / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "val_dice_mean", "lr"} <= set(rows[0])
    assert not (uninterrupted / "last.pt").exists()  # a forced rerun must start afresh


def test_sigkill_then_rerun_ends_with_identical_weights(tiny_study, uninterrupted, tmp_path):
    proc = _interrupt(tiny_study, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.pt").exists()
    res = _run(tiny_study, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resuming fold 1" in res.stderr
    _assert_same_weights(uninterrupted / "final.pt", tmp_path / "final.pt")
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_sigterm_checkpoints_and_exits_143(tiny_study, uninterrupted, tmp_path):
    proc = _interrupt(tiny_study, tmp_path, signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.returncode == 143, err
    assert "SIGTERM: checkpoint written" in err
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)["state"]
    assert state["epoch"] >= 1
    res = _run(tiny_study, tmp_path)
    assert res.returncode == 0, res.stderr
    _assert_same_weights(uninterrupted / "final.pt", tmp_path / "final.pt")


def test_more_epochs_extend_a_finished_run(tiny_study, uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    cmd = _command(tiny_study, tmp_path) + ["--epochs", "5"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "extending fold 1" in res.stderr
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "train.json").read_text())["epochs"] == 5


def test_two_cpu_ranks_under_torchrun(tiny_study, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", *_command(tiny_study,
                                                                             tmp_path)[1:]]
    settings = {"training": {**SETTINGS["training"], "epochs": 2, "steps_per_epoch": 3}}
    cmd[cmd.index("--config-json") + 1] = json.dumps(settings)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["gpus"] == 2 and summary["epochs"] == 2
    # one rank logs and writes: each epoch line appears once
    assert res.stderr.count("fold 1 epoch 2/2") == 1
    ckpt = torch.load(tmp_path / "final.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["loader"]) == 2


def test_sgd_poly_decay():
    from nnpipe.config import study_config
    from nnpipe.training.trainer import make_optimizer

    s = study_config({"training": {"optimizer": "sgd", "learning_rate": 0.01}}).training
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, s, total_steps=10, device=torch.device("cpu"))
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.99
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)
