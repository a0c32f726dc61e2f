"""Every GPU check of the training-speed and inference issues, in one run, as one table.

Prepares a real dataset (the embedded generator at 1 mm, planned with the reference's MSD
Task01 preset: 128³ patch, its topology and filters), then measures with nnpipe's own benchmark
code: 3D training (batch 2, 128³, real patches + GPU augmentation), 3D patch inference
(batch 4), 2D training (batch 64, 192×160), the loader alone, and one BraTS-sized whole-case
sliding window with 8-flip TTA. Run ``monai_anchor.py`` in the same job (scripts/gpu-checks.sh
does) so that both tables come from one machine state.

    python -m nnpipe.benchmark.gpu_suite --work /tmp/gpu --out $OUT
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from nnpipe.benchmark.throughput import BenchmarkSpec, run_benchmark
from nnpipe.datasets.embedded import generate_embedded
from nnpipe.datasets.layout import load_dataset
from nnpipe.planning.fingerprint import compute_fingerprint
from nnpipe.planning.planner import PlannerSettings
from nnpipe.planning.presets import plan_for
from nnpipe.preprocessing.pipeline import preprocess_dataset
from nnpipe.progress import log

# (label, mode, dim, batch, precision, compile, target samples/s from the issue or None)
CELLS: tuple[tuple[str, str, int, int, str, bool, float | None], ...] = (
    ("3D train bs2 128³ amp eager", "train", 3, 2, "amp", False, None),
    ("3D train bs2 128³ bf16 eager", "train", 3, 2, "bf16", False, None),
    ("3D train bs2 128³ bf16 compiled", "train", 3, 2, "bf16", True, 110.0),
    ("3D predict bs4 128³ amp eager", "predict", 3, 4, "amp", False, None),
    ("3D predict bs4 128³ bf16 compiled", "predict", 3, 4, "bf16", True, 400.0),
    ("2D train bs64 192×160 amp eager", "train", 2, 64, "amp", False, None),
    ("2D train bs64 192×160 bf16 compiled", "train", 2, 64, "bf16", True, 6000.0),
    ("3D loader alone bs2 128³ (sampling + augmentation)", "loader", 3, 2, "bf16", False, None),
)


def prepare(work: Path, n_cases: int) -> dict[int, tuple[Any, Path]]:
    """Generate, fingerprint, plan (reference Task01 preset) and preprocess, for 2D and 3D."""
    raw = work / "raw"
    if not (raw / "dataset.json").is_file():
        generate_embedded(raw, n_train=n_cases, n_test=0, seed=0, resolution_mm=1.0)
    ds = load_dataset(raw)
    fp = compute_fingerprint(ds, workers=8)
    settings = PlannerSettings(batch_voxels_3d=2 * 128**3, batch_voxels_2d=64 * 192 * 160,
                               max_batch_size=64)
    out = {}
    for dim in (2, 3):
        plan = plan_for(fp, dim, settings, "gpu_suite", preset="reference",
                        task="Task01_BrainTumour")
        pre = work / f"pre{dim}d"
        if not (pre / "manifest.json").is_file():
            preprocess_dataset(ds, plan, pre, workers=8)
        out[dim] = (plan, pre)
    return out


def sliding_window_case(plan, tta: bool) -> float:
    """Seconds for one 4×240×240×155 case through nnpipe's sliding window (GPU compute)."""
    from nnpipe.inference.sliding_window import sliding_window
    from nnpipe.model import build_unet

    model = build_unet(plan, deep_supervision=False).cuda().eval()
    image = torch.randn(4, 240, 240, 155, device="cuda")

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            sliding_window(model, image, tuple(plan.patch_size), plan.num_classes, overlap=0.5,
                           blend="gaussian", batch_size=4, tta_flips=tta)
        torch.cuda.synchronize()

    run()  # warm-up (cuDNN autotuning)
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/nnpipe-gpu"))
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_suite needs a CUDA GPU")
    prepared = prepare(args.work, args.cases)
    rows = []
    for label, mode, dim, bs, prec, comp, target in CELLS:
        plan, pre = prepared[dim]
        spec = BenchmarkSpec(mode, bs, prec, warmup_steps=10, timed_steps=args.steps,
                             compile=comp)
        try:
            rec = run_benchmark(plan, spec, pre)
            rows.append((label, f"{rec['throughput']:.1f}", f"{rec['latency_ms']['mean']:.1f}",
                         "—" if target is None else f"{target:g}"))
        except Exception as exc:  # one failed cell must not hide the others' figures
            rows.append((label, f"failed: {type(exc).__name__}: {exc}"[:120], "", ""))
        log(f"{rows[-1]}")
    plan3 = prepared[3][0]
    for tta in (False, True):
        s = sliding_window_case(plan3, tta)
        rows.append((f"BraTS case 4×240×240×155 sliding window, TTA {'8' if tta else 'off'}",
                     f"{s:.3f} s/case", "", "1.0 s" if tta else "—"))
    print(f"\n{torch.cuda.get_device_name()} torch {torch.__version__}")
    print("| check | samples/s | ms/step | target |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
