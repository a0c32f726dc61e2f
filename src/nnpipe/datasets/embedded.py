"""The embedded default dataset: BraTS-like brain MRI synthesized offline from the MNI152 template.

:func:`generate_embedded` writes a Medical Segmentation Decathlon folder shaped like
Task01_BrainTumour (``dataset.json``, 4-channel ``imagesTr``, ``labelsTr``, ``imagesTs``) with
no network access, so the default pipeline runs anywhere. Its anatomy is the MNI ICBM152 2009
template that nilearn ships (brain mask, grey- and white-matter probability maps); per case it
adds what makes segmentation a real task rather than a threshold:

* a random head: per-axis scale, smooth non-linear deformation, position, oblique voxel grid
  (small rotation in the affine) and voxel spacing (isotropic or one axis 1.5-2.5x coarser,
  with slice-thickness partial volume);
* a tumour of random size, shape and place: oedema (1) around a tumour core, whose outer shell
  enhances (3) around a non-enhancing or necrotic centre (2); every core voxel's 6-neighbours are
  tumour, so the BraTS regions nest (whole = 1|2|3 ⊃ core = 2|3 ⊃ enhancing = 3);
* four contrasts (FLAIR, T1w, T1-Gd, T2w) from per-tissue and per-label signal tables jittered
  per case, a multiplicative smooth bias field per channel and Rician noise.

Outside the brain every channel is exactly 0 (the data are "skull-stripped" like BraTS), so the
nonzero crop behaves as on the real data. Everything is drawn from ``numpy`` generators seeded
by ``(seed, case index)``, so a given seed always produces the same arrays.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from nnpipe.io import save_nifti, write_json, write_text

DATASET_NAME = "Embedded_BrainTumour"
CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
NOTICE_NAME = "LICENSE-MNI152.txt"
# Sparse variant (annotate_every > 1): unannotated voxels hold this value, named "ignore"
# (nnU-Net v2's convention: the highest label value); the dense references are kept in
# DENSE_FOLDER beside labelsTr, so a sparse run can be scored against them.
IGNORE_VALUE = 4
DENSE_FOLDER = "labelsTr_dense"

# Relative signal per channel (rows: FLAIR, T1w, T1-Gd, T2w) and class (columns: CSF, GM, WM,
# oedema, non-enhancing/necrotic core, enhancing tumour), after the usual appearance of
# gliomas: FLAIR suppresses CSF and shows oedema brightest; T1 has WM > GM > CSF and a
# hypointense tumour; gadolinium makes the enhancing shell the brightest thing on T1-Gd while
# necrosis stays dark; T2 has CSF brightest and oedema nearly as bright. Overlaps (oedema vs
# CSF on T2, non-enhancing vs GM on FLAIR) are deliberate: no single channel separates all.
CONTRAST = np.array([
    # CSF  GM    WM    oedema core  enh
    [0.15, 0.55, 0.45, 0.95, 0.72, 0.78],  # FLAIR
    [0.25, 0.55, 0.80, 0.45, 0.30, 0.50],  # T1w
    [0.25, 0.55, 0.80, 0.45, 0.28, 1.30],  # T1-Gd
    [1.00, 0.65, 0.45, 0.88, 0.80, 0.66],  # T2w
])
MIN_RESOLUTION_MM, MAX_RESOLUTION_MM = 1.0, 8.0  # the template is 1 mm; > 8 mm leaves no brain


@dataclass(frozen=True)
class _Template:
    """The MNI152 maps on an isotropic grid: ``maps`` is ``(4, X, Y, Z)`` float32 holding the
    brain fraction, CSF, GM and WM probabilities; ``affine`` maps its voxels to MNI mm."""

    maps: np.ndarray
    affine: np.ndarray

    @property
    def extent_mm(self) -> np.ndarray:
        return np.asarray(self.maps.shape[1:]) * np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def centre_mm(self) -> np.ndarray:
        middle = (np.asarray(self.maps.shape[1:]) - 1) / 2
        return self.affine[:3, :3] @ middle + self.affine[:3, 3]


@dataclass(frozen=True)
class _Geometry:
    """One case's voxel grid: ``affine`` maps its voxels to world mm; ``to_template`` maps world
    mm to template voxels (the head's scale and position; deformation added separately)."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # (3,) mm
    affine: np.ndarray  # (4, 4)
    to_template: np.ndarray  # (4, 4)


@functools.lru_cache(maxsize=4)
def _load_template(resolution_mm: float) -> _Template:
    """Load nilearn's bundled 1 mm MNI152 maps (offline), crop to the brain and box-average them
    to ``resolution_mm`` (a box of one output voxel, like an acquisition's voxel integration)."""
    from nilearn import datasets  # heavy import, needed only here

    t1 = datasets.load_mni152_template(resolution=1)
    brain_full = np.asarray(t1.dataobj) > 0  # the T1 template is skull-stripped
    lo, hi = [], []
    for axis in range(3):  # the brain's bounding box, with a 2-voxel margin
        inside = np.flatnonzero(brain_full.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(max(int(inside[0]) - 2, 0))
        hi.append(int(inside[-1]) + 3)
    box_slices = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    brain = brain_full[box_slices].astype(np.float32)
    gm, wm = (np.asarray(load(resolution=1).dataobj, dtype=np.float32)[box_slices] * brain
              for load in (datasets.load_mni152_gm_template, datasets.load_mni152_wm_template))
    maps = np.stack([brain, np.clip(brain - gm - wm, 0.0, 1.0), gm, wm])  # brain, CSF, GM, WM
    src_mm = float(np.linalg.norm(t1.affine[:3, 0]))
    step = resolution_mm / src_mm
    box = max(1, round(step))
    new_shape = [int((n - 1) // step) + 1 for n in maps.shape[1:]]
    grid = np.indices(new_shape, dtype=np.float64) * step + (step - 1) / 2
    out = np.stack([
        ndimage.map_coordinates(ndimage.uniform_filter(m, size=box), grid, order=1, mode="nearest")
        for m in maps
    ]).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(lo) + (step - 1) / 2
    scale = np.diag([step, step, step, 1.0])
    out.setflags(write=False)
    return _Template(out, np.asarray(t1.affine, dtype=np.float64) @ shift @ scale)


def _lowfreq(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int) -> np.ndarray:
    """A smooth random field ``shape`` of unit std: ``n_ctrl`` random nodes per axis blended by
    Gaussian bumps one node-distance wide, so its features are about ``extent / n_ctrl`` wide.
    (A separable tensor product: far cheaper than spline-zooming a coarse grid.)"""
    field = rng.standard_normal((n_ctrl,) * len(shape))
    for axis, n in enumerate(shape):
        pos = np.linspace(0.0, n_ctrl - 1.0, n)[:, None] - np.arange(n_ctrl)[None, :]
        basis = np.exp(-0.5 * pos ** 2)
        field = np.moveaxis(np.tensordot(basis, field, axes=([1], [axis])), 0, axis)
    field = field.astype(np.float32)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise of unit std; ``sigma_vox`` (per axis) sets its grain."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field / max(float(field.std()), 1e-6)


def _case_geometry(rng: np.random.Generator, tmpl: _Template, resolution_mm: float,
                   anisotropic: bool) -> _Geometry:
    """Draw a head (scale, position) and an oblique voxel grid that covers it."""
    spacing = np.full(3, resolution_mm * rng.uniform(0.9, 1.1))
    if anisotropic:  # thick slices along one axis, as in many clinical protocols
        spacing[rng.integers(3)] *= rng.uniform(1.5, 2.5)
    head_scale = rng.uniform(0.92, 1.08, 3)
    head_shift = rng.uniform(-20.0, 20.0, 3)  # where the head sits in the scanner, mm
    rotation = Rotation.from_euler("xyz", rng.uniform(-10.0, 10.0, 3), degrees=True).as_matrix()
    # 15% margin: a 10 degree rotation of the brain's box still fits in the field of view.
    shape = np.ceil(tmpl.extent_mm * head_scale * 1.15 / spacing).astype(int)
    centre = head_scale * tmpl.centre_mm + head_shift + rng.uniform(-4.0, 4.0, 3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape - 1) / 2)
    world_to_mni = np.eye(4)
    world_to_mni[:3, :3] = np.diag(1.0 / head_scale)
    world_to_mni[:3, 3] = -head_shift / head_scale
    to_template = np.linalg.inv(tmpl.affine) @ world_to_mni
    return _Geometry((int(shape[0]), int(shape[1]), int(shape[2])), spacing, affine, to_template)


def _sample_anatomy(rng: np.random.Generator, geom: _Geometry, tmpl: _Template,
                    resolution_mm: float) -> np.ndarray:
    """Return the deformed template maps on the case grid, ``(4, X, Y, Z)`` float32.

    A voxel coarser than the template along an axis is the mean of several samples along
    that axis (slice-thickness partial volume), not one point sample.
    """
    disp_mm = np.stack([_lowfreq(rng, geom.shape, 5) for _ in range(3)]) * rng.uniform(2.0, 5.0)
    vox_to_tmpl = geom.to_template @ geom.affine
    disp_vox = np.einsum("ij,j...->i...", np.linalg.inv(tmpl.affine)[:3, :3], disp_mm)
    offset = (vox_to_tmpl[:3, 3][:, None, None, None] + disp_vox).astype(np.float64)
    subs = [max(1, round(s / resolution_mm)) for s in geom.spacing]
    acc = np.zeros((4, *geom.shape), dtype=np.float64)
    index = np.indices(geom.shape, dtype=np.float64)
    for sub in itertools.product(*[(np.arange(k) + 0.5) / k - 0.5 for k in subs]):
        idx = index + np.asarray(sub)[:, None, None, None]
        coords = np.einsum("ij,j...->i...", vox_to_tmpl[:3, :3], idx) + offset
        for m in range(4):
            acc[m] += ndimage.map_coordinates(tmpl.maps[m], coords, order=1, mode="constant")
    return (acc / np.prod(subs)).astype(np.float32)


def _ellipsoid_radius(rng: np.random.Generator, geom: _Geometry, centre: np.ndarray,
                      radius_mm: float) -> np.ndarray:
    """Normalized radius ``(X, Y, Z)`` of a randomly oriented ellipsoid: 1 on its surface."""
    pos = (np.indices(geom.shape, dtype=np.float32) - centre[:, None, None, None]) \
        * geom.spacing[:, None, None, None].astype(np.float32)
    axes = radius_mm * rng.uniform(0.7, 1.3, 3)
    turn = Rotation.from_euler("zyx", rng.uniform(0.0, 360.0, 3), degrees=True).as_matrix()
    local = np.einsum("ji,j...->i...", turn.astype(np.float32), pos) / axes[:, None, None, None]
    return np.sqrt((local ** 2).sum(0))


def _lesion(rng: np.random.Generator, geom: _Geometry, brain: np.ndarray, allowed: np.ndarray,
            radius_mm: float, enhancing: str) -> np.ndarray:
    """One irregular lesion as a label map ``(X, Y, Z)`` uint8 (0..3), inside ``brain``.

    ``enhancing`` is "rim" (an incomplete enhancing shell around a non-enhancing centre),
    "tiny" (a few enhancing voxels) or "none".
    """
    cand = np.argwhere(allowed)
    centre = cand[rng.integers(len(cand))].astype(np.float32)
    f = _ellipsoid_radius(rng, geom, centre, radius_mm)
    grain = 0.3 * radius_mm / geom.spacing
    n_whole, n_core, n_rim = (_noise(rng, geom.shape, grain) for _ in range(3))
    whole = (f + 0.3 * n_whole < 1.0) & brain
    core_f = f + 0.15 * n_core
    inner = ndimage.binary_erosion(whole)  # oedema always surrounds the core
    core = (core_f < rng.uniform(0.6, 0.85)) & inner
    if not core.any() and inner.any():
        core = inner & (core_f <= core_f[inner].min())
    label = whole.astype(np.uint8)
    label[core] = 2
    depth = ndimage.distance_transform_edt(core, sampling=geom.spacing)
    if enhancing == "rim":  # an enhancing shell 2-5 mm thick, broken in places
        thick = max(rng.uniform(2.0, 5.0), float(geom.spacing.max()))
        enh = core & (depth <= thick)
        if (enh & (n_rim > -0.6)).any():
            enh &= n_rim > -0.6
    elif enhancing == "tiny" and core.any():  # one core voxel and its 6-neighbours
        point = np.zeros(geom.shape, dtype=bool)
        point[tuple(np.argwhere(core)[rng.integers(int(core.sum()))])] = True
        enh = core & ndimage.binary_dilation(point)
    else:
        enh = np.zeros(geom.shape, dtype=bool)
    if core.any() and not (core & ~enh).any():  # small cores: keep the deepest non-enhancing
        enh.flat[int(np.argmax(depth))] = False
    label[enh] = 3
    return label


def _tumour(rng: np.random.Generator, geom: _Geometry, anatomy: np.ndarray,
            enhancing: str) -> np.ndarray:
    """The case's label map ``(X, Y, Z)`` uint8: a main tumour in brain parenchyma and, in
    about a quarter of cases, a small satellite lesion without enhancement."""
    brain = anatomy[0] > 0.5
    depth = ndimage.distance_transform_edt(brain, sampling=geom.spacing)
    radius = max(rng.uniform(16.0, 36.0), 3.0 * float(geom.spacing.max()))
    parenchyma = anatomy[2] + anatomy[3] > 0.5
    allowed = (depth > 0.5 * radius) & parenchyma
    if not allowed.any():  # very coarse grids: fall back to the deepest voxels
        allowed = depth >= depth.max()
    label = _lesion(rng, geom, brain, allowed, radius, enhancing)
    if rng.uniform() < 0.25:
        small = max(rng.uniform(6.0, 10.0), 2.0 * float(geom.spacing.max()))
        allowed = (depth > small) & parenchyma & (label == 0)
        if allowed.any():
            label = np.maximum(label, _lesion(rng, geom, brain, allowed, small, "none"))
    return label


def _contrasts(rng: np.random.Generator, anatomy: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Synthesize the four channels, ``(X, Y, Z, 4)`` float32, exactly 0 outside the brain."""
    brain = anatomy[0] > 0.5
    tissue = anatomy[1:] / np.maximum(anatomy[1:].sum(0), 1e-3)  # CSF, GM, WM fractions
    table = CONTRAST * (1.0 + 0.06 * rng.standard_normal(CONTRAST.shape))
    # Soft label masks give tumour borders partial volume instead of perfect steps.
    soft = [ndimage.gaussian_filter(m.astype(np.float32), 0.6)
            for m in (label >= 1, label >= 2, label == 3)]
    hetero = 1.0 + 0.1 * _noise(rng, label.shape, np.full(3, 1.5))
    out = np.zeros((*label.shape, len(CHANNELS)), dtype=np.float32)
    for c in range(len(CHANNELS)):
        signal = np.tensordot(table[c, :3], tissue, axes=1)
        for k, weight in enumerate(soft):
            signal += weight * (table[c, 3 + k] * hetero - signal)
        bias = np.exp(0.12 * _lowfreq(rng, label.shape, 4))
        gain = 1000.0 * rng.uniform(0.5, 2.0)  # MRI intensities have no absolute scale
        sigma = gain * rng.uniform(0.02, 0.05)
        clean = signal * bias * gain
        real = clean + sigma * rng.standard_normal(label.shape)
        imag = sigma * rng.standard_normal(label.shape)
        out[..., c] = np.where(brain, np.sqrt(real ** 2 + imag ** 2), 0.0)
    return out


def _enhancing_mode(index: int) -> str:
    """Deterministic per case: case index 1 (BRATS_002), 7, 13, ... have no enhancing tumour,
    so any dataset with two or more training cases exercises the empty-class convention."""
    return {1: "none", 4: "tiny"}.get(index % 6, "rim")


def make_case(seed: int, index: int, resolution_mm: float = 3.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesize case ``index`` of dataset ``seed``.

    Returns ``(image, label, affine)``: image ``(X, Y, Z, 4)`` float32 (FLAIR, T1w, T1-Gd,
    T2w), label ``(X, Y, Z)`` uint8 in {0, 1, 2, 3}, affine ``(4, 4)`` voxel -> world mm.
    Every third case (index 2, 5, ...) has one axis 1.5-2.5x coarser than the others.
    """
    tmpl = _load_template(float(resolution_mm))
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    geom = _case_geometry(rng, tmpl, resolution_mm, anisotropic=index % 3 == 2)
    anatomy = _sample_anatomy(rng, geom, tmpl, resolution_mm)
    label = _tumour(rng, geom, anatomy, _enhancing_mode(index))
    return _contrasts(rng, anatomy, label), label, geom.affine


def case_id(index: int) -> str:
    """``BRATS_001`` for index 0: training cases first, test cases continue the numbering."""
    return f"BRATS_{index + 1:03d}"


def sparse_label(label: np.ndarray, every: int) -> np.ndarray:
    """Sparse annotations of a dense label map ``(X, Y, Z)``: only the slices ``z = 0, every,
    2 * every, ...`` along the last voxel axis keep their labels, every other voxel holds
    :data:`IGNORE_VALUE` (``every = 1``: ``label`` unchanged)."""
    if every < 1:
        raise ValueError(f"annotate_every must be >= 1, got {every!r}")
    out = np.full_like(label, IGNORE_VALUE)
    out[..., ::every] = label[..., ::every]
    return out


def _dataset_json(n_train: int, n_test: int, seed: int, resolution_mm: float,
                  annotate_every: int = 1) -> dict:
    labels = {str(k): v for k, v in LABELS.items()}
    release = f"seed={seed}, resolution_mm={resolution_mm:g}"
    if annotate_every > 1:
        labels[str(IGNORE_VALUE)] = "ignore"
        release += (f", annotate_every={annotate_every} (sparse: dense labels in "
                    f"{DENSE_FOLDER}/)")
    return {
        "name": DATASET_NAME,
        "description": "Synthetic BraTS-like gliomas on the MNI ICBM152 2009 template "
                       "(nnpipe embedded generator; no download needed)",
        "reference": "nnpipe.datasets.embedded; anatomy: MNI ICBM152 2009 (see "
                     f"{NOTICE_NAME})",
        "licence": f"derived from the MNI ICBM152 2009 template; see {NOTICE_NAME}",
        "release": release,
        "tensorImageSize": "4D",
        "modality": {str(i): name for i, name in enumerate(CHANNELS)},
        "labels": labels,
        "numTraining": n_train,
        "numTest": n_test,
        "training": [{"image": f"./imagesTr/{case_id(i)}.nii.gz",
                      "label": f"./labelsTr/{case_id(i)}.nii.gz"} for i in range(n_train)],
        "test": [f"./imagesTs/{case_id(i)}.nii.gz" for i in range(n_train, n_train + n_test)],
    }


def _check_arguments(n_train: int, n_test: int, seed: int, resolution_mm: float) -> None:
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train must be an integer >= 1, got {n_train!r}")
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise ValueError(f"n_test must be an integer >= 0, got {n_test!r}")
    if n_train + n_test > 999:
        raise ValueError(f"at most 999 cases (BRATS_001..BRATS_999), got {n_train + n_test}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not MIN_RESOLUTION_MM <= float(resolution_mm) <= MAX_RESOLUTION_MM:
        raise ValueError(f"resolution_mm must be in [{MIN_RESOLUTION_MM:g}, "
                         f"{MAX_RESOLUTION_MM:g}] mm, got {resolution_mm!r}")


def _write_cases(root: Path, n_train: int, n_test: int, seed: int, resolution_mm: float,
                 progress: bool, annotate_every: int = 1) -> None:
    total = n_train + n_test
    for index in range(total):
        start = time.perf_counter()
        image, label, affine = make_case(seed, index, resolution_mm)
        cid = case_id(index)
        if index < n_train:
            save_nifti(root / "imagesTr" / f"{cid}.nii.gz", image, affine)
            if annotate_every > 1:
                save_nifti(root / DENSE_FOLDER / f"{cid}.nii.gz", label, affine)
                label = sparse_label(label, annotate_every)
            save_nifti(root / "labelsTr" / f"{cid}.nii.gz", label, affine)
        else:
            save_nifti(root / "imagesTs" / f"{cid}.nii.gz", image, affine)
        if progress:
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            print(f"embedded: {cid} ({index + 1}/{total}, "
                  f"{'train' if index < n_train else 'test'}) shape {label.shape} spacing "
                  f"{tuple(round(float(s), 2) for s in spacing)} mm, tumour "
                  f"{100 * float((label > 0).mean()):.1f}% in {time.perf_counter() - start:.2f} s",
                  file=sys.stderr)


def generate_embedded(out_dir: Path, *, n_train: int = 20, n_test: int = 4, seed: int = 0,
                      resolution_mm: float = 3.0, progress: bool = True,
                      annotate_every: int = 1) -> Path:
    """Write the embedded dataset to ``out_dir`` (MSD layout) and return ``out_dir``.

    The folder is built under a temporary sibling name and renamed into place only when
    complete, so an interrupted run never leaves something that looks like a finished
    dataset. ``out_dir`` may exist only as an empty folder. Same arguments, same arrays.
    Defaults (24 cases at 3 mm, volumes about 45-70 voxels per side) take a few seconds.
    ``annotate_every > 1`` writes sparse annotations (:func:`sparse_label`: every n-th slice,
    the rest labelled ``ignore``) and the dense references in ``labelsTr_dense/``.
    Raises ``ValueError`` for bad arguments and ``FileExistsError`` if ``out_dir`` holds files.
    """
    _check_arguments(n_train, n_test, seed, resolution_mm)
    if isinstance(annotate_every, bool) or not isinstance(annotate_every, int) \
            or annotate_every < 1:
        raise ValueError(f"annotate_every must be an integer >= 1, got {annotate_every!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"embedded dataset: {str(out_dir)!r} already exists and is not an "
                              "empty folder; remove it or choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder is not
        start = time.perf_counter()
        _load_template(float(resolution_mm))
        if progress:
            print(f"embedded: MNI152 template at {resolution_mm:g} mm ready in "
                  f"{time.perf_counter() - start:.2f} s", file=sys.stderr)
        _write_cases(tmp, n_train, n_test, seed, float(resolution_mm), progress, annotate_every)
        notice = resources.files("nnpipe.datasets").joinpath("NOTICE-MNI152.txt").read_text()
        write_text(tmp / NOTICE_NAME, notice)
        write_json(tmp / "dataset.json",
                   _dataset_json(n_train, n_test, seed, float(resolution_mm), annotate_every))
        os.replace(tmp, out_dir)  # atomic; replaces an empty out_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
