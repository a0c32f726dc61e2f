"""Sliding-window prediction: tile a whole image, predict each tile, blend the tiles back.

A network trained on patches sees a whole volume as a grid of overlapping patches
("tiles"). Each tile's logits (averaged over the test-time flips) are multiplied by a
blending weight (a Gaussian that trusts the tile centre more than its border, or a constant)
and added into a ``(K, *spatial)`` sum; dividing by the summed weights gives the blended
logits. Softmax or sigmoid come once, after everything linear is done (the average over
flips, tiles, folds and the resampling back to the image's grid), as in nnU-Net v2 2.8.1
(``inference/sliding_window_prediction.py``, ``predict_from_raw_data.py``
``predict_sliding_window_return_logits`` / ``_internal_maybe_mirror_and_predict``).

The same function serves nnU-Net v2 models (:mod:`nnpipe.v2.predict`): their facts are
arguments, not a second copy: the tile weight (v2's Gaussian importance map), the axes
flipped by TTA (the checkpoint's mirror axes) and the accumulators' dtype (float16 in v2).

Shapes: an image is channel-first ``(C, *spatial)`` with 2 or 3 spatial axes; a tile batch is
``(B, C, *patch)``; ``predict`` returns logits ``(B, K, *patch)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TypeVar

import torch
import torch.nn.functional as F

Predict = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]

# Gaussian weights are clamped from below so that a voxel covered only by tile borders
# (image corners) still gets a finite, well-defined average instead of 0 / 0.
MIN_WEIGHT = 1e-3


class Activation(str, Enum):
    """How logits become probabilities: softmax over classes, or sigmoid per region."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


class Blend(str, Enum):
    """How tile predictions are weighted before they are summed."""

    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices (voxels) of the tiles along one axis of length ``size``.

    The target step between tiles is ``patch * (1 - overlap)``. We take the fewest tiles
    whose step does not exceed that target, ``n = ceil((size - patch) / step) + 1``, and then
    spread them evenly from 0 to ``size - patch``, rounded to whole voxels with halves to
    even (``np.round``): nnU-Net v2 2.8.1's ``compute_steps_for_sliding_window``
    (``inference/sliding_window_prediction.py``; ``overlap`` is ``1 - tile_step_size``), so
    nnpipe's tile grid and v2's are the same (issue 19 row 5; rounding halves up gave a
    different grid for e.g. size 109, patch 64). Spreading them evenly makes the overlap
    uniform and at least the requested one, and the last tile ends exactly at the image
    border, so no tile hangs over the edge.
    An axis no longer than the patch gets one tile at 0 (the image is padded up to the patch).
    """
    if size < 1 or patch < 1:
        raise ValueError(f"size and patch must be >= 1 voxel, got size={size}, patch={patch}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [0]
    target_step = patch * (1.0 - overlap)
    n = math.ceil((size - patch) / target_step) + 1
    actual_step = (size - patch) / (n - 1)
    # Python's round, like np.round, takes halves to even (0, 22.5, 45 -> 0, 22, 45)
    return [int(round(i * actual_step)) for i in range(n)]


def tile_grid(shape: Sequence[int], patch: Sequence[int],
              overlap: float) -> list[tuple[slice, ...]]:
    """All tiles of an image of spatial ``shape``: one tuple of slices per tile, C-order.

    ``shape`` must be at least ``patch`` along every axis (pad first); tiles cover every voxel.
    """
    if len(shape) != len(patch):
        raise ValueError(f"shape {tuple(shape)} and patch {tuple(patch)} differ in length")
    for s, p in zip(shape, patch, strict=True):
        if s < p:
            raise ValueError(f"shape {tuple(shape)} is smaller than patch {tuple(patch)}; pad it")
    starts = [tile_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    return [tuple(slice(a, a + p) for a, p in zip(corner, patch, strict=True))
            for corner in itertools.product(*starts)]


def gaussian_weight(patch: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Gaussian blending weight of shape ``patch``: 1 at the centre, >= ``MIN_WEIGHT`` anywhere.

    ``sigma = sigma_scale * patch`` per axis (nnU-Net's 1/8). Peak-normalized to 1. nnpipe's
    own models keep this analytic map, symmetric about ``(p - 1) / 2`` (issue 19 row 9);
    nnU-Net v2 models pass v2's (:func:`nnpipe.v2.semantics.gaussian_importance`, centred at
    ``p // 2``) as ``blend``.
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    weight = torch.ones((), dtype=torch.float64)
    for p in patch:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        sigma = sigma_scale * p
        weight = weight.unsqueeze(-1) * torch.exp(-(x**2) / (2.0 * sigma**2))
    weight = weight / weight.max()
    return weight.clamp_min(MIN_WEIGHT).to(torch.float32)


def blend_weight(patch: Sequence[int], blend: Blend | str = Blend.GAUSSIAN) -> torch.Tensor:
    """The tile weight for ``blend``: :func:`gaussian_weight` or all ones, shape ``patch``."""
    blend = _as_enum(Blend, blend, "blend")
    if blend is Blend.CONSTANT:
        return torch.ones(tuple(patch), dtype=torch.float32)
    return gaussian_weight(patch)


def sliding_window(predict: Predict, image: torch.Tensor, patch: Sequence[int],
                   num_classes: int, overlap: float = 0.5,
                   blend: Blend | str | torch.Tensor = "gaussian", batch_size: int = 2,
                   tta_flips: bool = False, device: torch.device | str | None = None,
                   accumulate_device: torch.device | str | None = None,
                   activation: Activation | str | None = None, *,
                   mirror_axes: Sequence[int] | None = None,
                   accumulate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Blended logits ``(K, *spatial)`` for ``image`` ``(C, *spatial)`` (or, with
    ``activation``, their softmax / sigmoid, taken once after blending).

    ``predict`` maps tiles ``(B, C, *patch)`` on ``device`` (default: the image's) to logits
    ``(B, K, *patch)``; a list or tuple (deep supervision) contributes its first element.
    ``blend``: :class:`Blend` by name, or the tile weight itself (a ``patch``-shaped tensor,
    e.g. v2's :func:`nnpipe.v2.semantics.gaussian_importance`).
    Sums are kept on ``accumulate_device`` (default: the image's; pass ``"cpu"`` when a
    whole-volume ``(K, *spatial)`` sum does not fit beside the model on the GPU) in
    ``accumulate_dtype`` (float32; nnU-Net v2 2.8.1 sums in float16).
    With ``tta_flips`` every tile is also predicted under every combination of flips of
    ``mirror_axes`` (axes of the patch, 0-based; default all of them: ``2**dim`` passes)
    and the flipped-back logits are averaged, as v2's ``_internal_maybe_mirror_and_predict``.
    """
    _check_image(image, patch, "image (C, *spatial)", extra_axes=1)
    out = _sliding_window_many(predict, image.unsqueeze(0), patch, num_classes, overlap,
                               blend, batch_size, tta_flips, device, accumulate_device,
                               activation, mirror_axes, accumulate_dtype)
    return out[0]


def predict_volume_2d(predict: Predict, image: torch.Tensor, slice_axis: int | None,
                      patch: Sequence[int], num_classes: int, overlap: float = 0.5,
                      blend: Blend | str | torch.Tensor = "gaussian", batch_size: int = 2,
                      tta_flips: bool = False, device: torch.device | str | None = None,
                      accumulate_device: torch.device | str | None = None,
                      activation: Activation | str | None = None, *,
                      mirror_axes: Sequence[int] | None = None,
                      accumulate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Apply a 2D model slice by slice: image ``(C, X, Y, Z)`` -> logits ``(K, X, Y, Z)``.

    ``slice_axis`` (0, 1 or 2; None, a plan's when it has none, raises) is the voxel axis
    sliced along (nnU-Net v2: 0, the first transposed axis); ``patch`` is the 2D patch over
    the two other axes in increasing axis order. Tiles of different slices share forward
    passes (``batch_size`` tiles each); slice by slice, then tile by tile in C order, as v2's
    ``_internal_get_sliding_window_slicers``. Other arguments as in :func:`sliding_window`.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if len(patch) != 2:
        raise ValueError(f"patch must have 2 sizes for a 2D model, got {tuple(patch)}")
    slices = image.movedim(1 + slice_axis, 0)  # (S, C, a, b)
    out = _sliding_window_many(predict, slices, patch, num_classes, overlap, blend,
                               batch_size, tta_flips, device, accumulate_device, activation,
                               mirror_axes, accumulate_dtype)
    return out.movedim(0, 1 + slice_axis)  # (S, K, a, b) -> (K, X, Y, Z)


def apply_activation(logits: torch.Tensor, activation: Activation | str) -> torch.Tensor:
    """Softmax over the class axis 0 of ``logits`` ``(K, *spatial)``, or a sigmoid per
    region, in float32 (v2's ``LabelManager.apply_inference_nonlin``)."""
    if _as_enum(Activation, activation, "activation") is Activation.SIGMOID:
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), 0)


def _sliding_window_many(predict: Predict, images: torch.Tensor, patch: Sequence[int],
                         num_classes: int, overlap: float, blend: Blend | str | torch.Tensor,
                         batch_size: int, tta_flips: bool,
                         device: torch.device | str | None,
                         accumulate_device: torch.device | str | None,
                         activation: Activation | str | None = None,
                         mirror_axes: Sequence[int] | None = None,
                         accumulate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sliding window over ``N`` same-shape images ``(N, C, *spatial)`` -> ``(N, K, *spatial)``."""
    _check_image(images, patch, "images (N, C, *spatial)", extra_axes=2)
    if num_classes < 1 or batch_size < 1:
        raise ValueError(f"num_classes and batch_size must be >= 1, "
                         f"got num_classes={num_classes}, batch_size={batch_size}")
    if activation is not None:
        _as_enum(Activation, activation, "activation")
    flips = _flips(len(patch), mirror_axes if tta_flips else ())
    device = torch.device(device) if device is not None else images.device
    acc_device = torch.device(accumulate_device) if accumulate_device else images.device
    padded, crop = _pad_to_patch(images, patch)
    spatial = tuple(padded.shape[2:])
    tiles = tile_grid(spatial, patch, overlap)
    weight = _tile_weight(patch, blend, accumulate_dtype).to(device)
    weight_sum = torch.zeros(spatial, dtype=accumulate_dtype, device=acc_device)
    acc_weight = weight.to(acc_device)
    for tile in tiles:  # the same grid for every image, so one weight sum serves all
        weight_sum[tile] += acc_weight
    sums = torch.zeros((images.shape[0], num_classes, *spatial), dtype=accumulate_dtype,
                       device=acc_device)
    jobs = [(n, tile) for n in range(images.shape[0]) for tile in tiles]
    with torch.no_grad():
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            batch = torch.stack([padded[_at(n, tile)] for n, tile in chunk]).to(device)
            # float32 logits times the weight; rounded to accumulate_dtype when added
            logits = (_tile_logits(predict, batch, num_classes, flips) * weight).to(acc_device)
            for (n, tile), p in zip(chunk, logits, strict=True):
                sums[_at(n, tile)] += p
    sums /= weight_sum  # in place: a whole-volume (N, K, *spatial) copy is the largest array
    out = sums[(slice(None), slice(None), *crop)]
    if activation is None:
        return out
    return apply_activation(out.movedim(1, 0), activation).movedim(0, 1)


def _tile_weight(patch: Sequence[int], blend: Blend | str | torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """The tile weight in ``dtype``: :func:`blend_weight` by name, or ``blend`` itself."""
    if isinstance(blend, torch.Tensor):
        if tuple(blend.shape) != tuple(patch):
            raise ValueError(f"a tile weight of shape {tuple(blend.shape)} does not fit patch "
                             f"{tuple(patch)}")
        return blend.to(dtype)
    return blend_weight(patch, blend).to(dtype)


def _flips(dim: int, mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Tile-batch axes flipped per forward pass: none, then every non-empty combination of
    ``mirror_axes`` (patch axes, default all ``dim``) by size, shifted past batch and
    channel: v2's order (``_internal_maybe_mirror_and_predict``), so sums add up alike."""
    axes = list(range(dim)) if mirror_axes is None else list(mirror_axes)
    if any(not 0 <= a < dim for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror_axes must be distinct axes of a {dim}D patch, got {axes}")
    shifted = [a + 2 for a in axes]
    return [c for r in range(len(shifted) + 1) for c in itertools.combinations(shifted, r)]


def _at(n: int, tile: tuple[slice, ...]) -> tuple[int | slice, ...]:
    """The index of ``tile`` of image ``n``, every channel: ``[n, :, *tile]``."""
    return (n, slice(None), *tile)


def _tile_logits(predict: Predict, batch: torch.Tensor, num_classes: int,
                 flips: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Float32 logits ``(B, K, *patch)`` of one tile batch, averaged over ``flips``: summed in
    the order given (no flip first), divided once."""
    total = None
    for axes in flips:
        logits = predict(batch.flip(axes) if axes else batch)
        if not isinstance(logits, torch.Tensor):  # deep supervision: full resolution first
            logits = logits[0]
        expected = (batch.shape[0], num_classes, *batch.shape[2:])
        if tuple(logits.shape) != expected:
            raise ValueError(f"predict returned shape {tuple(logits.shape)}, expected {expected}"
                             f" (B, num_classes, *patch)")
        logits = logits.float()
        if axes:
            logits = logits.flip(axes)
        total = logits if total is None else total + logits
    assert total is not None  # flips is never empty
    return total / len(flips) if len(flips) > 1 else total


def _pad_to_patch(images: torch.Tensor,
                  patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad ``(N, C, *spatial)`` centrally up to ``patch``; return the crop back."""
    pad: list[tuple[int, int]] = []
    crop: list[slice] = []
    for size, p in zip(images.shape[2:], patch, strict=True):
        before = max(p - size, 0) // 2
        pad.append((before, max(p - size, 0) - before))
        crop.append(slice(before, before + size))
    if not any(b or a for b, a in pad):
        return images, tuple(crop)
    flat = [v for b_a in reversed(pad) for v in b_a]  # F.pad wants the last axis first
    return F.pad(images, flat, mode="constant", value=0.0), tuple(crop)


def _check_image(image: torch.Tensor, patch: Sequence[int], what: str, extra_axes: int) -> None:
    if len(patch) not in (2, 3):
        raise ValueError(f"patch must have 2 or 3 sizes, got {tuple(patch)}")
    if any(p < 1 for p in patch):
        raise ValueError(f"patch sizes must be >= 1, got {tuple(patch)}")
    if image.ndim != len(patch) + extra_axes:
        raise ValueError(f"{what} must have {len(patch)} spatial axes for patch "
                         f"{tuple(patch)}, got shape {tuple(image.shape)}")


E = TypeVar("E", bound=Enum)


def _as_enum(kind: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of the closed option set ``kind``; a clear error otherwise."""
    try:
        return kind(value)
    except ValueError:
        options = ", ".join(m.value for m in kind)
        raise ValueError(f"{what} must be one of {options}, got {value!r}") from None
