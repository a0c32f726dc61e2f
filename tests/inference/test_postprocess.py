from __future__ import annotations

import json

import numpy as np
import pytest

from nnpipe.inference.postprocess import decide_to_file, keep_largest_component, load_decision
from nnpipe.io import save_nifti
from nnpipe.metrics import ScoredClass

ONE = ScoredClass("1", (1,))
TWO = ScoredClass("2", (2,))


def test_keep_largest_component_removes_only_smaller_islands_of_the_class() -> None:
    labels = np.zeros((10, 10, 3), np.uint8)
    labels[0:4, 0:4, :] = 1  # 48 voxels
    labels[8:10, 8:10, 0] = 1  # 4-voxel island
    labels[6, 0, 0] = 2  # another class, untouched
    labels[5, 5, 1] = 1  # single voxel island, diagonal neighbours are not connected
    out = keep_largest_component(labels.copy(), ONE)
    assert int((out == 1).sum()) == 48
    assert out[6, 0, 0] == 2 and out[8, 8, 0] == 0 and out[5, 5, 1] == 0
    region = ScoredClass("WT", (1, 2))  # a region treats its labels as one mask
    assert int((keep_largest_component(labels.copy(), region) > 0).sum()) == 48


def test_decision_applies_removal_only_where_cross_validation_gains(tmp_path) -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    pairs = []
    for i in range(3):
        ref = np.zeros((12, 12, 4), np.uint8)
        ref[1:5, 1:5, :] = 1  # class 1: one object
        ref[8:10, 1:3, :] = 2  # class 2: two objects, both real
        ref[8:10, 8:10, :] = 2
        pred = ref.copy()
        pred[10 - i, 10, 0] = 1  # class 1: a spurious island the removal fixes
        pred[8:10, 8:10, :] = np.where(i == 0, 0, 2)  # class 2 needs both components
        save_nifti(tmp_path / f"p{i}.nii.gz", pred, affine)
        save_nifti(tmp_path / f"r{i}.nii.gz", ref, affine)
        pairs.append((f"c{i}", tmp_path / f"p{i}.nii.gz", tmp_path / f"r{i}.nii.gz"))
    out = tmp_path / "postprocess.json"
    record = decide_to_file(pairs, [ONE, TWO], out)
    assert record["classes"]["1"]["apply"] is True
    assert record["classes"]["1"]["dice_after"] == 1.0
    assert record["classes"]["1"]["dice_before"] == pytest.approx(2 * 64 / 129)
    assert record["classes"]["2"]["apply"] is False
    assert record["classes"]["2"]["dice_after"] < record["classes"]["2"]["dice_before"]
    assert json.loads(out.read_text())["cases"] == ["c0", "c1", "c2"]
    assert load_decision(out) == [ONE]


def test_decision_leaves_out_cases_where_a_class_is_absent_from_both(tmp_path) -> None:
    affine = np.eye(4)
    ref0 = np.zeros((12, 12, 4), np.uint8)
    ref0[1:5, 1:5, :] = 1  # c0: class 1 (64 voxels), no class 2
    pred0 = ref0.copy()
    pred0[10, 10, 0] = 1  # plus a 1-voxel island
    ref1 = np.zeros((12, 12, 4), np.uint8)
    ref1[8:10, 1:3, :] = 2  # c1: class 2 predicted exactly, class 1 absent from both
    pairs = []
    for i, (pred, ref) in enumerate([(pred0, ref0), (ref1.copy(), ref1)]):
        save_nifti(tmp_path / f"p{i}.nii.gz", pred, affine)
        save_nifti(tmp_path / f"r{i}.nii.gz", ref, affine)
        pairs.append((f"c{i}", tmp_path / f"p{i}.nii.gz", tmp_path / f"r{i}.nii.gz"))
    three = ScoredClass("3", (3,))  # in no reference and no prediction: never scored
    out = tmp_path / "postprocess.json"
    decide_to_file(pairs, [ONE, TWO, three], out)

    def reject(token: str) -> None:
        raise AssertionError(f"{token} in the decision JSON")

    record = json.loads(out.read_text(), parse_constant=reject)["classes"]
    # class 1: c0 only, 2*64/129 (counting c1 as 1.0 would give (128/129 + 1) / 2)
    assert record["1"] == {"labels": [1], "dice_before": pytest.approx(128 / 129),
                           "dice_after": 1.0, "n_cases_scored": 1, "apply": True}
    assert record["2"] == {"labels": [2], "dice_before": 1.0, "dice_after": 1.0,
                           "n_cases_scored": 1, "apply": False}
    assert record["3"] == {"labels": [3], "dice_before": None, "dice_after": None,
                           "n_cases_scored": 0, "apply": False}
    assert load_decision(out) == [ONE]


def test_bad_decision_file_is_named(tmp_path) -> None:
    bad = tmp_path / "pp.json"
    bad.write_text('{"classes": {"1": {"apply": true}}}')
    with pytest.raises(ValueError, match=r"pp\.json.*not a decision record"):
        load_decision(bad)
