"""Parity and speed of ``nnpipe predict`` against nnU-Net v2 on real, briefly trained v2 models.

Not part of CI: nnU-Net v2 runs in its own virtual environment (``--nnunet-venv``), as the
other comparisons with v2 do. On any dataset in MSD or v2 raw layout::

    python benchmarks/v2_parity.py --raw /tmp/v2raw/Dataset901_AnisoMR \\
        --configurations 2d 3d_fullres --network plain resenc_m --folds 0 all --tta on off \\
        --work /tmp/parity901 --nnunet-venv /tmp/nnunetv2-venv

1. the dataset is copied (v2 layout) or converted (MSD layout) into ``WORK/nnUNet_raw``;
2. nnU-Net's own commands plan it (``nnUNetv2_extract_fingerprint``,
   ``nnUNetv2_plan_experiment`` with ``ExperimentPlanner`` for ``plain`` and
   ``nnUNetPlannerResEncM`` for ``resenc_m``), preprocess it (``nnUNetv2_preprocess``) and
   train each configuration and fold (``nnUNetv2_train`` with a generated short trainer:
   ``--epochs`` x ``--steps``); existing checkpoints are kept, so a rerun only predicts;
3. the test images (``imagesTs``, else the last ``--cases`` training cases) are predicted by
   ``nnUNetv2_predict --save_probabilities`` and by ``nnpipe predict --model <the v2 model
   folder>``, for each fold set (``0``: fold 0; ``all``: folds 0-4) and TTA setting;
4. stage by stage: v2's preprocessed training arrays against nnpipe's v2 preprocessing of the
   same images, v2's probabilities against nnpipe's (both through nnpipe's v2 Python
   functions, ``nnpipe.v2.predict``, run by ``probe`` below in nnpipe's interpreter), then
   the written label maps: Dice per class, voxel agreement, the gate
   (``benchmarks/v2_compare.py``); a markdown table and ``WORK/v2_parity_<dataset>.json``;
5. ``--speed-repeats N``: the same predict commands without probabilities, ABBA-alternated,
   N times each, on CPU fp32 with TTA on and off, the same thread count (v2 sets
   ``torch.set_num_threads(cpu_count)`` on the CPU; nnpipe gets ``--threads`` = cpu count,
   both ``OMP_NUM_THREADS``), wall time from start to exit, the peak RSS of each
   command's process tree (psutil, every 20 ms), its CPU seconds (``RUSAGE_CHILDREN``) and
   the machine's load average meanwhile; ``--speed-scale S`` times on the test images
   zoomed S times per axis (a CT-sized case), ``--speed-cases N`` on the first N; a
   ``--speed-only`` run writes ``WORK/v2_speed_<dataset>.json``.

nnU-Net is only ever run as a program in its own environment; nothing of it is imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.v2_compare import (  # noqa: E402
    LabelCounts,
    Timing,
    first_parted,
    max_abs_diff,
    parity_table,
    passes_gate,
    speed_rows,
    speed_table,
)

PLANNERS = {"plain": ("ExperimentPlanner", "nnUNetPlans"),
            "resenc_m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans")}
FOLD_SETS = {"0": ["0"], "all": ["0", "1", "2", "3", "4"]}
SAMPLE_S = 0.02

_DUMP_B2ND = """
import sys, numpy as np, blosc2
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    np.save(dst, np.asarray(blosc2.open(src, mode="r")[:]))
"""


# ---------------------------------------------------------------- running commands


def run_measured(cmd: list[str], env: dict[str, str], log: Path,
                 loads: list[float] | None = None, cpu: list[float] | None = None
                 ) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in bytes of its process tree).
    ``loads``: the machine's 1-minute load average, sampled with the RSS, is appended here;
    ``cpu``: the user + system CPU seconds of the whole process tree (every descendant that
    its parent waited for, ``RUSAGE_CHILDREN``), appended here: on a busy machine the wall
    time is mostly waiting for a core, the CPU time much less so.

    Raises:
        RuntimeError: the command failed (naming its log).
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, t0 = 0, time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss = 0
            try:
                for p in [ps, *ps.children(recursive=True)]:
                    rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            peak = max(peak, rss)
            if loads is not None:
                loads.append(os.getloadavg()[0])
            time.sleep(SAMPLE_S)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}); see {log}")
    return wall, peak


@dataclass(frozen=True)
class Tools:
    """Both tools' command lines and environments."""

    work: Path
    venv: Path
    threads: int
    nnpipe_python: str = sys.executable

    @property
    def v2_env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads),
                "nnUNet_raw": str(self.work / "nnUNet_raw"),
                "nnUNet_preprocessed": str(self.work / "nnUNet_preprocessed"),
                "nnUNet_results": str(self.work / "nnUNet_results"),
                "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads)}

    def v2(self, tool: str, *args: str, log: str, loads: list[float] | None = None,
           cpu: list[float] | None = None) -> tuple[float, int]:
        return run_measured([str(self.venv / "bin" / tool), *args], self.v2_env,
                            self.work / "logs" / f"{log}.log", loads, cpu)

    def nnpipe(self, *args: str, log: str, loads: list[float] | None = None,
               cpu: list[float] | None = None) -> tuple[float, int]:
        return run_measured([self.nnpipe_python, "-m", "nnpipe", *args], self.env,
                            self.work / "logs" / f"{log}.log", loads, cpu)


# ---------------------------------------------------------------- dataset and v2 models


def import_dataset(raw: Path, nnunet_raw: Path, dataset_id: int) -> str:
    """Copy (v2 layout: ``dataset.json`` with ``channel_names``) or convert (MSD layout)
    ``raw`` into ``nnunet_raw``; return the v2 dataset name. Kept if already there."""
    meta = json.loads((raw / "dataset.json").read_text())
    m = re.fullmatch(r"Dataset(\d{3})_(\w+)", raw.name)
    short = re.sub(r"\W", "", raw.name)[:40]
    name = raw.name if m else f"Dataset{dataset_id:03d}_{short}"
    dest = nnunet_raw / name
    if (dest / "dataset.json").is_file():
        return name
    if "channel_names" in meta or "modality" not in meta:
        shutil.copytree(raw, dest)
    else:  # MSD: 4D images and labels by value; nnpipe's converter writes v2's layout
        from benchmarks.preprocess_compare import to_nnunetv2

        to_nnunetv2(raw, dest)
    return name


def generated_trainer(venv: Path, epochs: int, steps: int) -> str:
    """Write a short v2 trainer beside v2's ``nnUNetTrainer.py`` (v2 finds trainers by class
    name in that folder); return its name for ``-tr``."""
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    name = f"nnUNetTrainer_v2parity_{epochs}x{steps}"
    src = (f'"""Generated by nnpipe benchmarks/v2_parity.py: {epochs} epochs x {steps} '
           'steps."""\n'
           "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
           f"class {name}(nnUNetTrainer):\n"
           "    def initialize(self):\n"
           f"        self.num_epochs = {epochs}\n"
           f"        self.num_iterations_per_epoch = {steps}\n"
           "        self.num_val_iterations_per_epoch = 2\n"
           "        super().initialize()\n")
    path = Path(where) / "training" / "nnUNetTrainer" / f"{name}.py"
    if not path.is_file() or path.read_text() != src:
        path.write_text(src)
    return name


def plan_and_train(t: Tools, name: str, networks: list[str], configurations: list[str],
                   folds: list[str], trainer: str) -> list[tuple[str, str, Path]]:
    """Plan, preprocess and train with v2's commands; return ``(network, configuration,
    model folder)`` of every configuration the plans hold (a 2D dataset has no 3d_fullres)."""
    did = name[7:10]
    pre = t.work / "nnUNet_preprocessed" / name
    if not (pre / "dataset_fingerprint.json").is_file():
        t.v2("nnUNetv2_extract_fingerprint", "-d", did, "-np", "1", log=f"{name}-fingerprint")
    models = []
    for net in networks:
        planner, plans = PLANNERS[net]
        if not (pre / f"{plans}.json").is_file():
            t.v2("nnUNetv2_plan_experiment", "-d", did, "-pl", planner, log=f"{name}-plan-{net}")
        have = json.loads((pre / f"{plans}.json").read_text())["configurations"]
        for cfg in configurations:
            if cfg not in have:
                print(f"{name} {plans}: no configuration {cfg!r}; skipped", file=sys.stderr)
                continue
            ident = have[cfg].get("data_identifier", f"{plans}_{cfg}")
            if not (pre / ident).is_dir():
                t.v2("nnUNetv2_preprocess", "-d", did, "-plans_name", plans, "-c", cfg,
                     "-np", "1", log=f"{name}-preprocess-{net}-{cfg}")
            folder = t.work / "nnUNet_results" / name / f"{trainer}__{plans}__{cfg}"
            for f in folds:
                if not (folder / f"fold_{f}" / "checkpoint_final.pth").is_file():
                    t.v2("nnUNetv2_train", did, cfg, f, "-tr", trainer, "-p", plans,
                         "-device", "cpu", log=f"{name}-train-{net}-{cfg}-{f}")
            models.append((net, cfg, folder))
    return models


def test_images(raw_v2: Path, dest: Path, n_cases: int) -> list[str]:
    """Copy up to ``n_cases`` cases' channel files (``imagesTs``, else the last training
    cases) into ``dest``; return their case ids."""
    src = raw_v2 / "imagesTs"
    if not src.is_dir() or not any(src.iterdir()):
        src = raw_v2 / "imagesTr"
    files = sorted(p for p in src.iterdir() if re.search(r"_\d{4}\.", p.name))
    ids = sorted({re.sub(r"_\d{4}\..*$", "", p.name) for p in files})
    ids = ids[-n_cases:] if src.name == "imagesTr" else ids[:n_cases]
    dest.mkdir(parents=True, exist_ok=True)
    for p in files:
        if re.sub(r"_\d{4}\..*$", "", p.name) in ids and not (dest / p.name).exists():
            shutil.copy2(p, dest / p.name)
    return ids


def scaled_images(images: Path, dest: Path, scale: float, n_cases: int) -> Path:
    """The first ``n_cases`` cases of ``images`` with every axis zoomed by ``scale`` (linear
    interpolation, ``scipy.ndimage.zoom``) and the same voxel spacing, so the body is
    ``scale`` times larger and the case has ``scale**3`` times the voxels: a CT-sized case
    made from a test image, for timing only (its labels are no one's). Written once into
    ``dest`` (kept between runs); returns ``dest``."""
    from scipy import ndimage

    files = sorted(p for p in images.iterdir() if re.search(r"_\d{4}\.", p.name))
    ids = sorted({re.sub(r"_\d{4}\..*$", "", p.name) for p in files})[:n_cases]
    dest.mkdir(parents=True, exist_ok=True)
    for p in files:
        if re.sub(r"_\d{4}\..*$", "", p.name) not in ids or (dest / p.name).exists():
            continue
        img: Any = nib.load(p)
        data = np.asarray(img.dataobj)
        big = ndimage.zoom(data.astype(np.float32), scale, order=1).astype(data.dtype)
        out = nib.Nifti1Image(big, img.affine, img.header)
        tmp = dest / f".{p.name}"
        nib.save(out, tmp)
        tmp.replace(dest / p.name)
    return dest


# ---------------------------------------------------------------- nnpipe's stages (probe)


def probe(model: str, configuration: str, folds: list[str], images: Path, cases: list[str],
          out: Path, what: str, tta: bool) -> None:
    """In nnpipe's interpreter: nnpipe's v2 path, stage by stage, through ``nnpipe.v2``.

    ``what="preprocessed"``: ``out/<case>.npy`` the normalised, resampled ``(C, *spatial)``
    array (v2's preprocessed layout). ``what="probabilities"``: ``out/<case>.npy`` the
    probabilities ``(K, z, y, x)`` in the file's voxel order as v2's ``--save_probabilities``
    writes them (logits resampled back, softmax or sigmoid; outside the crop box background
    1 and the rest 0, regions all 0: v2's ``revert_cropping_on_probabilities``).
    """
    import torch

    from nnpipe.v2.model import load_v2_model, to_device
    from nnpipe.v2.predict import (
        preprocess,
        read_v2_image,
        segmentation,
        sliding_window_logits,
    )

    m = load_v2_model(model, configuration, folds, "final")
    sem = m.configuration.semantics
    nets = to_device(m, torch.device("cpu")) if what == "probabilities" else []
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        files = sorted(images.glob(f"{case}_[0-9][0-9][0-9][0-9].*"))
        # nnpipe.v2's reader takes the plans' image reader where it has one (SimpleITKIO, ...)
        reader = {"reader": sem.reader} if hasattr(sem, "reader") else {}
        prepared = preprocess(read_v2_image(files, case_id=case, **reader), sem)
        if what == "preprocessed":
            np.save(out / f"{case}.npy", prepared.data)
            continue
        logits = sliding_window_logits(nets, prepared.data, sem, torch.device("cpu"), tta)
        _, probs = segmentation(logits, prepared, sem, with_probabilities=True)
        if probs is None:  # unreachable: asked for above
            raise RuntimeError(f"case {case}: segmentation returned no probabilities")
        np.save(out / f"{case}.npy", probs)


def _probe(t: Tools, model: Path, cfg: str, folds: list[str], images: Path, cases: list[str],
           out: Path, what: str, tta: bool, log: str) -> str | None:
    """Run :func:`probe` in nnpipe's interpreter; None if it ran, else why not (nnpipe
    without ``nnpipe.v2``, or an error: the stage is then reported as not measured)."""
    cmd = [t.nnpipe_python, str(Path(__file__).resolve()), "probe", "--model", str(model),
           "--configuration", cfg, "--folds", *folds, "--images", str(images),
           "--cases", *cases, "--out", str(out), "--what", what, "--tta", "on" if tta else "off"]
    try:
        run_measured(cmd, t.env, t.work / "logs" / f"{log}.log")
    except RuntimeError as exc:
        return str(exc)
    return None


def preprocessed_diff(t: Tools, name: str, model: Path, cfg: str, n_cases: int, tag: str
                      ) -> float | None:
    """max |v2's preprocessed training arrays - nnpipe's| over ``n_cases`` training cases."""
    plans = json.loads((model / "plans.json").read_text())
    ident = plans["configurations"][cfg].get("data_identifier")
    pre = t.work / "nnUNet_preprocessed" / name / str(ident)
    arrays = sorted(p for p in pre.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    cases = [p.name[:-len(".b2nd")] for p in arrays][:n_cases]
    if not cases:
        print(f"{pre}: no preprocessed arrays (.b2nd); preprocessed stage not measured",
              file=sys.stderr)
        return None
    dest = t.work / "stages" / tag / "preprocessed"
    (dest / "v2").mkdir(parents=True, exist_ok=True)
    pairs = [s for c in cases for s in (str(pre / f"{c}.b2nd"), str(dest / "v2" / f"{c}.npy"))]
    subprocess.run([str(t.venv / "bin" / "python"), "-c", _DUMP_B2ND, *pairs], check=True)
    why = _probe(t, model, cfg, ["0"], t.work / "nnUNet_raw" / name / "imagesTr", cases,
                 dest / "nnpipe", "preprocessed", False, f"{tag}-probe-pre")
    if why:
        print(f"preprocessed stage not measured: {why}", file=sys.stderr)
        return None
    return max(max_abs_diff(np.load(dest / "v2" / f"{c}.npy"),
                            np.load(dest / "nnpipe" / f"{c}.npy"), f"{tag} {c} preprocessed")
               for c in cases)


def _label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img: Any = nib.load(path)
    return np.asarray(img.dataobj).astype(np.int64), img.affine


# ---------------------------------------------------------------- one parity row


@dataclass(frozen=True)
class Model:
    dataset: str
    network: str
    configuration: str
    folder: Path


def parity_row(t: Tools, m: Model, folds: str, tta: bool, images: Path, cases: list[str],
               n_pre: int, pre_cache: dict[str, float | None]) -> dict[str, Any]:
    """Predict ``images`` with both tools and compare every stage (one table row)."""
    fl = FOLD_SETS[folds]
    tag = f"{m.dataset}-{m.network}-{m.configuration}-f{folds}-tta{int(tta)}"
    pred = t.work / "pred" / tag
    for sub in ("v2", "nnpipe"):
        shutil.rmtree(pred / sub, ignore_errors=True)
    plans = json.loads((m.folder / "plans.json").read_text())["plans_name"]
    trainer = m.folder.name.split("__")[0]
    t.v2("nnUNetv2_predict", "-i", str(images), "-o", str(pred / "v2"), "-d", m.dataset[7:10],
         "-c", m.configuration, "-tr", trainer, "-p", plans, "-f", *fl, "-device", "cpu",
         "-npp", "1", "-nps", "1", "--save_probabilities",
         *([] if tta else ["--disable_tta"]), log=f"{tag}-v2")
    t.nnpipe("predict", "--model", str(m.folder), "-i", str(images), "-o", str(pred / "nnpipe"),
             "--folds", *fl, "--device", "cpu", "--threads", str(t.threads),
             "--config-json", json.dumps({"inference": {"tta": tta}}), log=f"{tag}-nnpipe")
    counts, affine_diff = LabelCounts(), 0.0
    for c in cases:
        v2_file = next(iter(sorted((pred / "v2").glob(f"{c}.nii*"))), None)
        np_file = next(iter(sorted((pred / "nnpipe").glob(f"{c}.nii*"))), None)
        if v2_file is None or np_file is None:
            raise RuntimeError(f"case {c}: a tool wrote no label map ({pred})")
        (a, aff_a), (b, aff_b) = _label_map(v2_file), _label_map(np_file)
        counts.add(a, b, c)
        affine_diff = max(affine_diff, float(np.abs(aff_a - aff_b).max()))
    probs_dir = t.work / "stages" / tag / "probabilities"
    why = _probe(t, m.folder, m.configuration, fl, images, cases, probs_dir, "probabilities",
                 tta, f"{tag}-probe-probs")
    prob_diff: float | None = None
    if why:
        print(f"{tag}: probabilities stage not measured: {why}", file=sys.stderr)
    else:
        prob_diff = max(max_abs_diff(np.load(pred / "v2" / f"{c}.npz")["probabilities"],
                                     np.load(probs_dir / f"{c}.npy"), f"{tag} {c} probabilities")
                        for c in cases)
    key = f"{m.dataset}-{m.network}-{m.configuration}"
    if key not in pre_cache:
        pre_cache[key] = preprocessed_diff(t, m.dataset, m.folder, m.configuration, n_pre, key)
    dice = counts.dice()
    return {"dataset": m.dataset, "configuration": m.configuration, "network": m.network,
            "folds": folds, "tta": tta, "cases": len(cases),
            "dice": {str(k): v for k, v in dice.items()}, "voxels": counts.voxel_agreement,
            "preprocessed": pre_cache[key], "probabilities": prob_diff,
            "affine_max_abs_diff": affine_diff,
            "parted": first_parted({"preprocessed": pre_cache[key],
                                    "probabilities": prob_diff},
                                   counts.same == counts.total),
            "gate": passes_gate(dice, counts.voxel_agreement)}


# ---------------------------------------------------------------- speed


def time_both(t: Tools, m: Model, folds: str, images: Path, repeats: int,
              ttas: list[bool]) -> list[Timing]:
    """ABBA-alternated end-to-end runs of both predict commands (no probabilities)."""
    fl = FOLD_SETS[folds]
    plans = json.loads((m.folder / "plans.json").read_text())["plans_name"]
    trainer = m.folder.name.split("__")[0]
    out = t.work / "speed" / m.dataset / images.name
    timings = []
    for tta in ttas:
        for i in range(repeats):
            order = ("nnunetv2", "nnpipe") if i % 2 == 0 else ("nnpipe", "nnunetv2")
            for tool in order:
                dest = out / f"{tool}-{int(tta)}-{i}"
                shutil.rmtree(dest, ignore_errors=True)
                loads: list[float] = []
                cpu: list[float] = []
                if tool == "nnunetv2":
                    wall, rss = t.v2("nnUNetv2_predict", "-i", str(images), "-o", str(dest),
                                     "-d", m.dataset[7:10], "-c", m.configuration, "-tr",
                                     trainer, "-p", plans, "-f", *fl, "-device", "cpu",
                                     "-npp", "1", "-nps", "1",
                                     *([] if tta else ["--disable_tta"]), log="speed-v2",
                                     loads=loads, cpu=cpu)
                else:
                    wall, rss = t.nnpipe("predict", "--model", str(m.folder), "-i", str(images),
                                         "-o", str(dest), "--folds", *fl, "--device", "cpu",
                                         "--threads", str(t.threads), "--config-json",
                                         json.dumps({"inference": {"tta": tta}}),
                                         log="speed-nnpipe", loads=loads,
                                         cpu=cpu)
                load = float(np.mean(loads)) if loads else float(os.getloadavg()[0])
                timings.append(Timing(tool, tta, wall, rss, load, cpu[0]))
                print(f"speed {tool} TTA {'on' if tta else 'off'} run {i}: {wall:.1f} s, "
                      f"{rss / 2**30:.2f} GiB, load average {load:.1f}, CPU {cpu[0]:.1f} s",
                      file=sys.stderr)
    return timings


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/v2_parity.py",
        description="Plan, preprocess and briefly train nnU-Net v2 models with v2's commands, "
                    "predict with nnUNetv2_predict and nnpipe predict --model <v2 folder>, "
                    "compare stage by stage, gate (Dice >= 0.999 per class, >= 99.99 %% "
                    "voxels identical), time both. Not part of CI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--raw", type=Path, required=True,
                   help="dataset folder (dataset.json; MSD or nnU-Net v2 raw layout)")
    p.add_argument("--work", type=Path, required=True, help="working folder (v2's folders, "
                   "predictions, logs, v2_parity_<dataset>.json); kept between runs")
    p.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/nnunetv2-venv"))
    p.add_argument("--configurations", nargs="+", default=["3d_fullres"],
                   help="v2 configurations (2d, 3d_fullres, 3d_lowres)")
    p.add_argument("--network", nargs="+", choices=sorted(PLANNERS), default=["plain"],
                   help="plain: ExperimentPlanner; resenc_m: nnUNetPlannerResEncM")
    p.add_argument("--folds", nargs="+", choices=sorted(FOLD_SETS), default=["0"],
                   help="fold sets to compare: 0 (fold 0) and/or all (folds 0-4)")
    p.add_argument("--tta", nargs="+", choices=("on", "off"), default=["on", "off"])
    p.add_argument("--dataset-id", type=int, default=950,
                   help="v2 dataset id for a folder not named DatasetNNN_*")
    p.add_argument("--trainer", help="an existing v2 trainer class to train with (or whose "
                   "models WORK already holds) instead of the generated short one")
    p.add_argument("--epochs", type=int, default=4, help="v2 training epochs")
    p.add_argument("--steps", type=int, default=25, help="v2 training steps per epoch")
    p.add_argument("--cases", type=int, default=3, help="test cases to predict")
    p.add_argument("--preprocessed-cases", type=int, default=2,
                   help="training cases whose preprocessed arrays are compared")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="OMP threads of both, torch threads of nnpipe (v2 takes cpu_count)")
    p.add_argument("--speed-repeats", type=int, default=0,
                   help="timed runs of each tool per TTA setting (0: no timing)")
    p.add_argument("--speed-only", action="store_true",
                   help="skip the parity rows (a rerun that only times)")
    p.add_argument("--speed-scale", type=float, default=1.0,
                   help="time on the test images zoomed by this factor per axis at the same "
                        "spacing (a larger body, scale^3 the voxels; e.g. 4 makes the "
                        "44 x 40 x 12 CT test case 176 x 160 x 48), written once to "
                        "WORK/speed_images/")
    p.add_argument("--speed-cases", type=int, default=None,
                   help="time on the first N test cases only (default: every one)")
    return p


def _shape(path: Path) -> tuple[int, ...]:
    img: Any = nib.load(path)
    return tuple(int(n) for n in img.shape)


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def _probe_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="v2_parity.py probe")
    for flag in ("--model", "--configuration", "--images", "--out", "--what", "--tta"):
        p.add_argument(flag, required=True)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    a = p.parse_args(argv)
    probe(a.model, a.configuration, a.folds, Path(a.images), a.cases, Path(a.out), a.what,
          a.tta == "on")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return _probe_main(argv[1:])
    a = _parser().parse_args(argv)
    work = a.work.resolve()
    t = Tools(work, a.nnunet_venv, a.threads)
    name = import_dataset(a.raw.resolve(), work / "nnUNet_raw", a.dataset_id)
    trainer = a.trainer or generated_trainer(a.nnunet_venv, a.epochs, a.steps)
    all_folds = sorted({f for s in a.folds for f in FOLD_SETS[s]})
    models = [Model(name, net, cfg, folder) for net, cfg, folder in
              plan_and_train(t, name, a.network, a.configurations, all_folds, trainer)]
    images = work / "test_images" / name
    cases = test_images(work / "nnUNet_raw" / name, images, a.cases)
    rows: list[dict[str, Any]] = []
    pre_cache: dict[str, float | None] = {}
    record: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "parity": rows}
    for m in [] if a.speed_only else models:
        for folds in a.folds:
            for tta in a.tta:
                rows.append(parity_row(t, m, folds, tta == "on", images, cases,
                                       a.preprocessed_cases, pre_cache))
                print(parity_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
                _write(work / f"v2_parity_{name}.json", record)  # a stopped run keeps its rows
    print(parity_table(rows))
    if a.speed_repeats > 0 and models:
        n_speed = a.speed_cases or len(cases)
        speed_images = images
        if a.speed_scale != 1.0 or n_speed < len(cases):
            speed_images = scaled_images(images, work / "speed_images" / (
                f"{name}_x{a.speed_scale:g}_{n_speed}cases"), a.speed_scale, n_speed)
        shapes = sorted({_shape(p) for p in speed_images.iterdir()
                         if p.name.endswith((".nii.gz", ".nii"))})
        print(f"speed images {speed_images}: shapes {shapes}", file=sys.stderr)
        timings = time_both(t, models[0], a.folds[0], speed_images, a.speed_repeats,
                            [x == "on" for x in a.tta])
        srows = speed_rows(timings)
        record["speed"] = {"model": str(models[0].folder), "folds": a.folds[0],
                           "threads": a.threads, "cases": n_speed, "rows": srows,
                           "images": str(speed_images), "shapes": shapes,
                           "runs": [vars(x) for x in timings]}
        print(f"\nspeed: {models[0].folder.name}, folds {a.folds[0]}, {n_speed} case(s) of "
              f"{shapes}, {a.threads} threads, CPU fp32\n")
        print(speed_table(srows))
    # a speed-only rerun writes its own record: it must not replace the parity rows
    out = work / f"v2_{'speed' if a.speed_only else 'parity'}_{name}.json"
    _write(out, record)
    print(f"\nrecord: {out}")
    return 0 if all(r["gate"] for r in rows) else 1  # no rows (--speed-only): 0


if __name__ == "__main__":
    raise SystemExit(main())
