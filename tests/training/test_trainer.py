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
from torch.utils._python_dispatch import TorchDispatchMode

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


@pytest.mark.slow  # starts processes (torchrun, signals): make test, not make check
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


@pytest.mark.slow  # starts processes (torchrun, signals): make test, not make check
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


@pytest.mark.slow  # starts processes (torchrun, signals): make test, not make check
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
    assert ckpt["world_size"] == 2 and len(ckpt["loader"]) == 2 and len(ckpt["rng"]) == 2
    assert ckpt["gpus"] == 0
    # one process cannot continue the two ranks' streams: refused, naming both sizes
    single = [sys.executable, *cmd[cmd.index("-m"):], "--epochs", "3"]
    res = subprocess.run(single, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "2 rank(s) on 0 GPU(s); this run has 1 rank(s)" in res.stderr
    # two ranks again: rank 0 finds final.pt, both extend it with their own states
    res = subprocess.run(cmd + ["--epochs", "3"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("extending fold 1") == 1
    assert json.loads((tmp_path / "train.json").read_text())["epochs"] == 3


def test_sgd_poly_decay():
    from nnpipe.config import study_config
    from nnpipe.training.step import make_optimizer

    s = study_config({"training": {"optimizer": "sgd", "learning_rate": 0.01}}).training
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, s, total_steps=10, device=torch.device("cpu"))
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.99
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)


# ---------------------------------------------------------------- GPU correctness, on the CPU


def _parts(tiny_study, tmp_path):
    """A fold-0 3D run's parts, built as the trainer builds them."""
    from nnpipe.config import study_config
    from nnpipe.io import read_json
    from nnpipe.planning.plan import Plan
    from nnpipe.training import distributed as D
    from nnpipe.training.splits import load_fold
    from nnpipe.training.trainer import TrainRun, _build

    settings = study_config({"training": {"steps_per_epoch": 2, "val_patches": 2}}).training
    run = TrainRun(tiny_study.preprocessed[3], tiny_study.splits, 0, "fp32", tmp_path, settings)
    info = D.DistInfo(0, 1, 0, torch.device("cpu"))
    plan = Plan.from_dict(read_json(run.preprocessed_dir / "manifest.json")["plan"])
    return run, info, _build(run, info, plan, load_fold(tiny_study.splits, 0)["train"])


def test_restore_loads_on_the_cpu_whatever_the_device(tiny_study, tmp_path):
    """Checkpoints are read onto the CPU and moved by load_state_dict: a run on another
    device ("meta" standing in for a GPU, where torch.set_rng_state refuses a moved RNG
    state) resumes, with the RNG state that was saved."""
    from dataclasses import replace

    from nnpipe.training.trainer import _checkpoint, _fresh_state, _restore

    run, info, parts = _parts(tiny_study, tmp_path)
    try:
        _checkpoint(parts, tmp_path / "last.pt", _fresh_state(), run, info)
        expected = torch.rand(3)
        state = _restore(parts, tmp_path / "last.pt", replace(info, device=torch.device("meta")))
    finally:
        parts.loader.close()
    assert state["epoch"] == 0 and torch.equal(torch.rand(3), expected)
    assert all(p.device.type == "cpu" for p in parts.model.parameters())


def test_resume_with_another_world_size_is_refused(tiny_study, tmp_path):
    from nnpipe.training.checkpoint import load_checkpoint, save_checkpoint
    from nnpipe.training.trainer import _checkpoint, _fresh_state, _restore

    run, info, parts = _parts(tiny_study, tmp_path)
    try:
        _checkpoint(parts, tmp_path / "last.pt", _fresh_state(), run, info)
        ckpt = load_checkpoint(tmp_path / "last.pt")
        ckpt.update(world_size=2, gpus=2, loader=[ckpt["loader"]] * 2)  # a 2-GPU run's
        save_checkpoint(tmp_path / "last.pt", ckpt)
        with pytest.raises(ValueError, match=r"2 rank\(s\) on 2 GPU\(s\); this run has 1 "
                                             r"rank\(s\) on 0 GPU\(s\)"):
            _restore(parts, tmp_path / "last.pt", info)
    finally:
        parts.loader.close()


def test_rank_0_decides_whether_to_resume(monkeypatch, tmp_path):
    """Rank 1 sees no last.pt (a shared file system lagging behind rank 0) but resumes from
    it, because the choice is rank 0's, broadcast."""
    from nnpipe.training import distributed as D
    from nnpipe.training import trainer

    last, final = tmp_path / "last.pt", tmp_path / "final.pt"
    sent: list[object] = []

    def broadcast(obj, info):
        sent.append(obj)
        return last  # what rank 0 saw

    monkeypatch.setattr(trainer.D, "broadcast_from_main", broadcast)
    assert trainer._resume_source(last, final, D.DistInfo(1, 2, 1, torch.device("cpu"))) == last
    assert sent == [None]  # rank 1 looked at nothing itself
    last.touch()
    monkeypatch.setattr(trainer.D, "broadcast_from_main", lambda obj, info: obj)
    assert trainer._resume_source(last, final, D.DistInfo(0, 2, 0, torch.device("cpu"))) == last


def test_sigterm_vote_is_host_side(monkeypatch):
    """With several ranks the SIGTERM flags are compared on the host (a CPU tensor, over the
    gloo group on GPUs): a vote on a device tensor read back with .item() would wait for the
    whole queued step. "meta" stands in for the GPU."""
    import torch.distributed as dist

    from nnpipe.training import distributed as D
    from nnpipe.training.trainer import STOP_CHECK_EVERY, _should_stop

    reduced_on: list[str] = []

    def all_reduce(t, *args, **kwargs):
        reduced_on.append(t.device.type)
        t.fill_(1)  # another rank was signalled

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    info = D.DistInfo(0, 2, 0, torch.device("meta"))
    assert not _should_stop({"flag": False}, 1, info) and reduced_on == []  # not a check step
    assert _should_stop({"flag": False}, STOP_CHECK_EVERY, info)
    assert reduced_on == ["cpu"]


class _DeviceSyncs(TorchDispatchMode):
    """Records what would make the host wait for a device: a device value read on the host
    (.item(), float(), a copy to the CPU) or a blocking host-to-device copy. The device is
    "meta", which has no data, so any such read also fails."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith(("aten._local_scalar_dense", "aten.nonzero", "aten.equal")) and \
                args[0].device.type != "cpu":
            self.syncs.append(f"{name} on {args[0].device}")
        elif name.startswith("aten._to_copy"):
            src, dst = args[0].device, kwargs.get("device") or args[0].device
            if src != dst and (dst.type == "cpu" or not kwargs.get("non_blocking")):
                self.syncs.append(f"{name} {src} -> {dst}")
        elif name.startswith("aten.copy_") and args[0].device != args[1].device and (
                args[0].device.type == "cpu" or not (len(args) > 2 and args[2])):
            self.syncs.append(f"{name} {args[1].device} -> {args[0].device}")
        return func(*args, **kwargs)


@pytest.fixture
def meta_loader(tiny_study, monkeypatch):
    """The torch loader delivering to "meta" (standing in for a GPU) with every augmentation
    at probability 1 (flips at 0.5)."""
    import dataclasses
    import sys

    from nnpipe.data.augment import AugmentSettings
    from nnpipe.data.loader import BatchLoader
    from nnpipe.data.sampling import SamplerSettings
    from nnpipe.training.splits import load_fold

    # torch.Generator cannot live on "meta"; on a GPU this is a CUDA generator seeded from
    # the host generator (no synchronisation either)
    monkeypatch.setattr(sys.modules["nnpipe.data.augment"], "_device_generator",
                        lambda generator, device: torch.Generator().manual_seed(5))
    plan = tiny_study.plans[3]
    everything = AugmentSettings.from_names(True, ["rotation", "scaling", "gamma",
                                                   "gamma_inverted", "lowres"])
    everything = dataclasses.replace(everything, **{f.name: 1.0 for f in dataclasses.fields(
        everything) if f.name.endswith("_prob") and f.name != "flip_prob"})
    loader = BatchLoader(tiny_study.preprocessed[3], load_fold(tiny_study.splits, 0)["train"],
                         SamplerSettings(tuple(plan.patch_size), 0.5, 3), everything, 2, 0,
                         torch.device("meta"), workers=1)
    yield loader
    loader.close()


def test_loader_batch_never_waits_for_the_device(meta_loader):
    """Sampling, the copy to the device and augmentation: no host-device synchronisation
    (augmentation parameters are copied non-blocking, nothing is read back)."""
    with _DeviceSyncs() as rec:
        image, seg = next(meta_loader)
    assert rec.syncs == []
    assert image.device.type == "meta" and seg.device.type == "meta"


def test_training_step_never_waits_for_the_device(tiny_study, meta_loader):
    """One optimizer step (forward, loss, backward, step) on "meta": no synchronisation."""
    from nnpipe.config import study_config
    from nnpipe.model import build_unet
    from nnpipe.training.loss import DeepSupervisionLoss
    from nnpipe.training.precision import get_precision, make_scaler
    from nnpipe.training.step import TrainingStep, make_optimizer, train_step

    meta, plan = torch.device("meta"), tiny_study.plans[3]
    model = build_unet(plan).to(meta)
    optimizer, scheduler = make_optimizer(model, study_config({}).training, 10, meta)
    precision = get_precision("fp32", torch.device("cpu"))
    parts = TrainingStep(plan, model, model, optimizer, scheduler, make_scaler(precision, meta),
                         DeepSupervisionLoss(), precision, torch.contiguous_format)
    image, seg = next(meta_loader)
    with _DeviceSyncs() as rec:
        loss = train_step(parts, image, seg, meta)
    assert rec.syncs == [] and loss.device == meta


def test_sigterm_grace_fits_the_slurm_signal_lead():
    """The trainer's SIGTERM checkpoint fits in torchrun's wait before it kills its ranks,
    which fits in the warning SLURM gives before the time limit (profiles/slurm)."""
    import re

    import yaml

    from nnpipe.training.trainer import SIGTERM_GRACE_S

    root = Path(__file__).resolve().parents[2]
    profile = yaml.safe_load((root / "profiles/slurm/config.v8+.yaml").read_text())
    extra = profile.get("set-resources", {}).get("train", {}).get(
        "slurm_extra", profile["default-resources"]["slurm_extra"])
    signal_flag = re.search(r"--signal=(B:)?(\w+)@(\d+)", extra)
    assert signal_flag, f"the train jobs get no --signal warning: {extra!r}"
    assert signal_flag.group(1) is None, "B: would signal the batch shell, not the trainer"
    assert signal_flag.group(2) in ("TERM", "SIGTERM", "15")  # what the trainer handles
    lead = int(signal_flag.group(3))
    rule = (root / "rules/train.smk").read_text()
    torchrun = int(re.search(r"^TORCHRUN_SHUTDOWN_S = (\d+)$", rule, re.M).group(1))
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT={params.torchrun_shutdown_s}" in rule
    assert "torchrun_shutdown_s=TORCHRUN_SHUTDOWN_S" in rule
    # SLURM kills at the time limit (plus KillWait): keep 30 s between torchrun's kill and it
    assert SIGTERM_GRACE_S < torchrun <= lead - 30, (SIGTERM_GRACE_S, torchrun, lead)


class _Started(Exception):
    """Raised by the fake init_distributed: the test only needs what happened before it."""


def test_train_sets_cublas_workspace_before_cuda_starts(monkeypatch, tmp_path):
    """Deterministic mode on CUDA needs CUBLAS_WORKSPACE_CONFIG before cuBLAS first runs:
    train() sets it, and switches deterministic algorithms on, before CUDA is started."""
    from nnpipe.config import study_config
    from nnpipe.training import trainer

    cublas_env = "CUBLAS_WORKSPACE_CONFIG"
    monkeypatch.delenv(cublas_env, raising=False)
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    seen: dict[str, object] = {}

    def init_distributed(force_cpu: bool = False):
        seen["env"] = os.environ.get(cublas_env)
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        raise _Started

    monkeypatch.setattr(trainer.D, "init_distributed", init_distributed)
    settings = study_config({"training": {"deterministic": True}}).training
    run = trainer.TrainRun(tmp_path, tmp_path / "splits.json", 0, "fp32", tmp_path, settings)
    try:
        with pytest.raises(_Started):
            trainer.train(run)
    finally:
        torch.use_deterministic_algorithms(flags[0])
        torch.backends.cudnn.benchmark = flags[1]
    assert seen == {"env": ":4096:8", "deterministic": True}
