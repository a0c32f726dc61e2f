"""Dice scores of predicted label maps against reference label maps.

Convention (defined here once, pinned by ``tests/evaluation/test_metrics.py``), per class:

* reference and prediction both empty -> Dice 1.0 (the prediction is right that there is
  nothing to find);
* reference empty, prediction not empty -> 0.0 (every predicted voxel is a false positive);
* reference not empty, prediction empty -> 0.0;
* otherwise ``2 |P ∩ R| / (|P| + |R|)``.

This is MONAI's ``DiceMetric`` / ``compute_dice`` with ``ignore_empty=False``. A case's
``dice_mean`` is the mean over the foreground labels scored (background 0 is never scored),
so no case is dropped and no NaN reaches the tables. Dice values are fractions in ``[0, 1]``;
the report turns them into percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nnpipe.errors import DataError
from nnpipe.io import atomic_path, load_nifti

AFFINE_TOLERANCE = 1e-3  # mm; larger differences mean the prediction is in another space


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label in ``labels`` between integer label maps ``pred`` and ``ref`` (X, Y, Z).

    See the module docstring for empty classes. Raises ``ValueError`` if the shapes differ,
    ``labels`` is empty or contains the background label 0.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(labels) == 0:
        raise ValueError("labels must name at least one foreground label")
    if 0 in labels:
        raise ValueError(f"labels must be foreground labels (> 0), got {list(labels)}")
    scores: dict[int, float] = {}
    for label in labels:
        p = pred == label
        r = ref == label
        denominator = int(p.sum()) + int(r.sum())
        if denominator == 0:
            scores[int(label)] = 1.0  # both empty: correctly predicted absence
        else:
            scores[int(label)] = 2.0 * int(np.logical_and(p, r).sum()) / denominator
    return scores


def mean_dice(scores: Mapping[int, float]) -> float:
    """The case Dice: mean over the scored foreground labels."""
    if not scores:
        raise ValueError("no Dice scores to average")
    return float(np.mean(list(scores.values())))


def evaluate_case(pred_path: Path | str, ref_path: Path | str, labels: Sequence[int],
                  case: str | None = None) -> dict[str, float]:
    """Score one predicted NIfTI label map against its reference.

    Returns ``{"dice_<label>": ..., "dice_mean": ...}`` (fractions). Raises ``DataError``
    naming the prediction file if its shape or affine (tolerance ``AFFINE_TOLERANCE``)
    differs from the reference's, or if it holds non-integer labels.
    """
    pred, pred_affine = load_nifti(pred_path, case=case)
    ref, ref_affine = load_nifti(ref_path, case=case)
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} differs from reference shape "
                        f"{ref.shape} ({ref_path})", case=case, path=pred_path)
    largest = float(np.abs(pred_affine - ref_affine).max())
    if largest > AFFINE_TOLERANCE:
        raise DataError(f"prediction affine differs from the reference's ({ref_path}) by up to "
                        f"{largest:.4g} (tolerance {AFFINE_TOLERANCE})", case=case, path=pred_path)
    scores = dice_per_class(_as_labels(pred, pred_path, case), _as_labels(ref, ref_path, case),
                            labels)
    row = {f"dice_{label}": value for label, value in scores.items()}
    row["dice_mean"] = mean_dice(scores)
    return row


def evaluate_folder(pred_dir: Path | str, refs: Path | str | Mapping[str, Path | str],
                    case_ids: Sequence[str], labels: Sequence[int],
                    out_csv: Path | str) -> pd.DataFrame:
    """Score ``{pred_dir}/{case}.nii.gz`` for every case; write and return the table.

    ``refs`` is a folder holding ``{case}.nii.gz`` (MSD ``labelsTr``) or a mapping from case
    id to reference path. The CSV (written atomically) has one row per case and the columns
    ``case, dice_<label>..., dice_mean``. A missing prediction raises ``DataError`` naming
    the case.
    """
    if len(case_ids) == 0:
        raise ValueError("case_ids is empty: nothing to evaluate")
    rows = []
    for case in case_ids:
        pred_path = Path(pred_dir) / f"{case}.nii.gz"
        if not pred_path.is_file():
            raise DataError("prediction is missing", case=case, path=pred_path)
        rows.append({"case": case, **evaluate_case(pred_path, _ref_path(refs, case), labels,
                                                   case=case)})
    table = pd.DataFrame(rows, columns=["case", *(f"dice_{lb}" for lb in labels), "dice_mean"])
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def _ref_path(refs: Path | str | Mapping[str, Path | str], case: str) -> Path:
    if isinstance(refs, Mapping):
        if case not in refs:
            raise DataError("no reference label map given for this case", case=case)
        return Path(refs[case])
    return Path(refs) / f"{case}.nii.gz"


def _as_labels(array: np.ndarray, path: Path | str, case: str | None) -> np.ndarray:
    """``array`` as int64 labels; ``DataError`` if it is not a 3D map of whole numbers."""
    if array.ndim != 3:
        raise DataError(f"label map must be 3D (X, Y, Z), got shape {array.shape}",
                        case=case, path=path)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise DataError("label map holds non-integer values", case=case, path=path)
    return array.astype(np.int64)
