"""nnpipe against nnU-Net v2: fingerprint + plan + preprocess on the same data, side by side.

Not part of CI (it needs nnU-Net v2 in its own virtual environment and takes minutes)::

    python3 -m venv /tmp/nnunetv2-venv
    /tmp/nnunetv2-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/nnunetv2-venv/bin/pip install -c <(echo torch==2.13.0+cpu) nnunetv2   # keeps CPU torch
    python -m benchmarks.preprocess_compare --cases 30 --resolution-mm 2 --workers 2

The dataset (the embedded generator's, or ``--raw`` in MSD layout) is converted to nnU-Net
v2's raw layout once, untimed. Then each tool runs its whole chain as its users run it, as
separate processes: ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` (fingerprint, 2D and 3D
plans, 3D preprocessing) and ``nnpipe fingerprint`` + ``plan --dim 3`` + ``plan --dim 2`` +
``preprocess`` for 3D, both with the same number of worker processes. Wall time, cases/s and
the peak RSS summed over each process tree (psutil, sampled every 20 ms) are printed, then
where the 3D and 2D plans differ. nnU-Net reads NIfTI through SimpleITK, so its arrays,
spacings and patches are ``(z, y, x)``; they are reversed here to nnpipe's ``(X, Y, Z)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnpipe.datasets.layout import load_dataset
from nnpipe.imageio import load_nifti
from nnpipe.io import save_nifti

SAMPLE_S = 0.02


@dataclass(frozen=True)
class RunStats:
    tool: str
    wall_s: float
    peak_rss_bytes: int
    cases: int

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.wall_s


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_measured(cmds: list[list[str]], env: dict[str, str], log_path: Path) -> tuple[float, int]:
    """Run ``cmds`` one after another; return (wall seconds, peak RSS of any one tree)."""
    import psutil

    peak, t0 = 0, time.perf_counter()
    with open(log_path, "w") as log:
        for cmd in cmds:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    peak = max(peak, _tree_rss(ps))
                except psutil.NoSuchProcess:
                    break
                time.sleep(SAMPLE_S)
            if proc.wait() != 0:
                raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - t0, peak


def to_nnunetv2(raw: Path, out: Path) -> int:
    """Write the MSD-layout dataset ``raw`` in nnU-Net v2's raw layout; return the case count."""
    ds = load_dataset(raw)
    if out.exists():
        shutil.rmtree(out)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    for case in ds.training:
        if case.label is None:  # load_dataset gives every training case one; say so if not
            raise ValueError(f"training case {case.case_id!r} of {raw} has no label file")
        img = load_nifti(case.images[0], case.case_id)
        data = np.asanyarray(img.dataobj)
        data = data[..., None] if data.ndim == 3 else data
        for c in range(data.shape[-1]):
            save_nifti(out / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz",
                       np.ascontiguousarray(data[..., c]), img.affine)
        shutil.copy2(case.label, out / "labelsTr" / f"{case.case_id}.nii.gz")
    meta = {"channel_names": {str(i): ch for i, ch in enumerate(ds.channels)},
            "labels": {name: value for value, name in ds.labels.items()},
            "numTraining": len(ds.training), "file_ending": ".nii.gz", "name": ds.name}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return len(ds.training)


# nnU-Net's normalization names, with its use_mask_for_norm flag, in nnpipe's terms.
_NORM_NAMES = {("ZScoreNormalization", True): "zscore_nonzero",
               ("ZScoreNormalization", False): "zscore (whole image)",
               ("CTNormalization", True): "ct", ("CTNormalization", False): "ct"}


def _to_xyz(values: list, transpose_forward: list[int], dim: int) -> tuple:
    """nnU-Net per-axis values -> nnpipe's (X, Y, Z), ``-`` on a 2D plan's sliced axis.

    nnU-Net's arrays are SimpleITK's (z, y, x), then transposed by ``transpose_forward`` so
    that the coarsest axis comes first; a 2D configuration covers the last two transposed
    axes and slices along the first. Transposed axis ``i`` is (z, y, x) axis
    ``transpose_forward[i]``, i.e. (X, Y, Z) axis ``2 - transpose_forward[i]``.
    """
    axes = transpose_forward[3 - dim:]
    out: list[Any] = ["-"] * 3
    for v, t in zip(values, axes, strict=True):
        out[2 - t] = v
    return tuple(out)


def _ours_xyz(values: list, plan: dict[str, Any]) -> tuple:
    if plan["dim"] == 3:
        return tuple(values)
    out: list[Any] = ["-"] * 3
    in_plane = [a for a in range(3) if a != plan["slice_axis"]]
    for v, a in zip(values, in_plane, strict=True):
        out[a] = v
    return tuple(out)


def plan_differences(nnunet_plans: dict[str, Any], ours: dict[int, dict[str, Any]]) -> list[str]:
    """One line per planned quantity, both tools side by side in (X, Y, Z) order."""
    tf = nnunet_plans["transpose_forward"]
    lines = []
    for dim, key in ((3, "3d_fullres"), (2, "2d")):
        theirs = nnunet_plans["configurations"].get(key)
        mine = ours.get(dim)
        if theirs is None or mine is None:
            continue
        arch = theirs["architecture"]["arch_kwargs"]
        mask = theirs.get("use_mask_for_norm", [False] * len(theirs["normalization_schemes"]))
        rows = [
            ("spacing (mm)", _to_xyz([round(v, 4) for v in theirs["spacing"]], tf, dim),
             _ours_xyz([round(v, 4) for v in mine["spacing"]], mine)),
            ("patch size", _to_xyz(theirs["patch_size"], tf, dim),
             _ours_xyz(mine["patch_size"], mine)),
            ("batch size", theirs["batch_size"], mine["batch_size"]),
            ("levels", arch["n_stages"], len(mine["strides"])),
            ("strides", [_to_xyz(s, tf, dim) for s in arch["strides"]],
             [_ours_xyz(s, mine) for s in mine["strides"]]),
            ("kernels", [_to_xyz(k, tf, dim) for k in arch["kernel_sizes"]],
             [_ours_xyz(k, mine) for k in mine["kernels"]]),
            ("filters", tuple(arch["features_per_stage"]), tuple(mine["filters"])),
            ("normalization", tuple(_NORM_NAMES.get((n, m), n) for n, m in
                                    zip(theirs["normalization_schemes"], mask, strict=True)),
             tuple(n["scheme"] for n in mine["channel_norms"])),
        ]
        for name, a, b in rows:
            mark = "same" if a == b else "DIFFERS"
            lines.append(f"{dim}D {name:14s} nnU-Net v2 {a}  |  nnpipe {b}  [{mark}]")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=30, help="training cases (embedded generator)")
    p.add_argument("--resolution-mm", type=float, default=2.0, help="embedded anatomy voxel size")
    p.add_argument("--raw", type=Path, help="use this MSD-layout dataset instead of generating")
    p.add_argument("--workers", type=int, default=2, help="processes for both tools")
    p.add_argument("--memory-gb", type=float, default=0.0, help="nnpipe's RAM budget (0: none)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nnpipe-vs-nnunetv2"))
    p.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/nnunetv2-venv"))
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--skip-nnunet", action="store_true", help="time nnpipe only")
    p.add_argument("--plans-only", action="store_true",
                   help="only print the plan differences of the runs already in --work")
    args = p.parse_args(argv)
    if args.plans_only:
        name = f"Dataset{args.dataset_id:03d}_Compare"
        plans = json.loads((args.work / "nnUNet_preprocessed" / name / "nnUNetPlans.json")
                           .read_text())
        mine = {d: json.loads((args.work / "nnpipe" / f"{d}d.json").read_text()) for d in (2, 3)}
        print("\n".join(plan_differences(plans, mine)))
        return 0

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    raw = args.raw
    if raw is None:
        from nnpipe.datasets.embedded import generate_embedded

        raw = work / f"embedded-{args.cases}-{args.resolution_mm:g}mm"
        if not (raw / "dataset.json").exists():
            generate_embedded(raw, n_train=args.cases, n_test=0, seed=0,
                              resolution_mm=args.resolution_mm)
    name = f"Dataset{args.dataset_id:03d}_Compare"
    n_cases = to_nnunetv2(raw, work / "nnUNet_raw" / name)
    print(f"dataset: {raw} ({n_cases} cases), workers {args.workers}", flush=True)

    results: list[RunStats] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per worker process, both tools
    if not args.skip_nnunet:
        for sub in ("nnUNet_preprocessed", "nnUNet_results"):
            shutil.rmtree(work / sub, ignore_errors=True)
            (work / sub).mkdir()
        nn_env = {**env, "nnUNet_raw": str(work / "nnUNet_raw"),
                  "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                  "nnUNet_results": str(work / "nnUNet_results")}
        cmd = [str(args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess"), "-d",
               str(args.dataset_id), "-c", "3d_fullres", "-np", str(args.workers), "-npfp",
               str(args.workers)]
        wall, peak = run_measured([cmd], nn_env, work / "nnunetv2.log")
        results.append(RunStats("nnU-Net v2", wall, peak, n_cases))

    ours = work / "nnpipe"
    shutil.rmtree(ours, ignore_errors=True)
    ours.mkdir()
    nnpipe = [sys.executable, "-m", "nnpipe"]
    cfg = ["--config-json", json.dumps({"preprocess": {"workers": args.workers,
                                                       "memory_gb": args.memory_gb}})]
    cmds = [
        [*nnpipe, "fingerprint", "--raw", str(raw), "--workers", str(args.workers),
         "--out", str(ours / "fingerprint.json")],
        [*nnpipe, "plan", "--fingerprint", str(ours / "fingerprint.json"), "--dim", "3",
         "--out", str(ours / "3d.json")],
        [*nnpipe, "plan", "--fingerprint", str(ours / "fingerprint.json"), "--dim", "2",
         "--out", str(ours / "2d.json")],
        [*nnpipe, "preprocess", *cfg, "--raw", str(raw), "--plan", str(ours / "3d.json"),
         "--out", str(ours / "pre3d")],
    ]
    wall, peak = run_measured(cmds, env, work / "nnpipe.log")
    results.append(RunStats("nnpipe", wall, peak, n_cases))

    print(f"\n{'tool':12s} {'wall s':>8s} {'cases/s':>8s} {'peak RSS GB':>12s}")
    for r in results:
        print(f"{r.tool:12s} {r.wall_s:8.1f} {r.cases_per_s:8.3f} {r.peak_rss_bytes / 1e9:12.2f}")
    record: dict[str, Any] = {"cases": n_cases, "workers": args.workers, "raw": str(raw),
                              "runs": [{**r.__dict__, "cases_per_s": r.cases_per_s}
                                       for r in results]}
    if len(results) == 2:
        speedup = results[1].cases_per_s / results[0].cases_per_s
        ram = results[1].peak_rss_bytes / results[0].peak_rss_bytes
        print(f"nnpipe / nnU-Net v2: {speedup:.2f}x cases/s at {ram:.2f}x the peak RSS")
        plans = json.loads((work / "nnUNet_preprocessed" / name / "nnUNetPlans.json").read_text())
        mine = {d: json.loads((ours / f"{d}d.json").read_text()) for d in (2, 3)}
        diff = plan_differences(plans, mine)
        print("\nplans, (X, Y, Z) order:\n" + "\n".join(diff))
        record.update(speedup=speedup, ram_ratio=ram, plan_differences=diff)
    (work / "compare.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
