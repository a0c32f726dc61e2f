"""Resampling volumes to a new voxel grid (nnU-Net's rules).

Images use cubic splines; label maps are resampled one class at a time as linearly
interpolated one-hot maps followed by an argmax, so thin structures are not eroded the way
nearest-neighbour resampling erodes them. For anisotropic data (one axis more than
``threshold`` times coarser than the finest) the coarse axis is resampled separately with
nearest neighbour: interpolating across thick slices invents anatomy between them.

Old and new grids share their outer edges ("align corners = False"): output voxel ``j``
samples input coordinate ``(j + 0.5) * n_in / n_out - 0.5``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0
# Longer axes fall back to one scipy pass: the dense per-axis matrix costs n_in multiply-adds
# per output voxel, which stops paying off beyond a few hundred voxels.
MAX_MATRIX_AXIS = 640


def target_shape(shape: Sequence[int], old_spacing: Sequence[float],
                 new_spacing: Sequence[float]) -> tuple[int, ...]:
    """``round(shape * old_spacing / new_spacing)`` per axis (voxels, at least 1)."""
    if not len(shape) == len(old_spacing) == len(new_spacing):
        raise ValueError(f"shape {tuple(shape)}, old spacing {tuple(old_spacing)} and new spacing "
                         f"{tuple(new_spacing)} must have the same length")
    if any(s <= 0 for s in (*old_spacing, *new_spacing)):
        raise ValueError(f"spacings must be > 0, got {tuple(old_spacing)} -> {tuple(new_spacing)}")
    return tuple(max(1, int(round(n * o / t)))
                 for n, o, t in zip(shape, old_spacing, new_spacing, strict=True))


def separate_axis(old_spacing: Sequence[float], new_spacing: Sequence[float],
                  threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The coarse axis to resample separately, or ``None`` for isotropic-enough data.

    The old spacing decides first (the data as acquired); if it is not anisotropic, the new
    spacing may be (ties between equally coarse axes go to the last axis).
    """
    for spacing in (old_spacing, new_spacing):
        if max(spacing) > threshold * min(spacing):
            top = max(spacing)
            return max(i for i, s in enumerate(spacing) if s == top)
    return None


def _zoom_ndimage(volume: np.ndarray, new_shape: Sequence[int], order: int,
                  dtype: type = np.float32) -> np.ndarray:
    """Spline resampling of ``volume`` (any ndim) to ``new_shape`` with scipy, one pass."""
    scale = np.array([o / n for o, n in zip(volume.shape, new_shape, strict=True)])
    return ndimage.affine_transform(
        volume.astype(dtype, copy=False), scale, offset=0.5 * scale - 0.5,
        output_shape=tuple(new_shape), output=dtype, order=order, mode="nearest",
        prefilter=order > 1,
    )


@functools.lru_cache(maxsize=256)
def _axis_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1D spline resampling along one axis (float32).

    Column ``j`` is the resampled unit impulse ``e_j``, computed by the same scipy call as
    :func:`_zoom_ndimage` (prefilter and ``mode="nearest"`` edges included), so applying it
    along every axis in turn gives the tensor-product result of the one-pass 3D call.
    """
    eye = np.eye(n_in, dtype=np.float64)
    return _zoom_ndimage(eye, (n_out, n_in), order, np.float64).astype(np.float32)


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Spline resampling of ``volume`` (any ndim) to ``new_shape``, float32.

    Splines on a regular grid are separable, so linear and cubic resampling run as one small
    matrix product per axis (BLAS): 3 x 4 taps per voxel instead of 4^3 = 64 for cubic in
    3D, about 10x faster than ``ndimage.affine_transform`` with the same result (to float32
    rounding). Nearest neighbour (order 0) stays a scipy call.
    """
    if order == 0 or max(volume.shape) > MAX_MATRIX_AXIS:
        return _zoom_ndimage(volume, new_shape, order)
    out = volume.astype(np.float32, copy=False)
    for axis, n_out in enumerate(new_shape):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue  # spline interpolation at the knots is the identity
        w = _axis_matrix(n_in, int(n_out), order)
        moved = np.moveaxis(out, axis, -1)
        out = np.moveaxis(moved @ w.T, -1, axis)
    return np.ascontiguousarray(out)


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    return np.clip(np.round(centres), 0, n_in - 1).astype(np.intp)


def resample_volume(volume: np.ndarray, new_shape: Sequence[int], order: int,
                    axis: int | None = None) -> np.ndarray:
    """Resample one volume ``(X, Y, Z)`` to ``new_shape``; float32 out.

    ``order`` is the spline order (0 nearest, 1 linear, 3 cubic). With ``axis`` given, the
    other two axes are resampled slice by slice with ``order`` and ``axis`` with nearest.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if volume.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"expected a 3D volume and shape, got {volume.shape} -> {new_shape}")
    if volume.shape == new_shape:
        return volume.astype(np.float32, copy=True)
    if axis is None:
        return _zoom(volume, new_shape, order)
    moved = np.moveaxis(volume, axis, 0)
    plane_shape = tuple(s for a, s in enumerate(new_shape) if a != axis)
    if moved.shape[1:] != plane_shape:
        out = np.empty((moved.shape[0], *plane_shape), dtype=np.float32)
        for k, plane in enumerate(moved):
            out[k] = _zoom(plane, plane_shape, order)
    else:
        out = moved.astype(np.float32, copy=True)
    if out.shape[0] != new_shape[axis]:
        out = out[_nearest_indices(out.shape[0], new_shape[axis])]
    return np.moveaxis(out, 0, axis)


def resample_image(image: np.ndarray, new_shape: Sequence[int], axis: int | None = None,
                   order: int = 3) -> np.ndarray:
    """Resample every channel of ``image`` ``(C, X, Y, Z)`` to ``(C, *new_shape)``, float32.

    Cubic by default (images); pass ``order=1`` for probability maps.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    return np.stack([resample_volume(ch, new_shape, order, axis) for ch in image])


def resample_labels(label: np.ndarray, new_shape: Sequence[int],
                    axis: int | None = None) -> np.ndarray:
    """Resample a label map ``(X, Y, Z)`` to ``new_shape`` via per-class linear one-hot maps.

    Each class present is interpolated linearly as a 0/1 map and each output voxel takes the
    class with the largest value. Ties go to the higher class (as in nnU-Net, where every
    class at >= 0.5 overwrites the ones before it): a structure that covers half of an output
    voxel keeps it, so thin foreground is not lost to the background. Returns uint8.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if label.shape == new_shape:
        return label.astype(np.uint8, copy=True)
    best = np.full(new_shape, -1.0, dtype=np.float32)
    out = np.zeros(new_shape, dtype=np.uint8)
    for value in np.unique(label):
        score = resample_volume((label == value).astype(np.float32), new_shape, 1, axis)
        better = score >= best
        out[better] = value
        best[better] = score[better]
    return out


def resample_mask(mask: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a boolean mask ``(X, Y, Z)``."""
    return resample_volume(mask.astype(np.float32), new_shape, 0) > 0.5
