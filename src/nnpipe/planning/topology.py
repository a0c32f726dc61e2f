"""U-Net topology from a patch size and a voxel spacing: pure functions, no I/O.

The rule is the reference implementation's: at each level, an axis is downsampled only
while its spacing is within a factor 2 of the finest current spacing (so anisotropic data
are first pooled in-plane until the voxels become roughly isotropic) and while it still has
at least ``2 * min_size`` voxels (so the bottleneck keeps ``min_size`` or more voxels per
downsampled axis). An axis more than twice as coarse as the finest gets kernel size 1:
a 3-voxel kernel across 5 mm slices would mix anatomy that is far apart.
"""

from __future__ import annotations

from collections.abc import Sequence

Kernels = tuple[tuple[int, ...], ...]
Strides = tuple[tuple[int, ...], ...]

# Filter caps of the reference (and nnU-Net): 320 channels in 3D, 512 in 2D.
MAX_FILTERS = {2: 512, 3: 320}


def unet_topology(patch_size: Sequence[int], spacing: Sequence[float], max_depth: int = 5,
                  min_size: int = 4) -> tuple[Kernels, Strides]:
    """Kernel sizes and strides per level for a patch of ``patch_size`` voxels.

    Args:
        patch_size: voxels per axis (any axis order; ``spacing`` in the same order).
        spacing: mm per voxel along the same axes.
        max_depth: most downsampling steps (levels below the first).
        min_size: fewest voxels an axis may have after its last downsampling.

    Returns:
        ``(kernels, strides)``, one entry per level (``n_levels = downsamplings + 1``), each a
        tuple with one int per axis. ``strides[0]`` is all ones (the first level works at full
        resolution); the last level (bottleneck) has kernel 3 on every axis.
    """
    if len(patch_size) != len(spacing) or len(patch_size) not in (2, 3):
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} must both "
                         f"have 2 or 3 entries")
    if any(s <= 0 for s in spacing) or any(p <= 0 for p in patch_size):
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} must be > 0")
    if max_depth < 0 or min_size < 1:
        raise ValueError(f"max_depth must be >= 0 and min_size >= 1, got {max_depth}, {min_size}")
    sizes = [float(p) for p in patch_size]
    spacings = [float(s) for s in spacing]
    kernels: list[tuple[int, ...]] = []
    strides: list[tuple[int, ...]] = [tuple(1 for _ in sizes)]
    while len(strides) - 1 < max_depth:
        finest = min(spacings)
        ratios = [s / finest for s in spacings]
        stride = tuple(2 if r <= 2 and n >= 2 * min_size else 1
                       for r, n in zip(ratios, sizes, strict=True))
        if all(s == 1 for s in stride):
            break
        # The kernel of this level is chosen at the spacing this level works at, i.e. before
        # its output is downsampled for the next level.
        kernels.append(tuple(3 if r <= 2 else 1 for r in ratios))
        strides.append(stride)
        sizes = [n / s for n, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
    kernels.append(tuple(3 for _ in sizes))  # bottleneck
    return tuple(kernels), tuple(strides)


def total_strides(strides: Strides) -> tuple[int, ...]:
    """Total downsampling per axis: the patch must be a multiple of this along each axis."""
    total = [1] * len(strides[0])
    for level in strides:
        total = [t * s for t, s in zip(total, level, strict=True)]
    return tuple(total)


def unet_filters(n_levels: int, dim: int, base: int = 32) -> tuple[int, ...]:
    """Feature maps per level: ``base * 2**level``, capped at 320 (3D) or 512 (2D)."""
    if dim not in MAX_FILTERS:
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if n_levels < 1 or base < 1:
        raise ValueError(f"n_levels and base must be >= 1, got {n_levels}, {base}")
    return tuple(min(base * 2**i, MAX_FILTERS[dim]) for i in range(n_levels))
