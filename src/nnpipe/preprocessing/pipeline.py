"""Preprocess cases for a plan, and map predictions back to the original grid.

Per case: crop to the box of nonzero voxels (air around the body carries no information),
grown to hold every labelled voxel, or no crop where the plan says so (training labels beyond
the nonzero box: :attr:`nnpipe.planning.plan.Plan.crop_to_nonzero`), normalize on that grid
(the mask: the filled nonzero mask), then resample to the plan's target spacing (cubic,
clipped to the input's range) -- nnU-Net v2's order and rules
(:func:`crop_normalize_resample`). :class:`CaseMeta` records every step so
that :func:`restore_logits` and :func:`restore_labels` can undo them exactly: the
prediction ends in the original voxel grid and keeps the original affine.

Arrays are in the canonical voxel order the reader (:mod:`nnpipe.datasets.layout`) gives; the
affine in :class:`CaseMeta` is that canonical grid's. On disk (``preprocess_dataset``):
``<case>.npy`` (float32 ``(C, X', Y', Z')``), ``<case>_seg.npy`` (uint8 class indices
``(X', Y', Z')``, :class:`nnpipe.labels.LabelTable`), both uncompressed so the loader can memory-map
them, and last ``manifest.json``, whose presence means the folder is complete; it records
:data:`PREPROCESSING_VERSION`, the version of these rules.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import numpy as np

from nnpipe.datasets.layout import Case, Dataset, read_image, read_label
from nnpipe.errors import DataError
from nnpipe.geometry import spacing_of
from nnpipe.io import save_npy, write_json
from nnpipe.planning.fingerprint import Bbox, crop_to_nonzero
from nnpipe.planning.plan import PREPROCESSING_VERSION, ChannelNorm, Plan
from nnpipe.preprocessing.normalize import (
    MIN_STD,
    VALUE_RANGES,
    check_value_ranges,
    needs_mask,
    nonzero_mask,
    normalize,
)
from nnpipe.preprocessing.parallel import GB, estimate_case_bytes, imap_bounded
from nnpipe.preprocessing.resample import (
    DEVICE_CHUNK_BYTES,
    IMAGE_RESAMPLING,
    Resampling,
    resample_image,
    resample_image_torch,
    resample_labels,
    resample_volume,
    resample_volume_torch,
    resample_with,
    separate_axis,
    target_shape,
)
from nnpipe.progress import log

if TYPE_CHECKING:
    import torch

# Foreground voxels remembered per class for foreground-biased patch sampling.
MAX_CLASS_LOCATIONS = 1000

Shape3 = tuple[int, int, int]
Spacing3 = tuple[float, float, float]


@dataclass(frozen=True)
class CaseMeta:
    """Geometry of one preprocessed case. Shapes in voxels (X, Y, Z), spacings in mm."""

    case_id: str
    original_shape: Shape3
    affine: tuple[tuple[float, ...], ...]  # 4x4, of the original image
    original_spacing: Spacing3
    bbox: Bbox  # half-open nonzero box in the original grid
    cropped_shape: Shape3
    target_spacing: Spacing3  # 2D plans: the slice axis keeps the case's own spacing
    resampled_shape: Shape3
    # class value -> up to MAX_CLASS_LOCATIONS voxel coordinates (x, y, z) in the resampled grid
    class_locations: dict[int, tuple[Shape3, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "original_shape": list(self.original_shape),
            "affine": [list(row) for row in self.affine],
            "original_spacing": list(self.original_spacing),
            "bbox": [list(b) for b in self.bbox],
            "cropped_shape": list(self.cropped_shape),
            "target_spacing": list(self.target_spacing),
            "resampled_shape": list(self.resampled_shape),
            "class_locations": {str(k): [list(v) for v in locs]
                                for k, locs in self.class_locations.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseMeta:
        return cls(
            case_id=str(d["case_id"]),
            original_shape=_int3(d["original_shape"]),
            affine=tuple(tuple(float(v) for v in row) for row in d["affine"]),
            original_spacing=_float3(d["original_spacing"]),
            bbox=_bbox3(d["bbox"]),
            cropped_shape=_int3(d["cropped_shape"]),
            target_spacing=_float3(d["target_spacing"]),
            resampled_shape=_int3(d["resampled_shape"]),
            class_locations={int(k): tuple(_int3(v) for v in locs)
                             for k, locs in d.get("class_locations", {}).items()},
        )

    @property
    def affine_array(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)


def _int3(v: Sequence[Any]) -> Shape3:
    return (int(v[0]), int(v[1]), int(v[2]))


def _float3(v: Sequence[Any]) -> Spacing3:
    return (float(v[0]), float(v[1]), float(v[2]))


def _bbox3(v: Sequence[Sequence[Any]]) -> Bbox:
    return ((int(v[0][0]), int(v[0][1])), (int(v[1][0]), int(v[1][1])),
            (int(v[2][0]), int(v[2][1])))


def case_target_spacing(plan: Plan, spacing: Sequence[float]) -> Spacing3:
    """The spacing (mm, X, Y, Z) a case is resampled to: the plan's, except that 2D plans
    leave the slice axis alone (the 2D network never looks across slices)."""
    target = list(plan.full_spacing)
    if plan.dim == 2 and plan.slice_axis is not None:
        target[plan.slice_axis] = float(spacing[plan.slice_axis])
    return _float3(target)


def class_locations(seg: np.ndarray, classes: Sequence[int], case_id: str,
                    max_per_class: int = MAX_CLASS_LOCATIONS) -> dict[int, tuple[Shape3, ...]]:
    """Up to ``max_per_class`` coordinates of each class in ``seg`` (X, Y, Z), seeded by case."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    out: dict[int, tuple[Shape3, ...]] = {}
    for value in classes:
        flat = np.flatnonzero(seg == value)
        if flat.size > max_per_class:
            flat = np.sort(rng.choice(flat, size=max_per_class, replace=False))
        coords = np.stack(np.unravel_index(flat, seg.shape), axis=1)
        out[int(value)] = tuple(_int3(c) for c in coords.tolist())
    return out


def _check_image(image: np.ndarray, plan: Plan, case_id: str) -> None:
    if image.ndim != 4:
        raise DataError(f"image must be (C, X, Y, Z), got shape {image.shape}", case=case_id)
    if image.shape[0] != plan.num_channels:
        raise DataError(f"image has {image.shape[0]} channel(s), the plan expects "
                        f"{plan.num_channels}", case=case_id)


def _check_values(image: np.ndarray, plan: Plan, case_id: str) -> None:
    """Values a channel's scheme refuses (``rgb_0_1`` outside [0, 255]): a DataError naming
    the case, raised on the image as read (resampling may overshoot a little; that is clipped)."""
    try:
        check_value_ranges(image, plan.channel_norms)
    except ValueError as exc:
        raise DataError(str(exc), case=case_id) from exc


@dataclass(frozen=True)
class Cropped:
    """What :func:`crop_normalize_resample` gives: the normalized, resampled image
    ``(C, *shape)`` float32, the resampled label map (or None), the crop box in the input
    grid (half-open, voxels) and the shapes before and after resampling."""

    data: np.ndarray
    label: np.ndarray | None
    bbox: Bbox
    cropped_shape: Shape3
    shape: Shape3


def crop_normalize_resample(image: np.ndarray, spacing: Sequence[float],
                            target_spacing: Sequence[float], norms: Sequence[ChannelNorm], *,
                            label: np.ndarray | None = None, crop: bool = True,
                            ignore: int | None = None,
                            resampling: Resampling = IMAGE_RESAMPLING,
                            min_size: int = 1) -> Cropped:
    """The one preprocessing of a case ``image`` ``(C, X, Y, Z)`` (host arrays, spacings in
    mm in the array's axis order), for nnpipe's own models and nnU-Net v2 models alike:

    1. crop to the box of voxels nonzero in any channel (``crop``), grown to hold every
       labelled voxel of ``label`` (class indices, ``ignore`` left out);
    2. normalize each channel by its :class:`ChannelNorm` on that grid, the mask being the
       filled nonzero mask (:func:`~nnpipe.preprocessing.normalize.nonzero_mask`);
    3. resample to ``target_spacing`` with ``resampling`` (cubic, clipped to each channel's
       or slice's range; separate coarse axis by nearest slice), the new shape by
       :func:`~nnpipe.preprocessing.resample.target_shape` (at least ``min_size``);
       ``label`` by linear one-hot resampling (:func:`resample_labels`).

    What differs between models is data: the norms (which channels use the mask, CT
    percentiles), the resampling rule, ``crop`` and ``min_size``; a v2 model's voxel order
    is applied by its caller. Source of the order of steps: nnU-Net v2 2.8.1
    ``preprocessing/preprocessors/default_preprocessor.py`` ``run_case_npy`` (crop,
    normalize, then resample). Raises ``ValueError`` for mismatched shapes or an unknown
    scheme.
    """
    if crop:
        bbox, cropped, cropped_label = crop_to_nonzero(image, label, ignore=ignore)
    else:
        bbox, cropped, cropped_label = _full_box(image.shape[1:]), image, label
    mask = nonzero_mask(cropped) if needs_mask(norms) else None
    data = normalize(cropped, norms, mask)
    new_shape = _int3(target_shape(cropped.shape[1:], spacing, target_spacing,
                                   at_least=min_size))
    data = resample_with(data, new_shape, spacing, target_spacing, resampling)
    seg = None
    if cropped_label is not None:
        axis = separate_axis(spacing, target_spacing, resampling.threshold,
                             resampling.force_separate_z)
        seg = resample_labels(cropped_label, new_shape, axis)
    return Cropped(data, seg, bbox, _int3(cropped.shape[1:]), new_shape)


def _preprocess(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, plan: Plan,
                case_id: str) -> tuple[np.ndarray, np.ndarray | None, CaseMeta]:
    _check_image(image, plan, case_id)
    if label is not None and label.shape != image.shape[1:]:
        raise DataError(f"label shape {label.shape} differs from image shape "
                        f"{image.shape[1:]}", case=case_id)
    spacing = _float3(spacing_of(affine))
    _check_values(image, plan, case_id)
    target = case_target_spacing(plan, spacing)
    # label holds class indices here: the ignore value is the scheme's ignore index
    out = crop_normalize_resample(image, spacing, target, plan.channel_norms, label=label,
                                  crop=plan.crop_to_nonzero,
                                  ignore=plan.label_table.ignore_index)
    meta = CaseMeta(
        case_id=case_id, original_shape=_int3(image.shape[1:]),
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine)),
        original_spacing=spacing, bbox=out.bbox, cropped_shape=out.cropped_shape,
        target_spacing=target, resampled_shape=out.shape,
    )
    return out.data, out.label, meta


def preprocess_image(image: np.ndarray, affine: np.ndarray, plan: Plan, case_id: str
                     ) -> tuple[np.ndarray, CaseMeta]:
    """Crop, normalize and resample ``image`` ``(C, X, Y, Z)`` for inference
    (:func:`crop_normalize_resample` with the plan's norms, target spacing and crop).

    Returns the float32 ``(C, X', Y', Z')`` array at the case's target spacing and its meta
    (without class locations).
    """
    data, _, meta = _preprocess(image, None, affine, plan, case_id)
    return data, meta


def preprocess_case(image: np.ndarray, label: np.ndarray, affine: np.ndarray, plan: Plan,
                    case_id: str) -> tuple[np.ndarray, np.ndarray, CaseMeta]:
    """Like :func:`preprocess_image`, plus the label map of class indices ``(X, Y, Z)``
    (:class:`nnpipe.labels.LabelTable`, not label values) resampled to uint8 ``(X', Y', Z')``,
    and the foreground class locations (keyed by class index) in the meta."""
    data, seg, meta = _preprocess(image, label, affine, plan, case_id)
    if seg is None:  # unreachable: a label was passed in
        raise RuntimeError(f"case {case_id!r}: label resampling returned nothing")
    fg = list(range(1, plan.num_classes))
    return data, seg, replace(meta, class_locations=class_locations(seg, fg, case_id))


def _paste(cropped: np.ndarray, meta: CaseMeta, fill: np.ndarray) -> np.ndarray:
    """Put ``cropped`` (``(..., *cropped_shape)``) into ``fill`` at the case's bbox."""
    sl = tuple(slice(lo, hi) for lo, hi in meta.bbox)
    index: tuple[EllipsisType | slice, ...] = (Ellipsis, *sl)
    fill[index] = cropped
    return fill


def restore_logits(logits: np.ndarray, meta: CaseMeta) -> np.ndarray:
    """Network outputs ``(K, X', Y', Z')`` at the target spacing -> ``(K, *meta.cropped_shape)``
    float32 in the crop box of the original grid: linear resampling, the separate axis (if
    any) nearest, as nnU-Net v2 2.8.1 resamples its logits back
    (``inference/export_prediction.py``
    ``convert_predicted_logits_to_segmentation_with_correct_shape``,
    ``resampling_fn_probabilities``, order 1). Logits, not probabilities: softmax and argmax
    come after (issue 19 row 11). :func:`restore_channel_torch` is the same, a channel at a
    time on a torch device.

    Raises:
        ValueError: naming the case when ``logits`` do not have the preprocessed shape.
    """
    if logits.ndim != 4 or logits.shape[1:] != meta.resampled_shape:
        raise ValueError(f"case {meta.case_id!r}: network outputs of shape {logits.shape} do "
                         f"not match the preprocessed shape (K, {meta.resampled_shape})")
    axis = separate_axis(meta.original_spacing, meta.target_spacing)
    return resample_image(logits, meta.cropped_shape, axis, order=1)


def paste_probabilities(probs: np.ndarray, bbox: Sequence[tuple[int, int]],
                        original_shape: Sequence[int], *, regions: bool = False) -> np.ndarray:
    """Probabilities ``(K, *box)`` -> ``(K, *original_shape)`` float32, pasted at ``bbox``
    (``(lo, hi)`` voxels per axis, half-open; :attr:`CaseMeta.bbox` and
    :attr:`CaseMeta.original_shape` for nnpipe's own models). Outside the box: the
    background (class 0) has probability 1 and the other classes 0; in region mode every
    region has 0 (nnU-Net v2 2.8.1 ``LabelManager.revert_cropping_on_probabilities``)."""
    box = tuple(slice(lo, hi) for lo, hi in bbox)
    if probs.ndim != len(box) + 1 or tuple(probs.shape[1:]) != tuple(
            hi - lo for lo, hi in bbox):
        raise ValueError(f"probabilities of shape {probs.shape} do not fit the crop box "
                         f"{tuple(bbox)}")
    full = np.zeros((probs.shape[0], *original_shape), dtype=np.float32)
    if not regions:
        full[0] = 1.0
    full[(slice(None), *box)] = probs
    return full


def restore_probabilities(probs: np.ndarray, meta: CaseMeta, *, regions: bool = False
                          ) -> np.ndarray:
    """Probabilities ``(K, X', Y', Z')`` at the target spacing -> ``(K, X, Y, Z)`` in the
    original grid: :func:`restore_logits`'s linear resampling to the cropped shape, then
    :func:`paste_probabilities` (background 1 outside the bbox; regions 0).

    Prediction restores logits instead (:func:`nnpipe.inference.predict.predict_image`);
    this serves maps that are probabilities already."""
    return paste_probabilities(restore_logits(probs, meta), meta.bbox, meta.original_shape,
                               regions=regions)


# ---------------------------------------------------------------- the same on a torch device
# Prediction on a GPU preprocesses and restores there (nnpipe.inference.predict): the numbers
# are the numpy path's to float32 rounding (the same resampling matrices, float64 statistics);
# work is done a channel at a time, in slabs of at most DEVICE_CHUNK_BYTES.


def preprocess_image_torch(image: np.ndarray, affine: np.ndarray, plan: Plan, case_id: str,
                           device: torch.device | str, *,
                           chunk_bytes: int = DEVICE_CHUNK_BYTES
                           ) -> tuple[torch.Tensor, CaseMeta]:
    """:func:`preprocess_image` on ``device``: crop, normalize and resample ``image``
    ``(C, X, Y, Z)`` (host array) there (:func:`crop_normalize_resample_torch`); returns
    ``(C, X', Y', Z')`` float32 on ``device`` and the same meta.

    Device memory: the float32 image, then the cropped copy and the result, plus one
    channel's intermediate and slabs
    (:func:`~nnpipe.preprocessing.resample.resample_volume_torch`).
    """
    _check_image(image, plan, case_id)
    _check_values(image, plan, case_id)
    spacing = _float3(spacing_of(affine))
    target = case_target_spacing(plan, spacing)
    data, bbox, cropped_shape, new_shape = crop_normalize_resample_torch(
        image, spacing, target, plan.channel_norms, device, crop=plan.crop_to_nonzero,
        chunk_bytes=chunk_bytes)
    meta = CaseMeta(
        case_id=case_id, original_shape=_int3(image.shape[1:]),
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine)),
        original_spacing=spacing, bbox=bbox, cropped_shape=cropped_shape,
        target_spacing=target, resampled_shape=new_shape,
    )
    return data, meta


def crop_normalize_resample_torch(image: np.ndarray, spacing: Sequence[float],
                                  target_spacing: Sequence[float],
                                  norms: Sequence[ChannelNorm], device: torch.device | str, *,
                                  crop: bool = True,
                                  resampling: Resampling = IMAGE_RESAMPLING,
                                  min_size: int = 1, chunk_bytes: int = DEVICE_CHUNK_BYTES
                                  ) -> tuple[torch.Tensor, Bbox, Shape3, Shape3]:
    """:func:`crop_normalize_resample` of a host ``image`` ``(C, X, Y, Z)`` (no label) on
    ``device``: the float32 ``(C, *shape)`` tensor there, the crop box, the cropped and the
    resampled shape; the host path's numbers to float32 rounding.

    The filled nonzero mask (only when a channel's scheme reads it) is computed on the host
    with scipy (there is no hole filling in torch) and copied over as booleans.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    bbox = _nonzero_box_torch((x != 0).any(0)) if crop else _full_box(image.shape[1:])
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    # a copy: normalized in place, and on the CPU x may share the caller's memory
    cropped = x[(slice(None), *sl)].clone(memory_format=torch.contiguous_format)
    del x
    cropped_shape = _int3(tuple(cropped.shape[1:]))
    mask = None
    if needs_mask(norms):
        host_mask = nonzero_mask(image[(slice(None), *sl)])
        mask = torch.from_numpy(host_mask).to(cropped.device)
    else:
        mask = torch.ones((1, 1, 1), dtype=torch.bool, device=cropped.device).expand(
            cropped_shape)
    normalize_torch_(cropped, norms, mask, chunk_bytes=chunk_bytes)
    del mask
    new_shape = _int3(target_shape(cropped_shape, spacing, target_spacing, at_least=min_size))
    axis = separate_axis(spacing, target_spacing, resampling.threshold,
                         resampling.force_separate_z)
    data = resample_image_torch(cropped, new_shape, axis, resampling.order,
                                order_z=resampling.order_z, chunk_bytes=chunk_bytes)
    return data, bbox, cropped_shape, new_shape


def _full_box(shape: Sequence[int]) -> Bbox:
    """The box of the whole grid ``(X, Y, Z)``: no crop."""
    return ((0, int(shape[0])), (0, int(shape[1])), (0, int(shape[2])))


def _nonzero_box_torch(nonzero: torch.Tensor) -> Bbox:
    """:func:`~nnpipe.planning.fingerprint.crop_to_nonzero`'s box of a boolean ``(X, Y, Z)``
    tensor (one small copy to the host); an all-zero image keeps its full extent."""
    import torch

    projections = [nonzero.any(2).any(1), nonzero.any(2).any(0), nonzero.any(1).any(0)]
    flags = torch.cat(projections).cpu().numpy()
    box = []
    start = 0
    for n in nonzero.shape:
        hits = np.flatnonzero(flags[start:start + n])
        box.append((0, int(n)) if hits.size == 0 else (int(hits[0]), int(hits[-1]) + 1))
        start += n
    return (box[0], box[1], box[2])


def normalize_torch_(data: torch.Tensor, norms: Sequence[ChannelNorm], mask: torch.Tensor, *,
                     chunk_bytes: int = DEVICE_CHUNK_BYTES) -> torch.Tensor:
    """:func:`~nnpipe.preprocessing.normalize.normalize` in place on a float32 tensor
    ``(C, X, Y, Z)`` on any device, ``mask`` the boolean nonzero mask ``(X, Y, Z)``.

    ``zscore_nonzero`` (over the mask) and ``zscore`` (over every voxel) take mean and std
    in float64 like numpy (two passes, slab by slab along X, so no float64 copy of a whole
    channel); ``ct`` clips and scales with the plan's statistics; ``none`` leaves the channel;
    ``rescale_0_1`` maps its min..max to 0..1; ``rgb_0_1`` clips resampling overshoot to
    [0, 255] (the input was checked before) and divides by 255.
    """

    if data.ndim != 4 or data.shape[0] != len(norms):
        raise ValueError(f"image of shape {tuple(data.shape)} does not match {len(norms)} "
                         f"channel norm(s)")
    if tuple(mask.shape) != tuple(data.shape[1:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from image shape "
                         f"{tuple(data.shape[1:])}")
    rows = max(1, chunk_bytes // (3 * 8 * max(1, mask[0].numel())))
    slabs = [slice(a, a + rows) for a in range(0, mask.shape[0], rows)]
    for c, norm in enumerate(norms):
        ch = data[c]
        if norm.scheme in ("zscore_nonzero", "zscore"):
            masked = norm.scheme == "zscore_nonzero"
            _zscore_torch_(ch, mask if masked else None, slabs)
        elif norm.scheme == "ct":
            low, high, ct_mean, ct_std = norm.clip_low, norm.clip_high, norm.mean, norm.std
            if low is None or high is None or ct_mean is None or ct_std is None:
                raise ValueError(f"CT normalization needs clip_low, clip_high, mean and std, "
                                 f"got {norm}")
            ch.clamp_(low, high).sub_(ct_mean).div_(max(ct_std, MIN_STD))
        elif norm.scheme == "none":
            continue
        elif norm.scheme == "rescale_0_1":
            low, high = float(ch.min()), float(ch.max())
            ch.sub_(low).div_(max(high - low, MIN_STD))
        elif norm.scheme == "rgb_0_1":
            lo, hi = VALUE_RANGES["rgb_0_1"]
            ch.clamp_(lo, hi).div_(hi)
        else:
            raise ValueError(f"normalization scheme {norm.scheme!r} of channel {c} has no "
                             "device version; known: zscore_nonzero, zscore, ct, none, "
                             "rescale_0_1, rgb_0_1")
    return data


def _zscore_torch_(ch: torch.Tensor, mask: torch.Tensor | None, slabs: list[slice]) -> None:
    """Z-score ``ch`` ``(X, Y, Z)`` in place over ``mask`` (zero outside) or, with None, over
    every voxel; float64 sums slab by slab."""
    import torch

    count = int(mask.sum()) if mask is not None else ch.numel()
    if count == 0:
        ch.zero_()
        return

    def part(s: slice, values: torch.Tensor) -> torch.Tensor:
        return values.sum() if mask is None else torch.where(mask[s], values, 0.0).sum()

    total = sum(part(s, ch[s].double()) for s in slabs)
    mean = float(total) / count
    sq = sum(part(s, (ch[s].double() - mean) ** 2) for s in slabs)
    std = math.sqrt(float(sq) / count)
    ch.sub_(mean).div_(max(std, MIN_STD))
    if mask is not None:
        ch.masked_fill_(~mask, 0.0)


def restore_channel_torch(channel: torch.Tensor, meta: CaseMeta, *,
                          chunk_bytes: int = DEVICE_CHUNK_BYTES) -> torch.Tensor:
    """One output channel ``(X', Y', Z')`` (logits) at the target spacing -> the cropped grid
    ``meta.cropped_shape`` on the same device, float32: :func:`restore_logits`'s linear
    resampling, a channel at a time (the caller pastes it at ``meta.bbox``)."""
    if tuple(channel.shape) != meta.resampled_shape:
        raise ValueError(f"case {meta.case_id!r}: an output channel of shape "
                         f"{tuple(channel.shape)} does not match the preprocessed shape "
                         f"{meta.resampled_shape}")
    axis = separate_axis(meta.original_spacing, meta.target_spacing)
    return resample_volume_torch(channel, meta.cropped_shape, 1, axis, chunk_bytes=chunk_bytes)


def restore_labels(labels: np.ndarray, meta: CaseMeta) -> np.ndarray:
    """Label map ``(X', Y', Z')`` at the target spacing -> uint8 ``(X, Y, Z)`` in the original
    grid (nearest neighbour; background outside the bbox)."""
    if labels.shape != meta.resampled_shape:
        raise ValueError(f"case {meta.case_id!r}: labels of shape {labels.shape} do not match "
                         f"the preprocessed shape {meta.resampled_shape}")
    cropped = resample_volume(labels, meta.cropped_shape, 0).round().astype(np.uint8)
    return _paste(cropped, meta, np.zeros(meta.original_shape, dtype=np.uint8))


def _preprocess_one(args: tuple[Dataset, Case, Plan, Path]) -> CaseMeta:
    ds, case, plan, out_dir = args
    ci = read_image(ds, case)
    label = read_label(ds, case, ci).values
    indices = plan.label_table.to_indices(label, case=case.case_id, path=case.label)
    data, seg, meta = preprocess_case(ci.image, indices, ci.affine, plan, case.case_id)
    save_npy(out_dir / f"{case.case_id}.npy", data)
    save_npy(out_dir / f"{case.case_id}_seg.npy", seg)
    return meta


def preprocess_dataset(ds: Dataset, plan: Plan, out_dir: Path, workers: int = 1,
                       progress: bool = True, memory_gb: float = 0.0) -> Path:
    """Preprocess every training case of ``ds`` into ``out_dir``; return the manifest path.

    Up to ``workers`` cases run in parallel, and with ``memory_gb > 0`` only as many as their
    estimated peak RAM (:func:`~nnpipe.preprocessing.parallel.estimate_case_bytes`) allows.

    ``manifest.json`` (``{"plan": ..., "preprocessing_version": ..., "cases": {case_id:
    CaseMeta}}``) is written last and
    atomically, and removed first, so it exists only when every case succeeded. Bad input
    raises :class:`DataError` naming the case.
    """
    # a plan records the classes without the ignore value; plans older than that list it
    if plan.num_channels != ds.num_channels \
            or dict(plan.labels) not in (dict(ds.labels), dict(ds.scheme.names)) \
            or plan.label_table.values not in (ds.scheme.values, tuple(sorted(ds.labels))):
        raise ValueError(f"plan for {plan.dataset!r} ({plan.num_channels} channel(s), labels "
                         f"{plan.labels}) does not fit dataset {ds.name!r} ({ds.num_channels} "
                         f"channel(s), labels {ds.labels})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.json"
    manifest.unlink(missing_ok=True)
    items = [(ds, case, plan, out_dir) for case in ds.training]
    costs = ([estimate_case_bytes(c, lambda sp: case_target_spacing(plan, sp))
              for c in ds.training] if memory_gb > 0 and workers > 1 else [0] * len(items))
    metas: dict[str, Any] = {}
    for i, meta in enumerate(imap_bounded(_preprocess_one, items, costs, workers,
                                          int(memory_gb * GB)), start=1):
        metas[meta.case_id] = meta.to_dict()
        if progress:
            log(f"preprocess {i}/{len(items)} {meta.case_id}: {meta.original_shape} -> cropped "
                f"{meta.cropped_shape} -> {meta.resampled_shape}")
    # Cases finish in any order; the manifest lists them in dataset order.
    metas = {c.case_id: metas[c.case_id] for c in ds.training}
    write_json(manifest, {"plan": plan.to_dict(), "preprocessing_version": PREPROCESSING_VERSION,
                          "cases": metas})
    return manifest
