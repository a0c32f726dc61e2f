"""The training loop: plain PyTorch, read top to bottom.

One call of :func:`train` trains one fold of one (dim, precision, gpus) run. It resumes from
``last.pt`` when a previous attempt was killed, checkpoints every epoch (and on SIGTERM, which
SLURM sends before preemption), and finishes by writing ``final.pt`` (a full checkpoint),
``metrics.csv`` and ``train.json``; ``last.pt`` is removed at the end so that a forced rerun
starts afresh. Asking for more epochs than ``final.pt`` holds extends that run on purpose.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.allocator import TRAINING_TRIM_BYTES, keep_freed_memory
from nnpipe.config import TrainingSettings
from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.io import read_json, write_json, write_text
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.study import LAST_CHECKPOINT, METRICS_FILE, MODEL_FILE, TRAIN_SUMMARY
from nnpipe.training import distributed as D
from nnpipe.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nnpipe.training.determinism import configure_determinism
from nnpipe.training.splits import load_fold
from nnpipe.training.step import TrainingStep, build_step, train_step, training_loader
from nnpipe.training.tensorboard import TensorBoardLog
from nnpipe.training.validation import ValidationPatches, validate

# Exit status after a SIGTERM checkpoint: 128 + SIGTERM, what shells and SLURM expect.
EXIT_PREEMPTED = 143
# With several ranks, SIGTERM flags are compared every this many steps.
STOP_CHECK_EVERY = 4
# Seconds from SIGTERM to exit 143 this trainer is built for: the rest of the current step,
# up to STOP_CHECK_EVERY more, gathering the loader states and writing last.pt. torchrun
# waits longer before it kills its workers (rules/train.smk), and SLURM's warning signal
# comes earlier still before the time limit (profiles/slurm: --signal); a test pins
# SIGTERM_GRACE_S < torchrun's timeout < the --signal lead time.
SIGTERM_GRACE_S = 60


@dataclass(frozen=True)
class TrainRun:
    """What to train and where: one fold of one run of the grid."""

    preprocessed_dir: Path
    splits_path: Path
    fold: int
    precision: str
    out_dir: Path
    settings: TrainingSettings
    epochs: int | None = None  # override settings.epochs (extending a finished run on purpose)
    force_cpu: bool = False
    # a cascade stage: its plan (the preprocessed folder's plan plus previous_stage) and the
    # folder of the previous stage's segmentations (<case>_prev.npy, previous.stage_previous)
    plan_path: Path | None = None
    previous_dir: Path | None = None
    # fine-tuning (training.init_weights): the pretrained state dict and where it came from
    # (nnpipe.finetune.pretrained_weights); None trains from scratch
    pretrained: tuple[Mapping[str, torch.Tensor], str] | None = None


class Preempted(Exception):
    """Raised after a SIGTERM checkpoint so the CLI can exit with ``EXIT_PREEMPTED``."""


@dataclass
class _Parts(TrainingStep):
    """Everything one training process holds: the step's parts and the batches."""

    loader: Any
    batch_size: int
    epochs: int


def sampler_settings(run: TrainRun, plan: Plan, foreground_prob: float,
                     training: bool = True) -> SamplerSettings:
    """The plan's patch, with the previous stage's segmentations for a cascade stage
    (corrupted at random in ``training`` batches, :mod:`nnpipe.data.previous`)."""
    previous = plan.previous_channels > 0
    return SamplerSettings(
        patch_size=tuple(plan.patch_size), foreground_prob=foreground_prob, dim=plan.dim,
        slice_axis=plan.slice_axis,
        previous_dir=str(run.previous_dir) if previous and run.previous_dir else None,
        previous_classes=plan.num_classes if previous else 0,
        previous_perturbation=previous and training)


def run_plan(run: TrainRun) -> Plan:
    """The plan to train: the preprocessed folder's, or ``run.plan_path`` (a cascade stage's
    plan, which must equal it but for the configuration, the previous stage and the notes)."""
    plan = Plan.from_dict(read_json(run.preprocessed_dir / "manifest.json")["plan"])
    if run.plan_path is None:
        given = plan
    else:
        given = Plan.load(run.plan_path)
        same = {"configuration": "", "previous_stage": "", "notes": ()}
        if replace(given, **same) != replace(plan, **same):  # type: ignore[arg-type]
            raise ValueError(f"plan {str(run.plan_path)!r} does not fit the preprocessed data "
                             f"{str(run.preprocessed_dir)!r} (planned otherwise): replan and "
                             "preprocess again")
    if given.previous_channels and run.previous_dir is None:
        raise ValueError(f"plan {given.configuration!r} takes the {given.previous_stage} "
                         "segmentation as input: give its folder (nnpipe train --previous)")
    if given.previous_channels and run.settings.loader != "torch":
        raise ValueError(f"training.loader {run.settings.loader!r} cannot feed a cascade stage "
                         "(previous-stage channels); use the torch loader")
    return given


def _build(run: TrainRun, info: D.DistInfo, plan: Plan, train_ids: list[str]) -> _Parts:
    s = run.settings
    epochs = run.epochs or s.epochs
    batch_size = s.batch_size or plan.batch_size
    step = build_step(plan, s, run.precision, info.device, info.world_size,
                      epochs * s.steps_per_epoch, pretrained=run.pretrained,
                      log_transfer=info.rank == 0)
    # each rank samples from its own shard of the training cases (all of them if too few)
    shard = train_ids[info.rank::info.world_size] if len(train_ids) >= info.world_size \
        else train_ids
    if info.world_size > 1:  # every rank: which node's rank trains on which cases
        log(f"rank {info.rank} on node {info.node}: {len(shard)} of {len(train_ids)} "
            f"training cases ({', '.join(shard)})")
    loader = training_loader(s, plan, run.preprocessed_dir, shard,
                             sampler_settings(run, plan, s.foreground_prob), batch_size,
                             s.seed + 1000 * run.fold + 7919 * info.rank, info.device)
    return _Parts(**vars(step), loader=loader, batch_size=batch_size, epochs=epochs)


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "step": 0, "loss_sum": 0.0, "history": [], "train_seconds": 0.0}


def _resume_source(last: Path, final: Path, info: D.DistInfo) -> Path | None:
    """The checkpoint to continue from (``last.pt``, else ``final.pt``, else none), decided
    by rank 0 and broadcast: on a shared file system another rank may not see a file rank 0
    has just written, and ranks that disagree would wait forever in different collectives."""
    choice = (last if last.is_file() else final if final.is_file() else None) \
        if info.is_main else None
    return D.broadcast_from_main(choice, info)


def check_resumable(ckpt: dict[str, Any], path: Path, info: D.DistInfo) -> None:
    """``ValueError`` if ``ckpt`` was written by a run of another world size or GPU count.

    Each rank resumes its own loader and RNG states (``ckpt["loader"][rank]``), so the ranks
    must be the same ones; a GPU run continues its random streams on GPUs only.
    """
    # checkpoints from before "gpus" was recorded: GPU runs could not resume then (their
    # RNG state was loaded onto the GPU), so the CPU runs are the ones to continue
    world, gpus = int(ckpt.get("world_size", 1)), int(ckpt.get("gpus", 0))
    if (world, gpus) != (info.world_size, info.gpus):
        raise ValueError(f"checkpoint {str(path)!r} was written by a run of {world} rank(s) "
                         f"on {gpus} GPU(s); this run has {info.world_size} rank(s) on "
                         f"{info.gpus} GPU(s) and cannot continue it exactly. Resume with the "
                         f"same number of ranks and GPUs, or delete {path.name} to start afresh")


def _per_rank(value: Any, info: D.DistInfo) -> Any:
    """This rank's entry of a per-rank list (multi-rank checkpoints), or ``value`` itself."""
    return value[info.rank] if isinstance(value, list) else value


def _restore(parts: _Parts, path: Path, info: D.DistInfo) -> dict[str, Any]:
    """Load ``path`` on the CPU and restore every part; ``load_state_dict`` copies weights and
    optimizer state onto the parameters' device, RNG states stay CPU tensors."""
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, path, info)
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    parts.loader.load_state_dict(_per_rank(ckpt["loader"], info))
    set_rng_state(_per_rank(ckpt["rng"], info), info.device)
    return ckpt["state"]


def _checkpoint(parts: _Parts, path: Path, state: dict[str, Any], run: TrainRun,
                info: D.DistInfo) -> None:
    """Write a checkpoint (rank 0); every rank contributes its loader and RNG states."""
    mine = {"loader": parts.loader.state_dict(), "rng": rng_state(info.device)}
    ranks = D.gather_objects(mine, info)
    if not info.is_main:
        return
    per_rank = {k: [r[k] for r in ranks] if info.world_size > 1 else mine[k] for k in mine}
    save_checkpoint(path, {
        "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
        **per_rank, "state": state, "plan": parts.plan.to_dict(),
        # settings.regions says what the model is (readers of older checkpoints look there)
        "settings": asdict(replace(run.settings,
                                   regions=parts.plan.scheme(run.settings.regions).region_mode)),
        "precision": run.precision,
        "world_size": info.world_size, "gpus": info.gpus,
    })


def train(run: TrainRun, threads: int | None = None) -> dict[str, Any]:
    """Train one fold; return the content of ``train.json`` (also written by rank 0)."""
    # before CUDA starts: cuBLAS reads its workspace setting once
    configure_determinism(run.settings.deterministic, run.settings.loader)
    info = D.init_distributed(force_cpu=run.force_cpu)
    try:
        return _train(run, info, threads)
    finally:
        D.shutdown(info)


def _train(run: TrainRun, info: D.DistInfo, threads: int | None) -> dict[str, Any]:
    s = run.settings
    if threads:
        torch.set_num_threads(threads)
    if info.device.type == "cpu":
        # the steps reuse their activations' pages (nnpipe.allocator)
        keep_freed_memory(TRAINING_TRIM_BYTES)
    plan = run_plan(run)
    split = load_fold(run.splits_path, run.fold)
    seed = s.seed + 1000 * run.fold
    torch.manual_seed(seed)
    np.random.seed(seed)
    parts = _build(run, info, plan, split["train"])
    val = _validation_patches(run, plan, split["val"], s.val_patches)

    last, final = run.out_dir / LAST_CHECKPOINT, run.out_dir / MODEL_FILE
    state = _fresh_state()
    source = _resume_source(last, final, info)
    if source is not None:
        state = _restore(parts, source, info)
        if info.is_main:
            verb = ("resuming" if source == last else
                    "already trained:" if state["epoch"] >= parts.epochs else "extending")
            log(f"{verb} fold {run.fold} from {source} at epoch {state['epoch']} "
                f"step {state['step']} (of {parts.epochs} epochs)")

    # TensorBoard hook (rank 0): event files beside metrics.csv with exactly its rows; the
    # checkpoint's history is replayed, then each epoch is added after its checkpoint.
    board = TensorBoardLog(run.out_dir / "tensorboard", state["history"], enabled=info.is_main)

    stop: dict[str, Any] = {"flag": False, "at": None}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(
        flag=True, at=stop["at"] or time.monotonic()))
    try:
        batches = iter(parts.loader)
        while state["epoch"] < parts.epochs:
            t0 = time.perf_counter()
            stopped = _train_steps(parts, state, batches, s.steps_per_epoch, stop, info)
            state["epoch_seconds"] = state.get("epoch_seconds", 0.0) + time.perf_counter() - t0
            if stopped:
                _preempt(parts, last, state, run, info, stop["at"])
            row = _end_epoch(parts, state, val, info, state.pop("epoch_seconds"),
                             s.steps_per_epoch)
            if info.is_main:
                log(f"fold {run.fold} epoch {row['epoch']}/{parts.epochs} "
                    f"loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                    f"val_dice {row['val_dice_mean']:.4f} {row['epoch_time_s']:.1f}s "
                    f"{row['samples_per_s']:.1f} samples/s")
            _checkpoint(parts, last, state, run, info)
            if info.is_main:
                write_text(run.out_dir / METRICS_FILE, _history_csv(state["history"]))
            board.epoch(row)
    finally:
        signal.signal(signal.SIGTERM, previous)
        parts.loader.close()
        board.close()
    return _finish(run, info, parts, state, last, final)


def _preempt(parts: _Parts, last: Path, state: dict[str, Any], run: TrainRun,
             info: D.DistInfo, signalled_at: float | None) -> None:
    """Checkpoint after SIGTERM and raise :class:`Preempted`, once every rank is done."""
    # every rank resumes with the mean partial loss: the epoch's final all-reduce then still
    # gives the mean over ranks of the whole epoch
    state["loss_sum"] = D.all_reduce_mean(state["loss_sum"], info)
    _checkpoint(parts, last, state, run, info)
    # no rank exits before rank 0 has written: torchrun stops the others when one exits
    D.barrier(info)
    took = time.monotonic() - (signalled_at or time.monotonic())
    if info.is_main and took > SIGTERM_GRACE_S:
        log(f"warning: the SIGTERM checkpoint took {took:.0f} s, more than the "
            f"{SIGTERM_GRACE_S} s the launch budgets for it (rules/train.smk); a slower one "
            "is killed before it is written")
    if not info.is_main:  # rank 0 wrote it; the others only say where they stopped
        raise Preempted(f"SIGTERM: rank {info.rank} stopped at epoch {state['epoch']} step "
                        f"{state['step']}; rank 0 wrote the checkpoint {last}")
    raise Preempted(f"SIGTERM: checkpoint written to {last} at epoch {state['epoch']} "
                    f"step {state['step']} ({took:.1f} s after the signal)")


def _should_stop(stop: dict[str, Any], step: int, info: D.DistInfo) -> bool:
    """Whether to stop for SIGTERM, agreed by all ranks (a rank that stops alone would leave
    the others waiting in the next collective). Ranks compare flags every few steps only,
    over the host-side (gloo) group, so the check never waits for the GPU."""
    if info.world_size == 1:
        return bool(stop["flag"])
    if step % STOP_CHECK_EVERY:
        return False
    return D.any_rank(bool(stop["flag"]), info)


def _train_steps(parts: _Parts, state: dict[str, Any],
                 batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                 stop: dict[str, Any], info: D.DistInfo) -> bool:
    """Run the rest of the current epoch's optimizer steps; return True if stopped by SIGTERM.

    The loss is summed on the device and read once at the end, so steps never wait for the
    GPU just to log.
    """
    parts.net.train()
    running = torch.zeros((), device=info.device)
    stopped = False
    while state["step"] < steps:
        if _should_stop(stop, state["step"], info):
            stopped = True
            break
        image, seg = next(batches)
        running += train_step(parts, image, seg, info.device)
        state["step"] += 1
    state["loss_sum"] += float(running)
    return stopped


def _validation_patches(run: TrainRun, plan: Plan, val_ids: list[str],
                        n: int) -> ValidationPatches:
    """Fixed validation patches (same every epoch), half centred on foreground."""
    sampler = PatchSampler(run.preprocessed_dir, val_ids,
                           sampler_settings(run, plan, 0.5, training=False))
    image, seg = sampler.sample(np.random.default_rng(run.settings.seed + 999), n)
    return ValidationPatches(torch.from_numpy(image), torch.from_numpy(seg))


def _end_epoch(parts: _Parts, state: dict[str, Any], val: ValidationPatches,
               info: D.DistInfo, seconds: float, steps: int) -> dict[str, Any]:
    parts.model.eval()
    val_loss, dice = validate(parts.model, val, parts.loss_fn, parts.plan.num_classes,
                              parts.batch_size, parts.precision, parts.memory_format, info)
    state["train_seconds"] += seconds
    row = {
        "epoch": state["epoch"] + 1,
        "train_loss": D.all_reduce_mean(state["loss_sum"] / steps, info),
        "val_loss": val_loss,
        "val_dice_mean": float(np.mean(dice)) if dice else math.nan,
        **{f"val_dice_{c}": d for c, d in enumerate(dice, start=1)},
        "lr": parts.optimizer.param_groups[0]["lr"],
        "epoch_time_s": seconds,
        "samples_per_s": steps * parts.batch_size * info.world_size / max(seconds, 1e-9),
    }
    state["history"].append(row)
    state.update(epoch=state["epoch"] + 1, step=0, loss_sum=0.0)
    return row


def _history_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _finish(run: TrainRun, info: D.DistInfo, parts: _Parts, state: dict[str, Any],
            last: Path, final: Path) -> dict[str, Any]:
    history = state["history"]
    summary = {
        "dim": parts.plan.dim, "precision": run.precision, "gpus": info.world_size,
        "fold": run.fold, "epochs": parts.epochs, "steps_per_epoch": run.settings.steps_per_epoch,
        "batch_size": parts.batch_size, "time_to_train_s": round(state["train_seconds"], 3),
        "final_val_dice": history[-1]["val_dice_mean"] if history else None,
        "best_val_dice": max((h["val_dice_mean"] for h in history), default=None),
        "device": str(info.device) if info.device.type == "cpu"
        else torch.cuda.get_device_name(info.device),
    }
    _checkpoint(parts, final, state, run, info)
    if info.is_main:
        write_text(run.out_dir / METRICS_FILE, _history_csv(history))
        write_json(run.out_dir / TRAIN_SUMMARY, summary)
        last.unlink(missing_ok=True)
    D.barrier(info)
    return summary
