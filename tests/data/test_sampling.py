from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.errors import DataError
from nnpipe.planning.plan import ChannelNorm, Plan

EXCLUDED_VALUE = 1000.0  # the image value of a case that is never passed to the sampler


def write_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray) -> dict:
    np.save(folder / f"{case_id}.npy", image.astype(np.float32))
    np.save(folder / f"{case_id}_seg.npy", seg.astype(np.uint8))
    locations = {str(label): np.argwhere(seg == label).tolist() for label in (1, 2)}
    return {"shape": list(seg.shape), "class_locations": locations}


def coded_image(shape: tuple[int, int, int], channels: int = 2) -> np.ndarray:
    """Image whose value encodes its voxel: 1 + x*10000 + y*100 + z (+ 0.5 in channel 1)."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    code = 1.0 + x * 10000 + y * 100 + z
    return np.stack([code + 0.5 * c for c in range(channels)])


def decode(value: float) -> tuple[int, int, int]:
    v = int(value) - 1
    return v // 10000, (v // 100) % 100, v % 100


@pytest.fixture
def preprocessed(tmp_path: Path) -> Path:
    """Cases a (10x12x8, labels 1, 2), b (6x5x4, label 1), c (no foreground), d (excluded)."""
    cases = {}
    seg_a = np.zeros((10, 12, 8), np.uint8)
    seg_a[2:4, 3:5, 1:3] = 1
    seg_a[7, 9, 6] = 2
    cases["a"] = write_case(tmp_path, "a", coded_image(seg_a.shape), seg_a)
    seg_b = np.zeros((6, 5, 4), np.uint8)
    seg_b[4, 1, 2] = 1
    cases["b"] = write_case(tmp_path, "b", coded_image(seg_b.shape), seg_b)
    seg_c = np.zeros((7, 7, 7), np.uint8)
    cases["c"] = write_case(tmp_path, "c", coded_image(seg_c.shape), seg_c)
    cases["c"]["class_locations"] = {"1": []}
    seg_d = np.ones((9, 9, 9), np.uint8)
    cases["d"] = write_case(tmp_path, "d", np.full((2, 9, 9, 9), EXCLUDED_VALUE), seg_d)
    (tmp_path / "manifest.json").write_text(json.dumps({"plan": {}, "cases": cases}))
    return tmp_path


def test_foreground_prob_one_centres_every_patch_on_foreground(preprocessed: Path) -> None:
    sampler = PatchSampler(preprocessed, ["a", "b"], SamplerSettings((4, 4, 4), 1.0))
    image, seg = sampler.sample(np.random.default_rng(0), 32)
    assert image.shape == (32, 2, 4, 4, 4) and image.dtype == np.float32
    assert seg.shape == (32, 1, 4, 4, 4) and seg.dtype == np.int64
    assert (seg.reshape(32, -1).max(axis=1) > 0).all()
    assert (seg[:, 0, 2, 2, 2] > 0).all()  # the chosen voxel sits at patch_size // 2
    assert set(np.unique(seg)) == {0, 1, 2}  # both classes of case a get drawn


def test_foreground_prob_zero_patch_is_a_crop_of_the_volume(preprocessed: Path) -> None:
    sampler = PatchSampler(preprocessed, ["a"], SamplerSettings((4, 5, 3), 0.0))
    image, seg = sampler.sample(np.random.default_rng(1), 8)
    volume = np.load(preprocessed / "a.npy")
    volume_seg = np.load(preprocessed / "a_seg.npy")
    starts = set()
    for b in range(8):
        x, y, z = decode(image[b, 0, 0, 0, 0])
        starts.add((x, y, z))
        np.testing.assert_array_equal(image[b], volume[:, x:x + 4, y:y + 5, z:z + 3])
        np.testing.assert_array_equal(seg[b, 0], volume_seg[x:x + 4, y:y + 5, z:z + 3])
    assert len(starts) > 1


def test_patch_larger_than_volume_is_zero_padded(preprocessed: Path) -> None:
    sampler = PatchSampler(preprocessed, ["b"], SamplerSettings((8, 8, 8), 0.0))
    image, seg = sampler.sample(np.random.default_rng(2), 6)
    assert image.shape == (6, 2, 8, 8, 8)
    # The whole 6x5x4 volume lies inside every patch; the rest is padding.
    assert ((image != 0).sum(axis=(1, 2, 3, 4)) == 2 * 6 * 5 * 4).all()
    assert (seg.sum(axis=(1, 2, 3, 4)) == 1).all()


def test_foreground_patch_at_the_volume_edge_is_padded(preprocessed: Path) -> None:
    # Case b's only foreground voxel (4, 1, 2): a 6^3 patch centred there starts at (1, -2, -1).
    sampler = PatchSampler(preprocessed, ["b"], SamplerSettings((6, 6, 6), 1.0))
    image, seg = sampler.sample(np.random.default_rng(3), 2)
    volume = np.load(preprocessed / "b.npy")
    expected = np.zeros((2, 6, 6, 6), np.float32)
    expected[:, 0:5, 2:6, 1:5] = volume[:, 1:6, 0:4, 0:4]
    np.testing.assert_array_equal(image[0], expected)
    assert seg[0, 0, 3, 3, 3] == 1 and seg.sum() == 2


@pytest.mark.parametrize(("slice_axis", "in_plane"), [(2, (0, 1)), (0, (1, 2)), (1, (0, 2))])
def test_2d_patches_are_slices(preprocessed: Path, slice_axis: int,
                               in_plane: tuple[int, int]) -> None:
    settings = SamplerSettings((4, 3), 0.0, dim=2, slice_axis=slice_axis)
    image, seg = PatchSampler(preprocessed, ["a"], settings).sample(np.random.default_rng(4), 5)
    assert image.shape == (5, 2, 4, 3) and seg.shape == (5, 1, 4, 3)
    volume = np.load(preprocessed / "a.npy")
    for b in range(5):
        start = decode(image[b, 0, 0, 0])
        box = [slice(s, s + 1) for s in start]
        box[in_plane[0]] = slice(start[in_plane[0]], start[in_plane[0]] + 4)
        box[in_plane[1]] = slice(start[in_plane[1]], start[in_plane[1]] + 3)
        np.testing.assert_array_equal(image[b], volume[(slice(None), *box)].reshape(2, 4, 3))


def test_2d_foreground_patch_is_the_slice_of_the_chosen_voxel(preprocessed: Path) -> None:
    settings = SamplerSettings((6, 4), 1.0, dim=2, slice_axis=2)
    image, seg = PatchSampler(preprocessed, ["a"], settings).sample(np.random.default_rng(5), 16)
    assert (seg[:, 0, 3, 2] > 0).all()
    # Label 2 lives only in slice z=6, label 1 only in z=1..2: the centre voxel's z says which.
    centre_z = np.array([decode(v)[2] for v in image[:, 0, 3, 2]])
    assert np.array_equal(seg[:, 0, 3, 2] == 2, centre_z == 6)


def test_case_without_foreground_gives_random_patches(preprocessed: Path) -> None:
    sampler = PatchSampler(preprocessed, ["c"], SamplerSettings((3, 3, 3), 1.0))
    image, seg = sampler.sample(np.random.default_rng(6), 4)
    assert seg.sum() == 0 and (image > 0).all()


def test_same_generator_state_same_batch(preprocessed: Path) -> None:
    sampler = PatchSampler(preprocessed, ["a", "b", "c"], SamplerSettings((4, 4, 4)))
    first = sampler.sample(np.random.default_rng(7), 6)
    again = sampler.sample(np.random.default_rng(7), 6)
    other = sampler.sample(np.random.default_rng(8), 6)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_only_the_given_cases_are_sampled(preprocessed: Path) -> None:
    sampler = PatchSampler(preprocessed, ["a", "b", "c"], SamplerSettings((5, 5, 5), 0.5))
    assert sampler.case_ids == ("a", "b", "c")
    image, _ = sampler.sample(np.random.default_rng(9), 64)
    assert not (image == EXCLUDED_VALUE).any()


def test_case_not_in_manifest_is_named(preprocessed: Path) -> None:
    with pytest.raises(DataError, match="'zz'.*not in the manifest"):
        PatchSampler(preprocessed, ["a", "zz"], SamplerSettings((4, 4, 4)))


def test_missing_array_is_named(preprocessed: Path) -> None:
    (preprocessed / "b_seg.npy").unlink()
    with pytest.raises(DataError, match="'b'.*b_seg.npy"):
        PatchSampler(preprocessed, ["b"], SamplerSettings((4, 4, 4)))


def test_shape_mismatch_is_named(preprocessed: Path) -> None:
    np.save(preprocessed / "b_seg.npy", np.zeros((6, 5, 5), np.uint8))
    with pytest.raises(DataError, match=r"'b'.*\(2, 6, 5, 4\).*\(6, 5, 5\)"):
        PatchSampler(preprocessed, ["b"], SamplerSettings((4, 4, 4)))


def test_location_outside_the_volume_is_named(preprocessed: Path) -> None:
    manifest = json.loads((preprocessed / "manifest.json").read_text())
    manifest["cases"]["b"]["class_locations"]["1"] = [[6, 0, 0]]
    (preprocessed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="'b'.*outside the volume"):
        PatchSampler(preprocessed, ["b"], SamplerSettings((4, 4, 4)))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest is missing"):
        PatchSampler(tmp_path, ["a"], SamplerSettings((4, 4, 4)))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patch_size": (4, 4)}, "patch_size"),
    ({"patch_size": (4, 0, 4)}, "patch_size"),
    ({"patch_size": (4, 4, 4), "foreground_prob": 1.5}, "foreground_prob"),
    ({"patch_size": (4, 4), "dim": 2}, "slice_axis"),
    ({"patch_size": (4, 4, 4), "slice_axis": 1}, "slice_axis"),
    ({"patch_size": (4, 4, 4), "dim": 4}, "dim"),
])
def test_settings_reject_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**kwargs)


def test_2d_box_size_puts_back_the_slice_axis() -> None:
    assert SamplerSettings((8, 6), dim=2, slice_axis=1).box_size == (8, 1, 6)
    assert SamplerSettings((8, 6, 4)).box_size == (8, 6, 4)


def test_settings_from_a_2d_plan() -> None:
    plan = Plan(dataset="toy", dim=2, spacing=(1.0, 1.0), full_spacing=(1.0, 1.0, 3.0),
                patch_size=(32, 24), kernels=((3, 3),), strides=((1, 1),), filters=(8,),
                batch_size=4, num_channels=1, num_classes=2, labels={0: "bg", 1: "fg"},
                channel_norms=(ChannelNorm("zscore_nonzero"),), slice_axis=2)
    settings = SamplerSettings.from_plan(plan, foreground_prob=0.33)
    assert settings == SamplerSettings((32, 24), 0.33, dim=2, slice_axis=2)
