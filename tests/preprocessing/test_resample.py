"""Resampling shapes, anisotropic handling and label survival."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.preprocessing.resample import (
    resample_image,
    resample_labels,
    resample_volume,
    separate_axis,
    target_shape,
)


@pytest.mark.parametrize(
    ("shape", "old", "new", "expected"),
    [((10, 20, 5), (1.0, 1.0, 1.0), (2.0, 2.0, 1.0), (5, 10, 5)),
     ((9, 9, 7), (0.7, 0.7, 5.0), (1.0, 1.0, 2.5), (6, 6, 14)),
     ((3, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0), (1, 1, 1))],
)
def test_target_shape(shape, old, new, expected):
    assert target_shape(shape, old, new) == expected


def test_target_shape_rejects_bad_spacing():
    with pytest.raises(ValueError, match="> 0"):
        target_shape((4, 4, 4), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("old", "new", "axis"),
    [((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), None), ((0.7, 0.7, 5.0), (1.0, 1.0, 1.0), 2),
     ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 0), ((3.0, 1.0, 3.0), (1.0, 1.0, 1.0), None),
     ((4.0, 1.0, 4.0), (1.0, 1.0, 1.0), None)],
)
def test_separate_axis(old, new, axis):
    """Two axes tied for the coarsest: none is separate (nnU-Net v2's rule; nnpipe used to
    pick the last of them, so the last case's expected value changed from 2 to None)."""
    assert separate_axis(old, new) == axis


def test_separate_axis_takes_slices_half_up():
    """Downsampling 8 -> 4 slices samples coordinates 2j + 0.5: v2's map_coordinates(order=0)
    rounds them up (slices 1, 3, 5, 7), not half to even."""
    vol = np.broadcast_to(np.arange(8, dtype=np.float32), (3, 3, 8)).copy()
    out = resample_volume(vol, (3, 3, 4), order=3, axis=2)
    assert out[0, 0].tolist() == [1.0, 3.0, 5.0, 7.0]


@pytest.mark.parametrize("axis", [None, 2])
def test_cubic_overshoot_is_clipped(axis):
    """A step edge: cubic splines overshoot; the result stays inside the input's range
    (3D: the volume's, separate axis: each slice's)."""
    vol = np.zeros((6, 6, 4), dtype=np.float32)
    vol[3:] = 100.0
    vol[0, 0, 3] = -5.0  # only slice z=3 reaches below 0
    out = resample_volume(vol, (13, 11, 4), order=3, axis=axis)
    assert out.max() == 100.0
    if axis is None:
        assert out.min() == -5.0
    else:
        assert out[..., :3].min() == 0.0 and out[..., 3].min() == -5.0


def test_image_shapes_and_constant_preserved():
    image = np.full((2, 8, 6, 4), 5.0, dtype=np.float32)
    out = resample_image(image, (12, 3, 4))
    assert out.shape == (2, 12, 3, 4) and out.dtype == np.float32
    assert np.allclose(out, 5.0, atol=1e-4)
    aniso = resample_image(image, (4, 9, 7), axis=2)
    assert aniso.shape == (2, 4, 9, 7) and np.allclose(aniso, 5.0, atol=1e-4)


def test_separate_axis_uses_nearest_between_slices():
    vol = np.zeros((4, 4, 3), dtype=np.float32)
    vol[..., 1] = 10.0
    out = resample_volume(vol, (4, 4, 6), order=3, axis=2)
    # nearest along z: slices are copied, never blended
    assert sorted(np.unique(out).tolist()) == [0.0, 10.0]
    assert np.allclose(out[0, 0], [0, 0, 10, 10, 0, 0])


def test_linear_image_is_interpolated_at_voxel_centres():
    vol = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    out = resample_volume(vol, (8, 2, 2), order=1)
    # output centre j maps to input (j + 0.5) / 2 - 0.5; edges clamp
    assert np.allclose(out[:, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])


def test_labels_upsample_without_new_values():
    label = np.zeros((4, 4, 4), dtype=np.uint8)
    label[1:3, 1:3, 1:3] = 2
    out = resample_labels(label, (8, 8, 8))
    assert out.dtype == np.uint8
    assert set(np.unique(out).tolist()) == {0, 2}
    # linear one-hot rounds the block's corners: 0.75**3 < 0.5 there, 0.75**2 > 0.5 elsewhere
    assert (out == 2).sum() == 64 - 8
    assert out[3:5, 3:5, 3:5].all() and out[2:6, 2:6, 2:6].sum() == 2 * 56


def test_label_volume_is_kept_when_downsampling():
    grid = np.mgrid[:24, :24, :24] - 11.5
    label = (np.sqrt((grid**2).sum(axis=0)) < 8).astype(np.uint8)
    for n in (12, 16, 18):
        out = resample_labels(label, (n, n, n))
        assert (out == 1).sum() * (24 / n) ** 3 == pytest.approx(label.sum(), rel=0.1)


def test_ties_go_to_the_higher_class():
    label = np.zeros((2, 1, 1), dtype=np.uint8)
    label[1] = 3
    assert resample_labels(label, (1, 1, 1)).item() == 3


def test_thin_structure_survives_downsampling():
    # a 1-voxel sheet covers half of each output voxel it falls in: it is kept
    label = np.zeros((8, 4, 4), dtype=np.uint8)
    label[3] = 1
    out = resample_labels(label, (4, 4, 4))
    assert (out[1] == 1).all() and (out[[0, 2, 3]] == 0).all()


def test_labels_same_shape_is_copy():
    label = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    out = resample_labels(label, (2, 2, 2))
    assert np.array_equal(out, label) and out is not label


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize(("shape", "new_shape"),
                         [((17, 23, 9), (30, 11, 9)), ((40, 41, 12), (25, 60, 30)),
                          ((16, 12), (7, 29))])
def test_separable_zoom_equals_one_scipy_pass(order, shape, new_shape):
    """The per-axis matrices reproduce scipy's one-pass tensor-product spline exactly
    (to float32 rounding), edges included."""
    from nnpipe.preprocessing.resample import _zoom, _zoom_ndimage

    vol = np.random.default_rng(3).normal(size=shape).astype(np.float32) * 100
    fast, ref = _zoom(vol, new_shape, order), _zoom_ndimage(vol, new_shape, order)
    assert fast.shape == ref.shape == tuple(new_shape) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, atol=2e-3, rtol=0)


# ---------------------------------------------------------------- the torch path (CPU device)

# (shape, new shape, separate axis): isotropic up and down, anisotropic (the separate axis
# resized or kept, planes up or down), a 2D plan's slice axis kept, one axis unchanged, and an
# axis longer than MAX_MATRIX_AXIS (numpy takes one scipy pass there, torch the matrix)
TORCH_CASES = [
    ((17, 23, 9), (30, 11, 9), None),
    ((12, 14, 10), (6, 7, 5), None),
    ((10, 12, 14), (10, 6, 14), None),
    ((17, 23, 9), (30, 11, 20), 2),
    ((12, 14, 5), (6, 7, 15), 2),
    ((20, 8, 8), (20, 16, 4), 0),
    ((12, 14, 5), (24, 7, 5), 0),
    ((9, 16, 7), (18, 16, 3), 1),
    ((650, 3, 4), (700, 2, 4), None),
]


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize(("shape", "new_shape", "axis"), TORCH_CASES)
@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_torch_path_equals_numpy_path(order, shape, new_shape, axis, chunk_bytes):
    """The device path (here on the CPU device) gives the numpy path's numbers to float32
    rounding; ``chunk_bytes=1`` forces one-row slabs, which must not change them."""
    import torch

    from nnpipe.preprocessing.resample import resample_image_torch

    image = np.random.default_rng(5).normal(size=(2, *shape)).astype(np.float32) * 100
    ref = resample_image(image, new_shape, axis, order)
    kw = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    got = resample_image_torch(torch.from_numpy(image), new_shape, axis, order, **kw)
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape == (2, *new_shape)
    # float32 rounding of values up to ~400: a few ulp
    np.testing.assert_allclose(got.numpy(), ref, atol=3e-4, rtol=0)


@pytest.mark.parametrize(("shape", "new_shape"),
                         [((8, 9, 10), (16, 4, 10)), ((5, 5, 5), (13, 2, 7)),
                          ((4, 4, 4), (4, 4, 4))])
def test_torch_nearest_is_exactly_the_numpy_nearest(shape, new_shape):
    """Order 0 on the device takes scipy's nearest voxel on every axis (the one-hot rows of
    the order-0 matrix), so the result is exactly the numpy path's."""
    import torch

    from nnpipe.preprocessing.resample import resample_volume_torch

    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    got = resample_volume_torch(torch.from_numpy(vol), new_shape, 0)
    np.testing.assert_array_equal(got.numpy(), resample_volume(vol, new_shape, 0))


def test_torch_volume_writes_into_out_and_checks_it():
    import torch

    from nnpipe.preprocessing.resample import resample_volume_torch

    vol = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(4, 5, 6)
    out = torch.full((8, 5, 3), -1.0)
    assert resample_volume_torch(vol, (8, 5, 3), 1, out=out) is out
    np.testing.assert_allclose(out.numpy(), resample_volume(vol.numpy(), (8, 5, 3), 1),
                               atol=1e-4)
    with pytest.raises(ValueError, match=r"out must be float32 of shape \(8, 5, 3\)"):
        resample_volume_torch(vol, (8, 5, 3), 1, out=torch.empty(8, 5, 4))
    with pytest.raises(ValueError, match="expected a 3D volume"):
        resample_volume_torch(vol[0], (8, 5), 1)


def test_torch_path_ignores_tf32_and_autocast_of_the_caller():
    """Resampling runs in full float32 even inside a bf16 autocast region."""
    import torch

    from nnpipe.preprocessing.resample import resample_image_torch

    image = np.random.default_rng(1).normal(size=(1, 9, 10, 11)).astype(np.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = resample_image_torch(torch.from_numpy(image), (13, 7, 11), None, 3)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), resample_image(image, (13, 7, 11)), atol=1e-5)
