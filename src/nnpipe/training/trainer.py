"""The training loop: plain PyTorch, read top to bottom.

One call of :func:`train` trains one fold of one (dim, precision, gpus) run. It resumes from
``last.pt`` when a previous attempt was killed, checkpoints every epoch (and on SIGTERM, which
SLURM sends before preemption), and finishes by writing ``final.pt``, ``metrics.csv`` and
``train.json``; ``last.pt`` is removed at the end so that a forced rerun starts afresh.
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
from nnpipe.data.loader import BatchLoader
from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.io import read_json, write_json, write_text
from nnpipe.model import build_unet
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.training import distributed as D
from nnpipe.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.precision import autocast, configure_backend, get_precision, make_scaler
from nnpipe.training.splits import load_fold

# Exit status after a SIGTERM checkpoint: 128 + SIGTERM, what shells and SLURM expect.
EXIT_PREEMPTED = 143


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


def _make_optimizer(model: torch.nn.Module, s: TrainingSettings, total_steps: int):
    if s.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
        schedule = lambda step: 1.0  # noqa: E731  the reference keeps Adam's lr constant
    else:
        opt = torch.optim.SGD(model.parameters(), lr=s.learning_rate, momentum=0.99,
                              nesterov=True, weight_decay=s.weight_decay)
        # nnU-Net's poly decay, stepped per optimizer step rather than per epoch
        schedule = lambda step: (1 - min(step, total_steps - 1) / total_steps) ** 0.9  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _validation_batch(run: TrainRun, plan: Plan, val_ids: list[str], batch: int):
    """Fixed validation patches (same every epoch), half centred on foreground."""
    sampler = PatchSampler(run.preprocessed_dir, val_ids, SamplerSettings(
        patch_size=tuple(plan.patch_size), foreground_prob=0.5, dim=plan.dim,
        slice_axis=plan.slice_axis))
    image, seg = sampler.sample(np.random.default_rng(run.settings.seed + 999), batch)
    return torch.from_numpy(image), torch.from_numpy(seg)


def _dice_per_class(logits: torch.Tensor, seg: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class pooled over the batch; 1.0 when both are empty."""
    pred = logits.argmax(1)
    ref = seg[:, 0]
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = int(p.sum() + r.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


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
    manifest = read_json(run.preprocessed_dir / "manifest.json")
    plan = Plan.from_dict(manifest["plan"])
    split = load_fold(run.splits_path, run.fold)
    precision = get_precision(run.precision, info.device)
    configure_backend(precision)
    epochs = run.epochs or s.epochs
    seed = s.seed + 1000 * run.fold
    torch.manual_seed(seed)
    np.random.seed(seed)
    if s.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True

    batch_size = s.batch_size or plan.batch_size
    model = build_unet(plan, deep_supervision=s.deep_supervision).to(info.device)
    net = (torch.nn.parallel.DistributedDataParallel(model) if info.world_size > 1 else model)
    optimizer, scheduler = _make_optimizer(model, s, epochs * s.steps_per_epoch)
    scaler = make_scaler(precision, info.device)
    loss_fn = DeepSupervisionLoss()
    loader = BatchLoader(
        run.preprocessed_dir, split["train"],
        SamplerSettings(patch_size=tuple(plan.patch_size), foreground_prob=s.foreground_prob,
                        dim=plan.dim, slice_axis=plan.slice_axis),
        AugmentSettings(enabled=s.augment), batch_size=batch_size,
        seed=seed + 7919 * info.rank, device=info.device)
    val_image, val_seg = _validation_batch(run, plan, split["val"], s.val_patches)

    last = run.out_dir / "last.pt"
    state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "history": [], "train_seconds": 0.0}
    if last.is_file():
        ckpt = load_checkpoint(last, info.device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["loader"][info.rank] if info.world_size > 1 else ckpt["loader"])
        set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        log(f"resuming fold {run.fold} from {last} at epoch {state['epoch']} "
            f"step {state['step']}")

    stop = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))

    def checkpoint(path: Path) -> None:
        loader_state = loader.state_dict()
        if info.world_size > 1:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, loader_state)
            loader_state = gathered
        if info.is_main:
            save_checkpoint(path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "loader": loader_state, "rng": rng_state(), "state": state,
                "plan": plan.to_dict(), "settings": asdict(s), "precision": run.precision,
            })

    batches = iter(loader)
    try:
        while state["epoch"] < epochs:
            t0 = time.perf_counter()
            net.train()
            while state["step"] < s.steps_per_epoch:
                image, seg = next(batches)
                optimizer.zero_grad(set_to_none=True)
                with autocast(precision, info.device):
                    logits = net(image)
                    loss = loss_fn(logits, seg)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state["loss_sum"] += float(loss.detach())
                state["step"] += 1
                if stop["flag"]:
                    state["train_seconds"] += time.perf_counter() - t0
                    checkpoint(last)
                    raise Preempted(f"SIGTERM: checkpoint written to {last} at epoch "
                                    f"{state['epoch']} step {state['step']}")
            row = _end_epoch(state, net, val_image, val_seg, loss_fn, precision, info, plan,
                             optimizer, batch_size, s.steps_per_epoch, time.perf_counter() - t0)
            log(f"fold {run.fold} epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_dice {row['val_dice_mean']:.4f} "
                f"{row['epoch_time_s']:.1f}s")
            checkpoint(last)
            if info.is_main:
                write_text(run.out_dir / "metrics.csv", _history_csv(state["history"]))
    finally:
        signal.signal(signal.SIGTERM, previous)
        close = getattr(loader, "close", None)
        if close is not None:
            close()
    return _finish(run, info, model, plan, state, epochs, batch_size, last)


def _end_epoch(state, net, val_image, val_seg, loss_fn, precision, info, plan, optimizer,
               batch_size, steps, train_seconds) -> dict[str, Any]:
    net.eval()
    with torch.inference_mode(), autocast(precision, info.device):
        logits = net(val_image.to(info.device)).float()
        val_loss = float(loss_fn(logits, val_seg.to(info.device)))
    dice = _dice_per_class(logits.cpu(), val_seg, plan.num_classes)
    state["train_seconds"] += train_seconds
    row = {
        "epoch": state["epoch"] + 1,
        "train_loss": D.all_reduce_mean(state["loss_sum"] / steps, info),
        "val_loss": val_loss,
        "val_dice_mean": float(np.mean(dice)) if dice else math.nan,
        **{f"val_dice_{c}": d for c, d in enumerate(dice, start=1)},
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time_s": train_seconds,
        "samples_per_s": steps * batch_size * info.world_size / max(train_seconds, 1e-9),
    }
    state["history"].append(row)
    state["epoch"] += 1
    state["step"] = 0
    state["loss_sum"] = 0.0
    return row


def _history_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _finish(run: TrainRun, info: D.DistInfo, model, plan: Plan, state: dict[str, Any],
            epochs: int, batch_size: int, last: Path) -> dict[str, Any]:
    summary = {
        "dim": plan.dim, "precision": run.precision, "gpus": info.world_size, "fold": run.fold,
        "epochs": epochs, "steps_per_epoch": run.settings.steps_per_epoch,
        "batch_size": batch_size, "time_to_train_s": round(state["train_seconds"], 3),
        "final_val_dice": state["history"][-1]["val_dice_mean"] if state["history"] else None,
        "best_val_dice": max((h["val_dice_mean"] for h in state["history"]), default=None),
        "device": str(info.device) if info.device.type == "cpu"
        else torch.cuda.get_device_name(info.device),
    }
    if info.is_main:
        save_checkpoint(run.out_dir / "final.pt", {
            "model": model.state_dict(), "plan": plan.to_dict(), "settings": asdict(run.settings),
            "precision": run.precision, "state": state})
        write_json(run.out_dir / "train.json", summary)
        last.unlink(missing_ok=True)
    D.barrier(info)
    return summary
