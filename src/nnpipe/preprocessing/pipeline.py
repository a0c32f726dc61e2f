"""Preprocess cases for a plan, and map predictions back to the original grid.

Per case: crop to the box of nonzero voxels (air around the body carries no information),
resample to the plan's target spacing, normalize. :class:`CaseMeta` records every step so
that :func:`restore_probabilities` and :func:`restore_labels` can undo them exactly: the
prediction ends in the original voxel grid and keeps the original affine.

Arrays are in the canonical voxel order the reader (:mod:`nnpipe.datasets.layout`) gives; the
affine in :class:`CaseMeta` is that canonical grid's. On disk (``preprocess_dataset``):
``<case>.npy`` (float32 ``(C, X', Y', Z')``), ``<case>_seg.npy`` (uint8 class indices
``(X', Y', Z')``, :class:`nnpipe.labels.LabelTable`), both uncompressed so the loader can memory-map
them, and last ``manifest.json``, whose presence means the folder is complete.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnpipe.datasets.layout import Case, Dataset, read_image, read_label
from nnpipe.errors import DataError
from nnpipe.geometry import spacing_of
from nnpipe.io import save_npy, write_json
from nnpipe.planning.fingerprint import Bbox, crop_to_nonzero
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.normalize import nonzero_mask, normalize
from nnpipe.preprocessing.parallel import GB, estimate_case_bytes, imap_bounded
from nnpipe.preprocessing.resample import (
    resample_image,
    resample_labels,
    resample_mask,
    resample_volume,
    separate_axis,
    target_shape,
)
from nnpipe.progress import log

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
            bbox=tuple((int(lo), int(hi)) for lo, hi in d["bbox"]),  # type: ignore[arg-type]
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


def _preprocess(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, plan: Plan,
                case_id: str) -> tuple[np.ndarray, np.ndarray | None, CaseMeta]:
    _check_image(image, plan, case_id)
    if label is not None and label.shape != image.shape[1:]:
        raise DataError(f"label shape {label.shape} differs from image shape "
                        f"{image.shape[1:]}", case=case_id)
    spacing = _float3(spacing_of(affine))
    bbox, cropped, cropped_label = crop_to_nonzero(image, label)
    # The mask is taken before resampling: spline overshoot makes zeros nonzero afterwards.
    mask = nonzero_mask(cropped)
    target = case_target_spacing(plan, spacing)
    new_shape = _int3(target_shape(cropped.shape[1:], spacing, target))
    axis = separate_axis(spacing, target)
    data = normalize(resample_image(cropped, new_shape, axis), plan.channel_norms,
                     resample_mask(mask, new_shape))
    seg = None if cropped_label is None else resample_labels(cropped_label, new_shape, axis)
    meta = CaseMeta(
        case_id=case_id, original_shape=_int3(image.shape[1:]),
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine)),
        original_spacing=spacing, bbox=bbox, cropped_shape=_int3(cropped.shape[1:]),
        target_spacing=target, resampled_shape=new_shape,
    )
    return data, seg, meta


def preprocess_image(image: np.ndarray, affine: np.ndarray, plan: Plan, case_id: str
                     ) -> tuple[np.ndarray, CaseMeta]:
    """Crop, resample and normalize ``image`` ``(C, X, Y, Z)`` for inference.

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
    fill[(Ellipsis, *sl)] = cropped
    return fill


def restore_probabilities(probs: np.ndarray, meta: CaseMeta) -> np.ndarray:
    """Class probabilities ``(K, X', Y', Z')`` at the target spacing -> ``(K, X, Y, Z)`` in the
    original grid: linear resampling to the cropped shape, pasted into the bbox; outside it
    the background (class 0) has probability 1."""
    if probs.ndim != 4 or probs.shape[1:] != meta.resampled_shape:
        raise ValueError(f"case {meta.case_id!r}: probabilities of shape {probs.shape} do not "
                         f"match the preprocessed shape (K, {meta.resampled_shape})")
    axis = separate_axis(meta.original_spacing, meta.target_spacing)
    cropped = resample_image(probs, meta.cropped_shape, axis, order=1)
    full = np.zeros((probs.shape[0], *meta.original_shape), dtype=np.float32)
    full[0] = 1.0
    return _paste(cropped, meta, full)


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

    ``manifest.json`` (``{"plan": ..., "cases": {case_id: CaseMeta}}``) is written last and
    atomically, and removed first, so it exists only when every case succeeded. Bad input
    raises :class:`DataError` naming the case.
    """
    if plan.num_channels != ds.num_channels or dict(plan.labels) != dict(ds.labels) \
            or plan.label_table != ds.label_table:
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
    write_json(manifest, {"plan": plan.to_dict(), "cases": metas})
    return manifest
