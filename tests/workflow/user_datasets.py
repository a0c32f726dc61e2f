"""Small datasets shaped like users' own, one condition each, for test_user_data.py.

Every kind is a Medical Segmentation Decathlon (MSD) folder: ``dataset.json``, ``imagesTr/``,
``labelsTr/``, ``imagesTs/`` and a ``NOTE.txt`` saying what the condition is and what a
correct pipeline does with it. The anatomy is a body ellipsoid with one or two labelled
structures, defined in world millimetres (RAS+) and sampled through each case's affine, so
cases stored with different voxel orders, units or formats still hold the same anatomy; each
case moves the structures a little (seeded), so the cases differ. Volumes are about 24 to 32
voxels per axis; 6 training and 2 or 3 test cases; everything is deterministic.

    python tests/workflow/user_datasets.py OUT_DIR [KIND ...]    # write the kinds to OUT_DIR
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt

SPACING = (1.5, 1.5, 1.5)  # mm
SHAPE = (28, 26, 24)  # voxels; each case adds -2..2 per axis
BODY_RADII = (16.0, 14.0, 13.0)  # mm
# The body sits off the grid centre: a prediction flipped along any axis would show.
BODY_CENTER = (1.5, -1.0, 1.0)
TRAIN_IDS = tuple(f"case_{i:03d}" for i in range(1, 7))
TEST_IDS = ("case_007", "case_008")


@dataclass(frozen=True)
class Structure:
    """An ellipsoid of one label value: centre and radii in world mm (RAS+)."""

    value: int
    center: tuple[float, float, float]
    radii: tuple[float, float, float]


def organ_lesion(organ: int = 1, lesion: int | None = 2) -> list[Structure]:
    """A large organ and (unless ``lesion`` is None) a small lesion beside it."""
    out = [Structure(organ, (-4.0, 2.0, 0.0), (8.0, 7.0, 7.0))]
    if lesion is not None:
        out.append(Structure(lesion, (7.0, -5.0, 2.0), (4.5, 4.5, 4.5)))
    return out


# ------------------------------------------------------------------ geometry


def direction(codes: str) -> np.ndarray:
    """3×3 matrix whose column i is the world (RAS+) unit vector voxel axis i points to:
    ``"RAS"`` is the identity, ``"ASR"`` a sagittal voxel order, ``"LPS"`` DICOM's."""
    m = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(axcodes2ornt(tuple(codes))):
        m[int(world), axis] = sign
    return m


def centered_affine(shape: Sequence[int], spacing: Sequence[float],
                    codes: str = "RAS") -> np.ndarray:
    """Voxel -> world mm affine whose grid centre is the world origin."""
    a = np.eye(4)
    a[:3, :3] = direction(codes) @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:3, 3] = -a[:3, :3] @ ((np.asarray(shape[:3], dtype=np.float64) - 1) / 2)
    return a + 0.0  # no -0.0 in headers


def phantom(shape: Sequence[int], affine: np.ndarray, rng: np.random.Generator,
            structures: Sequence[Structure], *, body_radii: Sequence[float] = BODY_RADII,
            jitter_mm: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Image (X, Y, Z) float32 and label (X, Y, Z) int64 of the anatomy on this grid.

    Background 0 outside the body, body 100, the k-th structure 100 + 60 (k + 1), Gaussian
    noise (sd 5) inside the body; the label holds the structures' values."""
    idx = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1)
    xyz = (affine[:3, :3] @ idx + affine[:3, 3:]).reshape(3, *shape)

    def inside(center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        c = np.asarray(center, dtype=np.float64).reshape(3, 1, 1, 1)
        r = np.asarray(radii, dtype=np.float64).reshape(3, 1, 1, 1)
        return (((xyz - c) / r) ** 2).sum(axis=0) <= 1.0

    body = inside(BODY_CENTER, np.asarray(body_radii) * rng.uniform(0.95, 1.05, 3))
    label = np.zeros(tuple(shape), dtype=np.int64)
    image = np.where(body, 100.0, 0.0)
    for k, s in enumerate(structures):
        mask = body & inside(np.asarray(s.center) + rng.uniform(-jitter_mm, jitter_mm, 3),
                             np.asarray(s.radii) * rng.uniform(0.9, 1.1, 3))
        label[mask] = s.value
        image[mask] = 100.0 + 60.0 * (k + 1)
    image = np.where(body, image + rng.normal(0.0, 5.0, image.shape), 0.0)
    return image.astype(np.float32), label


@dataclass(frozen=True)
class Sample:
    """One case of the anatomy, before it is written in some kind's way."""

    case_id: str
    training: bool
    image: np.ndarray  # (X, Y, Z) float32
    label: np.ndarray  # (X, Y, Z) int64 label values
    affine: np.ndarray  # voxel -> world mm


def samples(seed: int, structures: Callable[[str], Sequence[Structure]] | Sequence[Structure],
            *, train_ids: Sequence[str] = TRAIN_IDS, test_ids: Sequence[str] = TEST_IDS,
            grid: Callable[[str, np.random.Generator], tuple[tuple[int, ...], np.ndarray]]
            | None = None) -> Iterator[Sample]:
    """The training then the test cases of one dataset. ``structures`` may depend on the
    case id; ``grid(case_id, rng)`` gives (shape, affine), by default a jittered SHAPE at
    SPACING in RAS order."""
    rng = np.random.default_rng(seed)
    for cid in [*train_ids, *test_ids]:
        if grid is None:
            shape = tuple(int(s + rng.integers(-2, 3)) for s in SHAPE)
            affine = centered_affine(shape, SPACING)
        else:
            shape, affine = grid(cid, rng)
        chosen = structures(cid) if callable(structures) else structures
        image, label = phantom(shape, affine, rng, chosen)
        yield Sample(cid, cid in train_ids, image, label, affine)


# ------------------------------------------------------------------ writing


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, dtype: object = None,
               slope: float | None = None, units: str = "mm") -> None:
    """NIfTI-1 with qform = sform = ``affine`` (code 1, scanner), spatial units ``units``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(units, "sec")
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))


def write_sample(root: Path, s: Sample, *, ending: str = ".nii.gz",
                 label_dtype: object = np.uint8, units: str = "mm") -> dict[str, str] | str:
    """Write ``s`` as MSD files (``units`` "meter": the header in metres); returns its
    dataset.json entry (``training`` or ``test``)."""
    affine = s.affine.copy()
    if units == "meter":
        affine[:3] *= 1e-3
    folder = "imagesTr" if s.training else "imagesTs"
    save_nifti(root / folder / f"{s.case_id}{ending}", s.image, affine, units=units)
    if not s.training:
        return f"./{folder}/{s.case_id}{ending}"
    save_nifti(root / "labelsTr" / f"{s.case_id}{ending}", s.label, affine, dtype=label_dtype,
               units=units)
    return {"image": f"./imagesTr/{s.case_id}{ending}",
            "label": f"./labelsTr/{s.case_id}{ending}"}


def write_reference(root: Path, s: Sample) -> None:
    """A test case's true labels in ``labelsTs_reference/`` (outside the MSD layout)."""
    save_nifti(root / "labelsTs_reference" / f"{s.case_id}.nii.gz", s.label, s.affine,
               dtype=np.uint8)


def write_msd(root: Path, name: str, labels: dict, training: list, test: list | None, *,
              modality: Sequence[str] = ("MRI",), note: str) -> Path:
    """dataset.json in the MSD form (no ``test`` list when ``test`` is None) and NOTE.txt."""
    meta = {
        "name": name,
        "description": note.split(".")[0],
        "tensorImageSize": "4D" if len(modality) > 1 else "3D",
        "modality": {str(i): m for i, m in enumerate(modality)},
        "labels": labels,
        "numTraining": len(training),
        "numTest": len(test or list((root / "imagesTs").iterdir())),
        "training": training,
    }
    if test is not None:
        meta["test"] = test
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    (root / "NOTE.txt").write_text(note.strip() + "\n")
    return root


def plain(root: Path, seed: int, *, name: str, labels: dict[int, str],
          structures: Sequence[Structure], note: str, label_dtype: object = np.uint8,
          train_ids: Sequence[str] = TRAIN_IDS, test_ids: Sequence[str] = TEST_IDS) -> Path:
    """A valid MSD dataset: what most kinds start from."""
    train, test = [], []
    for s in samples(seed, structures, train_ids=train_ids, test_ids=test_ids):
        (train if s.training else test).append(write_sample(root, s, label_dtype=label_dtype))
    return write_msd(root, name, {str(k): v for k, v in labels.items()}, train, test,
                     note=note)


# ------------------------------------------------------------------ the kinds


def labels_nonconsecutive(root: Path) -> Path:
    # 4 is the large organ, so even a briefly trained network predicts it somewhere
    return plain(root, 11, name="LabelsNonConsecutive",
                 labels={0: "background", 1: "lesion", 4: "organ"},
                 structures=organ_lesion(organ=4, lesion=1), note="""
Label values 0, 1 and 4, all listed in dataset.json. Expected: trained as classes 0, 1, 2;
every written label map holds 0, 1 or 4 (never 2 or 3); evaluation scores class 4.""")


def labels_uint16_atlas(root: Path) -> Path:
    return plain(root, 12, name="LabelsUint16Atlas",
                 labels={0: "background", 205: "nucleus", 850: "cortex"},
                 structures=organ_lesion(organ=850, lesion=205), label_dtype=np.uint16,
                 note="""
An atlas-like labelling: values 0, 205 and 850 stored as uint16. Expected: predictions hold
0, 205 or 850 in uint16 (never narrowed to uint8 before the values are mapped back).""")


# (case, voxel order, spacing mm): thick (4 mm) slices along world S in every training case,
# stored axial, sagittal, coronal and flipped; the test cases are sagittal and one volume
# whose thick axis is the first (R).
ORIENTATION_GRIDS = {
    "or_001": ("RAS", (1.0, 1.0, 4.0)), "or_002": ("RAS", (1.0, 1.0, 4.0)),
    "or_003": ("ASR", (1.0, 4.0, 1.0)), "or_004": ("ASR", (1.0, 4.0, 1.0)),
    "or_005": ("RSA", (1.0, 4.0, 1.0)), "or_006": ("LPS", (1.0, 1.0, 4.0)),
    "or_007": ("ASR", (1.0, 4.0, 1.0)), "or_008": ("RAS", (4.0, 1.0, 1.0)),
}
ORIENTATION_FOV = np.array([30.0, 28.0, 40.0])  # mm along world x, y, z


def _orientation_grid(cid: str, rng: np.random.Generator) -> tuple[tuple[int, ...], np.ndarray]:
    codes, spacing = ORIENTATION_GRIDS[cid]
    world_axis = np.abs(direction(codes)).argmax(axis=0)  # the world axis of each voxel axis
    shape = tuple(int(round(ORIENTATION_FOV[w] / s))
                  for w, s in zip(world_axis, spacing, strict=True))
    return shape, centered_affine(shape, spacing, codes)


def orientation_mixed_axes(root: Path) -> Path:
    # structures long along S, so 4 mm slices still cut them several times
    structures = [Structure(1, (-4.0, 3.0, 0.0), (6.0, 5.0, 12.0)),
                  Structure(2, (5.0, -5.0, 0.0), (3.0, 3.0, 14.0))]
    train, test, table = [], [], []
    for s in samples(13, structures, train_ids=[f"or_{i:03d}" for i in range(1, 7)],
                     test_ids=["or_007", "or_008"], grid=_orientation_grid):
        (train if s.training else test).append(write_sample(root, s))
        if not s.training:
            write_reference(root, s)
        codes, spacing = ORIENTATION_GRIDS[s.case_id]
        table.append(f"{s.case_id}: {codes} spacing {spacing} shape {s.image.shape}")
    return write_msd(root, "OrientationMixedAxes", {"0": "background", "1": "organ",
                                                    "2": "canal"}, train, test, note="""
One anatomy, several voxel orders. Expected: every case read in the canonical (RAS) order,
so the plan's spacing is (1, 1, 4) mm along canonical X, Y, Z; each prediction written on its
own case's grid, voxel order and header (qform, sform, codes).
""" + "\n".join(table))


RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def _rgb_images(root: Path, channels: Sequence[str], note: str) -> Path:
    train, test = [], []
    for s in samples(14, organ_lesion()):
        v = np.clip(s.image, 0, 255)
        rgb = np.zeros(s.image.shape, dtype=RGB24)
        rgb["R"], rgb["G"], rgb["B"] = v, 0.8 * v, np.where(v > 0, 255 - v, 0)
        folder = "imagesTr" if s.training else "imagesTs"
        save_nifti(root / folder / f"{s.case_id}.nii.gz", rgb, s.affine)
        if s.training:
            save_nifti(root / "labelsTr" / f"{s.case_id}.nii.gz", s.label, s.affine,
                       dtype=np.uint8)
            train.append({"image": f"./imagesTr/{s.case_id}.nii.gz",
                          "label": f"./labelsTr/{s.case_id}.nii.gz"})
        else:
            test.append(f"./imagesTs/{s.case_id}.nii.gz")
    return write_msd(root, "RGB24Image", {"0": "background", "1": "organ", "2": "lesion"},
                     train, test, modality=channels, note=note)


def rgb24_one_channel(root: Path) -> Path:
    return _rgb_images(root, ["RGB"], """
Images are NIfTI RGB24 (datatype 128: one (R, G, B) voxel of 3 bytes); dataset.json lists 1
channel. Expected: refused at the fingerprint, naming the case and file, saying the file
holds RGB24 voxels (3 components each) and that dataset.json lists 1.""")


def rgb24_three_channels(root: Path) -> Path:
    return _rgb_images(root, ["R", "G", "B"], """
Images are NIfTI RGB24; dataset.json lists 3 channels (R, G, B). Expected: read as 3
channels; the study succeeds.""")


# Per training case: how its label is stored (integers up to float round-off), or None: uint8.
NEAR_INTEGER = {
    "fl_001": "float32 one ulp off (0.99999994, 2.0000002)",
    "fl_002": "float32 one ulp off (0.99999994, 2.0000002)",
    "fl_003": "float64, 1 + 1e-12 relative",
    "fl_004": "int16 0/255/510 with scl_slope 1/255",
    "fl_005": "int16 0/255/510 with scl_slope 1/255",
}


def _save_near_integer(path: Path, s: Sample) -> None:
    how = NEAR_INTEGER.get(s.case_id, "")
    if how.startswith("float32"):
        f = s.label.astype(np.float32)
        f[s.label == 1] = np.nextafter(np.float32(1), np.float32(0))
        f[s.label == 2] = np.nextafter(np.float32(2), np.float32(3))
        save_nifti(path, f, s.affine)
    elif how.startswith("float64"):
        save_nifti(path, s.label * (1 + 1e-12), s.affine, dtype=np.float64)
    elif how.startswith("int16"):
        save_nifti(path, s.label * 255, s.affine, dtype=np.int16,
                   slope=float(np.float32(1 / 255)))
    else:
        save_nifti(path, s.label, s.affine, dtype=np.uint8)


def labels_float_near_integer(root: Path) -> Path:
    train, test = [], []
    ids = [f"fl_{i:03d}" for i in range(1, 9)]
    for s in samples(15, organ_lesion(), train_ids=ids[:6], test_ids=ids[6:]):
        entry = write_sample(root, s)
        if s.training:
            _save_near_integer(root / "labelsTr" / f"{s.case_id}.nii.gz", s)
        (train if s.training else test).append(entry)
    table = "\n".join(f"{c}: {how}" for c, how in NEAR_INTEGER.items())
    return write_msd(root, "LabelsFloatNearInteger", {"0": "background", "1": "organ",
                                                      "2": "lesion"}, train, test, note="""
Labels that are integers up to float round-off (fl_006 is plain uint8). Expected: accepted,
rounded, with one log line naming the rounded cases.
""" + table)


def labels_float_interpolated(root: Path) -> Path:
    plain(root, 16, name="LabelsFloatInterpolated",
          labels={0: "background", 1: "organ", 2: "lesion"}, structures=organ_lesion(),
          note="""
case_003's label was resampled with linear interpolation: it holds fractions at the borders.
Expected: refused at the fingerprint, naming case_003, its label file and the fractions.""")
    path = root / "labelsTr" / "case_003.nii.gz"
    src = nib.load(str(path))
    lab = np.asarray(src.dataobj).astype(np.float32)
    smooth = lab.copy()
    smooth[1:-1] = 0.5 * lab[1:-1] + 0.25 * (lab[:-2] + lab[2:])  # linear blur along X
    save_nifti(path, smooth, src.affine, dtype=np.float32)
    return root


def labels_reversed(root: Path) -> Path:
    plain(root, 17, name="LabelsReversed", labels={0: "background", 1: "organ", 2: "lesion"},
          structures=organ_lesion(), note="""
MSD layout, but dataset.json's labels are written {name: value} (nnU-Net v2's way) instead of
MSD's {value: name}. Expected: accepted (unambiguous: only the values are integers).""")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organ": 1, "lesion": 2}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def ids_ending_in_digits(root: Path) -> Path:
    return plain(root, 18, name="IdsEndingInDigits",
                 labels={0: "background", 1: "organ", 2: "lesion"}, structures=organ_lesion(),
                 train_ids=[f"pat_{i:04d}" for i in range(1, 7)],
                 test_ids=["scanA_0000", "scanB_0007", "scan_c"], note="""
MSD (one file per case) with case ids ending in _NNNN: pat_0001 .. pat_0006, and test cases
scanA_0000, scanB_0007, scan_c. Expected: the case id is the whole stem; predictions
scanA_0000.nii.gz, scanB_0007.nii.gz and scan_c.nii.gz.""")


APPLEDOUBLE = (b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        ").ljust(4096, b"\x00")


def macos_appledouble(root: Path) -> Path:
    plain(root, 19, name="AppleDoubleTwins", labels={0: "background", 1: "organ", 2: "lesion"},
          structures=organ_lesion(), note="""
A valid dataset plus a macOS '._' AppleDouble twin (4096 bytes, not an image) of every file,
as a tar or USB stick from a Mac leaves them. Expected: twins ignored with one log line; the
test cases (and nothing else) predicted.""")
    for p in sorted(root.rglob("*")):
        if p.is_file():
            p.with_name(f"._{p.name}").write_bytes(APPLEDOUBLE)
    return root


NII_CASES = ("case_002", "case_008", "case_009")  # stored as .nii, the others as .nii.gz


def nii_beside_niigz(root: Path) -> Path:
    train = []
    for s in samples(20, organ_lesion(), test_ids=("case_007", "case_008", "case_009")):
        entry = write_sample(root, s, ending=".nii" if s.case_id in NII_CASES else ".nii.gz")
        if s.training:
            train.append(entry)
    return write_msd(root, "NiiBesideNiiGz", {"0": "background", "1": "organ", "2": "lesion"},
                     train, None, note="""
Uncompressed .nii files beside .nii.gz ones (case_002 in training; case_008 and case_009 of
the three test images). dataset.json has no 'test' list, so imagesTs is found by the folder
rule. Expected: every test image predicted, each prediction with its input's ending.""")


METRE_CASES = ("case_002", "case_007")


def header_in_metres(root: Path) -> Path:
    train, test = [], []
    for s in samples(21, organ_lesion()):
        entry = write_sample(root, s, units="meter" if s.case_id in METRE_CASES else "mm")
        (train if s.training else test).append(entry)
    return write_msd(root, "HeaderInMetres", {"0": "background", "1": "organ", "2": "lesion"},
                     train, test, note=f"""
{' and '.join(METRE_CASES)} have headers in metres (xyzt_units 'meter', spacing 0.0015); the
others in mm (1.5). Expected: read in mm, so the plan's spacing is about 1.5 mm, not 0.0015;
predictions keep their input's header (metres stay metres).""")


def class_never_labelled(root: Path) -> Path:
    # lesion (2) only in case_002 (training) and case_007 (test); metastasis (3) in none
    def structures(cid: str) -> list[Structure]:
        return organ_lesion(lesion=2 if cid in ("case_002", "case_007") else None)

    train, test = [], []
    for s in samples(22, structures):
        (train if s.training else test).append(write_sample(root, s))
    return write_msd(root, "ClassNeverLabelled",
                     {"0": "background", "1": "organ", "2": "lesion", "3": "metastasis"},
                     train, test, note="""
Class 3 (metastasis) is listed but in no label; class 2 (lesion) is in one training case
(case_002). Expected: a fingerprint warning naming both; evaluation counts, per class, the
cases whose reference holds it, and never scores an absent class as Dice 100.""")


def all_single_slice(root: Path) -> Path:
    structures = [Structure(1, (-3.0, 1.0, 0.0), (6.0, 5.0, 4.0)),
                  Structure(2, (6.0, -4.0, 0.0), (3.0, 3.0, 4.0))]

    def grid(cid: str, rng: np.random.Generator) -> tuple[tuple[int, ...], np.ndarray]:
        return (64, 56, 1), centered_affine((64, 56, 1), (0.5, 0.5, 1.0))

    train, test = [], []
    for s in samples(23, structures, grid=grid):
        (train if s.training else test).append(write_sample(root, s))
    return write_msd(root, "AllSingleSlice", {"0": "background", "1": "organ", "2": "lesion"},
                     train, test, modality=["XR"], note="""
Every case is one slice (64 x 56 x 1): a 2D dataset. Expected: planned 2D only (no 3D plan,
the 3D runs left out of the study), not a per-case error.""")


# SimpleITK's direction (LPS+ world): a 30 degree turn about the slice axis after flipping
# the two others; LPS_TO_RAS turns an LPS+ matrix or point into RAS+.
NRRD_DIRECTION = np.array([[math.cos(math.pi / 6), -math.sin(math.pi / 6), 0.0],
                           [math.sin(math.pi / 6), math.cos(math.pi / 6), 0.0],
                           [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, -1.0])
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _nrrd_grid(cid: str, rng: np.random.Generator) -> tuple[tuple[int, ...], np.ndarray]:
    shape = tuple(int(s + rng.integers(-2, 3)) for s in SHAPE)
    lps = np.eye(4)
    lps[:3, :3] = NRRD_DIRECTION @ np.diag(SPACING)
    lps[:3, 3] = -lps[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    ras = lps.copy()
    ras[:3] = LPS_TO_RAS @ lps[:3]
    return shape, ras


def _save_sitk(path: Path, data: np.ndarray, ras_affine: np.ndarray) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # SimpleITK arrays are (Z, Y, X)
    lps = LPS_TO_RAS @ ras_affine[:3]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in lps[:, 3]])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    sitk.WriteImage(img, str(path), True)


def nrrd_images(root: Path) -> Path:
    train, test = [], []
    for s in samples(24, organ_lesion(), grid=_nrrd_grid):
        folder = "imagesTr" if s.training else "imagesTs"
        _save_sitk(root / folder / f"{s.case_id}.nrrd", s.image, s.affine)
        if s.training:
            _save_sitk(root / "labelsTr" / f"{s.case_id}.nrrd", s.label.astype(np.uint8),
                       s.affine)
            train.append({"image": f"./imagesTr/{s.case_id}.nrrd",
                          "label": f"./labelsTr/{s.case_id}.nrrd"})
        else:
            test.append(f"./imagesTs/{s.case_id}.nrrd")
    return write_msd(root, "NrrdImages", {"0": "background", "1": "organ", "2": "lesion"},
                     train, test, note="""
NRRD images and labels written by SimpleITK, with an oblique, flipped direction. Expected:
read through SimpleITK; predictions written as .nrrd with the source's origin, spacing,
direction and size.""")


KINDS: dict[str, Callable[[Path], Path]] = {
    "labels-nonconsecutive": labels_nonconsecutive,
    "labels-uint16-atlas": labels_uint16_atlas,
    "orientation-mixed-axes": orientation_mixed_axes,
    "rgb24-one-channel": rgb24_one_channel,
    "rgb24-three-channels": rgb24_three_channels,
    "labels-float-near-integer": labels_float_near_integer,
    "labels-float-interpolated": labels_float_interpolated,
    "labels-reversed": labels_reversed,
    "ids-ending-in-digits": ids_ending_in_digits,
    "macos-appledouble": macos_appledouble,
    "nii-beside-niigz": nii_beside_niigz,
    "header-in-metres": header_in_metres,
    "class-never-labelled": class_never_labelled,
    "all-single-slice": all_single_slice,
    "nrrd-images": nrrd_images,
}


def make_dataset(kind: str, root: Path | str) -> Path:
    """Write dataset ``kind`` (a key of :data:`KINDS`) into the new folder ``root``."""
    root = Path(root)
    root.mkdir(parents=True)
    return KINDS[kind](root)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for kind in sys.argv[2:] or KINDS:
        print(make_dataset(kind, out / kind))
