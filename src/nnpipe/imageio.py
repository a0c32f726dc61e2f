"""Image files in and out: NIfTI (nibabel), NRRD and MetaImage (SimpleITK), 3D TIFF (tifffile),
PNG and BMP (Pillow). The only module that knows file formats.

:func:`read_file` returns an :class:`ImageFile`: the voxels in the file's own voxel order as
``(X, Y, Z, C)`` (2D files get ``Z = 1``; RGB24 and vector voxels become channels), the affine
from voxel indices to world RAS+ millimetres (header units converted), and what
:func:`write_like` needs to write a label map back in the same format on the same grid.
Orientation to the canonical voxel order is :mod:`nnpipe.geometry`'s job, datasets and cases
:mod:`nnpipe.datasets.layout`'s.

NIfTI rules followed (NIfTI-1 header, ``nifti1.h``): the affine is the sform when
``sform_code > 0``, else the qform when ``qform_code > 0``, else the pixdim diagonal
(nibabel's ``get_best_affine``); ``xyzt_units`` metres and micrometres become mm;
``scl_slope``/``scl_inter`` are applied. SimpleITK images are LPS+: the first two world axes
are negated to reach RAS+. TIFF and PNG have no geometry: spacing 1 mm unless a sidecar
``<case>.json`` gives it, in nnU-Net v2's convention (array order: ``{"spacing": [z, y, x]}``).

SimpleITK, tifffile and Pillow are the ``formats`` extra (``pip install 'nnpipe[formats]'``);
a missing one gives a :class:`DataError` with the ``pip install`` line.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from nnpipe.errors import DataError
from nnpipe.geometry import orientation_of, spacing_of
from nnpipe.io import atomic_path, write_json

if TYPE_CHECKING:  # nibabel is imported where it is used (not every format needs it)
    import nibabel as nib

# Ending -> reader family. Longest endings first so ".nii.gz" wins over ".gz".
ENDINGS: dict[str, str] = {
    ".nii.gz": "nifti", ".nii": "nifti",
    ".nrrd": "sitk", ".nhdr": "sitk", ".mha": "sitk", ".mhd": "sitk",
    ".tif": "tiff", ".tiff": "tiff",
    ".png": "pillow", ".bmp": "pillow",
}
# Files that belong to an image without being one (MetaImage/NRRD detached data, TIFF
# spacing sidecars): never cases, never warned about.
COMPANIONS = (".raw", ".zraw", ".raw.gz", ".img", ".json")

_FAMILY_NAMES = {"nifti": "NIfTI", "sitk": "NRRD/MetaImage (SimpleITK)", "tiff": "TIFF",
                 "pillow": "PNG/BMP (Pillow)"}
_EXTRA = {"SimpleITK": "SimpleITK", "tifffile": "tifffile", "PIL": "Pillow"}
_UNITS_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def ending_of(path: Path | str) -> str | None:
    """The supported ending of ``path`` (``".nii.gz"``, ``".nrrd"``, ...), or None."""
    name = Path(path).name.lower()
    for ending in sorted(ENDINGS, key=len, reverse=True):
        if name.endswith(ending) and len(name) > len(ending):
            return ending
    return None


def strip_ending(path: Path | str) -> str:
    """The file name without its supported ending (the whole stem, ``_NNNN`` included)."""
    name = Path(path).name
    ending = ending_of(path)
    return name[: -len(ending)] if ending else Path(name).stem


def is_companion(path: Path | str) -> bool:
    return Path(path).name.lower().endswith(COMPANIONS)


@dataclass
class ImageFile:
    """One image file's voxels and geometry.

    ``data``: ``(X, Y, Z, C)`` in the file's voxel order, the stored dtype (scaled to float
    where the header says so). ``affine``: 4×4 voxel -> world RAS+ mm. ``other_affine``: for
    NIfTI with both forms coded and different, the form not chosen (mm), else None.
    """

    path: Path
    data: np.ndarray
    affine: np.ndarray
    family: str
    source: Any = None  # what the writer needs: nibabel header, SimpleITK image information
    other_affine: np.ndarray | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        s = self.data.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def channels(self) -> int:
        return int(self.data.shape[3])


@dataclass(frozen=True)
class HeaderInfo:
    """What a header says without reading voxels: canonical shape (X, Y, Z), channels and
    canonical spacing (mm)."""

    shape: tuple[int, int, int]
    channels: int
    spacing: tuple[float, float, float]


def _module(name: str, path: Path, case: str | None) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise DataError(f"reading or writing {ending_of(path) or path.suffix} files needs "
                        f"{_EXTRA[name]}: pip install 'nnpipe[formats]' (or pip install "
                        f"{_EXTRA[name]})", case=case, path=path) from exc


def _family(path: Path, case: str | None) -> str:
    ending = ending_of(path)
    if ending is None:
        raise DataError(f"unsupported file type; nnpipe reads {', '.join(ENDINGS)}",
                        case=case, path=path)
    return ENDINGS[ending]


def sniff_ending(path: Path | str) -> str | None:
    """The ending a file's content calls for, from its first bytes (gzip magic, the NIfTI-1/2
    magic, ``NRRD``, MetaImage keys, TIFF/PNG/BMP signatures); None if not recognised.

    NIfTI: ``.nii.gz`` when gzipped, ``.nii`` when not. Other formats: the name's own ending
    when it is of the same family (``.mha`` vs ``.mhd`` cannot be told apart by content),
    else the family's first ending.
    """
    import gzip

    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(352)
    gz = head[:2] == b"\x1f\x8b"
    if gz:
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(352)
        except (OSError, EOFError):
            return None
    own = ending_of(path)
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return ".nii.gz" if gz else ".nii"
    family = None
    fallback = ""
    if head[:4] == b"NRRD":
        family, fallback = "sitk", ".nrrd"
    elif any(key in head[:128] for key in (b"ObjectType", b"NDims")):  # MetaImage text header
        family, fallback = "sitk", ".mha"
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        family, fallback = "tiff", ".tif"
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        family, fallback = "pillow", ".png"
    elif head[:2] == b"BM":
        family, fallback = "pillow", ".bmp"
    if family is None or gz:  # a gzipped non-NIfTI file is not a supported image
        return None
    if own is not None and ENDINGS[own] == family and own not in (".png", ".bmp"):
        return own
    return fallback


def read_file(path: Path | str, *, case: str | None = None) -> ImageFile:
    """Read one image file (see the module docstring). Raises :class:`DataError` naming the
    case and file if it is missing, of an unsupported type, truncated or unreadable.

    The content decides, not the name (:func:`sniff_ending`): a ``.nii.gz`` that is not
    gzipped, a ``.nii`` that is, or an NRRD named ``.nii.gz`` is read as what it is, with a
    note saying so (``ImageFile.notes``); writing back keeps the name's format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file is missing", case=case, path=path)
    _family(path, case)  # an unsupported ending is refused by name
    with _by_content(path) as (readable, notes):
        out = _read_as(readable, path, case, notes)
        out.data = np.array(out.data) if readable != path else out.data
    return out


@contextmanager
def _by_content(path: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """``path`` itself, or (when its content calls for another ending, :func:`sniff_ending`)
    a temporary link to it with that ending, and the note saying so."""
    actual, named = sniff_ending(path), ending_of(path)
    if actual is None or actual == named:
        yield path, ()
        return
    note = (f"content is {_FAMILY_NAMES[ENDINGS[actual]]} ({actual}) although the name ends "
            f"in {named}; read as {actual}")
    with tempfile.TemporaryDirectory(prefix=".nnpipe-content-") as tmp:
        alias = Path(tmp) / f"{strip_ending(path)}{actual}"
        alias.symlink_to(path.resolve())
        yield alias, (note,)


def _read_as(path: Path, shown: Path, case: str | None, notes: tuple[str, ...]) -> ImageFile:
    """Read ``path`` by its ending; errors and the result name ``shown`` (the user's file)."""
    family = ENDINGS[ending_of(path) or ""]
    reader = {"nifti": _read_nifti, "sitk": _read_sitk, "tiff": _read_tiff,
              "pillow": _read_pillow}[family]
    try:
        out = reader(path, case)
    except DataError:
        raise
    except Exception as exc:  # each library raises its own types for corrupt files
        raise DataError(f"cannot be read as {_FAMILY_NAMES[family]} "
                        f"({type(exc).__name__}: {exc})",
                        case=case, path=shown) from exc
    out.path = shown
    out.notes = (*notes, *out.notes)
    out.data = _as_xyzc(out.data, shown, case)
    _check_affine(out.affine, shown, case)
    return out


def _check_affine(affine: np.ndarray, path: Path, case: str | None) -> None:
    if not np.all(np.isfinite(affine)) or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise DataError("header geometry is not invertible (zero or non-finite voxel size or "
                        "direction): fix the affine (NIfTI sform/qform, or spacing/direction)",
                        case=case, path=path)


def _as_xyzc(data: np.ndarray, path: Path, case: str | None) -> np.ndarray:
    """Any supported voxel layout -> ``(X, Y, Z, C)``."""
    if data.dtype.names:  # RGB24 / RGBA32 NIfTI: one structured voxel per position
        data = np.stack([data[n] for n in data.dtype.names], axis=-1)
        if data.ndim == 3:  # a 2D RGB image (X, Y, C)
            data = data[:, :, None, :]
        return data
    if data.ndim == 2:
        return data[:, :, None, None]
    if data.ndim == 3:
        return data[..., None]
    if data.ndim == 4:
        return data
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector image (X, Y, Z, 1, C)
        return data[:, :, :, 0, :]
    raise DataError(f"expected 2 to 4 axes (X, Y[, Z][, C]) or a NIfTI vector image "
                    f"(X, Y, Z, 1, C), got shape {tuple(data.shape)}", case=case, path=path)


# ---------------------------------------------------------------- NIfTI


def load_nifti(path: Path | str, case: str | None = None) -> nib.Nifti1Image | nib.Nifti2Image:
    """``nibabel.load`` narrowed to a NIfTI-1 or NIfTI-2 image (what the NIfTI readers need).

    Raises :class:`DataError` naming the case and file when nibabel reads another format.
    """
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"not a NIfTI image (nibabel read it as {type(img).__name__})",
                        case=case, path=Path(path))
    return img


def _read_nifti(path: Path, case: str | None) -> ImageFile:
    img = load_nifti(path, case)
    header = img.header
    unit = header.get_xyzt_units()[0]
    scale = _UNITS_TO_MM.get(unit, 1.0)
    notes = () if scale == 1.0 else (f"header units {unit} converted to mm (x{scale:g})",)
    affine = _scaled(np.asarray(img.affine, dtype=np.float64), scale)
    other = None
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qcode and scode and not np.allclose(qform, sform, atol=1e-4):
        other = _scaled(np.asarray(qform, dtype=np.float64), scale)
    data = np.asarray(np.asanyarray(img.dataobj))
    return ImageFile(path, data, affine, "nifti", header, other, notes)


def _scaled(affine: np.ndarray, scale: float) -> np.ndarray:
    out = affine.copy()
    out[:3, :] *= scale
    return out


def _write_nifti(path: Path, labels: np.ndarray, src: ImageFile) -> None:
    """Labels ``(X, Y, Z)`` in the file order under a copy of the source's header: qform and
    sform with their codes exactly as the input had them (both codes 0 stays 0, with only
    pixdim; a qform-only or sform-only file stays so; codes 1/2/3/4 kept), quaternion and
    qfac, pixdim, units, dim_info and endianness; only what describes the voxels changes:
    shape, dtype, no scaling (scl_slope/scl_inter unset), cal_min/cal_max 0, intent
    NIFTI_INTENT_LABEL, no header extensions (they describe the image's voxels).

    Writing a fresh header instead (nibabel's default) gives a code-0 input codes 1 and
    nibabel's fallback affine, which ITK-based viewers read flipped and shifted against the
    image (nipy/nibabel#522, #863)."""
    import nibabel as nib

    header = src.source
    img_cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    data = labels[:, :, 0] if src.data.ndim == 4 and _was_2d(header) else labels
    data = data.astype(_nifti_label_dtype(data), copy=False)
    out = header.copy()
    out.set_data_shape(data.shape)
    out.set_data_dtype(data.dtype)
    out["scl_slope"] = np.nan
    out["scl_inter"] = np.nan
    out["cal_min"] = 0.0
    out["cal_max"] = 0.0
    out.set_intent("label")
    del out.extensions[:]
    # affine None: the image takes the header's forms and codes as they are
    img = img_cls(data, None, header=out)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _nifti_label_dtype(labels: np.ndarray) -> np.dtype:
    """The dtype a label map is written in: its own, except 64-bit integers (what
    :func:`nnpipe.labels.integer_labels` returns), which nibabel refuses and many tools cannot
    read; those go to the smallest integer type holding their values."""
    if labels.dtype.kind not in "iu" or labels.dtype.itemsize < 8:
        return labels.dtype
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dt in (np.uint8, np.uint16, np.int16, np.uint32, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return labels.dtype


def _was_2d(header: Any) -> bool:
    return int(header["dim"][0]) == 2


# ---------------------------------------------------------------- SimpleITK

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _sitk_affine(img: Any) -> np.ndarray:
    """Voxel -> RAS+ mm of a SimpleITK image or ImageFileReader (LPS+ direction, spacing,
    origin; 2D images get a unit third axis)."""
    dim = len(img.GetSpacing())
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = img.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = img.GetOrigin()
    a = np.eye(4)
    a[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    a[:3, 3] = _LPS_TO_RAS @ origin
    return a


def _read_sitk(path: Path, case: str | None) -> ImageFile:
    sitk = _module("SimpleITK", path, case)
    img = sitk.ReadImage(str(path))
    if img.GetDimension() not in (2, 3):
        raise DataError(f"SimpleITK reads a {img.GetDimension()}D image; nnpipe needs 2D or 3D "
                        "(channels as vector pixels)", case=case, path=path)
    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C]) or (Y, X[, C])
    spatial = img.GetDimension()
    arr = np.moveaxis(arr, list(range(spatial)), list(reversed(range(spatial))))
    if img.GetNumberOfComponentsPerPixel() == 1:
        arr = arr[..., None]
    if spatial == 2:
        arr = arr[:, :, None, :]
    info = {"origin": img.GetOrigin(), "spacing": img.GetSpacing(),
            "direction": img.GetDirection(), "dimension": spatial}
    return ImageFile(path, arr, _sitk_affine(img), "sitk", info)


def _write_sitk(path: Path, labels: np.ndarray, src: ImageFile) -> None:
    sitk = _module("SimpleITK", path, None)
    info = src.source
    arr = labels[:, :, 0] if info["dimension"] == 2 else labels
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    img.SetOrigin(info["origin"])
    img.SetSpacing(info["spacing"])
    img.SetDirection(info["direction"])
    if path.name.lower().endswith(_DETACHED):
        _write_detached(sitk, img, path)
        return
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)


# Headers whose voxels live in a second file (.zraw, .raw.gz) named after the header file.
_DETACHED = (".mhd", ".nhdr")


def _write_detached(sitk: ModuleType, img: Any, path: Path) -> None:
    """Write a detached-header image under its final names. The writer names the data file
    after the header file, so writing to :func:`atomic_path`'s temporary name would leave the
    header pointing at a hidden temporary data file. Both files are written in a temporary
    folder beside ``path`` and moved in data first, header last (the header marks completion).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        sitk.WriteImage(img, str(staged), True)
        for p in Path(tmp).iterdir():
            if p != staged:
                os.replace(p, path.with_name(p.name))
        os.replace(staged, path)


# ---------------------------------------------------------------- TIFF and PNG/BMP


def _sidecar_of(path: Path) -> Path | None:
    """nnU-Net v2's spacing sidecar of a TIFF/PNG/BMP: ``<case>.json`` beside
    ``<case>_0000.tif`` (or beside ``<case>.tif``)."""
    stem = strip_ending(path)
    names = [stem]
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
        names.append(stem[:-5])
    for name in names:
        side = path.with_name(name + ".json")
        if side.is_file():
            return side
    return None


def _sidecar_spacing(path: Path, ndim: int) -> tuple[float, ...]:
    """Spacing (mm, X, Y, Z) from the sidecar, else 1 mm per axis. As in nnU-Net v2 the
    sidecar lists the spacing in the file's array order, ``{"spacing": [z, y, x]}`` for a
    3D TIFF and ``[y, x]`` for a 2D image, so it is reversed here."""
    side = _sidecar_of(path)
    if side is None:
        return (1.0,) * ndim
    try:
        spacing = [float(v) for v in json.loads(side.read_text())["spacing"]][::-1]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"spacing sidecar is not {{\"spacing\": [z, y, x]}} ({exc})",
                        path=side) from exc
    if not 2 <= len(spacing) <= 3 or min(spacing) <= 0:
        raise DataError(f"spacing sidecar must list 2 or 3 positive spacings in array order "
                        f"(z, y, x), got {spacing[::-1]}", path=side)
    return tuple(spacing) + (1.0,) * (ndim - len(spacing))


def _copy_sidecar(path: Path, src: ImageFile) -> None:
    """A label map written like a TIFF/PNG/BMP with a spacing sidecar gets its own, in the
    same array order: the spacing is the only geometry these formats have."""
    side = src.source.get("sidecar") if src.source else None
    if side is not None:
        listed = len(json.loads(Path(side).read_text())["spacing"])
        spacing = [float(src.affine[i, i]) for i in range(listed)][::-1]
        write_json(path.with_name(strip_ending(path) + ".json"), {"spacing": spacing})


def _diag_affine(spacing: tuple[float, ...]) -> np.ndarray:
    a = np.eye(4)
    for i, s in enumerate(spacing[:3]):
        a[i, i] = s
    return a


def _read_tiff(path: Path, case: str | None) -> ImageFile:
    tifffile = _module("tifffile", path, case)
    arr = np.asarray(tifffile.imread(str(path)))  # (Z, Y, X[, C]) or (Y, X[, C])
    # 2D (Y, X), 3D stack (Z, Y, X), or channels as a 4D (Z, Y, X, C) stack
    if arr.ndim == 2:
        arr = arr.T
    elif arr.ndim == 3:
        arr = arr.transpose(2, 1, 0)
    elif arr.ndim == 4:
        arr = arr.transpose(2, 1, 0, 3)
    spacing = _sidecar_spacing(path, 3)
    return ImageFile(path, arr, _diag_affine(spacing), "tiff",
                     {"ndim": arr.ndim, "sidecar": _sidecar_of(path)})


def _write_tiff(path: Path, labels: np.ndarray, src: ImageFile) -> None:
    tifffile = _module("tifffile", path, None)
    arr = labels[:, :, 0].T if src.source.get("ndim") == 2 else labels.transpose(2, 1, 0)
    _copy_sidecar(path, src)  # before the image, which marks the pair complete
    with atomic_path(path) as tmp:
        # minisblack: else tifffile stores a (3, Y, X) or (Z, Y, 3) volume as RGB
        tifffile.imwrite(str(tmp), np.ascontiguousarray(arr), photometric="minisblack")


def _read_pillow(path: Path, case: str | None) -> ImageFile:
    _module("PIL", path, case)  # the install hint if Pillow is missing
    from PIL import Image

    with Image.open(str(path)) as im:
        arr = np.asarray(im)  # (Y, X) or (Y, X, C)
    arr = arr.swapaxes(0, 1)  # (X, Y[, C])
    arr = arr[:, :, None] if arr.ndim == 2 else arr[:, :, None, :]
    spacing = _sidecar_spacing(path, 3)
    return ImageFile(path, arr, _diag_affine(spacing), "pillow", {"sidecar": _sidecar_of(path)})


def _write_pillow(path: Path, labels: np.ndarray, src: ImageFile) -> None:
    _module("PIL", path, None)
    from PIL import Image

    arr = np.ascontiguousarray(labels[:, :, 0].T)
    # the values decide, not the dtype: an int64 map of 0..3 is a valid 8-bit BMP
    top = int(arr.max()) if arr.size else 0
    bmp = path.suffix.lower() == ".bmp"
    if (arr.size and int(arr.min()) < 0) or top > (255 if bmp else 65535):
        raise DataError(f"label values {int(arr.min())}..{top} cannot be written as "
                        f"{'BMP (0..255)' if bmp else 'PNG (0..65535)'}", path=path)
    arr = arr.astype(np.uint8 if top <= 255 else np.uint16)
    _copy_sidecar(path, src)  # before the image, which marks the pair complete
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(str(tmp), format=path.suffix.lstrip(".").upper())


_WRITERS = {"nifti": _write_nifti, "sitk": _write_sitk, "tiff": _write_tiff,
            "pillow": _write_pillow}


def write_like(path: Path | str, labels: np.ndarray, src: ImageFile) -> None:
    """Write an integer label map ``(X, Y, Z)`` (the source file's voxel order and shape) to
    ``path`` in ``src``'s format with its geometry, atomically."""
    path = Path(path)
    if labels.shape[:3] != src.spatial_shape:
        raise ValueError(f"labels of shape {labels.shape} do not match the source grid "
                         f"{src.spatial_shape} of {src.path}")
    _WRITERS[src.family](path, labels, src)


# ---------------------------------------------------------------- headers only


def read_header(path: Path | str, *, case: str | None = None) -> HeaderInfo:
    """Shape, channels and spacing from the header alone (no voxel read), in the canonical
    voxel order: what memory estimates need. Raises :class:`DataError` like :func:`read_file`."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file is missing", case=case, path=path)
    family = _family(path, case)
    try:
        with _by_content(path) as (readable, _):
            shape, channels, affine = _HEADERS[_family(readable, case)](readable, case)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read the {_FAMILY_NAMES[family]} header "
                        f"({type(exc).__name__}: {exc})",
                        case=case, path=path) from exc
    _check_affine(affine, path, case)
    o = orientation_of(affine, shape)
    sp = spacing_of(affine)
    canon = [0.0, 0.0, 0.0]
    for s, (axis, _) in zip(sp, o.transform, strict=True):
        canon[axis] = s
    return HeaderInfo(o.canonical_shape, channels, (canon[0], canon[1], canon[2]))


def _nifti_header(path: Path, case: str | None) -> tuple[tuple[int, ...], int, np.ndarray]:
    img = load_nifti(path, case)
    shape = tuple(int(s) for s in img.shape)
    dtype = img.get_data_dtype()
    channels = len(dtype.names) if dtype.names else 1
    spatial = (shape + (1, 1))[:3]
    for s in shape[3:]:
        channels *= s
    scale = _UNITS_TO_MM.get(img.header.get_xyzt_units()[0], 1.0)
    return spatial, channels, _scaled(np.asarray(img.affine, dtype=np.float64), scale)


def _sitk_header(path: Path, case: str | None) -> tuple[tuple[int, ...], int, np.ndarray]:
    sitk = _module("SimpleITK", path, case)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    spatial = (size + (1, 1))[:3]
    return spatial, int(reader.GetNumberOfComponents()), _sitk_affine(reader)


def _tiff_header(path: Path, case: str | None) -> tuple[tuple[int, ...], int, np.ndarray]:
    tifffile = _module("tifffile", path, case)
    with tifffile.TiffFile(str(path)) as tf:
        shape = tuple(int(s) for s in tf.series[0].shape)
    xyz = tuple(reversed(shape[:3])) if len(shape) >= 3 else (shape[1], shape[0], 1)
    channels = shape[3] if len(shape) == 4 else 1
    return xyz, channels, _diag_affine(_sidecar_spacing(path, 3))


def _pillow_header(path: Path, case: str | None) -> tuple[tuple[int, ...], int, np.ndarray]:
    _module("PIL", path, case)
    from PIL import Image

    with Image.open(str(path)) as im:
        x, y = im.size
        channels = len(im.getbands())
    return (x, y, 1), channels, _diag_affine(_sidecar_spacing(path, 3))


_HEADERS = {"nifti": _nifti_header, "sitk": _sitk_header, "tiff": _tiff_header,
            "pillow": _pillow_header}
