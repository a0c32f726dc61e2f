"""Voxel geometry as NIfTI defines it: canonical orientation, its exact inverse, grid checks.

Every image nnpipe reads is brought to one voxel order, the one closest to RAS+ (voxel
axes 0, 1, 2 pointing as nearly as possible to world +x Right, +y Anterior, +z Superior;
nibabel's ``as_closest_canonical`` rule: a permutation and flips of the voxel axes, never a
resampling). A dataset mixing axial, sagittal and coronal storage then
has one median spacing, one anisotropic axis and one 2D slice axis. :class:`Orientation`
remembers the permutation and flips, and :meth:`Orientation.undo` puts an array computed in
the canonical grid back into the file's own voxel order, so predictions are written on each
case's own grid with its own header.

Affines here map voxel indices to world millimetres (RAS+); spacings are mm along the voxel
axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornt

_RAS = ornt.axcodes2ornt(("R", "A", "S"))


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel spacing (mm) along the voxel axes: the column norms of the affine's 3×3 part."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def axis_codes(affine: np.ndarray) -> str:
    """Axis codes such as ``"RAS"`` (axial) or ``"ASR"`` (sagittal, slice axis last)."""
    return "".join(str(c) for c in ornt.aff2axcodes(np.asarray(affine)))


@dataclass(frozen=True)
class Orientation:
    """The flips and permutation from a file's voxel order to the canonical (RAS) one.

    ``transform`` is nibabel's orientation array, one row per file axis: (canonical axis it
    becomes, +1 kept / -1 flipped). ``shape`` is the file's spatial shape ``(X, Y, Z)``.
    """

    transform: tuple[tuple[int, int], ...]
    shape: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.transform == ((0, 1), (1, 1), (2, 1))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for n, (axis, _) in zip(self.shape, self.transform, strict=True):
            out[axis] = n
        return (out[0], out[1], out[2])

    def apply(self, data: np.ndarray) -> np.ndarray:
        """File order -> canonical order for ``data`` ``(X, Y, Z, ...)`` (trailing axes kept)."""
        if self.is_identity:
            return data
        return ornt.apply_orientation(data, np.asarray(self.transform, dtype=float))

    def undo(self, data: np.ndarray, *, channel_first: bool = False) -> np.ndarray:
        """Canonical order -> file order; the exact inverse of :meth:`apply`.

        ``data`` is ``(X, Y, Z, ...)``, or ``(C, X, Y, Z)`` with ``channel_first``.
        """
        if self.is_identity:
            return data
        # the inverse of "axis i becomes axis j (flip f)" is "axis j becomes axis i (flip f)"
        inverse = np.zeros((3, 2))
        for i, (j, f) in enumerate(self.transform):
            inverse[j] = (i, f)
        if channel_first:
            moved = np.moveaxis(data, 0, -1)
            return np.ascontiguousarray(np.moveaxis(ornt.apply_orientation(moved, inverse),
                                                    -1, 0))
        return np.ascontiguousarray(ornt.apply_orientation(data, inverse))

    def canonical_affine(self, affine: np.ndarray) -> np.ndarray:
        """The affine of the canonical grid (same world positions as ``affine``'s)."""
        if self.is_identity:
            return np.asarray(affine, dtype=np.float64)
        return np.asarray(affine, dtype=np.float64) @ ornt.inv_ornt_aff(
            np.asarray(self.transform, dtype=float), self.shape)

    def to_list(self) -> list[list[int]]:
        return [list(t) for t in self.transform]

    @classmethod
    def from_list(cls, value: Sequence[Sequence[int]], shape: Sequence[int]) -> Orientation:
        return cls(tuple((int(a), int(f)) for a, f in value),
                   (int(shape[0]), int(shape[1]), int(shape[2])))


# Two direction cosines of one voxel axis closer than this are a tie (an oblique grid at
# 45 degrees): float rounding, not the anatomy, would pick the world axis.
TIE_ATOL = 1e-4


def orientation_of(affine: np.ndarray, shape: Sequence[int]) -> Orientation:
    """The :class:`Orientation` taking a grid of ``shape`` (X, Y, Z) and ``affine`` to RAS.

    Each voxel axis goes to the world axis its direction is closest to (nibabel's
    ``io_orientation``). Where that is a tie (a voxel axis at 45 degrees between two world
    axes, within :data:`TIE_ATOL` in cosine), the file's own axis order is kept: of the
    axis assignments that are equally close, the one moving the fewest axes (the identity
    where it is among them), with flips by the sign of the cosines; never the one float
    rounding happens to favour.
    """
    a = np.asarray(affine, dtype=np.float64)
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    cos = a[:3, :3] / np.maximum(np.linalg.norm(a[:3, :3], axis=0), 1e-12)  # column = voxel axis
    top = np.sort(np.abs(cos), axis=0)
    if np.all(top[2] - top[1] > TIE_ATOL):
        t = ornt.ornt_transform(ornt.io_orientation(a), _RAS)
        return Orientation(tuple((int(w), int(f)) for w, f in t), size)
    return Orientation(_tied_assignment(cos), size)


def _tied_assignment(cos: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Voxel axis -> (world axis, sign) for direction cosines ``cos`` (3x3, column = voxel
    axis) with a tie: among the permutations whose summed |cosine| is within
    :data:`TIE_ATOL` of the best, the one with the most axes left in place, then the first
    in lexicographic order (only reached for two equally good moves of the same size)."""
    perms = list(itertools.permutations(range(3)))
    score = {p: sum(abs(cos[p[v], v]) for v in range(3)) for p in perms}
    best = max(score.values())
    near = [p for p in perms if score[p] >= best - TIE_ATOL]
    chosen = max(near, key=lambda p: (sum(p[v] == v for v in range(3)),
                                      [-w for w in p]))
    return tuple((int(chosen[v]), 1 if cos[chosen[v], v] >= 0 else -1) for v in range(3))


# ---------------------------------------------------------------- comparing grids

# Tolerances relative to the voxel size: headers store positions in float32 and tools round
# them differently, but 1 % of a voxel is far below anything visible.
SPACING_RTOL = 1e-3  # fraction of the voxel size
ORIGIN_VOXELS = 1e-2  # fraction of the smallest voxel size
DIRECTION_ATOL = 1e-3  # cosine components (unitless)


def grid_difference(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int],
                    affine_b: np.ndarray) -> str | None:
    """None when two grids are the same, else which of shape, spacing, origin and direction
    differ and by how much (``b`` relative to ``a``), with tolerances scaled by voxel size."""
    a, b = np.asarray(affine_a, dtype=np.float64), np.asarray(affine_b, dtype=np.float64)
    parts = []
    if tuple(int(s) for s in shape_a[:3]) != tuple(int(s) for s in shape_b[:3]):
        parts.append(f"shape {tuple(int(s) for s in shape_b[:3])} vs "
                     f"{tuple(int(s) for s in shape_a[:3])}")
    sa, sb = np.asarray(spacing_of(a)), np.asarray(spacing_of(b))
    if np.any(np.abs(sa - sb) > SPACING_RTOL * np.maximum(sa, 1e-12)):
        parts.append(f"spacing {_mm(sb)} vs {_mm(sa)}")
    da, db = a[:3, :3] / np.maximum(sa, 1e-12), b[:3, :3] / np.maximum(sb, 1e-12)
    if np.abs(da - db).max() > DIRECTION_ATOL:
        parts.append(f"direction {axis_codes(b)} vs {axis_codes(a)} (largest cosine "
                     f"difference {np.abs(da - db).max():.3g})")
    shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    if shift > ORIGIN_VOXELS * float(min(sa.min(), sb.min())):
        parts.append(f"origin {_mm(b[:3, 3])} vs {_mm(a[:3, 3])} ({shift:.4g} mm apart)")
    return "; ".join(parts) or None


def _mm(v: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ") mm"
