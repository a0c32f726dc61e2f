"""Accuracy against nnU-Net v2: both tools trained on the same cases, scored by one evaluator.

Not part of CI: it needs nnU-Net v2 in its own virtual environment (as ``predict_compare``
and ``preprocess_compare`` do) and trains networks. Two modes::

    # same plan in both tools (``--plan nnunetv2``: v2's default plan, ``nnpipe``: ours),
    # same optimizer steps (--steps = epochs x --steps-per-epoch in both)
    python -m benchmarks.accuracy_compare --dim 3 --folds 0 --steps 300 --plan nnunetv2
    # each tool its own default plan, the same training wall-clock budget in seconds
    python -m benchmarks.accuracy_compare --dim 2 --folds 0 --budget-s 600

What is shared: the raw dataset (``nnpipe download`` of ``--config``; converted once to v2's
raw layout), the split (nnpipe's ``splits.json`` written as v2's ``splits_final.json``, the
same list of ``{"train", "val"}`` per fold), the held-out cases, the inference settings
(step 0.5, Gaussian tiles, mirroring TTA over all axes: v2's end-of-training validation,
nnpipe ``predict`` with ``tta: true``) and the scoring (nnpipe's evaluator, original space,
on both prediction folders).

How v2 is configured at run time (nothing of v2's code enters nnpipe):

* the plan: ``--plan nnpipe`` writes ``nnpipePlans.json`` beside v2's own plans: a copy of
  v2's default plans whose configuration takes nnpipe's spacing, patch, kernels, strides,
  filters, batch and normalization (axes reversed into SimpleITK's (z, y, x); a 2D plan's
  slice axis first, :func:`v2_transpose`). ``--plan nnunetv2`` translates v2's default
  configuration back into an nnpipe :class:`~nnpipe.planning.plan.Plan` (:func:`plan_from_v2`).
* the steps: v2's shipped short trainers (``nnUNetTrainer_1epoch``, ``_5epochs``,
  ``_10epochs``, ... in ``variants/training_length``) keep 250 steps per epoch, so 300 steps
  cannot be set with them. A four-line subclass of ``nnUNetTrainer`` that sets
  ``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch`` is
  generated into the v2 venv's ``nnunetv2/training/nnUNetTrainer/`` (v2 finds trainers by
  class name in that package) and named with ``-tr``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.preprocess_compare import plan_differences, run_measured, to_nnunetv2
from nnpipe.config import TrainingSettings, study_config
from nnpipe.data.augment import AugmentSettings
from nnpipe.io import read_json, write_json
from nnpipe.metrics import nanmean
from nnpipe.planning.plan import Plan

DATASET_ID = 998
DATASET = f"Dataset{DATASET_ID}_nnpipeAccuracy"
NNPIPE_PLANS = "nnpipePlans"  # v2 plans name of the plan translated from nnpipe's
V2_PLANS = "nnUNetPlans"  # v2's default plans name
V2_CONFIG = {2: "2d", 3: "3d_fullres"}

# nnpipe's normalization schemes as v2's (normalization scheme, use_mask_for_norm)
_NORM_TO_V2 = {"zscore_nonzero": ("ZScoreNormalization", True),
               "zscore": ("ZScoreNormalization", False), "ct": ("CTNormalization", False)}


# ----------------------------------------------------------------- dataset and split


def write_v2_splits(splits: Sequence[dict[str, list[str]]], dest: Path) -> Path:
    """Write nnpipe's folds as v2's ``splits_final.json`` (the same list of train/val dicts,
    fold ``i`` at index ``i``, which is how v2 picks ``fold``)."""
    for i, fold in enumerate(splits):
        if set(fold) != {"train", "val"}:
            raise ValueError(f"fold {i} of the split has keys {sorted(fold)}; need train, val")
        both = set(fold["train"]) & set(fold["val"])
        if both:
            raise ValueError(f"fold {i}: cases {sorted(both)} are in both train and val")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "splits_final.json"
    write_json(out, [{"train": list(f["train"]), "val": list(f["val"])} for f in splits])
    return out


def convert_dataset(raw: Path, splits_json: Path, nnunet_root: Path,
                    dataset: str = DATASET) -> int:
    """nnpipe's raw dataset and split into v2's folders under ``nnunet_root``:
    ``nnUNet_raw/<dataset>/{imagesTr,labelsTr,dataset.json}`` and
    ``nnUNet_preprocessed/<dataset>/splits_final.json``. Returns the training case count."""
    n = to_nnunetv2(raw, nnunet_root / "nnUNet_raw" / dataset)
    write_v2_splits(read_json(splits_json), nnunet_root / "nnUNet_preprocessed" / dataset)
    return n


# ----------------------------------------------------------------- plan translation


def v2_transpose(dim: int, slice_axis: int | None) -> list[int]:
    """v2's ``transpose_forward`` for an nnpipe plan. v2's arrays are SimpleITK's (z, y, x),
    so nnpipe axis ``a`` is v2 axis ``2 - a``; v2's 2D network slices along transposed axis 0,
    so a 2D plan's slice axis goes first."""
    if dim == 3:
        return [0, 1, 2]
    if slice_axis is None:
        raise ValueError("a 2D plan needs slice_axis to be translated for nnU-Net v2")
    first = 2 - slice_axis
    return [first] + [a for a in (0, 1, 2) if a != first]


def to_v2_axes(values: Sequence[Any], axes: Sequence[int], tf: Sequence[int]) -> list[Any]:
    """Per-axis ``values`` on nnpipe voxel axes ``axes`` -> v2's order, the last
    ``len(axes)`` transposed axes (2D: the two in-plane ones)."""
    by_axis = dict(zip(axes, values, strict=True))
    return [by_axis[2 - t] for t in tf[3 - len(axes):]]


def from_v2_axes(values: Sequence[Any], tf: Sequence[int]) -> tuple[Any, ...]:
    """Inverse of :func:`to_v2_axes`: v2 per-axis values -> nnpipe's increasing axis order."""
    axes = [2 - t for t in tf[3 - len(values):]]
    return tuple(v for _, v in sorted(zip(axes, values, strict=True)))


def v2_configuration(plan: Plan, template: dict[str, Any], tf: Sequence[int]) -> dict[str, Any]:
    """v2's configuration entry for ``plan``: v2's own ``template`` entry of the same dimension
    (its resampling and network class) with nnpipe's geometry, topology, batch and
    normalization. ``tf``: the plans' ``transpose_forward`` (:func:`v2_transpose`)."""
    axes = plan.in_plane_axes
    try:
        norms = [_NORM_TO_V2[n.scheme] for n in plan.channel_norms]
    except KeyError as exc:
        raise ValueError(f"plan {plan.dataset!r} {plan.dim}D: normalization {exc} has no "
                         f"nnU-Net v2 counterpart (known: {sorted(_NORM_TO_V2)})") from None
    if plan.network != "plain":
        raise ValueError(f"plan network {plan.network!r}: only the plain U-Net has a v2 "
                         "PlainConvUNet counterpart")
    cfg = copy.deepcopy(template)
    n = len(plan.strides)
    median = [plan.median_shape[a] for a in axes] if plan.median_shape else plan.patch_size
    cfg.update(
        data_identifier=f"{NNPIPE_PLANS}_{V2_CONFIG[plan.dim]}", batch_size=plan.batch_size,
        patch_size=to_v2_axes(plan.patch_size, axes, tf),
        median_image_size_in_voxels=to_v2_axes(median, axes, tf),
        spacing=to_v2_axes(plan.spacing, axes, tf),
        normalization_schemes=[s for s, _ in norms], use_mask_for_norm=[m for _, m in norms],
        # nnpipe's Dice is pooled over the batch (nnpipe.training.loss.DiceCELoss)
        batch_dice=True)
    cfg["architecture"]["arch_kwargs"].update(
        n_stages=n, features_per_stage=list(plan.filters),
        kernel_sizes=[to_v2_axes(k, axes, tf) for k in plan.kernels],
        strides=[to_v2_axes(s, axes, tf) for s in plan.strides],
        n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
    return cfg


def v2_plans_for(plan: Plan, default_plans: dict[str, Any]) -> dict[str, Any]:
    """v2 plans named :data:`NNPIPE_PLANS` holding one configuration, ``plan``'s, built on
    the default configuration of its dimension in ``default_plans`` (v2's own plans)."""
    name = V2_CONFIG[plan.dim]
    if name not in default_plans["configurations"]:
        raise ValueError(f"nnU-Net v2's plans have no {name!r} configuration to build on")
    tf = v2_transpose(plan.dim, plan.slice_axis)
    plans = copy.deepcopy(default_plans)
    plans.update(plans_name=NNPIPE_PLANS, transpose_forward=tf,
                 transpose_backward=[tf.index(i) for i in range(3)],
                 configurations={name: v2_configuration(
                     plan, default_plans["configurations"][name], tf)})
    return plans


def plan_from_v2(plans: dict[str, Any], config: str, base: Plan) -> Plan:
    """nnpipe's ``base`` plan with v2 configuration ``config``'s spacing, patch, kernels,
    strides, filters and batch. Labels, channels and normalization stay ``base``'s. A 2D
    configuration keeps ``base``'s spacing along the slice axis (v2 does not resample it)."""
    cfg = plans["configurations"][config]
    arch = cfg["architecture"]
    kw = arch["arch_kwargs"]
    n = kw["n_stages"]
    if not arch["network_class_name"].endswith(".PlainConvUNet"):
        raise ValueError(f"v2 configuration {config!r}: network {arch['network_class_name']!r}"
                         " has no nnpipe counterpart (only PlainConvUNet)")
    if list(kw["n_conv_per_stage"]) != [2] * n or \
            list(kw["n_conv_per_stage_decoder"]) != [2] * (n - 1):
        raise ValueError(f"v2 configuration {config!r}: convolutions per stage "
                         f"{kw['n_conv_per_stage']} / {kw['n_conv_per_stage_decoder']}; "
                         "nnpipe's U-Net has two per stage")
    tf = plans["transpose_forward"]
    dim = len(cfg["patch_size"])
    if dim != base.dim:
        raise ValueError(f"v2 configuration {config!r} is {dim}D, the nnpipe plan {base.dim}D")
    slice_axis = None if dim == 3 else 2 - tf[0]
    spacing = tuple(float(v) for v in from_v2_axes(cfg["spacing"], tf))
    full = list(base.full_spacing)
    in_plane = (0, 1, 2) if dim == 3 else tuple(a for a in range(3) if a != slice_axis)
    for a, v in zip(in_plane, spacing, strict=True):
        full[a] = v
    return replace(
        base, spacing=spacing, full_spacing=(full[0], full[1], full[2]),
        patch_size=tuple(int(v) for v in from_v2_axes(cfg["patch_size"], tf)),
        kernels=tuple(tuple(int(v) for v in from_v2_axes(k, tf)) for k in kw["kernel_sizes"]),
        strides=tuple(tuple(int(v) for v in from_v2_axes(s, tf)) for s in kw["strides"]),
        filters=tuple(int(f) for f in kw["features_per_stage"]),
        batch_size=int(cfg["batch_size"]), slice_axis=slice_axis, network="plain",
        encoder_blocks=(), notes=(*base.notes, f"geometry, topology and batch from nnU-Net "
                                               f"v2's plans {plans.get('plans_name')}/{config}"))


# ----------------------------------------------------------------- scoring


def score_fold(pred_dir: Path, raw: Path, splits_json: Path, fold: int,
               out_csv: Path) -> dict[str, Any]:
    """Score one fold's validation predictions with nnpipe's evaluator (original space); return
    the mean Dice per class and the foreground mean (nnpipe's metric conventions)."""
    from nnpipe.evaluation.run import evaluate_fold

    table = evaluate_fold(pred_dir, raw, splits_json, fold, out_csv)
    return dice_summary(table)


def dice_summary(table: Any) -> dict[str, Any]:
    """``{"per_class": {name: mean Dice}, "mean": foreground mean, "cases": n}`` of an
    evaluation table (or of several folds' tables concatenated)."""
    names = [c[len("dice_"):] for c in table.columns
             if c.startswith("dice_") and c != "dice_mean"]
    return {"per_class": {n: _round(nanmean(table[f"dice_{n}"])) for n in names},
            "mean": _round(nanmean(table["dice_mean"])), "cases": int(len(table))}


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(100 * float(v), 2)


# ----------------------------------------------------------------- v2 at run time


def trainer_source(name: str, epochs: int, steps: int, val_steps: int) -> str:
    """The generated v2 trainer: v2's defaults, with the step counts set before v2 builds
    its optimizer and schedule (both read ``num_epochs`` in ``initialize``)."""
    return (f'"""Generated by benchmarks.accuracy_compare: {epochs} epochs x {steps} '
            f'steps, {val_steps} validation steps per epoch."""\n'
            "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
            f"class {name}(nnUNetTrainer):\n"
            "    def initialize(self):\n"
            f"        self.num_epochs = {epochs}\n"
            f"        self.num_iterations_per_epoch = {steps}\n"
            f"        self.num_val_iterations_per_epoch = {val_steps}\n"
            "        super().initialize()\n")


def install_trainer(venv: Path, epochs: int, steps: int, val_steps: int) -> str:
    """Write the generated trainer into the v2 venv; return its class name (for ``-tr``)."""
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    # Beside nnUNetTrainer.py, not in a sub-package: v2 looks a class name up in the modules of
    # that folder before it imports its sub-packages, and importing those (primus: timm ->
    # torchvision) fails in a venv whose torchvision wheel does not match the CPU torch.
    folder = Path(where) / "training" / "nnUNetTrainer"
    name = f"nnUNetTrainer_nnpipe_{epochs}x{steps}v{val_steps}"
    (folder / f"{name}.py").write_text(trainer_source(name, epochs, steps, val_steps))
    return name


def v2_epoch_times(fold_dir: Path) -> list[float]:
    """Seconds per epoch from v2's training log (its "Epoch time: X s" lines)."""
    times: list[float] = []
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        times += [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]
    return times


def nnpipe_epoch_times(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "metrics.csv") as f:
        return [float(row["epoch_time_s"]) for row in csv.DictReader(f)]


def step_seconds(epoch_times: Sequence[float], steps_per_epoch: int) -> float:
    """Seconds per step: the fastest epoch after the first (warm-up), over its steps.

    The fastest, not the median: on a shared machine other work only ever slows an epoch
    down, and one slowed probe epoch would otherwise cut a tool's budgeted steps (a probe
    epoch of nnpipe's 2D demo plan measured 17 s under load against 0.4 s quiet).
    """
    if not epoch_times:
        raise ValueError("no epoch times to measure a step time from")
    rest = list(epoch_times[1:]) or list(epoch_times)
    return min(rest) / steps_per_epoch


def steps_for_budget(budget_s: float, step_s: float, steps_per_epoch: int) -> int:
    """Whole epochs of ``steps_per_epoch`` that fit in ``budget_s``, at least one."""
    return max(1, int(budget_s / step_s) // steps_per_epoch) * steps_per_epoch


# ----------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Options:
    work: Path
    venv: Path
    config: Path | None
    dim: int
    folds: tuple[int, ...]
    plan: str  # nnpipe | nnunetv2 | own (each its default; --budget-s)
    steps: int
    steps_per_epoch: int
    budget_s: float
    probe_epochs: int
    device: str
    threads: int
    workers: int
    skip_v2: bool = False  # nnpipe's side only (a before/after of nnpipe's own changes)


class Runner:
    """Both tools' commands, logged under ``work/logs``, with wall time and peak RSS."""

    def __init__(self, o: Options) -> None:
        self.o = o
        self.logs = o.work / "logs" / f"{o.plan}-{o.dim}d"  # runs may share a work folder
        self.logs.mkdir(parents=True, exist_ok=True)
        self.v2_root = o.work / "nnunetv2"
        base = {**os.environ, "OMP_NUM_THREADS": str(o.threads)}
        self.env = base
        self.v2_env = {**base, "nnUNet_raw": str(self.v2_root / "nnUNet_raw"),
                       "nnUNet_preprocessed": str(self.v2_root / "nnUNet_preprocessed"),
                       "nnUNet_results": str(self.v2_root / "nnUNet_results"),
                       "nnUNet_n_proc_DA": str(o.workers), "nnUNet_def_n_proc": str(o.workers),
                       "nnUNet_compile": "f"}

    def nnpipe(self, log: str, *args: str) -> float:
        cmd = [sys.executable, "-m", "nnpipe", *args]
        return round(run_measured([cmd], self.env, self.logs / f"{log}.log")[0], 1)

    def v2(self, log: str, tool: str, *args: str) -> float:
        cmd = [str(self.o.venv / "bin" / tool), *args]
        return round(run_measured([cmd], self.v2_env, self.logs / f"{log}.log")[0], 1)


def study_yaml(config: Path | None, steps_per_epoch: int) -> dict[str, Any]:
    """The study config both tools' settings are read from, with the comparison's fixed
    inference settings (v2's validation: step 0.5, Gaussian, all-axis mirroring)."""
    raw = yaml.safe_load(config.read_text()) or {} if config else {}
    raw.setdefault("training", {})["steps_per_epoch"] = steps_per_epoch
    raw.setdefault("inference", {}).update(overlap=0.5, blend="gaussian", tta=True)
    return raw


# nnU-Net v2's default recipe, each value with where it is set (nnunetv2 2.x source, module
# paths under nnunetv2/; also described in its documentation). The run reads the first block
# back from the installed trainer (v2_installed_defaults) and flags a difference.
TRAINER = "training/nnUNetTrainer/nnUNetTrainer.py"
V2_RECIPE: list[tuple[str, str, str]] = [
    ("optimizer", "SGD, Nesterov, momentum 0.99", f"{TRAINER} configure_optimizers"),
    ("learning rate", "0.01", f"{TRAINER} __init__ initial_lr"),
    ("weight decay", "3e-05", f"{TRAINER} __init__ weight_decay"),
    ("schedule", "poly (1 - epoch/epochs)^0.9, stepped per epoch",
     "training/lr_scheduler/polylr.py; on_epoch_start"),
    ("foreground oversampling", "0.33: the last round(0.33 B) samples of each batch of B",
     f"{TRAINER} __init__ oversample_foreground_percent; "
     "training/dataloading/data_loader.py _oversample_last_XX_percent"),
    ("loss", "soft Dice (foreground, smooth 1e-5, batch_dice from the plans) + CE, 1:1",
     f"{TRAINER} _build_loss (DC_and_CE_loss)"),
    ("deep supervision", "heads weighted 1/2^i, lowest-resolution head 0, normalized",
     f"{TRAINER} _build_loss"),
    ("spatial augmentation", "rotation p 0.2 (3D ±30°, 2D ±180°), scaling p 0.2 (0.7-1.4), "
     "no elastic", f"{TRAINER} get_training_transforms, configure_rotation_dummyDA_mirroring"),
    ("intensity augmentation", "noise p 0.1 (var 0-0.1), blur p 0.2 (σ 0.5-1), brightness p "
     "0.15 (0.75-1.25), contrast p 0.15 (0.75-1.25), low-res p 0.25 (0.5-1), inverted gamma "
     "p 0.1, gamma p 0.3 (0.7-1.5)", f"{TRAINER} get_training_transforms"),
    ("mirroring", "each axis p 0.5", f"{TRAINER} get_training_transforms (MirrorTransform)"),
    ("precision", "fp32 on CPUs (autocast on CUDA only)", f"{TRAINER} train_step"),
]


def v2_installed_defaults(venv: Path) -> dict[str, str]:
    """The default trainer's hyperparameters as the installed nnunetv2 sets them (read from
    its source with ``inspect``, in its own venv), and its version."""
    code = (
        "import inspect, json, re\n"
        "from importlib.metadata import version\n"
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as T\n"
        "src = inspect.getsource(T.__init__)\n"
        "keys = ['initial_lr', 'weight_decay', 'oversample_foreground_percent',\n"
        "        'num_iterations_per_epoch', 'num_val_iterations_per_epoch', 'num_epochs']\n"
        "out = {k: m.group(1).strip() for k in keys\n"
        "       if (m := re.search(r'self\\.' + k + r' = ([^\\n#]+)', src))}\n"
        "m = re.search(r'momentum=([0-9.]+)', inspect.getsource(T.configure_optimizers))\n"
        "out['momentum'] = m.group(1) if m else '?'\n"
        "out['version'] = version('nnunetv2')\n"
        "print(json.dumps(out))\n")
    res = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True)
    return dict(json.loads(res.stdout))


def recipe_rows(s: TrainingSettings, installed: dict[str, str] | None
                ) -> list[tuple[str, str, str, str]]:
    """(setting, nnpipe, nnU-Net v2, where v2's value comes from), one row per difference
    that can move accuracy. nnpipe's column is read from the study config in force."""
    a = AugmentSettings.from_names(s.augment, s.extra_augmentations)
    on = a.enabled
    schedule = "constant" if s.optimizer == "adam" else "poly (1 - step/steps)^0.9 per step"
    ours = {
        "optimizer": "Adam" if s.optimizer == "adam" else "SGD, Nesterov, momentum 0.99",
        "learning rate": f"{s.learning_rate:g}", "weight decay": f"{s.weight_decay:g}",
        "schedule": schedule,
        "foreground oversampling": f"{s.foreground_prob:g} per patch",
        "loss": "soft Dice (foreground, pooled over the batch, smooth 1e-5) + CE, 1:1",
        "deep supervision": ("heads weighted 1/2^i, normalized" if s.deep_supervision
                             else "off"),
        "spatial augmentation": (f"zoom p {a.zoom_prob:g} ({a.zoom_range[0]:g}-"
                                 f"{a.zoom_range[1]:g}), rotation p {a.rotation_prob:g}, "
                                 f"scaling p {a.scaling_prob:g}") if on else "off",
        "intensity augmentation": (
            f"noise p {a.noise_prob:g} (σ {a.noise_std[0]:g}-{a.noise_std[1]:g}), blur p "
            f"{a.blur_prob:g}, brightness p {a.brightness_prob:g} ({a.brightness_range[0]:g}-"
            f"{a.brightness_range[1]:g}), contrast p {a.contrast_prob:g}, low-res p "
            f"{a.lowres_prob:g}, inverted gamma p {a.gamma_inverted_prob:g}, gamma p "
            f"{a.gamma_prob:g}") if on else "off",
        "mirroring": f"each axis p {a.flip_prob:g}" if on else "off",
        "precision": "fp32 (the run's precision)",
    }
    rows = [(name, ours[name], value, where) for name, value, where in V2_RECIPE]
    if installed:
        got = (f"lr {installed.get('initial_lr')}, wd {installed.get('weight_decay')}, "
               f"momentum {installed.get('momentum')}, oversampling "
               f"{installed.get('oversample_foreground_percent')}")
        rows.append(("v2 installed", "", got, f"read from nnunetv2 {installed.get('version')}"))
    return rows


def _setup(o: Options, run: Runner) -> dict[str, Any]:
    """Raw data, nnpipe's fingerprint, plan and split, v2's converted dataset and its plans."""
    nn = o.work / "nnpipe"
    nn.mkdir(parents=True, exist_ok=True)
    cfg_raw = study_yaml(o.config, o.steps_per_epoch)
    cfg_path = nn / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_raw))
    cfg = study_config(cfg_raw)
    raw = o.work / "raw"
    if not (raw / "dataset.json").is_file():
        run.nnpipe("nnpipe-download", "download", "--config", str(cfg_path), "--out", str(raw))
    if not (nn / "fingerprint.json").is_file():
        run.nnpipe("nnpipe-fingerprint", "fingerprint", "--raw", str(raw), "--workers",
                   str(o.workers), "--out", str(nn / "fingerprint.json"))
    own = nn / f"plan-nnpipe-{o.dim}d.json"
    run.nnpipe("nnpipe-plan", "plan", "--config", str(cfg_path), "--fingerprint",
               str(nn / "fingerprint.json"), "--dim", str(o.dim), "--out", str(own))
    splits = nn / "splits.json"
    if not splits.is_file():
        run.nnpipe("nnpipe-split", "split", "--raw", str(raw), "--out", str(splits))
    convert_dataset(raw, splits, run.v2_root)
    default = run.v2_root / "nnUNet_preprocessed" / DATASET / f"{V2_PLANS}.json"
    if not default.is_file():
        run.v2("v2-plan", "nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "--no_pp",
               "-npfp", str(o.workers))
    return {"raw": raw, "splits": splits, "cfg_path": cfg_path, "cfg": cfg,
            "own_plan": Plan.load(own), "v2_default": read_json(default)}


def _plans(o: Options, s: dict[str, Any]) -> tuple[Path, str]:
    """The plan each tool trains with: nnpipe's plan file, v2's plans name."""
    own: Plan = s["own_plan"]
    nn_plan = o.work / "nnpipe" / f"plan-{o.plan}-{o.dim}d.json"
    if o.plan == "nnpipe":
        plans = v2_plans_for(own, s["v2_default"])
        write_json(o.work / "nnunetv2" / "nnUNet_preprocessed" / DATASET /
                   f"{NNPIPE_PLANS}.json", plans)
        own.save(nn_plan)
        return nn_plan, NNPIPE_PLANS
    if o.plan == "nnunetv2":
        plan_from_v2(s["v2_default"], V2_CONFIG[o.dim], own).save(nn_plan)
        return nn_plan, V2_PLANS
    own.save(nn_plan)
    return nn_plan, V2_PLANS


def _train_both(o: Options, run: Runner, s: dict[str, Any], plan: Path, v2_plans: str,
                fold: int, steps: dict[str, int], tag: str) -> dict[str, Any]:
    """Train both tools on ``fold`` (``steps`` per tool); return walls and folders."""
    spe, cfg_path, nn = o.steps_per_epoch, s["cfg_path"], o.work / "nnpipe"
    dev = ["--cpu"] if o.device == "cpu" else []
    out = nn / f"{tag}-{o.plan}-{o.dim}d-{steps['nnpipe']}steps" / f"fold{fold}"
    t_nn = run.nnpipe(f"nnpipe-train-{tag}-{fold}", "train", "--config", str(cfg_path),
                      "--preprocessed", str(nn / f"pre-{o.plan}-{o.dim}d"), "--splits",
                      str(s["splits"]), "--fold", str(fold), "--out", str(out), "--epochs",
                      str(steps["nnpipe"] // spe), "--threads", str(o.threads), *dev)
    cfg: TrainingSettings = s["cfg"].training
    plan_obj = Plan.load(plan)
    val = max(1, math.ceil(cfg.val_patches / (cfg.batch_size or plan_obj.batch_size)))
    if o.skip_v2:
        return {"nnpipe_dir": out, "nnpipe_wall_s": t_nn, "v2_dir": None, "v2_wall_s": 0.0,
                "v2_trainer": None}
    trainer = install_trainer(o.venv, steps["nnunetv2"] // spe, spe, val)
    config = V2_CONFIG[o.dim]
    t_v2 = run.v2(f"v2-train-{tag}-{fold}", "nnUNetv2_train", str(DATASET_ID), config,
                  str(fold), "-tr", trainer, "-p", v2_plans, "-device", o.device)
    v2_fold = (run.v2_root / "nnUNet_results" / DATASET / f"{trainer}__{v2_plans}__{config}"
               / f"fold_{fold}")
    return {"nnpipe_dir": out, "nnpipe_wall_s": t_nn, "v2_dir": v2_fold, "v2_wall_s": t_v2,
            "v2_trainer": trainer}


def run_comparison(o: Options) -> dict[str, Any]:
    """Everything: setup, preprocessing, (probes,) training, prediction, scoring."""
    run = Runner(o)
    s = _setup(o, run)
    plan, v2_plans = _plans(o, s)
    nn = o.work / "nnpipe"
    pre = {"nnpipe_s": run.nnpipe("nnpipe-preprocess", "preprocess", "--config",
                                  str(s["cfg_path"]), "--raw", str(s["raw"]), "--plan",
                                  str(plan), "--out", str(nn / f"pre-{o.plan}-{o.dim}d"),
                                  "--workers", str(o.workers)),
           "nnunetv2_s": None if o.skip_v2 else run.v2(
               "v2-preprocess", "nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name",
               v2_plans, "-c", V2_CONFIG[o.dim], "-np", str(o.workers))}
    steps = {"nnpipe": o.steps, "nnunetv2": o.steps}
    probe: dict[str, Any] = {}
    if o.budget_s > 0:
        probe_steps = o.probe_epochs * o.steps_per_epoch
        r = _train_both(o, run, s, plan, v2_plans, o.folds[0],
                        {"nnpipe": probe_steps, "nnunetv2": probe_steps}, "probe")
        step_s = {"nnpipe": step_seconds(nnpipe_epoch_times(r["nnpipe_dir"]), o.steps_per_epoch),
                  "nnunetv2": step_seconds(v2_epoch_times(r["v2_dir"]), o.steps_per_epoch)}
        steps = {k: steps_for_budget(o.budget_s, v, o.steps_per_epoch) for k, v in step_s.items()}
        probe = {"steps": probe_steps, "step_s": {k: round(v, 4) for k, v in step_s.items()}}
    tools = ("nnpipe",) if o.skip_v2 else ("nnpipe", "nnunetv2")
    tables: dict[str, list[pd.DataFrame]] = {tool: [] for tool in tools}
    folds, walls = [], {"nnpipe_train_s": 0.0, "nnpipe_predict_s": 0.0, "nnunetv2_train_s": 0.0}
    for fold in o.folds:
        r = _train_both(o, run, s, plan, v2_plans, fold, steps, "run")
        pred = nn / f"predict-{o.plan}-{o.dim}d-{steps['nnpipe']}steps" / f"fold{fold}"
        t_pred = run.nnpipe(f"nnpipe-predict-{fold}", "predict", "--config", str(s["cfg_path"]),
                            "--model", str(r["nnpipe_dir"]), "--raw", str(s["raw"]), "--splits",
                            str(s["splits"]), "--fold", str(fold), "--out", str(pred),
                            "--device", o.device, "--threads", str(o.threads))
        row: dict[str, Any] = {"fold": fold}
        folders = {"nnpipe": pred, "nnunetv2": r["v2_dir"] and r["v2_dir"] / "validation"}
        for tool in tools:
            folder = folders[tool]
            csv = o.work / "scores" / f"{tool}-fold{fold}.csv"
            row[tool] = score_fold(folder, s["raw"], s["splits"], fold, csv)
            tables[tool].append(pd.read_csv(csv))
        walls["nnpipe_train_s"] += r["nnpipe_wall_s"]
        walls["nnpipe_predict_s"] += t_pred
        walls["nnunetv2_train_s"] += r["v2_wall_s"]
        row.update(nnpipe_train_s=r["nnpipe_wall_s"], nnpipe_predict_s=t_pred,
                   nnunetv2_train_and_validation_s=r["v2_wall_s"], v2_trainer=r["v2_trainer"])
        folds.append(row)
    installed = v2_installed_defaults(o.venv)
    v2_plans_dict = read_json(run.v2_root / "nnUNet_preprocessed" / DATASET / f"{v2_plans}.json")
    return {
        "mode": "budget" if o.budget_s > 0 else "steps", "plan": o.plan, "dim": o.dim,
        "folds": list(o.folds), "device": o.device, "threads": o.threads,
        "budget_s": o.budget_s or None, "probe": probe, "steps_per_epoch": o.steps_per_epoch,
        "steps": steps, "preprocess_s": pre, "wall_s": {k: round(v, 1) for k, v in walls.items()},
        "dice": {tool: dice_summary(pd.concat(t, ignore_index=True)) for tool, t in tables.items()},
        "per_fold": folds,
        "plans": plan_differences(v2_plans_dict, {o.dim: read_json(plan)}),
        "recipe": [list(r) for r in recipe_rows(s["cfg"].training, installed)],
        "nnunetv2": installed, "load": _load(),
    }


def _load() -> str:
    """The 1, 5 and 15 minute load averages when the record was made (other work on the
    machine slows both tools' wall times)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def markdown(rec: dict[str, Any]) -> str:
    """The record as markdown: plans, recipe side by side, then the Dice table."""
    lines = [f"## nnpipe vs nnU-Net v2: {rec['dim']}D, plan {rec['plan']}, mode {rec['mode']}"
             f", folds {rec['folds']}, {rec['device']}, load {rec['load']}", "",
             "plans, (X, Y, Z) order:", "```", *rec["plans"], "```", "",
             "| setting | nnpipe | nnU-Net v2 | v2 value from |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rec["recipe"]]
    classes = list(rec["dice"]["nnpipe"]["per_class"])
    lines += ["", "| tool | steps | train s | " + " | ".join(f"Dice {c}" for c in classes)
              + " | mean Dice | cases |", "|---" * (len(classes) + 5) + "|"]
    walls = rec["wall_s"]
    train = {"nnpipe": f"{walls['nnpipe_train_s']} (+{walls['nnpipe_predict_s']} predict)",
             "nnunetv2": f"{walls['nnunetv2_train_s']} (incl. its validation)"}
    for tool in rec["dice"]:
        d = rec["dice"][tool]
        lines.append(f"| {tool} | {rec['steps'][tool]} | {train[tool]} | "
                     + " | ".join(str(d["per_class"][c]) for c in classes)
                     + f" | {d['mean']} | {d['cases']} |")
    if rec["probe"]:
        lines.append(f"\nbudget {rec['budget_s']} s; step seconds from a "
                     f"{rec['probe']['steps']}-step probe: {rec['probe']['step_s']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy_compare",
        description="Train nnpipe and nnU-Net v2 on the same cases and split, predict the "
                    "held-out cases, score both with nnpipe's evaluator (mean Dice per class, "
                    "original space). Prints the recipe differences, the plans and a markdown "
                    "table; writes <work>/accuracy.json. Not part of CI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/nnpipe-accuracy"),
                   help="working folder (raw data, both tools' files, logs, accuracy.json)")
    p.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/nnunetv2-venv"),
                   help="virtual environment with nnunetv2 installed")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"),
                   help="nnpipe study config: dataset, planning and training settings")
    p.add_argument("--dim", type=int, choices=(2, 3), default=3,
                   help="2D or 3D configuration (v2: 2d or 3d_fullres)")
    p.add_argument("--folds", type=int, nargs="+", default=[0],
                   help="folds of nnpipe's splits.json to train and score")
    p.add_argument("--plan", choices=("nnpipe", "nnunetv2"), default="nnunetv2",
                   help="whose default plan both tools use (ignored with --budget-s)")
    p.add_argument("--steps", type=int, default=300,
                   help="optimizer steps of each tool (a multiple of --steps-per-epoch)")
    p.add_argument("--steps-per-epoch", type=int, default=12,
                   help="optimizer steps per epoch of both tools (v2: its generated trainer)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="second mode: each tool its own default plan and this training "
                        "wall-clock budget (steps from a measured step time); 0 = off")
    p.add_argument("--probe-epochs", type=int, default=4,
                   help="--budget-s: epochs of the short run that measures each step time")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both tools train and predict")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of nnpipe (v2 takes every core on CPUs: its "
                        "run_training sets torch.set_num_threads(cpu_count()))")
    p.add_argument("--skip-v2", action="store_true",
                   help="train and score nnpipe only (v2 still plans, for --plan nnunetv2): "
                        "a before/after of a change to nnpipe's own path")
    p.add_argument("--workers", type=int, default=1,
                   help="preprocessing processes of both tools and v2's augmentation "
                        "workers (nnUNet_n_proc_DA)")
    a = p.parse_args(argv)
    if a.skip_v2 and a.budget_s > 0:
        p.error("--budget-s compares both tools; it cannot be used with --skip-v2")
    if a.budget_s <= 0 and a.steps % a.steps_per_epoch:
        p.error(f"--steps {a.steps} is not a multiple of --steps-per-epoch {a.steps_per_epoch}")
    o = Options(a.work, a.nnunet_venv, a.config, a.dim, tuple(a.folds),
                "own" if a.budget_s > 0 else a.plan, a.steps, a.steps_per_epoch, a.budget_s,
                a.probe_epochs, a.device, a.threads, a.workers, a.skip_v2)
    record = run_comparison(o)
    write_json(o.work / "accuracy.json", record)
    print(markdown(record))
    print(f"\nrecord: {o.work / 'accuracy.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
