"""The ``nnpipe`` command: one subcommand per pipeline stage, each usable without Snakemake.

Every subcommand is a thin wrapper: parse paths, load the config, call one package function.
Settings come from ``--config`` (the same YAML the workflow uses; defaults from the schema).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from nnpipe.config import InferenceSettings, StudyConfig, load_config, study_config
from nnpipe.errors import DataError
from nnpipe.study import CONFIGURATIONS, PRECISIONS
from nnpipe.version import __version__

# inference.runtime's options (nnpipe.inference.runtime.Runtime, which imports torch)
RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
# Exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130

if TYPE_CHECKING:  # imported where used: each subcommand loads only what it needs
    from nnpipe.inference.model_spec import ModelSpec
    from nnpipe.inference.shards import Shard


def _cfg(args: argparse.Namespace) -> StudyConfig:
    """The study config: ``--config`` YAML, then ``--config-json`` sections on top."""
    if not args.config_json:
        return load_config(args.config)
    raw = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    try:
        raw.update(json.loads(args.config_json))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON: {exc}") from None
    return study_config(raw)


def cmd_download(args: argparse.Namespace) -> None:
    from nnpipe.datasets.source import fetch_dataset

    fetch_dataset(_cfg(args).dataset, args.out)



def _download_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe download``'s arguments."""
    sp.add_argument("--out", required=True, help="raw folder to create, e.g. results/embedded/raw")


def cmd_fingerprint(args: argparse.Namespace) -> None:
    from nnpipe.datasets.layout import load_dataset
    from nnpipe.io import write_json
    from nnpipe.planning.fingerprint import compute_fingerprint

    fp = compute_fingerprint(load_dataset(args.raw), workers=args.workers)
    write_json(args.out, fp.to_dict())



def _fingerprint_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe fingerprint``'s arguments."""
    sp.add_argument("--raw", required=True, help="dataset folder holding dataset.json")
    sp.add_argument("--out", required=True, help="fingerprint JSON to write")
    sp.add_argument("--workers", type=int, default=1, help="cases read in parallel")


def cmd_plan(args: argparse.Namespace) -> None:
    from nnpipe.io import read_json
    from nnpipe.planning.cascade import plan_configuration
    from nnpipe.planning.fingerprint import Fingerprint
    from nnpipe.planning.planner import settings_from_config

    cfg = _cfg(args)
    fp = Fingerprint.from_dict(read_json(args.fingerprint))
    configuration = args.configuration or f"{args.dim}d"
    plan = plan_configuration(fp, configuration, settings_from_config(cfg.planning),
                              cfg.dataset.name, cfg.planning.preset, cfg.dataset.task)
    if cfg.planning.regions or cfg.training.regions:  # training.regions: the older key
        plan = plan.with_scheme(plan.scheme().with_nested_regions())
    if cfg.planning.like:
        from nnpipe.finetune import plan_like

        plan = plan_like(plan, cfg.planning.like, fp.channel_names)
    plan.save(args.out)



def _plan_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe plan``'s arguments."""
    sp.add_argument("--fingerprint", required=True, help="fingerprint JSON")
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--dim", type=int, choices=(2, 3))
    which.add_argument("--configuration", choices=CONFIGURATIONS,
                       help="a configuration: 2d, 3d, or a stage of the low-resolution cascade")
    sp.add_argument("--out", required=True, help="plan JSON to write")


def cmd_split(args: argparse.Namespace) -> None:
    from nnpipe.datasets.layout import load_dataset
    from nnpipe.training.splits import make_splits, save_splits

    ds = load_dataset(args.raw)
    save_splits(args.out, make_splits([c.case_id for c in ds.training]))



def _split_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe split``'s arguments."""
    sp.add_argument("--raw", required=True)
    sp.add_argument("--out", required=True)


def cmd_preprocess(args: argparse.Namespace) -> None:
    from nnpipe.datasets.layout import load_dataset
    from nnpipe.planning.plan import Plan
    from nnpipe.preprocessing.pipeline import preprocess_dataset

    cfg = _cfg(args).preprocess
    workers = args.workers or cfg.workers
    memory_gb = cfg.memory_gb if args.memory_gb is None else args.memory_gb
    preprocess_dataset(load_dataset(args.raw), Plan.load(args.plan), Path(args.out),
                       workers=workers, memory_gb=memory_gb)



def _preprocess_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe preprocess``'s arguments."""
    sp.add_argument("--raw", required=True)
    sp.add_argument("--plan", required=True)
    sp.add_argument("--out", required=True, help="folder; manifest.json is written last")
    sp.add_argument("--workers", type=int, default=0, help="parallel cases (0: from config)")
    sp.add_argument("--memory-gb", type=float, help="RAM budget for the cases in flight "
                    "(default: config preprocess.memory_gb; 0: workers alone)")


def cmd_train(args: argparse.Namespace) -> int:
    from nnpipe.training.trainer import EXIT_PREEMPTED, Preempted, TrainRun, run_plan, train

    settings = _cfg(args).training
    run = TrainRun(Path(args.preprocessed), Path(args.splits), args.fold, args.precision,
                   Path(args.out), settings, epochs=args.epochs, force_cpu=args.cpu,
                   plan_path=Path(args.plan) if args.plan else None,
                   previous_dir=Path(args.previous) if args.previous else None)
    if settings.init_weights:
        from nnpipe.finetune import pretrained_weights

        run = replace(run, pretrained=pretrained_weights(settings.init_weights, run_plan(run),
                                                         args.fold))
    try:
        train(run, threads=args.threads)
    except Preempted as exc:
        print(f"nnpipe train: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0



def _train_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe train``'s arguments."""
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--fold", type=int, required=True)
    sp.add_argument("--precision", choices=PRECISIONS, default="fp32")
    sp.add_argument("--out", required=True, help="run folder (final.pt, metrics.csv, train.json)")
    sp.add_argument("--epochs", type=int, help="override the configured epochs (extend a run)")
    sp.add_argument("--threads", type=int, help="CPU threads for torch")
    sp.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU exists")
    sp.add_argument("--plan", help="a cascade stage's plan (default: the preprocessed folder's)")
    sp.add_argument("--previous", help="a cascade stage: folder of the previous stage's "
                    "segmentations (nnpipe previous)")


def cmd_predict(args: argparse.Namespace) -> None:
    from nnpipe.inference.predict import predict_dataset, predict_folder
    from nnpipe.training.splits import load_fold

    _threads(args.threads)
    if _predict_v2(args):
        return
    common = dict(plan=args.plan, postprocess=args.postprocess, skip_existing=args.continue_,
                  device=args.device, previous=args.previous)
    from nnpipe.inference.resolve import resolve_model

    spec = resolve_model(args.model)  # read once: settings and networks come from it
    settings = _inference_settings(args, spec)
    if args.save_probabilities:
        settings = replace(settings, save_probabilities=True)
    if args.runtime:
        settings = replace(settings, runtime=args.runtime)
    if args.tta is not None:
        settings = replace(settings, tta=args.tta)
    shard = _shard(args)
    if args.input:
        predict_folder(spec, args.input, args.out, settings,
                       allow_empty=args.allow_empty, layout=args.layout, shard=shard,
                       part_record=args.part_record, **common)
    else:
        if args.part_record:
            raise ValueError("--part-record is written for --input only")
        ids = None if args.test else args.cases or load_fold(args.splits, args.fold)["val"]
        predict_dataset(spec, args.raw, ids, args.out, settings, shard=shard, **common)



def _predict_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe predict``'s arguments."""
    sp.add_argument("--model", "-m", required=True, nargs="+", help="what to predict with: "
                    "fold folder(s) or final.pt (several, e.g. the fold models, are averaged "
                    "as an ensemble); a run folder train/RUN (every fold, with the study's "
                    "postprocessing of the run); results/<dataset>/best.json (the "
                    "configuration `nnpipe best` chose); a model.zip from `nnpipe export`; or an "
                    "nnU-Net v2 trained-model folder, its dataset folder or v2 zip (predicted "
                    "with v2's semantics)")
    sp.add_argument("--input", "-i", help="folder of images in the layout the model was trained "
                    "on (MSD: one file per case, e.g. <case>.nii.gz; nnU-Net v2: "
                    "<case>_0000.nii.gz per channel); any supported format; no labels needed")
    sp.add_argument("--layout", choices=("msd", "nnunetv2"), help="how --input groups files "
                    "into cases (default: the layout of the dataset the model was trained on)")
    sp.add_argument("--raw", help="dataset folder, with --splits/--fold, --cases or --test")
    sp.add_argument("--test", action="store_true", help="with --raw: the dataset's test cases "
                    "(dataset.json's 'test' list, else imagesTs)")
    sp.add_argument("--splits", help="splits.json (with --fold: predict its validation cases)")
    sp.add_argument("--fold", type=int)
    sp.add_argument("--cases", nargs="*", help="case ids to predict instead of a fold")
    sp.add_argument("--out", "--output", "-o", dest="out", required=True)
    sp.add_argument("--plan", help="plan JSON the models must have been trained with")
    sp.add_argument("--previous", help="a cascade model: folder of its low-resolution stage's "
                    "predictions of these cases (default: that stage predicts them first)")
    sp.add_argument("--postprocess", help="postprocessing decision JSON to apply (replaces "
                    "the one a run folder, best.json or model.zip carries)")
    sp.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz "
                    "(probabilities in the original grid, float16), as config "
                    "inference.save_probabilities does")
    sp.add_argument("--runtime", choices=RUNTIMES, help="what runs the forward passes "
                    "(default: config inference.runtime, eager); onnxruntime and openvino "
                    "need `pip install 'nnpipe[cpu-runtimes]'` and run fp32 on the CPU")
    sp.add_argument("--continue", dest="continue_", action="store_true",
                    help="skip cases whose output already exists")
    sp.add_argument("--part", type=int, help="predict only part I (0-based) of --parts N: "
                    "the case ids sorted, every N-th from I (nnU-Net v2's -part_id I "
                    "-num_parts N), so N jobs cover every case exactly once")
    sp.add_argument("--parts", type=int, help="how many parts the cases are split into")
    sp.add_argument("--part-record", help="with --input: JSON to write when every case of "
                    "the part is done (for `nnpipe gather`)")
    sp.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="mirroring test-time augmentation, as nnU-Net v2 (8 flips in 3D, 4 in "
                         "2D: that many times the forward passes, on a CPU too); default: the "
                         "model's inference.tta (on unless its study turned it off)")
    sp.add_argument("--allow-empty", action="store_true",
                    help="no input cases (a missing --input folder, no test cases) is no error")
    sp.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1")
    sp.add_argument("--threads", type=int, help="CPU threads for torch (OpenMP threads "
                    "sleep between parallel regions: OMP_WAIT_POLICY=PASSIVE unless set)")
    sp.add_argument("--configuration", help="an nnU-Net v2 dataset folder or zip with several "
                    "trained models: which (3d_fullres, 2d, ... or the folder name)")
    sp.add_argument("--folds", nargs="+", help="an nnU-Net v2 model: the folds to average "
                    "(default: every fold_N present; 'all' for fold_all)")
    sp.add_argument("--checkpoint", choices=("final", "best"), default="final",
                    help="an nnU-Net v2 model: checkpoint_final.pth or checkpoint_best.pth")


def _shard(args: argparse.Namespace) -> Shard | None:
    """``--part I --parts N`` (both or neither; nnU-Net v2's ``-part_id I -num_parts N``)."""
    from nnpipe.inference.shards import Shard

    if (args.part is None) != (args.parts is None):
        raise ValueError("give --part and --parts together (e.g. --part 0 --parts 4)")
    return None if args.part is None else Shard(args.part, args.parts)


def cmd_gather(args: argparse.Namespace) -> None:
    from nnpipe.inference.shards import gather

    gather(args.records, args.parts_dir, args.out)



def _gather_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe gather``'s arguments."""
    sp.add_argument("--records", required=True, nargs="+", help="the part records, one per "
                    "part")
    sp.add_argument("--parts-dir", required=True, help="the folder the parts wrote into")
    sp.add_argument("--out", required=True, help="folder to create with every case once")


def _predict_v2(args: argparse.Namespace) -> bool:
    """``nnpipe predict --model <nnU-Net v2 model>``: predicted with v2's semantics
    (:mod:`nnpipe.v2`); False when ``--model`` is not a v2 model."""
    from nnpipe.v2.model import is_v2_model, load_v2_model

    if len(args.model) != 1 or not is_v2_model(args.model[0]):
        if args.configuration or args.folds or args.checkpoint != "final":
            raise ValueError("--configuration, --folds and --checkpoint are for nnU-Net v2 "
                             f"models; {' '.join(args.model)} is not one")
        return False
    if not args.input:
        raise ValueError("an nnU-Net v2 model predicts a folder: give --input")
    unused = [flag for flag, value in (("--raw", args.raw), ("--plan", args.plan),
                                       ("--postprocess", args.postprocess),
                                       ("--previous", args.previous),
                                       ("--runtime", args.runtime), ("--layout", args.layout))
              if value]
    if unused:
        raise ValueError(f"{' '.join(unused)}: not available for nnU-Net v2 models yet "
                         f"({args.model[0]}); predict without")
    from nnpipe.inference.predict import select_device
    from nnpipe.v2.predict import predict_v2_folder

    settings = _cfg(args).inference
    tta = settings.tta if args.tta is None else args.tta
    model = load_v2_model(args.model[0], args.configuration, args.folds, args.checkpoint)
    predict_v2_folder(model, args.input, args.out, device=select_device(args.device),
                      tta=tta, batch_size=settings.batch_size,
                      skip_existing=args.continue_, shard=_shard(args),
                      part_record=args.part_record,
                      save_probabilities=args.save_probabilities
                      or settings.save_probabilities)
    return True


def _inference_settings(args: argparse.Namespace, spec: ModelSpec) -> InferenceSettings:
    """``--config``/``--config-json``'s inference section; without either, the one stored
    with the model (best.json, or an archive exported from it), else the schema's."""
    if args.config or args.config_json:
        return _cfg(args).inference
    stored = spec.inference
    if stored is None:
        return _cfg(args).inference
    try:
        settings = study_config({"inference": dict(stored)}).inference
    except ValueError as exc:
        raise ValueError(f"the inference settings stored with {' '.join(args.model)} are not "
                         f"valid for this nnpipe ({exc}); give --config") from None
    print(f"nnpipe predict: inference settings stored with the model: {stored}",
          file=sys.stderr)
    return settings


def cmd_previous(args: argparse.Namespace) -> None:
    from nnpipe.preprocessing.previous import stage_previous

    stage_previous(args.preprocessed, args.pred, args.out)



def _previous_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe previous``'s arguments."""
    sp.add_argument("--preprocessed", required=True, help="the full-resolution preprocessed "
                    "folder (its manifest gives each case's crop and grid)")
    sp.add_argument("--pred", required=True, nargs="+", help="the low-resolution prediction "
                    "folder of every fold (each case in exactly one)")
    sp.add_argument("--out", required=True, help="folder; previous.json is written last")


def cmd_best(args: argparse.Namespace) -> None:
    from nnpipe.evaluation.best import Study, find_best, run_names_in
    from nnpipe.io import read_json

    study = Study(Path(args.study))
    runs = args.runs or run_names_in(study.root)
    folds = args.folds if args.folds is not None else list(range(len(read_json(
        study.splits))))
    cfg = _cfg(args)
    find_best(study.root, runs, folds, args.out or study.paths.best,
              regions=cfg.training.regions, inference=asdict(cfg.inference))



def _best_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe best``'s arguments."""
    sp.add_argument("--study", required=True, help="the study folder results/<dataset> "
                    "(predict/, postprocess/, train/, plans/, raw/, splits.json)")
    sp.add_argument("--runs", nargs="+", help="runs to compare, e.g. 2d-fp32-1gpu "
                    "3d-fp32-1gpu (default: every run under <study>/predict/)")
    sp.add_argument("--folds", nargs="+", type=int, help="folds to score (default: every "
                    "fold of splits.json)")
    sp.add_argument("--out", help="best.json to write (default: <study>/best.json); the "
                    "ensembles' cross-validation predictions go to <study>/crossval/")


def cmd_export(args: argparse.Namespace) -> None:
    from nnpipe.inference.archive import export_model
    from nnpipe.inference.resolve import resolve_model
    from nnpipe.v2.model import is_v2_model

    if len(args.model) == 1 and is_v2_model(args.model[0]):
        raise ValueError(f"{args.model[0]} is an nnU-Net v2 model: `nnpipe predict --model` "
                         "runs it as it is; `nnpipe export` packs nnpipe's own models")
    spec = resolve_model(args.model)
    if args.postprocess:
        from nnpipe.inference.postprocess import decision_classes
        from nnpipe.io import read_json

        record = read_json(args.postprocess)
        decision_classes(record, args.postprocess)  # refuses a file that is no decision
        spec = replace(spec, postprocess=record)
    manifest = export_model(spec, args.out)
    n = sum(len(m["folds"]) for m in manifest["members"])
    print(f"nnpipe export: {args.out}: {len(manifest['members'])} member(s), {n} fold "
          f"model(s), {Path(args.out).stat().st_size / 2**20:.1f} MiB")



def _export_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe export``'s arguments."""
    sp.add_argument("--model", "-m", required=True, nargs="+", help="a run folder train/RUN, "
                    "fold folder(s) or final.pt, results/<dataset>/best.json, or a model.zip")
    sp.add_argument("--postprocess", help="postprocessing decision JSON to carry (replaces "
                    "the model's own; fold checkpoints carry none)")
    sp.add_argument("--out", "-o", required=True, help="the .zip to write")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from nnpipe.evaluation.run import evaluate_fold

    cfg = _cfg(args)
    evaluate_fold(args.pred, args.raw, args.splits, args.fold, args.out,
                  summary_json=args.summary, tolerance_mm=cfg.evaluation.nsd_tolerance_mm,
                  regions=cfg.training.regions, plan=args.plan, refs_dir=args.refs)



def _evaluate_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe evaluate``'s arguments."""
    sp.add_argument("--pred", required=True)
    sp.add_argument("--raw", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--fold", type=int, required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--summary", help="summary JSON to write (per class, per case, mean)")
    sp.add_argument("--refs", help="folder of reference label maps to score against instead "
                    "of the dataset's labelsTr (e.g. dense references of sparse labels)")
    sp.add_argument("--plan", help="the run's plan JSON: its label concept (regions, ignore "
                    "value) says what is scored; without it dataset.json's")


def cmd_postprocess(args: argparse.Namespace) -> None:
    from nnpipe.evaluation.run import decide_postprocessing

    decide_postprocessing(args.pred, args.folds, args.raw, args.splits, args.out,
                          regions=_cfg(args).training.regions, plan=args.plan)



def _postprocess_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe postprocess``'s arguments."""
    sp.add_argument("--pred", required=True, nargs="+", help="one prediction folder per fold")
    sp.add_argument("--folds", required=True, nargs="+", type=int)
    sp.add_argument("--raw", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--plan", help="the run's plan JSON: its label concept (regions, ignore "
                    "value) says what is scored; without it dataset.json's")


def cmd_benchmark(args: argparse.Namespace) -> int:
    """One benchmark cell: in this process, as one rank of the caller's torchrun, or (with
    ``--gpus N > 1``) on N ranks this starts, beside a 1-rank baseline (weak scaling).
    Prints the result line; writes the record only with ``--out``."""
    from nnpipe.benchmark.launch import (
        RankJob,
        RanksFailed,
        inside_torchrun,
        measure_ranks,
        torchrun_world_size,
    )
    from nnpipe.benchmark.throughput import benchmark_cell, result_line, run_benchmark
    from nnpipe.io import write_json

    plan, spec = benchmark_cell(args, _cfg(args))
    pre = Path(args.preprocessed) if args.preprocessed else None
    if args.gpus is not None and args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    if inside_torchrun() and args.gpus not in (None, torchrun_world_size()):
        raise ValueError(f"--gpus {args.gpus}, but this is one of {torchrun_world_size()} "
                         "ranks of a torchrun; give --gpus without torchrun (nnpipe starts "
                         "the ranks) or leave it out under torchrun")
    if (args.gpus or 1) > 1 and not inside_torchrun():
        try:
            record = measure_ranks(RankJob(spec, plan, args.preprocessed, args.threads,
                                           args.cpu), args.gpus)
        except RanksFailed as exc:
            print(f"nnpipe benchmark: error: {exc}", file=sys.stderr)
            return 1
    else:
        record = run_benchmark(plan, spec, pre, threads=args.threads, force_cpu=args.cpu)
    if _rank() == 0:
        print(result_line(record), flush=True)
        if args.out:
            write_json(args.out, record)
    return 0



def _benchmark_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe benchmark``'s arguments."""
    from nnpipe.benchmark.steady import steps_for_quantile

    sp.add_argument("--mode", choices=("train", "predict", "loader"), required=True,
                    help="train: optimizer steps incl. data loading; predict: patch forward "
                    "passes; loader: the data pipeline alone")
    sp.add_argument("--dim", type=int, choices=(2, 3), required=True)
    sp.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, required=True,
                    help="per rank")
    precision = sp.add_mutually_exclusive_group()
    precision.add_argument("--precision", choices=PRECISIONS, help="default fp32")
    precision.add_argument("--amp", action="store_true", help="the same as --precision amp")
    sp.add_argument("--gpus", type=int, help="ranks (one per GPU; gloo on CPUs): N > 1 starts "
                    "a 1-rank baseline and N ranks with torchrun and reports weak scaling "
                    "(default: 1, or the ranks of the torchrun this runs under)")
    sp.add_argument("--bind", action="store_true", help="pin each rank to its own share of "
                    "the CPUs")
    sp.add_argument("--plan", help="plan JSON (default: the reference's Task01 network)")
    sp.add_argument("--preprocessed", help="real patches with augmentation (else synthetic)")
    sp.add_argument("--patch-size", type=int, nargs="*", help="override the plan's patch")
    sp.add_argument("--warmup", type=int, help="warm-up steps at least (default: config); "
                    "then on until the step times agree")
    sp.add_argument("--steps", type=int, help="timed steps at least (default: config); then "
                    f"on to {steps_for_quantile()} (p99) within --max-timing-s")
    sp.add_argument("--max-warmup-s", type=float, help="warm-up time cap (s) after --warmup "
                    "steps (default: config benchmark.max_warmup_s)")
    sp.add_argument("--max-timing-s", type=float, help="timing cap (s) after --steps steps "
                    "(default: config benchmark.max_timing_s)")
    sp.add_argument("--synthetic", action="store_true", help="random tensors instead of data")
    sp.add_argument("--compile", action="store_true", help="torch.compile the network")
    sp.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    sp.add_argument("--loader", choices=("torch", "dali"),
                    help="data pipeline backend for train/loader modes (default: the config's "
                         "training.loader)")
    sp.add_argument("--plain-conv3d", action="store_true", help="train with plain nn.Conv3d "
                    "(PyTorch's kernel choice: its reference kernel for single samples on "
                    "CPUs) instead of the oneDNN path, to compare")
    sp.add_argument("--out", help="record JSON to write (default: print the line only)")
    sp.add_argument("--threads", type=int, help="CPU threads per rank")
    sp.add_argument("--cpu", action="store_true", help="CPUs even if a GPU exists")


def cmd_network(args: argparse.Namespace) -> None:
    from nnpipe.model.summary import report

    print(report(args.dim))



def _network_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe network``'s arguments."""
    sp.add_argument("--dim", type=int, choices=(2, 3), nargs="+", default=[3, 2])


def cmd_tables(args: argparse.Namespace) -> None:
    from nnpipe.report.tables import render_study

    render_study(_cfg(args), Path(args.out))



def _tables_args(sp: argparse.ArgumentParser) -> None:
    """``nnpipe tables``'s arguments."""
    sp.add_argument("--out", required=True)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _passive_omp_threads() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for ``nnpipe predict`` unless the user set it: OpenMP
    threads that finish a parallel region sleep instead of spinning for the next one.
    Prediction runs many short parallel regions (a network's layers on one tile), and on a
    machine with more busy threads than cores a spinning thread holds the core its partner
    needs: on the shared 2-core VM under a load average of 14, one CT-sized case (v2 model
    Dataset902, 132 x 120 x 36 voxels, 2 threads, TTA off) took 148 s wall and 37 s CPU
    spinning and 48 s wall and 15 s CPU passive (1 thread: 53 s). OpenMP reads the variable
    when it starts, so this must run before torch is imported; where torch already is (a
    caller's process), nothing changes."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnpipe", description="nnU-Net for PyTorch as a pipeline. Each subcommand runs one "
        "stage; `snakemake --cores all results/tables.md` runs them all.")
    p.add_argument("--version", action="version", version=f"nnpipe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name: str, fn: Callable, arguments: Callable[[argparse.ArgumentParser], None],
              help_: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        """The subcommand ``name``: ``fn`` runs it, ``arguments`` (beside ``fn`` above)
        adds its own arguments to the two every stage takes."""
        sp = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases))
        sp.add_argument("--config", help="study YAML (default: schema defaults)")
        sp.add_argument("--config-json", help="config sections as JSON, applied over --config "
                        "(the workflow passes the sections each stage reads)")
        sp.set_defaults(func=fn)
        arguments(sp)
        return sp

    stage("download", cmd_download, _download_args,
          "Create the raw dataset folder (embedded, local, or an MSD task downloaded with "
          "resume and checksum).")
    stage("fingerprint", cmd_fingerprint, _fingerprint_args,
          "Measure spacings, shapes, intensities.")
    stage("plan", cmd_plan, _plan_args,
          "Plan spacing, patch, topology and batch for one dimension.")
    stage("split", cmd_split, _split_args,
          "Make the 5-fold cross-validation split (splits.json).")
    stage("preprocess", cmd_preprocess, _preprocess_args,
          "Crop, normalize and resample every training case.")
    stage("train", cmd_train, _train_args,
          "Train one fold (resumes from last.pt; torchrun for DDP).")
    stage("previous", cmd_previous, _previous_args,
          "A cascade stage's training input: the low-resolution cross-validation predictions "
          "on the preprocessed grid (<case>_prev.npy).")
    stage("predict", cmd_predict, _predict_args,
          "Sliding-window prediction: label maps in each input's own format and geometry.")
    stage("gather", cmd_gather, _gather_args,
          "Check the records of the parts of a sharded `nnpipe predict --part I --parts N "
          "--part-record R` (every part once, every case in exactly one part) and link every "
          "case's files into one folder.")
    stage("evaluate", cmd_evaluate, _evaluate_args,
          "Dice, IoU, HD95, surface Dice per class per case in original space (CSV, summary "
          "JSON).")
    stage("postprocess", cmd_postprocess, _postprocess_args,
          "Decide largest-component postprocessing per class from the cross-validation "
          "predictions (JSON).")
    stage("best", cmd_best, _best_args,
          "Find the best configuration of a study (nnU-Net's find_best_configuration): "
          "compare the cross-validation Dice, after postprocessing, of every run and of every"
          " 2D + 3D ensemble (their saved validation probabilities averaged), and write "
          "best.json for `nnpipe predict --model best.json` and `nnpipe export`.",
          aliases=("find_best_configuration",))  # nnU-Net users' spelling
    stage("export", cmd_export, _export_args,
          "Write a portable model.zip (plans, every fold's weights as plain tensors, label "
          "table, channel names, postprocessing, nnpipe version, SHA-256 manifest) that "
          "`nnpipe predict --model model.zip` runs anywhere.")
    stage("benchmark", cmd_benchmark, _benchmark_args,
          "Training or inference throughput like the reference, at steady state. Without "
          "--plan: the reference's MSD Task01 network (4 channels, 4 classes, 128³ in 3D, "
          "192×160 in 2D) on synthetic data. The seed's spellings work: --batch_size, --amp, "
          "--gpus, --bind.")
    stage("network", cmd_network, _network_args,
          "Parameters and forward GFLOP per sample of each planning.network preset (plain, "
          "resenc_m, resenc_l) on the reference's MSD Task01 topology (4 channels, 4 classes,"
          " 128³ in 3D, 192×160 in 2D), then at each preset's own plan of a Task01-sized "
          "dataset.")
    stage("tables", cmd_tables, _tables_args,
          "Render results/tables.md from the study's outputs.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "predict" and not args.input and (args.raw is None or (
            not args.test and not args.cases and (args.splits is None or args.fold is None))):
        print("nnpipe predict: give --input, or --raw with --test, --cases, or --splits and "
              "--fold", file=sys.stderr)
        return 2
    if args.command == "predict":
        _passive_omp_threads()
    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"nnpipe {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # one line instead of a traceback: every stage resumes (training from last.pt,
        # predict with --continue, a Snakemake study by running the same command again)
        print(f"\nnnpipe {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
