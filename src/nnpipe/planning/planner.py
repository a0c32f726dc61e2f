"""Planning: a :class:`Fingerprint` and a few settings in, a frozen :class:`Plan` out.

Pure functions, no I/O. The rules follow nnU-Net's experiment planner:

* target spacing: the per-axis median spacing; for anisotropic data whose coarse axis also
  has few voxels, the 10th percentile along that axis, so most cases are upsampled a little
  rather than some being downsampled a lot;
* patch: the median shape at the target spacing, shrunk along its longest (mm) axis until it
  fits the voxel budget, each axis a multiple of the network's total downsampling;
* batch: as many patches as a batch voxel budget holds, at least ``min_batch_size``.

Residual-encoder networks (``network: resenc_m | resenc_l``) replace both voxel budgets by a
GPU-memory target, as nnU-Net v2's ResEnc planners do: the patch is the median shape shrunk
until a training step at ``min_batch_size`` fits the target
(:func:`nnpipe.planning.network.estimate_vram_gb`), then the batch grows while it fits,
capped so that one batch holds at most 5 % of the dataset's voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nnpipe.planning import network as N
from nnpipe.planning.channels import DEFAULT_SCHEME, scheme_for_channel
from nnpipe.planning.fingerprint import Fingerprint
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.topology import Kernels, Strides, total_strides, unet_filters, unet_topology

if TYPE_CHECKING:
    from nnpipe.config import PlanningSettings


@dataclass(frozen=True)
class PlannerSettings:
    """Budgets and limits of the planner.

    ``max_patch_voxels_*`` bound one patch; ``batch_voxels_*`` bound one batch (default:
    ``min_batch_size`` full-budget patches), so a patch smaller than the budget (small
    images) gets a larger batch. ``network``: ``planning.network``; a residual-encoder preset
    is planned for ``vram_target_gb`` of GPU memory instead (0: the preset's target) and the
    voxel budgets do not apply to it.
    """

    max_patch_voxels_3d: int = 128**3
    max_patch_voxels_2d: int = 256 * 256
    base_filters: int = 32
    min_batch_size: int = 2
    max_batch_size: int = 64
    anisotropy_threshold: float = 3.0
    batch_voxels_3d: int | None = None
    batch_voxels_2d: int | None = None
    max_depth: int = 5  # downsampling steps
    min_feature_size: int = 4  # voxels per axis at the bottleneck, at least
    network: str = N.PLAIN
    vram_target_gb: float = 0.0  # 0: the network preset's target

    def __post_init__(self) -> None:
        for name in ("max_patch_voxels_3d", "max_patch_voxels_2d", "base_filters",
                     "min_batch_size", "min_feature_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlannerSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_size < self.min_batch_size:
            raise ValueError(f"PlannerSettings.max_batch_size ({self.max_batch_size}) is below "
                             f"min_batch_size ({self.min_batch_size})")
        if self.anisotropy_threshold <= 1:
            raise ValueError("PlannerSettings.anisotropy_threshold must be > 1, got "
                             f"{self.anisotropy_threshold}")
        if self.max_depth < 0:
            raise ValueError(f"PlannerSettings.max_depth must be >= 0, got {self.max_depth}")
        N.network_preset(self.network)
        if self.vram_target_gb < 0:
            raise ValueError("PlannerSettings.vram_target_gb must be >= 0 (0: the preset's), "
                             f"got {self.vram_target_gb}")

    def patch_budget(self, dim: int) -> int:
        return self.max_patch_voxels_3d if dim == 3 else self.max_patch_voxels_2d

    def batch_budget(self, dim: int) -> int:
        explicit = self.batch_voxels_3d if dim == 3 else self.batch_voxels_2d
        return explicit if explicit is not None else self.patch_budget(dim) * self.min_batch_size


def settings_from_config(cfg: PlanningSettings) -> PlannerSettings:
    """The planner settings of a study config's ``planning`` section (other fields: defaults)."""
    return PlannerSettings(
        max_patch_voxels_3d=cfg.max_patch_voxels_3d, max_patch_voxels_2d=cfg.max_patch_voxels_2d,
        base_filters=cfg.base_filters, max_batch_size=cfg.max_batch_size,
        batch_voxels_3d=cfg.batch_voxels_3d, batch_voxels_2d=cfg.batch_voxels_2d,
        network=cfg.network, vram_target_gb=cfg.vram_target_gb,
    )


# Median spacings within this fraction of the coarsest count as tied when choosing the 2D
# slice axis: near-isotropic data (3.23 vs 3.16 mm) are then sliced along Z, as acquired,
# rather than along whichever axis a few odd cases made a hair coarser.
SLICE_AXIS_TOLERANCE = 0.05


def _last_argmax(values: Sequence[float], rel_tol: float = 0.0) -> int:
    """Index of the largest value; ties (within ``rel_tol``) go to the last axis (Z, Y, X)."""
    top = max(values)
    return max(i for i, v in enumerate(values) if v >= top * (1.0 - rel_tol))


def target_spacing(fp: Fingerprint, anisotropy_threshold: float = 3.0
                   ) -> tuple[tuple[float, float, float], list[str]]:
    """Target spacing (mm, X, Y, Z) and notes saying how it was chosen."""
    spacings = np.asarray(fp.spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    sizes = np.median(np.asarray(fp.cropped_shapes, dtype=np.float64), axis=0)
    notes = [f"target spacing: per-axis median {_fmt(target)} mm"]
    coarse = _last_argmax(target.tolist())
    others = [a for a in range(3) if a != coarse]
    aniso_spacing = target[coarse] >= anisotropy_threshold * target[others].min()
    few_voxels = sizes[coarse] * anisotropy_threshold < sizes[others].min()
    if aniso_spacing and few_voxels:
        p10 = float(np.percentile(spacings[:, coarse], 10))
        # Never go below the in-plane spacing: that would make the coarse axis the fine one.
        p10 = max(p10, float(target[others].max()))
        target[coarse] = p10
        notes.append(f"anisotropic: axis {coarse} spacing from 10th percentile ({p10:.4g} mm)")
    return (float(target[0]), float(target[1]), float(target[2])), notes


def median_shape(fp: Fingerprint, spacing: Sequence[float]) -> tuple[int, int, int]:
    """Median cropped shape (X, Y, Z) after resampling every case to ``spacing`` (mm); the
    whole shape where cases are not cropped (:attr:`Fingerprint.crop_to_nonzero`)."""
    shapes = np.asarray(fp.cropped_shapes if fp.crop_to_nonzero else fp.shapes,
                        dtype=np.float64)
    scaled = shapes * np.asarray(fp.spacings) / np.asarray(spacing, dtype=np.float64)
    med = np.round(np.median(scaled, axis=0)).astype(int)
    return (max(1, int(med[0])), max(1, int(med[1])), max(1, int(med[2])))


def _fmt(values: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _round_to_strides(patch: list[int], spacing: Sequence[float], settings: PlannerSettings,
                      up: bool) -> tuple[list[int], Kernels, Strides]:
    """Round each axis to a multiple of its total stride; repeat until the topology is stable.

    Rounding up can allow one more downsampling (larger divisor) and rounding down one fewer
    (smaller divisor, which the rounded size already satisfies); both settle within
    ``max_depth`` rounds.
    """
    for _ in range(settings.max_depth + 2):
        kernels, strides = unet_topology(patch, spacing, settings.max_depth,
                                         settings.min_feature_size)
        div = total_strides(strides)
        if up:
            new = [math.ceil(p / d) * d for p, d in zip(patch, div, strict=True)]
        else:
            new = [max(d, (p // d) * d) for p, d in zip(patch, div, strict=True)]
        if new == patch:
            return patch, kernels, strides
        patch = new
    raise RuntimeError(f"patch rounding did not settle at {patch}")  # not reachable


def fit_patch(shape: Sequence[int], spacing: Sequence[float], budget: int,
              settings: PlannerSettings) -> tuple[tuple[int, ...], Kernels, Strides]:
    """Largest patch near ``shape`` (voxels) with at most ``budget`` voxels.

    Starts from ``shape`` rounded up to the network's divisibility, then removes one
    divisor-step at a time from the axis that is longest in mm (so the patch tends towards
    a cube in physical space), and finally rounds every axis down to its total stride.
    """
    return shrink_patch(shape, spacing, settings, lambda p, k, s: math.prod(p) <= budget,
                        f"a patch budget of {budget} voxels")


PatchFits = Callable[[Sequence[int], Kernels, Strides], bool]


def shrink_patch(shape: Sequence[int], spacing: Sequence[float], settings: PlannerSettings,
                 fits: PatchFits, budget_name: str) -> tuple[tuple[int, ...], Kernels, Strides]:
    """:func:`fit_patch` with any budget: the largest patch near ``shape`` for which
    ``fits(patch, kernels, strides)`` holds (``budget_name`` names the budget in errors)."""
    patch, kernels, strides = _round_to_strides([max(1, int(s)) for s in shape], spacing,
                                                settings, up=True)
    while not fits(patch, kernels, strides):
        div = total_strides(strides)
        shrinkable = [a for a in range(len(patch)) if patch[a] - div[a] >= 1]
        if not shrinkable:
            raise ValueError(f"{budget_name} is too small for a U-Net (reached {tuple(patch)})")
        axis = max(shrinkable, key=lambda a: (patch[a] * spacing[a], a))
        patch[axis] -= div[axis]
        kernels, strides = unet_topology(patch, spacing, settings.max_depth,
                                         settings.min_feature_size)
    patch, kernels, strides = _round_to_strides(patch, spacing, settings, up=False)
    return tuple(patch), kernels, strides


# nnU-Net's cap on the batch: one batch holds at most this fraction of the dataset's voxels,
# so small datasets are not seen whole in every step (which would defeat sampling).
MAX_BATCH_DATASET_FRACTION = 0.05


def fit_vram(fp: Fingerprint, dim: int, shape: Sequence[int], spacing: Sequence[float],
             settings: PlannerSettings, dataset_voxels: int, notes: list[str]
             ) -> tuple[tuple[int, ...], Kernels, Strides, int]:
    """Patch, topology and batch of a residual-encoder plan under its GPU-memory target.

    The patch is ``shape`` (the median shape along the network's axes, voxels) shrunk like
    :func:`fit_patch` until a training step at ``min_batch_size`` fits the target; the batch
    is then the largest that fits, at most ``max_batch_size`` and at most
    :data:`MAX_BATCH_DATASET_FRACTION` of ``dataset_voxels`` (cases x median shape at the
    target spacing), at least ``min_batch_size``. Appends what it chose to ``notes``.
    """
    preset = N.network_preset(settings.network)
    target = settings.vram_target_gb or preset.vram_target_gb
    classes = fp.scheme.output_channels

    def vram(patch: Sequence[int], kernels: Kernels, strides: Strides, batch: int) -> float:
        filters = unet_filters(len(strides), dim, settings.base_filters)
        convs = N.layers(patch, kernels, strides, filters, fp.num_channels, classes,
                         N.encoder_blocks(preset.name, len(strides)),
                         N.deep_supervision_heads(len(strides)))
        return N.estimate_vram_gb(convs, batch)

    patch, kernels, strides = shrink_patch(
        shape, spacing, settings,
        lambda p, k, s: vram(p, k, s, settings.min_batch_size) <= target,
        f"a GPU memory target of {target:g} GB ({preset.name})")
    batch = settings.min_batch_size
    while batch < settings.max_batch_size and vram(patch, kernels, strides, batch + 1) <= target:
        batch += 1
    cap = max(settings.min_batch_size,
              int(MAX_BATCH_DATASET_FRACTION * dataset_voxels / math.prod(patch)))
    chosen = min(batch, cap)
    notes.append(f"network {preset.name}: patch {patch} from median shape {tuple(shape)}, "
                 f"batch {chosen}: {vram(patch, kernels, strides, chosen):.1f} GB estimated "
                 f"for a mixed-precision training step (target {target:g} GB)"
                 + (f"; batch {batch} capped at {cap} ({MAX_BATCH_DATASET_FRACTION:.0%} of the "
                    "dataset's voxels)" if cap < batch else ""))
    return patch, kernels, strides, chosen


# z-score channels use the nonzero mask only where cropping to it leaves the median case
# below this fraction of its voxels (a zero background worth leaving out of the statistics).
# Source: nnU-Net v2 2.8.1 ExperimentPlanner.determine_normalization_scheme_and_whether_mask_
# is_used_for_norm (``median_relative_size_after_cropping < 3 / 4.``); nnU-Net v1, the
# reference's base, has the same rule.
MASK_FOR_NORM_BELOW = 0.75


def uses_mask_for_norm(fp: Fingerprint) -> bool:
    """Whether z-scored channels are normalized inside the nonzero mask (``zscore_nonzero``)
    rather than over every voxel (``zscore``): only when cropping to the nonzero box shrinks
    the median case below :data:`MASK_FOR_NORM_BELOW` of its voxels, as in nnU-Net."""
    return fp.median_relative_size_after_cropping < MASK_FOR_NORM_BELOW


def zscore_scheme(fp: Fingerprint) -> str:
    """``zscore_nonzero`` or ``zscore`` for the z-scored channels of ``fp``'s dataset
    (:func:`uses_mask_for_norm`)."""
    return DEFAULT_SCHEME if uses_mask_for_norm(fp) else "zscore"


def channel_norms(fp: Fingerprint) -> tuple[ChannelNorm, ...]:
    """Per channel, the scheme its name in dataset.json selects
    (:func:`nnpipe.planning.channels.scheme_for_channel`, nnU-Net v2's names): CT is
    clipped to the foreground 0.5/99.5 percentiles and standardized with the foreground
    mean/std of the whole training set; ``noNorm``, ``rescale_to_0_1`` and ``rgb_to_0_1``
    select ``none``, ``rescale_0_1`` and ``rgb_0_1``; anything else (MRI) is z-scored per
    image, inside the nonzero mask when cropping removes at least a quarter of the median
    case (:func:`uses_mask_for_norm`, nnU-Net's rule) and over every voxel otherwise.
    Fingerprints without channel names go by ``is_ct``."""
    zscore = zscore_scheme(fp)
    norms = []
    for c, stats in enumerate(fp.intensity):
        name = fp.channel_names[c] if fp.channel_names else ""
        scheme = scheme_for_channel(name) if fp.channel_names else (
            "ct" if fp.is_ct[c] else DEFAULT_SCHEME)
        if scheme == "ct":
            norms.append(ChannelNorm("ct", clip_low=stats.p00_5, clip_high=stats.p99_5,
                                     mean=stats.mean, std=stats.std, channel=name))
        elif scheme == DEFAULT_SCHEME:
            norms.append(ChannelNorm(zscore, channel=name))
        else:
            norms.append(ChannelNorm(scheme, channel=name))
    return tuple(norms)


def make_plan(fp: Fingerprint, dim: int, settings: PlannerSettings, dataset_name: str, *,
              spacing: Sequence[float] | None = None) -> Plan:
    """The plan for a ``dim``-D (2 or 3) network on the dataset ``fp`` describes.

    ``spacing`` (mm, X, Y, Z; 3D only) replaces the target spacing: the cascade's
    low-resolution stage (:mod:`nnpipe.planning.cascade`) plans at a coarser one.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if dim == 3 and fp.single_slice:
        raise ValueError(f"dataset {dataset_name!r} is a 2D dataset (every case is a single "
                         "slice): there is no 3D plan; use grid.dims: [2]")
    if spacing is not None:
        if dim != 3 or len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"make_plan: spacing must be three positive mm values for a 3D "
                             f"plan, got {tuple(spacing)} for dim={dim}")
        target = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
        notes = [f"target spacing: {_fmt(target)} mm (given)"]
    else:
        target, notes = target_spacing(fp, settings.anisotropy_threshold)
    slice_axis: int | None = None
    full = target
    if dim == 2:
        median_spacing = np.median(np.asarray(fp.spacings, dtype=np.float64), axis=0).tolist()
        slice_axis = fp.slice_axis_2d
        if slice_axis is None:
            slice_axis = _last_argmax(median_spacing, SLICE_AXIS_TOLERANCE)
        # 2D preprocessing never resamples along the slice axis: keep its median spacing.
        full = tuple(median_spacing[a] if a == slice_axis else target[a]  # type: ignore[assignment]
                     for a in range(3))
        notes = [n + " (unused in 2D: slice axis kept at its median)"
                 if n.startswith(f"anisotropic: axis {slice_axis} ") else n for n in notes]
        notes.append(f"2D: slice axis {slice_axis} (every case is one voxel thick along it)"
                     if fp.single_slice else
                     f"2D: slice axis {slice_axis} (coarsest median spacing, ties within "
                     f"{SLICE_AXIS_TOLERANCE:.0%} to the last axis)")
    norms = channel_norms(fp)
    if any(n.scheme in ("zscore", DEFAULT_SCHEME) for n in norms):
        where = "inside the nonzero mask" if uses_mask_for_norm(fp) else "over every voxel"
        notes.append(f"z-score {where}: cropping to the nonzero box leaves the median case "
                     f"{fp.median_relative_size_after_cropping:.0%} of its voxels (the mask is "
                     f"used below {MASK_FOR_NORM_BELOW:.0%}, as in nnU-Net)")
    if not fp.crop_to_nonzero:
        notes.append(f"no crop to the nonzero box: {len(fp.labelled_outside_crop)} training "
                     f"case(s) have labelled voxels beyond it")
    med = median_shape(fp, full)
    axes = (0, 1, 2) if dim == 3 else tuple(a for a in range(3) if a != slice_axis)
    net_spacing = tuple(full[a] for a in axes)
    if N.network_preset(settings.network).residual:
        patch, kernels, strides, batch = fit_vram(fp, dim, [med[a] for a in axes], net_spacing,
                                                  settings, len(fp.case_ids) * math.prod(med),
                                                  notes)
    else:
        budget = settings.patch_budget(dim)
        patch, kernels, strides = fit_patch([med[a] for a in axes], net_spacing, budget,
                                            settings)
        notes.append(f"patch {patch} from median shape {tuple(med[a] for a in axes)} "
                     f"(budget {budget} voxels)")
        raw_batch = settings.batch_budget(dim) // math.prod(patch)
        batch = min(max(raw_batch, settings.min_batch_size), settings.max_batch_size)
        if batch != raw_batch:
            notes.append(f"batch size {raw_batch} clipped to {batch}")
    return Plan(
        dataset=dataset_name, dim=dim, spacing=net_spacing,
        full_spacing=(full[0], full[1], full[2]), patch_size=patch,
        kernels=kernels, strides=strides,
        filters=unet_filters(len(strides), dim, settings.base_filters),
        batch_size=batch, num_channels=fp.num_channels, num_classes=fp.scheme.num_classes,
        labels=dict(fp.scheme.names), channel_norms=norms, slice_axis=slice_axis,
        median_shape=med, notes=tuple(notes),
        label_values=fp.scheme.values, layout=fp.layout, label_scheme=fp.scheme,
        network=settings.network, encoder_blocks=N.encoder_blocks(settings.network,
                                                                  len(strides)),
        crop_to_nonzero=fp.crop_to_nonzero,
    )
