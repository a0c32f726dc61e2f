from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_dice

from nnpipe.errors import DataError
from nnpipe.evaluation.metrics import dice_per_class, evaluate_case, evaluate_folder, mean_dice
from nnpipe.io import save_nifti


def label_map(voxels: dict[int, list[int]], shape: tuple[int, int, int] = (4, 3, 2)) -> np.ndarray:
    """A (X, Y, Z) uint8 map with label ``l`` at the flat indices ``voxels[l]``."""
    out = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    for label, idx in voxels.items():
        out[idx] = label
    return out.reshape(shape)


# ---------------------------------------------------------------- golden values and convention


def test_dice_golden_overlaps() -> None:
    # label 1: prediction 4 voxels, reference 5 voxels, 3 shared -> 2*3 / (4+5) = 2/3.
    # label 2: prediction 2, reference 2, 1 shared -> 2*1 / 4 = 0.5.
    pred = label_map({1: [0, 1, 2, 3], 2: [10, 11]})
    ref = label_map({1: [1, 2, 3, 4, 5], 2: [11, 12]})
    scores = dice_per_class(pred, ref, [1, 2])
    assert scores == pytest.approx({1: 2 / 3, 2: 0.5})
    assert mean_dice(scores) == pytest.approx((2 / 3 + 0.5) / 2)


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ({}, {}, 1.0),  # both empty: the prediction is right that there is nothing
        ({1: [0, 1]}, {}, 0.0),  # reference empty, prediction not
        ({}, {1: [0, 1]}, 0.0),  # reference not empty, prediction empty
        ({1: [0, 1]}, {1: [0, 1]}, 1.0),  # identical
        ({1: [0, 1]}, {1: [2, 3]}, 0.0),  # disjoint
    ],
)
def test_dice_empty_class_convention(pred: dict, ref: dict, expected: float) -> None:
    assert dice_per_class(label_map(pred), label_map(ref), [1]) == {1: expected}


def test_case_mean_is_over_foreground_labels_including_empty_ones() -> None:
    pred = label_map({1: [0, 1]})
    ref = label_map({1: [0, 1]})
    scores = dice_per_class(pred, ref, [1, 2, 3])  # labels 2 and 3 absent from both -> 1.0
    assert scores == {1: 1.0, 2: 1.0, 3: 1.0}
    assert mean_dice(dice_per_class(label_map({}), ref, [1, 2])) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dice_matches_monai_compute_dice(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (6, 5, 4)
    # sparse labels so that some classes are empty in one or both maps
    pred = rng.choice(4, size=shape, p=[0.85, 0.1, 0.05, 0.0]).astype(np.uint8)
    ref = rng.choice(4, size=shape, p=[0.8, 0.1, 0.0, 0.1]).astype(np.uint8)
    ours = dice_per_class(pred, ref, [1, 2, 3])

    def one_hot(a: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), 4).permute(3, 0, 1, 2)[None]

    monai = compute_dice(one_hot(pred).float(), one_hot(ref).float(), include_background=False,
                         ignore_empty=False)[0]
    assert [ours[k] for k in (1, 2, 3)] == pytest.approx(monai.tolist(), abs=1e-6)


def test_dice_rejects_bad_arguments() -> None:
    a = label_map({1: [0]})
    with pytest.raises(ValueError, match="differs from reference shape"):
        dice_per_class(a, a[:2], [1])
    with pytest.raises(ValueError, match="foreground"):
        dice_per_class(a, a, [0, 1])
    with pytest.raises(ValueError, match="at least one"):
        dice_per_class(a, a, [])


# ---------------------------------------------------------------- files


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    save_nifti(ref_dir / "c1.nii.gz", label_map({1: [1, 2, 3, 4, 5], 2: [11, 12]}), affine)
    save_nifti(pred_dir / "c1.nii.gz", label_map({1: [0, 1, 2, 3], 2: [10, 11]}), affine)
    save_nifti(ref_dir / "c2.nii.gz", label_map({1: [0, 1]}), affine)
    save_nifti(pred_dir / "c2.nii.gz", label_map({1: [0, 1], 2: [5]}), affine)
    return pred_dir, ref_dir


def test_evaluate_case_reads_nifti(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    row = evaluate_case(pred_dir / "c1.nii.gz", ref_dir / "c1.nii.gz", [1, 2])
    assert row == pytest.approx({"dice_1": 2 / 3, "dice_2": 0.5, "dice_mean": 7 / 12})


def test_evaluate_case_rejects_other_geometry(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    _, ref_dir = folders
    shifted = np.diag([1.5, 1.5, 2.0, 1.0])
    shifted[0, 3] = 0.01
    save_nifti(tmp_path / "moved.nii.gz", label_map({1: [0]}), shifted)
    with pytest.raises(DataError, match=r"moved\.nii\.gz.*affine differs.*0\.01"):
        evaluate_case(tmp_path / "moved.nii.gz", ref_dir / "c1.nii.gz", [1], case="c1")
    save_nifti(tmp_path / "small.nii.gz", np.zeros((4, 3, 1), np.uint8), np.diag([1.5, 1.5, 2, 1]))
    with pytest.raises(DataError, match=r"small\.nii\.gz.*shape \(4, 3, 1\) differs"):
        evaluate_case(tmp_path / "small.nii.gz", ref_dir / "c1.nii.gz", [1], case="c1")


def test_evaluate_folder_writes_csv(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    out = tmp_path / "eval" / "fold0.csv"
    evaluate_folder(pred_dir, ref_dir, ["c1", "c2"], [1, 2], out)
    table = pd.read_csv(out)
    assert list(table.columns) == ["case", "dice_1", "dice_2", "dice_mean"]
    assert table["case"].tolist() == ["c1", "c2"]
    # c2: label 1 identical (1.0); label 2 predicted but absent from the reference (0.0)
    assert table["dice_1"].tolist() == pytest.approx([2 / 3, 1.0])
    assert table["dice_2"].tolist() == pytest.approx([0.5, 0.0])
    assert table["dice_mean"].tolist() == pytest.approx([7 / 12, 0.5])
    assert sorted(p.name for p in out.parent.iterdir()) == ["fold0.csv"]  # no temporary left


def test_evaluate_folder_with_mapping_and_missing_prediction(tmp_path: Path,
                                                             folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    refs = {"c2": ref_dir / "c2.nii.gz"}
    table = evaluate_folder(pred_dir, refs, ["c2"], [1], tmp_path / "m.csv")
    assert table["dice_mean"].tolist() == [1.0]
    with pytest.raises(DataError, match=r"case 'c3'.*prediction is missing"):
        evaluate_folder(pred_dir, ref_dir, ["c1", "c3"], [1], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(DataError, match=r"case 'c1'.*no reference"):
        evaluate_folder(pred_dir, refs, ["c1"], [1], tmp_path / "y.csv")
