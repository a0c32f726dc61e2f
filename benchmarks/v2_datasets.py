"""Tiny datasets in nnU-Net v2's raw layout for the v2 parity bench (not part of CI).

Each dataset is small enough that nnU-Net v2 plans, preprocesses and briefly trains it on
two CPU cores in minutes, and shaped to exercise one group of v2's rules::

    python benchmarks/v2_datasets.py --out /tmp/v2raw            # all four
    python benchmarks/v2_datasets.py --out /tmp/v2raw --only 902

* ``Dataset901_AnisoMR``: 3D MR, two channels (``T2``, ``ADC``: v2's z-score scheme), a
  zero background around a head-shaped ellipsoid that fills well under 3/4 of the box, so
  v2's planner turns on ``use_mask_for_norm`` (z-score inside the non-zero mask). Spacing
  about (1, 1, 3.5) mm (X, Y, Z), varying per case, so every case is resampled and the
  coarse axis is resampled separately. v2 also plans a ``2d`` configuration for it.
* ``Dataset902_CTSepZ``: CT (``CT``: v2's clipped z-score with foreground percentiles),
  two classes, air at -1000 HU, spacing about (0.8, 0.8, 5) mm with one coarse axis, and an
  LPS affine (X and Y flipped) so voxel order and orientation differ from RAS.
* ``Dataset903_RegionsBraTS``: BraTS-like region-based labels: ``labels`` maps the region
  names to value tuples (whole tumor (1, 2, 3), tumor core (2, 3), enhancing tumor 3) and
  ``regions_class_order`` is ``[1, 2, 3]``.
* ``Dataset904_CoronalMR``: one MR channel stored with its coarse axis first in the file
  (a permuted affine, slices along the file's X), so v2's ``transpose_forward`` is not the
  identity and nnpipe's reorientation to RAS moves axes.

Images are written with nibabel (``<case>_<channel:04d>.nii.gz`` in ``imagesTr`` and
``imagesTs``, labels ``<case>.nii.gz`` in ``labelsTr``) from a seeded generator: the same
``--seed`` gives the same files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Case:
    """One generated case: channels ``(C, X, Y, Z)``, labels ``(X, Y, Z)``, affine (4, 4)."""

    channels: Array
    label: Array
    affine: Array


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[Array]:
    """Voxel-centre coordinates in mm, relative to the box centre, per axis (broadcastable)."""
    return [((np.arange(n) - (n - 1) / 2) * s).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (n, s) in enumerate(zip(shape, spacing, strict=True))]


def _ellipsoid(xyz: list[Array], centre: Array, radii: Array) -> Array:
    return sum(((c - m) / r) ** 2 for c, m, r in zip(xyz, centre, radii, strict=True)) <= 1.0


def _mr_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mean: Array,
             n_channels: int) -> tuple[Array, Array, tuple[float, float, float]]:
    """A head ellipsoid with a bright lesion in channel 0 (dark in channel 1), zero outside."""
    spacing = tuple(float(s) for s in spacing_mean * rng.uniform(0.88, 1.12, 3))
    xyz = _grid(shape, spacing)  # type: ignore[arg-type]
    extent = np.array(shape) * np.array(spacing)
    head = _ellipsoid(xyz, np.zeros(3), extent * np.array([0.34, 0.33, 0.40]))
    centre = rng.uniform(-0.12, 0.12, 3) * extent
    lesion = _ellipsoid(xyz, centre, extent * rng.uniform(0.09, 0.14, 3) *
                        np.array([1.0, 1.0, 1.6])) & head
    scale = rng.uniform(0.7, 1.4)
    chans = []
    for c in range(n_channels):
        tissue, bright = (100.0, 190.0) if c == 0 else (60.0, 15.0)
        img = np.where(head, tissue + rng.normal(0, 8, shape), 0.0)
        img = np.where(lesion, bright + rng.normal(0, 8, shape), img)
        chans.append((img * scale).astype(np.float32))
    return np.stack(chans), lesion.astype(np.uint8), spacing  # type: ignore[return-value]


def aniso_mr(rng: np.random.Generator) -> Case:
    img, lab, sp = _mr_case(rng, (48, 44, 14), np.array([1.0, 1.0, 3.5]), 2)
    return Case(img, lab, np.diag([*sp, 1.0]))


def ct_sep_z(rng: np.random.Generator) -> Case:
    shape = (44, 40, 12)
    sp = tuple(float(s) for s in np.array([0.8, 0.8, 5.0]) * rng.uniform(0.85, 1.15, 3))
    xyz = _grid(shape, sp)  # type: ignore[arg-type]
    extent = np.array(shape) * np.array(sp)
    body = _ellipsoid(xyz, np.zeros(3), extent * np.array([0.42, 0.36, 0.8]))
    organ = _ellipsoid(xyz, rng.uniform(-0.08, 0.08, 3) * extent,
                       extent * np.array([0.17, 0.16, 0.3]) * rng.uniform(0.85, 1.15, 3))
    lesion = _ellipsoid(xyz, (rng.uniform(-0.04, 0.04, 3) + [0.05, 0, 0]) * extent,
                        extent * np.array([0.07, 0.07, 0.16])) & organ
    hu = np.where(body, 0.0 + rng.normal(0, 15, shape), -1000.0 + rng.normal(0, 5, shape))
    hu = np.where(organ, 130 + rng.normal(0, 15, shape), hu)
    hu = np.where(lesion, 260 + rng.normal(0, 15, shape), hu)
    lab = np.where(lesion, 2, np.where(organ, 1, 0)).astype(np.uint8)
    # LPS: X and Y run the other way; the origin keeps the world box where RAS would put it
    aff = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    aff[:3, 3] = [sp[0] * (shape[0] - 1), sp[1] * (shape[1] - 1), 0.0]
    return Case(np.round(hu).astype(np.int16)[None], lab, aff)


def regions_brats(rng: np.random.Generator) -> Case:
    shape = (40, 40, 24)
    sp = tuple(float(s) for s in rng.uniform(0.95, 1.05, 3) * np.array([1.2, 1.2, 1.5]))
    xyz = _grid(shape, sp)  # type: ignore[arg-type]
    extent = np.array(shape) * np.array(sp)
    brain = _ellipsoid(xyz, np.zeros(3), extent * np.array([0.38, 0.36, 0.38]))
    c = rng.uniform(-0.08, 0.08, 3) * extent
    r = rng.uniform(7.0, 9.0)
    edema = _ellipsoid(xyz, c, np.full(3, r)) & brain
    core = _ellipsoid(xyz, c, np.full(3, 0.62 * r)) & brain
    necro = _ellipsoid(xyz, c, np.full(3, 0.35 * r)) & brain
    lab = np.zeros(shape, np.uint8)
    lab[edema] = 1
    lab[core] = 3  # enhancing rim
    lab[necro] = 2  # non-enhancing core
    t1c = np.where(brain, 80 + rng.normal(0, 6, shape), 0.0)
    t1c = np.where(lab == 3, 200 + rng.normal(0, 8, shape), t1c)
    t1c = np.where(lab == 2, 40 + rng.normal(0, 6, shape), t1c)
    flair = np.where(brain, 70 + rng.normal(0, 6, shape), 0.0)
    flair = np.where(lab > 0, 170 + rng.normal(0, 8, shape), flair)
    return Case(np.stack([t1c, flair]).astype(np.float32), lab, np.diag([*sp, 1.0]))


def coronal_mr(rng: np.random.Generator) -> Case:
    """An MR case acquired in coronal slices: the coarse axis is the file's first axis."""
    img, lab, sp = _mr_case(rng, (12, 44, 40), np.array([4.0, 1.0, 1.0]), 1)
    # file axes (i, j, k) -> world (y, z, x)-ish: a permuted, non-diagonal affine
    aff = np.zeros((4, 4))
    aff[1, 0], aff[2, 1], aff[0, 2], aff[3, 3] = sp[0], sp[1], -sp[2], 1.0
    return Case(img, lab, aff)


@dataclass(frozen=True)
class Spec:
    dataset: str
    channels: dict[str, str]
    labels: dict[str, int | list[int]]
    make: Callable[[np.random.Generator], Case]
    n_train: int
    n_test: int
    regions_class_order: tuple[int, ...] | None = None


SPECS: dict[int, Spec] = {
    901: Spec("Dataset901_AnisoMR", {"0": "T2", "1": "ADC"}, {"background": 0, "lesion": 1},
              aniso_mr, 6, 2),
    902: Spec("Dataset902_CTSepZ", {"0": "CT"}, {"background": 0, "organ": 1, "lesion": 2},
              ct_sep_z, 5, 2),
    903: Spec("Dataset903_RegionsBraTS", {"0": "T1c", "1": "FLAIR"},
              {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
               "enhancing tumor": 3}, regions_brats, 5, 2, (1, 2, 3)),
    904: Spec("Dataset904_CoronalMR", {"0": "T2"}, {"background": 0, "lesion": 1},
              coronal_mr, 5, 2),
}


def _save(path: Path, data: Array, affine: Array) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(".tmp-" + path.name)
    nib.save(img, tmp)
    tmp.rename(path)


def write_dataset(spec: Spec, out: Path, seed: int) -> Path:
    """Write ``spec`` under ``out/<dataset>/`` in v2's raw layout; return that folder."""
    root = out / spec.dataset
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + int(spec.dataset[7:10]))
    short = spec.dataset.split("_", 1)[1].lower()
    for i in range(spec.n_train + spec.n_test):
        case = spec.make(rng)
        test = i >= spec.n_train
        cid = f"{short}_{i:03d}"
        for c, ch in enumerate(case.channels):
            _save(root / ("imagesTs" if test else "imagesTr") / f"{cid}_{c:04d}.nii.gz",
                  ch, case.affine)
        _save(root / ("labelsTs" if test else "labelsTr") / f"{cid}.nii.gz",
              case.label, case.affine)
    meta: dict[str, object] = {"channel_names": spec.channels, "labels": spec.labels,
                               "numTraining": spec.n_train, "file_ending": ".nii.gz",
                               "name": spec.dataset}
    if spec.regions_class_order is not None:
        meta["regions_class_order"] = list(spec.regions_class_order)
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write DatasetNNN_* into")
    p.add_argument("--only", type=int, nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for key in a.only:
        print(write_dataset(SPECS[key], a.out, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
