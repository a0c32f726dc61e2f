#!/usr/bin/env python3
# ruff: noqa: E501
# Copied unchanged (below these three comment lines) from /work/shared/user-data/make_user_datasets_3.py,
# the third set of users-data kinds filed with issue 20, so the workflow tests can write them.
"""Write one small MSD-layout dataset per input-data condition (users' data, third set).

Usage:
    python make_user_datasets_3.py OUT_DIR            # write every kind under OUT_DIR/<kind>/
    python make_user_datasets_3.py OUT_DIR KIND ...   # only the named kinds
    python make_user_datasets_3.py --list             # print the kinds and one line each
    python make_user_datasets_3.py OUT_DIR --check    # write, then read every file back with nibabel

Each dataset: dataset.json (name, modality, labels, numTraining, numTest, training list of
{image, label}, test list), imagesTr/, labelsTr/, imagesTs/, plus labelsTs/ (reference labels
of the test images, not listed in dataset.json) and NOTE.txt (the condition, the public
reports behind it, what a correct pipeline does, what to look at). 7 training cases and 2
test cases of about 24 x 28 x 20 voxels: a bright sphere labelled 1 and a smaller cube
labelled 2 in noise, so a working pipeline learns them in a few epochs.

Deterministic: every random draw is seeded by (kind, case), and gzip headers carry no time
stamp or file name, so two runs give byte-identical files. Needs numpy and nibabel only.

Every NIfTI file is written byte by byte here (header from nibabel's Nifti1Header, then the
voxels), so the header fields that make each condition (codes, scl_slope, endianness, dim[0],
compression) are exactly what is asked for and not rewritten by a library's save().
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import nibabel as nib
except ImportError:  # pragma: no cover
    sys.exit("make_user_datasets_3.py needs nibabel: pip install numpy nibabel")

N_TRAIN = 7
N_TEST = 2
SHAPE = (24, 28, 20)
SPACING = (1.0, 1.0, 1.5)


# ---------------------------------------------------------------- writing NIfTI exactly


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None, *,
                qcode: int = 1, scode: int = 1, zooms: tuple[float, ...] | None = None,
                endian: str = "<", slope: float | None = None, inter: float | None = None,
                compress: bool | None = None, intent_label: bool = False) -> None:
    """Write ``arr`` (stored dtype, array order X, Y, Z[, ...]) as a single-file NIfTI-1.

    ``affine``: voxel -> RAS mm; set as qform (``qcode`` > 0, shears stripped by nibabel)
    and sform (``scode`` > 0). ``zooms`` overrides pixdim. ``slope``/``inter`` go into
    scl_slope/scl_inter as they are (None leaves nibabel's default, NaN = no scaling).
    ``compress``: gzip or not, regardless of the file name (default: by the name).
    """
    hdr = nib.Nifti1Header(endianness=endian)
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(np.dtype(arr.dtype.type))
    hdr.set_xyzt_units("mm", "sec")
    if affine is not None and qcode:
        hdr.set_qform(affine, code=qcode)
    if affine is not None and scode:
        hdr.set_sform(affine, code=scode)
    if zooms is not None:
        hdr.set_zooms(zooms)
    if not qcode:
        hdr["qform_code"] = 0
    if not scode:
        hdr["sform_code"] = 0
    if slope is not None:
        hdr["scl_slope"] = slope
    if inter is not None:
        hdr["scl_inter"] = inter
    if intent_label:
        hdr.set_intent("label")
    hdr["vox_offset"] = 352
    data = np.asarray(arr).astype(hdr.get_data_dtype(), copy=False).tobytes(order="F")
    blob = hdr.binaryblock + b"\x00" * 4 + data
    if compress is None:
        compress = path.name.lower().endswith(".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as g:
            g.write(blob)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(blob)


def diag_affine(spacing: tuple[float, float, float], shape: tuple[int, ...]) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [-(n - 1) * s / 2 for n, s in zip(shape[:3], spacing, strict=True)]
    return a


# ---------------------------------------------------------------- content


def structures(rng: np.random.Generator, shape: tuple[int, int, int],
               spacing: tuple[float, float, float], sphere_mm: tuple[float, float] = (4.5, 6.0),
               cube_mm: tuple[float, float] = (4.0, 5.5),
               box: tuple[tuple[float, float], ...] | None = None) -> np.ndarray:
    """A label map: a sphere (1) and a smaller cube (2), placed apart, sizes in mm.

    ``box``: per axis, the fraction range of the volume the centres are drawn from.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    ext = np.asarray(shape) * sp
    box = box or ((0.3, 0.7),) * 3
    coords = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, sp, strict=True)],
                         indexing="ij")
    r = rng.uniform(*sphere_mm)
    half = rng.uniform(*cube_mm) / 2
    for _ in range(200):
        c1 = np.array([rng.uniform(lo, hi) * e for (lo, hi), e in zip(box, ext, strict=True)])
        c2 = np.array([rng.uniform(lo, hi) * e for (lo, hi), e in zip(box, ext, strict=True)])
        if np.linalg.norm(c1 - c2) > r + half * math.sqrt(3) + 1.5:
            break
    lab = np.zeros(shape, np.uint8)
    d2 = sum((g - c) ** 2 for g, c in zip(coords, c1, strict=True))
    lab[d2 <= r * r] = 1
    in_cube = np.ones(shape, bool)
    for g, c in zip(coords, c2, strict=True):
        in_cube &= np.abs(g - c) <= max(half, 0.5 * float(sp.max()) + 0.01)
    lab[in_cube & (lab == 0)] = 2
    return lab


def mr_image(rng: np.random.Generator, lab: np.ndarray, bg: float = 30.0, fg1: float = 120.0,
             fg2: float = 70.0, noise: float = 8.0) -> np.ndarray:
    img = np.full(lab.shape, bg, np.float32)
    img[lab == 1] = fg1
    img[lab == 2] = fg2
    img += rng.normal(0.0, noise, lab.shape).astype(np.float32)
    return np.maximum(img, 1.0).astype(np.float32)  # MR: strictly positive, crop is a no-op


def ct_hu(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """Hounsfield units: soft tissue, a 250 HU sphere, a 120 HU cube, air outside a body ellipse."""
    x, y = np.meshgrid(np.linspace(-1, 1, lab.shape[0]), np.linspace(-1, 1, lab.shape[1]),
                       indexing="ij")
    body = (x / 1.05) ** 2 + (y / 0.98) ** 2 <= 1.0
    hu = np.where(body[:, :, None], 40.0, -1000.0) + rng.normal(0, 15, lab.shape)
    hu[lab == 1] = 250 + rng.normal(0, 15, int((lab == 1).sum()))
    hu[lab == 2] = 120 + rng.normal(0, 15, int((lab == 2).sum()))
    return np.clip(np.round(hu), -1024, 3071).astype(np.float32)  # the scanner's range


# ---------------------------------------------------------------- dataset scaffolding


@dataclass
class Case:
    cid: str
    image_rel: str
    label_rel: str | None


@dataclass
class Kind:
    name: str
    summary: str
    build: Callable[[Path, Kind], dict]
    note: str = ""
    sources: list[str] = field(default_factory=list)


def case_ids() -> tuple[list[str], list[str]]:
    return ([f"case_{i:03d}" for i in range(1, N_TRAIN + 1)],
            [f"case_{i:03d}" for i in range(101, 101 + N_TEST)])


def rng_for(kind_no: int, case_no: int) -> np.random.Generator:
    return np.random.default_rng([20240531, kind_no, case_no])


def dataset_json(root: Path, name: str, modality: dict[str, str], labels: dict[str, str],
                 train: list[Case], test: list[Case], extra: dict | None = None) -> dict:
    meta = {
        "name": name,
        "description": f"users data, third set: {name}",
        "tensorImageSize": "3D",
        "reference": "synthetic (make_user_datasets_3.py)",
        "licence": "CC0",
        "modality": modality,
        "labels": labels,
        "numTraining": len(train),
        "numTest": len(test),
        "training": [{"image": c.image_rel, "label": c.label_rel} for c in train],
        "test": [c.image_rel for c in test],
    }
    if extra:
        meta.update(extra)
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


LABELS = {"0": "background", "1": "sphere", "2": "cube"}


def standard(root: Path, kind_no: int, name: str, *, modality: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, ending: str = ".nii.gz",
             image_fn: Callable | None = None, label_fn: Callable | None = None,
             make: Callable | None = None, json_extra: dict | None = None,
             rel: Callable[[str, str], str] | None = None) -> dict:
    """The common layout. ``make(rng, i, cid, is_test)`` -> (image array(s), label array,
    write kwargs); ``image_fn``/``label_fn`` write them (defaults: write_nifti)."""
    rel = rel or (lambda folder, fname: f"./{folder}/{fname}")
    tr_ids, ts_ids = case_ids()
    train, test = [], []
    for i, cid in enumerate(tr_ids + ts_ids):
        is_test = cid in ts_ids
        rng = rng_for(kind_no, i)
        img, lab, kw = make(rng, i, cid, is_test)
        img_name = kw.pop("image_name", cid + ending)
        lab_name = kw.pop("label_name", cid + ending)
        img_dir = "imagesTs" if is_test else "imagesTr"
        lab_dir = "labelsTs" if is_test else "labelsTr"
        (image_fn or _write_image)(root / img_dir / img_name, img, kw, i, cid)
        (label_fn or _write_label)(root / lab_dir / lab_name, lab, kw, i, cid)
        case = Case(cid, rel(img_dir, img_name), None if is_test else rel(lab_dir, lab_name))
        (test if is_test else train).append(case)
    return dataset_json(root, name, modality or {"0": "MRI"}, labels or LABELS, train, test,
                        json_extra)


def _write_image(path: Path, img: np.ndarray, kw: dict, i: int, cid: str) -> None:
    write_nifti(path, img, kw.get("affine"), **kw.get("image_kw", {}))


def _write_label(path: Path, lab: np.ndarray, kw: dict, i: int, cid: str) -> None:
    write_nifti(path, lab, kw.get("affine"), intent_label=True, **kw.get("label_kw", {}))


# ---------------------------------------------------------------- the kinds


def k_no_orientation_codes(root: Path, kind: Kind) -> dict:
    sp = (1.2, 1.2, 2.5)

    def make(rng, i, cid, is_test):
        lab = structures(rng, SHAPE, sp)
        img = mr_image(rng, lab)
        kw = {"qcode": 0, "scode": 0, "zooms": sp}
        return img, lab, {"affine": None, "image_kw": kw, "label_kw": dict(kw)}
    return standard(root, 4, "NoOrientationCodes", make=make)


def k_label_outside_nonzero(root: Path, kind: Kind) -> dict:
    cut = 17  # image voxels with x >= cut are exactly 0 (outside a mask / field of view)

    def make(rng, i, cid, is_test):
        lab = structures(rng, SHAPE, SPACING, box=((0.3, 0.45), (0.3, 0.7), (0.3, 0.7)))
        lab[lab == 2] = 0
        if i % 2 == 0 or is_test:  # the cube straddles the cut in these cases
            x0, y0, z0 = cut - 3, int(rng.integers(6, 20)), int(rng.integers(5, 13))
            region = lab[x0:x0 + 6, y0:y0 + 5, z0:z0 + 4]
            region[region == 0] = 2
        else:
            x0, y0, z0 = 4, int(rng.integers(6, 20)), int(rng.integers(5, 13))
            region = lab[x0:x0 + 5, y0:y0 + 5, z0:z0 + 4]
            region[region == 0] = 2
        img = mr_image(rng, lab)
        img[cut:] = 0.0
        return img, lab, {"affine": diag_affine(SPACING, SHAPE)}
    meta = standard(root, 5, "LabelOutsideNonzero", make=make)
    lost = []
    for c in meta["training"]:
        lab = np.asarray(nib.load(root / c["label"]).dataobj)
        lost.append(f"{Path(c['label']).name}: {int((lab[cut:] > 0).sum())} labelled voxels "
                    f"where the image is 0 (x >= {cut})\n")
    (root / "LOST_VOXELS.txt").write_text("".join(lost))
    return meta


def k_ignore_label(root: Path, kind: Kind) -> dict:
    annotated = (3, 6, 9, 12, 15, 18)  # only these axial slices are annotated; rest "ignore" (3)

    def make(rng, i, cid, is_test):
        lab = structures(rng, SHAPE, SPACING, sphere_mm=(5.5, 7.0), cube_mm=(5.0, 6.5))
        img = mr_image(rng, lab)
        if is_test:
            return img, lab, {"affine": diag_affine(SPACING, SHAPE)}  # dense reference
        sparse = np.full(lab.shape, 3, np.uint8)
        for z in annotated:
            sparse[:, :, z] = lab[:, :, z]
        return img, sparse, {"affine": diag_affine(SPACING, SHAPE)}
    return standard(root, 8, "IgnoreLabel",
                    labels={"0": "background", "1": "sphere", "2": "cube", "3": "ignore"},
                    make=make)


def k_normalization_names(root: Path, kind: Kind) -> dict:
    def make(rng, i, cid, is_test):
        lab = structures(rng, SHAPE, SPACING)
        t2 = mr_image(rng, lab)
        # channel 1: a prior probability map in [0, 1] (e.g. a previous stage's softmax)
        prior = np.zeros(SHAPE, np.float32)
        prior[lab == 1] = 0.9
        prior[lab == 2] = 0.6
        for ax in range(3):  # a little blur so it is a map, not a label
            prior = (prior + np.roll(prior, 1, ax) + np.roll(prior, -1, ax)) / 3
        # channel 2: a 12-bit microscopy-like intensity, per-case gain (rescale_to_0_1 in nnU-Net)
        gain = 500.0 + 400.0 * i
        micro = np.clip(gain * (0.2 + 0.8 * (lab > 0)) + rng.normal(0, 0.05 * gain, SHAPE),
                        0, 4095).astype(np.float32)
        img = np.stack([t2, prior.astype(np.float32), micro], axis=-1)
        return img, lab, {"affine": diag_affine(SPACING, SHAPE),
                          "image_kw": {"zooms": (*SPACING, 1.0)}}
    return standard(root, 9, "NormalizationNames",
                    modality={"0": "T2", "1": "noNorm", "2": "rescale_to_0_1"}, make=make)


def k_backslash_paths(root: Path, kind: Kind) -> dict:
    def make(rng, i, cid, is_test):
        lab = structures(rng, SHAPE, SPACING)
        return mr_image(rng, lab), lab, {"affine": diag_affine(SPACING, SHAPE)}
    return standard(root, 11, "BackslashPaths", make=make,
                    rel=lambda folder, fname: f".\\{folder}\\{fname}")


KINDS: list[Kind] = [
    Kind("k04_no_orientation_codes",
         "qform_code = sform_code = 0 (NIfTI 'method 1': pixdim only, no orientation)",
         k_no_orientation_codes,
         "No orientation is stored: qform_code = sform_code = 0, pixdim (1.2, 1.2, 2.5).\n"
         "Readers disagree on what such a file means: nibabel's fallback affine flips x and\n"
         "centres the grid; ITK/SimpleITK use an identity direction at origin 0 (LPS), so\n"
         "the two differ in the y direction and the origin. Correct: train normally and\n"
         "write predictions whose header says the same as the input's (codes stay 0, pixdim\n"
         "kept), so every tool overlays prediction and image identically. Check: codes of\n"
         "the written predictions, and SimpleITK direction/origin of image vs prediction.",
         ["nipy/nibabel#522 (x flip read differently when qform_code is 0)",
          "nipy/nibabel#863 (nibabel-written orientation read differently by ITK-SNAP)"]),
    Kind("k05_label_outside_nonzero",
         "labelled voxels where the image is exactly 0, outside the image's nonzero box",
         k_label_outside_nonzero,
         "Image voxels with x >= 17 are exactly 0 (masked / outside the field of view), but in\n"
         "cases 1, 3, 5, 7 and both test cases the cube (label 2) extends 3 voxels into that\n"
         "zone (LOST_VOXELS.txt gives the counts). Cropping to the image's nonzero box drops\n"
         "those labelled voxels. Correct: never lose reference voxels silently: keep the\n"
         "label's extent in the crop box, or warn per case with the number of labelled\n"
         "voxels outside the box; at prediction time the evaluation against labelsTs/ should\n"
         "show whether the cube's outer part can be predicted.",
         ["MIC-DKFZ/nnUNet#1425 (structures cut in half by the nonzero crop)",
          "MIC-DKFZ/nnUNet#2796 / PR #2824 (crop_to_nonzero: labels outside the crop lost)"]),
    Kind("k08_ignore_label",
         "sparse annotation with an 'ignore' class (nnU-Net v2's ignore label)",
         k_ignore_label,
         "labels: 0 background, 1 sphere, 2 cube, 3 'ignore'. Training labels are annotated\n"
         "only on axial slices z = 3, 6, 9, 12, 15, 18; every other voxel is 3 ('ignore' = not\n"
         "annotated), as nnU-Net v2's ignore-label convention (the highest value, named\n"
         "'ignore'). labelsTs/ holds dense references. Correct: exclude 'ignore' voxels from\n"
         "the loss (and from patch sampling of foreground), never predict 3, score only\n"
         "0/1/2; or refuse with a message that the ignore label is not supported. Wrong:\n"
         "treating 3 as a fourth class (predictions full of 3).",
         ["MIC-DKFZ/nnUNet#2567, #1821, #2884 (ignore label use and errors)",
          "MIC-DKFZ/nnUNet#1926 (ignore label documentation)"]),
    Kind("k09_normalization_channel_names",
         "channel names that select a normalization in nnU-Net v2: noNorm, rescale_to_0_1",
         k_normalization_names,
         "modality: 0 T2, 1 noNorm (a prior probability map in [0, 1]), 2 rescale_to_0_1\n"
         "(12-bit intensities with a per-case gain). nnU-Net v2 maps these names to\n"
         "NoNormalization and RescaleTo01Normalization. Correct: channel 1 left as it is,\n"
         "channel 2 rescaled per image to [0, 1]; or at least a warning that the names are\n"
         "not understood and which normalization is used instead. Check plan.json\n"
         "channel_norms.",
         ["MIC-DKFZ/nnUNet PR #1591 (rescale_to_0_1 silently got z-score)",
          "MIC-DKFZ/nnUNet#2845 (noNorm for probability-map channels)",
          "MIC-DKFZ/nnUNet#1876 (v1 noNorm)"]),
    Kind("k11_backslash_paths",
         "dataset.json written on Windows: image/label paths with backslashes",
         k_backslash_paths,
         "Every path in dataset.json uses Windows separators: the JSON text reads\n"
         "\".\\\\imagesTr\\\\case_001.nii.gz\", i.e. the path .\\imagesTr\\case_001.nii.gz; the\n"
         "files themselves are normal. Correct: treat a backslash as a separator (no dataset\n"
         "has one inside a file name), or refuse naming the backslash as the problem, not\n"
         "'missing file'.",
         ["MIC-DKFZ/nnUNet#18 (Windows path separators in dataset.json)",
          "MIC-DKFZ/nnUNet#125 (path separator errors)"]),
]


def write_note(root: Path, kind: Kind) -> None:
    text = (f"{kind.name}\n{'=' * len(kind.name)}\n\nCondition: {kind.summary}\n\n{kind.note}\n\n"
            "Public reports:\n" + "".join(f"  - {s}\n" for s in kind.sources)
            + "\nLayout: MSD (dataset.json: modality, labels, training, test). labelsTs/ holds "
              "reference labels of the test images; dataset.json does not list it.\n")
    (root / "NOTE.txt").write_text(text)


def check_kind(root: Path) -> str:
    """Read every NIfTI of a dataset back with nibabel; one summary line."""
    ok, bad = 0, []
    for p in sorted(root.rglob("*.nii*")):
        try:
            img = nib.load(str(p))
            np.asarray(img.dataobj)
            ok += 1
        except Exception as exc:  # noqa: BLE001 - some kinds are meant to fail
            bad.append(f"{p.relative_to(root)}: {type(exc).__name__}")
    return f"{root.name}: {ok} read by nibabel" + (f"; {len(bad)} not: {bad}" if bad else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", help="folder to write the datasets into")
    ap.add_argument("kinds", nargs="*", help="only these kinds (default: all)")
    ap.add_argument("--list", action="store_true", help="print the kinds and exit")
    ap.add_argument("--check", action="store_true", help="read everything back with nibabel")
    args = ap.parse_args(argv)
    if args.list:
        for k in KINDS:
            print(f"{k.name:34s} {k.summary}")
        return 0
    if not args.out_dir:
        ap.error("OUT_DIR is required (or --list)")
    wanted = set(args.kinds) or {k.name for k in KINDS}
    unknown = wanted - {k.name for k in KINDS}
    if unknown:
        ap.error(f"unknown kinds {sorted(unknown)}; see --list")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k in KINDS:
        if k.name not in wanted:
            continue
        root = out / k.name
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        k.build(root, k)
        write_note(root, k)
        print(f"wrote {root}")
        if args.check:
            print("  " + check_kind(root))
    index = ["# users' data, third set: one dataset per kind\n\n"] + [
        f"- `{k.name}`: {k.summary}\n" for k in KINDS if (out / k.name / "NOTE.txt").is_file()]
    (out / "INDEX.md").write_text("".join(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
