"""Entry points of ``nnpipe evaluate`` and ``nnpipe postprocess``: scoring a fold's
predictions, and deciding largest-component postprocessing from all folds.

What is scored comes from the run's label concept (:class:`nnpipe.labels.LabelScheme`):
its plan's regions (or each foreground label) and its ignore value, so a sparse reference is
scored on its annotated voxels only. Without a plan (or with a plan older than the recorded
concept) it is dataset.json's concept, in region mode when the config says so (the old way).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nnpipe.datasets.layout import Dataset, load_dataset, prediction_path
from nnpipe.labels import LabelScheme
from nnpipe.metrics import ScoredClass, evaluate_folder
from nnpipe.training.splits import load_fold


def scored_classes(labels: dict[int, str], regions: bool) -> tuple[ScoredClass, ...]:
    """One class per foreground label, or the nested BraTS regions in region mode."""
    return LabelScheme.from_values(labels, regions=regions).scored_classes


def run_scheme(ds: Dataset, plan: Path | str | None, legacy_regions: bool = False
               ) -> LabelScheme:
    """The label concept to score with: the plan's, else dataset.json's (nested regions when
    ``legacy_regions``, config ``training.regions``)."""
    if plan is not None:
        from nnpipe.planning.plan import Plan

        return Plan.load(plan).scheme(legacy_regions=legacy_regions)
    return ds.scheme.with_nested_regions() if legacy_regions else ds.scheme


def evaluate_fold(pred_dir: Path | str, raw: Path | str, splits: Path | str, fold: int,
                  out_csv: Path | str, *, summary_json: Path | str | None = None,
                  tolerance_mm: float = 1.0, regions: bool = False,
                  plan: Path | str | None = None, refs_dir: Path | str | None = None
                  ) -> pd.DataFrame:
    """Score the fold's validation predictions against the dataset's labels (or the files
    ``<case><ending>`` of ``refs_dir``, e.g. the dense references of a sparsely annotated
    dataset), with the label concept of ``plan`` (:func:`run_scheme`)."""
    ds = load_dataset(raw)
    scheme = run_scheme(ds, plan, regions)
    ids = load_fold(splits, fold)["val"]
    refs: dict[str, Path] = {c: ds.label_of(c) if refs_dir is None
                             else prediction_path(refs_dir, c) for c in ids}
    return evaluate_folder(pred_dir, refs, ids, None, out_csv,
                           classes=scheme.scored_classes, tolerance_mm=tolerance_mm,
                           summary_json=summary_json, ignore=scheme.ignore)


def decide_postprocessing(pred_dirs: Sequence[Path | str], folds: Sequence[int],
                          raw: Path | str, splits: Path | str, out: Path | str, *,
                          regions: bool = False, plan: Path | str | None = None) -> dict:
    """Per-class largest-component decision from every fold's validation predictions."""
    from nnpipe.inference.postprocess import decide_to_file

    if len(pred_dirs) != len(folds):
        raise ValueError(f"got {len(pred_dirs)} prediction folders for {len(folds)} folds")
    ds = load_dataset(raw)
    scheme = run_scheme(ds, plan, regions)
    pairs = []
    for pred_dir, fold in zip(pred_dirs, folds, strict=True):
        for case in load_fold(splits, fold)["val"]:
            pairs.append((case, prediction_path(pred_dir, case), ds.label_of(case)))
    return decide_to_file(pairs, scheme.scored_classes, out, scheme.ignore)
