"""A cascade stage's extra input: the previous stage's segmentation, on the stage's grid.

The ``3d_lowres`` stage predicts label maps in each case's original geometry (like every
prediction). The ``3d_cascade`` stage takes them as input: cropped to the case's nonzero box
and resampled (nearest neighbour, as labels are) to the case's preprocessed grid, then one-hot
over the foreground classes (:func:`one_hot_foreground`, ``num_classes - 1`` channels after
the image's). Training reads them from ``<case>_prev.npy`` (uint8 class indices, beside no
other file, written by :func:`stage_previous`); prediction computes them per case from the
low-resolution prediction of the same image (:func:`previous_channels`).

Training without leakage (nnU-Net's way): the training cases of cascade fold ``f`` carry the
low-resolution segmentations of the cross-validation, each case predicted by the
low-resolution fold model that did not train on it. :func:`stage_previous` therefore takes the
low-resolution prediction folders of every fold, which together hold each case exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnpipe.datasets.layout import read_label_file
from nnpipe.errors import DataError
from nnpipe.imageio import ending_of
from nnpipe.io import save_npy, write_json
from nnpipe.labels import LabelTable
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.pipeline import CaseMeta
from nnpipe.preprocessing.resample import resample_labels, separate_axis
from nnpipe.progress import log

PREVIOUS_SUFFIX = "_prev.npy"
# written last by stage_previous: the folder is complete when it exists
PREVIOUS_MANIFEST = "previous.json"


def previous_to_grid(indices: np.ndarray, meta: CaseMeta) -> np.ndarray:
    """Class indices ``(X, Y, Z)`` in a case's original (canonical) grid -> uint8
    ``(X', Y', Z')`` on its preprocessed grid: the crop and resampling of its image."""
    if indices.shape != meta.original_shape:
        raise DataError(f"previous-stage segmentation of shape {indices.shape} does not match "
                        f"the image's {meta.original_shape}", case=meta.case_id)
    box = tuple(slice(lo, hi) for lo, hi in meta.bbox)
    axis = separate_axis(meta.original_spacing, meta.target_spacing)
    return resample_labels(np.ascontiguousarray(indices[box]), meta.resampled_shape,
                           axis).astype(np.uint8, copy=False)


def one_hot_foreground(seg: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 ``(K - 1, *seg.shape)``: channel ``k - 1`` is 1 where ``seg == k``, for the
    foreground classes ``k = 1 .. K - 1`` (background is where every channel is 0)."""
    if num_classes < 2:
        raise ValueError(f"one_hot_foreground needs at least 2 classes, got {num_classes}")
    classes = np.arange(1, num_classes, dtype=seg.dtype).reshape((-1,) + (1,) * seg.ndim)
    return (seg[None] == classes).astype(np.float32)


def previous_channels(labels: np.ndarray, table: LabelTable, meta: CaseMeta,
                      num_classes: int, case_id: str) -> np.ndarray:
    """The extra input channels ``(K - 1, X', Y', Z')`` of a cascade stage from the previous
    stage's label values ``(X, Y, Z)`` in the case's original (canonical) grid."""
    indices = table.to_indices(labels, case=case_id)
    return one_hot_foreground(previous_to_grid(indices, meta), num_classes)


def _prediction_files(folders: Sequence[Path | str]) -> dict[str, Path]:
    """``{case id: file}`` over ``folders``; a case predicted twice is an error (folds
    overlap)."""
    found: dict[str, Path] = {}
    for folder in map(Path, folders):
        for path in sorted(folder.iterdir()):
            ending = ending_of(path)
            if not ending or path.name.startswith("."):
                continue
            case_id = path.name[: -len(ending)]
            if case_id in found:
                raise DataError(f"predicted twice (also in {str(found[case_id].parent)!r}): "
                                "the folders must be the folds of one cross-validation",
                                case=case_id, path=path)
            found[case_id] = path
    return found


def stage_previous(preprocessed_dir: Path | str, predictions: Sequence[Path | str],
                   out_dir: Path | str, previous_stage: str = "3d_lowres") -> Path:
    """Write ``<case>_prev.npy`` for every case of a preprocessed folder from the previous
    stage's cross-validation predictions (``predictions``: one folder per fold, label files
    in the original geometry), then ``previous.json``; returns its path.

    Raises:
        DataError: naming a case whose prediction is missing, doubled or of another shape.
    """
    from nnpipe.data.sampling import read_manifest

    manifest = read_manifest(preprocessed_dir)
    plan = Plan.from_dict(manifest["plan"])
    files = _prediction_files(predictions)
    missing = [c for c in manifest["cases"] if c not in files]
    if missing:
        raise DataError(f"{len(missing)} case(s) have no {previous_stage} prediction in "
                        f"{[str(p) for p in predictions]}: {', '.join(missing[:10])}",
                        case=missing[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PREVIOUS_MANIFEST).unlink(missing_ok=True)
    for case_id, entry in manifest["cases"].items():
        values, _ = read_label_file(files[case_id], case=case_id)
        indices = plan.label_table.to_indices(values, case=case_id, path=files[case_id])
        save_npy(out / f"{case_id}{PREVIOUS_SUFFIX}",
                 previous_to_grid(indices, CaseMeta.from_dict(entry)))
        log(f"previous stage: {case_id} from {files[case_id]}")
    record = out / PREVIOUS_MANIFEST
    write_json(record, {"previous_stage": previous_stage, "num_classes": plan.num_classes,
                        "cases": sorted(manifest["cases"]),
                        "predictions": [str(p) for p in predictions]})
    return record
