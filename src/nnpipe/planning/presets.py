"""``planning.preset: reference``: the reference implementation's fixed per-task plans.

The reference (NVIDIA's nnU-Net for PyTorch) does not plan: it hard-codes a patch size and a
target spacing per Medical Segmentation Decathlon task and derives the U-Net topology from
them with the same rule as :func:`nnpipe.planning.topology.unet_topology`. CT tasks also get
fixed clipping and standardization constants.

**Axis order.** The reference lists spacings and patches in ``(z, y, x)`` order (it transposes
NIfTI arrays). nnpipe keeps arrays in NIfTI voxel order ``(X, Y, Z)``, so :data:`PRESETS`
keeps the reference's ``(z, y, x)`` numbers verbatim (easy to check against its source) and
:func:`reference_plan` reverses them explicitly (:func:`zyx_to_xyz`). A 2D preset's
``(y, x)`` patch becomes nnpipe's in-plane ``(X, Y)`` with Z as the slice axis, as the
reference slices along z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnpipe.planning.fingerprint import Fingerprint
from nnpipe.planning.network import PLAIN
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.planner import PlannerSettings, make_plan, median_shape, zscore_scheme
from nnpipe.planning.topology import unet_filters, unet_topology

REFERENCE_FILTERS = 32  # the reference's first-level feature maps


@dataclass(frozen=True)
class TaskPreset:
    """One row of the reference's table; every tuple in ``(z, y, x)`` (2D: ``(y, x)``)."""

    task: str
    channels: int
    patch_3d_zyx: tuple[int, int, int]
    spacing_3d_zyx: tuple[float, float, float]
    patch_2d_yx: tuple[int, int]
    spacing_2d_yx: tuple[float, float]
    # CT only: (clip min, clip max, mean, std) in HU, fixed by the reference
    ct: tuple[float, float, float, float] | None = None


PRESETS: dict[str, TaskPreset] = {p.task: p for p in (
    TaskPreset("Task01_BrainTumour", 4, (128, 128, 128), (1.0, 1.0, 1.0), (192, 160), (1.0, 1.0)),
    TaskPreset("Task02_Heart", 1, (80, 192, 160), (1.37, 1.25, 1.25), (320, 256), (1.25, 1.25)),
    TaskPreset("Task03_Liver", 1, (128, 128, 128), (1.0, 0.7676, 0.7676), (512, 512),
               (0.7676, 0.7676), ct=(-17.0, 201.0, 99.4, 39.36)),
    TaskPreset("Task04_Hippocampus", 1, (40, 56, 40), (1.0, 1.0, 1.0), (56, 40), (1.0, 1.0)),
    TaskPreset("Task05_Prostate", 2, (20, 320, 256), (3.6, 0.62, 0.62), (320, 320), (0.62, 0.62)),
    TaskPreset("Task06_Lung", 1, (80, 192, 160), (1.24, 0.79, 0.79), (512, 512), (0.79, 0.79),
               ct=(-1024.0, 325.0, -158.58, 324.7)),
    TaskPreset("Task07_Pancreas", 1, (40, 224, 224), (2.5, 0.8, 0.8), (512, 512), (0.8, 0.8),
               ct=(-96.0, 215.0, 77.9, 75.4)),
    TaskPreset("Task08_HepaticVessel", 1, (64, 192, 192), (1.5, 0.8, 0.8), (512, 512),
               (0.8, 0.8), ct=(-3.0, 243.0, 104.37, 52.62)),
    TaskPreset("Task09_Spleen", 1, (64, 192, 160), (1.6, 0.79, 0.79), (512, 512), (0.79, 0.79),
               ct=(-41.0, 176.0, 99.29, 39.47)),
    TaskPreset("Task10_Colon", 1, (56, 192, 160), (3.0, 0.78, 0.78), (512, 512), (0.78, 0.78),
               ct=(-30.0, 165.82, 62.18, 32.65)),
)}


def zyx_to_xyz(values: Sequence[float]) -> tuple:
    """The reference's ``(z, y, x)`` (or ``(y, x)``) as nnpipe's ``(X, Y, Z)`` (or ``(X, Y)``)."""
    return tuple(reversed(tuple(values)))


def find_preset(*names: str) -> TaskPreset:
    """The preset named by the first of ``names`` (``dataset.task``, ``dataset.name``) that is
    an MSD task: ``Task05_Prostate``, ``Task05``, ``5`` or ``Prostate``."""
    from nnpipe.datasets.download import resolve_task

    for name in names:
        if not name:
            continue
        try:
            return PRESETS[resolve_task(name).name]
        except ValueError:
            continue
    raise ValueError(f"planning.preset 'reference' needs an MSD task in dataset.task or "
                     f"dataset.name (e.g. Task01_BrainTumour), got {[n for n in names if n]}")


def _norms(preset: TaskPreset, fp: Fingerprint) -> tuple[ChannelNorm, ...]:
    if preset.ct is not None:
        low, high, mean, std = preset.ct
        return tuple(ChannelNorm("ct", clip_low=low, clip_high=high, mean=mean, std=std)
                     for _ in range(fp.num_channels))
    return tuple(ChannelNorm(zscore_scheme(fp)) for _ in range(fp.num_channels))


def reference_plan(fp: Fingerprint, dim: int, preset: TaskPreset, settings: PlannerSettings,
                   dataset_name: str) -> Plan:
    """The reference's plan for ``preset`` in ``dim`` D; labels and channels from ``fp``.

    The batch size follows the same budgets as automatic planning (the reference takes it
    from its command line). In 2D the slice axis is Z and keeps the dataset's median spacing
    (each case its own, as in automatic 2D plans).
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if fp.num_channels != preset.channels:
        raise ValueError(f"preset {preset.task} expects {preset.channels} channel(s), the "
                         f"dataset has {fp.num_channels}")
    if dim == 3:
        patch: tuple[int, ...] = zyx_to_xyz(preset.patch_3d_zyx)
        spacing: tuple[float, ...] = zyx_to_xyz(preset.spacing_3d_zyx)
        full = (spacing[0], spacing[1], spacing[2])
        slice_axis = None
    else:
        patch = zyx_to_xyz(preset.patch_2d_yx)
        spacing = zyx_to_xyz(preset.spacing_2d_yx)
        z_median = float(np.median(np.asarray(fp.spacings, dtype=np.float64)[:, 2]))
        full = (spacing[0], spacing[1], z_median)
        slice_axis = 2
    kernels, strides = unet_topology(patch, spacing, settings.max_depth,
                                     settings.min_feature_size)
    raw_batch = settings.batch_budget(dim) // math.prod(patch)
    batch = min(max(raw_batch, settings.min_batch_size), settings.max_batch_size)
    notes = (f"preset reference: {preset.task} {dim}D patch (z,y,x)="
             f"{preset.patch_3d_zyx if dim == 3 else preset.patch_2d_yx} spacing (z,y,x)="
             f"{preset.spacing_3d_zyx if dim == 3 else preset.spacing_2d_yx}, stored as (X,Y,Z)",)
    return Plan(
        dataset=dataset_name, dim=dim, spacing=spacing, full_spacing=full, patch_size=patch,
        kernels=kernels, strides=strides,
        filters=unet_filters(len(strides), dim, REFERENCE_FILTERS), batch_size=batch,
        num_channels=fp.num_channels, num_classes=fp.scheme.num_classes,
        labels=dict(fp.scheme.names),
        channel_norms=_norms(preset, fp), slice_axis=slice_axis,
        median_shape=median_shape(fp, full), notes=notes,
        label_values=fp.scheme.values, layout=fp.layout, label_scheme=fp.scheme,
        crop_to_nonzero=fp.crop_to_nonzero,
    )


def plan_for(fp: Fingerprint, dim: int, settings: PlannerSettings, dataset_name: str,
             preset: str = "auto", task: str = "") -> Plan:
    """``planning.preset`` dispatch: ``auto`` plans from ``fp``; ``reference`` looks the task
    up by ``task`` (``dataset.task``), then by ``dataset_name``."""
    if preset == "auto":
        return make_plan(fp, dim, settings, dataset_name)
    if preset == "reference":
        if settings.network != PLAIN:
            raise ValueError(f"planning.preset reference builds the reference's fixed plain "
                             f"U-Net; planning.network {settings.network!r} needs preset auto")
        return reference_plan(fp, dim, find_preset(task, dataset_name), settings, dataset_name)
    raise ValueError(f"planning.preset {preset!r} is unknown; known: auto, reference")
