"""nnpipe.evaluation.run: the fold's references come from the dataset's training cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.errors import DataError
from nnpipe.evaluation.run import decide_postprocessing, evaluate_fold


def _dataset(root: Path) -> Path:
    """An MSD dataset with one training case ``c1`` and one test case ``t1`` (no label)."""
    label = np.zeros((6, 5, 4), np.uint8)
    label[2:4, 2:4, 1:3] = 1
    for rel, arr in [("imagesTr/c1.nii.gz", label.astype(np.float32)),
                     ("labelsTr/c1.nii.gz", label),
                     ("imagesTs/t1.nii.gz", label.astype(np.float32)),
                     ("pred/c1.nii.gz", label), ("pred/t1.nii.gz", label)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), root / rel)
    meta = {"name": "T", "modality": {"0": "M0"}, "labels": {"0": "background", "1": "tumour"},
            "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}],
            "test": ["./imagesTs/t1.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _splits(root: Path, val: list[str]) -> Path:
    path = root / "splits.json"
    path.write_text(json.dumps([{"train": ["c1"], "val": val}]))
    return path


def test_evaluate_fold_scores_a_training_case(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    table = evaluate_fold(root / "pred", root, _splits(root, ["c1"]), 0, tmp_path / "m.csv")
    assert table["case"].tolist() == ["c1"]
    assert table["dice_1"].tolist() == [1.0]


@pytest.mark.parametrize("entry", ["evaluate", "postprocess"])
def test_a_split_listing_a_test_case_names_it(tmp_path: Path, entry: str) -> None:
    # found by mypy: the label of a case without one (None) went on to Path(None), a
    # TypeError, in evaluate_fold, and to a bare assert in decide_postprocessing
    root = _dataset(tmp_path)
    splits = _splits(root, ["t1"])
    with pytest.raises(DataError, match="t1.*no label file"):
        if entry == "evaluate":
            evaluate_fold(root / "pred", root, splits, 0, tmp_path / "m.csv")
        else:
            decide_postprocessing([root / "pred"], [0], root, splits, tmp_path / "pp.json")
