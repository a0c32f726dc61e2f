"""The RAM budget: estimates bound measured peaks, and the scheduler honours the budget."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.datasets.layout import load_dataset
from nnpipe.preprocessing.parallel import estimate_case_bytes, imap_bounded
from nnpipe.preprocessing.pipeline import _preprocess_one, case_target_spacing, preprocess_dataset

_RUNNING = multiprocessing.Value("i", 0)
_PEAK = multiprocessing.Value("i", 0)


def _track(x: int) -> int:
    with _RUNNING.get_lock():
        _RUNNING.value += 1
        _PEAK.value = max(_PEAK.value, _RUNNING.value)
    time.sleep(0.05)
    with _RUNNING.get_lock():
        _RUNNING.value -= 1
    return x * 10


def _fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("case 2 is broken")
    return x


@pytest.mark.parametrize(("costs", "budget", "peak"),
                         [([6, 6, 6, 6], 10, 1), ([6, 6, 6, 6], 12, 2), ([6, 6, 6, 6], 0, 3),
                          ([50, 1, 1, 1], 10, 3)])
def test_budget_limits_cases_in_flight(costs, budget, peak):
    _PEAK.value = 0
    out = sorted(imap_bounded(_track, list(range(4)), costs, workers=3, budget_bytes=budget))
    assert out == [0, 10, 20, 30]
    # never more in flight than the budget allows; fewer is possible on a loaded machine
    # (a worker may finish its 50 ms before the next one starts), so this is an upper bound
    assert 1 <= _PEAK.value <= peak


def test_worker_error_is_raised():
    with pytest.raises(ValueError, match="case 2 is broken"):
        list(imap_bounded(_fail_on_two, [0, 1, 2, 3], [1] * 4, workers=2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        list(imap_bounded(_track, [1], [1], workers=0))
    with pytest.raises(ValueError, match="costs"):
        list(imap_bounded(_track, [1, 2], [1], workers=2))


def _case(root: Path, shape=(96, 80, 24), spacing=(0.8, 0.8, 4.0), channels=2) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    image = np.zeros((*shape, channels), np.float32)
    image[8:-8, 8:-8, 2:-2] = rng.normal(100, 20, (shape[0] - 16, shape[1] - 16, shape[2] - 4,
                                                    channels))
    label = np.zeros(shape, np.uint8)
    label[30:60, 30:50, 8:16] = 1
    label[40:50, 35:45, 10:14] = 2
    for folder, arr in (("imagesTr", image), ("labelsTr", label)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, affine), root / folder / "a.nii.gz")
    (root / "dataset.json").write_text(json.dumps(
        {"name": "p", "modality": {str(c): f"MR{c}" for c in range(channels)},
         "labels": {"0": "background", "1": "x", "2": "y"},
         "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
         "test": []}))
    return root


@pytest.mark.parametrize("full_spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 4.0), (2.0, 2.0, 2.0)])
def test_estimate_bounds_the_measured_peak(tmp_path, tiny_study, full_spacing):
    from dataclasses import replace

    ds = load_dataset(_case(tmp_path / "raw"))
    from nnpipe.labels import LabelScheme

    plan = replace(tiny_study.plans[3], full_spacing=full_spacing, num_channels=2,
                   channel_norms=tiny_study.plans[3].channel_norms[:1] * 2,
                   ).with_scheme(LabelScheme.from_values({0: "background", 1: "x", 2: "y"}))
    estimate = estimate_case_bytes(ds.training[0], lambda sp: case_target_spacing(plan, sp))
    out = tmp_path / "pre"
    out.mkdir()
    tracemalloc.start()
    try:
        _preprocess_one((ds, ds.training[0], plan, out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate
    assert estimate <= 3 * peak  # and not wildly pessimistic


def test_dataset_with_budget_equals_without(tmp_path, tiny_study):
    ds = load_dataset(tiny_study.raw)
    plan = tiny_study.plans[3]
    a = preprocess_dataset(ds, plan, tmp_path / "a", workers=2, progress=False, memory_gb=1e-4)
    b = preprocess_dataset(ds, plan, tmp_path / "b", workers=1, progress=False)
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    assert list(ma["cases"]) == [c.case_id for c in ds.training] == list(mb["cases"])
    assert ma == mb
    for case in ds.training:
        np.testing.assert_array_equal(np.load(tmp_path / "a" / f"{case.case_id}.npy"),
                                      np.load(tmp_path / "b" / f"{case.case_id}.npy"))
    assert os.listdir(tmp_path / "a") and sorted(os.listdir(tmp_path / "a")) == sorted(
        os.listdir(tmp_path / "b"))
