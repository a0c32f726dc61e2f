"""The cascade's extra input: previous-stage segmentations on the preprocessed grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnpipe.data.sampling import PatchSampler, SamplerSettings, read_manifest
from nnpipe.datasets.layout import load_dataset
from nnpipe.errors import DataError
from nnpipe.preprocessing.pipeline import CaseMeta
from nnpipe.preprocessing.previous import (
    PREVIOUS_MANIFEST,
    one_hot_foreground,
    previous_to_grid,
    stage_previous,
)


def test_one_hot_holds_the_foreground_classes_only():
    seg = np.array([[[0, 1], [2, 3]]], dtype=np.uint8)
    hot = one_hot_foreground(seg, 4)
    assert hot.shape == (3, 1, 2, 2) and hot.dtype == np.float32
    for k in (1, 2, 3):
        np.testing.assert_array_equal(hot[k - 1], (seg == k).astype(np.float32))
    assert hot[:, 0, 0, 0].sum() == 0  # background: every channel 0
    np.testing.assert_array_equal(hot.sum(0), (seg > 0).astype(np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        one_hot_foreground(seg, 1)


def test_previous_to_grid_crops_and_resamples_like_the_label():
    meta = CaseMeta(case_id="c", original_shape=(8, 8, 8), affine=tuple(map(tuple, np.eye(4))),
                    original_spacing=(1.0, 1.0, 1.0), bbox=((2, 6), (0, 8), (0, 8)),
                    cropped_shape=(4, 8, 8), target_spacing=(2.0, 2.0, 2.0),
                    resampled_shape=(2, 4, 4))
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2:4, 0:4, 0:4] = 2  # the first resampled voxel block of the crop
    grid = previous_to_grid(labels, meta)
    assert grid.shape == (2, 4, 4) and grid.dtype == np.uint8
    assert grid[0, :2, :2].tolist() == [[2, 2], [2, 2]] and grid[1].max() == 0
    with pytest.raises(DataError, match="does not match"):
        previous_to_grid(labels[:7], meta)


def _predictions_from_labels(tiny_study, root: Path) -> list[Path]:
    """Two 'fold' folders holding the reference label files as predictions."""
    ds = load_dataset(tiny_study.raw)
    folders = [root / "fold0", root / "fold1"]
    for f in folders:
        f.mkdir(parents=True)
    for i, case in enumerate(ds.training):
        shutil.copy(case.label, folders[i % 2] / f"{case.case_id}.nii.gz")
    return folders


def test_stage_previous_of_the_labels_is_the_preprocessed_label(tiny_study, tmp_path):
    """Previous-stage predictions equal to the references land exactly on the preprocessed
    label maps: the same crop and resampling as preprocessing."""
    pre = tiny_study.preprocessed[3]
    out = tmp_path / "prev"
    record = stage_previous(pre, _predictions_from_labels(tiny_study, tmp_path), out)
    assert record == out / PREVIOUS_MANIFEST
    cases = read_manifest(pre)["cases"]
    assert json.loads(record.read_text())["cases"] == sorted(cases)
    for case_id in cases:
        np.testing.assert_array_equal(np.load(out / f"{case_id}_prev.npy"),
                                      np.load(pre / f"{case_id}_seg.npy"))


def test_stage_previous_names_a_missing_or_doubled_case(tiny_study, tmp_path):
    pre = tiny_study.preprocessed[3]
    folders = _predictions_from_labels(tiny_study, tmp_path)
    doubled = next(folders[0].iterdir())
    shutil.copy(doubled, folders[1] / doubled.name)
    with pytest.raises(DataError, match="predicted twice"):
        stage_previous(pre, folders, tmp_path / "a")
    (folders[1] / doubled.name).unlink()
    doubled.unlink()
    with pytest.raises(DataError, match="no 3d_lowres prediction"):
        stage_previous(pre, folders, tmp_path / "b")
    assert not (tmp_path / "b" / PREVIOUS_MANIFEST).exists()


def test_sampler_appends_the_previous_segmentation_one_hot(tiny_study, tmp_path):
    """With previous == reference the extra channels are the one-hot label of each patch."""
    pre, plan = tiny_study.preprocessed[3], tiny_study.plans[3]
    out = tmp_path / "prev"
    stage_previous(pre, _predictions_from_labels(tiny_study, tmp_path), out)
    ids = list(read_manifest(pre)["cases"])
    settings = SamplerSettings(plan.patch_size, 0.5, previous_dir=str(out),
                               previous_classes=plan.num_classes)
    sampler = PatchSampler(pre, ids, settings)
    assert sampler.num_channels == plan.num_channels + plan.num_classes - 1
    image, seg = sampler.sample(np.random.default_rng(0), 4)
    plain = PatchSampler(pre, ids, SamplerSettings(plan.patch_size, 0.5))
    image0, seg0 = plain.sample(np.random.default_rng(0), 4)
    np.testing.assert_array_equal(image[:, :plan.num_channels], image0)  # same draws
    np.testing.assert_array_equal(seg, seg0)
    for b in range(4):
        np.testing.assert_array_equal(image[b, plan.num_channels:],
                                      one_hot_foreground(seg[b, 0], plan.num_classes))
    assert image[:, plan.num_channels:].sum() > 0  # foreground was sampled


def test_training_batches_corrupt_the_previous_channels(tiny_study, tmp_path):
    """previous_perturbation: the image and label channels are the plain ones, the previous
    stage's channels stay one-hot but differ from the label in some samples."""
    pre, plan = tiny_study.preprocessed[3], tiny_study.plans[3]
    out = tmp_path / "prev"
    stage_previous(pre, _predictions_from_labels(tiny_study, tmp_path), out)
    ids = list(read_manifest(pre)["cases"])
    settings = SamplerSettings(plan.patch_size, 1.0, previous_dir=str(out),
                               previous_classes=plan.num_classes, previous_perturbation=True)
    sampler = PatchSampler(pre, ids, settings)
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(12):
        image, seg = sampler.sample(rng, 1)
        hot = image[0, plan.num_channels:]
        assert hot.sum(0).max() <= 1 and set(np.unique(hot)) <= {0.0, 1.0}
        differ += not np.array_equal(hot, one_hot_foreground(seg[0, 0], plan.num_classes))
    assert differ >= 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"previous_dir": "x"}, "go together"),
    ({"previous_classes": 3}, "go together"),
    ({"previous_dir": "x", "previous_classes": 1}, "go together"),
])
def test_sampler_settings_need_folder_and_classes_together(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerSettings((8, 8, 8), **kwargs)
