"""The nnU-Net v2 model row of ``scripts/gpu-checks.sh`` (issue 19, item 4): one CT-sized
case through an nnU-Net v2 trained-model folder, NIfTI read to NIfTI written, with TTA off and
on, on the device, in v2's precision (fp16 autocast on CUDA, as ``nnUNetv2_predict`` runs).

The model folder is written here, in v2's layout (``plans.json``, ``dataset.json``,
``fold_0/checkpoint_final.pth``), with random weights: the time of a case does not depend on
what the weights learned. Its plan is a typical v2 CT ``3d_fullres`` configuration (nnU-Net
v2 2.8.1's default planner on an abdominal CT: ``PlainConvUNet``, 6 stages, 32-320 filters,
patch ``128 x 128 x 128``, CT normalisation, mirror axes (0, 1, 2)); the case is 512 x 512 x
160 voxels at 0.8 x 0.8 x 2.5 mm against the plan's 0.78 x 0.78 x 2.5 mm, so it is resampled
on the way in and out as a real case is. The reader is v2's ``NibabelIO`` (the GPU machine
has no SimpleITK). ``--tiny`` uses a 3-stage network and a 32 x 32 x 20 case (CPU checks of
the logic; the figures mean nothing).

    python -m benchmarks.gpu_v2 --work /tmp/gpu --out $OUT [--device cuda] [--tiny]

Writes ``OUT/v2.json``: per TTA setting the seconds of reading, predicting (preprocessing,
sliding window, restoring) and writing the case, after one warm-up case.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONV = "torch.nn.modules.conv.Conv3d"
NORM = "torch.nn.modules.instancenorm.InstanceNorm3d"
UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def arch_kwargs(tiny: bool) -> dict[str, Any]:
    """``arch_kwargs`` of v2's ``PlainConvUNet`` as its planner writes them for a CT
    ``3d_fullres`` configuration (``tiny``: 3 stages, 4-16 filters)."""
    n = 3 if tiny else 6
    features = [4, 8, 16] if tiny else [32, 64, 128, 256, 320, 320]
    return {
        "n_stages": n, "features_per_stage": features, "conv_op": CONV,
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
        "conv_bias": True, "norm_op": NORM, "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }


def write_model(root: Path, tiny: bool) -> Path:
    """A v2 trained-model folder ``root/Dataset990_GpuCheck/nnUNetTrainer__nnUNetPlans__
    3d_fullres`` with one fold of random weights; returns its path."""
    from nnpipe.v2.network import build_network

    folder = root / "Dataset990_GpuCheck" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    kwargs = arch_kwargs(tiny)
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                                "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1,
                                                         "order_z": 0,
                                                         "force_separate_z": None}}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [16, 32, 32] if tiny else [128, 128, 128],
        "median_image_size_in_voxels": [160, 512, 512], "spacing": [2.5, 0.78, 0.78],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        **resampling,
        "architecture": {"network_class_name": UNET, "arch_kwargs": kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset990_GpuCheck", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 0.78, 0.78],
        "original_median_shape_after_transp": [160, 512, 512],
        "image_reader_writer": "NibabelIO", "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -1000.0,
                  "percentile_00_5": -150.0, "percentile_99_5": 300.0, "std": 70.0}},
    }
    dataset = {"channel_names": {"0": "CT"},
               "labels": {"background": 0, "liver": 1, "tumour": 2},
               "numTraining": 100, "file_ending": ".nii.gz", "name": "GpuCheck"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(0)
    net = build_network("PlainConvUNet", kwargs, 1, 3)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "current_epoch": 1000,
                "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def write_case(folder: Path, tiny: bool) -> Path:
    """``folder/ct_001_0000.nii.gz``: a CT-like volume (air, a body of soft tissue, bone),
    512 x 512 x 160 voxels (X, Y, Z) at 0.8 x 0.8 x 2.5 mm (``tiny``: 32 x 32 x 20)."""
    import nibabel as nib

    shape = (32, 32, 20) if tiny else (512, 512, 160)
    rng = np.random.default_rng(0)
    grid = np.indices(shape, dtype=np.float32)
    centre = [(s - 1) / 2 for s in shape]
    r = sum(((g - c) / (0.4 * s)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True))
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[r < 1] = 40.0
    ct[r < 0.05] = 1200.0
    ct += rng.normal(0, 20, shape).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct_001_0000.nii.gz"
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), path)
    return path


def measure(work: Path, device_name: str, tiny: bool) -> dict[str, Any]:
    """Time the case with TTA off and on (one warm-up first); stage seconds per setting."""
    from nnpipe.v2.imageio import read_v2_image, write_v2_segmentation
    from nnpipe.v2.model import load_v2_model, to_device
    from nnpipe.v2.predict import predict_v2_image

    device = torch.device(device_name)
    model = load_v2_model(write_model(work / "v2model", tiny))
    case = write_case(work / "v2in", tiny)
    nets = to_device(model, device)
    sem = model.configuration.semantics

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one(tta: bool, out: Path) -> dict[str, float]:
        t0 = time.perf_counter()
        image = read_v2_image([case], sem.reader, "ct_001")
        t1 = time.perf_counter()
        seg, _ = predict_v2_image(model, nets, image, device, tta)
        sync()
        t2 = time.perf_counter()
        write_v2_segmentation(out, seg, image, sem.output_dtype)
        t3 = time.perf_counter()
        return {"read_s": round(t1 - t0, 3), "predict_s": round(t2 - t1, 3),
                "write_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)}

    out_dir = work / "v2out"
    out_dir.mkdir(parents=True, exist_ok=True)
    one(False, out_dir / "warmup.nii.gz")
    result: dict[str, Any] = {
        "device": device.type, "tiny": tiny, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "",
        "case": "32x32x20" if tiny else "512x512x160 (X, Y, Z), 0.8x0.8x2.5 mm",
        "patch": list(sem.patch_size), "rows": {}}
    for tta in (False, True):
        result["rows"]["tta_on" if tta else "tta_off"] = one(tta, out_dir / f"tta{int(tta)}.nii.gz")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_v2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the model and case")
    p.add_argument("--out", type=Path, required=True, help="v2.json is written here")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="3-stage network, 32 x 32 x 20 case")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    result = measure(a.work, a.device, a.tiny)
    (a.out / "v2.json").write_text(json.dumps(result, indent=1))
    for key, row in result["rows"].items():
        print(f"ok: v2 model {key}: {row['total_s']} s (read {row['read_s']}, predict "
              f"{row['predict_s']}, write {row['write_s']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
