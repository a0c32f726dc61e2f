"""Preprocessing round trips and dataset output on tiny volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.datasets.layout import load_dataset
from nnpipe.errors import DataError
from nnpipe.planning.fingerprint import crop_to_nonzero
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.preprocessing.normalize import nonzero_mask, normalize
from nnpipe.preprocessing.pipeline import (
    CaseMeta,
    case_target_spacing,
    paste_probabilities,
    preprocess_case,
    preprocess_dataset,
    preprocess_image,
    restore_labels,
    restore_logits,
    restore_probabilities,
)
from nnpipe.preprocessing.resample import resample_image, separate_axis, target_shape

SPACING = (0.9, 1.1, 3.5)  # anisotropic: z resampled separately


def _affine(spacing=SPACING) -> np.ndarray:
    """A rotated, shifted grid: spacing is still the column norms."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = (-20.0, 5.0, 12.5)
    return affine


ZSCORE = (ChannelNorm("zscore_nonzero"),)


def _plan(norms=ZSCORE, spacing=(1.5, 1.5, 2.5), dim=3, slice_axis=None, labels=None) -> Plan:
    labels = labels or {0: "background", 1: "blob"}
    net = spacing if dim == 3 else tuple(spacing[a] for a in range(3) if a != slice_axis)
    return Plan(dataset="tiny", dim=dim, spacing=net, full_spacing=spacing,
                patch_size=(16,) * dim, kernels=((3,) * dim,) * 2,
                strides=((1,) * dim, (2,) * dim), filters=(8, 16), batch_size=2,
                num_channels=len(norms), num_classes=len(labels), labels=labels,
                channel_norms=tuple(norms), slice_axis=slice_axis)


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image (1, 40, 36, 12) zero outside [4:36, 3:32, 1:11], an ellipsoid blob label inside."""
    shape = (40, 36, 12)
    rng = np.random.default_rng(seed)
    image = np.zeros((1, *shape), dtype=np.float32)
    image[0, 4:36, 3:32, 1:11] = rng.normal(100.0, 20.0, size=(32, 29, 10))
    image[0, 4:10, 3:8, 1:3] = 0.0  # a zero corner inside the box: outside the nonzero mask
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mm = ((x - 20) * SPACING[0]) ** 2 + ((y - 18) * SPACING[1]) ** 2 + ((z - 6) * SPACING[2]) ** 2
    label = (mm < 10.0**2).astype(np.uint8)
    image[0][label == 1] += 50.0
    return image, label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_round_trip_labels_and_probabilities():
    image, label = _case()
    plan = _plan()
    data, seg, meta = preprocess_case(image, label, _affine(), plan, "case7")
    bbox, cropped, _ = crop_to_nonzero(image)
    assert meta.bbox == bbox == ((4, 36), (3, 32), (1, 11))
    assert meta.original_spacing == pytest.approx(SPACING)
    expected = target_shape(cropped.shape[1:], SPACING, plan.full_spacing)
    assert data.shape == (1, *expected) and seg.shape == expected == meta.resampled_shape
    assert data.dtype == np.float32 and seg.dtype == np.uint8

    restored = restore_labels(seg, meta)
    assert restored.shape == label.shape and restored.dtype == np.uint8
    assert _dice(restored == 1, label == 1) > 0.9

    onehot = np.stack([seg == 0, seg == 1]).astype(np.float32)
    probs = restore_probabilities(onehot, meta)
    assert probs.shape == (2, *label.shape)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert _dice(probs.argmax(axis=0) == 1, label == 1) > 0.9
    outside = np.ones(label.shape, dtype=bool)
    outside[4:36, 3:32, 1:11] = False
    assert np.all(probs[0][outside] == 1.0) and np.all(probs[1][outside] == 0.0)
    assert np.all(restored[outside] == 0)


def test_logits_restore_to_the_crop_box_and_probabilities_paste_by_kind():
    """Logits go back to the crop box (linear: a constant stays that constant); pasted
    probabilities are background 1 outside the box for classes, 0 for every region (v2's
    ``revert_cropping_on_probabilities``)."""
    image, label = _case()
    _, _, meta = preprocess_case(image, label, _affine(), _plan(), "case7")
    logits = np.full((2, *meta.resampled_shape), -3.5, dtype=np.float32)
    logits[1] = 2.25
    cropped = restore_logits(logits, meta)
    assert cropped.shape == (2, *meta.cropped_shape) and cropped.dtype == np.float32
    np.testing.assert_allclose(cropped[0], -3.5, atol=1e-5)
    np.testing.assert_allclose(cropped[1], 2.25, atol=1e-5)
    outside = np.ones(label.shape, dtype=bool)
    outside[4:36, 3:32, 1:11] = False
    inside = np.full((2, *meta.cropped_shape), 0.25, dtype=np.float32)
    classes = paste_probabilities(inside, meta.bbox, meta.original_shape)
    regions = paste_probabilities(inside, meta.bbox, meta.original_shape, regions=True)
    assert np.all(classes[0][outside] == 1.0) and np.all(classes[1][outside] == 0.0)
    assert np.all(regions[:, outside] == 0.0)
    assert np.all(classes[:, ~outside] == 0.25) and np.all(regions[:, ~outside] == 0.25)
    with pytest.raises(ValueError, match="case7.*do not match the preprocessed shape"):
        restore_logits(logits[:, :-1], meta)
    with pytest.raises(ValueError, match="do not fit the crop box"):
        paste_probabilities(inside[:, 1:], meta.bbox, meta.original_shape)


def test_zscore_values_inside_and_outside_mask():
    """Normalized on the cropped grid (no resampling here): mean 0 / std 1 inside the filled
    nonzero mask, 0 outside. (Rule changed to nnU-Net v2's: normalization before resampling,
    so the mask is the image's own, not a nearest-resampled one.)"""
    image, label = _case(seed=1)
    image[0, 20, 18, 6] = 0.0  # a zero inside the body: a hole, filled, so tissue
    data, _, meta = preprocess_case(image, label, _affine(), _plan(spacing=SPACING), "c")
    _, cropped, _ = crop_to_nonzero(image)
    assert meta.resampled_shape == cropped.shape[1:]
    mask = nonzero_mask(cropped)
    assert not mask.all()  # the zero corner is outside
    assert mask[20 - 4, 18 - 3, 6 - 1]  # the hole is inside
    inside = cropped[0][mask].astype(np.float64)
    assert data[0][mask].mean() == pytest.approx(0.0, abs=1e-4)
    assert data[0][mask].std() == pytest.approx(1.0, abs=1e-4)
    assert data[0][20 - 4, 18 - 3, 6 - 1] == pytest.approx(-inside.mean() / inside.std(),
                                                           rel=1e-5)
    assert np.all(data[0][~mask] == 0.0)


def test_normalize_then_resample_clipped():
    """nnU-Net v2's order: normalize on the cropped grid, then cubic resampling clipped to
    the normalized channel's range (per slice here: z is the separate axis)."""
    image, label = _case(seed=4)
    plan = _plan()
    data, meta = preprocess_image(image, _affine(), plan, "order")
    _, cropped, _ = crop_to_nonzero(image)
    normalized = normalize(cropped, plan.channel_norms)
    axis = separate_axis(SPACING, plan.full_spacing)
    assert axis == 2
    expected = resample_image(normalized, meta.resampled_shape, axis)
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-6)
    per_slice = [(normalized[0, ..., k].min(), normalized[0, ..., k].max())
                 for k in range(normalized.shape[3])]
    assert data.min() >= min(lo for lo, _ in per_slice)
    assert data.max() <= max(hi for _, hi in per_slice)


def test_ct_clipping_without_resampling():
    image, label = _case(seed=2)
    norm = ChannelNorm("ct", clip_low=60.0, clip_high=140.0, mean=100.0, std=20.0)
    plan = _plan(norms=(norm,), spacing=SPACING)  # same spacing: no resampling
    data, meta = preprocess_image(image, _affine(), plan, "ct")
    _, cropped, _ = crop_to_nonzero(image)
    assert meta.resampled_shape == cropped.shape[1:]
    assert np.allclose(data, (np.clip(cropped, 60.0, 140.0) - 100.0) / 20.0, atol=1e-5)
    assert data.min() == pytest.approx(-2.0) and data.max() == pytest.approx(2.0)
    assert meta.class_locations == {}


def test_2d_plan_keeps_slice_axis_spacing():
    image, label = _case(seed=3)
    plan = _plan(spacing=(1.5, 1.5, 2.0), dim=2, slice_axis=2)
    assert case_target_spacing(plan, SPACING) == (1.5, 1.5, 3.5)
    data, seg, meta = preprocess_case(image, label, _affine(), plan, "two")
    assert meta.target_spacing == pytest.approx((1.5, 1.5, 3.5))
    assert meta.resampled_shape[2] == meta.cropped_shape[2] == 10


def test_class_locations_are_seeded_and_correct():
    image, label = _case(seed=4)
    label[30:33, 25:28, 8:10] = 2
    plan = _plan(labels={0: "background", 1: "blob", 2: "spot", 3: "absent"})
    _, seg, meta = preprocess_case(image, label, _affine(), plan, "loc")
    assert set(meta.class_locations) == {1, 2, 3}
    assert meta.class_locations[3] == ()
    ones = meta.class_locations[1]
    assert len(ones) == min(1000, int((seg == 1).sum()))
    assert all(seg[x, y, z] == 1 for x, y, z in ones)
    assert all(seg[x, y, z] == 2 for x, y, z in meta.class_locations[2])
    again = preprocess_case(image, label, _affine(), plan, "loc")[2]
    assert again.class_locations == meta.class_locations


def test_meta_json_round_trip():
    image, label = _case(seed=5)
    _, _, meta = preprocess_case(image, label, _affine(), _plan(), "rt")
    assert CaseMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert np.allclose(meta.affine_array, _affine())


def test_direct_calls_reject_bad_shapes():
    image, label = _case(seed=6)
    with pytest.raises(DataError, match="'odd'.*label shape"):
        preprocess_case(image, label[:-1], _affine(), _plan(), "odd")
    with pytest.raises(DataError, match="'two'.*2 channel"):
        preprocess_image(np.concatenate([image, image]), _affine(), _plan(), "two")
    with pytest.raises(ValueError, match="do not match"):
        restore_labels(np.zeros((3, 3, 3), np.uint8),
                       preprocess_image(image, _affine(), _plan(), "x")[1])


# --- whole datasets on disk ---------------------------------------------------------------

def _write_msd(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]],
               affine: np.ndarray | None = None) -> Path:
    affine = _affine() if affine is None else affine
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for cid, (image, label) in cases.items():
        nib.save(nib.Nifti1Image(image[0], affine), root / f"imagesTr/{cid}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"labelsTr/{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "blob"},
        "training": training, "test": []}))
    return root


def test_preprocess_dataset_writes_arrays_then_manifest(tmp_path, capsys):
    ds = load_dataset(_write_msd(tmp_path / "raw", {"a": _case(0), "b": _case(1)}))
    plan = _plan()
    out = tmp_path / "pre"
    manifest = preprocess_dataset(ds, plan, out)
    assert manifest == out / "manifest.json"
    content = json.loads(manifest.read_text())
    assert Plan.from_dict(content["plan"]) == plan
    assert sorted(content["cases"]) == ["a", "b"]
    for cid in ("a", "b"):
        meta = CaseMeta.from_dict(content["cases"][cid])
        data = np.load(out / f"{cid}.npy", mmap_mode="r")
        seg = np.load(out / f"{cid}_seg.npy", mmap_mode="r")
        assert data.dtype == np.float32 and seg.dtype == np.uint8
        assert data.shape == (1, *meta.resampled_shape) and seg.shape == meta.resampled_shape
    assert "preprocess 2/2 b" in capsys.readouterr().err
    # parallel gives the same files and manifest
    out2 = tmp_path / "pre2"
    preprocess_dataset(ds, plan, out2, workers=2, progress=False)
    assert json.loads((out2 / "manifest.json").read_text()) == content
    assert np.array_equal(np.load(out2 / "a.npy"), np.load(out / "a.npy"))


def _bad_label_value(case):
    image, label = case
    label = label.copy()
    label[label == 1] = 3
    return image, label


def _bad_shape(case):
    image, label = case
    return image, label[:, :, :-1].copy()


@pytest.mark.parametrize(
    ("breaker", "message"),
    [(_bad_label_value, "label values \\[3\\] are not listed"),
     (_bad_shape, r"label grid differs from the image.s: shape")],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_case_raises_and_leaves_no_manifest(tmp_path, breaker, message, workers):
    cases = {"ok": _case(0), "broken": breaker(_case(1))}
    ds = load_dataset(_write_msd(tmp_path / "raw", cases))
    out = tmp_path / "pre"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # stale, from an earlier run
    with pytest.raises(DataError, match=f"'broken'.*{message}"):
        preprocess_dataset(ds, _plan(), out, workers=workers, progress=False)
    assert not (out / "manifest.json").exists()


def test_plan_must_fit_dataset(tmp_path):
    ds = load_dataset(_write_msd(tmp_path / "raw", {"a": _case(0)}))
    with pytest.raises(ValueError, match="does not fit dataset"):
        preprocess_dataset(ds, _plan(labels={0: "bg", 1: "x", 2: "y"}), tmp_path / "pre")


def test_crop_keeps_labelled_voxels_beyond_the_nonzero_box():
    """A structure reaching where the image is 0 (past a mask) stays whole: the crop box
    grows to the label's extent and the round trip gives back every labelled voxel."""
    image, label = _case()
    label[36:39, 16:20, 5:7] = 1  # past the image's nonzero box (x < 36)
    plan = _plan(spacing=SPACING)  # no resampling: the round trip is exact
    _, seg, meta = preprocess_case(image, label, _affine(), plan, "beyond")
    assert meta.bbox == ((4, 39), (3, 32), (1, 11))
    assert int(seg.sum()) == int(label.sum())
    np.testing.assert_array_equal(restore_labels(seg, meta), label)


def test_plan_without_crop_keeps_the_whole_grid():
    from dataclasses import replace

    image, label = _case()
    plan = replace(_plan(spacing=SPACING), crop_to_nonzero=False)
    data, seg, meta = preprocess_case(image, label, _affine(), plan, "whole")
    assert meta.bbox == ((0, 40), (0, 36), (0, 12)) and meta.cropped_shape == (40, 36, 12)
    assert data.shape == (1, 40, 36, 12)
    np.testing.assert_array_equal(restore_labels(seg, meta), label)
