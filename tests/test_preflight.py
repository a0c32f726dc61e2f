"""Preflight (nnpipe.preflight): what the machine cannot run is refused before any job."""

from __future__ import annotations

import pytest

from nnpipe.config import study_config
from nnpipe.preflight import Machine, largest_step_gb, machine_problems, workflow_study

CPU = Machine(gpus=0, gpu_memory_gb=0.0, ram_gb=16.0, dali=False)
GPU = Machine(gpus=1, gpu_memory_gb=80.0, ram_gb=256.0, dali=True)
SMALL = {"planning": {"max_patch_voxels_3d": 32768, "max_patch_voxels_2d": 4096,
                      "batch_voxels_3d": 65536, "batch_voxels_2d": 32768, "base_filters": 8}}


def study(**sections):
    return study_config({**SMALL, **sections})


def test_a_small_cpu_study_passes():
    assert machine_problems(study(), CPU) == []


@pytest.mark.parametrize(("sections", "words"), [
    ({"grid": {"precisions": ["amp"]}}, "grid.precisions has amp, which needs a CUDA GPU"),
    ({"benchmark": {"precisions": ["tf32"]}}, "benchmark.precisions has tf32"),
    ({"grid": {"gpus": [2]}}, "grid.gpus asks for 2 processes"),
    ({"training": {"loader": "dali"}}, "training.loader is dali, which needs a CUDA GPU"),
])
def test_what_a_cpu_cannot_run_is_named(sections, words):
    problems = machine_problems(study(**sections), CPU)
    assert len(problems) == 1 and words in problems[0], problems


def test_benchmark_precisions_do_not_matter_when_benchmarks_are_off():
    s = study(benchmark={"precisions": ["amp"], "enabled": False, "gpus": [4]})
    assert machine_problems(s, CPU) == []


def test_a_gpu_runs_amp_and_dali_needs_its_package():
    assert machine_problems(study(grid={"precisions": ["amp"]}), GPU) == []
    no_dali = Machine(gpus=1, gpu_memory_gb=80.0, ram_gb=256.0, dali=False)
    assert "nvidia-dali is not installed" in machine_problems(
        study(training={"loader": "dali"}), no_dali)[0]


def test_a_batch_over_the_memory_is_refused_with_its_step():
    # the schema's defaults on a machine with 4 GB of RAM: 2D 221x221 patches at batch 64
    problems = machine_problems(study_config({}), Machine(0, 0.0, 4.0, False))
    assert any("2D training step" in p and "221x221 patch, batch 64" in p
               and "batch_voxels_2d" in p for p in problems), problems
    gb, step = largest_step_gb(study_config({}), 3, fp32=True)
    assert step == "128x128x128 patch, batch 2" and 4.0 < gb < 16.0
    # mixed precision keeps half the activations
    assert largest_step_gb(study_config({}), 3, fp32=False)[0] < gb


def test_a_resenc_target_over_the_gpu_memory_is_refused():
    small_gpu = Machine(gpus=1, gpu_memory_gb=12.0, ram_gb=64.0, dali=True)
    problems = machine_problems(study_config({"planning": {"network": "resenc_l"}}), small_gpu)
    assert problems and "resenc_l is planned for 24 GB" in problems[0]


def test_workflow_study_prints_one_paragraph_and_exits(capsys):
    with pytest.raises(SystemExit) as info:
        workflow_study({"trainng": {}}, check_machine=False)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean `training`" in err
    config = {"grid": {"precisions": ["amp"]}}
    if machine_problems(study_config(config)):  # this machine has no CUDA GPU
        with pytest.raises(SystemExit):
            workflow_study(config, check_machine=True)
        assert capsys.readouterr().err.startswith("nnpipe: this study cannot run")
    filled = dict(SMALL)
    assert workflow_study(filled, check_machine=False).training.epochs == 100
    assert filled["training"]["epochs"] == 100  # defaults filled into Snakemake's config
