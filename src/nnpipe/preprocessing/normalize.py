"""Intensity normalization per channel, as the plan's :class:`ChannelNorm` says.

* ``zscore_nonzero`` (MRI): intensities have no absolute meaning, so each image is
  standardized with its own mean/std over the voxels inside the nonzero mask (the head, not
  the air around it); voxels outside the mask become 0.
* ``ct``: Hounsfield units are absolute, so every image is clipped to the training set's
  foreground 0.5/99.5 percentiles and standardized with the training set's foreground
  mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nnpipe.planning.plan import ChannelNorm

# Below this std a channel is treated as constant (avoids dividing by ~0).
MIN_STD = 1e-8


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel of ``image`` ``(C, X, Y, Z)``: bool ``(X, Y, Z)``."""
    return np.any(image != 0, axis=0)


def _zscore_nonzero(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    inside = channel[mask]
    out = np.zeros(channel.shape, dtype=np.float32)
    if inside.size == 0:
        return out
    mean = float(inside.mean(dtype=np.float64))
    std = float(inside.std(dtype=np.float64))
    out[mask] = (inside - mean) / max(std, MIN_STD)
    return out


def _ct(channel: np.ndarray, norm: ChannelNorm, mask: np.ndarray) -> np.ndarray:
    low, high, mean, std = norm.clip_low, norm.clip_high, norm.mean, norm.std
    if low is None or high is None or mean is None or std is None:
        raise ValueError(f"CT normalization needs clip_low, clip_high, mean and std, got {norm}")
    clipped = np.clip(channel, low, high)
    return ((clipped - mean) / max(std, MIN_STD)).astype(np.float32)


NORMALIZERS: dict[str, Callable[[np.ndarray, ChannelNorm, np.ndarray], np.ndarray]] = {
    "zscore_nonzero": _zscore_nonzero,
    "ct": _ct,
}


def normalize(image: np.ndarray, norms: Sequence[ChannelNorm],
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalize ``image`` ``(C, X, Y, Z)`` channel by channel; float32 out.

    ``mask`` (bool ``(X, Y, Z)``) is the nonzero mask for ``zscore_nonzero``; by default it is
    computed from ``image`` itself. The pipeline passes the mask of the image before
    resampling, resampled with nearest neighbour, since spline overshoot makes "nonzero"
    meaningless after resampling.
    """
    if image.ndim != 4 or image.shape[0] != len(norms):
        raise ValueError(f"image of shape {image.shape} does not match {len(norms)} channel "
                         f"norm(s)")
    if mask is None:
        mask = nonzero_mask(image)
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[1:]}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, (channel, norm) in enumerate(zip(image, norms, strict=True)):
        if norm.scheme not in NORMALIZERS:
            raise ValueError(f"unknown normalization scheme {norm.scheme!r} for channel {c}; "
                             f"known: {sorted(NORMALIZERS)}")
        out[c] = NORMALIZERS[norm.scheme](channel, norm, mask)
    return out
