"""Random corruption of a cascade stage's previous-stage segmentation during training.

The full-resolution stage of the cascade sees the low-resolution stage's segmentation as
one-hot input channels. Trained on those channels as they are, it learns to copy them, and at
prediction time it inherits every error of the low-resolution stage. nnU-Net therefore
corrupts them at random while training (``get_training_transforms`` of nnU-Net v2's
``nnUNetTrainer``, cascade branch; the probabilities below are its values):

* with probability :data:`MORPHOLOGY_PROB` per sample, every class channel, in random order,
  gets one of dilation, erosion, opening or closing with a ball of a random integer radius in
  :data:`MORPHOLOGY_RADIUS` voxels; voxels a class gains are taken from the other classes, so
  the channels stay one-hot (or all zero = background);
* with probability :data:`REMOVE_COMPONENT_PROB` per sample, every class channel loses one
  random connected component among those covering at most
  :data:`REMOVE_COMPONENT_MAX_FRACTION` of the patch (the voxels become background).

Written for nnpipe (not nnU-Net's code): balls are Euclidean in voxels, and the morphology
runs through exact Euclidean distance transforms (``scipy.ndimage.distance_transform_edt``)
on the class's bounding box grown by the radius, which costs the same for every radius,
where a structuring-element erosion costs the ball's volume per voxel. The patch border is not
an object border: nothing is eroded from it (nnU-Net's ``binary_erosion`` erodes from it).
On a 2D patch (a size-1 axis) the balls are discs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MORPHOLOGY_PROB = 0.4
MORPHOLOGY_RADIUS = (1, 8)  # voxels, both ends included
REMOVE_COMPONENT_PROB = 0.2
REMOVE_COMPONENT_MAX_FRACTION = 0.15
OPERATIONS = ("dilation", "erosion", "opening", "closing")


def perturb_previous(onehot: np.ndarray, rng: np.random.Generator) -> None:
    """Corrupt one sample's previous-stage channels in place, as the module docstring says.

    ``onehot`` is ``(K - 1, X, Y, Z)`` (a size-1 axis for a 2D patch) of 0/1 values, one
    channel per foreground class, at most one 1 per voxel; any float or bool dtype. The
    number of values drawn from ``rng`` depends only on ``K`` and the draws themselves, never
    on the channels' content.
    """
    classes = onehot.shape[0]
    if rng.random() < MORPHOLOGY_PROB:
        low, high = MORPHOLOGY_RADIUS
        for k in rng.permutation(classes):
            operation = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
            radius = int(rng.integers(low, high + 1))
            mask = onehot[k] > 0.5
            changed = morphology(mask, operation, radius)
            gained = changed & ~mask
            if gained.any():
                onehot[:, gained] = 0
            onehot[k] = changed
    if rng.random() < REMOVE_COMPONENT_PROB:
        limit = REMOVE_COMPONENT_MAX_FRACTION * onehot[0].size
        for k in range(classes):
            u = rng.random()  # drawn for every class, used only where there is a candidate
            labels, count = ndimage.label(onehot[k] > 0.5)
            if count == 0:
                continue
            sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
            candidates = np.flatnonzero(sizes <= limit) + 1
            if candidates.size:
                onehot[k][labels == candidates[int(u * candidates.size)]] = 0


def morphology(mask: np.ndarray, operation: str, radius: int) -> np.ndarray:
    """``mask`` after ``operation`` (one of :data:`OPERATIONS`) with a Euclidean ball of
    ``radius`` voxels: a new bool array of the same shape. ``ValueError`` for another name."""
    if operation == "dilation":
        return _dilate(mask, radius)
    if operation == "erosion":
        return _erode(mask, radius)
    if operation == "opening":
        return _dilate(_erode(mask, radius), radius)
    if operation == "closing":
        return _erode(_dilate(mask, radius), radius)
    raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Voxels within ``radius`` of ``mask``: distance to the nearest mask voxel <= radius."""
    out = np.zeros(mask.shape, dtype=bool)
    box = _grown_box(mask, radius)
    if box is None:
        return out
    out[box] = ndimage.distance_transform_edt(~mask[box]) <= radius
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Voxels whose ball of ``radius`` lies in ``mask`` (or outside the array): distance to
    the nearest background voxel > radius."""
    out = np.zeros(mask.shape, dtype=bool)
    box = _grown_box(mask, 1)
    if box is None:
        return out
    # the box grown by one keeps the background around the mask; where the mask touches the
    # array's edge the box ends there, and beyond it counts as neither (no erosion from it)
    inside = mask[box]
    if inside.all():
        out[box] = True
        return out
    out[box] = ndimage.distance_transform_edt(inside) > radius
    return out


def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                 for s, n in zip(found[0], mask.shape, strict=True))
