"""Training and inference throughput, measured like the reference, at steady state.

Warm-up runs at least ``warmup_steps`` untimed steps and then until the last step times
agree, at most ``warmup_cap_s`` seconds (cuDNN autotuning, allocator growth, oneDNN
primitive caches); timing runs at least ``timed_steps`` steps and on to 368, the fewest for
which p99 is bounded by an observed step, at most ``timing_cap_s`` seconds
(:mod:`nnpipe.benchmark.steady` says why 368). Throughput = global batch / mean step time
(samples/s), as the reference; the median-based figure and the spread (CV, p99/median,
mean/median) are recorded beside it, and a cell is marked only when the measurement failed
(:func:`nnpipe.benchmark.steady.measurement_failure`: too few steps, or mean and median
apart). Latency statistics are per step (per batch), in ms. A training step is the
trainer's own (:mod:`nnpipe.training.step`): the study's optimizer and schedule, loss, precision and
loader, fetching the batch (sampling and augmentation), forward, loss, backward and the
optimizer step; inference steps are one forward pass over a batch of patches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnpipe.allocator import TRAINING_TRIM_BYTES, keep_freed_memory
from nnpipe.benchmark.steady import (
    TIMING_CAP_S,
    WARMUP_CAP_S,
    measurement_failure,
    step_stats,
    steps_for_quantile,
    time_steps,
    warm_up,
)
from nnpipe.config import StudyConfig, TrainingSettings, study_config
from nnpipe.data.augment import AugmentSettings
from nnpipe.data.loader import make_loader
from nnpipe.data.sampling import SamplerSettings
from nnpipe.io import read_json
from nnpipe.machine import cpu_model
from nnpipe.model import build_unet
from nnpipe.planning.network import encoder_blocks
from nnpipe.planning.plan import Plan
from nnpipe.planning.topology import unet_filters, unet_topology
from nnpipe.progress import log
from nnpipe.training import distributed as D
from nnpipe.training.precision import Precision, autocast, configure_backend, get_precision
from nnpipe.training.step import build_step, train_step, training_loader

MODES = ("train", "predict", "loader")
# An endless source of (image, seg) batches on the device.
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BenchmarkSpec:
    mode: str  # train | predict | loader
    batch_size: int  # per process
    precision: str
    warmup_steps: int  # at least this many untimed steps
    timed_steps: int  # at least this many timed steps (on to 368 for p99, within the cap)
    patch_size: tuple[int, ...] = ()  # empty: the plan's
    synthetic: bool = False  # random tensors instead of real patches with augmentation
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # channels-last memory format for network and inputs
    loader: str = ""  # data pipeline backend (torch | dali); empty: the training settings'
    warmup_cap_s: float = WARMUP_CAP_S  # warm-up stops here if step times still disagree
    timing_cap_s: float = TIMING_CAP_S  # timing stops here (after timed_steps) short of 368
    bind: bool = False  # pin each rank to its share of the CPUs (nnpipe.benchmark.launch)
    onednn: bool = True  # False: plain nn.Conv3d in training (the slow path, to compare)
    # the study's training section: the train step is the trainer's with these settings
    # (optimizer, schedule, loss, loader, augmentation); None: the schema's defaults
    training: TrainingSettings | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"benchmark mode {self.mode!r} is unknown; choose one of {MODES}")
        if self.batch_size < 1 or self.timed_steps < 2 or self.warmup_steps < 0:
            raise ValueError(f"benchmark needs batch_size >= 1, timed_steps >= 2 and "
                             f"warmup_steps >= 0, got {self.batch_size}, {self.timed_steps} "
                             f"and {self.warmup_steps}")
        if not self.onednn and self.mode == "predict":
            raise ValueError("plain 3D convolutions compare the training path; prediction on "
                             "CPUs always runs them in oneDNN (inference.ensemble.cpu_fast_path)")
        if self.warmup_cap_s < 0 or self.timing_cap_s < 0:
            raise ValueError(f"benchmark time caps must be >= 0 s, got warm-up "
                             f"{self.warmup_cap_s} and timing {self.timing_cap_s}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkSpec:
        training = d.get("training")
        if training is not None:
            training = TrainingSettings(**{
                **training, "extra_augmentations": tuple(training["extra_augmentations"])})
        return cls(**{**d, "patch_size": tuple(d.get("patch_size", ())), "training": training})

    def training_settings(self) -> TrainingSettings:
        """The trainer's settings this cell trains with: the study's (else the schema's
        defaults), with the benchmark's own switches (compile, channels-last, loader) on top."""
        s = self.training or study_config({}).training
        return dataclasses.replace(s, compile=s.compile or self.compile,
                                   channels_last=s.channels_last or self.channels_last,
                                   loader=self.loader or s.loader)


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
                               strides=strides, filters=unet_filters(len(strides), plan.dim, base),
                               encoder_blocks=encoder_blocks(plan.network, len(strides)))


def _synchronized(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``step`` followed by a device synchronisation, so that the clock sees the GPU's work
    (one sync per step, outside the step the trainer takes)."""
    if device.type != "cuda":
        return step

    def synced() -> None:
        step()
        torch.cuda.synchronize(device)

    return synced


def _consensus(info: D.DistInfo) -> Callable[[bool], bool]:
    """Stop only when every rank wants to: ranks must take the same number of steps (each
    DDP step all-reduces gradients), though each judges its own step times."""
    return lambda stop: not D.any_rank(not stop, info)


def _batches(plan: Plan, spec: BenchmarkSpec, preprocessed_dir: Path | None,
             device: torch.device, rank: int) -> Batches:
    """An endless batch source: random tensors, or real patches: the trainer's loader
    (:func:`~nnpipe.training.step.training_loader`: its sampling and augmentation) for the
    train and loader modes, un-augmented patches for predict."""
    shape = (spec.batch_size, plan.num_channels, *plan.patch_size)
    if spec.synthetic or preprocessed_dir is None:
        image = torch.randn(shape, device=device)
        seg = torch.randint(0, plan.num_classes, (spec.batch_size, 1, *plan.patch_size),
                            device=device)
        while True:
            yield image, seg
    cases = sorted(read_json(preprocessed_dir / "manifest.json")["cases"])
    s = spec.training_settings()
    sampler = SamplerSettings(patch_size=tuple(plan.patch_size), foreground_prob=s.foreground_prob,
                              dim=plan.dim, slice_axis=plan.slice_axis)
    if spec.mode == "predict":
        yield from make_loader(s.loader, preprocessed_dir, cases, sampler,
                               AugmentSettings(enabled=False), batch_size=spec.batch_size,
                               seed=rank, device=device)
        return
    yield from training_loader(s, plan, preprocessed_dir, cases, sampler, spec.batch_size,
                               s.seed + 7919 * rank, device)



def benchmark_cell(options: Any, study: StudyConfig) -> tuple[Plan, BenchmarkSpec]:
    """The plan and the :class:`BenchmarkSpec` of one ``nnpipe benchmark`` cell.

    ``options``: the parsed arguments of ``nnpipe benchmark`` (``mode``, ``dim``,
    ``batch_size``, ``precision``/``amp``, ``plan``, ``preprocessed``, ``patch_size``,
    ``warmup``, ``steps``, ``max_warmup_s``, ``max_timing_s``, ``synthetic``, ``compile``,
    ``channels_last``, ``loader``, ``bind``, ``plain_conv3d``); what they leave unset comes
    from ``study.benchmark``, the training recipe from ``study.training``. The plan is
    ``--plan``'s, else the reference's Task01 network (4 channels, 4 classes, 128³ / 192×160);
    the seed's spellings (``--batch_size``, ``--amp``) mean the same as ours.

    Raises:
        ValueError: a plan of another dimension than ``dim``, or real patches
            (``preprocessed``) without the plan they were preprocessed with.
    """
    from nnpipe.planning.task01 import task01_plan

    o, cfg = options, study.benchmark
    if o.plan:
        plan = Plan.load(o.plan)
        if plan.dim != o.dim:
            raise ValueError(f"--dim {o.dim} but plan {o.plan} is {plan.dim}D")
    elif o.preprocessed:
        raise ValueError(f"--preprocessed {o.preprocessed} needs the --plan it was "
                         "preprocessed with (without --plan the benchmark builds the "
                         "reference's Task01 network on synthetic data)")
    else:
        plan = task01_plan(o.dim)
    spec = BenchmarkSpec(
        o.mode, o.batch_size, "amp" if o.amp else o.precision or "fp32",
        cfg.warmup_steps if o.warmup is None else o.warmup,
        cfg.timed_steps if o.steps is None else o.steps,
        tuple(o.patch_size or cfg.patch_size(o.dim)),
        o.synthetic or cfg.synthetic or not o.plan, o.compile, o.channels_last,
        o.loader or "",
        cfg.max_warmup_s if o.max_warmup_s is None else o.max_warmup_s,
        cfg.max_timing_s if o.max_timing_s is None else o.max_timing_s,
        o.bind, not o.plain_conv3d, study.training)
    return plan, spec


def run_benchmark(plan: Plan, spec: BenchmarkSpec, preprocessed_dir: Path | None = None,
                  threads: int | None = None, force_cpu: bool = False,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Measure one benchmark cell in this process (one rank of torchrun's, if started by it);
    returns the JSON record the tables read (:func:`result_line` prints it)."""
    info = D.init_distributed(force_cpu=force_cpu)
    try:
        if spec.bind:
            threads = D.bind_cpus(threads)
        if threads:
            torch.set_num_threads(threads)
        if info.device.type == "cpu" and spec.mode != "predict":
            keep_freed_memory(TRAINING_TRIM_BYTES)  # as the trainer's process does
        torch.backends.cudnn.benchmark = True
        plan = plan_for_patch(plan, spec.patch_size)
        precision = get_precision(spec.precision, info.device)
        configure_backend(precision)
        batches = _batches(plan, spec, preprocessed_dir, info.device, info.rank)
        step = _synchronized(_STEPS[spec.mode](plan, spec, precision, info, batches),
                             info.device)
        agree = _consensus(info)
        what = f"benchmark {spec.mode} {plan.dim}D bs {spec.batch_size} {spec.precision}"
        log(f"{what}: warm-up, >= {spec.warmup_steps} steps, <= {spec.warmup_cap_s:g} s")
        warm = warm_up(step, clock, spec.warmup_steps, spec.warmup_cap_s, agree)
        log(f"{what}: {warm.steps} warm-up steps in {warm.seconds:.1f} s "
            f"({'converged' if warm.converged else 'capped, step times still disagree'})")
        times = time_steps(step, clock, spec.timed_steps, spec.timing_cap_s, consensus=agree)
        stats = step_stats(times)
        mean_s = D.all_reduce_mean(stats["latency_ms"]["mean"] / 1000.0, info)
        median_s = D.all_reduce_mean(stats["latency_ms"]["median"] / 1000.0, info)
        record = {
            "mode": spec.mode, "dim": plan.dim, "precision": spec.precision,
            "batch_size": spec.batch_size, "gpus": info.world_size,
            "patch_size": list(plan.patch_size),
            "throughput": spec.batch_size * info.world_size / mean_s,
            "throughput_median": spec.batch_size * info.world_size / median_s,
            **stats,
            "warmup_steps": spec.warmup_steps, "warmup": warm.to_dict(),
            "timed_steps": len(times), "p99_min_steps": steps_for_quantile(),
            "timing_capped": len(times) < max(spec.timed_steps, steps_for_quantile()),
            "synthetic": spec.synthetic or preprocessed_dir is None,
            "network": plan.dataset, "device": _device_name(info.device),
            "torch": torch.__version__, "bind": spec.bind,
            "conv3d": "onednn" if spec.onednn else "plain",
            # this rank's step times, so that a table rule can be judged again on the run
            "step_ms": [round(t * 1000.0, 3) for t in times],
        }
        return record
    finally:
        D.shutdown(info)


def result_line(record: dict[str, Any]) -> str:
    """One line: the figure, mean and median, p99 and how many steps stand behind it, the
    spread and whether the figure is a result, the warm-up."""
    lat, spread, warm = record["latency_ms"], record["spread"], record["warmup"]
    why = measurement_failure(lat, record["timed_steps"])
    p99 = (f"p99 {lat['p99']:.1f} ms" if record["p99_resolved"] else
           f"p99 {lat['p99']:.1f} ms unresolved ({record['timed_steps']} < "
           f"{record['p99_min_steps']} steps)")
    scaling = (f"; weak scaling {record['weak_scaling']:.2f} over 1 rank"
               if "weak_scaling" in record else "")
    return (f"{record['mode']} {record['dim']}D bs {record['batch_size']} "
            f"{record['precision']} {record['gpus']} rank(s): {record['throughput']:.2f} "
            f"samples/s (median-based {record['throughput_median']:.2f}; step mean "
            f"{lat['mean']:.1f} ms, median {lat['median']:.1f} ms, {p99}, "
            f"{record['timed_steps']} steps; CV {spread['cv']:.2f}, p99/median "
            f"{spread['p99_over_median']:.2f}: "
            f"{'a result' if why is None else 'NOT A RESULT, ' + why}"
            f"; warm-up {warm['steps']} steps in {warm['seconds']:.1f} s, "
            f"{'converged' if warm['converged'] else 'capped'}){scaling} "
            f"[{record['network']}, {record['device']}]")


def _network(plan: Plan, spec: BenchmarkSpec, info: D.DistInfo) -> tuple[torch.nn.Module, Any]:
    fmt = torch.contiguous_format
    if spec.channels_last:
        fmt = torch.channels_last_3d if plan.dim == 3 else torch.channels_last
    model = build_unet(plan, deep_supervision=False, onednn=spec.onednn)
    # the ignore: torch's stub of Module.to lacks memory_format, which it accepts at runtime
    model = model.to(info.device, memory_format=fmt)  # type: ignore[call-overload]
    return model, fmt


def _train_step(plan: Plan, spec: BenchmarkSpec, precision: Precision, info: D.DistInfo,
                batches: Batches) -> Callable[[], None]:
    """One optimizer step as the trainer takes it (:func:`nnpipe.training.step.train_step`,
    parts from :func:`~nnpipe.training.step.build_step` with the study's training settings),
    batch fetching (sampling, augmentation) included."""
    s = spec.training_settings()
    parts = build_step(plan, s, spec.precision, info.device, info.world_size,
                       s.epochs * s.steps_per_epoch, onednn=spec.onednn)
    parts.net.train()

    def step() -> None:
        image, seg = next(batches)
        train_step(parts, image, seg, info.device)

    return step


def _predict_step(plan: Plan, spec: BenchmarkSpec, precision: Precision, info: D.DistInfo,
                  batches: Batches) -> Callable[[], None]:
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


def _loader_step(plan: Plan, spec: BenchmarkSpec, precision: Precision, info: D.DistInfo,
                 batches: Batches) -> Callable[[], None]:
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
