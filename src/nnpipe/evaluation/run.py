"""Entry points of ``nnpipe evaluate`` and ``nnpipe postprocess``: scoring a fold's
predictions, and deciding largest-component postprocessing from all folds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nnpipe.datasets.layout import load_dataset, prediction_path
from nnpipe.metrics import ScoredClass, evaluate_folder, label_classes
from nnpipe.training.regions import nested_regions
from nnpipe.training.splits import load_fold


def scored_classes(labels: dict[int, str], regions: bool) -> tuple[ScoredClass, ...]:
    """One class per foreground label, or the nested BraTS regions in region mode."""
    if regions:
        return nested_regions(labels)
    return label_classes([v for v in labels if v != 0])


def evaluate_fold(pred_dir: Path | str, raw: Path | str, splits: Path | str, fold: int,
                  out_csv: Path | str, *, summary_json: Path | str | None = None,
                  tolerance_mm: float = 1.0, regions: bool = False) -> pd.DataFrame:
    """Score the fold's validation predictions against the dataset's labels."""
    ds = load_dataset(raw)
    ids = load_fold(splits, fold)["val"]
    refs = {c: ds.label_of(c) for c in ids}
    return evaluate_folder(pred_dir, refs, ids, None, out_csv,
                           classes=scored_classes(ds.labels, regions),
                           tolerance_mm=tolerance_mm, summary_json=summary_json)


def decide_postprocessing(pred_dirs: Sequence[Path | str], folds: Sequence[int],
                          raw: Path | str, splits: Path | str, out: Path | str, *,
                          regions: bool = False) -> dict:
    """Per-class largest-component decision from every fold's validation predictions."""
    from nnpipe.inference.postprocess import decide_to_file

    if len(pred_dirs) != len(folds):
        raise ValueError(f"got {len(pred_dirs)} prediction folders for {len(folds)} folds")
    ds = load_dataset(raw)
    pairs = []
    for pred_dir, fold in zip(pred_dirs, folds, strict=True):
        for case in load_fold(splits, fold)["val"]:
            pairs.append((case, prediction_path(pred_dir, case), ds.label_of(case)))
    return decide_to_file(pairs, scored_classes(ds.labels, regions), out)
