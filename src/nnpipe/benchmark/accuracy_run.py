"""The runs behind ``python -m nnpipe.benchmark.accuracy_compare``: both tools' chains, the
recipe each trains with, and the markdown table. Translation, scoring and v2's generated
trainer live in :mod:`nnpipe.benchmark.accuracy_compare`."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from nnpipe.benchmark.accuracy_compare import (
    DATASET,
    DATASET_ID,
    NNPIPE_PLANS,
    V2_CONFIG,
    V2_PLANS,
    Options,
    Runner,
    convert_dataset,
    dice_summary,
    install_trainer,
    nnpipe_epoch_times,
    plan_from_v2,
    score_fold,
    step_seconds,
    steps_for_budget,
    study_yaml,
    v2_epoch_times,
    v2_plans_for,
)
from nnpipe.benchmark.preprocess_compare import plan_differences
from nnpipe.config import TrainingSettings, study_config
from nnpipe.data.augment import AugmentSettings
from nnpipe.io import read_json, write_json
from nnpipe.planning.plan import Plan

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
           "nnunetv2_s": run.v2("v2-preprocess", "nnUNetv2_preprocess", "-d", str(DATASET_ID),
                                "-plans_name", v2_plans, "-c", V2_CONFIG[o.dim], "-np",
                                str(o.workers))}
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
    tables: dict[str, list[pd.DataFrame]] = {"nnpipe": [], "nnunetv2": []}
    folds, walls = [], {"nnpipe_train_s": 0.0, "nnpipe_predict_s": 0.0, "nnunetv2_train_s": 0.0}
    for fold in o.folds:
        r = _train_both(o, run, s, plan, v2_plans, fold, steps, "run")
        pred = nn / f"predict-{o.plan}-{o.dim}d-{steps['nnpipe']}steps" / f"fold{fold}"
        t_pred = run.nnpipe(f"nnpipe-predict-{fold}", "predict", "--config", str(s["cfg_path"]),
                            "--model", str(r["nnpipe_dir"]), "--raw", str(s["raw"]), "--splits",
                            str(s["splits"]), "--fold", str(fold), "--out", str(pred),
                            "--device", o.device, "--threads", str(o.threads))
        row: dict[str, Any] = {"fold": fold}
        for tool, folder in (("nnpipe", pred), ("nnunetv2", r["v2_dir"] / "validation")):
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
    for tool in ("nnpipe", "nnunetv2"):
        d = rec["dice"][tool]
        lines.append(f"| {tool} | {rec['steps'][tool]} | {train[tool]} | "
                     + " | ".join(str(d["per_class"][c]) for c in classes)
                     + f" | {d['mean']} | {d['cases']} |")
    if rec["probe"]:
        lines.append(f"\nbudget {rec['budget_s']} s; step seconds from a "
                     f"{rec['probe']['steps']}-step probe: {rec['probe']['step_s']}")
    return "\n".join(lines)
