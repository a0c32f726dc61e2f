"""nnU-Net v2's preprocessing and inference rules, as small pure functions and one dataclass.

A model trained by nnU-Net v2 expects its inputs prepared exactly as v2 prepared its
training data, and its outputs turned back into a segmentation as v2 does; where nnpipe's
own rules differ (issue 19 lists fourteen places), a v2 model needs v2's. The rules here are
re-derived from nnU-Net v2 2.x (``nnunetv2/preprocessing/resampling/default_resampling.py``,
``preprocessing/cropping/cropping.py``, ``inference/sliding_window_prediction.py``) and
pinned by golden numbers computed once with nnU-Net itself (``tests/v2/test_semantics.py``);
nnU-Net is never imported.

Axis convention: arrays are in v2's order, the file's voxel order reversed (SimpleITK's
``(z, y, x)``), then permuted by the plans' ``transpose_forward``; spacings in mm follow the
same order. :class:`V2Semantics` is the data a v2 model carries; the functions read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# nnunetv2.configuration.ANISO_THRESHOLD: an axis more than 3x coarser than the finest is
# resampled on its own (order 0), since interpolating across thick slices invents anatomy.
ANISO_THRESHOLD = 3.0

# v2 normalisation class names -> nnpipe scheme names (nnpipe.preprocessing.normalize);
# ZScoreNormalization is ``zscore_nonzero`` when the plans set use_mask_for_norm for the
# channel, else ``zscore``.
NORMALIZATION_SCHEMES: dict[str, str] = {
    "CTNormalization": "ct",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale_0_1",
    "RGBTo01Normalization": "rgb_0_1",
}
ZSCORE = "ZScoreNormalization"


@dataclass(frozen=True)
class Resampling:
    """One of v2's resampling calls: spline ``order`` in-plane (and everywhere when no axis
    is separate), ``order_z`` along a separate axis; ``force_separate_z`` None lets
    :func:`separate_axis` decide, True/False forces it."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None
    threshold: float = ANISO_THRESHOLD


@dataclass(frozen=True)
class V2Semantics:
    """What makes a v2 model's prediction v2's: read by :mod:`nnpipe.v2.predict`.

    Spacings are mm in v2's transposed axis order; ``patch_size`` and ``spacing`` have 2
    entries for a 2D configuration (the first transposed axis is then sliced along).
    """

    configuration: str
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    spacing: tuple[float, ...]  # target spacing (mm), len == dim
    patch_size: tuple[int, ...]  # voxels, len == dim
    normalization: tuple[str, ...]  # nnpipe scheme names, one per channel
    intensity: tuple[dict[str, float], ...]  # v2 foreground intensity properties per channel
    data_resampling: Resampling
    probabilities_resampling: Resampling
    mirror_axes: tuple[int, ...] | None  # network axes flipped by TTA (None: no TTA)
    labels: tuple[int, ...]  # label values, one per network output (label mode)
    regions: tuple[tuple[int, ...], ...] | None  # region mode: labels in each region
    regions_class_order: tuple[int, ...] | None  # value written where each region is > 0.5
    ignore_label: int | None
    file_ending: str
    reader: str  # v2 image reader/writer class (SimpleITKIO)
    tile_step_size: float = 0.5  # v2's default, a fraction of the patch
    # v2 sums weighted logits and weights in float16 (predict_from_raw_data's
    # predicted_logits / n_predictions): the Gaussian's tiny border weights are rounded
    # there, which moves logits by up to ~0.5 where only tile borders overlap
    accumulate_dtype: str = "float16"

    @property
    def dim(self) -> int:
        return len(self.patch_size)

    @property
    def num_outputs(self) -> int:
        return len(self.regions) if self.regions is not None else len(self.labels)

    @property
    def output_dtype(self) -> type[np.unsignedinteger]:
        """uint8 unless 255 or more foreground labels (v2's export_prediction rule)."""
        foreground = [v for v in self.labels if v != 0]
        return np.uint8 if len(foreground) < 255 else np.uint16


# ---------------------------------------------------------------- resampling rules


def separate_axis(spacing: Sequence[float], new_spacing: Sequence[float],
                  rule: Resampling = Resampling()) -> int | None:
    """The axis v2 resamples on its own (order ``rule.order_z``), or None.

    The current spacing decides first, then the target spacing: anisotropic when
    ``max / min > threshold``; the axis is the one with the maximum spacing, and when two or
    three axes tie for the maximum there is no separate axis (v2's
    ``determine_do_sep_z_and_axis``; nnpipe's own rule picks the last of them).
    ``force_separate_z=True`` takes the coarsest axis of the current spacing.
    """
    if rule.force_separate_z is False:
        return None
    if rule.force_separate_z:
        chosen: Sequence[float] | None = spacing
    elif max(spacing) / min(spacing) > rule.threshold:
        chosen = spacing
    elif max(new_spacing) / min(new_spacing) > rule.threshold:
        chosen = new_spacing
    else:
        chosen = None
    if chosen is None:
        return None
    top = max(chosen)
    axes = [i for i, s in enumerate(chosen) if top / s == 1]
    return axes[0] if len(axes) == 1 else None


def new_shape(shape: Sequence[int], spacing: Sequence[float],
              new_spacing: Sequence[float]) -> tuple[int, ...]:
    """``int(round(spacing / new_spacing * shape))`` per axis (Python's round: halves to
    even), v2's ``compute_new_shape``; no lower bound of 1, as in v2."""
    if not len(shape) == len(spacing) == len(new_spacing):
        raise ValueError(f"shape {tuple(shape)}, spacing {tuple(spacing)} and new spacing "
                         f"{tuple(new_spacing)} must have the same length")
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, new_spacing, shape,
                                                          strict=True))


def _resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """A spline resize with edge replication and grid-aligned edges, the result clipped to
    the input's range (what v2 gets from ``skimage.transform.resize(mode='edge',
    anti_aliasing=False)``): cubic overshoot never leaves ``[min, max]`` of the input."""
    zoom = np.asarray(shape, dtype=float) / np.asarray(image.shape, dtype=float)
    out = ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)
    if tuple(out.shape) != tuple(shape):  # zoom rounds in*factor; never observed
        raise ValueError(f"resize to {tuple(shape)} gave {out.shape}")
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def resample(data: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
             new_spacing: Sequence[float], rule: Resampling = Resampling()) -> np.ndarray:
    """``data`` ``(C, *spatial)`` resampled to ``shape``, as v2 does, in ``data``'s float
    dtype (v2 resamples its float16 logits into float16; other dtypes give float32).

    Without a separate axis (:func:`separate_axis`) each channel is resized in 3D with
    spline ``rule.order``, clipped to the channel's range. With one, every slice across it
    is resized in 2D (clipped to the slice's range), then the separate axis is resampled
    with ``rule.order_z`` (order 0: nearest slice, sampled at ``(j + 0.5) * n_in / n_out -
    0.5``, v2's map_coordinates grid). Computed in float64, as v2 does. Same shape: the
    input is returned as it is.
    """
    if data.ndim != len(shape) + 1:
        raise ValueError(f"data {data.shape} must be (C, *spatial) for shape {tuple(shape)}")
    dtype = data.dtype if data.dtype in (np.float16, np.float32) else np.dtype(np.float32)
    if tuple(data.shape[1:]) == tuple(shape):
        return data.astype(dtype, copy=False)
    axis = separate_axis(spacing, new_spacing, rule)
    out = np.zeros((data.shape[0], *shape), dtype=dtype)
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64)
        if axis is None:
            out[c] = _resize(channel, shape, rule.order)
            continue
        inplane = [s for i, s in enumerate(shape) if i != axis]
        moved = np.moveaxis(channel, axis, 0)
        slices = np.stack([_resize(s, inplane, rule.order) for s in moved])
        slices = np.moveaxis(slices, 0, axis)
        if slices.shape[axis] == shape[axis]:
            out[c] = slices
            continue
        coords = np.meshgrid(*[(np.arange(n) + 0.5) * (m / n) - 0.5
                               for n, m in zip(shape, slices.shape, strict=True)],
                             indexing="ij", sparse=False)
        out[c] = ndimage.map_coordinates(slices, np.stack(coords), order=rule.order_z,
                                         mode="nearest")
    return out


# ---------------------------------------------------------------- crop


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel of ``data`` ``(C, *spatial)``, holes filled (v2's
    ``create_nonzero_mask``: ``binary_fill_holes``)."""
    return ndimage.binary_fill_holes(np.any(data != 0, axis=0))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` per axis of the True voxels (half-open); the whole array if none."""
    if not mask.any():  # v2 would fail here; an empty image is predicted uncropped
        return tuple((0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


# ---------------------------------------------------------------- sliding window
# Tile starts, zero padding to the patch, flips and accumulation are nnpipe's own sliding
# window (nnpipe.inference.sliding_window), whose rules are v2's; only the tile weight
# differs for nnpipe's own models (issue 19 row 9), so v2's is here, passed to it as data.


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8,
                        value_scaling_factor: float = 10.0,
                        dtype: type[np.floating] = np.float32) -> np.ndarray:
    """v2's tile weight, ``patch``-shaped ``dtype``: a unit impulse at ``patch // 2``
    blurred by a Gaussian of sigma ``patch * sigma_scale`` per axis (zero padding outside),
    scaled to peak ``value_scaling_factor``, cast to ``dtype``, and then zeros (values below
    the dtype's smallest subnormal among them) replaced by the smallest nonzero weight. v2
    predicts with ``dtype`` float16 (its accumulators are float16)."""
    impulse = np.zeros(tuple(patch))
    impulse[tuple(p // 2 for p in patch)] = 1
    weight = ndimage.gaussian_filter(impulse, [p * sigma_scale for p in patch], 0,
                                     mode="constant", cval=0)
    weight /= weight.max() / value_scaling_factor
    weight = weight.astype(dtype)
    zero = weight == 0
    if zero.any():
        weight[zero] = weight[~zero].min()
    return weight
