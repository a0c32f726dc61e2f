"""accuracy_compare's pieces that need neither nnU-Net v2 nor training: the dataset and split
conversion, the plan translation both ways (axis order), scoring both tools' prediction
folders with the one evaluator, and the generated v2 trainer. The comparison itself is a
benchmark run by hand (docs/benchmarks.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.accuracy_compare import (
    NNPIPE_PLANS,
    V2_RECIPE,
    convert_dataset,
    from_v2_axes,
    main,
    plan_from_v2,
    recipe_rows,
    score_fold,
    step_seconds,
    steps_for_budget,
    study_yaml,
    to_v2_axes,
    trainer_source,
    v2_configuration,
    v2_epoch_times,
    v2_plans_for,
    v2_transpose,
    write_v2_splits,
)
from nnpipe.config import load_config
from nnpipe.planning.plan import ChannelNorm, Plan

AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])
SHAPE = (6, 5, 4)
CASES = ("c1", "c2", "c3")
SPLITS = [{"train": ["c3"], "val": ["c1", "c2"]}, {"train": ["c1", "c2"], "val": ["c3"]}]


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, AFFINE), path)


def _reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[0:2, 0:2, 0:2] = 1  # 8 voxels
    ref[4:6, 3:5, 2:4] = 2  # 8 voxels
    return ref


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-case MSD dataset (2 channels, labels 0-2) and a 2-fold split of it."""
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for case in CASES:
        _save(raw / "imagesTr" / f"{case}.nii.gz", rng.random((*SHAPE, 2)).astype(np.float32))
        _save(raw / "labelsTr" / f"{case}.nii.gz", _reference())
    meta = {"name": "Toy", "modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "edema", "2": "tumour"}, "numTraining": 3,
            "numTest": 0, "test": [],
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                         for c in CASES]}
    (raw / "dataset.json").write_text(json.dumps(meta))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps(SPLITS))
    return raw, splits


def test_convert_dataset_writes_v2_raw_layout_and_split(toy, tmp_path):
    raw, splits = toy
    root = tmp_path / "v2"
    assert convert_dataset(raw, splits, root, "Dataset998_Toy") == 3
    ds = root / "nnUNet_raw" / "Dataset998_Toy"
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [
        f"{c}_{ch:04d}.nii.gz" for c in CASES for ch in (0, 1)]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in CASES]
    image = np.asarray(nib.load(raw / "imagesTr" / "c2.nii.gz").dataobj)
    channel1 = nib.load(ds / "imagesTr" / "c2_0001.nii.gz")
    np.testing.assert_array_equal(np.asarray(channel1.dataobj), image[..., 1])
    np.testing.assert_allclose(channel1.affine, AFFINE)
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    final = root / "nnUNet_preprocessed" / "Dataset998_Toy" / "splits_final.json"
    assert json.loads(final.read_text()) == SPLITS  # fold i at index i, as v2 reads it


@pytest.mark.parametrize("splits, message", [
    ([{"train": ["a"], "test": ["b"]}], "keys"),
    ([{"train": ["a", "b"], "val": ["b"]}], r"\['b'\] are in both"),
])
def test_write_v2_splits_rejects_bad_folds(tmp_path, splits, message):
    with pytest.raises(ValueError, match=message):
        write_v2_splits(splits, tmp_path)


# ----------------------------------------------------------------- plan translation


@pytest.mark.parametrize("dim, slice_axis, tf", [
    (3, None, [0, 1, 2]), (2, 2, [0, 1, 2]), (2, 1, [1, 0, 2]), (2, 0, [2, 0, 1])])
def test_v2_transpose_puts_the_slice_axis_first(dim, slice_axis, tf):
    assert v2_transpose(dim, slice_axis) == tf


@pytest.mark.parametrize("values, axes, tf, v2", [
    ((40, 48, 32), (0, 1, 2), [0, 1, 2], [32, 48, 40]),  # (X, Y, Z) -> SimpleITK (z, y, x)
    ((40, 48), (0, 1), [0, 1, 2], [48, 40]),  # axial slices: (X, Y) -> (y, x)
    ((48, 32), (1, 2), [2, 0, 1], [32, 48]),  # slices along X: (Y, Z) -> (z, y)
    ((40, 32), (0, 2), [1, 0, 2], [32, 40]),  # slices along Y: (X, Z) -> (z, x)
])
def test_axes_to_v2_and_back(values, axes, tf, v2):
    assert to_v2_axes(values, axes, tf) == v2
    assert from_v2_axes(v2, tf) == values


def _plan(dim: int, slice_axis: int | None = None) -> Plan:
    """An anisotropic plan, different along every axis, so a swapped axis shows."""
    if dim == 3:
        geo = dict(spacing=(0.8, 1.0, 2.5), patch_size=(80, 64, 24),
                   kernels=((3, 3, 1), (3, 3, 3), (3, 3, 3)),
                   strides=((1, 1, 1), (2, 2, 1), (2, 2, 2)))
        full = (0.8, 1.0, 2.5)
    else:
        in_plane = [a for a in range(3) if a != slice_axis]
        full_l = [0.8, 1.0, 2.5]
        geo = dict(spacing=tuple(full_l[a] for a in in_plane), patch_size=(96, 56),
                   kernels=((3, 3), (3, 3), (3, 1)), strides=((1, 1), (2, 2), (2, 1)))
        full = (0.8, 1.0, 2.5)
    return Plan(dataset="toy", dim=dim, full_spacing=full, filters=(8, 16, 32), batch_size=3,
                num_channels=2, num_classes=3, labels={0: "background", 1: "a", 2: "b"},
                channel_norms=(ChannelNorm("zscore_nonzero"), ChannelNorm("zscore_nonzero")),
                slice_axis=slice_axis, median_shape=(100, 90, 30), **geo)  # type: ignore[arg-type]


def _template(dim: int) -> dict:
    """What v2's own default configuration looks like (the parts translation touches)."""
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    return {"data_identifier": f"nnUNetPlans_{dim}d", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [64] * dim, "spacing": [1.0] * dim,
            "normalization_schemes": ["ZScoreNormalization"] * 2,
            "use_mask_for_norm": [False] * 2, "resampling_fn_data": "resample_data_or_seg_to_shape",
            "architecture": {
                "network_class_name":
                    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 2, "features_per_stage": [32, 64], "conv_op": conv,
                                "kernel_sizes": [[3] * dim] * 2,
                                "strides": [[1] * dim, [2] * dim], "n_conv_per_stage": [2, 2],
                                "n_conv_per_stage_decoder": [2], "conv_bias": True},
                "_kw_requires_import": ["conv_op"]},
            "batch_dice": False}


def _default_plans() -> dict:
    return {"dataset_name": "Dataset998_Toy", "plans_name": "nnUNetPlans",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"2d": _template(2), "3d_fullres": _template(3)},
            "foreground_intensity_properties_per_channel": {}}


@pytest.mark.parametrize("dim, slice_axis", [(3, None), (2, 2), (2, 1), (2, 0)])
def test_plan_to_v2_plans_and_back_is_the_same_plan(dim, slice_axis):
    plan = _plan(dim, slice_axis)
    plans = v2_plans_for(plan, _default_plans())
    config = "3d_fullres" if dim == 3 else "2d"
    assert plans["plans_name"] == NNPIPE_PLANS and list(plans["configurations"]) == [config]
    back = plan_from_v2(plans, config, replace(plan, patch_size=(1,) * dim, filters=(1,)))
    assert replace(back, notes=()) == plan


def test_plan_to_v2_reverses_axes_into_simpleitk_order():
    cfg = v2_plans_for(_plan(3), _default_plans())["configurations"]["3d_fullres"]
    kw = cfg["architecture"]["arch_kwargs"]
    assert cfg["patch_size"] == [24, 64, 80] and cfg["spacing"] == [2.5, 1.0, 0.8]
    assert kw["kernel_sizes"] == [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert kw["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert kw["features_per_stage"] == [8, 16, 32] and kw["n_stages"] == 3
    assert kw["n_conv_per_stage"] == [2, 2, 2] and kw["n_conv_per_stage_decoder"] == [2, 2]
    assert cfg["batch_size"] == 3 and cfg["median_image_size_in_voxels"] == [30, 90, 100]
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"] * 2
    assert cfg["use_mask_for_norm"] == [True, True] and cfg["batch_dice"] is True
    assert cfg["resampling_fn_data"] == "resample_data_or_seg_to_shape"  # v2's own kept
    assert cfg["data_identifier"] == f"{NNPIPE_PLANS}_3d_fullres"


def test_v2_2d_plan_to_nnpipe():
    """v2's 2D configuration of axial data: (y, x) arrays -> nnpipe's (X, Y), slice axis Z;
    the spacing along Z stays nnpipe's (v2 does not resample the slice axis)."""
    plans = _default_plans()
    cfg = plans["configurations"]["2d"]
    cfg.update(patch_size=[64, 48], spacing=[1.0, 2.0], batch_size=46)
    cfg["architecture"]["arch_kwargs"].update(kernel_sizes=[[3, 3], [1, 3]],
                                              strides=[[1, 1], [1, 2]])
    plan = plan_from_v2(plans, "2d", _plan(2, 2))
    assert plan.slice_axis == 2 and plan.patch_size == (48, 64) and plan.spacing == (2.0, 1.0)
    assert plan.full_spacing == (2.0, 1.0, 2.5) and plan.batch_size == 46
    assert plan.kernels == ((3, 3), (3, 1)) and plan.strides == ((1, 1), (2, 1))
    assert plan.filters == (32, 64)


@pytest.mark.parametrize("change, message", [
    ({"network_class_name": "x.ResidualEncoderUNet"}, "only PlainConvUNet"),
    ({"n_conv_per_stage": [3, 3]}, "two per stage"),
])
def test_plan_from_v2_rejects_networks_nnpipe_cannot_build(change, message):
    plans = _default_plans()
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    if "network_class_name" in change:
        arch.update(change)
    else:
        arch["arch_kwargs"].update(change)
    with pytest.raises(ValueError, match=message):
        plan_from_v2(plans, "3d_fullres", _plan(3))


def test_v2_configuration_rejects_an_unknown_normalization():
    plan = replace(_plan(3), channel_norms=(ChannelNorm("histogram"),) * 2)
    with pytest.raises(ValueError, match="'histogram' has no nnU-Net v2 counterpart"):
        v2_configuration(plan, _template(3), [0, 1, 2])


# ----------------------------------------------------------------- scoring


def _predict(folder: Path, case: str, pred: np.ndarray) -> None:
    _save(folder / f"{case}.nii.gz", pred.astype(np.uint8))


def test_both_tools_folders_scored_by_one_evaluator(toy, tmp_path):
    raw, splits = toy
    ref = _reference()
    ours, theirs = tmp_path / "nnpipe", tmp_path / "nnunetv2" / "validation"
    half = ref.copy()
    half[1, 0:2, 0:2] = 0  # 4 of class 1's 8 voxels: Dice 2*4/(4+8) = 2/3
    _predict(ours, "c1", half)
    _predict(ours, "c2", ref)
    no_tumour = np.where(ref == 2, 0, ref)  # class 2 missed: Dice 0
    _predict(theirs, "c1", no_tumour)
    _predict(theirs, "c2", ref)
    a = score_fold(ours, raw, splits, 0, tmp_path / "a.csv")
    b = score_fold(theirs, raw, splits, 0, tmp_path / "b.csv")
    assert a == {"per_class": {"1": pytest.approx(83.33), "2": 100.0},
                 "mean": pytest.approx(91.67), "cases": 2}
    assert b == {"per_class": {"1": 100.0, "2": 50.0}, "mean": 75.0, "cases": 2}


# ----------------------------------------------------------------- v2 trainer and budget


def test_generated_trainer_sets_the_steps_before_v2_builds_its_schedule():
    src = trainer_source("nnUNetTrainer_nnpipe_25x12v4", 25, 12, 4)
    compile(src, "trainer.py", "exec")  # valid Python, not imported (v2 is not installed)
    assert "class nnUNetTrainer_nnpipe_25x12v4(nnUNetTrainer):" in src
    body = src[src.index("def initialize"):]
    assert body.index("self.num_epochs = 25") < body.index("super().initialize()")
    assert "self.num_iterations_per_epoch = 12" in body
    assert "self.num_val_iterations_per_epoch = 4" in body


def test_v2_epoch_times_and_budget(tmp_path):
    (tmp_path / "training_log_2026_1_1_00_00_00.txt").write_text(
        "2026-01-01 00:00:01: Epoch 0\n2026-01-01: Epoch time: 9.5 s\n"
        "2026-01-01: Epoch time: 6.0 s\n2026-01-01: Epoch time: 6.5 s\n")
    times = v2_epoch_times(tmp_path)
    assert times == [9.5, 6.0, 6.5]
    # first epoch left out (warm-up); the fastest of the rest (load only slows epochs down)
    assert step_seconds(times, 12) == pytest.approx(6.0 / 12)
    assert steps_for_budget(100.0, 0.5, 12) == 192  # 200 steps -> 16 whole epochs of 12
    assert steps_for_budget(1.0, 0.5, 12) == 12  # at least one epoch
    with pytest.raises(ValueError, match="no epoch times"):
        step_seconds([], 12)


def test_recipe_rows_put_both_tools_side_by_side():
    settings = load_config(Path(__file__).parents[2] / "config" / "config.yaml").training
    rows = recipe_rows(settings, {"initial_lr": "1e-2", "version": "2.8.1"})
    assert [r[0] for r in rows[:-1]] == [name for name, _, _ in V2_RECIPE]
    by_name = {r[0]: r for r in rows}
    assert by_name["learning rate"][1:3] == ("0.003", "0.01")
    assert by_name["optimizer"][1] == "Adam"
    assert all(r[3] for r in rows)  # every v2 value says where it comes from
    assert "2.8.1" in rows[-1][3]


def test_study_yaml_fixes_the_shared_inference_settings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: {epochs: 3, learning_rate: 0.01}\ninference: {tta: false}\n")
    raw = study_yaml(cfg, 12)
    assert raw["training"] == {"epochs": 3, "learning_rate": 0.01, "steps_per_epoch": 12}
    assert raw["inference"] == {"tta": True, "overlap": 0.5, "blend": "gaussian"}


def test_steps_must_fill_whole_epochs(capsys):
    with pytest.raises(SystemExit):
        main(["--steps", "100", "--steps-per-epoch", "12"])
    assert "not a multiple" in capsys.readouterr().err
