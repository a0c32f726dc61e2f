"""Fingerprint of tiny MSD-layout datasets written with nibabel."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.datasets.layout import load_dataset
from nnpipe.errors import DataError
from nnpipe.planning.fingerprint import (
    Fingerprint,
    compute_fingerprint,
    crop_to_nonzero,
    labelled_outside_nonzero,
)


def write_msd(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
              modality: dict[str, str], labels: dict[str, str]) -> Path:
    """cases: id -> (image (X, Y, Z[, C]), label (X, Y, Z), affine)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for cid, (image, label, affine) in cases.items():
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / f"imagesTr/{cid}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / f"labelsTr/{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {"name": "tiny", "modality": modality, "labels": labels, "training": training,
            "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _case(shape, spacing, seed, fg_value=1):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, dtype=np.float32)
    image[2:-2, 1:-1, 1:-1] = rng.normal(100.0, 10.0, size=image[2:-2, 1:-1, 1:-1].shape)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:8, 3:6, 2:4] = fg_value
    return image, label, np.diag([*spacing, 1.0])


@pytest.fixture
def dataset(tmp_path):
    cases = {"c0": _case((12, 10, 6), (1.0, 1.0, 3.0), 0),
             "c1": _case((14, 10, 8), (0.8, 0.8, 2.5), 1)}
    return load_dataset(write_msd(tmp_path / "ds", cases, {"0": "MRI"},
                                  {"0": "background", "1": "fg"}))


def test_crop_to_nonzero():
    image = np.zeros((2, 6, 5, 4), dtype=np.float32)
    image[0, 1, 2, 3] = 1.0
    image[1, 4, 1, 1] = -2.0
    label = np.zeros((6, 5, 4), dtype=np.int64)
    label[2, 2, 2] = 7
    bbox, cropped, cropped_label = crop_to_nonzero(image, label)
    assert bbox == ((1, 5), (1, 3), (1, 4))
    assert cropped.shape == (2, 4, 2, 3)
    assert cropped_label is not None and cropped_label[1, 1, 1] == 7


def test_crop_box_holds_every_labelled_voxel():
    image = np.zeros((1, 8, 6, 5), dtype=np.float32)
    image[0, 1:4, 1:4, 1:4] = 5.0
    label = np.zeros((8, 6, 5), dtype=np.int64)
    label[2:4, 2:4, 2:4] = 1  # inside
    label[3:7, 2, 2] = 2  # reaches 3 voxels beyond the image's nonzero box along x
    label[1, 1, 4] = 1  # beyond it along z
    bbox, cropped, cropped_label = crop_to_nonzero(image, label)
    assert bbox == ((1, 7), (1, 4), (1, 5))
    assert cropped_label is not None and (cropped_label > 0).sum() == (label > 0).sum()
    assert crop_to_nonzero(image)[0] == ((1, 4), (1, 4), (1, 4))  # no label: image only
    # labelled where the image is 0: x = 4, 5, 6 on the bar and the z = 4 voxel; all beyond
    assert labelled_outside_nonzero(image, label) == (4, 4)
    image[0, 5, 1, 1] = 1.0  # the nonzero box now reaches x = 5: only x = 6 and z = 4 beyond
    assert labelled_outside_nonzero(image, label) == (4, 2)


def test_cases_beyond_nonzero_and_without_statistics_are_named(tmp_path, capsys):
    image, label, affine = _case((10, 8, 6), (1.0, 1.0, 1.0), 0)
    label_cut = label.copy()  # the image is 0 from x = 8 on
    label_cut[7:10, 3, 3] = 1  # two labelled voxels where the image is 0 (x = 8, 9)
    cases = {"a": (image, label, affine), "cut": (image, label_cut, affine),
             "zero": (np.zeros_like(image), label, affine),
             "empty": (image, np.zeros_like(label), affine)}
    root = write_msd(tmp_path / "ds", cases, {"0": "MRI"}, {"0": "background", "1": "fg"})
    fp = compute_fingerprint(load_dataset(root), progress=False)
    err = capsys.readouterr().err
    assert fp.labelled_outside_crop == {"cut": 2}
    assert fp.cropped_shapes[fp.case_ids.index("cut")][0] == 8  # x 2..9 kept
    assert ("crop: 1 of 4 case(s) have labelled voxels where the image is 0 (outside its "
            "nonzero region): cut (2 voxel(s), 2 outside the nonzero box); 2 labelled "
            "voxel(s) lie beyond the image's nonzero box: cases are not cropped to it") in err
    assert not fp.crop_to_nonzero
    assert ("statistics: 2 of 4 case(s) left out of the intensity statistics of the channels "
            "named: zero: channel 0 ('MRI') is 0 everywhere | empty: empty label (no "
            "foreground)") in err
    # the all-zero image does not pull the statistics towards 0
    del cases["zero"]
    without = compute_fingerprint(load_dataset(write_msd(
        tmp_path / "without", cases, {"0": "MRI"}, {"0": "background", "1": "fg"})),
        progress=False)
    assert fp.intensity == without.intensity


def test_crop_of_empty_image_keeps_everything():
    bbox, cropped, label = crop_to_nonzero(np.zeros((1, 3, 4, 5)))
    assert bbox == ((0, 3), (0, 4), (0, 5))
    assert cropped.shape == (1, 3, 4, 5) and label is None


def test_fingerprint_values(dataset):
    fp = compute_fingerprint(dataset, progress=False)
    assert fp.case_ids == ("c0", "c1")
    assert np.allclose(fp.spacings, [(1.0, 1.0, 3.0), (0.8, 0.8, 2.5)])
    assert fp.shapes == ((12, 10, 6), (14, 10, 8))
    assert fp.cropped_shapes == ((8, 8, 4), (10, 8, 6))
    assert fp.num_channels == 1 and fp.is_ct == (False,)
    assert fp.labels == {0: "background", 1: "fg"}
    fg = np.concatenate([_case((12, 10, 6), (1, 1, 3), 0)[0][4:8, 3:6, 2:4].ravel(),
                         _case((14, 10, 8), (1, 1, 3), 1)[0][4:8, 3:6, 2:4].ravel()])
    stats = fp.intensity[0]
    assert stats.n_voxels == fg.size == 48
    assert stats.mean == pytest.approx(fg.mean(), rel=1e-6)
    assert stats.std == pytest.approx(fg.std(), rel=1e-5)
    assert (stats.min, stats.max) == pytest.approx((fg.min(), fg.max()))
    # fewer foreground voxels than the sample size: percentiles are exact
    assert stats.p00_5 == pytest.approx(np.percentile(fg, 0.5), rel=1e-5)
    assert stats.p99_5 == pytest.approx(np.percentile(fg, 99.5), rel=1e-5)


def test_subsampled_percentiles_are_bounded_and_deterministic(dataset):
    a = compute_fingerprint(dataset, progress=False, max_samples_per_case=5)
    b = compute_fingerprint(dataset, progress=False, max_samples_per_case=5)
    assert a == b
    s = a.intensity[0]
    assert s.min <= s.p00_5 <= s.p99_5 <= s.max
    assert s.n_voxels == 48  # mean/std still use every voxel


def test_parallel_equals_serial(dataset):
    assert compute_fingerprint(dataset, workers=2, progress=False) == \
        compute_fingerprint(dataset, progress=False)


def test_json_round_trip(dataset):
    fp = compute_fingerprint(dataset, progress=False)
    assert Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp


def test_progress_lines(dataset, capsys):
    compute_fingerprint(dataset)
    err = capsys.readouterr().err
    assert "fingerprint 1/2 c0" in err and "fingerprint 2/2 c1" in err


def test_multichannel_ct(tmp_path):
    image, label, affine = _case((8, 8, 6), (1.0, 1.0, 1.0), 3)
    four_d = np.stack([image, -image], axis=-1)
    root = write_msd(tmp_path / "ds", {"x": (four_d, label, affine)}, {"0": "CT", "1": "MRI"},
                     {"0": "background", "1": "fg"})
    fp = compute_fingerprint(load_dataset(root), progress=False)
    assert fp.is_ct == (True, False)
    assert fp.intensity[1].mean == pytest.approx(-fp.intensity[0].mean)


def test_channel_names_recorded_and_near_misses_warned(tmp_path, capsys):
    image, label, affine = _case((8, 8, 6), (1.0, 1.0, 1.0), 3)
    three = np.stack([image, image, image], axis=-1)
    root = write_msd(tmp_path / "ds", {"x": (three, label, affine)},
                     {"0": "T2", "1": "no_norm", "2": "rescale_to_0_1"},
                     {"0": "background", "1": "fg"})
    fp = compute_fingerprint(load_dataset(root), progress=False)
    assert fp.channel_names == ("T2", "no_norm", "rescale_to_0_1")
    assert Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp
    err = capsys.readouterr().err
    assert ("normalization by channel name: channel 0 'T2': z-score; channel 1 "
            "'no_norm': z-score; channel 2 'rescale_to_0_1': rescale_0_1") in err
    assert "channel 1 is named 'no_norm'" in err and "looks like 'noNorm'" in err


def test_unknown_label_value_names_case(tmp_path):
    cases = {"good": _case((8, 8, 6), (1, 1, 1), 0), "bad": _case((8, 8, 6), (1, 1, 1), 1, 3)}
    root = write_msd(tmp_path / "ds", cases, {"0": "MRI"}, {"0": "background", "1": "fg"})
    with pytest.raises(DataError, match="'bad'.*label values \\[3\\]"):
        compute_fingerprint(load_dataset(root), progress=False)


def test_no_foreground_anywhere(tmp_path):
    image, label, affine = _case((8, 8, 6), (1, 1, 1), 0)
    root = write_msd(tmp_path / "ds", {"e": (image, label * 0, affine)}, {"0": "MRI"},
                     {"0": "background", "1": "fg"})
    with pytest.raises(DataError, match="no training case has any foreground"):
        compute_fingerprint(load_dataset(root), progress=False)
