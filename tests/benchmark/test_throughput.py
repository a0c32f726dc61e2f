"""``nnpipe benchmark``: the seed's command forms, the default network, the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nnpipe.benchmark.launch as launch
import nnpipe.benchmark.throughput as T
from nnpipe.benchmark.steady import step_stats
from nnpipe.cli import main
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.task01 import task01_plan


def fake_record(plan: Plan, spec: T.BenchmarkSpec, gpus: int = 1) -> dict[str, Any]:
    return {"mode": spec.mode, "dim": plan.dim, "precision": spec.precision,
            "batch_size": spec.batch_size, "gpus": gpus, "patch_size": list(plan.patch_size),
            "throughput": 10.0, "throughput_median": 10.0, **step_stats([0.1, 0.1, 0.1]),
            "warmup": {"steps": 1, "seconds": 0.1, "converged": True, "last_ms": [100.0]},
            "timed_steps": 3, "p99_min_steps": 368, "network": plan.dataset, "device": "cpu"}


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Run the CLI with run_benchmark / measure_ranks replaced; returns what they got."""
    calls: list[dict[str, Any]] = []

    def run_benchmark(plan, spec, pre=None, threads=None, force_cpu=False):
        calls.append({"plan": plan, "spec": spec, "ranks": 1})
        return fake_record(plan, spec)

    def measure_ranks(job, n):
        calls.append({"plan": job.plan, "spec": job.spec, "ranks": n})
        return fake_record(job.plan, job.spec, n)

    monkeypatch.setattr(T, "run_benchmark", run_benchmark)
    monkeypatch.setattr(launch, "measure_ranks", measure_ranks)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(argv: str) -> dict[str, Any]:
        assert main(["benchmark", *argv.split()]) == 0
        return calls[-1]

    return run


# (the seed's command, ours): each pair must ask for the same measurement
SPELLINGS = {
    "train amp": ("--mode train --gpus 1 --dim 3 --batch_size 2 --amp",
                  "--mode train --dim 3 --batch-size 2 --precision amp"),
    "train amp bind": ("--mode train --gpus 1 --dim 3 --batch_size 2 --amp --bind",
                       "--mode train --dim 3 --batch-size 2 --precision amp --bind"),
    "train 8 ranks": ("--mode train --gpus 8 --dim 3 --batch_size 2 --amp",
                      "--mode train --gpus 8 --dim 3 --batch-size 2 --precision amp"),
    "predict amp": ("--mode predict --dim 3 --amp --batch_size 4",
                    "--mode predict --dim 3 --precision amp --batch-size 4"),
    "2d fp32": ("--mode train --dim 2 --batch_size 64", "--mode train --dim 2 --batch-size 64 "
                "--precision fp32"),
}


@pytest.mark.parametrize(("seed", "ours"), SPELLINGS.values(), ids=SPELLINGS.keys())
def test_seed_spellings_ask_for_the_same_measurement(captured, seed, ours):
    theirs, mine = captured(seed), captured(ours)
    assert theirs == mine


def test_seed_train_command_builds_the_task01_network_on_synthetic_data(captured):
    got = captured("--mode train --gpus 8 --dim 3 --batch_size 2 --amp --bind")
    assert got["ranks"] == 8
    assert got["plan"] == task01_plan(3)
    spec = got["spec"]
    assert (spec.mode, spec.batch_size, spec.precision, spec.bind, spec.synthetic) == \
        ("train", 2, "amp", True, True)
    assert spec.patch_size == ()  # the plan's: 128³


def test_without_out_prints_the_line_and_writes_nothing(captured, capsys, tmp_path):
    captured("--mode predict --dim 3 --amp --batch_size 4")
    out = capsys.readouterr().out
    assert out.startswith("predict 3D bs 4 amp 1 rank(s): 10.00 samples/s")
    assert "median" in out and "NOT A RESULT, 3 timed steps < 4" in out
    assert list(tmp_path.iterdir()) == []


def test_with_out_writes_the_record(captured, tmp_path):
    captured("--mode train --dim 2 --batch_size 2 --out rec.json")
    record = json.loads((tmp_path / "rec.json").read_text())
    assert record["dim"] == 2 and record["spread"]["cv"] == 0.0


def test_amp_and_another_precision_conflict(captured, capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--mode", "train", "--dim", "3", "--batch_size", "2", "--amp",
              "--precision", "bf16"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_config_steps_and_zero_warmup(captured):
    spec = captured("--mode train --dim 3 --batch-size 1 --warmup 0")["spec"]
    assert spec.warmup_steps == 0  # 0 is a value, not "use the config"
    assert spec.timed_steps == 50  # schema default


@pytest.mark.parametrize(("argv", "env", "message"), [
    ("--mode train --dim 3 --batch-size 1 --preprocessed pre", {}, "needs the --plan"),
    ("--mode train --dim 3 --batch-size 1 --gpus 4", {"WORLD_SIZE": "2"}, "one of 2 ranks"),
    ("--mode train --dim 3 --batch-size 1 --gpus 0", {}, "--gpus must be >= 1"),
])
def test_refused_with_a_message(captured, monkeypatch, capsys, argv, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["benchmark", *argv.split()]) == 1
    assert message in capsys.readouterr().err


def test_under_torchrun_it_is_one_rank(captured, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    got = captured("--mode train --dim 3 --batch-size 1")
    assert got["ranks"] == 1  # run in this process (as rank 1 of the caller's torchrun)


def test_plan_of_another_dimension_is_refused(captured, tmp_path, capsys):
    task01_plan(2).save(tmp_path / "plan.json")
    assert main(["benchmark", "--mode", "train", "--dim", "3", "--batch-size", "1",
                 "--plan", str(tmp_path / "plan.json")]) == 1
    assert "is 2D" in capsys.readouterr().err


def tiny_plan() -> Plan:
    return Plan(dataset="t", dim=3, spacing=(1.0,) * 3, full_spacing=(1.0,) * 3,
                patch_size=(8, 8, 8), kernels=((3, 3, 3),) * 2, strides=((1, 1, 1), (2, 2, 2)),
                filters=(4, 8), batch_size=1, num_channels=2, num_classes=3,
                labels={0: "bg", 1: "a", 2: "b"},
                channel_norms=(ChannelNorm("zscore_nonzero"),) * 2)


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_run_benchmark_record(mode):
    spec = T.BenchmarkSpec(mode, batch_size=1, precision="fp32", warmup_steps=1,
                           timed_steps=4, synthetic=True, warmup_cap_s=0.0, timing_cap_s=0.0)
    record = T.run_benchmark(tiny_plan(), spec, force_cpu=True)
    assert record["timed_steps"] == 4 and record["warmup"]["steps"] == 1
    assert record["timing_capped"] and not record["p99_resolved"]
    assert record["p99_min_steps"] == 368
    lat = record["latency_ms"]
    assert lat["mean"] > 0 and set(lat) == {"mean", "median", "p90", "p95", "p99"}
    assert record["throughput"] == pytest.approx(1000.0 / lat["mean"])
    assert record["throughput_median"] == pytest.approx(1000.0 / lat["median"])
    assert set(record["spread"]) == {"cv", "p99_over_median", "mean_over_median"}
    assert record["steady"] in (True, False)
    assert record["conv3d"] == "onednn"
    assert "4 steps" in T.result_line(record)


def test_plain_conv3d_switch_for_the_before_after_comparison(captured):
    assert captured("--mode train --dim 3 --batch-size 1")["spec"].onednn
    assert not captured("--mode train --dim 3 --batch-size 1 --plain-conv3d")["spec"].onednn
    with pytest.raises(ValueError, match="compare the training path"):
        T.BenchmarkSpec("predict", 1, "fp32", 1, 2, onednn=False)


def test_spec_round_trips_through_json():
    spec = T.BenchmarkSpec("train", 2, "bf16", 3, 5, patch_size=(16, 16, 16), bind=True)
    assert T.BenchmarkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_seed_command_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys):
    """The seed's train command as typed (fp32 on this CPU), the Task01 network at a tiny
    patch: prints its line, writes nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ("benchmark --mode train --gpus 1 --dim 3 --batch_size 1 --bind --cpu "
            "--patch-size 16 16 16 --warmup 1 --steps 2 --max-warmup-s 0 --max-timing-s 0")
    assert main(argv.split()) == 0
    out = capsys.readouterr().out
    assert out.startswith("train 3D bs 1 fp32 1 rank(s): ")
    assert "synthetic-Task01_BrainTumour" in out
    assert list(Path(tmp_path).iterdir()) == []


def test_plan_for_patch_keeps_a_resenc_network_buildable():
    """A benchmark patch with another number of levels re-derives the encoder's blocks too
    (a ResEnc plan kept its old block counts and the build refused it)."""
    import dataclasses

    from nnpipe.benchmark.throughput import plan_for_patch
    from nnpipe.model import build_unet
    from nnpipe.planning.network import encoder_blocks
    from nnpipe.planning.task01 import task01_plan

    plan = task01_plan(3)
    plan = dataclasses.replace(plan, network="resenc_m",
                               encoder_blocks=encoder_blocks("resenc_m", len(plan.strides)))
    small = plan_for_patch(plan, (32, 32, 32))
    assert len(small.strides) < len(plan.strides)
    assert small.encoder_blocks == encoder_blocks("resenc_m", len(small.strides))
    build_unet(small, deep_supervision=True)


def test_spec_with_training_settings_round_trips_through_json():
    from nnpipe.config import study_config

    training = study_config({"training": {"optimizer": "sgd", "extra_augmentations": ["gamma"]}}
                            ).training
    spec = T.BenchmarkSpec("train", 2, "fp32", 1, 2, training=training)
    assert T.BenchmarkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_the_cli_hands_the_study_training_section_to_the_benchmark(captured, tmp_path):
    (tmp_path / "s.yaml").write_text("training: {optimizer: sgd, learning_rate: 0.01}\n")
    spec = captured("--mode train --dim 3 --batch-size 1 --config s.yaml")["spec"]
    assert spec.training.optimizer == "sgd" and spec.training.learning_rate == 0.01
    assert spec.training_settings().loader == "torch"  # the config's loader, no --loader
    assert captured("--mode train --dim 3 --batch-size 1")["spec"].training.optimizer == "adam"


@pytest.mark.parametrize(("optimizer", "opt_class", "lr_after_4"), [
    ("sgd", "SGD", 0.01 * (1 - 4 / 10) ** 0.9),  # nnU-Net's poly decay over epochs x steps
    ("adam", "Adam", 0.01),  # the reference's constant lr
])
def test_benchmark_trains_with_the_trainers_step(monkeypatch, optimizer, opt_class, lr_after_4):
    """The train cell is the trainer's step (training.step): the study's optimizer and its
    schedule, stepped once per timed or warm-up step; not a fixed Adam 8e-4."""
    from nnpipe.config import study_config
    from nnpipe.training import step as S

    built: list[S.TrainingStep] = []
    build = S.build_step

    def spy(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(T, "build_step", spy)
    training = study_config({"training": {"optimizer": optimizer, "learning_rate": 0.01,
                                          "epochs": 2, "steps_per_epoch": 5}}).training
    spec = T.BenchmarkSpec("train", 1, "fp32", warmup_steps=1, timed_steps=3, synthetic=True,
                           warmup_cap_s=0.0, timing_cap_s=0.0, training=training)
    T.run_benchmark(tiny_plan(), spec, force_cpu=True)
    parts = built[0]
    assert type(parts.optimizer).__name__ == opt_class
    assert parts.optimizer.param_groups[0]["lr"] == pytest.approx(lr_after_4)
