"""Random training patches from the preprocessed cases, read memory-mapped.

The preprocessed folder holds, per case, ``<case>.npy`` (float32, ``(C, X, Y, Z)``) and
``<case>_seg.npy`` (uint8, ``(X, Y, Z)``), plus ``manifest.json`` whose ``"cases"`` entry gives
each case's ``class_locations``: for each foreground label (a string key), a list of voxel
coordinates ``[x, y, z]`` known to carry that label.

Foreground oversampling follows nnU-Net: with probability ``foreground_prob`` a patch is centred
on a voxel of a foreground class present in the case (class first, then voxel, so that rare
classes are seen as often as common ones); otherwise the patch lies at a random position. Only
the case ids handed to :class:`PatchSampler` are ever read, so a fold's validation cases stay
unseen.

A cascade stage (``previous_dir`` set) also reads ``<case>_prev.npy`` from that folder (the
previous stage's segmentation on the same grid, :mod:`nnpipe.preprocessing.previous`) and
appends it to the image as ``previous_classes - 1`` one-hot channels (foreground classes),
corrupted at random with ``previous_perturbation`` (:mod:`nnpipe.data.previous`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np

from nnpipe.data.previous import perturb_previous
from nnpipe.errors import DataError
from nnpipe.planning.plan import PREPROCESSING_VERSION, Plan

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SamplerSettings:
    """What a patch looks like and how often it is centred on foreground.

    ``patch_size`` is in voxels along the network's axes: ``(X, Y, Z)`` in 3D; in 2D the two
    axes other than ``slice_axis``, in increasing axis order (as :attr:`Plan.in_plane_axes`).
    ``foreground_prob`` is 0.4 in the NVIDIA reference (nnU-Net itself uses 0.33).
    """

    patch_size: tuple[int, ...]
    foreground_prob: float = 0.4
    dim: int = 3
    slice_axis: int | None = None
    # cascade stages: the folder of <case>_prev.npy and the classes they hold (K, background
    # included; K - 1 one-hot channels are appended to the image)
    previous_dir: str | None = None
    previous_classes: int = 0
    # corrupt those channels at random (nnpipe.data.previous): training batches, not the
    # fixed validation patches
    previous_perturbation: bool = False

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise ValueError(f"SamplerSettings.dim must be 2 or 3, got {self.dim!r}")
        if len(self.patch_size) != self.dim or any(int(p) < 1 for p in self.patch_size):
            raise ValueError(f"SamplerSettings.patch_size must be {self.dim} positive voxel "
                             f"counts for dim={self.dim}, got {self.patch_size!r}")
        if not 0.0 <= self.foreground_prob <= 1.0:
            raise ValueError(f"SamplerSettings.foreground_prob must lie in [0, 1], "
                             f"got {self.foreground_prob!r}")
        if self.dim == 2 and self.slice_axis not in (0, 1, 2):
            raise ValueError(f"SamplerSettings.slice_axis must be 0, 1 or 2 for a 2D sampler, "
                             f"got {self.slice_axis!r}")
        if self.dim == 3 and self.slice_axis is not None:
            raise ValueError(f"SamplerSettings.slice_axis must be None for a 3D sampler, "
                             f"got {self.slice_axis!r}")
        if (self.previous_dir is None) != (self.previous_classes == 0) \
                or self.previous_classes == 1 or self.previous_classes < 0:
            raise ValueError("SamplerSettings.previous_dir and previous_classes (>= 2) go "
                             f"together, got {self.previous_dir!r} and "
                             f"{self.previous_classes!r}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def previous_channels(self) -> int:
        """One-hot channels appended for the previous stage's segmentation (0: none)."""
        return max(self.previous_classes - 1, 0)

    @classmethod
    def from_plan(cls, plan: Plan, foreground_prob: float = 0.4) -> SamplerSettings:
        """The plan's patch size, dimensionality and slice axis."""
        return cls(plan.patch_size, foreground_prob, plan.dim, plan.slice_axis)

    @property
    def box_size(self) -> tuple[int, int, int]:
        """The patch as a box over all three voxel axes (size 1 along the 2D slice axis)."""
        if self.dim == 3:
            return (self.patch_size[0], self.patch_size[1], self.patch_size[2])
        sizes = iter(self.patch_size)
        box = [1 if axis == self.slice_axis else next(sizes) for axis in range(3)]
        return (box[0], box[1], box[2])


@dataclass(frozen=True)
class _Case:
    """One opened case: memory-mapped arrays and its foreground voxels per label."""

    case_id: str
    image: np.ndarray  # (C, X, Y, Z), memory-mapped
    seg: np.ndarray  # (X, Y, Z), memory-mapped
    foreground: tuple[np.ndarray, ...]  # per present foreground label: (N, 3) voxel indices
    previous: np.ndarray | None = None  # (X, Y, Z) previous stage's classes, memory-mapped


def read_manifest(preprocessed_dir: Path | str) -> dict[str, Any]:
    """Read ``manifest.json`` of a preprocessed folder; :class:`DataError` if absent or bad."""
    path = Path(preprocessed_dir) / MANIFEST
    if not path.is_file():
        raise DataError("manifest is missing (run the preprocess stage first)", path=path)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest is not valid JSON ({exc})", path=path) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), dict):
        raise DataError('manifest has no "cases" object', path=path)
    version = manifest.get("preprocessing_version")
    if version is not None and version != PREPROCESSING_VERSION:
        raise DataError(f"was preprocessed with rules version {version}; this nnpipe's are "
                        f"version {PREPROCESSING_VERSION}: preprocess again (delete the folder; "
                        "Snakemake reruns the preprocess rule by itself)", path=path)
    return manifest


def _load_array(path: Path, case_id: str, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DataError("preprocessed array is missing", case=case_id, path=path)
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot be read as .npy ({exc})", case=case_id, path=path) from exc
    if array.ndim != ndim:
        raise DataError(f"expected {ndim} axes, found shape {array.shape}", case=case_id, path=path)
    return array


def _foreground_locations(entry: dict[str, Any], shape: tuple[int, ...], case_id: str,
                          manifest_path: Path) -> tuple[np.ndarray, ...]:
    """The non-empty foreground voxel lists of one manifest entry, checked against ``shape``."""
    locations = entry.get("class_locations") or {}
    found = []
    for label in sorted(locations, key=int):
        if int(label) == 0 or not locations[label]:
            continue  # background is never oversampled; an absent class has nothing to offer
        voxels = np.asarray(locations[label], dtype=np.int64)
        if voxels.ndim != 2 or voxels.shape[1] != 3:
            raise DataError(f"class_locations[{label!r}] must be a list of [x, y, z], "
                            f"got an array of shape {voxels.shape}", case=case_id,
                            path=manifest_path)
        if (voxels < 0).any() or (voxels >= np.asarray(shape)).any():
            raise DataError(f"class_locations[{label!r}] has voxels outside the volume of "
                            f"shape {shape}", case=case_id, path=manifest_path)
        found.append(voxels)
    return tuple(found)


def _open_case(folder: Path, case_id: str, entry: dict[str, Any],
               previous_dir: str | None = None) -> _Case:
    image_path, seg_path = folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy"
    image = _load_array(image_path, case_id, 4)
    seg = _load_array(seg_path, case_id, 3)
    if image.shape[1:] != seg.shape:
        raise DataError(f"image shape {image.shape} (C, X, Y, Z) does not match segmentation "
                        f"shape {seg.shape}", case=case_id, path=seg_path)
    foreground = _foreground_locations(entry, seg.shape, case_id, folder / MANIFEST)
    previous = None
    if previous_dir is not None:
        prev_path = Path(previous_dir) / f"{case_id}_prev.npy"
        previous = _load_array(prev_path, case_id, 3)
        if previous.shape != seg.shape:
            raise DataError(f"previous-stage segmentation of shape {previous.shape} does not "
                            f"match the case's {seg.shape}", case=case_id, path=prev_path)
    return _Case(case_id, image, seg, foreground, previous)


def _crop_into(source: np.ndarray, starts: Sequence[int], out: np.ndarray) -> None:
    """Copy the box at ``starts`` (last three axes) of ``source`` into ``out``.

    ``out`` has ``source``'s leading axes and the box size as its last three axes; where the
    box runs past the volume (negative starts, or beyond the end) ``out`` is set to zero.
    ``out`` may hold anything before: it is zeroed only when the box leaves the volume, so a
    patch inside the volume costs one copy (128³ x 4 channels is 32 MB per sample).
    """
    src: list[slice] = []
    dst: list[slice] = []
    for start, size, extent in zip(starts, out.shape[-3:], source.shape[-3:], strict=True):
        lo, hi = max(start, 0), min(start + size, extent)
        if hi <= lo:
            out[...] = 0
            return  # no overlap at all: the patch is all padding
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    if any(d.start > 0 or d.stop < size for d, size in zip(dst, out.shape[-3:], strict=True)):
        out[...] = 0
    dst_index: tuple[EllipsisType | slice, ...] = (..., *dst)
    src_index: tuple[EllipsisType | slice, ...] = (..., *src)
    np.copyto(out[dst_index], source[src_index], casting="unsafe")


class PatchSampler:
    """Draws batches of patches from memory-mapped preprocessed cases.

    Args:
        preprocessed_dir: folder with ``<case>.npy``, ``<case>_seg.npy`` and ``manifest.json``.
        case_ids: the cases to sample from (a fold's training split); each must be in the
            manifest and have both arrays.
        settings: patch size, dimensionality and foreground probability.

    Raises:
        ValueError: if ``case_ids`` is empty or repeats an id.
        DataError: naming the case and file if a case is missing or malformed.
    """

    def __init__(self, preprocessed_dir: Path | str, case_ids: Sequence[str],
                 settings: SamplerSettings):
        folder = Path(preprocessed_dir)
        if len(case_ids) == 0:
            raise ValueError(f"PatchSampler needs at least one case id for {folder}")
        if len(set(case_ids)) != len(case_ids):
            raise ValueError(f"PatchSampler case ids repeat: {sorted(case_ids)}")
        entries = read_manifest(folder)["cases"]
        cases = []
        for case_id in case_ids:
            if case_id not in entries:
                raise DataError("case is not in the manifest", case=case_id,
                                path=folder / MANIFEST)
            cases.append(_open_case(folder, case_id, entries[case_id], settings.previous_dir))
        channels = {c.image.shape[0] for c in cases}
        if len(channels) != 1:
            raise DataError(f"cases disagree on the number of channels: {sorted(channels)}",
                            path=folder)
        self.settings = settings
        self.image_channels = channels.pop()
        # what a batch holds: the image's channels, then the previous stage's one-hot ones
        self.num_channels = self.image_channels + settings.previous_channels
        self._cases = tuple(cases)

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(c.case_id for c in self._cases)

    def _box_start(self, rng: np.random.Generator, case: _Case) -> list[int]:
        """Start voxel of the patch box in ``case`` (may be negative or run past the end)."""
        box, shape = self.settings.box_size, case.seg.shape
        if case.foreground and rng.random() < self.settings.foreground_prob:
            voxels = case.foreground[int(rng.integers(len(case.foreground)))]
            centre = voxels[int(rng.integers(len(voxels)))]
            # Size 1 along the 2D slice axis makes this the chosen voxel's slice.
            return [int(c) - b // 2 for c, b in zip(centre, box, strict=True)]
        # Random position; a patch larger than the volume places the volume at random inside it.
        return [int(rng.integers(min(0, s - b), max(0, s - b) + 1))
                for s, b in zip(shape, box, strict=True)]

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw one batch; the same generator state gives the same batch.

        Returns:
            image: float32 ``(B, C, *patch_size)``, zero where the patch leaves the volume.
            seg: int64 ``(B, 1, *patch_size)``, 0 (background) where the patch leaves it.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        patch = self.settings.patch_size
        image = np.empty((batch_size, self.num_channels, *patch), dtype=np.float32)
        seg = np.empty((batch_size, 1, *patch), dtype=np.int64)
        self.sample_into(rng, image, seg)
        return image, seg

    def sample_into(self, rng: np.random.Generator, image: np.ndarray, seg: np.ndarray) -> None:
        """Fill ``image`` (B, C, *patch) and ``seg`` (B, 1, *patch) with one batch, in place.

        For host staging: the buffers may be views of pinned memory, and ``seg`` may have a
        narrower integer dtype than int64 (the preprocessed labels are uint8, so uint8 is
        lossless and 8x less to copy to the device). Draws exactly what :meth:`sample` draws.
        """
        patch, box = self.settings.patch_size, self.settings.box_size
        batch_size = image.shape[0]
        expected = ((batch_size, self.num_channels, *patch), (batch_size, 1, *patch))
        if (image.shape, seg.shape) != expected or batch_size < 1:
            raise ValueError(f"sample_into needs image and seg buffers of shapes {expected}, "
                             f"got {image.shape} and {seg.shape}")
        for b in range(batch_size):
            case = self._cases[int(rng.integers(len(self._cases)))]
            starts = self._box_start(rng, case)
            # Views (not copies: the buffers are contiguous) of this sample's outputs with the
            # 2D slice axis put back as a size-1 axis. A case without foreground in its
            # manifest entry always gets a random patch.
            image_box = image[b].reshape(self.num_channels, *box)
            seg_box = seg[b, 0].reshape(box)
            _crop_into(case.image, starts, image_box[:self.image_channels])
            _crop_into(case.seg, starts, seg_box)
            if case.previous is not None:
                previous = np.empty(box, dtype=np.uint8)
                _crop_into(case.previous, starts, previous)
                classes = np.arange(1, self.settings.previous_classes, dtype=np.uint8)
                image_box[self.image_channels:] = previous[None] == classes.reshape(-1, 1, 1, 1)
                if self.settings.previous_perturbation:
                    perturb_previous(image_box[self.image_channels:], rng)
