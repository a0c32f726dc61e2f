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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.config import TrainingSettings
from nnpipe.data.augment import AugmentSettings
from nnpipe.data.loader import make_loader
from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.io import read_json, write_json, write_text
from nnpipe.model import build_unet
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.report.tensorboard import TensorBoardLog
from nnpipe.training import distributed as D
from nnpipe.training import regions as R
from nnpipe.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.precision import (
    Precision,
    autocast,
    configure_backend,
    get_precision,
    make_scaler,
)
from nnpipe.training.splits import load_fold

# Exit status after a SIGTERM checkpoint: 128 + SIGTERM, what shells and SLURM expect.
EXIT_PREEMPTED = 143
# With several ranks, SIGTERM flags are compared every this many steps.
STOP_CHECK_EVERY = 4


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


class Preempted(Exception):
    """Raised after a SIGTERM checkpoint so the CLI can exit with ``EXIT_PREEMPTED``."""


@dataclass
class _Parts:
    """Everything one training process holds."""

    plan: Plan
    model: torch.nn.Module  # the bare network (state_dict keys without DDP/compile prefixes)
    net: torch.nn.Module  # what is called: DDP- and/or compile-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: Any
    loss_fn: torch.nn.Module
    precision: Precision
    memory_format: torch.memory_format
    batch_size: int
    epochs: int


def make_optimizer(model: torch.nn.Module, s: TrainingSettings, total_steps: int,
                   device: torch.device):
    """Adam at a constant lr (the reference) or SGD Nesterov with poly decay (nnU-Net).

    Fused kernels on CUDA: one launch per step for all parameters instead of one per tensor.
    """
    fused = {"fused": True} if device.type == "cuda" else {}
    if s.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate,
                               weight_decay=s.weight_decay, **fused)
        schedule = lambda step: 1.0  # noqa: E731  the reference keeps Adam's lr constant
    else:
        opt = torch.optim.SGD(model.parameters(), lr=s.learning_rate, momentum=0.99,
                              nesterov=True, weight_decay=s.weight_decay, **fused)
        # nnU-Net's poly decay, (1 - t/T)^0.9, stepped per optimizer step
        schedule = lambda step: (1 - min(step, total_steps - 1) / total_steps) ** 0.9  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _memory_format(plan: Plan, s: TrainingSettings) -> torch.memory_format:
    if not s.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if plan.dim == 3 else torch.channels_last


def _build(run: TrainRun, info: D.DistInfo, plan: Plan, train_ids: list[str]) -> _Parts:
    s = run.settings
    epochs = run.epochs or s.epochs
    batch_size = s.batch_size or plan.batch_size
    precision = get_precision(run.precision, info.device)
    configure_backend(precision)
    fmt = _memory_format(plan, s)
    model = build_unet(plan, deep_supervision=s.deep_supervision,
                       out_channels=R.model_outputs(plan.num_classes, s.regions)
                       ).to(info.device, memory_format=fmt)
    net: torch.nn.Module = model
    if info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if s.compile:
        net = torch.compile(net)
    optimizer, scheduler = make_optimizer(model, s, epochs * s.steps_per_epoch, info.device)
    # each rank samples from its own shard of the training cases (all of them if too few)
    shard = train_ids[info.rank::info.world_size] if len(train_ids) >= info.world_size \
        else train_ids
    loader = make_loader(
        s.loader, run.preprocessed_dir, shard,
        SamplerSettings(patch_size=tuple(plan.patch_size), foreground_prob=s.foreground_prob,
                        dim=plan.dim, slice_axis=plan.slice_axis),
        AugmentSettings.from_names(s.augment, s.extra_augmentations), batch_size=batch_size,
        seed=s.seed + 1000 * run.fold + 7919 * info.rank, device=info.device,
        # on CPU, sampler threads would compete with the training threads for the cores
        workers=None if info.device.type == "cuda" else 1)
    # the preprocessed label maps hold class indices (nnpipe.labels.LabelTable)
    loss = DeepSupervisionLoss(R.head_loss(range(plan.num_classes), s.regions))
    return _Parts(plan, model, net, optimizer, scheduler, make_scaler(precision, info.device),
                  loader, loss, precision, fmt, batch_size, epochs)


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "step": 0, "loss_sum": 0.0, "history": [], "train_seconds": 0.0}


def _restore(parts: _Parts, path: Path, info: D.DistInfo) -> dict[str, Any]:
    ckpt = load_checkpoint(path, info.device)
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    loader_state = ckpt["loader"]
    if isinstance(loader_state, list):  # one per rank
        loader_state = loader_state[info.rank]
    parts.loader.load_state_dict(loader_state)
    set_rng_state(ckpt["rng"])
    return ckpt["state"]


def _checkpoint(parts: _Parts, path: Path, state: dict[str, Any], run: TrainRun,
                info: D.DistInfo) -> None:
    loader_state: Any = parts.loader.state_dict()
    if info.world_size > 1:
        gathered: list[Any] = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, loader_state)
        loader_state = gathered
    if info.is_main:
        save_checkpoint(path, {
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
            "loader": loader_state, "rng": rng_state(), "state": state,
            "plan": parts.plan.to_dict(), "settings": asdict(run.settings),
            "precision": run.precision, "world_size": info.world_size,
        })


def train(run: TrainRun, threads: int | None = None) -> dict[str, Any]:
    """Train one fold; return the content of ``train.json`` (also written by rank 0)."""
    info = D.init_distributed(force_cpu=run.force_cpu)
    try:
        return _train(run, info, threads)
    finally:
        D.shutdown(info)


def _train(run: TrainRun, info: D.DistInfo, threads: int | None) -> dict[str, Any]:
    s = run.settings
    if threads:
        torch.set_num_threads(threads)
    plan = Plan.from_dict(read_json(run.preprocessed_dir / "manifest.json")["plan"])
    split = load_fold(run.splits_path, run.fold)
    seed = s.seed + 1000 * run.fold
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(s.deterministic)
    torch.backends.cudnn.benchmark = not s.deterministic
    parts = _build(run, info, plan, split["train"])
    val_image, val_seg = _validation_batch(run, plan, split["val"], s.val_patches)

    last, final = run.out_dir / "last.pt", run.out_dir / "final.pt"
    state = _fresh_state()
    source = last if last.is_file() else final if final.is_file() else None
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

    stop = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        batches = iter(parts.loader)
        while state["epoch"] < parts.epochs:
            t0 = time.perf_counter()
            stopped = _train_steps(parts, state, batches, s.steps_per_epoch, stop, info)
            state["epoch_seconds"] = state.get("epoch_seconds", 0.0) + time.perf_counter() - t0
            if stopped:
                # every rank resumes with the mean partial loss: the epoch's final all-reduce
                # then still gives the mean over ranks of the whole epoch
                state["loss_sum"] = D.all_reduce_mean(state["loss_sum"], info)
                _checkpoint(parts, last, state, run, info)
                raise Preempted(f"SIGTERM: checkpoint written to {last} at epoch "
                                f"{state['epoch']} step {state['step']}")
            row = _end_epoch(parts, state, val_image, val_seg, info,
                             state.pop("epoch_seconds"), s.steps_per_epoch)
            if info.is_main:
                log(f"fold {run.fold} epoch {row['epoch']}/{parts.epochs} "
                    f"loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                    f"val_dice {row['val_dice_mean']:.4f} {row['epoch_time_s']:.1f}s "
                    f"{row['samples_per_s']:.1f} samples/s")
            _checkpoint(parts, last, state, run, info)
            if info.is_main:
                write_text(run.out_dir / "metrics.csv", _history_csv(state["history"]))
            board.epoch(row)
    finally:
        signal.signal(signal.SIGTERM, previous)
        parts.loader.close()
        board.close()
    return _finish(run, info, parts, state, last, final)


def _should_stop(stop: dict[str, bool], step: int, info: D.DistInfo) -> bool:
    """Whether to stop for SIGTERM, agreed by all ranks (a rank that stops alone would leave
    the others waiting in the next collective). Ranks compare flags every few steps only, so
    the check costs no synchronization on most steps."""
    if info.world_size == 1:
        return stop["flag"]
    if step % STOP_CHECK_EVERY:
        return False
    return D.all_reduce_mean(float(stop["flag"]), info) > 0


def _train_steps(parts: _Parts, state: dict[str, Any], batches, steps: int,
                 stop: dict[str, bool], info: D.DistInfo) -> bool:
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
        image = image.contiguous(memory_format=parts.memory_format)
        parts.optimizer.zero_grad(set_to_none=True)
        with autocast(parts.precision, info.device):
            loss = parts.loss_fn(parts.net(image), seg)
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        running += loss.detach().float()
        state["step"] += 1
    state["loss_sum"] += float(running)
    return stopped


def _validation_batch(run: TrainRun, plan: Plan, val_ids: list[str], batch: int):
    """Fixed validation patches (same every epoch), half centred on foreground."""
    sampler = PatchSampler(run.preprocessed_dir, val_ids, SamplerSettings(
        patch_size=tuple(plan.patch_size), foreground_prob=0.5, dim=plan.dim,
        slice_axis=plan.slice_axis))
    image, seg = sampler.sample(np.random.default_rng(run.settings.seed + 999), batch)
    return torch.from_numpy(image), torch.from_numpy(seg)


def dice_per_class(logits: torch.Tensor, seg: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class pooled over the batch; 1.0 when both are empty."""
    pred = logits.argmax(1)
    ref = seg[:, 0]
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = int(p.sum() + r.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


def _end_epoch(parts: _Parts, state: dict[str, Any], val_image: torch.Tensor,
               val_seg: torch.Tensor, info: D.DistInfo, seconds: float,
               steps: int) -> dict[str, Any]:
    parts.model.eval()
    image = val_image.to(info.device).contiguous(memory_format=parts.memory_format)
    with torch.inference_mode(), autocast(parts.precision, info.device):
        logits = parts.model(image).float()
        val_loss = float(parts.loss_fn(logits, val_seg.to(info.device)))
    dice = R.validation_dice(logits.cpu(), val_seg, parts.plan.num_classes, parts.loss_fn,
                             dice_per_class)
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
        write_text(run.out_dir / "metrics.csv", _history_csv(history))
        write_json(run.out_dir / "train.json", summary)
        last.unlink(missing_ok=True)
    D.barrier(info)
    return summary
