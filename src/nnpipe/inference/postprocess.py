"""Postprocessing: keep only the largest connected component of a class, where it helps.

A network sometimes predicts small islands of a class far from the structure (false
positives). Removing all but the largest connected component (face connectivity, 6 in 3D)
fixes that for single-object classes and hurts multi-object ones, so it is decided per
class from the cross-validation predictions, as nnU-Net does: for each scored class (a
label, or a region in region mode) the mean Dice over every validation case of every fold
is computed with and without the removal, and the removal is applied to that class only if
it raises the mean Dice by more than ``MIN_GAIN``. A case where the class is absent from
both reference and prediction is not scored (NaN, :mod:`nnpipe.metrics`) and
left out of both means; removal never changes that (an empty mask stays empty). A class
scored in no case has no means (``null``) and gets no postprocessing. The decision, with
both means, is recorded in a JSON file that the ensemble rule applies to the test
predictions.
Removed voxels become background (0). Decisions are taken per class independently; since
removing voxels of one label never changes another label's mask, they compose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from nnpipe.datasets.layout import read_label_file
from nnpipe.errors import DataError
from nnpipe.io import read_json, write_json
from nnpipe.metrics import ScoredClass, dice, nanmean
from nnpipe.progress import log

# Smallest mean-Dice gain for which the removal is switched on (ties keep the raw output).
MIN_GAIN = 1e-4


def keep_largest_component(labels: np.ndarray, cls: ScoredClass) -> np.ndarray:
    """``labels`` with every voxel of ``cls`` outside its largest component set to 0.

    Modifies ``labels`` in place and returns it. Nothing changes when the class is absent
    or forms a single component.
    """
    mask = cls.mask(labels)
    components, n = ndimage.label(mask)
    if n <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    labels[mask & (components != int(sizes.argmax()))] = 0
    return labels


def read_scored_pair(case: str, pred_path: Path, ref_path: Path
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A case's predicted and reference label values, each ``(X, Y, Z)`` int64.

    Raises:
        DataError: naming the case and the prediction when the two grids' shapes differ.
    """
    pred, _ = read_label_file(pred_path, case=case)
    ref, _ = read_label_file(ref_path, case=case)
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} differs from reference shape "
                        f"{ref.shape}", case=case, path=pred_path)
    return pred, ref


def decide(pairs: Sequence[tuple[str, Path, Path]], classes: Sequence[ScoredClass],
           ignore: int | None = None) -> dict[str, Any]:
    """Decide per class from ``(case, prediction, reference)`` NIfTI paths; ``ignore``: the
    value of unannotated reference voxels (sparse annotations), scored in neither map.

    Returns the JSON record: per class its labels, ``dice_before``, ``dice_after`` (means
    over the cases where the class is scored; ``None`` if it is in none), ``n_cases_scored``,
    ``apply``; plus the cases and the rule.
    """
    if not pairs:
        raise ValueError("no cross-validation predictions to decide postprocessing from")
    before: dict[str, list[float]] = {c.name: [] for c in classes}
    after: dict[str, list[float]] = {c.name: [] for c in classes}
    for case, pred_path, ref_path in pairs:
        pred, ref = read_scored_pair(case, pred_path, ref_path)
        keep = annotated(ref, ignore)
        for c in classes:
            before[c.name].append(dice(c.mask(pred) & keep, c.mask(ref)))
            cleaned = keep_largest_component(pred.copy(), c)
            after[c.name].append(dice(c.mask(cleaned) & keep, c.mask(ref)))
    record: dict[str, Any] = {"classes": {}, "cases": [p[0] for p in pairs],
                              "rule": f"keep the largest connected component (face "
                                      f"connectivity) of a class if it raises the class's mean "
                                      f"cross-validation Dice by more than {MIN_GAIN}; cases "
                                      f"where the class is absent from both reference and "
                                      f"prediction are left out of the means"}
    for c in classes:
        record["classes"][c.name] = _class_decision(c, before[c.name], after[c.name])
    return record


def _class_decision(cls: ScoredClass, before: Sequence[float], after: Sequence[float]
                    ) -> dict[str, Any]:
    """One class's record from its per-case Dice without and with the removal (NaN: not
    scored). A class scored in no case is left as it is."""
    b, a = nanmean(before), nanmean(after)
    scored = sum(not math.isnan(v) for v in before)
    apply = scored > 0 and a - b > MIN_GAIN
    if scored == 0:
        log(f"postprocess {cls.name}: not scored in any case (absent from every reference "
            "and prediction) -> leave")
    else:
        log(f"postprocess {cls.name}: mean Dice {b:.4f} -> {a:.4f} over {scored} case(s) "
            f"({'apply' if apply else 'leave'})")
    return {"labels": list(cls.labels), "dice_before": None if math.isnan(b) else b,
            "dice_after": None if math.isnan(a) else a, "n_cases_scored": scored,
            "apply": apply}


def annotated(ref: np.ndarray, ignore: int | None) -> np.ndarray | bool:
    """Where ``ref`` is annotated: ``ref != ignore`` (True everywhere for dense labels). A
    prediction masked with it and the reference's class masks (which never hold the ignore
    value) compare annotated voxels only."""
    return True if ignore is None else ref != ignore


def decide_to_file(pairs: Sequence[tuple[str, Path, Path]], classes: Sequence[ScoredClass],
                   out: Path | str, ignore: int | None = None) -> dict[str, Any]:
    record = decide(pairs, classes, ignore)
    write_json(out, record)
    return record


def load_decision(path: Path | str) -> list[ScoredClass]:
    """The classes whose largest component is kept, from a :func:`decide` JSON."""
    return decision_classes(read_json(path), str(path))


def decision_classes(record: Mapping[str, Any], where: str) -> list[ScoredClass]:
    """The classes whose largest component is kept, from a :func:`decide` record (``where``:
    the file or model it came from, for the error)."""
    try:
        return [ScoredClass(name, tuple(int(v) for v in c["labels"]))
                for name, c in record["classes"].items() if c["apply"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"postprocessing file {where!r} is not a decision record "
                         f"({type(exc).__name__}: {exc})") from None
