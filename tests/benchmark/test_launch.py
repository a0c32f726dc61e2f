"""``--gpus N``: N ranks started with torchrun (gloo on CPUs), weak scaling; ``--bind``."""

from __future__ import annotations

import json

import pytest

import nnpipe.benchmark.launch as L
from nnpipe.benchmark.throughput import BenchmarkSpec
from nnpipe.cli import main
from nnpipe.planning.task01 import task01_plan


@pytest.mark.slow  # starts processes (torchrun, signals): make test, not make check
def test_two_cpu_ranks_report_throughput_and_weak_scaling(tmp_path, monkeypatch, capsys):
    """The seed's form with --gpus 2 on CPUs: a 1-rank baseline and 2 gloo ranks of the
    Task01 network at a 16³ patch; the record is rank 0's with the scaling added."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "rec.json"
    argv = ("benchmark --mode train --gpus 2 --dim 3 --batch_size 1 --cpu --patch-size 16 16 "
            f"16 --warmup 1 --steps 2 --max-warmup-s 0 --max-timing-s 0 --out {out}")
    assert main(argv.split()) == 0
    record = json.loads(out.read_text())
    assert record["gpus"] == 2 and record["batch_size"] == 1
    assert record["patch_size"] == [16, 16, 16]
    assert record["timed_steps"] == 2  # the ranks agreed on the count
    assert record["weak_scaling"] == pytest.approx(
        record["throughput"] / record["one_rank"]["throughput"])
    assert record["weak_scaling"] > 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("train 3D bs 1 fp32 1 rank(s): ")
    assert printed[-1].startswith("train 3D bs 1 fp32 2 rank(s): ")
    assert "weak scaling" in printed[-1]


def test_amp_on_cpu_ranks_is_refused_before_any_rank_starts(monkeypatch):
    started = []
    monkeypatch.setattr(L, "run_ranks", lambda *a: started.append(a))
    job = L.RankJob(BenchmarkSpec("train", 2, "amp", 1, 2), task01_plan(3), force_cpu=True)
    with pytest.raises(ValueError, match="amp"):
        L.measure_ranks(job, 2)
    assert started == []


def test_rank_job_round_trips_through_json():
    job = L.RankJob(BenchmarkSpec("predict", 4, "bf16", 1, 2, patch_size=(16, 16, 16)),
                    task01_plan(2), "pre", 3, True)
    assert L.RankJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
