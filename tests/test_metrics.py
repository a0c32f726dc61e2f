from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import (
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

from nnpipe.errors import DataError
from nnpipe.io import save_nifti
from nnpipe.metrics import (
    ScoredClass,
    dice_per_class,
    evaluate_case,
    evaluate_folder,
    hd95,
    image_diagonal_mm,
    iou,
    mean_dice,
    nanmean,
    normalized_surface_dice,
    score_case,
    score_masks,
    summarize,
)


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
        ({}, {}, math.nan),  # both empty: not scored
        ({1: [0, 1]}, {}, 0.0),  # reference empty, prediction not
        ({}, {1: [0, 1]}, 0.0),  # reference not empty, prediction empty
        ({1: [0, 1]}, {1: [0, 1]}, 1.0),  # identical
        ({1: [0, 1]}, {1: [2, 3]}, 0.0),  # disjoint
    ],
)
def test_dice_empty_class_convention(pred: dict, ref: dict, expected: float) -> None:
    assert dice_per_class(label_map(pred), label_map(ref), [1]) == pytest.approx(
        {1: expected}, nan_ok=True)


def test_case_mean_leaves_out_classes_absent_from_both() -> None:
    # label 1: prediction 2 voxels inside a 4-voxel reference -> Dice 2*2/6 = 2/3, IoU 2/4;
    # label 2: predicted, absent from the reference -> 0; label 3: absent from both -> NaN.
    # Case mean: (2/3 + 0) / 2 = 1/3 (counting label 3 as 1.0 would give 5/9).
    pred = label_map({1: [0, 1], 2: [5]})
    ref = label_map({1: [0, 1, 2, 3]})
    classes = [ScoredClass(str(v), (v,)) for v in (1, 2, 3)]
    row = score_case(pred, ref, classes, (1.0, 1.0, 1.0), 1.0)
    for metric in ("dice", "iou", "hd95", "nsd"):
        assert math.isnan(row[f"{metric}_3"]), metric
    assert row["dice_mean"] == pytest.approx(1 / 3)
    assert row["iou_mean"] == pytest.approx((0.5 + 0.0) / 2)
    assert row["hd95_mean"] == pytest.approx((row["hd95_1"] + image_diagonal_mm((4, 3, 2),
                                                                                (1, 1, 1))) / 2)
    assert (row["n_ref_3"], row["n_pred_3"], row["n_ref_2"], row["n_pred_2"]) == (0, 0, 0, 1)
    assert mean_dice(dice_per_class(pred, ref, [1, 2, 3])) == pytest.approx(1 / 3)


def test_case_with_no_class_scored_has_nan_means() -> None:
    empty = label_map({})
    row = score_case(empty, empty, [ScoredClass("1", (1,))], (1.0, 1.0, 1.0), 1.0)
    assert all(math.isnan(row[f"{m}_mean"]) for m in ("dice", "iou", "hd95", "nsd"))


def test_nanmean_leaves_out_nan_and_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nanmean([0.5, math.nan, 1.0]) == 0.75
        assert math.isnan(nanmean([math.nan, math.nan]))
        assert math.isnan(nanmean([]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dice_matches_monai_compute_dice(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (6, 5, 4)
    # sparse labels so that classes are empty in one map (2, 3) or in both (4)
    pred = rng.choice(5, size=shape, p=[0.85, 0.1, 0.05, 0.0, 0.0]).astype(np.uint8)
    ref = rng.choice(5, size=shape, p=[0.8, 0.1, 0.0, 0.1, 0.0]).astype(np.uint8)
    ours = dice_per_class(pred, ref, [1, 2, 3, 4])

    def one_hot(a: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), 5).permute(3, 0, 1, 2)[None]

    monai = compute_dice(one_hot(pred).float(), one_hot(ref).float(), include_background=False,
                         ignore_empty=False)[0].tolist()
    assert [ours[k] for k in (1, 2, 3)] == pytest.approx(monai[:3], abs=1e-6)
    # the one deliberate difference: MONAI scores a class absent from both as 1.0
    assert math.isnan(ours[4]) and monai[3] == 1.0


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
    # c3: label 2 absent from both -> not scored
    save_nifti(ref_dir / "c3.nii.gz", label_map({1: [0, 1, 2]}), affine)
    save_nifti(pred_dir / "c3.nii.gz", label_map({1: [1, 2]}), affine)
    return pred_dir, ref_dir


def test_evaluate_case_reads_nifti(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    row = evaluate_case(pred_dir / "c1.nii.gz", ref_dir / "c1.nii.gz", [1, 2])
    assert {k: row[k] for k in ("dice_1", "dice_2", "dice_mean")} == pytest.approx(
        {"dice_1": 2 / 3, "dice_2": 0.5, "dice_mean": 7 / 12})
    # label 1: |P∩R| = 3, |P∪R| = 6; label 2: 1 of 3
    assert (row["iou_1"], row["iou_2"]) == pytest.approx((0.5, 1 / 3))
    assert row["iou_mean"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert (row["n_ref_1"], row["n_pred_1"], row["n_ref_2"], row["n_pred_2"]) == (5, 4, 2, 2)
    assert set(row) == {f"{m}_{c}" for m in ("dice", "iou", "hd95", "nsd")
                        for c in ("1", "2", "mean")} | {f"n_{s}_{c}" for s in ("ref", "pred")
                                                        for c in ("1", "2")}


def test_evaluate_case_rejects_other_geometry(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    _, ref_dir = folders
    shifted = np.diag([1.5, 1.5, 2.0, 1.0])
    shifted[0, 3] = 0.05  # 3 % of the 1.5 mm voxel: beyond the 1 % tolerance
    save_nifti(tmp_path / "moved.nii.gz", label_map({1: [0]}), shifted)
    with pytest.raises(DataError, match=r"moved\.nii\.gz.*grid differs.*origin .*\(0\.05 mm "
                                        r"apart\)"):
        evaluate_case(tmp_path / "moved.nii.gz", ref_dir / "c1.nii.gz", [1], case="c1")
    shifted[0, 3] = 0.01  # float32 header round-off is well inside the tolerance: accepted
    save_nifti(tmp_path / "rounded.nii.gz", label_map({1: [0]}), shifted)
    evaluate_case(tmp_path / "rounded.nii.gz", ref_dir / "c1.nii.gz", [1], case="c1")
    save_nifti(tmp_path / "small.nii.gz", np.zeros((4, 3, 1), np.uint8), np.diag([1.5, 1.5, 2, 1]))
    with pytest.raises(DataError, match=r"small\.nii\.gz.*grid differs.*shape \(4, 3, 1\) vs"):
        evaluate_case(tmp_path / "small.nii.gz", ref_dir / "c1.nii.gz", [1], case="c1")


def test_evaluate_folder_writes_csv(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    out = tmp_path / "eval" / "fold0.csv"
    evaluate_folder(pred_dir, ref_dir, ["c1", "c2", "c3"], [1, 2], out)
    table = pd.read_csv(out)
    assert list(table.columns) == ["case", "dice_1", "iou_1", "hd95_1", "nsd_1", "n_ref_1",
                                   "n_pred_1", "dice_2", "iou_2", "hd95_2", "nsd_2", "n_ref_2",
                                   "n_pred_2", "dice_mean", "iou_mean", "hd95_mean", "nsd_mean"]
    assert table["case"].tolist() == ["c1", "c2", "c3"]
    # c2: label 1 identical (1.0); label 2 predicted but absent from the reference (0.0)
    # c3: label 1 2*2/(2+3) = 0.8; label 2 absent from both: empty cells, out of the mean
    assert table["dice_1"].tolist() == pytest.approx([2 / 3, 1.0, 0.8])
    assert table["dice_2"].tolist() == pytest.approx([0.5, 0.0, math.nan], nan_ok=True)
    assert table["dice_mean"].tolist() == pytest.approx([7 / 12, 0.5, 0.8])
    c3 = out.read_text().splitlines()[3].split(",")
    assert c3[0] == "c3" and c3[7:11] == ["", "", "", ""] and c3[11:13] == ["0", "0"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["fold0.csv"]  # no temporary left


def test_evaluate_folder_with_mapping_and_missing_prediction(tmp_path: Path,
                                                             folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    refs = {"c2": ref_dir / "c2.nii.gz"}
    table = evaluate_folder(pred_dir, refs, ["c2"], [1], tmp_path / "m.csv")
    assert table["dice_mean"].tolist() == [1.0]
    with pytest.raises(DataError, match=r"case 'c9'.*prediction is missing"):
        evaluate_folder(pred_dir, ref_dir, ["c1", "c9"], [1], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(DataError, match=r"case 'c1'.*no reference"):
        evaluate_folder(pred_dir, refs, ["c1"], [1], tmp_path / "y.csv")


# ---------------------------------------------------------------- IoU, HD95, NSD: golden values


def box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def test_hd95_and_nsd_of_a_shifted_box_use_the_spacing() -> None:
    # the same 4-voxel cube shifted by 2 voxels along x: surface distances are 0, 1 or 2
    # voxels along x only, so in mm they scale with the x spacing alone
    ref = box((12, 8, 8), (2, 2, 2), (6, 6, 6))
    pred = box((12, 8, 8), (4, 2, 2), (8, 6, 6))
    for sx in (1.0, 2.5):
        assert hd95(pred, ref, (sx, 1.0, 1.0)) == pytest.approx(2 * sx)
        assert hd95(pred, ref, (1.0, 3.0, 3.0)) == pytest.approx(2.0)  # y, z do not matter
    assert iou(pred, ref) == pytest.approx(2 / 6)
    # with a 1-voxel (1 mm) tolerance, the surface voxels 2 mm away fail the test
    nsd_tight = normalized_surface_dice(pred, ref, (1.0, 1.0, 1.0), 1.0)
    assert 0.0 < nsd_tight < 1.0
    assert normalized_surface_dice(pred, ref, (1.0, 1.0, 1.0), 2.0) == 1.0
    assert normalized_surface_dice(pred, ref, (2.0, 1.0, 1.0), 2.0) == pytest.approx(nsd_tight)


def test_identical_masks_are_perfect() -> None:
    m = box((9, 9, 9), (1, 2, 3), (6, 7, 8))
    assert score_masks(m, m, (1.0, 2.0, 0.5), 0.0) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0,
                                                       "nsd": 1.0}


@pytest.mark.parametrize(
    ("pred_any", "ref_any", "expected"),
    [
        (False, False, {"dice": math.nan, "iou": math.nan, "hd95": math.nan, "nsd": math.nan}),
        (True, False, {"dice": 0.0, "iou": 0.0, "hd95": "diagonal", "nsd": 0.0}),
        (False, True, {"dice": 0.0, "iou": 0.0, "hd95": "diagonal", "nsd": 0.0}),
    ],
)
def test_empty_class_convention_for_every_metric(pred_any, ref_any, expected) -> None:
    shape, spacing = (240, 240, 155), (1.0, 1.0, 1.0)
    some = box(shape, (10, 10, 10), (12, 12, 12))
    none = np.zeros(shape, dtype=bool)
    scores = score_masks(some if pred_any else none, some if ref_any else none, spacing, 1.0)
    diagonal = image_diagonal_mm(shape, spacing)
    assert diagonal == pytest.approx(373.13, abs=0.01)  # BraTS's value for its grid
    assert scores == pytest.approx({k: diagonal if v == "diagonal" else v
                                    for k, v in expected.items()}, nan_ok=True)


# ---------------------------------------------------------------- cross-check against MONAI


def blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A random blobby label map with labels 0-2 (smoothed noise, thresholded)."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return np.digitize(noise, [0.05, 0.15]).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_metrics_match_monai(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (20, 18, 12)
    spacing = (0.8, 1.1, 2.5)  # anisotropic, so a wrong axis order would show
    tolerance = 1.5
    ref = blobs(rng, shape)
    pred = blobs(np.random.default_rng(seed + 100), shape)
    pred[ref == 2] = np.where(rng.random(int((ref == 2).sum())) < 0.7, 2, pred[ref == 2])

    def one_hot(a: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), 3).permute(3, 0, 1, 2)[None]

    p, r = one_hot(pred).float(), one_hot(ref).float()
    monai = {
        "dice": compute_dice(p, r, include_background=False, ignore_empty=False)[0],
        "iou": compute_iou(p, r, include_background=False, ignore_empty=False)[0],
        "hd95": compute_hausdorff_distance(p, r, include_background=False, percentile=95,
                                           spacing=spacing)[0],
        "nsd": compute_surface_dice(p, r, [tolerance, tolerance], include_background=False,
                                    spacing=spacing)[0],
    }
    for k, label in enumerate((1, 2)):
        c = ScoredClass(str(label), (label,))
        ours = score_masks(c.mask(pred), c.mask(ref), spacing, tolerance)
        for metric, values in monai.items():
            assert ours[metric] == pytest.approx(float(values[k]), abs=1e-5), (metric, label)


def test_summary_json_per_class_and_per_case(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    summary = tmp_path / "fold0.json"
    evaluate_folder(pred_dir, ref_dir, ["c1", "c2", "c3"], [1, 2], tmp_path / "fold0.csv",
                    tolerance_mm=2.0, summary_json=summary)
    def reject(token: str) -> None:
        raise AssertionError(f"{token} in the summary JSON: not scored must be null")

    record = json.loads(summary.read_text(), parse_constant=reject)  # strict JSON
    assert record["nsd_tolerance_mm"] == 2.0
    assert record["classes"] == {"1": [1], "2": [2]}
    one, two = record["per_class"]["1"], record["per_class"]["2"]
    assert one["dice"] == pytest.approx((2 / 3 + 1.0 + 0.8) / 3)
    assert (one["n_cases_in_reference"], one["n_cases_scored"], one["n_cases"]) == (3, 3, 3)
    # label 2: in c1's reference only, predicted in c2, absent from both in c3
    assert two["dice"] == pytest.approx((0.5 + 0.0) / 2)
    assert (two["n_cases_in_reference"], two["n_cases_scored"], two["n_cases"]) == (1, 2, 3)
    assert record["foreground_mean"]["dice"] == pytest.approx((7 / 12 + 0.5 + 0.8) / 3)
    assert [c["case"] for c in record["cases"]] == ["c1", "c2", "c3"]
    # c2, label 2: predicted, absent from the reference -> HD95 is the image diagonal in mm
    assert record["cases"][1]["hd95_2"] == pytest.approx(float(np.sqrt(6.0**2 + 4.5**2 + 4.0**2)))
    assert record["cases"][2]["dice_2"] is None and record["cases"][2]["n_ref_2"] == 0
    assert "not scored" in record["convention"]


def test_summary_of_a_toy_table_counts_cases_per_class() -> None:
    # 3 cases, 3 classes; NaN = absent from both. Class 3 is in no case: never scored.
    nan = math.nan
    classes = [ScoredClass(str(v), (v,)) for v in (1, 2, 3)]
    table = pd.DataFrame({
        "case": ["a", "b", "c"],
        "dice_1": [0.9, 0.7, 0.0], "n_ref_1": [10, 8, 0], "n_pred_1": [9, 8, 3],
        "dice_2": [0.6, nan, nan], "n_ref_2": [5, 0, 0], "n_pred_2": [4, 0, 0],
        "dice_3": [nan, nan, nan], "n_ref_3": [0, 0, 0], "n_pred_3": [0, 0, 0],
        "dice_mean": [0.75, 0.7, 0.0],
    })
    for m in ("iou", "hd95", "nsd"):
        table = table.assign(**{f"{m}_{c.name}": table[f"dice_{c.name}"] for c in classes},
                             **{f"{m}_mean": table["dice_mean"]})
    record = summarize(table, classes, 1.0)
    counts = {c: tuple(record["per_class"][c][k] for k in
                       ("n_cases_in_reference", "n_cases_scored", "n_cases")) for c in "123"}
    assert counts == {"1": (2, 3, 3), "2": (1, 1, 3), "3": (0, 0, 3)}
    assert record["per_class"]["1"]["dice"] == pytest.approx(1.6 / 3)
    assert record["per_class"]["2"]["dice"] == pytest.approx(0.6)
    assert record["per_class"]["3"]["dice"] is None
    assert record["foreground_mean"]["dice"] == pytest.approx(1.45 / 3)


def test_region_classes_score_label_sets() -> None:
    wt = ScoredClass("WT", (1, 2, 3))
    pred = label_map({1: [0, 1], 3: [2]})
    ref = label_map({2: [0, 1, 2, 3]})
    assert score_masks(wt.mask(pred), wt.mask(ref), (1, 1, 1), 1.0)["dice"] == pytest.approx(
        2 * 3 / 7)


def test_sparse_reference_scores_annotated_voxels_only():
    """A reference holding the ignore value: only its annotated voxels are scored (both maps
    count as background where it is ignore), and the row says how much was annotated."""
    ref = np.zeros((4, 4, 2), dtype=np.int64)
    ref[:2, :2, 0] = 1
    ref[:, :, 1] = 9  # second slice unannotated
    pred = np.zeros_like(ref)
    pred[:2, :2, :] = 1  # right on slice 0; on slice 1 nothing is known
    classes = [ScoredClass("1", (1,))]
    row = score_case(pred, ref, classes, (1.0, 1.0, 1.0), 1.0, ignore=9)
    assert row["dice_1"] == 1.0 and row["annotated_fraction"] == 0.5
    assert row["n_pred_1"] == 4  # the unannotated slice's predictions are not counted
    # without the ignore value the unannotated slice would count as false positives
    dense = score_case(pred, ref, classes, (1.0, 1.0, 1.0), 1.0)
    assert dense["dice_1"] < 1.0 and "annotated_fraction" not in dense
    # a dense reference under a sparse label concept: everything annotated
    full = score_case(pred, np.where(ref == 9, 0, ref), classes, (1.0, 1.0, 1.0), 1.0, ignore=9)
    assert full["annotated_fraction"] == 1.0
