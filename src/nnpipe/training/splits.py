"""The 5-fold cross-validation split, made once per dataset and saved as ``splits.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnpipe.io import read_json, write_json

NUM_FOLDS = 5


def make_splits(case_ids: Sequence[str], *, num_folds: int = NUM_FOLDS,
                seed: int = 12345) -> list[dict[str, list[str]]]:
    """Shuffle the sorted case ids with ``seed`` and deal them into ``num_folds`` folds.

    Returns one ``{"train": [...], "val": [...]}`` per fold; every case is in exactly one
    validation set. Sorting first makes the split independent of directory order.
    """
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise ValueError(f"{len(ids)} training cases cannot make {num_folds} folds; "
                         f"need at least {num_folds}")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in order[f::num_folds]) for f in range(num_folds)]
    return [
        {"train": sorted(c for g, other in enumerate(folds) if g != f for c in other),
         "val": folds[f]}
        for f in range(num_folds)
    ]


def save_splits(path: Path | str, splits: list[dict[str, list[str]]]) -> None:
    write_json(path, splits)


def load_fold(path: Path | str, fold: int) -> dict[str, list[str]]:
    splits = read_json(path)
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold} is not in {path} (it has {len(splits)} folds)")
    return splits[fold]
