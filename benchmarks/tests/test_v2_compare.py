"""The v2 parity bench's pure parts: Dice and voxel agreement, the gate, the first stage
where the tools part, the tables; the dataset generator's v2 layout (no nnU-Net needed)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from benchmarks.v2_compare import (
    LabelCounts,
    Timing,
    first_parted,
    max_abs_diff,
    parity_table,
    passes_gate,
    speed_rows,
    speed_table,
)
from benchmarks.v2_datasets import SPECS, write_dataset


def test_label_counts_dice_and_voxels_over_cases() -> None:
    c = LabelCounts()
    a = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    b = np.array([[0, 1, 0, 2], [0, 0, 2, 1]])
    c.add(a, b, "one")
    c.add(np.zeros((2, 2), int), np.zeros((2, 2), int), "two")
    # class 1: |A|=2, |B|=2, both=1 -> 0.5; class 2: |A|=3, |B|=2, both=2 -> 0.8
    assert c.dice() == pytest.approx({1: 0.5, 2: 0.8})
    assert c.voxel_agreement == pytest.approx(10 / 12)


def test_label_counts_absent_class_is_agreement_and_shape_mismatch_names_case() -> None:
    c = LabelCounts()
    c.add(np.zeros(4, int), np.zeros(4, int))
    assert c.dice([1, 2]) == {1: 1.0, 2: 1.0}
    assert c.voxel_agreement == 1.0
    with pytest.raises(ValueError, match="case 'x'.*shapes"):
        c.add(np.zeros(3, int), np.zeros(4, int), "x")


@pytest.mark.parametrize(("dice", "voxels", "ok"), [
    ({1: 0.999, 2: 1.0}, 0.9999, True),
    ({1: 0.9989, 2: 1.0}, 1.0, False),
    ({1: 1.0}, 0.99989, False),
    ({}, 1.0, True),
])
def test_gate(dice: dict[int, float], voxels: float, ok: bool) -> None:
    assert passes_gate(dice, voxels) is ok


@pytest.mark.parametrize(("diffs", "identical", "where"), [
    ({"preprocessed": 0.0, "probabilities": 0.0}, True, "none"),
    ({"preprocessed": 0.5, "probabilities": 0.0}, True, "preprocessed"),
    ({"preprocessed": 1e-6, "probabilities": 0.02}, False, "probabilities"),
    ({"preprocessed": None, "probabilities": None}, False, "labels"),
    ({"preprocessed": float("nan"), "probabilities": 0.0}, True, "preprocessed"),
])
def test_first_parted(diffs: dict[str, float | None], identical: bool, where: str) -> None:
    assert first_parted(diffs, identical) == where


def test_max_abs_diff() -> None:
    assert max_abs_diff(np.array([1.0, 2.0]), np.array([1.5, 1.0])) == 1.0
    with pytest.raises(ValueError, match="probs: arrays of shapes"):
        max_abs_diff(np.zeros(2), np.zeros(3), "probs")


def test_parity_table_row() -> None:
    row = {"dataset": "Dataset901_AnisoMR", "configuration": "3d_fullres", "network": "plain",
           "folds": "0", "tta": True, "cases": 2, "dice": {"1": 0.99951}, "voxels": 0.999991,
           "preprocessed": 2.4e-7, "probabilities": None, "parted": "labels", "gate": True}
    lines = parity_table([row]).splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[1].count("|")
    assert lines[2] == ("| Dataset901_AnisoMR | 3d_fullres | plain | 0 | on | 2 | 1: 0.9995 | "
                        "99.9991 % | 2.4e-07 | n/a | labels | PASS |")


def test_speed_rows_median_max_and_ratios() -> None:
    gib = 2**30
    runs = [Timing("nnunetv2", True, 30.0, 2 * gib), Timing("nnpipe", True, 10.0, gib),
            Timing("nnunetv2", True, 34.0, 3 * gib), Timing("nnpipe", True, 12.0, gib),
            Timing("nnunetv2", False, 9.0, 2 * gib), Timing("nnpipe", False, 3.0, 4 * gib)]
    on, off = speed_rows(runs)
    assert on["tta"] is True and on["v2_s"] == 32.0 and on["nnpipe_s"] == 11.0
    assert on["speedup"] == pytest.approx(32 / 11) and on["rss_ratio"] == pytest.approx(1 / 3)
    assert off["speedup"] == 3.0 and off["rss_ratio"] == 2.0
    assert "| on | 2 | 32.0 | 11.0 | 2.91x | 3.00 | 1.00 | 0.33 |" in speed_table([on, off])
    with pytest.raises(ValueError, match="both tools"):
        speed_rows(runs[:1])


def test_generator_writes_v2_raw_layout(tmp_path) -> None:
    spec = SPECS[903]
    root = write_dataset(spec, tmp_path, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"]["whole tumor"] == [1, 2, 3] and meta["regions_class_order"] == [1, 2, 3]
    assert len(list((root / "imagesTr").glob("*_0001.nii.gz"))) == spec.n_train
    assert len(list((root / "imagesTs").glob("*.nii.gz"))) == 2 * spec.n_test
    lab = np.asarray(nib.load(sorted((root / "labelsTr").iterdir())[0]).dataobj)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    again = write_dataset(spec, tmp_path / "again", seed=0)
    first = sorted((root / "imagesTr").iterdir())[0]
    assert np.array_equal(nib.load(first).get_fdata(),
                          nib.load(again / "imagesTr" / first.name).get_fdata())


def test_parity_harness_imports_a_v2_dataset_and_picks_test_images(tmp_path) -> None:
    from benchmarks.v2_parity import import_dataset, test_images

    raw = write_dataset(SPECS[902], tmp_path / "raw", seed=1)
    name = import_dataset(raw, tmp_path / "nnUNet_raw", 950)
    assert name == "Dataset902_CTSepZ"  # a v2 folder keeps its name and id
    assert (tmp_path / "nnUNet_raw" / name / "imagesTs").is_dir()
    ids = test_images(tmp_path / "nnUNet_raw" / name, tmp_path / "test", 1)
    assert ids == ["ctsepz_005"]  # imagesTs first, in order
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["ctsepz_005_0000.nii.gz"]
    for p in (tmp_path / "nnUNet_raw" / name / "imagesTs").iterdir():
        p.unlink()
    ids = test_images(tmp_path / "nnUNet_raw" / name, tmp_path / "test2", 2)
    assert ids == ["ctsepz_003", "ctsepz_004"]  # else the last training cases
