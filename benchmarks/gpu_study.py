"""The tiny study on a GPU: what only a GPU run shows, checked end to end (issue 12, item 1).

On the embedded dataset at 8 mm (16³ patches, 4 filters: seconds per run) and for each
precision (``amp`` and ``bf16`` on a GPU; ``fp32`` and ``bf16`` on the CPU, which has no
fp16 training), with ``training.deterministic`` on:

* a run of 2 epochs without interruption;
* the same run killed with SIGTERM during epoch 2 (exit 143, ``last.pt`` with CPU RNG
  states), then resumed by the same command: it must end with the uninterrupted run's weights;
* the bf16 model predicts the fold's validation cases on the device and on the CPU (the labels
  must agree), the device path's preprocessing and restore equal the host's, and both
  predictions are evaluated.

Each check prints one line, ``ok: ...`` or ``FAIL: ...`` (with the log lines that say why),
and ``study.json`` keeps them; the exit status is 1 if any check failed. Every stage runs
through the ``nnpipe`` command, as a user runs it.

    python -m benchmarks.gpu_study --work /tmp/study --out $OUT [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# SIGTERM must land during epoch 2, after epoch 1's last.pt: enough steps that epoch 2 lasts
# well beyond the polling interval on a GPU (a tiny step takes milliseconds there).
STEPS_PER_EPOCH = {"cuda": 60, "cpu": 12}
PRECISIONS = {"cuda": ("amp", "bf16"), "cpu": ("fp32", "bf16")}
RUN_TIMEOUT_S = 240


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Study:
    """The checks so far; prints each as it is added and, with ``path``, rewrites the JSON
    there (a study stopped by a time limit keeps what it checked)."""

    device: str
    path: Path | None = None
    checks: list[Check] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        with self.lock:
            self.checks.append(Check(name, ok, detail))
            print(f"{'ok' if ok else 'FAIL'}: {name}" + (f": {detail}" if detail else ""),
                  flush=True)
            if self.path is not None:
                self.path.write_text(json.dumps(self.to_dict(), indent=1))
        return ok

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "checks": [asdict(c) for c in self.checks]}


def _tail(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def tiny_raw(work: Path) -> Path:
    """``work/raw``: the embedded dataset at 8 mm, 5 training cases and 1 test case (made
    once per work folder)."""
    from nnpipe.datasets.embedded import generate_embedded

    raw = work / "raw"
    if not (raw / "dataset.json").is_file():
        generate_embedded(raw, n_train=5, n_test=1, seed=2, resolution_mm=8.0, progress=False)
    return raw


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """Raw tiny dataset, its 3D plan and preprocessed folder, and the split (once per work
    folder); the same settings as the test suite's tiny study."""
    from nnpipe.datasets.layout import load_dataset
    from nnpipe.planning.fingerprint import compute_fingerprint
    from nnpipe.planning.planner import PlannerSettings, make_plan
    from nnpipe.preprocessing.pipeline import preprocess_dataset
    from nnpipe.training.splits import make_splits, save_splits

    raw, pre, splits = tiny_raw(work), work / "pre3d", work / "splits.json"
    if not (pre / "manifest.json").is_file():
        ds = load_dataset(raw)
        fp = compute_fingerprint(ds, progress=False)
        settings = PlannerSettings(max_patch_voxels_3d=16**3, max_patch_voxels_2d=16 * 16,
                                   base_filters=4, max_batch_size=2,
                                   batch_voxels_3d=2 * 16**3, batch_voxels_2d=2 * 16 * 16)
        preprocess_dataset(ds, make_plan(fp, 3, settings, "tiny"), pre, progress=False)
    if not splits.is_file():
        ids = [c.case_id for c in load_dataset(raw).training]
        save_splits(splits, make_splits(ids))
    return raw, pre, splits


def _nnpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnpipe", *args]


def _train_command(pre: Path, splits: Path, out: Path, precision: str, device: str,
                   deterministic: bool) -> list[str]:
    settings = {"training": {"epochs": 2, "steps_per_epoch": STEPS_PER_EPOCH[device],
                             "val_patches": 2, "deterministic": deterministic,
                             "learning_rate": 0.003}}
    cmd = _nnpipe("train", "--config-json", json.dumps(settings), "--preprocessed", str(pre),
                  "--splits", str(splits), "--fold", "0", "--precision", precision,
                  "--out", str(out))
    return cmd + (["--cpu", "--threads", "2"] if device == "cpu" else [])


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(cmd, 124, "", f"{err}\ntimed out after "
                                                         f"{RUN_TIMEOUT_S} s")


def _interrupt(cmd: list[str], out: Path, fraction: float = 0.3) -> tuple[int, str]:
    """Start ``cmd``; SIGTERM about ``fraction`` into epoch 2, by the run's own clock: once
    epoch 1's ``last.pt`` and ``metrics.csv`` exist, wait ``fraction`` of its epoch 1 time
    (timing by another run would miss epoch 2 when this one runs faster)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (out / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return -1, "no last.pt before the run ended: " + _tail(proc.communicate()[1])
        time.sleep(0.005)
    epoch_s = 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        try:  # metrics.csv follows last.pt within milliseconds
            epoch_s = float(_history(out, "epoch_time_s")[0])
            break
        except (OSError, IndexError, KeyError, ValueError):
            time.sleep(0.005)
    time.sleep(fraction * epoch_s)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    return proc.returncode, err


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _weight_difference(a: Path, b: Path) -> float:
    wa, wb = _load(a)["model"], _load(b)["model"]
    if wa.keys() != wb.keys():
        return math.inf
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for o in obj for t in _tensors(o)]
    return []


def _history(run: Path, column: str) -> list[str]:
    """One column of a run's ``metrics.csv``, a value per epoch."""
    import csv

    with open(run / "metrics.csv") as fh:
        return [r[column] for r in csv.DictReader(fh)]


def _epochs(run: Path) -> list[int]:
    return [int(v) for v in _history(run, "epoch")]


def train_precision(study: Study, pre: Path, splits: Path, runs: Path, precision: str) -> Path:
    """Uninterrupted and SIGTERM-interrupted runs of one precision; returns the full run."""
    device = study.device
    full, killed = runs / f"{precision}-full", runs / f"{precision}-killed"
    deterministic = True
    res = _run(_train_command(pre, splits, full, precision, device, deterministic))
    if not study.add(f"{precision}: 2 epochs, deterministic", res.returncode == 0,
                     f"exit {res.returncode}: {_tail(res.stderr)}" if res.returncode else ""):
        deterministic = False  # go on without, so that the other checks still run
        shutil.rmtree(full, ignore_errors=True)
        res = _run(_train_command(pre, splits, full, precision, device, deterministic))
        if not study.add(f"{precision}: 2 epochs, not deterministic", res.returncode == 0,
                         f"exit {res.returncode}: {_tail(res.stderr)}"):
            return full
    summary = json.loads((full / "train.json").read_text())
    losses = [float(v) for v in _history(full, "train_loss")]
    study.add(f"{precision}: train.json and metrics.csv",
              summary.get("precision") == precision and _epochs(full) == [1, 2]
              and all(math.isfinite(v) for v in losses),
              f"precision {summary.get('precision')}, device {summary.get('device')}, "
              f"epochs {_epochs(full)}, train loss {', '.join(f'{v:.4f}' for v in losses)}")
    scaler = _load(full / "final.pt").get("scaler") or {}
    scaled = bool(scaler) and scaler.get("scale") is not None
    study.add(f"{precision}: gradient scaling {'on' if precision == 'amp' else 'off'}",
              scaled == (precision == "amp"), f"scaler state {sorted(scaler) or 'empty'}")

    cmd = _train_command(pre, splits, killed, precision, device, deterministic)
    rc, err = _interrupt(cmd, killed)
    study.add(f"{precision}: SIGTERM in epoch 2 checkpoints and exits 143",
              rc == 143 and "SIGTERM: checkpoint written" in err, f"exit {rc}: {_tail(err, 1)}")
    if (killed / "last.pt").is_file():
        ckpt = _load(killed / "last.pt")
        rng = _tensors(ckpt.get("rng"))
        on_cpu = all(t.device.type == "cpu" and t.dtype == torch.uint8 for t in rng)
        state = ckpt.get("state", {})
        study.add(f"{precision}: last.pt holds a step inside epoch 2 and CPU RNG states",
                  on_cpu and bool(rng) and state.get("epoch") == 1 and state.get("step", 0) > 0,
                  f"epoch {state.get('epoch')} step {state.get('step')}, {len(rng)} RNG "
                  f"state tensor(s) on {sorted({str(t.device) for t in rng})}, keys "
                  f"{sorted(ckpt.get('rng', {}))}")
    res = _run(cmd)
    resumed = res.returncode == 0 and "resuming fold 0" in res.stderr
    study.add(f"{precision}: resume", resumed,
              f"exit {res.returncode}: {_tail(res.stderr, 2)}")
    if resumed and (full / "final.pt").is_file():
        diff = _weight_difference(full / "final.pt", killed / "final.pt")
        if deterministic:
            study.add(f"{precision}: resumed run ends with the uninterrupted weights",
                      diff == 0.0 and _epochs(killed) == [1, 2],
                      f"max |difference| {diff:.3g}, epochs {_epochs(killed)}")
        else:
            study.add(f"{precision}: resumed run (not deterministic) ends near the "
                      "uninterrupted weights", math.isfinite(diff),
                      f"max |difference| {diff:.3g} (informative)")
    return full


def device_path_numbers(study: Study, raw: Path, pre: Path, splits: Path) -> None:
    """The device path's preprocessing and restore against the host's, on the study's
    validation cases (issue 12, item 4)."""
    from nnpipe.datasets.layout import load_dataset, read_image
    from nnpipe.planning.plan import Plan
    from nnpipe.preprocessing.pipeline import (
        preprocess_image,
        preprocess_image_torch,
        restore_channel_torch,
        restore_probabilities,
    )
    from nnpipe.training.splits import load_fold

    device = torch.device(study.device)
    ds = load_dataset(raw)
    plan = Plan.from_dict(json.loads((pre / "manifest.json").read_text())["plan"])
    worst_data = worst_probs = 0.0
    for case_id in load_fold(splits, 0)["val"]:
        ci = read_image(ds, ds.case(case_id))
        ref, meta = preprocess_image(ci.image, ci.affine, plan, case_id)
        got, got_meta = preprocess_image_torch(ci.image, ci.affine, plan, case_id, device)
        if got_meta != meta:
            study.add("device preprocessing meta", False, f"{case_id}: {got_meta} != {meta}")
            return
        worst_data = max(worst_data, float(np.abs(got.cpu().numpy() - ref).max()))
        probs = np.random.default_rng(0).dirichlet(np.ones(plan.num_classes),
                                                    meta.resampled_shape).astype(np.float32)
        probs = np.ascontiguousarray(np.moveaxis(probs, -1, 0))
        full = restore_probabilities(probs, meta)
        box = tuple(slice(lo, hi) for lo, hi in meta.bbox)
        for k in range(plan.num_classes):
            ch = restore_channel_torch(torch.from_numpy(probs[k]).to(device), meta)
            worst_probs = max(worst_probs, float(np.abs(ch.cpu().numpy() - full[k][box]).max()))
    study.add(f"device path on {device} equals the host path",
              worst_data <= 1e-4 and worst_probs <= 1e-5,
              f"preprocessed max |difference| {worst_data:.2g}, restored probabilities "
              f"{worst_probs:.2g}")


def predict_and_evaluate(study: Study, raw: Path, splits: Path, model: Path,
                         work: Path) -> None:
    """Predict the validation cases on the device and on the CPU; compare and evaluate."""
    from nnpipe.imageio import load_nifti
    from nnpipe.training.splits import load_fold

    scores = {}
    devices = (study.device, "cpu") if study.device != "cpu" else ("cpu",)
    for dev in devices:
        pred = work / f"pred-{dev}"
        res = _run(_nnpipe("predict", "--model", str(model), "--raw", str(raw), "--splits",
                           str(splits), "--fold", "0", "--out", str(pred), "--device", dev))
        if not study.add(f"predict on {dev}", res.returncode == 0,
                         f"exit {res.returncode}: {_tail(res.stderr)}" if res.returncode
                         else ""):
            continue
        summary = work / f"eval-{dev}.json"
        res = _run(_nnpipe("evaluate", "--pred", str(pred), "--raw", str(raw), "--splits",
                           str(splits), "--fold", "0", "--out", str(work / f"eval-{dev}.csv"),
                           "--summary", str(summary)))
        if study.add(f"evaluate the {dev} prediction", res.returncode == 0,
                     f"exit {res.returncode}: {_tail(res.stderr)}" if res.returncode else ""):
            scores[dev] = _mean_dice(json.loads(summary.read_text()))
    if len(devices) == 2 and all((work / f"pred-{d}").is_dir() for d in devices):
        agree = []
        for case_id in load_fold(splits, 0)["val"]:
            a, b = (np.asarray(load_nifti(next((work / f"pred-{d}").glob(f"{case_id}.*"))).dataobj)
                    for d in devices)
            agree.append(float((a == b).mean()))
        study.add(f"{devices[0]} and CPU predictions agree", min(agree) >= 0.99,
                  f"voxels equal: {', '.join(f'{a:.2%}' for a in agree)}; mean Dice "
                  f"{', '.join(f'{d} {s:.4f}' for d, s in scores.items())}")


def _mean_dice(summary: dict[str, Any]) -> float:
    """The foreground mean Dice of an evaluation summary (NaN where nothing was scored)."""
    value = summary.get("foreground_mean", {}).get("dice")
    return math.nan if value is None else float(value)


def _guarded(study: Study, name: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)``; an unexpected exception becomes a failed check named ``name`` (so the
    other checks still run) and ``None``."""
    try:
        return fn(*args)
    except Exception as exc:  # a check script reports every failure and goes on
        study.add(name, False, f"{type(exc).__name__}: {exc}")
        return None


def run_study(work: Path, device: str, path: Path | None = None) -> Study:
    study = Study(device, path)
    t0 = time.monotonic()
    prepared = _guarded(study, "prepare the tiny study", prepare, work)
    if prepared is None:
        return study
    raw, pre, splits = prepared
    study.add("tiny study prepared", True, f"{time.monotonic() - t0:.1f} s")
    # on a GPU both precisions train at once (the tiny runs leave it mostly idle); on the CPU
    # one after the other, as two runs would only share the cores
    precisions = PRECISIONS[device]
    with ThreadPoolExecutor(len(precisions) if device == "cuda" else 1) as pool:
        futures = {p: pool.submit(_guarded, study, f"{p}: training checks", train_precision,
                                  study, pre, splits, work / "runs", p)
                   for p in precisions}
        runs = {p: f.result() for p, f in futures.items()}
    _guarded(study, "device path numbers", device_path_numbers, study, raw, pre, splits)
    run = runs[precisions[-1]]
    if run is not None and (run / "final.pt").is_file():
        _guarded(study, "predict and evaluate", predict_and_evaluate, study, raw, splits,
                 run / "final.pt", work)
    else:
        study.add("predict and evaluate", False, f"no {precisions[-1]} model was written")
    return study


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for data and runs")
    ap.add_argument("--out", type=Path, required=True, help="folder for study.json")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL: gpu_study --device cuda: no CUDA GPU is visible", flush=True)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    study = run_study(args.work, args.device, args.out / "study.json")
    print(f"study: {len(study.checks) - len(study.failed)}/{len(study.checks)} checks passed "
          f"in {time.monotonic() - t0:.1f} s", flush=True)
    return 1 if study.failed else 0


if __name__ == "__main__":
    sys.exit(main())
