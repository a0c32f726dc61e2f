"""Reading a dataset folder in either the MSD or the nnU-Net v2 raw layout.

MSD (Medical Segmentation Decathlon): ``dataset.json`` with ``modality`` and ``labels``
(``{"0": "background", ...}``), 4D images ``imagesTr/<case>.nii.gz`` of shape (X, Y, Z, C)
(3D when there is one channel), ``labelsTr/<case>.nii.gz`` and ``imagesTs/``.

nnU-Net v2 raw: ``dataset.json`` with ``channel_names`` and ``labels`` (``{"background": 0}``)
and ``file_ending``; one file per channel, ``imagesTr/<case>_0000.nii.gz``.

Both become one :class:`Dataset`; images are returned channel-first, ``(C, X, Y, Z)``
float32 in NIfTI voxel order, labels ``(X, Y, Z)`` uint8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnpipe.errors import DataError
from nnpipe.io import load_nifti, spacing_of
from nnpipe.progress import log

# Affines of an image and its label may differ by rounding in the header; beyond this (mm)
# they describe different grids.
AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Case:
    """One case: its id, its image file(s) and (for training cases) its label file."""

    case_id: str
    images: tuple[Path, ...]  # one 4D file (MSD) or one file per channel (nnU-Net v2)
    label: Path | None = None


@dataclass(frozen=True)
class Dataset:
    root: Path
    name: str
    layout: str  # "msd" or "nnunetv2"
    channels: tuple[str, ...]  # channel names ("FLAIR", "T1w", "CT", ...)
    labels: dict[int, str]  # label value -> name, background included
    training: tuple[Case, ...]
    test: tuple[Case, ...]
    file_ending: str = ".nii.gz"

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        """Number of label values, background included."""
        return len(self.labels)

    @property
    def is_ct(self) -> tuple[bool, ...]:
        """Per channel: normalize as CT (clip to foreground percentiles) rather than MRI."""
        return tuple(c.strip().upper() == "CT" for c in self.channels)

    def case(self, case_id: str) -> Case:
        for c in self.training + self.test:
            if c.case_id == case_id:
                return c
        raise DataError("no such case in the dataset", case=case_id, path=self.root)


def _case_id_of(path: str, ending: str) -> str:
    name = Path(path).name
    return name[: -len(ending)] if name.endswith(ending) else Path(name).stem


def load_dataset(root: Path | str) -> Dataset:
    """Read ``root/dataset.json`` and detect the layout from its keys.

    Files listed but missing are reported here, before any work starts.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError("dataset.json is missing; is this an MSD or nnU-Net v2 dataset folder?",
                        path=meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=meta_path) from exc
    if "channel_names" in meta:
        ds = _load_nnunetv2(root, meta)
    elif "modality" in meta:
        ds = _load_msd(root, meta)
    else:
        raise DataError("has neither 'modality' (MSD) nor 'channel_names' (nnU-Net v2)",
                        path=meta_path)
    for case in ds.training + ds.test:
        for p in case.images + ((case.label,) if case.label else ()):
            if not p.is_file():
                raise DataError("listed in dataset.json but missing", case=case.case_id, path=p)
    if not ds.training:
        raise DataError("lists no training cases", path=meta_path)
    return ds


def _load_msd(root: Path, meta: dict) -> Dataset:
    channels = tuple(meta["modality"][k] for k in sorted(meta["modality"], key=int))
    labels = {int(k): str(v) for k, v in meta["labels"].items()}
    training = tuple(
        Case(_case_id_of(e["image"], ".nii.gz"), (root / e["image"],), root / e["label"])
        for e in meta.get("training", [])
    )
    test = tuple(
        Case(_case_id_of(e if isinstance(e, str) else e["image"], ".nii.gz"),
             (root / (e if isinstance(e, str) else e["image"]),))
        for e in meta.get("test", [])
    )
    return Dataset(root, str(meta.get("name", root.name)), "msd", channels,
                   dict(sorted(labels.items())), training, test)


def _load_nnunetv2(root: Path, meta: dict) -> Dataset:
    ending = str(meta.get("file_ending", ".nii.gz"))
    channels = tuple(meta["channel_names"][k] for k in sorted(meta["channel_names"], key=int))
    labels: dict[int, str] = {}
    for name, value in meta["labels"].items():
        if isinstance(value, list):  # region-based labels are not supported
            raise DataError(f"label {name!r} is a region list; nnpipe needs one value per label",
                            path=root / "dataset.json")
        labels[int(value)] = str(name)

    def cases(folder: str, with_labels: bool) -> tuple[Case, ...]:
        d = root / folder
        if not d.is_dir():
            return ()
        ids = sorted({p.name[: -len(ending)][:-5] for p in d.glob(f"*_0000{ending}")})
        return tuple(
            Case(cid, tuple(d / f"{cid}_{i:04d}{ending}" for i in range(len(channels))),
                 (root / "labelsTr" / f"{cid}{ending}") if with_labels else None)
            for cid in ids
        )

    return Dataset(root, str(meta.get("name", root.name)), "nnunetv2", channels,
                   dict(sorted(labels.items())), cases("imagesTr", True), cases("imagesTs", False),
                   ending)


def read_image(ds: Dataset, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, affine)``: image ``(C, X, Y, Z)`` float32 in NIfTI voxel order.

    Checks the channel count against dataset.json, that per-channel files share one grid, that
    the image is 3D, and that every voxel is finite.
    """
    if len(case.images) == 1:
        data, affine = load_nifti(case.images[0], case=case.case_id)
        _refuse_2d(data.shape, case, case.images[0])
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4:
            raise DataError(f"expected a 3D or 4D image, got {data.ndim}D of shape {data.shape}",
                            case=case.case_id, path=case.images[0])
        image = np.moveaxis(data, -1, 0)
    else:
        parts = []
        affine = None
        for path in case.images:
            d, a = load_nifti(path, case=case.case_id)
            _refuse_2d(d.shape, case, path)
            if d.ndim != 3:
                raise DataError(f"expected a 3D image per channel, got shape {d.shape}",
                                case=case.case_id, path=path)
            if parts and d.shape != parts[0].shape:
                raise DataError(f"channel shape {d.shape} differs from the first channel's "
                                f"{parts[0].shape}", case=case.case_id, path=path)
            if affine is not None and not np.allclose(a, affine, atol=AFFINE_TOLERANCE_MM):
                mine, first = spacing_of(a), spacing_of(affine)
                what = (f"spacing {_mm(mine)} differs from the first channel's {_mm(first)}"
                        if not np.allclose(mine, first, atol=AFFINE_TOLERANCE_MM) else
                        "affine (position or orientation) differs from the first channel's")
                raise DataError(f"channel {what}", case=case.case_id, path=path)
            parts.append(d)
            affine = a if affine is None else affine
        image = np.stack(parts)
        assert affine is not None
    if image.shape[0] != ds.num_channels:
        raise DataError(f"has {image.shape[0]} channel(s) but dataset.json lists "
                        f"{ds.num_channels} ({', '.join(ds.channels)})",
                        case=case.case_id, path=case.images[0])
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise DataError("contains NaN or Inf voxels", case=case.case_id, path=case.images[0])
    return image, affine


def _mm(spacing: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in spacing) + ") mm"


def _refuse_2d(shape: tuple[int, ...], case: Case, path: Path) -> None:
    """A 2D image (2 axes, or a single slice) cannot be part of a 3D dataset."""
    spatial = shape[:3]
    if len(shape) < 3 or 1 in spatial:
        raise DataError(f"is a 2D image (shape {tuple(shape)}) in a 3D dataset; every case "
                        f"needs at least 2 voxels along X, Y and Z", case=case.case_id, path=path)


def read_label(ds: Dataset, case: Case, *, image_shape: tuple[int, ...] | None = None,
               image_affine: np.ndarray | None = None) -> np.ndarray:
    """Return the label map ``(X, Y, Z)`` as uint8, checked against dataset.json and the image."""
    if case.label is None:
        raise DataError("has no label file", case=case.case_id)
    data, affine = load_nifti(case.label, case=case.case_id)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"label must be 3D, got shape {data.shape}", case=case.case_id,
                        path=case.label)
    if image_shape is not None and tuple(data.shape) != tuple(image_shape):
        raise DataError(f"label shape {tuple(data.shape)} differs from image shape "
                        f"{tuple(image_shape)}", case=case.case_id, path=case.label)
    if image_affine is not None and not np.allclose(affine, image_affine,
                                                    atol=AFFINE_TOLERANCE_MM):
        raise DataError("label affine differs from the image affine (different grid)",
                        case=case.case_id, path=case.label)
    if not np.isfinite(data).all() or np.any(data != np.round(data)):
        raise DataError("label holds non-integer values", case=case.case_id, path=case.label)
    values = set(np.unique(data).astype(int).tolist())
    if values <= {0}:
        # Usable (a background-only example), so a warning rather than an error.
        log(f"warning: case {case.case_id!r}, file {str(case.label)!r}: label is empty (no "
            f"foreground); the case is kept as background only")
    unknown = sorted(values - set(ds.labels))
    if unknown:
        raise DataError(f"label values {unknown} are not listed in dataset.json "
                        f"(known: {sorted(ds.labels)})", case=case.case_id, path=case.label)
    return data.astype(np.uint8)
