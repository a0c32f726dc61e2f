"""The GPU figures of issue 12 (item 5) in one run, and the one table of the whole GPU call.

``bench`` measures with nnpipe's own benchmark code, on the reference's MSD Task01 network
(128³ patch, its topology and filters; planned with ``preset: reference``) and real patches
(the embedded dataset, preprocessed to 1 mm): 3D training batch 2 including data loading, 3D
patch inference batch 4, 2D training batch 64 at 192×160, the loader alone, and one
BraTS-sized case (4×240×240×155, 8-flip TTA) from NIfTI read to NIfTI written through
``nnpipe predict``'s own code. Each figure gets a line saying what limits it: for the network
cells a profile of the same step (GPU busy share, where the GPU time goes, TFLOP/s), for the
case the time of each stage. Eager cells first, compiled ones (``--compile``) last, so a
time limit costs the least informative figures; ``bench.json`` is rewritten after each cell.

``table`` prints the one table of ``scripts/gpu-checks.sh``: these figures beside the MONAI
anchor of the same call (``monai_anchor.py``, ``monai_anchor_sliding_window.py``), the
targets, and the tiny study's checks (:mod:`benchmarks.gpu_study`), from whatever
results exist: a failed step leaves its rows marked, not the table missing.

    python -m benchmarks.gpu_suite bench --work /tmp/gpu --out $OUT [--compile]
    python -m benchmarks.gpu_suite bench --work /tmp/cpu --out $OUT --device cpu --tiny
    python -m benchmarks.gpu_suite table --out $OUT [--logs DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import gpu_profile as prof
from benchmarks.gpu_anchor import ANCHOR_CELLS, anchor_figures, run_anchor

# What the issue asks of each figure: (row key, label, target, unit, higher is better).
TARGETS: dict[str, tuple[str, float, str, bool]] = {
    "train3d": ("3D train bs2 128³ incl. data loading", 110.0, "samples/s", True),
    "predict3d": ("3D patch inference bs4 128³", 400.0, "samples/s", True),
    "train2d": ("2D train bs64 192×160 incl. data loading", 6000.0, "samples/s", True),
    "loader3d": ("3D loader alone bs2 128³ (sampling + GPU augmentation)", 0.0, "samples/s",
                 True),
    "loader2d": ("2D loader alone bs64 192×160", 0.0, "samples/s", True),
    "case": ("BraTS case 4×240×240×155, 8-flip TTA, NIfTI read → written", 1.0, "s", False),
    "study": ("tiny study on the device (item 1)", 0.0, "checks", True),
}

@dataclass(frozen=True)
class Cell:
    """One throughput measurement of :func:`nnpipe.benchmark.throughput.run_benchmark`."""

    row: str  # key of TARGETS
    mode: str  # train | predict | loader
    dim: int
    batch: int
    precision: str
    compile: bool = False
    channels_last: bool = False

    @property
    def config(self) -> str:
        parts = [self.precision, "compiled" if self.compile else "eager"]
        return " ".join(parts + (["channels-last"] if self.channels_last else []))


EAGER_CELLS = (
    Cell("train3d", "train", 3, 2, "bf16"),
    Cell("train3d", "train", 3, 2, "bf16", channels_last=True),
    Cell("train3d", "train", 3, 2, "amp"),
    Cell("predict3d", "predict", 3, 4, "bf16"),
    Cell("predict3d", "predict", 3, 4, "bf16", channels_last=True),
    Cell("train2d", "train", 2, 64, "bf16", channels_last=True),
    Cell("loader3d", "loader", 3, 2, "bf16"),
    Cell("loader2d", "loader", 2, 64, "bf16"),
)
COMPILED_CELLS = (
    Cell("predict3d", "predict", 3, 4, "bf16", compile=True, channels_last=True),
    Cell("train3d", "train", 3, 2, "bf16", compile=True, channels_last=True),
    Cell("train2d", "train", 2, 64, "bf16", compile=True, channels_last=True),
)
# CPUs run fp32 and bf16 only
CPU_PRECISION = {"amp": "fp32"}
# warm-up and timing cap of one cell (s each)
CELL_CAP_S = {"cuda": 8.0, "cpu": 3.0}
# the least time (s) a job needs to be worth starting: eager cell, whole case, compiled cell
MIN_JOB_S = {"eager": 25.0, "case": 40.0, "compiled": 100.0}


# ---------------------------------------------------------------- bench


def prepare(work: Path, tiny: bool) -> dict[int, tuple[Any, Path]]:
    """The embedded dataset (8 mm, as the tiny study) planned for 2D and 3D and preprocessed:
    with the reference's Task01 preset (1 mm: volumes of about 160×200×170, real-sized
    patches), or with ``tiny`` the tiny study's 16³ plans (to check this code on a CPU)."""
    from benchmarks.gpu_study import tiny_raw
    from nnpipe.datasets.layout import load_dataset
    from nnpipe.planning.fingerprint import compute_fingerprint
    from nnpipe.planning.planner import PlannerSettings
    from nnpipe.planning.presets import plan_for
    from nnpipe.preprocessing.pipeline import preprocess_dataset

    ds = load_dataset(tiny_raw(work))
    fp = compute_fingerprint(ds, progress=False)
    if tiny:
        settings = PlannerSettings(max_patch_voxels_3d=16**3, max_patch_voxels_2d=16 * 16,
                                   base_filters=4, max_batch_size=64,
                                   batch_voxels_3d=2 * 16**3, batch_voxels_2d=64 * 16 * 16)
        preset = "auto"
    else:
        settings = PlannerSettings(batch_voxels_3d=2 * 128**3, batch_voxels_2d=64 * 192 * 160,
                                   max_batch_size=64)
        preset = "reference"
    out = {}
    for dim in (2, 3):
        plan = plan_for(fp, dim, settings, "gpu_suite", preset=preset,
                        task="Task01_BrainTumour")
        pre = work / f"bench-{'tiny' if tiny else 'ref'}-{dim}d"
        if not (pre / "manifest.json").is_file():
            preprocess_dataset(ds, plan, pre, workers=2 if tiny else 8, progress=False)
        out[dim] = (plan, pre)
    return out


def measure_cell(cell: Cell, plan: Any, pre: Path, device: str, steps: int) -> dict[str, Any]:
    """One cell's record: figure, latency, and a profile line of what limits it."""
    import torch

    from nnpipe.benchmark.throughput import BenchmarkSpec, run_benchmark

    precision = CPU_PRECISION.get(cell.precision, cell.precision) if device == "cpu" \
        else cell.precision
    # warm-up and timing caps where BenchmarkSpec has them (steady-state warm-up): GPU steps
    # take milliseconds, so seconds give hundreds of steps and the call stays in its budget
    caps: dict[str, Any] = {"warmup_cap_s": CELL_CAP_S[device],
                            "timing_cap_s": CELL_CAP_S[device]}
    known = BenchmarkSpec.__dataclass_fields__
    spec = BenchmarkSpec(mode=cell.mode, batch_size=cell.batch, precision=precision,
                         warmup_steps=max(2, steps // 3), timed_steps=steps,
                         compile=cell.compile, channels_last=cell.channels_last,
                         **{k: v for k, v in caps.items() if k in known})
    if cell.compile:
        # a fresh compile cache: otherwise the 2D network recompiles the 3D one's forward
        # with dynamic shapes (seen failing in Inductor on torch 2.13)
        torch._dynamo.reset()
    rec = run_benchmark(plan, spec, pre, force_cpu=device == "cpu")
    out = {"row": cell.row, "config": cell.config.replace(cell.precision, precision),
           "value": rec["throughput"], "latency_ms": rec["latency_ms"],
           "steps": rec.get("timed_steps"), "device": rec.get("device", device),
           "torch": rec.get("torch", "")}
    if cell.mode == "loader":
        limit = "patch sampling threads + augmentation on the device"
    elif cell.compile:
        limit = "compiled (its eager row's profile applies)"
    else:
        limit = prof.step_profile(plan, cell.mode, cell.batch, precision, cell.channels_last,
                                  device, rec["throughput"])
    spread = rec.get("spread")
    if rec.get("steady") is False and spread:  # a failed measurement is no result
        limit = (f"NOT A RESULT (mean/median {spread.get('mean_over_median', float('nan')):.2f}, "
                 f"{rec.get('timed_steps')} steps) · {limit}")
    out["limit"] = limit
    return out


def bench(work: Path, out: Path, device: str, tiny: bool, compile_: bool, steps: int,
          rows: tuple[str, ...] = (), budget_s: float = 0.0) -> int:
    """Measure every cell (of ``rows``, default all) and the whole case; ``bench.json`` after
    each. With ``budget_s``, a job that would not fit in what is left is recorded as skipped
    instead of started. Returns the number of failed measurements (each printed as
    ``FAIL: ...``)."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"device": device, "tiny": tiny, "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name() if device == "cuda" else "",
                              "rows": []}
    t0 = time.monotonic()
    prepared = prepare(work, tiny)
    print(f"bench: data prepared in {time.monotonic() - t0:.1f} s", flush=True)
    failed = 0

    def record(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        (out / "bench.json").write_text(json.dumps(result, indent=1))
        print(f"bench: {json.dumps(row)}", flush=True)

    # the whole case (None) after the eager cells, compiled cells (slow to start) last
    jobs: list[Cell | None] = [*EAGER_CELLS, None, *(COMPILED_CELLS if compile_ else ())]
    for cell in jobs:
        if rows and ("case" if cell is None else cell.row) not in rows:
            continue
        name = "case" if cell is None else f"{cell.row} {cell.config}"
        kind = "case" if cell is None else "compiled" if cell.compile else "eager"
        left = budget_s - (time.monotonic() - t0)
        if budget_s and left < MIN_JOB_S[kind]:
            print(f"skip: bench {name}: {left:.0f} s of the budget left", flush=True)
            record({"row": "case" if cell is None else cell.row,
                     "config": "whole case" if cell is None else cell.config,
                     "skipped": f"{left:.0f} s of the step's budget left"})
            continue
        t_cell = time.monotonic()
        try:
            if cell is None:
                for row in prof.whole_case(work, prepared[3][0], device, tiny):
                    record(row)
            else:
                plan, pre = prepared[cell.dim]
                record(measure_cell(cell, plan, pre, device, steps))
        except Exception as exc:  # one failed cell must not hide the others' figures
            failed += 1
            print(f"FAIL: bench {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            row_name = cell.row if cell is not None else "case"
            config = cell.config if cell is not None else "whole case"
            record({"row": row_name, "config": config,
                    "error": f"{type(exc).__name__}: {exc}"})
        print(f"bench: {name} took {time.monotonic() - t_cell:.1f} s", flush=True)
    return failed


# ---------------------------------------------------------------- table


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _figure(row: str, value: float) -> str:
    unit = TARGETS[row][2]
    return f"{value:.3f} s" if unit == "s" else f"{value:,.1f} {unit}"


def _met(row: str, value: float | None, device: str) -> str:
    _, target, _, higher = TARGETS[row]
    if value is None or not target:
        return ""
    if device != "cuda":
        return "n/a (cpu)"
    return "yes" if (value >= target if higher else value <= target) else "no"


def _read_steps(out: Path) -> list[dict[str, Any]]:
    """``steps.tsv`` of scripts/gpu-checks.sh: step, exit status, seconds, why."""
    steps = []
    if (out / "steps.tsv").is_file():
        for line in (out / "steps.tsv").read_text().splitlines():
            name, rc, seconds, *note = line.split("\t")
            steps.append({"step": name, "exit": int(rc), "seconds": float(seconds),
                          "note": note[0] if note else ""})
    return steps


def _no_result(step: str, steps: list[dict[str, Any]]) -> str:
    """Why a step left no result: skipped, failed, or not run at all."""
    for s in steps:
        if s["step"] == step:
            if s["note"] == "skipped":
                return "skipped"
            return "failed (see below)" if s["exit"] else "ran, no figure for this row"
    return "not run"


def _bench_rows(bench_res: dict[str, Any], anchors: dict[str, list[str]],
                steps: list[dict[str, Any]]) -> list[list[str]]:
    device = bench_res.get("device", "cuda")
    rows, seen = [], set()
    for r in bench_res.get("rows", []):
        key = r["row"]
        seen.add(key)
        label, target, _, higher = TARGETS[key]
        target_s = f"{'≥' if higher else '≤'} {target:g}" if target else ""
        anchor_step = "anchor-window" if key == "case" else "anchor"
        anchor = "; ".join(anchors.get(key, [])) or (
            _no_result(anchor_step, steps) if key in ANCHOR_CELLS or key == "case" else "")
        if "error" in r:
            rows.append([label, "FAILED", r["config"], target_s, anchor, "", r["error"][:100]])
        elif "skipped" in r:
            rows.append([label, "skipped", r["config"], target_s, anchor, "", r["skipped"]])
        else:
            rows.append([label, _figure(key, r["value"]), r["config"], target_s, anchor,
                         _met(key, r["value"], device), r.get("limit", "")])
    for key in ("train3d", "predict3d", "train2d", "case"):
        if key not in seen:  # a row for every target, measured or not
            label, target, _, higher = TARGETS[key]
            anchor_step = "anchor-window" if key == "case" else "anchor"
            rows.append([label, "not measured", "", f"{'≥' if higher else '≤'} {target:g}",
                         "; ".join(anchors.get(key, [])) or _no_result(anchor_step, steps),
                         "", f"bench: {_no_result('bench', steps)}"])
    return rows


def _study_row(study: dict[str, Any] | None, steps: list[dict[str, Any]]) -> list[str]:
    label = TARGETS["study"][0]
    if study is None:
        return [label, "not run", "", "all pass", "", "", f"study: {_no_result('study', steps)}"]
    stopped = [s["note"] or f"exit {s['exit']}" for s in steps
               if s["step"] == "study" and s["exit"] != 0]
    checks = study.get("checks", [])
    bad = [c for c in checks if not c["ok"]]
    notes = [f"study step: {n} (its later checks are missing)" for n in stopped]
    notes += [f"FAIL {c['name']}" for c in bad]
    return [label, f"{len(checks) - len(bad)}/{len(checks)} checks", f"{study.get('device')}",
            "all pass", "", "yes" if checks and not bad and not stopped else "no",
            "; ".join(notes)[:300] or "every check passed"]


def _v2_rows(v2: dict[str, Any] | None, steps: list[dict[str, Any]]) -> list[list[str]]:
    """The nnU-Net v2 model rows (:mod:`benchmarks.gpu_v2`): seconds per case, TTA off and
    on; no target (nnU-Net v2 itself is not on the GPU machine), the stages beside it."""
    label = "nnU-Net v2 model folder, CT case, NIfTI read → written, TTA {}"
    if v2 is None:
        return [[label.format("off/on"), "not measured", "", "", "", "",
                 f"v2model: {_no_result('v2model', steps)}"]]
    rows = []
    for key, row in v2.get("rows", {}).items():
        rows.append([label.format("on" if key == "tta_on" else "off"), f"{row['total_s']:.2f} s",
                     f"{v2.get('case', '')}, patch {v2.get('patch')}, "
                     + ("fp16 autocast" if v2.get("device") == "cuda" else "fp32"), "", "", "",
                     f"read {row['read_s']} s, predict {row['predict_s']} s, "
                     f"write {row['write_s']} s"])
    return rows


def table_rows(out: Path, logs: Path | None) -> tuple[list[list[str]], dict[str, Any]]:
    """The table's rows from what exists in ``out``: bench rows (a row for every target,
    measured or not), the anchor beside them, the study's checks; and the steps."""
    bench_res = _read_json(out / "bench.json") or {}
    steps = _read_steps(out)
    rows = _bench_rows(bench_res, anchor_figures(out, logs), steps)
    rows.append(_study_row(_read_json(out / "study.json"), steps))
    rows += _v2_rows(_read_json(out / "v2.json"), steps)
    meta = {"device": bench_res.get("device", "cuda"), "gpu": bench_res.get("gpu", ""),
            "torch": bench_res.get("torch", ""), "tiny": bool(bench_res.get("tiny")),
            "steps": steps}
    return rows, meta


def render_table(rows: list[list[str]], meta: dict[str, Any]) -> str:
    head = ["check", "nnpipe", "configuration", "target", "MONAI anchor (same call)", "met",
            "what limits it"]
    title = (f"{meta.get('gpu') or meta.get('device')} · torch {meta.get('torch')}"
             if meta.get("torch") else "no figures from bench in this call")
    if meta.get("tiny"):
        title += (" · TINY SIZES (16³ networks, a 48×48×31 case): checks the logic, the "
                  "figures mean nothing")
    lines = [title, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    steps = meta.get("steps", [])
    failed = [s for s in steps if s["exit"] != 0]
    skipped = [s["step"] for s in steps if s["note"] == "skipped"]
    if failed or skipped:
        lines.append("")
    lines += [f"FAILED step {s['step']} (exit {s['exit']} after {s['seconds']:.0f} s)"
              + (f": {s['note']}" if s["note"] else "") for s in failed]
    if skipped:
        lines.append(f"skipped steps: {', '.join(skipped)}")
    return "\n".join(lines)


def table(out: Path, logs: Path | None) -> str:
    rows, meta = table_rows(out, logs)
    text = render_table(rows, meta)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, **meta}, indent=1))
    return text


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="measure the cells and the whole case (bench.json)")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    b.add_argument("--tiny", action="store_true", help="16³ plans and a small case (CPU)")
    b.add_argument("--compile", action="store_true", help="also the torch.compile cells")
    b.add_argument("--steps", type=int, default=30, help="timed steps per cell")
    b.add_argument("--budget-s", type=float, default=0.0,
                   help="seconds for the whole step; jobs that would not fit are skipped")
    b.add_argument("--rows", nargs="*", default=(), choices=[k for k in TARGETS if k != "study"],
                   help="measure only these rows (default: all)")
    a = sub.add_parser("anchor", help="run a MONAI anchor script until the table's figures")
    a.add_argument("--script", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--timeout", type=float, default=100.0, help="seconds at most")
    a.add_argument("--compile", action="store_true", help="also its torch.compile cells")
    t = sub.add_parser("table", help="print the one table from what the steps left in --out")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--logs", type=Path, help="step logs (the window anchor's JSON lines)")
    args = ap.parse_args(argv)
    if args.command == "table":
        print(table(args.out, args.logs))
        return 0
    if args.command == "anchor":
        return run_anchor(args.script, args.out, args.timeout, args.compile)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL: gpu_suite bench --device cuda: no CUDA GPU is visible", flush=True)
        return 1
    return 1 if bench(args.work, args.out, args.device, args.tiny, args.compile,
                      args.steps, tuple(args.rows), args.budget_s) else 0


if __name__ == "__main__":
    sys.exit(main())

