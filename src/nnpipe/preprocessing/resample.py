"""Resampling volumes to a new voxel grid (nnU-Net v2's rules, for every model).

Images use cubic splines clipped to the input's range; label maps are resampled one class at
a time as linearly interpolated one-hot maps followed by an argmax, so thin structures are
not eroded the way nearest-neighbour resampling erodes them. For anisotropic data (one axis
more than ``threshold`` times coarser than the finest) the coarse axis is resampled
separately with nearest neighbour: interpolating across thick slices invents anatomy between
them.

Old and new grids share their outer edges ("align corners = False"): output voxel ``j``
samples input coordinate ``(j + 0.5) * (n_in / n_out) - 0.5``.

Source of each rule: nnU-Net v2 2.8.1 ``preprocessing/resampling/default_resampling.py``
(``compute_new_shape``, ``determine_do_sep_z_and_axis``, ``resample_data_or_seg``, which
resizes with ``skimage.transform.resize(mode="edge", anti_aliasing=False)``, clipped to the
input's range, and samples the separate axis with ``map_coordinates(order=0)``). Re-derived,
not copied; golden numbers computed with nnU-Net pin them in ``tests/v2/test_semantics.py``.
The facts that differ between models (the spline orders, a forced separate axis, the
threshold) are data: :class:`Resampling`.

The ``*_torch`` functions do the same with torch on any device (prediction on a GPU), with
the same per-axis matrices, so both give the same numbers to float32 rounding.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

# nnunetv2.configuration.ANISO_THRESHOLD: an axis more than 3x coarser than the finest is
# resampled on its own (order 0), since interpolating across thick slices invents anatomy.
ANISOTROPY_THRESHOLD = 3.0
# Longer axes fall back to one scipy pass: the dense per-axis matrix costs n_in multiply-adds
# per output voxel, which stops paying off beyond a few hundred voxels.
MAX_MATRIX_AXIS = 640


@dataclass(frozen=True)
class Resampling:
    """One resampling rule (data a model carries; v2: the plans' ``resampling_fn_*_kwargs``):
    spline ``order`` in-plane (and on every axis when none is separate), ``order_z`` along a
    separate axis, ``force_separate_z`` None to let :func:`separate_axis` decide (True:
    always the coarsest axis of the current spacing, False: never), ``threshold`` the
    anisotropy ratio. The default is nnpipe's and v2's image rule (cubic, nearest between
    slices)."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None
    threshold: float = ANISOTROPY_THRESHOLD


# nnpipe's own models: images cubic, probabilities linear (v2's defaults as well)
IMAGE_RESAMPLING = Resampling(order=3)
PROBABILITY_RESAMPLING = Resampling(order=1)


def target_shape(shape: Sequence[int], old_spacing: Sequence[float],
                 new_spacing: Sequence[float], *, at_least: int = 1) -> tuple[int, ...]:
    """``round(old_spacing / new_spacing * shape)`` per axis (voxels; the ratio first, in
    float64, Python's round: halves to even), at least ``at_least``.

    Source: nnU-Net v2 2.8.1 ``default_resampling.compute_new_shape`` (which has no lower
    bound: v2's semantics pass ``at_least=0``). Raises ``ValueError`` for mismatched lengths
    or a spacing <= 0.
    """
    if not len(shape) == len(old_spacing) == len(new_spacing):
        raise ValueError(f"shape {tuple(shape)}, old spacing {tuple(old_spacing)} and new spacing "
                         f"{tuple(new_spacing)} must have the same length")
    if any(s <= 0 for s in (*old_spacing, *new_spacing)):
        raise ValueError(f"spacings must be > 0, got {tuple(old_spacing)} -> {tuple(new_spacing)}")
    return tuple(max(at_least, int(round(float(o) / float(t) * int(n))))
                 for n, o, t in zip(shape, old_spacing, new_spacing, strict=True))


def separate_axis(old_spacing: Sequence[float], new_spacing: Sequence[float],
                  threshold: float = ANISOTROPY_THRESHOLD,
                  force: bool | None = None) -> int | None:
    """The coarse axis to resample separately, or ``None`` for isotropic-enough data.

    The old spacing decides first (the data as acquired), then the new one: anisotropic
    when ``max / min > threshold``; the axis is the one of maximum spacing, and when two or
    three axes tie for the maximum there is none. ``force`` True takes the coarsest axis of
    the old spacing (ties: none), False never separates.

    Source: nnU-Net v2 2.8.1 ``default_resampling.determine_do_sep_z_and_axis``.
    """
    if force is False:
        return None
    chosen: Sequence[float] | None = None
    if force:
        chosen = old_spacing
    else:
        for spacing in (old_spacing, new_spacing):
            if max(spacing) / min(spacing) > threshold:
                chosen = spacing
                break
    if chosen is None:
        return None
    top = max(chosen)
    axes = [i for i, s in enumerate(chosen) if top / s == 1]
    return axes[0] if len(axes) == 1 else None


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
    """Source slice of every output slice along the separate axis: the coordinate
    ``(j + 0.5) * (n_in / n_out) - 0.5`` rounded half up, at the edges the edge slice.

    Source: nnU-Net v2 2.8.1 ``resample_data_or_seg`` (``map_coordinates(order=0,
    mode="nearest")`` on that grid: ``floor(c + 0.5)``, checked against scipy)."""
    centres = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    return np.clip(np.floor(centres + 0.5), 0, n_in - 1).astype(np.intp)


def _clip_to(out: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Clip ``out`` in place to the value range of ``source`` (skimage's ``clip=True``)."""
    return np.clip(out, source.min(), source.max(), out=out)


def resample_volume(volume: np.ndarray, new_shape: Sequence[int], order: int,
                    axis: int | None = None, order_z: int = 0) -> np.ndarray:
    """Resample one volume ``(X, Y, Z)`` to ``new_shape`` (voxels); float32 out.

    ``order`` is the spline order (0 nearest, 1 linear, 3 cubic). Without ``axis`` the
    volume is resampled in 3D, the result clipped to the input's range (``order > 0``:
    cubic overshoot never leaves ``[min, max]``). With ``axis`` given, every slice across it
    is resampled in 2D with ``order`` and clipped to that slice's range, then ``axis`` with
    ``order_z`` (0: the nearest slice, :func:`_nearest_indices`; no clipping).

    Source: nnU-Net v2 2.8.1 ``default_resampling.resample_data_or_seg`` (clipping from
    ``skimage.transform.resize``). Raises ``ValueError`` for a non-3D volume or shape.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if volume.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"expected a 3D volume and shape, got {volume.shape} -> {new_shape}")
    if volume.shape == new_shape:
        return volume.astype(np.float32, copy=True)
    if axis is None:
        out3 = _zoom(volume, new_shape, order)
        return _clip_to(out3, volume) if order > 0 else out3
    moved = np.moveaxis(volume, axis, 0)
    plane_shape = tuple(s for a, s in enumerate(new_shape) if a != axis)
    if moved.shape[1:] != plane_shape:
        out = np.empty((moved.shape[0], *plane_shape), dtype=np.float32)
        for k, plane in enumerate(moved):
            out[k] = _zoom(plane, plane_shape, order)
            if order > 0:
                _clip_to(out[k], plane)
    else:
        out = moved.astype(np.float32, copy=True)
    if out.shape[0] != new_shape[axis]:
        if order_z == 0:
            out = out[_nearest_indices(out.shape[0], new_shape[axis])]
        else:
            out = _zoom(out, (new_shape[axis], *plane_shape), order_z)
    return np.moveaxis(out, 0, axis)


def resample_image(image: np.ndarray, new_shape: Sequence[int], axis: int | None = None,
                   order: int = 3, order_z: int = 0) -> np.ndarray:
    """Resample every channel of ``image`` ``(C, X, Y, Z)`` to ``(C, *new_shape)``, float32,
    each clipped to its own range (:func:`resample_volume`).

    Cubic by default (images); pass ``order=1`` for probability maps or logits.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    return np.stack([resample_volume(ch, new_shape, order, axis, order_z) for ch in image])


def resample_with(image: np.ndarray, new_shape: Sequence[int], old_spacing: Sequence[float],
                  new_spacing: Sequence[float], rule: Resampling = IMAGE_RESAMPLING
                  ) -> np.ndarray:
    """:func:`resample_image` with the separate axis and orders of ``rule``
    (:func:`separate_axis` of the two spacings, mm); ``(C, *new_shape)`` float32."""
    axis = separate_axis(old_spacing, new_spacing, rule.threshold, rule.force_separate_z)
    return resample_image(image, new_shape, axis, rule.order, rule.order_z)


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


# ---------------------------------------------------------------- the same, on a torch device
#
# The functions below apply the very matrices of :func:`_axis_matrix` (and scipy's own
# nearest-neighbour choices) with torch, so they give the numpy path's numbers (to float32
# rounding) on any device. Prediction uses them when the network runs on a GPU: a case is then
# not held up by CPU resampling. ``torch`` is imported inside them: the preprocessing workers,
# which never need it, start without it.

# Device bytes one working slab may take (float32 temporaries of the per-axis products,
# counted three times over: input slab, its permuted copy, the product). Bounds the extra
# memory of resampling one channel whatever the case's size.
DEVICE_CHUNK_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=128)
def _device_matrix(n_in: int, n_out: int, order: int, device: torch.device) -> torch.Tensor:
    """:func:`_axis_matrix` as a float32 tensor on ``device`` (cached: a few KiB each)."""
    import torch

    return torch.from_numpy(_axis_matrix(n_in, n_out, order)).to(device)


@functools.lru_cache(maxsize=128)
def _device_indices(n_in: int, n_out: int, kind: str, device: torch.device) -> torch.Tensor:
    """Source index of every output voxel along one axis, on ``device``.

    ``kind="spline0"``: scipy's order-0 choice (the one-hot rows of ``_axis_matrix(.., 0)``,
    so exactly what :func:`resample_volume` with ``order=0`` picks); ``kind="nearest"``:
    :func:`_nearest_indices` (the separately resampled anisotropic axis).
    """
    import torch

    if kind == "spline0":
        idx = np.argmax(_axis_matrix(n_in, n_out, 0), axis=1)
    else:
        idx = _nearest_indices(n_in, n_out)
    return torch.from_numpy(idx.astype(np.int64)).to(device)


def _along(x: torch.Tensor, dim: int, n_out: int, order: int) -> torch.Tensor:
    """Resample ``x`` along ``dim`` to ``n_out`` voxels (spline ``order``; 0 keeps dtype)."""
    import torch

    n_in = x.shape[dim]
    if n_in == n_out:
        return x  # spline interpolation at the knots is the identity
    if order == 0:
        return x.index_select(dim, _device_indices(n_in, n_out, "spline0", x.device))
    w = _device_matrix(n_in, n_out, order, x.device)
    return torch.movedim(torch.tensordot(x, w, dims=([dim], [1])), -1, dim)


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 products, whatever the caller set: no TF32 (10-bit mantissa) matmuls and
    no autocast, which would give a resampled image visibly different from the CPU's."""
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _rows_per_slab(plane_in: Sequence[int], plane_out: Sequence[int], chunk_bytes: int) -> int:
    """Rows along the first axis per slab so that a slab's temporaries fit ``chunk_bytes``."""
    widest = max(plane_in[0], plane_out[0]) * max(plane_in[1], plane_out[1])
    return max(1, chunk_bytes // (3 * 4 * widest))


def resample_volume_torch(volume: torch.Tensor, new_shape: Sequence[int], order: int,
                          axis: int | None = None, *, order_z: int = 0,
                          out: torch.Tensor | None = None,
                          chunk_bytes: int = DEVICE_CHUNK_BYTES) -> torch.Tensor:
    """:func:`resample_volume` for a tensor ``(X, Y, Z)`` on any device; float32 out.

    The same per-axis matrices (spline ``order`` 1 or 3; 0 is scipy's nearest choice), the
    same clipping (to the volume's range, or with ``axis`` to each slice's range) and, with
    ``axis``, the same nearest-neighbour copy of slices along that axis (or ``order_z``'s
    matrix), so the result equals the numpy path's to float32 rounding (axes longer than
    ``MAX_MATRIX_AXIS`` included, where numpy takes one scipy pass with the same result).
    Writes into ``out`` (a float32 ``new_shape`` tensor on the same device) when given.

    Memory: the two other axes are resampled in slabs along the first axis (``axis`` when
    given, else X) of about ``chunk_bytes`` at most, then the first axis in slabs of output
    rows. Beyond input and output, one intermediate ``(X, Y', Z')`` and one slab are held.
    """
    import torch

    new_shape = tuple(int(s) for s in new_shape)
    if volume.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"expected a 3D volume and shape, got {tuple(volume.shape)} -> "
                         f"{new_shape}")
    if out is None:
        out = torch.empty(new_shape, dtype=torch.float32, device=volume.device)
    elif tuple(out.shape) != new_shape or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 of shape {new_shape}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    first = 0 if axis is None else axis
    src = volume.movedim(first, 0)
    dst = out.movedim(first, 0)
    plane_out = tuple(s for a, s in enumerate(new_shape) if a != first)
    n_in, n_out = src.shape[0], new_shape[first]
    # 3D: clipped to the volume's range at the end; separate axis: each slice to its own
    clip3d = None
    if order > 0 and axis is None and (tuple(volume.shape) != new_shape):
        lo, hi = torch.aminmax(volume.float())
        clip3d = (float(lo), float(hi))
    with _exact_float32(volume.device):
        # the two other axes, slab by slab (slices along the first axis are independent)
        if tuple(src.shape[1:]) == plane_out:
            mid = src.float() if n_in != n_out else dst.copy_(src)
        else:
            mid = dst if n_in == n_out else torch.empty((n_in, *plane_out),
                                                        dtype=torch.float32,
                                                        device=volume.device)
            rows = _rows_per_slab(src.shape[1:], plane_out, chunk_bytes)
            for a in range(0, n_in, rows):
                slab = src[a:a + rows].float()
                if axis is not None and order > 0:
                    lo_s = slab.amin(dim=(1, 2))[:, None, None]
                    hi_s = slab.amax(dim=(1, 2))[:, None, None]
                for d, n in enumerate(plane_out, start=1):
                    slab = _along(slab, d, n, order)
                if axis is not None and order > 0:
                    slab = torch.maximum(torch.minimum(slab, hi_s), lo_s)
                mid[a:a + rows] = slab
        if n_in != n_out:
            # the first axis, in slabs of output rows: nearest slices (the anisotropic axis,
            # order_z 0) or rows of one matrix product
            rows = _rows_per_slab(plane_out, plane_out, chunk_bytes)
            first_order = order if axis is None else order_z
            if first_order == 0:
                kind = "nearest" if axis is not None else "spline0"
                idx = _device_indices(n_in, n_out, kind, volume.device)
                for a in range(0, n_out, rows):
                    dst[a:a + rows] = mid.index_select(0, idx[a:a + rows])
            else:
                w = _device_matrix(n_in, n_out, first_order, volume.device)
                flat = mid.reshape(n_in, -1)
                for a in range(0, n_out, rows):
                    dst[a:a + rows] = (w[a:a + rows] @ flat).view(-1, *plane_out)
        if clip3d is not None:
            out.clamp_(*clip3d)
    return out


def resample_image_torch(image: torch.Tensor, new_shape: Sequence[int],
                         axis: int | None = None, order: int = 3, *, order_z: int = 0,
                         chunk_bytes: int = DEVICE_CHUNK_BYTES) -> torch.Tensor:
    """:func:`resample_image` for a tensor ``(C, X, Y, Z)`` on any device: ``(C, *new_shape)``
    float32 on the same device, one channel at a time (peak: input, output and one channel's
    intermediate; see :func:`resample_volume_torch`)."""
    import torch

    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    new_shape = tuple(int(s) for s in new_shape)
    out = torch.empty((image.shape[0], *new_shape), dtype=torch.float32, device=image.device)
    for c in range(image.shape[0]):
        resample_volume_torch(image[c], new_shape, order, axis, order_z=order_z, out=out[c],
                              chunk_bytes=chunk_bytes)
    return out
