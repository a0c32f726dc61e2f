"""The training step, defined once: what the trainer runs every step and what
``nnpipe benchmark --mode train`` times.

:func:`build_step` makes the parts of one training process from the plan and the study's
training settings (network, its DDP and compile wrappers, optimizer and schedule, gradient
scaler, loss, precision, memory format); :func:`training_loader` makes its batch source
(sampling and augmentation as configured); :func:`train_step` takes one optimizer step. The
benchmark calls the same three functions, so a study with ``optimizer: sgd`` (nnU-Net's SGD
with poly decay) is benchmarked with SGD and its schedule, not with another recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch

from nnpipe.config import TrainingSettings
from nnpipe.data.augment import AugmentSettings
from nnpipe.data.loader import make_loader
from nnpipe.data.sampling import SamplerSettings
from nnpipe.labels import LabelScheme
from nnpipe.model import build_unet
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.training import regions as R
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.precision import (
    Precision,
    autocast,
    configure_backend,
    get_precision,
    make_scaler,
)
from nnpipe.training.transfer import transfer_weights, warmup_factor


@dataclass
class TrainingStep:
    """What one optimizer step needs."""

    plan: Plan
    model: torch.nn.Module  # the bare network (state_dict keys without DDP/compile prefixes)
    net: torch.nn.Module  # what is called: DDP- and/or compile-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    precision: Precision
    memory_format: torch.memory_format


def warmup_steps(s: TrainingSettings, total_steps: int) -> int:
    """Learning-rate warm-up steps: ``training.warmup_steps``, or with -1 (the default) 5 %
    of the run's steps when fine-tuning (``training.init_weights``) and none otherwise."""
    if s.warmup_steps >= 0:
        return s.warmup_steps
    return max(1, total_steps // 20) if s.init_weights else 0


def make_optimizer(model: torch.nn.Module, s: TrainingSettings, total_steps: int,
                   device: torch.device
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam at a constant lr (the reference) or SGD Nesterov with poly decay (nnU-Net),
    times a linear warm-up over :func:`warmup_steps` steps (fine-tuning).

    Fused kernels on CUDA: one launch per step for all parameters instead of one per tensor.
    """
    fused = True if device.type == "cuda" else None  # None: torch's default (not fused)
    opt: torch.optim.Optimizer
    if s.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate,
                               weight_decay=s.weight_decay, fused=fused)
        schedule = lambda step: 1.0  # noqa: E731  the reference keeps Adam's lr constant
    else:
        opt = torch.optim.SGD(model.parameters(), lr=s.learning_rate, momentum=0.99,
                              nesterov=True, weight_decay=s.weight_decay, fused=fused)
        # nnU-Net's poly decay, (1 - t/T)^0.9, stepped per optimizer step
        schedule = lambda step: (1 - min(step, total_steps - 1) / total_steps) ** 0.9  # noqa: E731
    warm = warmup_steps(s, total_steps)
    if warm:
        decay = schedule
        schedule = lambda step: warmup_factor(step, warm) * decay(step)  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def label_scheme(plan: Plan, settings: TrainingSettings) -> LabelScheme:
    """The plan's label concept (regions, ignore). Only a plan older than the recorded
    concept takes region mode from ``training.regions``; a recorded plan that is not in
    region mode refuses ``training.regions: true`` (the setting moved to planning)."""
    scheme = plan.scheme(legacy_regions=settings.regions)
    if plan.label_scheme is not None and settings.regions and not scheme.region_mode:
        raise ValueError("training.regions is true but the plan was made without region mode; "
                         "region mode is recorded in the plan now: set planning.regions: true "
                         "and plan again")
    return scheme


def memory_format(plan: Plan, s: TrainingSettings) -> torch.memory_format:
    if not s.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if plan.dim == 3 else torch.channels_last


def build_step(plan: Plan, s: TrainingSettings, precision_name: str, device: torch.device,
               world_size: int, total_steps: int, *, onednn: bool = True,
               pretrained: tuple[Mapping[str, torch.Tensor], str] | None = None,
               log_transfer: bool = True) -> TrainingStep:
    """The parts of one training process on ``device`` for ``plan`` and settings ``s``.

    ``total_steps``: the schedule's length (epochs x steps per epoch). ``onednn=False``
    builds plain ``nn.Conv3d`` modules (the slow path the benchmark compares against).
    ``pretrained``: fine-tuning's starting weights and their source
    (:func:`nnpipe.training.transfer.transfer_weights`; what was re-initialised is logged
    when ``log_transfer``). The network's outputs and loss follow the plan's label concept
    (:func:`label_scheme`: regions, ignore).
    """
    precision = get_precision(precision_name, device)
    configure_backend(precision)
    fmt = memory_format(plan, s)
    # the ignore: torch's stub of Module.to lacks memory_format, which it accepts at runtime
    scheme = label_scheme(plan, s)
    model = build_unet(plan, deep_supervision=s.deep_supervision,
                       out_channels=scheme.output_channels, onednn=onednn
                       ).to(device, memory_format=fmt)  # type: ignore[call-overload]
    if pretrained is not None:
        report = transfer_weights(model, pretrained[0], pretrained[1])
        if log_transfer:
            for line in report.lines():
                log(line)
    net: torch.nn.Module = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if s.compile:  # an OptimizedModule, a Module; torch.compile's stub only says Callable
        net = cast(torch.nn.Module, torch.compile(net))
    optimizer, scheduler = make_optimizer(model, s, total_steps, device)
    # the preprocessed label maps hold class indices (nnpipe.labels.LabelTable)
    loss = DeepSupervisionLoss(R.head_loss(scheme))
    return TrainingStep(plan, model, net, optimizer, scheduler, make_scaler(precision, device),
                        loss, precision, fmt)


def training_loader(s: TrainingSettings, plan: Plan, preprocessed_dir: Path, cases: list[str],
                    sampler: SamplerSettings, batch_size: int, seed: int,
                    device: torch.device) -> Any:
    """The training batches of ``cases``: ``s.loader``'s pipeline, ``s``'s augmentation (a
    cascade stage's previous-stage channels get no intensity augmentation)."""
    augment = replace(AugmentSettings.from_names(s.augment, s.extra_augmentations),
                      intensity_channels=plan.num_channels if plan.previous_channels else 0)
    return make_loader(
        s.loader, preprocessed_dir, cases, sampler, augment, batch_size=batch_size, seed=seed,
        device=device,
        # on CPU, sampler threads would compete with the training threads for the cores
        workers=None if device.type == "cuda" else 1)


def train_step(parts: TrainingStep, image: torch.Tensor, seg: torch.Tensor,
               device: torch.device) -> torch.Tensor:
    """One optimizer step on a batch ``(B, C, *patch)`` / ``(B, 1, *patch)`` on ``device``.

    Returns the detached loss, still on the device: nothing here reads a device value on the
    host (fused optimizers take the scaler's inf check on the device), so the host runs ahead
    and queues the next step while the GPU works.
    """
    image = image.contiguous(memory_format=parts.memory_format)
    parts.optimizer.zero_grad(set_to_none=True)
    with autocast(parts.precision, device):
        loss = parts.loss_fn(parts.net(image), seg)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    return loss.detach().float()
