"""Segmentation metrics of predicted label maps against reference label maps, in mm.

Per scored class (a label, or in region mode a set of labels such as BraTS's whole tumour)
and per case: Dice, IoU (Jaccard), HD95 (the 95th percentile Hausdorff distance, mm) and the
normalized surface Dice (NSD) at a tolerance in mm. Distances use the voxel spacing of the
reference image, so they are physical distances in the original grid.

Convention for empty classes (defined here once, pinned by ``tests/evaluation/``):

==========================  ======  =====  ===================  =====
reference / prediction      Dice    IoU    HD95 (mm)            NSD
==========================  ======  =====  ===================  =====
both empty                  NaN     NaN    NaN                  NaN
exactly one empty           0.0     0.0    image diagonal (mm)  0.0
==========================  ======  =====  ===================  =====

Both empty means the class is not scored in that case: there was nothing to find, and
counting that as a perfect score would show a class that no label contains as Dice 100.
Every function here returns NaN for it (:func:`dice` and :func:`iou` too), the CSV cell is
empty and the summary JSON holds ``null``; it is kept out of every mean, which are all
means over scored cells only (:func:`nanmean`): a case's ``<metric>_mean`` is over the
classes scored in that case (NaN if none was), a class's mean in :func:`summarize` over the
cases where it was scored, and ``foreground_mean`` over the cases whose mean is not NaN.
This is nnU-Net v2's convention (NaN when TP + FP + FN = 0, averaged with ``nanmean``).
With exactly one side empty there is no surface to measure a distance to; HD95 then takes
the largest distance possible inside the image, the length of its diagonal in mm (BraTS's
rule: 373.13 mm is the diagonal of its 240×240×155 1-mm grid). Dice and IoU of the other
classes are MONAI's ``compute_dice`` / ``compute_iou`` with ``ignore_empty=False`` (which
gives 1.0, not NaN, when both are empty); HD95 and NSD follow MONAI's
``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice`` (surface voxels =
mask minus its erosion, exact Euclidean distances between surface voxel centres); a test
cross-checks all four against MONAI.

Background 0 is never scored. Dice, IoU and NSD are fractions in ``[0, 1]``; the report
turns Dice into percent. Each row also holds the class's voxel counts ``n_ref_<class>`` and
``n_pred_<class>``, so a reader sees why a cell is empty or 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from nnpipe.datasets.layout import prediction_path, read_label_file
from nnpipe.errors import DataError
from nnpipe.geometry import grid_difference, spacing_of
from nnpipe.io import atomic_path, write_json
from nnpipe.labels import ScoredClass

if TYPE_CHECKING:  # pandas and scipy.spatial load where a table or distance is made, so
    # `nnpipe predict` (which imports ScoredClass through this module) starts without them
    import pandas as pd

__all__ = ["ScoredClass"]  # re-exported: the label concept lives in nnpipe.labels

METRICS = ("dice", "iou", "hd95", "nsd")
COUNTS = ("n_ref", "n_pred")  # voxels of the class in the reference and in the prediction
DEFAULT_NSD_TOLERANCE_MM = 1.0


def label_classes(labels: Sequence[int]) -> tuple[ScoredClass, ...]:
    """One scored class per foreground label (``ValueError`` for none or for label 0)."""
    if len(labels) == 0:
        raise ValueError("labels must name at least one foreground label")
    if 0 in labels:
        raise ValueError(f"labels must be foreground labels (> 0), got {list(labels)}")
    return tuple(ScoredClass(str(int(lb)), (int(lb),)) for lb in labels)


# ---------------------------------------------------------------- overlap metrics


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label in ``labels`` between integer label maps ``pred`` and ``ref`` (X, Y, Z).

    See the module docstring for empty classes. Raises ``ValueError`` if the shapes differ,
    ``labels`` is empty or contains the background label 0.
    """
    _same_shape(pred, ref)
    return {int(c.name): dice(c.mask(pred), c.mask(ref)) for c in label_classes(labels)}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice ``2|P∩R| / (|P|+|R|)`` of boolean masks; NaN (not scored) when both are empty."""
    denominator = int(pred.sum()) + int(ref.sum())
    if denominator == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / denominator


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """IoU ``|P∩R| / |P∪R|`` of boolean masks; NaN (not scored) when both are empty."""
    union = int(np.logical_or(pred, ref).sum())
    if union == 0:
        return math.nan
    return int(np.logical_and(pred, ref).sum()) / union


def mean_dice(scores: Mapping[Any, float]) -> float:
    """The case Dice: mean over the scored classes (NaN values left out; NaN if all are)."""
    if not scores:
        raise ValueError("no Dice scores to average")
    return nanmean(scores.values())


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN if there are none (without numpy's warning).

    The one averaging rule of the module docstring: cells that were not scored are left out.
    """
    array = np.asarray(list(values), dtype=np.float64)
    scored = array[~np.isnan(array)]
    return float(scored.mean()) if scored.size else math.nan


# ---------------------------------------------------------------- surface metrics


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the nearest of ``ref``, and back.

    Both masks must be non-empty. The surface of a mask is the mask minus its erosion (face
    connectivity), computed on the union's bounding box plus one voxel, as MONAI does; a
    mask touching the image border has its border voxels on the surface.
    """
    from scipy.spatial import cKDTree

    box = _union_box(pred, ref)
    p, r = pred[box], ref[box]
    edge_p = p ^ ndimage.binary_erosion(p)
    edge_r = r ^ ndimage.binary_erosion(r)
    scale = np.asarray(spacing, dtype=np.float64)
    pts_p = np.argwhere(edge_p) * scale
    pts_r = np.argwhere(edge_r) * scale
    d_pr = cKDTree(pts_r, leafsize=32).query(pts_p, k=1)[0]
    d_rp = cKDTree(pts_p, leafsize=32).query(pts_r, k=1)[0]
    return d_pr, d_rp


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance (mm): the larger of the two directed 95th
    percentiles of surface distances. Empty classes: see the module docstring."""
    empty = _empty_case(pred, ref)
    if empty is not None:
        return math.nan if empty else image_diagonal_mm(pred.shape, spacing)
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float) -> float:
    """Fraction of both surfaces lying within ``tolerance_mm`` of the other surface."""
    if tolerance_mm < 0:
        raise ValueError(f"NSD tolerance must be >= 0 mm, got {tolerance_mm}")
    empty = _empty_case(pred, ref)
    if empty is not None:
        return math.nan if empty else 0.0
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    within = int((d_pr <= tolerance_mm).sum()) + int((d_rp <= tolerance_mm).sum())
    return within / (d_pr.size + d_rp.size)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length (mm) of the image diagonal: the HD95 of a class present on one side only."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def score_masks(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                tolerance_mm: float) -> dict[str, float]:
    """All four metrics of one class's boolean masks ``(X, Y, Z)``: ``{"dice", "iou", "hd95",
    "nsd"}``, every one NaN when both masks are empty (see the module docstring)."""
    _same_shape(pred, ref)
    return {"dice": dice(pred, ref), "iou": iou(pred, ref), "hd95": hd95(pred, ref, spacing),
            "nsd": normalized_surface_dice(pred, ref, spacing, tolerance_mm)}


def _empty_case(pred: np.ndarray, ref: np.ndarray) -> bool | None:
    """True: both empty; False: exactly one empty; None: both hold voxels."""
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if has_p and has_r:
        return None
    return not has_p and not has_r


def _union_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...]:
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    return tuple(box)


def _same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")


# ---------------------------------------------------------------- cases and folders


def score_case(pred: np.ndarray, ref: np.ndarray, classes: Sequence[ScoredClass],
               spacing: Sequence[float], tolerance_mm: float,
               ignore: int | None = None) -> dict[str, float]:
    """One CSV row of label maps ``(X, Y, Z)``, spacing in mm.

    Per class ``<metric>_<class>`` and the voxel counts ``n_ref_<class>``, ``n_pred_<class>``;
    then ``<metric>_mean``, the mean over the classes scored in this case (NaN if none was).
    Sparse annotations (``ignore`` given): where ``ref`` holds the ``ignore`` value the voxel
    is unannotated and both maps count as background there, so only annotated voxels are
    scored; ``annotated_fraction`` is then the share of annotated reference voxels.
    """
    row: dict[str, float] = {}
    annotated = 1.0
    if ignore is not None:
        unannotated = ref == ignore
        if unannotated.any():
            annotated = 1.0 - float(unannotated.mean())
            ref = np.where(unannotated, 0, ref)
            pred = np.where(unannotated, 0, pred)
    for c in classes:
        p, r = c.mask(pred), c.mask(ref)
        for metric, value in score_masks(p, r, spacing, tolerance_mm).items():
            row[f"{metric}_{c.name}"] = value
        row[f"n_ref_{c.name}"], row[f"n_pred_{c.name}"] = int(r.sum()), int(p.sum())
    for metric in METRICS:
        row[f"{metric}_mean"] = nanmean(row[f"{metric}_{c.name}"] for c in classes)
    if ignore is not None:
        row["annotated_fraction"] = annotated
    return row


def evaluate_case(pred_path: Path | str, ref_path: Path | str, labels: Sequence[int] | None = None,
                  case: str | None = None, *, classes: Sequence[ScoredClass] | None = None,
                  tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                  ignore: int | None = None) -> dict[str, float]:
    """Score one predicted label map file against its reference (spacing from its affine);
    ``ignore``: the value of unannotated reference voxels (:func:`score_case`).

    Both are read by the one reader (:func:`nnpipe.datasets.layout.read_label_file`: any
    supported format, canonical voxel order, values rounded within float round-off). Scores
    ``classes`` (default: one per label in ``labels``). Raises ``DataError`` naming the
    prediction file if its grid differs from the reference's (saying which of shape, spacing,
    origin or direction, :func:`nnpipe.geometry.grid_difference`), or if it holds fractional
    labels.
    """
    classes = tuple(classes) if classes is not None else label_classes(labels or [])
    pred, pred_affine = read_label_file(pred_path, case=case)
    ref, ref_affine = read_label_file(ref_path, case=case)
    diff = grid_difference(ref.shape, ref_affine, pred.shape, pred_affine)
    if diff:
        raise DataError(f"prediction grid differs from the reference's ({ref_path}): {diff}",
                        case=case, path=pred_path)
    return score_case(pred, ref, classes, spacing_of(ref_affine), tolerance_mm, ignore)


def columns(classes: Sequence[ScoredClass], sparse: bool = False) -> list[str]:
    """CSV columns: ``case``, then per class its four metrics and two voxel counts, then the
    four means; with ``sparse`` (a label concept with an ignore value) ``annotated_fraction``
    (share of reference voxels not ``ignore``: only those are scored)."""
    cols = ["case"]
    for c in classes:
        cols += [f"{m}_{c.name}" for m in (*METRICS, *COUNTS)]
    return cols + [f"{m}_mean" for m in METRICS] + (["annotated_fraction"] if sparse else [])


def evaluate_folder(pred_dir: Path | str, refs: Path | str | Mapping[str, Path | str],
                    case_ids: Sequence[str], labels: Sequence[int] | None,
                    out_csv: Path | str, *, classes: Sequence[ScoredClass] | None = None,
                    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                    summary_json: Path | str | None = None,
                    ignore: int | None = None) -> pd.DataFrame:
    """Score ``{pred_dir}/{case}<ending>`` for every case; write and return the table.
    ``ignore``: the value of unannotated reference voxels, left out of every score.

    ``refs`` is a folder holding ``{case}<ending>`` (MSD ``labelsTr``) or a mapping from case
    id to reference path. The CSV (written atomically) has one row per case and the columns
    of :func:`columns`. With ``summary_json``, also writes :func:`summarize` of the table.
    A missing prediction raises ``DataError`` naming the case; nothing is written then.
    """
    if len(case_ids) == 0:
        raise ValueError("case_ids is empty: nothing to evaluate")
    classes = tuple(classes) if classes is not None else label_classes(labels or [])
    rows = []
    for case in case_ids:
        pred_path = prediction_path(pred_dir, case)
        rows.append({"case": case, **evaluate_case(pred_path, _ref_path(refs, case),
                                                   case=case, classes=classes,
                                                   tolerance_mm=tolerance_mm,
                                                   ignore=ignore)})
    import pandas as pd

    table = pd.DataFrame(rows, columns=columns(classes, sparse=ignore is not None))
    if summary_json is not None:
        write_json(summary_json, summarize(table, classes, tolerance_mm, ignore))
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


CONVENTION = ("reference and prediction both empty: the class is not scored in that case "
              "(NaN in the CSV, null here) and left out of every mean; exactly one empty: "
              "Dice/IoU/NSD 0, HD95 = image diagonal in mm. Class means are over the cases "
              "where the class was scored, a case mean over the classes scored in it, "
              "foreground_mean over the case means that are not NaN (nnU-Net v2's nanmean)")


def summarize(table: pd.DataFrame, classes: Sequence[ScoredClass],
              tolerance_mm: float, ignore: int | None = None) -> dict[str, Any]:
    """The summary JSON of a table with the :func:`columns` of ``classes``.

    ``per_class``: each metric's mean over the cases where the class was scored, and the
    case counts ``n_cases_in_reference`` (reference holds the class), ``n_cases_scored``
    (not both empty) and ``n_cases``; ``foreground_mean``: mean of the case means; ``cases``:
    every row. NaN (not scored) is written as ``null``, valid JSON. With sparse references
    (``ignore`` set), ``sparse_annotations`` says what was scored.
    """
    extra: dict[str, Any] = {}
    if ignore is not None and "annotated_fraction" in table:
        extra["sparse_annotations"] = {
            "ignore_label": ignore,
            "mean_annotated_fraction": _json_number(float(table["annotated_fraction"].mean())),
            "note": "only annotated reference voxels are scored: where the reference holds "
                    "the ignore value, prediction and reference both count as background. "
                    "Dice and IoU are those of the annotated voxels; HD95 and NSD are "
                    "surface metrics of the annotated part only (for annotated slices, "
                    "in-slice boundaries and the cuts between annotated and unannotated "
                    "voxels), not of the 3D surfaces"}
    return {**extra,
        "nsd_tolerance_mm": tolerance_mm,
        "classes": {c.name: list(c.labels) for c in classes},
        "per_class": {c.name: _class_summary(table, c.name) for c in classes},
        "foreground_mean": {m: _json_number(nanmean(table[f"{m}_mean"])) for m in METRICS},
        "cases": [{k: _json_number(v) for k, v in row.items()}
                  for row in table.to_dict(orient="records")],
        "convention": CONVENTION,
    }


def _class_summary(table: pd.DataFrame, name: str) -> dict[str, Any]:
    means = {m: _json_number(nanmean(table[f"{m}_{name}"])) for m in METRICS}
    return {**means, "n_cases_in_reference": int((table[f"n_ref_{name}"] > 0).sum()),
            "n_cases_scored": int(table[f"dice_{name}"].notna().sum()), "n_cases": len(table)}


def _json_number(value: Any) -> Any:
    """``value`` as plain JSON: NaN (not scored) -> ``None``, numpy scalars -> Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _ref_path(refs: Path | str | Mapping[str, Path | str], case: str) -> Path:
    if isinstance(refs, Mapping):
        if case not in refs:
            raise DataError("no reference label map given for this case", case=case)
        return Path(refs[case])
    return prediction_path(refs, case)
