"""Fine-tuning against training from scratch, on two related embedded datasets.

Not part of CI (a few minutes of training on a CPU). Shown, not asserted: does a small
dataset reach its from-scratch Dice in fewer steps when it starts from a model trained on a
larger related one? Every step is the ``nnpipe`` CLI a user would run::

    python benchmarks/finetune_compare.py --work /tmp/ft

1. *pretrain*: the embedded generator, ``--pretrain-cases`` cases (seed 0), 3D, fold 0;
2. *target*: the generator with another seed and voxel size (``--target-cases`` cases), the
   same channels; three fold-0 runs of the same length:
   * ``scratch``: its own automatic plan, random weights;
   * ``scratch-like``: the pretrained model's plan (``planning.like``), random weights;
   * ``finetune``: ``planning.like`` and ``training.init_weights`` (warm-up included).

The table gives, per run, the validation Dice (``metrics.csv``: fixed patches of the fold's
validation cases) after each quarter of the run, the step at which it first reaches the
``scratch`` run's final validation Dice, and the Dice of its fold-0 predictions in original
space (``nnpipe predict`` + ``nnpipe evaluate``, mean over classes and cases).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def _nnpipe(*args: str) -> None:
    cmd = [sys.executable, "-m", "nnpipe", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")


def _prepare(root: Path, cfg: dict[str, Any], configuration: str = "3d") -> dict[str, Path]:
    """Download (generate), fingerprint, plan, preprocess and split one dataset."""
    cj = json.dumps(cfg)
    raw, fp, plan = root / "raw", root / "fingerprint.json", root / f"{configuration}.json"
    pre, splits = root / "preprocessed", root / "splits.json"
    if not (raw / "dataset.json").is_file():
        _nnpipe("download", "--config-json", cj, "--out", str(raw))
    if not fp.is_file():
        _nnpipe("fingerprint", "--raw", str(raw), "--out", str(fp), "--workers", "2")
    if not plan.is_file():
        _nnpipe("plan", "--config-json", cj, "--fingerprint", str(fp), "--configuration",
                configuration, "--out", str(plan))
    if not (pre / "manifest.json").is_file():
        _nnpipe("preprocess", "--config-json", cj, "--raw", str(raw), "--plan", str(plan),
                "--out", str(pre))
    if not splits.is_file():
        _nnpipe("split", "--raw", str(raw), "--out", str(splits))
    return {"raw": raw, "pre": pre, "splits": splits}


def _train_and_score(data: dict[str, Path], cfg: dict[str, Any], out: Path,
                     threads: int) -> dict[str, Any]:
    cj = json.dumps(cfg)
    if not (out / "final.pt").is_file():
        _nnpipe("train", "--config-json", cj, "--preprocessed", str(data["pre"]), "--splits",
                str(data["splits"]), "--fold", "0", "--precision", "fp32", "--threads",
                str(threads), "--out", str(out))
    pred = out.parent / f"{out.name}-pred"
    if not (out.parent / f"{out.name}-eval.csv").is_file():
        _nnpipe("predict", "--model", str(out / "final.pt"), "--raw", str(data["raw"]),
                "--splits", str(data["splits"]), "--fold", "0", "--out", str(pred),
                "--threads", str(threads))
        _nnpipe("evaluate", "--pred", str(pred), "--raw", str(data["raw"]), "--splits",
                str(data["splits"]), "--fold", "0", "--out",
                str(out.parent / f"{out.name}-eval.csv"),
                "--summary", str(out.parent / f"{out.name}-summary.json"))
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((out.parent / f"{out.name}-summary.json").read_text())
    return {"curve": [float(r["val_dice_mean"]) for r in rows], "summary": summary}


def _mean_dice(summary: dict[str, Any]) -> float:
    """The summary's foreground mean Dice (mean over cases of the per-case class means)."""
    return float(summary["foreground_mean"]["dice"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="working folder (resumable)")
    p.add_argument("--pretrain-cases", type=int, default=20)
    p.add_argument("--target-cases", type=int, default=6)
    p.add_argument("--epochs", type=int, default=24, help="epochs of every run")
    p.add_argument("--steps-per-epoch", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    base = {"planning": {"max_patch_voxels_3d": 32768, "base_filters": 8, "max_batch_size": 8,
                         "batch_voxels_3d": 65536, "cascade": "off"},
            "training": {"epochs": a.epochs, "steps_per_epoch": a.steps_per_epoch,
                         "val_patches": 8, "learning_rate": 0.003}}
    src_cfg = {**base, "dataset": {"name": "pretrain", "source": "embedded", "embedded": {
        "n_train": a.pretrain_cases, "n_test": 0, "seed": 0, "resolution_mm": 3.0}}}
    pre = _prepare(a.work / "pretrain", src_cfg)
    _train_and_score(pre, src_cfg, a.work / "pretrain" / "run", a.threads)
    model = str(a.work / "pretrain" / "run" / "final.pt")

    tgt = {"name": "target", "source": "embedded", "embedded": {
        "n_train": a.target_cases, "n_test": 0, "seed": 11, "resolution_mm": 3.5}}
    liked = {**base, "dataset": tgt, "planning": {**base["planning"], "like": model}}
    runs = {
        "scratch": (_prepare(a.work / "target-own", {**base, "dataset": tgt}),
                    {**base, "dataset": tgt}),
        "scratch-like": (_prepare(a.work / "target-like", liked), liked),
        "finetune": (_prepare(a.work / "target-like", liked),
                     {**liked, "training": {**base["training"], "init_weights": model}}),
    }
    results = {name: _train_and_score(data, cfg, a.work / "runs" / name, a.threads)
               for name, (data, cfg) in runs.items()}
    target = results["scratch"]["curve"][-1]
    spe = a.steps_per_epoch
    quarters = [max(1, round(a.epochs * q / 4)) for q in (1, 2, 3, 4)]
    print(f"target: {a.target_cases} cases; pretrain: {a.pretrain_cases} cases; "
          f"{a.epochs} epochs x {spe} steps per run; fold 0\n")
    print("| run | " + " | ".join(f"val Dice @ step {e * spe}" for e in quarters)
          + " | steps to scratch's final val Dice | fold-0 Dice (original space) |")
    print("|---|" + "---|" * (len(quarters) + 2))
    for name, r in results.items():
        curve = r["curve"]
        reached = next((i + 1 for i, d in enumerate(curve) if d >= target), None)
        cells = " | ".join(f"{curve[e - 1]:.3f}" for e in quarters)
        print(f"| {name} | {cells} | {reached * spe if reached else 'not reached'} | "
              f"{_mean_dice(r['summary']):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
