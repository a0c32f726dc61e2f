"""Training a cascade stage: its plan, the previous-stage folder, the wider first layer."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from nnpipe.config import study_config
from nnpipe.datasets.layout import load_dataset
from nnpipe.training.checkpoint import load_checkpoint
from nnpipe.training.trainer import TrainRun, run_plan, sampler_settings, train


def _previous_from_labels(tiny_study, root: Path) -> Path:
    from nnpipe.preprocessing.previous import stage_previous

    folder = root / "pred"
    folder.mkdir(parents=True)
    for case in load_dataset(tiny_study.raw).training:
        shutil.copy(case.label, folder / f"{case.case_id}.nii.gz")
    out = root / "previous"
    stage_previous(tiny_study.preprocessed[3], [folder], out)
    return out


@pytest.fixture
def cascade_plan(tiny_study, tmp_path) -> Path:
    path = tmp_path / "3d_cascade.json"
    replace(tiny_study.plans[3], configuration="3d_cascade", previous_stage="3d_lowres",
            notes=("cascade",)).save(path)
    return path


SETTINGS = study_config({"training": {"epochs": 1, "steps_per_epoch": 2,
                                      "val_patches": 2}}).training


def test_cascade_stage_trains_with_previous_channels(tiny_study, tmp_path, cascade_plan):
    run = TrainRun(tiny_study.preprocessed[3], tiny_study.splits, 0, "fp32", tmp_path / "run",
                   SETTINGS, force_cpu=True, plan_path=cascade_plan,
                   previous_dir=_previous_from_labels(tiny_study, tmp_path))
    summary = train(run, threads=1)
    assert summary["epochs"] == 1
    ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    assert ckpt["plan"]["previous_stage"] == "3d_lowres"
    plan = tiny_study.plans[3]
    first = next(v for k, v in ckpt["model"].items() if v.ndim == 5)  # the first conv
    assert first.shape[1] == plan.num_channels + plan.num_classes - 1


def test_cascade_plan_needs_its_previous_folder_and_fitting_data(tiny_study, tmp_path,
                                                                  cascade_plan):
    run = TrainRun(tiny_study.preprocessed[3], tiny_study.splits, 0, "fp32", tmp_path,
                   SETTINGS, plan_path=cascade_plan)
    with pytest.raises(ValueError, match="--previous"):
        run_plan(run)
    other = tmp_path / "other.json"
    replace(tiny_study.plans[3], batch_size=7, previous_stage="3d_lowres").save(other)
    with pytest.raises(ValueError, match="does not fit the preprocessed data"):
        run_plan(replace(run, plan_path=other, previous_dir=tmp_path))
    dali = replace(run, previous_dir=tmp_path, settings=replace(SETTINGS, loader="dali"))
    with pytest.raises(ValueError, match="cannot feed a cascade stage"):
        run_plan(dali)


def test_only_training_batches_corrupt_the_previous_channels(tiny_study, tmp_path):
    """The training loader's sampler corrupts the previous stage's channels
    (nnpipe.data.previous); the fixed validation patches and non-cascade stages do not."""
    cascade = replace(tiny_study.plans[3], configuration="3d_cascade",
                      previous_stage="3d_lowres")
    run = TrainRun(tiny_study.preprocessed[3], tiny_study.splits, 0, "fp32", tmp_path,
                   SETTINGS, previous_dir=tmp_path / "previous")
    assert sampler_settings(run, cascade, 0.4).previous_perturbation
    assert not sampler_settings(run, cascade, 0.5, training=False).previous_perturbation
    assert not sampler_settings(run, tiny_study.plans[3], 0.4).previous_perturbation
