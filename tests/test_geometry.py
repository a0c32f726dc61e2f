"""Canonical orientation is an exact round trip for every axis order, and grids compare with
tolerances that scale with the voxel size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnpipe.geometry import (
    DIRECTION_ATOL,
    ORIGIN_VOXELS,
    SPACING_RTOL,
    Orientation,
    axis_codes,
    grid_difference,
    orientation_of,
    spacing_of,
)
from nnpipe.preprocessing.resample import resample_labels, resample_volume

SHAPE = (3, 4, 5)  # distinct lengths, so a wrong permutation cannot pass
SPACING = (0.7, 1.3, 2.9)  # mm along the file's voxel axes
ORIGIN = (12.5, -30.25, 7.0)  # mm

# every voxel-axis permutation × every flip: the 48 ways a scanner can store a volume
ORIENTATIONS = [(perm, signs) for perm in itertools.permutations(range(3))
                for signs in itertools.product((1, -1), repeat=3)]


def _affine(perm: tuple[int, ...], signs: tuple[int, ...],
            spacing: tuple[float, ...] = SPACING,
            origin: tuple[float, ...] = ORIGIN) -> np.ndarray:
    """File voxel axis ``i`` runs along world axis ``perm[i]`` with sign ``signs[i]``."""
    a = np.eye(4)
    a[:3, :3] = 0.0
    for i, (w, s) in enumerate(zip(perm, signs, strict=True)):
        a[w, i] = s * spacing[i]
    a[:3, 3] = origin
    return a


def _id(case: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    return axis_codes(_affine(*case))


@pytest.mark.parametrize("case", ORIENTATIONS, ids=_id)
def test_apply_undo_round_trip(case):
    affine = _affine(*case)
    volume = np.random.default_rng(7).integers(0, 1000, size=SHAPE)
    o = orientation_of(affine, SHAPE)
    canonical = o.apply(volume)
    assert canonical.shape == o.canonical_shape
    back = o.undo(canonical)
    assert back.shape == SHAPE
    np.testing.assert_array_equal(back, volume)
    # trailing channels kept, and channel-first undo is the same inverse
    multi = np.stack([volume, volume + 1], axis=-1)
    canonical_c = o.apply(multi)
    np.testing.assert_array_equal(o.undo(canonical_c), multi)
    np.testing.assert_array_equal(
        o.undo(np.moveaxis(canonical_c, -1, 0), channel_first=True), np.moveaxis(multi, -1, 0))


@pytest.mark.parametrize("case", ORIENTATIONS, ids=_id)
def test_canonical_affine_keeps_world_positions(case):
    affine = _affine(*case)
    o = orientation_of(affine, SHAPE)
    canon_affine = o.canonical_affine(affine)
    # each canonical voxel holds the file index it came from
    index = np.moveaxis(np.indices(SHAPE), 0, -1)  # (X, Y, Z, 3)
    moved = o.apply(index)
    rng = np.random.default_rng(3)
    picks = [(0, 0, 0), tuple(n - 1 for n in o.canonical_shape)]
    picks += [tuple(int(rng.integers(n)) for n in o.canonical_shape) for _ in range(6)]
    for c in picks:
        v = moved[c]
        world_file = affine @ np.array([*v, 1.0])
        world_canon = canon_affine @ np.array([*c, 1.0])
        np.testing.assert_allclose(world_canon, world_file, atol=1e-9)


@pytest.mark.parametrize("case", ORIENTATIONS, ids=_id)
def test_canonical_affine_is_closest_ras(case):
    affine = _affine(*case)
    o = orientation_of(affine, SHAPE)
    m = o.canonical_affine(affine)[:3, :3]
    assert axis_codes(o.canonical_affine(affine)) == "RAS"
    diag = np.diag(m)
    assert np.all(diag > 0)
    assert np.all(np.abs(m - np.diag(diag)).max(axis=1) < diag)  # diagonal dominant
    # spacing follows its axis to the canonical position
    expected = [0.0, 0.0, 0.0]
    for i, w in enumerate(case[0]):
        expected[w] = SPACING[i]
    np.testing.assert_allclose(spacing_of(o.canonical_affine(affine)), expected)
    np.testing.assert_allclose(diag, expected)
    assert o.is_identity == (case == ((0, 1, 2), (1, 1, 1)))


def test_oblique_affine_goes_to_the_closest_axes():
    """Rotated 20° about z the closest axes stay R, A, S; rotated 70° they become A, L, S."""
    for degrees, codes in ((20, "RAS"), (70, "ALS")):
        t = np.deg2rad(degrees)
        r = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        affine = np.eye(4)
        affine[:3, :3] = r @ np.diag(SPACING)
        assert axis_codes(affine) == codes
        m = orientation_of(affine, SHAPE).canonical_affine(affine)[:3, :3]
        assert np.all(np.diag(m) > 0)
        assert np.all(np.abs(m - np.diag(np.diag(m))).max(axis=1) < np.diag(m))


def test_orientation_to_list_round_trip():
    o = orientation_of(_affine((1, 2, 0), (-1, 1, -1)), SHAPE)
    assert Orientation.from_list(o.to_list(), SHAPE) == o


# ---------------------------------------------------------------- with resampling


def _blobs(shape: tuple[int, int, int]) -> np.ndarray:
    """Boxes of three label values, each at least 2 voxels thick."""
    label = np.zeros(shape, dtype=np.uint8)
    label[1:4, 1:5, 2:6] = 1
    label[4:7, 3:8, 1:4] = 2
    label[1:3, 6:9, 5:9] = 3
    return label


@pytest.mark.parametrize("resample", ["labels", "nearest"])
@pytest.mark.parametrize("case", [((0, 1, 2), (1, 1, 1)), ((1, 2, 0), (-1, 1, -1)),
                                  ((2, 0, 1), (1, -1, -1))], ids=_id)
def test_round_trip_through_resampling(case, resample):
    """Canonicalize, resample to half the spacing and back (nnpipe.preprocessing.resample),
    undo: the file's grid, affine and every label value come back."""
    shape = (8, 10, 9)
    label = _blobs(shape)
    affine = _affine(*case)
    o = orientation_of(affine, shape)
    canon = o.apply(label)
    canon_affine = o.canonical_affine(affine)

    factor = 2
    fine_shape = tuple(n * factor for n in canon.shape)
    # the finer grid shares the outer edges: voxel j's centre is at (j + 0.5) / f - 0.5
    to_fine = np.diag([1 / factor] * 3 + [1.0])
    to_fine[:3, 3] = 0.5 / factor - 0.5
    fine_affine = canon_affine @ to_fine
    np.testing.assert_allclose(spacing_of(fine_affine),
                               np.asarray(spacing_of(canon_affine)) / factor)
    if resample == "labels":
        fine = resample_labels(canon, fine_shape)
        coarse = resample_labels(fine, canon.shape)
    else:
        fine = resample_volume(canon, fine_shape, order=0)
        coarse = resample_volume(fine, canon.shape, order=0).astype(np.uint8)
    assert fine.shape == fine_shape and coarse.shape == canon.shape
    back_affine = fine_affine @ np.linalg.inv(to_fine)
    np.testing.assert_allclose(back_affine, canon_affine, atol=1e-12)

    restored = o.undo(coarse)
    assert restored.shape == shape
    np.testing.assert_array_equal(restored, label)
    # the file affine comes back from the canonical one through the inverse permutation
    file_affine = back_affine @ np.linalg.inv(o.canonical_affine(np.eye(4)))
    np.testing.assert_allclose(file_affine, affine, atol=1e-12)


# ---------------------------------------------------------------- grid_difference

BASE = _affine((0, 1, 2), (1, 1, 1), spacing=(0.1, 0.1, 0.1))  # 0.1 mm voxels


def _shifted(mm: float) -> np.ndarray:
    a = BASE.copy()
    a[0, 3] += mm
    return a


def test_constants_are_as_documented():
    assert (SPACING_RTOL, ORIGIN_VOXELS, DIRECTION_ATOL) == (1e-3, 1e-2, 1e-3)


def test_identical_grids():
    assert grid_difference(SHAPE, BASE, SHAPE, BASE.copy()) is None


@pytest.mark.parametrize("shape_b, affine_b, expected", [
    ((3, 4, 6), BASE, ["shape (3, 4, 6) vs (3, 4, 5)"]),
    (SHAPE, _affine((0, 1, 2), (1, 1, 1), spacing=(0.1, 0.1, 0.2)),
     ["spacing (0.1, 0.1, 0.2) mm vs (0.1, 0.1, 0.1) mm"]),
    (SHAPE, _shifted(2.0), ["origin (14.5, -30.25, 7) mm vs (12.5, -30.25, 7) mm",
                            "2 mm apart"]),
    (SHAPE, _affine((0, 1, 2), (1, -1, 1), spacing=(0.1, 0.1, 0.1)),
     ["direction RPS vs RAS", "largest cosine difference 2"]),
], ids=["shape", "spacing", "origin", "direction"])
def test_each_difference_is_named_with_its_amount(shape_b, affine_b, expected):
    diff = grid_difference(SHAPE, BASE, shape_b, affine_b)
    assert diff is not None
    for text in expected:
        assert text in diff
    named = {w for w in ("shape", "spacing", "origin", "direction") if w in diff}
    what = expected[0].split()[0]
    # a flipped axis moves no origin: exactly the one difference is reported
    assert named == {what}


def test_several_differences_in_one_message():
    other = _affine((0, 1, 2), (1, 1, 1), spacing=(0.2, 0.1, 0.1), origin=(0, 0, 0))
    diff = grid_difference(SHAPE, BASE, (9, 9, 9), other)
    assert diff is not None
    assert diff.startswith("shape (9, 9, 9) vs (3, 4, 5); spacing ")
    assert "; origin (0, 0, 0) mm vs (12.5, -30.25, 7) mm" in diff


@pytest.mark.parametrize("fraction, reported", [(0.005, False), (0.05, True)])
def test_origin_tolerance_scales_with_voxel_size(fraction, reported):
    """1 % of the smallest voxel: 0.5 % of a 0.1 mm voxel passes, 5 % is reported."""
    diff = grid_difference(SHAPE, BASE, SHAPE, _shifted(fraction * 0.1))
    assert (diff is not None) == reported
    if reported:
        assert diff is not None and diff.startswith("origin ") and "0.005 mm apart" in diff
    # the same absolute shift on 1 mm voxels is always far below tolerance
    coarse = _affine((0, 1, 2), (1, 1, 1), spacing=(1.0, 1.0, 1.0))
    moved = coarse.copy()
    moved[0, 3] += fraction * 0.1
    assert grid_difference(SHAPE, coarse, SHAPE, moved) is None


@pytest.mark.parametrize("relative, reported", [(5e-4, False), (5e-3, True)])
def test_spacing_tolerance_is_relative(relative, reported):
    a = _affine((0, 1, 2), (1, 1, 1), spacing=(2.0, 2.0, 2.0))
    b = _affine((0, 1, 2), (1, 1, 1), spacing=(2.0 * (1 + relative), 2.0, 2.0))
    diff = grid_difference(SHAPE, a, SHAPE, b)
    assert (diff is not None) == reported
    if reported:
        assert diff == "spacing (2.01, 2, 2) mm vs (2, 2, 2) mm"


@pytest.mark.parametrize("degrees, reported", [(0.03, False), (0.3, True)])
def test_direction_tolerance(degrees, reported):
    """A cosine difference below 1e-3 (about 0.057°) is the same direction."""
    t = np.deg2rad(degrees)
    b = np.eye(4)
    b[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    diff = grid_difference(SHAPE, np.eye(4), SHAPE, b)
    assert (diff is not None) == reported
    if reported:
        assert diff is not None and diff.startswith("direction RAS vs RAS (largest cosine")


def _rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    a = np.eye(4)
    a[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    return a


@pytest.mark.parametrize(("deg", "expected"), [
    # exactly 45 degrees between two world axes: the file's own axis order is kept
    (45, ((0, 1), (1, 1), (2, 1))), (-45, ((0, 1), (1, 1), (2, 1))),
    (135, ((0, -1), (1, -1), (2, 1))), (-135, ((0, -1), (1, -1), (2, 1))),
    # clear cases follow the closest axis as before
    (30, ((0, 1), (1, 1), (2, 1))), (60, ((1, 1), (0, -1), (2, 1))),
    (180, ((0, -1), (1, -1), (2, 1)))])
def test_oblique_ties_keep_the_file_axis_order(deg, expected):
    o = orientation_of(_rotation_z(deg), (4, 5, 6))
    assert o.transform == expected
    # a rounding-level nudge either way does not change a tie's answer
    for eps in (1e-9, -1e-9):
        assert orientation_of(_rotation_z(deg + eps), (4, 5, 6)).transform == expected
    data = np.arange(120).reshape(4, 5, 6)
    np.testing.assert_array_equal(o.undo(o.apply(data)), data)
