"""nnU-Net v2's preprocessing and inference rules, as small pure functions and one dataclass.

A model trained by nnU-Net v2 expects its inputs prepared exactly as v2 prepared its
training data, and its outputs turned back into a segmentation as v2 does; where nnpipe's
own rules differ (issue 19 lists fourteen places), a v2 model needs v2's. The rules here are
re-derived from nnU-Net v2 2.x (``nnunetv2/preprocessing/resampling/default_resampling.py``,
``preprocessing/cropping/cropping.py``, ``inference/sliding_window_prediction.py``) and
pinned by golden numbers computed once with nnU-Net itself (``tests/v2/test_semantics.py``);
nnU-Net is never imported. The preprocessing rules are nnpipe's own, which follow v2
(:mod:`nnpipe.preprocessing.resample`, :func:`nnpipe.preprocessing.normalize.nonzero_mask`,
:func:`nnpipe.planning.fingerprint.bounding_box`): the names here are thin views of them with
v2's facts (a separate axis forced or not, no lower bound on a shape, the logits' dtype)
passed as data, so the golden numbers pin the one implementation.

Axis convention: arrays are in v2's order, the file's voxel order reversed (SimpleITK's
``(z, y, x)``), then permuted by the plans' ``transpose_forward``; spacings in mm follow the
same order. :class:`V2Semantics` is the data a v2 model carries; the functions read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnpipe.planning.fingerprint import bounding_box as _bounding_box
from nnpipe.preprocessing.normalize import nonzero_mask as _nonzero_mask
from nnpipe.preprocessing.resample import (
    ANISOTROPY_THRESHOLD,
    IMAGE_RESAMPLING,
    Resampling,
    resample_with,
)
from nnpipe.preprocessing.resample import separate_axis as _separate_axis
from nnpipe.preprocessing.resample import target_shape as _target_shape

# nnunetv2.configuration.ANISO_THRESHOLD (nnpipe's own threshold is the same)
ANISO_THRESHOLD = ANISOTROPY_THRESHOLD

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
                  rule: Resampling = IMAGE_RESAMPLING) -> int | None:
    """The axis v2 resamples on its own (order ``rule.order_z``), or None:
    :func:`nnpipe.preprocessing.resample.separate_axis` with the rule's threshold and
    ``force_separate_z`` (v2's ``determine_do_sep_z_and_axis``)."""
    return _separate_axis(spacing, new_spacing, rule.threshold, rule.force_separate_z)


def new_shape(shape: Sequence[int], spacing: Sequence[float],
              new_spacing: Sequence[float]) -> tuple[int, ...]:
    """v2's ``compute_new_shape``: :func:`nnpipe.preprocessing.resample.target_shape`
    without a lower bound (``at_least=0``, as in v2)."""
    return _target_shape(shape, spacing, new_spacing, at_least=0)


def resample(data: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
             new_spacing: Sequence[float], rule: Resampling = IMAGE_RESAMPLING) -> np.ndarray:
    """``data`` ``(C, X, Y, Z)`` resampled to ``shape`` as v2 does
    (:func:`nnpipe.preprocessing.resample.resample_with`: cubic or ``rule.order`` clipped to
    each channel's or slice's range, separate axis by ``rule.order_z``), returned in
    ``data``'s float dtype (v2 resamples its float16 logits into float16; other dtypes give
    float32). Same shape: the input is returned as it is."""
    if data.ndim != len(shape) + 1:
        raise ValueError(f"data {data.shape} must be (C, *spatial) for shape {tuple(shape)}")
    dtype = data.dtype if data.dtype in (np.float16, np.float32) else np.dtype(np.float32)
    if tuple(data.shape[1:]) == tuple(shape):
        return data.astype(dtype, copy=False)
    return resample_with(data, shape, spacing, new_spacing, rule).astype(dtype, copy=False)


# ---------------------------------------------------------------- crop


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """v2's ``create_nonzero_mask``: :func:`nnpipe.preprocessing.normalize.nonzero_mask`
    (voxels nonzero in any channel of ``(C, *spatial)``, holes filled)."""
    return _nonzero_mask(data)


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` per axis of the True voxels (half-open); the whole array if none
    (:func:`nnpipe.planning.fingerprint.bounding_box`)."""
    return _bounding_box(mask)


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
