"""Intensity normalization per channel, as the plan's :class:`ChannelNorm` says.

The schemes (:data:`NORMALIZERS`, one function per name):

* ``zscore_nonzero`` (MRI, nnpipe's default): intensities have no absolute meaning, so each
  image is standardized with its own mean/std over the voxels inside the nonzero mask (the
  head, not the air around it); voxels outside the mask become 0.
* ``zscore``: the same over every voxel of the image, no mask (nnU-Net v2's
  ``ZScoreNormalization`` with ``use_mask_for_norm`` false).
* ``ct``: Hounsfield units are absolute, so every image is clipped to the training set's
  foreground 0.5/99.5 percentiles and standardized with the training set's foreground
  mean/std.
* ``none``: values kept as they are (float32), for channels that already mean something on
  an absolute scale (a probability map, a previous stage's output).
* ``rescale_0_1``: ``(x - min) / (max - min)`` per image, for intensities whose gain differs
  from image to image (microscopy).
* ``rgb_0_1``: ``x / 255`` for 8-bit colour channels; values outside ``[0, 255]`` are refused.

Which scheme a channel gets follows its name in dataset.json the way nnU-Net v2 reads it;
planning decides it (:mod:`nnpipe.planning.channels`) and records it in the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from nnpipe.planning.plan import ChannelNorm

# Below this std (or value range) a channel is treated as constant (avoids dividing by ~0);
# nnU-Net v2's eps for float32.
MIN_STD = 1e-8

# The largest value of an 8-bit colour channel (rgb_0_1 divides by it).
RGB_MAX = 255.0

# Value ranges a scheme requires of its input (checked before resampling, see
# :func:`check_value_ranges`).
VALUE_RANGES: dict[str, tuple[float, float]] = {"rgb_0_1": (0.0, RGB_MAX)}


# Schemes that standardize inside the nonzero mask (the others never read it).
MASKED_SCHEMES = frozenset({"zscore_nonzero"})


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel of ``image`` ``(C, *spatial)``, holes filled: bool
    ``spatial``. A zero inside the body (dark CSF, clipped values) is not background.

    Source: nnU-Net v2 2.8.1 ``preprocessing/cropping/cropping.py`` ``create_nonzero_mask``
    (``scipy.ndimage.binary_fill_holes`` of the union). Filling never moves the bounding box
    (a hole touches no face of it), so the crop box is the box of the unfilled union.
    """
    return ndimage.binary_fill_holes(np.any(image != 0, axis=0))


def needs_mask(norms: Sequence[ChannelNorm]) -> bool:
    """Whether any channel's scheme reads the nonzero mask (:data:`MASKED_SCHEMES`)."""
    return any(n.scheme in MASKED_SCHEMES for n in norms)


def _zscore_nonzero(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    inside = channel[mask]
    out = np.zeros(channel.shape, dtype=np.float32)
    if inside.size == 0:
        return out
    mean = float(inside.mean(dtype=np.float64))
    std = float(inside.std(dtype=np.float64))
    out[mask] = (inside - mean) / max(std, MIN_STD)
    return out


def _zscore(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    mean = float(channel.mean(dtype=np.float64))
    std = float(channel.std(dtype=np.float64))
    return ((channel - mean) / max(std, MIN_STD)).astype(np.float32)


def _ct(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    low, high, mean, std = norm.clip_low, norm.clip_high, norm.mean, norm.std
    if low is None or high is None or mean is None or std is None:
        raise ValueError(f"CT normalization needs clip_low, clip_high, mean and std, got {norm}")
    clipped = np.clip(channel, low, high)
    return ((clipped - mean) / max(std, MIN_STD)).astype(np.float32)


def _none(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    return channel.astype(np.float32)


def _rescale_0_1(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    low = float(channel.min())
    span = float(channel.max()) - low
    return ((channel - low) / max(span, MIN_STD)).astype(np.float32)


def _rgb_0_1(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    low, high = float(channel.min()), float(channel.max())
    if low < 0.0 or high > RGB_MAX:
        raise ValueError(f"rgb_0_1 (channel name rgb_to_0_1) needs 8-bit colour values in "
                         f"[0, {RGB_MAX:g}], got values in [{low:g}, {high:g}]; name the "
                         f"channel otherwise (z-score) or 'rescale_to_0_1'")
    return (channel / RGB_MAX).astype(np.float32)


NORMALIZERS: dict[str, Callable[[np.ndarray, ChannelNorm, np.ndarray], np.ndarray]] = {
    "zscore_nonzero": _zscore_nonzero,
    "zscore": _zscore,
    "ct": _ct,
    "none": _none,
    "rescale_0_1": _rescale_0_1,
    "rgb_0_1": _rgb_0_1,
}


def check_value_ranges(image: np.ndarray, norms: Sequence[ChannelNorm]) -> None:
    """Raise ``ValueError`` naming the channel if a channel of ``image`` ``(C, X, Y, Z)`` holds
    values its scheme refuses (:data:`VALUE_RANGES`; ``rgb_0_1``: outside ``[0, 255]``).

    The pipeline checks the image as read; resampling then stays inside each channel's range
    (cubic clipped, :mod:`nnpipe.preprocessing.resample`).
    """
    for c, norm in enumerate(norms):
        if norm.scheme in VALUE_RANGES:
            lo, hi = VALUE_RANGES[norm.scheme]
            cmin, cmax = float(image[c].min()), float(image[c].max())
            if cmin < lo or cmax > hi:
                name = f" ({norm.channel!r})" if norm.channel else ""
                raise ValueError(f"channel {c}{name} is normalized with {norm.scheme!r}, which "
                                 f"needs values in [{lo:g}, {hi:g}]; it holds values in "
                                 f"[{cmin:g}, {cmax:g}]")


def normalize(image: np.ndarray, norms: Sequence[ChannelNorm],
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalize ``image`` ``(C, X, Y, Z)`` channel by channel; float32 out.

    ``mask`` (bool ``(X, Y, Z)``) is the nonzero mask for ``zscore_nonzero``; by default it is
    computed from ``image`` itself (:func:`nonzero_mask`, holes filled) when a channel needs
    it. The pipeline normalizes the cropped image on its original grid, then resamples (nnU-Net
    v2 2.8.1 ``default_preprocessor.run_case_npy``: "normalization MUST happen before
    resampling"), so the mask always fits the image it standardizes. Raises ``ValueError``
    for an unknown scheme or values a scheme refuses (``rgb_0_1``).
    """
    if image.ndim != 4 or image.shape[0] != len(norms):
        raise ValueError(f"image of shape {image.shape} does not match {len(norms)} channel "
                         f"norm(s)")
    if mask is None:
        mask = nonzero_mask(image) if needs_mask(norms) else np.ones(image.shape[1:], bool)
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[1:]}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, (channel, norm) in enumerate(zip(image, norms, strict=True)):
        if norm.scheme not in NORMALIZERS:
            raise ValueError(f"unknown normalization scheme {norm.scheme!r} for channel {c}; "
                             f"known: {sorted(NORMALIZERS)}")
        out[c] = NORMALIZERS[norm.scheme](channel, norm, mask)
    return out
