"""nnU-Net v2 trained-model folders written by the tests (nnU-Net itself is never imported):
plans.json, dataset.json and ``fold_N/checkpoint_final.pth`` laid out and keyed as v2
writes them (``all_modules`` and ``decoder.encoder`` aliases, NumPy scalars in the logging,
a ``torch.device`` in init_args)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnpipe.v2.network import build_network

PLAIN_KWARGS: dict[str, Any] = {
    "n_stages": 3,
    "features_per_stage": [4, 8, 8],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [1, 2, 2],
    "n_conv_per_stage_decoder": [1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
RESENC_KWARGS: dict[str, Any] = {
    **{k: v for k, v in PLAIN_KWARGS.items() if k != "n_conv_per_stage"},
    "features_per_stage": [4, 8, 8],  # stage 2 keeps 8 channels: the pool-only skip
    "n_blocks_per_stage": [1, 2, 1],
}


def v2_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (nnpipe.v2 layout) with the aliases v2's state dicts hold added."""
    out = dict(state)
    for key, value in state.items():
        for part, index in ((".conv.", 0), (".norm.", 1)):
            if part in key and not key.startswith("decoder.seg_layers"):
                head, tail = key.rsplit(part, 1)
                out[f"{head}.all_modules.{index}.{tail}"] = value
    for key, value in list(out.items()):
        if key.startswith("encoder."):
            out[f"decoder.{key}"] = value
    return out


def plans_json(kwargs: dict[str, Any], architecture: str, patch: list[int],
               spacing: list[float], transpose: list[int], schemes: list[str],
               use_mask: list[bool]) -> dict[str, Any]:
    cls = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
           "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet."
                                  "ResidualEncoderUNet"}[architecture]
    backward = [transpose.index(i) for i in range(3)]
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": patch, "median_image_size_in_voxels": [20, 20, 20],
        "spacing": spacing, "normalization_schemes": schemes, "use_mask_for_norm": use_mask,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                      "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                     "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {"network_class_name": cls, "arch_kwargs": kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset901_Test", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1, 1, 1],
        "original_median_shape_after_transp": [20, 20, 20],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": transpose, "transpose_backward": backward,
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 300.0, "mean": 40.0, "median": 40.0, "min": -100.0,
                  "percentile_00_5": -80.0, "percentile_99_5": 200.0, "std": 50.0},
            "1": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0,
                  "percentile_00_5": 0.0, "percentile_99_5": 1.0, "std": 1.0}},
    }


def write_checkpoint(path: Path, weights: dict[str, torch.Tensor], configuration: str,
                     mirror: tuple[int, ...] | None = (0, 1, 2)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "network_weights": weights,
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)],
                    "ema_fg_dice": [0.5, 0.55], "train_losses": [np.float32(-0.3)]},
        "_best_ema": np.float64(0.55),
        "current_epoch": 2,
        "init_args": {"plans": {}, "configuration": configuration, "fold": 0,
                      "dataset_json": {}, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": mirror,
    }, path)


V2Folder = Callable[..., Path]


@pytest.fixture
def v2_folder(tmp_path: Path) -> V2Folder:
    """``make(architecture=..., folds=..., bias=...)`` -> a trained-model folder
    ``<tmp>/Dataset901_Test/nnUNetTrainer__nnUNetPlans__3d_fullres``; ``bias``: the
    output layer's bias (its weight then zero, so every voxel predicts argmax(bias))."""

    def make(architecture: str = "PlainConvUNet", folds: tuple[int, ...] = (0, 1),
             bias: list[float] | None = None, transpose: tuple[int, ...] = (0, 1, 2),
             channels: int = 1, seed: int = 0) -> Path:
        kwargs = PLAIN_KWARGS if architecture == "PlainConvUNet" else RESENC_KWARGS
        root = tmp_path / "Dataset901_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        root.mkdir(parents=True, exist_ok=True)
        schemes = ["CTNormalization", "ZScoreNormalization"][:channels]
        plans = plans_json(kwargs, architecture, [8, 16, 16], [2.0, 1.0, 1.0],
                           list(transpose), schemes, [False, True][:channels])
        (root / "plans.json").write_text(json.dumps(plans))
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT", "1": "MR"} if channels == 2 else {"0": "CT"},
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": 2, "file_ending": ".nii.gz", "name": "Test"}))
        for fold in folds:
            torch.manual_seed(seed + fold)
            net = build_network(architecture, kwargs, channels, 3)
            state = {k: v.clone() for k, v in net.state_dict().items()}
            if bias is not None:
                last = max(int(k.split(".")[2]) for k in state if k.startswith(
                    "decoder.seg_layers."))
                state[f"decoder.seg_layers.{last}.weight"].zero_()
                state[f"decoder.seg_layers.{last}.bias"].copy_(torch.tensor(bias))
            write_checkpoint(root / f"fold_{fold}" / "checkpoint_final.pth", v2_aliases(state),
                             "3d_fullres")
        return root

    return make


def write_image(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (0.8, 0.9, 2.0),
                origin: tuple[float, ...] = (10.0, -5.0, 3.0),
                direction: tuple[float, ...] = (0, 1, 0, 1, 0, 0, 0, 0, -1)) -> None:
    """``array`` ``(z, y, x)`` as SimpleITK writes it, with a non-trivial geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path), True)
