"""Shared fixtures: a tiny real study (embedded data, planned, preprocessed, split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from nnpipe.datasets.embedded import generate_embedded
from nnpipe.datasets.layout import load_dataset
from nnpipe.planning.fingerprint import compute_fingerprint
from nnpipe.planning.plan import Plan
from nnpipe.planning.planner import PlannerSettings, make_plan
from nnpipe.preprocessing.pipeline import preprocess_dataset
from nnpipe.training.splits import make_splits, save_splits


@dataclass(frozen=True)
class TinyStudy:
    raw: Path
    plans: dict[int, Plan]
    preprocessed: dict[int, Path]
    splits: Path


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> TinyStudy:
    root = tmp_path_factory.mktemp("tiny")
    raw = generate_embedded(root / "raw", n_train=5, n_test=1, seed=2, resolution_mm=8.0,
                            progress=False)
    ds = load_dataset(raw)
    fp = compute_fingerprint(ds, progress=False)
    settings = PlannerSettings(max_patch_voxels_3d=16**3, max_patch_voxels_2d=16 * 16,
                               base_filters=4, max_batch_size=2, batch_voxels_3d=2 * 16**3,
                               batch_voxels_2d=2 * 16 * 16)
    plans, pre = {}, {}
    for dim in (2, 3):
        plans[dim] = make_plan(fp, dim, settings, "tiny")
        pre[dim] = root / f"pre{dim}d"
        preprocess_dataset(ds, plans[dim], pre[dim], progress=False)
    splits = root / "splits.json"
    save_splits(splits, make_splits([c.case_id for c in ds.training]))
    return TinyStudy(raw, plans, pre, splits)
