"""Sparse annotations through fingerprint, plan, preprocessing and the patch sampler: the
ignore value is recorded in the plan, stored as the class index one past the last class, and
never a foreground location that oversampling could centre a patch on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.datasets.embedded import IGNORE_VALUE, generate_embedded
from nnpipe.datasets.layout import load_dataset
from nnpipe.io import read_json
from nnpipe.planning.fingerprint import compute_fingerprint
from nnpipe.planning.planner import PlannerSettings, make_plan
from nnpipe.preprocessing.pipeline import preprocess_dataset


@pytest.fixture(scope="module")
def sparse_preprocessed(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("sparse")
    raw = generate_embedded(root / "raw", n_train=5, n_test=0, seed=2, resolution_mm=8.0,
                            progress=False, annotate_every=2)
    ds = load_dataset(raw)
    fp = compute_fingerprint(ds, progress=False)
    settings = PlannerSettings(max_patch_voxels_3d=16**3, max_patch_voxels_2d=16 * 16,
                               base_filters=4, max_batch_size=2, batch_voxels_3d=2 * 16**3,
                               batch_voxels_2d=2 * 16 * 16)
    plan = make_plan(fp, 3, settings, "sparse")
    preprocess_dataset(ds, plan, root / "pre", progress=False)
    return root / "pre", plan


def test_plan_records_the_ignore_value_and_no_class_for_it(sparse_preprocessed):
    _, plan = sparse_preprocessed
    assert plan.label_scheme.ignore == IGNORE_VALUE == 4
    assert plan.num_classes == 4 and plan.labels == {0: "background", 1: "edema",
                                                     2: "non-enhancing tumor",
                                                     3: "enhancing tumour"}
    assert plan.label_scheme.output_channels == 4  # no output channel for "ignore"


def test_ignore_voxels_are_never_foreground_locations(sparse_preprocessed):
    folder, _ = sparse_preprocessed
    manifest = read_json(folder / "manifest.json")
    seen_ignore = False
    for case_id, case in manifest["cases"].items():
        seg = np.load(folder / f"{case_id}_seg.npy")
        seen_ignore |= bool((seg == 4).any())  # the ignore index: one past class 3
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3, 4}
        locations = case.get("class_locations") or {}
        assert set(locations) <= {"1", "2", "3"}
        for label, voxels in locations.items():
            if not voxels:  # the class is absent from this case
                continue
            values = seg[tuple(np.asarray(voxels).T)]
            assert (values == int(label)).all()
    assert seen_ignore


def test_oversampled_patches_hold_annotated_foreground(sparse_preprocessed):
    folder, plan = sparse_preprocessed
    ids = sorted(read_json(folder / "manifest.json")["cases"])
    sampler = PatchSampler(folder, ids, SamplerSettings.from_plan(plan, foreground_prob=1.0))
    _, seg = sampler.sample(np.random.default_rng(0), 16)
    centre = seg[(slice(None), 0, *(s // 2 for s in seg.shape[2:]))]
    assert set(np.unique(centre).tolist()) <= {1, 2, 3}


def test_augmented_batches_keep_the_ignore_index(sparse_preprocessed):
    """The torch loader's spatial augmentation moves labels nearest-neighbour: the ignore
    index survives as itself and nothing else appears (DALI: tests/data/test_dali.py)."""
    from nnpipe.data.augment import AugmentSettings
    from nnpipe.data.loader import BatchLoader

    folder, plan = sparse_preprocessed
    ids = sorted(read_json(folder / "manifest.json")["cases"])
    settings = AugmentSettings(zoom_prob=1.0, rotation_prob=1.0, scaling_prob=1.0,
                               flip_prob=0.5)
    with BatchLoader(folder, ids, SamplerSettings.from_plan(plan), settings, 4, 0, "cpu",
                     workers=1) as loader:
        _, seg = next(loader)
    assert set(seg.unique().tolist()) <= {0, 1, 2, 3, 4} and (seg == 4).any()
