"""Training and inference throughput, measured like the reference.

A warm-up pass of ``warmup_steps`` untimed steps (cuDNN autotuning, allocator growth), then
``timed_steps`` timed steps. Throughput = global batch / mean step time (samples/s); latency
statistics are per step (per batch), in ms: mean, p90, p95, p99. Training steps include
fetching the batch from the loader (sampling and augmentation), forward, loss, backward and
the optimizer step; inference steps are one forward pass over a batch of patches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.data.augment import AugmentSettings
from nnpipe.data.loader import make_loader
from nnpipe.data.sampling import SamplerSettings
from nnpipe.io import read_json
from nnpipe.machine import cpu_model
from nnpipe.model import build_unet
from nnpipe.planning.plan import Plan
from nnpipe.planning.topology import unet_filters, unet_topology
from nnpipe.progress import log
from nnpipe.training import distributed as D
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.precision import autocast, configure_backend, get_precision, make_scaler

MODES = ("train", "predict", "loader")


@dataclass(frozen=True)
class BenchmarkSpec:
    mode: str  # train | predict
    batch_size: int  # per process
    precision: str
    warmup_steps: int
    timed_steps: int
    patch_size: tuple[int, ...] = ()  # empty: the plan's
    synthetic: bool = False  # random tensors instead of real patches with augmentation
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # channels-last memory format for network and inputs
    loader: str = "torch"  # data pipeline backend (torch | dali)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"benchmark mode {self.mode!r} is unknown; choose one of {MODES}")
        if self.batch_size < 1 or self.timed_steps < 2:
            raise ValueError(f"benchmark needs batch_size >= 1 and timed_steps >= 2, got "
                             f"{self.batch_size} and {self.timed_steps}")


def plan_for_patch(plan: Plan, patch_size: tuple[int, ...]) -> Plan:
    """The plan with another patch size and the topology derived for it (reference shapes)."""
    if not patch_size or tuple(patch_size) == tuple(plan.patch_size):
        return plan
    if len(patch_size) != plan.dim:
        raise ValueError(f"benchmark patch {list(patch_size)} has {len(patch_size)} axes; the "
                         f"{plan.dim}D plan needs {plan.dim}")
    kernels, strides = unet_topology(patch_size, plan.spacing)
    base = plan.filters[0]
    return dataclasses.replace(plan, patch_size=tuple(patch_size), kernels=kernels,
                               strides=strides, filters=unet_filters(len(strides), plan.dim, base))


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"mean": float(ms.mean()), "p90": float(np.percentile(ms, 90)),
            "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))}


def _timed(step: Callable[[], None], n: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def _batches(plan: Plan, spec: BenchmarkSpec, preprocessed_dir: Path | None,
             device: torch.device, rank: int):
    """An endless batch source: the real loader (sampling + augmentation) or random tensors."""
    shape = (spec.batch_size, plan.num_channels, *plan.patch_size)
    if spec.synthetic or preprocessed_dir is None:
        image = torch.randn(shape, device=device)
        seg = torch.randint(0, plan.num_classes, (spec.batch_size, 1, *plan.patch_size),
                            device=device)
        while True:
            yield image, seg
    cases = sorted(read_json(preprocessed_dir / "manifest.json")["cases"])
    loader = make_loader(spec.loader, preprocessed_dir, cases,
                         SamplerSettings(patch_size=tuple(plan.patch_size), foreground_prob=0.4,
                                         dim=plan.dim, slice_axis=plan.slice_axis),
                         AugmentSettings(enabled=spec.mode != "predict"),
                         batch_size=spec.batch_size, seed=rank, device=device)
    yield from loader


def run_benchmark(plan: Plan, spec: BenchmarkSpec, preprocessed_dir: Path | None = None,
                  threads: int | None = None, force_cpu: bool = False) -> dict[str, Any]:
    """Measure one benchmark cell; returns the JSON record the tables read."""
    info = D.init_distributed(force_cpu=force_cpu)
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True
        plan = plan_for_patch(plan, spec.patch_size)
        precision = get_precision(spec.precision, info.device)
        configure_backend(precision)
        batches = _batches(plan, spec, preprocessed_dir, info.device, info.rank)
        step = _STEPS[spec.mode](plan, spec, precision, info, batches)
        log(f"benchmark {spec.mode} {plan.dim}D bs {spec.batch_size} {spec.precision}: "
            f"{spec.warmup_steps} warm-up steps")
        _timed(step, spec.warmup_steps, info.device)
        times = _timed(step, spec.timed_steps, info.device)
        mean_step = float(np.mean(times))
        gathered = D.all_reduce_mean(mean_step, info)
        throughput = spec.batch_size * info.world_size / gathered
        log(f"benchmark {spec.mode} {plan.dim}D bs {spec.batch_size} {spec.precision}: "
            f"{throughput:.2f} samples/s")
        return {
            "mode": spec.mode, "dim": plan.dim, "precision": spec.precision,
            "batch_size": spec.batch_size, "gpus": info.world_size,
            "patch_size": list(plan.patch_size), "throughput": throughput,
            "latency_ms": latency_stats(times), "warmup_steps": spec.warmup_steps,
            "timed_steps": spec.timed_steps,
            "synthetic": spec.synthetic or preprocessed_dir is None,
            "device": _device_name(info.device), "torch": torch.__version__,
        }
    finally:
        D.shutdown(info)


def _network(plan: Plan, spec: BenchmarkSpec, info: D.DistInfo) -> tuple[torch.nn.Module, Any]:
    fmt = torch.contiguous_format
    if spec.channels_last:
        fmt = torch.channels_last_3d if plan.dim == 3 else torch.channels_last
    model = build_unet(plan, deep_supervision=spec.mode == "train").to(info.device,
                                                                      memory_format=fmt)
    return model, fmt


def _train_step(plan, spec, precision, info, batches) -> Callable[[], None]:
    """One optimizer step as the trainer takes it, batch fetching (sampling, augmentation)
    included."""
    model, fmt = _network(plan, spec, info)
    net = (torch.nn.parallel.DistributedDataParallel(model) if info.world_size > 1 else model)
    if spec.compile:
        net = torch.compile(net)
    net.train()
    fused = {"fused": True} if info.device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=8e-4, **fused)
    scaler = make_scaler(precision, info.device)
    loss_fn = DeepSupervisionLoss()

    def step() -> None:
        image, seg = next(batches)
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, info.device):
            loss = loss_fn(net(image.contiguous(memory_format=fmt)), seg)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _predict_step(plan, spec, precision, info, batches) -> Callable[[], None]:
    """One forward pass over a batch of patches already on the device, through the network
    ``nnpipe predict`` runs (on CPUs: :func:`~nnpipe.inference.ensemble.cpu_fast_path`)."""
    from nnpipe.inference.ensemble import cpu_fast_path

    model, fmt = _network(plan, spec, info)
    model.eval()
    if info.device.type == "cpu":
        model, fmt = cpu_fast_path(model, plan.dim)
    net = torch.compile(model) if spec.compile else model
    image = next(batches)[0].contiguous(memory_format=fmt)

    def step() -> None:
        with torch.inference_mode(), autocast(precision, info.device):
            net(image)

    return step


def _loader_step(plan, spec, precision, info, batches) -> Callable[[], None]:
    """The data pipeline alone: fetch one augmented batch onto the device."""

    def step() -> None:
        next(batches)

    return step


_STEPS: dict[str, Callable[..., Callable[[], None]]] = {
    "train": _train_step, "predict": _predict_step, "loader": _loader_step,
}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({torch.get_num_threads()} threads)"
