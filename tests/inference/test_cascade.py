"""Prediction chains a cascade model's stages: low resolution first, its segmentation then
one-hot input channels of the full-resolution stage."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nnpipe.config import InferenceSettings
from nnpipe.inference.archive import export_model
from nnpipe.inference.predict import predict_folder
from nnpipe.inference.resolve import resolve_model

from .conftest import labels_of, save_model, two_images

SETTINGS = InferenceSettings(overlap=0.5, blend="gaussian", tta=False, batch_size=2)


@pytest.fixture(scope="module")
def cascade_study(tiny_study, tmp_path_factory) -> Path:
    """``train/3d_lowres-fp32-1gpu/fold{0,1}`` and ``train/3d_cascade-fp32-1gpu/fold{0,1}``:
    untrained networks of the cascade's two plans (the tiny 3D plan's geometry)."""
    root = tmp_path_factory.mktemp("cascade")
    plan = tiny_study.plans[3]
    low = replace(plan, configuration="3d_lowres")
    casc = replace(plan, configuration="3d_cascade", previous_stage="3d_lowres")
    for fold in (0, 1):
        save_model(root / "train" / "3d_lowres-fp32-1gpu" / f"fold{fold}", low, fold)
        save_model(root / "train" / "3d_cascade-fp32-1gpu" / f"fold{fold}", casc, 10 + fold)
    return root




def test_a_cascade_run_knows_its_low_resolution_stage(cascade_study):
    spec = resolve_model([cascade_study / "train" / "3d_cascade-fp32-1gpu"])
    (member,) = spec.members
    assert member.plan.input_channels == member.plan.num_channels + member.plan.num_classes - 1
    assert member.previous is not None
    assert member.previous.name == "3d_lowres-fp32-1gpu"
    assert [f.fold for f in member.previous.folds] == [0, 1]
    # one fold checkpoint: the same fold of the low-resolution run
    one = resolve_model([cascade_study / "train" / "3d_cascade-fp32-1gpu" / "fold1" / "final.pt"])
    assert one.members[0].previous is not None
    assert [f.fold for f in one.members[0].previous.folds] == [1]


def test_predict_runs_the_low_resolution_stage_first(tiny_study, cascade_study, tmp_path):
    """The chain equals the cascade stage fed with the low-resolution stage's own
    predictions (``--previous``), and a model.zip of the run predicts the same."""
    inputs = two_images(tiny_study, tmp_path / "in")
    run = cascade_study / "train" / "3d_cascade-fp32-1gpu"
    low = cascade_study / "train" / "3d_lowres-fp32-1gpu"
    predict_folder([run], inputs, tmp_path / "chain", SETTINGS, device="cpu")
    predict_folder([low], inputs, tmp_path / "low", SETTINGS, device="cpu")
    predict_folder([run], inputs, tmp_path / "given", SETTINGS, device="cpu",
                   previous=tmp_path / "low")
    chain, given = labels_of(tmp_path / "chain"), labels_of(tmp_path / "given")
    assert list(chain) == list(given) and len(chain) == 2
    for name in chain:
        np.testing.assert_array_equal(chain[name], given[name])
    export_model(resolve_model([run]), tmp_path / "model.zip")
    predict_folder([tmp_path / "model.zip"], inputs, tmp_path / "zip", SETTINGS, device="cpu")
    for name, labels in labels_of(tmp_path / "zip").items():
        np.testing.assert_array_equal(labels, chain[name])


def test_a_cascade_model_without_its_stage_is_refused(tiny_study, cascade_study, tmp_path):
    lone = tmp_path / "train" / "3d_cascade-fp32-1gpu"
    shutil.copytree(cascade_study / "train" / "3d_cascade-fp32-1gpu", lone)
    with pytest.raises(ValueError, match="3d_lowres stage was not found"):
        predict_folder([lone], two_images(tiny_study, tmp_path / "in"), tmp_path / "out",
                       SETTINGS, device="cpu")
