"""The GPU study's helpers on the CPU (the study itself runs in scripts/gpu-checks.sh; with
NNPIPE_CHECKS=cpu it runs here too, in about ten minutes on two cores)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks import gpu_study as S


def test_checks_are_printed_and_kept_as_they_come(tmp_path, capsys):
    study = S.Study("cuda", tmp_path / "study.json")
    assert study.add("amp: resume", True) is True
    assert study.add("bf16: resume", False, "exit 1: boom") is False
    assert capsys.readouterr().out.splitlines() == ["ok: amp: resume",
                                                    "FAIL: bf16: resume: exit 1: boom"]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["device"] == "cuda" and [c["ok"] for c in saved["checks"]] == [True, False]
    assert [c.name for c in study.failed] == ["bf16: resume"]


def test_an_unexpected_exception_becomes_a_failed_check():
    study = S.Study("cpu")

    def broken(x):
        raise KeyError(x)

    assert S._guarded(study, "device path numbers", broken, "epoch") is None
    assert study.checks[-1].name == "device path numbers" and not study.checks[-1].ok
    assert "KeyError: 'epoch'" in study.checks[-1].detail
    assert S._guarded(study, "fine", lambda: 3) == 3 and len(study.checks) == 1


FAKE_TRAINING = r"""
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM: checkpoint written", file=sys.stderr),
                                          sys.exit(143)))
out.mkdir(parents=True, exist_ok=True)
(out / "last.pt").touch()
(out / "metrics.csv").write_text("epoch,epoch_time_s\n1,0.01\n")
time.sleep(120)
"""


def test_interrupt_sends_sigterm_after_the_first_checkpoint(tmp_path):
    out = tmp_path / "run"
    rc, err = S._interrupt([sys.executable, "-c", FAKE_TRAINING, str(out)], out)
    assert rc == 143 and "SIGTERM: checkpoint written" in err


def test_interrupt_names_a_run_that_ends_without_a_checkpoint(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('bad config', file=sys.stderr); "
                                 "sys.exit(1)"]
    rc, err = S._interrupt(cmd, tmp_path)
    assert rc == -1 and err == "no last.pt before the run ended: bad config"


def test_rng_tensors_are_found_at_any_depth():
    state = {"python": (3, (1, 2), None), "torch": torch.zeros(3, dtype=torch.uint8),
             "cuda": [torch.ones(2, dtype=torch.uint8)]}
    assert [t.numel() for t in S._tensors(state)] == [3, 2]


@pytest.mark.parametrize(("summary", "dice"),
                         [({"foreground_mean": {"dice": 0.5}}, 0.5),
                          ({"foreground_mean": {"dice": None}}, None), ({}, None)])
def test_mean_dice_of_a_summary(summary, dice):
    got = S._mean_dice(summary)
    assert got == dice if dice is not None else got != got  # NaN


def test_device_path_numbers_on_the_cpu(tiny_study, tmp_path):
    study = S.Study("cpu")
    S.device_path_numbers(study, tiny_study.raw, tiny_study.preprocessed[3], tiny_study.splits)
    (check,) = study.checks
    assert check.ok and check.name == "device path on cpu equals the host path"


def test_training_command_of_each_device(tmp_path):
    gpu = S._train_command(tmp_path / "pre", tmp_path / "s.json", tmp_path / "o", "amp",
                           "cuda", True)
    cpu = S._train_command(tmp_path / "pre", tmp_path / "s.json", tmp_path / "o", "fp32",
                           "cpu", False)
    settings = json.loads(gpu[gpu.index("--config-json") + 1])["training"]
    assert settings["epochs"] == 2 and settings["deterministic"] is True
    assert settings["steps_per_epoch"] == S.STEPS_PER_EPOCH["cuda"]
    assert "--cpu" not in gpu and cpu[-3:] == ["--cpu", "--threads", "2"]
    assert gpu[gpu.index("--precision") + 1] == "amp"
