"""Reading and writing images as nnU-Net v2's image readers do (the plans'
``image_reader_writer``), so that a v2 model sees the voxel order it was trained on.

* ``SimpleITKIO``: SimpleITK's array ``(z, y, x)`` (the file's axes reversed), spacing
  reversed to match; a 2D image gets a leading axis of spacing ``999 * max``. Written back
  with SimpleITK, the input's spacing, origin and direction.
* ``NibabelIO``: nibabel's data transposed to ``(z, y, x)`` (``get_fdata``, so scaling
  applied), zooms reversed; written as a NIfTI with the input's affine.
* ``NibabelIOWithReorient``: the same after reorienting to the closest canonical (RAS)
  orientation; written back in the input's orientation.

Segmentations are written uint8 (uint16 from 255 foreground labels, the caller's choice),
atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from nnpipe.errors import DataError
from nnpipe.io import atomic_path


@dataclass(frozen=True)
class V2Image:
    """A case as v2 reads it: ``data`` ``(C, z, y, x)`` float32, ``spacing`` (mm, the same
    order), and what the reader needs to write a segmentation back (``reader``,
    ``geometry``)."""

    data: np.ndarray
    spacing: tuple[float, ...]
    reader: str
    geometry: dict[str, Any] = field(default_factory=dict)


def _read_sitk(f: Path, case_id: str) -> tuple[np.ndarray, tuple[float, ...], dict[str, Any]]:
    try:
        img = sitk.ReadImage(str(f))
    except RuntimeError as exc:
        raise DataError(f"SimpleITK cannot read it: {str(exc).strip().splitlines()[-1]}",
                        case=case_id, path=f) from None
    a = sitk.GetArrayFromImage(img)
    sp = img.GetSpacing()
    if a.ndim == 2:
        a, spacing = a[None, None], (max(sp) * 999, *sp[::-1])
    elif a.ndim == 3:
        a, spacing = a[None], tuple(sp[::-1])
    else:
        raise DataError(f"image has {a.ndim} axes; v2 models take 2D or 3D images",
                        case=case_id, path=f)
    return a, tuple(abs(s) for s in spacing), {
        "spacing": sp, "origin": img.GetOrigin(), "direction": img.GetDirection()}


def _read_nibabel(reorient: bool) -> Callable[[Path, str], tuple[np.ndarray, tuple[float, ...],
                                                                  dict[str, Any]]]:
    def read(f: Path, case_id: str) -> tuple[np.ndarray, tuple[float, ...], dict[str, Any]]:
        try:
            img = nib.load(str(f))
        except Exception as exc:  # nibabel raises several types for a bad file
            raise DataError(f"nibabel cannot read it: {exc}", case=case_id, path=f) from None
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"not a NIfTI image ({type(img).__name__}); v2's NibabelIO reads "
                            "NIfTI", case=case_id, path=f)
        if img.ndim != 3:
            raise DataError(f"image has {img.ndim} axes; v2's NibabelIO reads 3D images",
                            case=case_id, path=f)
        geometry = {"original_affine": img.affine}
        if reorient:
            img = img.as_reoriented(io_orientation(img.affine))
            geometry["reoriented_affine"] = img.affine
        spacing = tuple(float(z) for z in img.header.get_zooms()[::-1])
        return img.get_fdata().transpose((2, 1, 0))[None], spacing, geometry

    return read


READERS = {
    "SimpleITKIO": _read_sitk,
    "NibabelIO": _read_nibabel(False),
    "NibabelIOWithReorient": _read_nibabel(True),
}


def read_v2_image(files: Sequence[Path], reader: str = "SimpleITKIO",
                  case_id: str = "") -> V2Image:
    """Read the channel files of one case with v2's ``reader``.

    Raises:
        DataError: unreadable file, channels of different shape or spacing.
        ValueError: a reader nnpipe does not have.
    """
    if reader not in READERS:
        raise ValueError(f"image reader {reader!r}: nnpipe reads {', '.join(READERS)}")
    read = READERS[reader]
    arrays, spacings, geometries = [], [], []
    for f in files:
        a, spacing, geometry = read(Path(f), case_id)
        arrays.append(a)
        spacings.append(spacing)
        geometries.append(geometry)
    if len({a.shape for a in arrays}) > 1 or len(set(spacings)) > 1:
        raise DataError(f"channel files differ in shape or spacing "
                        f"({[a.shape[1:] for a in arrays]}, {spacings})", case=case_id,
                        path=files[0])
    data = np.vstack(arrays, dtype=np.float32, casting="unsafe")
    return V2Image(data, spacings[0], reader, geometries[0])


def write_v2_segmentation(path: Path, seg: np.ndarray, image: V2Image,
                          dtype: type[np.unsignedinteger]) -> None:
    """``seg`` ``(z, y, x)`` (the reader's order) written as ``image``'s reader writes it,
    atomically."""
    seg = seg.astype(dtype, copy=False)
    g = image.geometry
    with atomic_path(path) as tmp:
        if image.reader == "SimpleITKIO":
            out = sitk.GetImageFromArray(seg[0] if len(g["spacing"]) == 2 else seg)
            out.SetSpacing(g["spacing"])
            out.SetOrigin(g["origin"])
            out.SetDirection(g["direction"])
            sitk.WriteImage(out, str(tmp), True)
            return
        data = seg.transpose((2, 1, 0))
        if image.reader == "NibabelIO":
            nib.save(nib.Nifti1Image(data, affine=g["original_affine"]), str(tmp))
            return
        reoriented = nib.Nifti1Image(data, affine=g["reoriented_affine"])
        back = ornt_transform(axcodes2ornt("RAS"), io_orientation(g["original_affine"]))
        nib.save(reoriented.as_reoriented(back), str(tmp))
