"""End-to-end CPU inference against nnU-Net v2, and peak RAM on a CT-sized volume.

``compare``: the same NIfTI volumes (embedded dataset, nnU-Net's per-channel layout, which
both tools read), the same network topology (kernels, strides, features per level, instance
norm, LeakyReLU, transposed convolutions), the same target spacing, patch size, overlap
(nnU-Net ``-step_size`` = 1 - overlap), Gaussian blending and TTA setting, both on the CPU
with the same thread count; wall clock from the command's start (NIfTI read) to its exit
(NIfTI written). Weights are random but seeded: the network's cost does not depend on
their values, and training an nnU-Net model of the same architecture would only add the
training time to the study, not change the inference time measured. Outputs therefore
differ; this measures speed, the accuracy is measured by the study itself.

How the nnU-Net model folder is made (the most honest feasible way without training it):
``plans.json`` is written from our plan (axes reversed into SimpleITK's z, y, x order, the
reader nnU-Net uses by default), ``dataset.json`` from the dataset, and
``fold_0/checkpoint_final.pth`` holds the state dict of nnU-Net's own network built from
that ``plans.json`` by nnU-Net's own code (``nnUNetTrainer.build_network_architecture``),
run in nnU-Net's virtual environment.

``memory``: peak resident memory of ``nnpipe predict`` (subprocess, ``ru_maxrss``) on one
synthetic 512×512×400 int16 CT volume with a 3-class plan at the volume's own spacing (the
worst case: no downsampling before the sliding window).

    python -m benchmarks.predict_compare compare --work /tmp/cmp --nnunet-venv VENV
    python -m benchmarks.predict_compare memory --work /tmp/mem
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from nnpipe.imageio import load_nifti
from nnpipe.planning.plan import ChannelNorm, Plan

NNUNET_DATASET = "Dataset999_nnpipeCompare"
NNUNET_CONFIG = "3d_fullres"

_BUILD_NNUNET_CHECKPOINT = r"""
import inspect, json, sys, torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
folder = sys.argv[1]
plans = json.load(open(folder + "/plans.json"))
ds = json.load(open(folder + "/dataset.json"))
pm = PlansManager(plans)
cm = pm.get_configuration("3d_fullres")
torch.manual_seed(0)
net = nnUNetTrainer.build_network_architecture(pm, cm, len(ds["channel_names"]),
                                               len(ds["labels"]), enable_deep_supervision=False)
print("nnU-Net network parameters:", sum(p.numel() for p in net.parameters()))
torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres"},
            "inference_allowed_mirroring_axes": (0, 1, 2)},
           folder + "/fold_0/checkpoint_final.pth")
"""


# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]. Measured from this small process,
# because Linux counts a child's memory from before its exec (a copy of its parent's) in
# ru_maxrss: a command started directly from this torch-importing process would report at
# least this process's size.
_PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds and the peak RSS (GiB) of its largest process (itself or a
    child it waited for), measured for this command alone."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak_kib"
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", _PEAK_RSS_LAUNCHER, str(peak_file), *cmd],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        peak_kib = int(peak_file.read_text())
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(peak_kib / 2**20, 3),
            "tail": res.stderr.strip().splitlines()[-1:]}


def _nnpipe_checkpoint(plan: Plan, out: Path) -> Path:
    from nnpipe.model import build_unet, count_parameters
    from nnpipe.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = build_unet(plan, deep_supervision=False)
    print(f"nnpipe network parameters: {count_parameters(net)}", file=sys.stderr)
    save_checkpoint(out / "final.pt", {"model": net.state_dict(), "plan": plan.to_dict(),
                                       "settings": {"regions": False}})
    return out


def nnunet_plans(plan: Plan, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net v2 ``plans.json`` with our plan's geometry and topology (axes reversed)."""
    def rev(values: Sequence[Any]) -> list[Any]:  # our (X, Y, Z) -> SimpleITK's (Z, Y, X)
        return list(reversed(list(values)))

    n = len(plan.strides)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(plan.filters),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [rev(k) for k in plan.kernels],
            "strides": [rev(s) for s in plan.strides],
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": plan.batch_size, "patch_size": rev(plan.patch_size),
        "median_image_size_in_voxels": rev(plan.median_shape or plan.patch_size),
        "spacing": rev(plan.full_spacing),
        "normalization_schemes": ["ZScoreNormalization"] * plan.num_channels,
        "use_mask_for_norm": [True] * plan.num_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resample,
        "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
        "architecture": arch, "batch_dice": False,
    }
    intensity = {str(i): {"mean": 0.0, "std": 1.0, "median": 0.0, "min": 0.0, "max": 1.0,
                          "percentile_00_5": 0.0, "percentile_99_5": 1.0}
                 for i in range(plan.num_channels)}
    return {
        "dataset_name": NNUNET_DATASET, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": rev(fingerprint.get("median_spacing",
                                                                    plan.full_spacing)),
        "original_median_shape_after_transp": rev(plan.median_shape or plan.patch_size),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2], "configurations": {NNUNET_CONFIG: config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    }


def split_channels(src: Path, dest: Path) -> list[str]:
    """Write the MSD 4D images of ``src`` to ``dest`` in the nnU-Net v2 layout
    (``<case>_0000.nii.gz`` per channel); return the case ids."""
    dest.mkdir(parents=True, exist_ok=True)
    cases = []
    for path in sorted(src.glob("*.nii.gz")):
        img = load_nifti(path)
        data = np.asarray(img.dataobj)
        case = path.name[: -len(".nii.gz")]
        for c in range(data.shape[-1]):
            nib.save(nib.Nifti1Image(data[..., c], img.affine, img.header),
                     dest / f"{case}_{c:04d}.nii.gz")
        cases.append(case)
    return cases


def compare(work: Path, venv: Path, n_cases: int, resolution_mm: float, patch_voxels: int,
            base_filters: int, threads: int, tta_modes: list[bool],
            repeats: int = 1, precisions: tuple[str, ...] = ("fp32",),
            runtimes: tuple[str, ...] = ("eager",),
            nnunet_env: dict[str, str] | None = None) -> dict[str, Any]:
    from nnpipe.datasets.embedded import generate_embedded
    from nnpipe.datasets.layout import load_dataset, read_image
    from nnpipe.inference.sliding_window import tile_grid
    from nnpipe.planning.fingerprint import compute_fingerprint
    from nnpipe.planning.planner import PlannerSettings, make_plan
    from nnpipe.preprocessing.pipeline import preprocess_image

    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    if not (raw / "dataset.json").is_file():
        generate_embedded(raw, n_train=5, n_test=n_cases, seed=11, resolution_mm=resolution_mm,
                          progress=False)
    ds = load_dataset(raw)
    fp = compute_fingerprint(ds, progress=False)
    plan = make_plan(fp, 3, PlannerSettings(
        max_patch_voxels_3d=patch_voxels, max_patch_voxels_2d=4096, base_filters=base_filters,
        max_batch_size=2, batch_voxels_3d=2 * patch_voxels, batch_voxels_2d=8192), "compare")
    inputs = work / "imagesTs_per_channel"
    cases = split_channels(raw / "imagesTs", inputs)
    model = _nnpipe_checkpoint(plan, work / "nnpipe_model")

    results = work / "nnUNet_results"
    folder = results / NNUNET_DATASET / f"nnUNetTrainer__nnUNetPlans__{NNUNET_CONFIG}"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(nnunet_plans(plan, fp.to_dict()), indent=1))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(ds.channels)},
        "labels": {name: int(v) for v, name in ds.labels.items()},
        "numTraining": len(ds.training), "file_ending": ".nii.gz"}, indent=1))
    subprocess.run([str(venv / "bin" / "python"), "-c", _BUILD_NNUNET_CHECKPOINT, str(folder)],
                   check=True)

    tiles = []
    for case in ds.test:
        ci = read_image(ds, case)
        data, _ = preprocess_image(ci.image, ci.affine, plan, case.case_id)
        shape = [max(s, p) for s, p in zip(data.shape[1:], plan.patch_size, strict=True)]
        tiles.append({"case": case.case_id, "preprocessed_shape": list(data.shape[1:]),
                      "tiles": len(tile_grid(shape, plan.patch_size, 0.5))})

    env = dict(os.environ, nnUNet_results=str(results), nnUNet_raw=str(work / "nnUNet_raw"),
               nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               OMP_NUM_THREADS=str(threads))
    # extra variables for nnU-Net v2's runs only: e.g. nnpipe's allocator setting
    # (nnpipe.allocator) given to v2 through glibc's MALLOC_*_ variables, or a preloaded
    # caching allocator, to compare on equal terms
    theirs_env = dict(env, **(nnunet_env or {}))
    rows = []
    for tta in tta_modes:
        theirs_cmd = [str(venv / "bin" / "nnUNetv2_predict"), "-d", NNUNET_DATASET, "-c",
                      NNUNET_CONFIG, "-f", "0", "-i", str(inputs), "-device", "cpu",
                      "-step_size", "0.5", "-npp", "1", "-nps", "1"]
        theirs_cmd += [] if tta else ["--disable_tta"]
        ours_cmds = {}
        # one variant per precision and runtime: "fp32" (eager), "fp32_openvino", ...
        for precision, runtime in ((p, r) for p in precisions for r in runtimes):
            cfg = json.dumps({"inference": {"overlap": 0.5, "blend": "gaussian", "tta": tta,
                                            "batch_size": 1, "precision": precision,
                                            "runtime": runtime}})
            variant = precision if runtime == "eager" else f"{precision}_{runtime}"
            ours_cmds[variant] = [sys.executable, "-m", "nnpipe", "predict", "--config-json",
                                  cfg, "--model", str(model), "--input", str(inputs),
                                  "--layout", "nnunetv2",  # the per-channel files v2 reads
                                  "--device", "cpu", "--threads", str(threads), "--out"]
        ours: dict[str, list] = {v: [] for v in ours_cmds}
        theirs = []
        for r in range(repeats):  # alternate, so load from other processes hits all alike
            out = work / f"out_nnunet_tta{int(tta)}_{r}"
            theirs.append(run_timed(theirs_cmd + ["-o", str(out)], theirs_env))
            for precision, cmd in ours_cmds.items():
                out = work / f"out_nnpipe_{precision}_tta{int(tta)}_{r}"
                ours[precision].append(run_timed(cmd + [str(out)], env))
        best_theirs = min(x["wall_s"] for x in theirs)
        row: dict[str, Any] = {"tta": tta, "nnunetv2_fp32": theirs,
                               "best_nnunetv2_fp32_s": best_theirs}
        for precision, runs in ours.items():
            best = min(x["wall_s"] for x in runs)
            row[f"nnpipe_{precision}"] = runs
            row[f"best_nnpipe_{precision}_s"] = best
            row[f"speedup_{precision}"] = round(best_theirs / best, 2)
            eager = precision.split("_")[0]
            if precision != eager:  # another runtime: its time and labels against eager's
                row[f"vs_eager_{precision}"] = round(row[f"best_nnpipe_{eager}_s"] / best, 2)
                row[f"agreement_{precision}"] = label_agreement(
                    work / f"out_nnpipe_{eager}_tta{int(tta)}_0",
                    work / f"out_nnpipe_{precision}_tta{int(tta)}_0")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}),
              file=sys.stderr)
    return {"cases": cases, "plan": {"patch_size": list(plan.patch_size),
                                     "spacing": list(plan.full_spacing),
                                     "filters": list(plan.filters)},
            "tiles_per_case": tiles, "threads": threads, "torch": torch.__version__,
            "nnunet_env": nnunet_env or {},
            "runs": rows}


def label_agreement(reference: Path, other: Path) -> float:
    """Fraction of voxels, over every label map in ``reference``, whose label ``other``'s
    file of the same name has too (1.0 = identical predictions)."""
    same = total = 0
    for path in sorted(reference.glob("*.nii.gz")):
        a = np.asarray(load_nifti(path).dataobj)
        b = np.asarray(load_nifti(other / path.name).dataobj)
        same += int((a == b).sum())
        total += a.size
    if total == 0:
        raise ValueError(f"no label maps (*.nii.gz) in {str(reference)!r} to compare")
    return same / total


def memory(work: Path, shape: tuple[int, int, int], threads: int) -> dict[str, Any]:
    """Peak RSS of ``nnpipe predict`` on one synthetic CT volume of ``shape`` voxels."""
    work.mkdir(parents=True, exist_ok=True)
    spacing = (0.8, 0.8, 1.0)
    inputs = work / "images"
    inputs.mkdir(exist_ok=True)
    path = inputs / "CT_001_0000.nii.gz"
    if not path.is_file():
        rng = np.random.default_rng(0)
        x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
        body = ((x - shape[0] / 2) ** 2 / (0.45 * shape[0]) ** 2
                + (y - shape[1] / 2) ** 2 / (0.35 * shape[1]) ** 2) < 1
        ct = np.where(body, 40, -1000).astype(np.int16) + np.zeros(shape, np.int16)
        ct += rng.integers(-20, 20, size=shape, dtype=np.int16)
        organ = ((x - 200) ** 2 + (y - 260) ** 2 + (z - 200) ** 2) < 60**2
        ct[organ] += 60
        nib.save(nib.Nifti1Image(ct, np.diag([*spacing, 1.0])), path)
    plan = Plan(dataset="ct", dim=3, spacing=spacing, full_spacing=spacing,
                patch_size=(128, 128, 128), kernels=((3, 3, 3),) * 4,
                strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), filters=(4, 8, 16, 32),
                batch_size=2, num_channels=1, num_classes=3,
                labels={0: "background", 1: "organ", 2: "lesion"},
                channel_norms=(ChannelNorm("ct", -1000.0, 1000.0, 40.0, 300.0),),
                median_shape=shape)
    model = _nnpipe_checkpoint(replace(plan), work / "model")
    cfg = json.dumps({"inference": {"overlap": 0.5, "blend": "gaussian", "tta": False,
                                    "batch_size": 2}})
    run = run_timed([sys.executable, "-m", "nnpipe", "predict", "--config-json", cfg,
                     "--model", str(model), "--input", str(inputs), "--device", "cpu",
                     "--threads", str(threads), "--out", str(work / "out")])
    return {"shape": list(shape), "spacing_mm": list(spacing), "classes": 3,
            "input_gib_float32": round(int(np.prod(shape)) * 4 / 2**30, 3), **run}


def _name_values(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """``["A=1", "B=2"]`` -> ``{"A": "1", "B": "2"}``; a parser error for an item without ``=``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--nnunet-env takes NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/nnunetv2-venv"))
    c.add_argument("--cases", type=int, default=3)
    c.add_argument("--resolution-mm", type=float, default=2.0)
    c.add_argument("--patch-voxels", type=int, default=64**3)
    c.add_argument("--base-filters", type=int, default=16)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--tta", choices=("off", "on", "both"), default="both")
    c.add_argument("--repeats", type=int, default=2, help="alternating runs of each tool")
    c.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                   help="nnpipe's inference precisions to time (nnU-Net v2 runs float32 on "
                        "CPUs: it enables autocast on GPUs only)")
    c.add_argument("--runtime", nargs="+", choices=("eager", "compile", "onnxruntime",
                                                    "openvino"), default=["eager"],
                   help="nnpipe's inference runtimes to time (inference.runtime); each one "
                        "but eager also gets its time and label agreement against eager")
    c.add_argument("--nnunet-env", metavar="NAME=VALUE", nargs="+", default=[],
                   help="environment variables for nnU-Net v2's runs only, e.g. nnpipe's "
                        "allocator setting MALLOC_MMAP_THRESHOLD_=33554432 "
                        "MALLOC_TRIM_THRESHOLD_=1073741824 (nnpipe.allocator) or "
                        "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    m = sub.add_parser("memory")
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--shape", type=int, nargs=3, default=(512, 512, 400))
    m.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.what == "compare":
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.tta]
        out = compare(args.work, args.nnunet_venv, args.cases, args.resolution_mm,
                      args.patch_voxels, args.base_filters, args.threads, modes, args.repeats,
                      tuple(args.precision), tuple(args.runtime),
                      _name_values(args.nnunet_env, p))
    else:
        out = memory(args.work, tuple(args.shape), args.threads)
    text = json.dumps(out, indent=1)
    (args.work / f"{args.what}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
