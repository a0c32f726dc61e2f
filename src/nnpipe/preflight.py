"""Preflight: refuse, before any job runs, a study this machine cannot run.

The workflow calls :func:`machine_problems` when Snakemake parses it on the machine that runs
the jobs (``rules/common.smk``; not under SLURM, whose jobs run on other nodes), so a study
that asks for amp on a CPU stops in one line on the terminal instead of failing at the first
training job, after planning and preprocessing, with the reason in a log file.

What is checked (each a fact of the study config against a fact of the machine):

* training or benchmark precisions amp/tf32 without a CUDA GPU
  (:func:`nnpipe.training.precision.get_precision` refuses them in the job);
* process counts (``grid.gpus``, ``benchmark.gpus``) above the GPUs present (one process per
  GPU, nnpipe.training.launch);
* ``training.loader: dali`` without a CUDA GPU or without the ``nvidia-dali`` package;
* the largest training step the planning budgets allow (plain network: a patch of
  ``max_patch_voxels_*`` at the batch ``batch_voxels_*`` / ``max_batch_size`` give it;
  ``training.batch_size`` when set) over the machine's memory (GPU memory, else RAM), by
  :func:`nnpipe.planning.network.estimate_vram_gb`; ResEnc presets: their memory target over
  the GPU's memory.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

from nnpipe.config import StudyConfig
from nnpipe.planning import network as N
from nnpipe.planning.topology import unet_filters, unet_topology

GPU_ONLY_PRECISIONS = ("amp", "tf32")
# The planner's floor on the batch (nnpipe.planning.planner.PlannerSettings.min_batch_size).
MIN_BATCH_SIZE = 2


@dataclass(frozen=True)
class Machine:
    """What the study is checked against: CUDA GPUs (count, memory of the first in GB of
    1e9 bytes), RAM in GB, and whether NVIDIA DALI is installed."""

    gpus: int
    gpu_memory_gb: float
    ram_gb: float
    dali: bool

    @classmethod
    def this(cls) -> Machine:
        """This machine, as torch and the OS see it."""
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        memory = torch.cuda.get_device_properties(0).total_memory / N.GB if gpus else 0.0
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / N.GB
        return cls(gpus=gpus, gpu_memory_gb=memory, ram_gb=ram, dali=_installed("nvidia.dali"))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported; False also when its parent package is missing
    (``find_spec("nvidia.dali")`` raises without any ``nvidia`` package)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def largest_step_gb(study: StudyConfig, dim: int, fp32: bool) -> tuple[float, str]:
    """Memory (GB) of the largest training step the plain network's planning budgets allow
    in ``dim``-D, and the step in words (patch and batch).

    The planner fits the patch within ``max_patch_voxels_<dim>d`` and takes
    ``batch_voxels_<dim>d // patch voxels`` patches (at least 2, at most ``max_batch_size``),
    so a full-budget cube (square) patch at that batch is the largest step it can plan.
    ``fp32``: activations kept in 4 bytes instead of mixed precision's 2.
    """
    planning, training = study.planning, study.training
    budget = planning.max_patch_voxels_3d if dim == 3 else planning.max_patch_voxels_2d
    side = max(1, math.floor(budget ** (1 / dim) + 1e-9))
    patch = (side,) * dim
    batch_budget = planning.batch_voxels_3d if dim == 3 else planning.batch_voxels_2d
    batch = training.batch_size or min(max(batch_budget // math.prod(patch), MIN_BATCH_SIZE),
                                       planning.max_batch_size)
    kernels, strides = unet_topology(patch, (1.0,) * dim)
    filters = unet_filters(len(strides), dim, planning.base_filters)
    heads = N.deep_supervision_heads(len(strides)) if training.deep_supervision else 0
    convs = N.layers(patch, kernels, strides, filters, 1, 2, heads=heads)
    gb = N.estimate_vram_gb(convs, batch)
    if fp32:  # estimate_vram_gb counts mixed precision's 2-byte activations
        gb += (batch * N.feature_map_voxels(convs) * N.SAVED_PER_CONV_OUTPUT
               * N.ACTIVATION_BYTES / N.GB)
    return gb, f"{'x'.join(map(str, patch))} patch, batch {batch}"


def machine_problems(study: StudyConfig, machine: Machine | None = None) -> list[str]:
    """What of ``study`` cannot run on ``machine`` (default: this one), one sentence each
    saying what to change; empty when everything can."""
    m = machine or Machine.this()
    problems: list[str] = []
    bench = study.benchmark
    wanted = {"grid.precisions": study.grid.precisions,
              "benchmark.precisions": bench.cells_precisions()}
    if not m.gpus:
        for key, precisions in wanted.items():
            bad = [p for p in precisions if p in GPU_ONLY_PRECISIONS]
            if bad:
                problems.append(f"{key} has {', '.join(bad)}, which needs a CUDA GPU and this "
                                "machine has none: use fp32 (or bf16) on a CPU")
    for key, counts in {"grid.gpus": study.grid.gpus,
                        "benchmark.gpus": bench.gpus if bench.cells_precisions() else ()}.items():
        if counts and max(counts) > max(m.gpus, 1):
            problems.append(f"{key} asks for {max(counts)} processes (one per GPU) and this "
                            f"machine has {m.gpus} CUDA GPU(s): use {key}: [1]")
    if study.training.loader == "dali" and not m.gpus:
        problems.append("training.loader is dali, which needs a CUDA GPU and this machine has "
                        "none: use training.loader: torch")
    elif study.training.loader == "dali" and not m.dali:
        problems.append("training.loader is dali but nvidia-dali is not installed: "
                        "make env EXTRAS=dev,formats,dali (or training.loader: torch)")
    problems += _memory_problems(study, m)
    return problems


def _memory_problems(study: StudyConfig, m: Machine) -> list[str]:
    if m.gpus:
        have, where = m.gpu_memory_gb, "GPU memory"
    else:
        have, where = m.ram_gb, "RAM"
    if N.network_preset(study.planning.network).residual:
        target = study.planning.vram_target_gb or N.network_preset(
            study.planning.network).vram_target_gb
        if target > have:
            return [f"planning.network {study.planning.network} is planned for {target:g} GB "
                    f"per training step and this machine has {have:.1f} GB of {where}: set "
                    f"planning.vram_target_gb below {have:.0f}"]
        return []
    fp32 = not m.gpus or any(p in ("fp32", "tf32") for p in study.grid.precisions)
    out = []
    for dim in study.grid.dims:
        need, step = largest_step_gb(study, dim, fp32)
        if need > have:
            out.append(f"a {dim}D training step as planning allows it ({step}) needs about "
                       f"{need:.1f} GB and this machine has {have:.1f} GB of {where}: lower "
                       f"planning.batch_voxels_{dim}d or max_patch_voxels_{dim}d "
                       "(config/small.yaml is sized for a CPU)")
    return out


def refusal(problems: list[str]) -> str:
    """The one paragraph the workflow prints before stopping."""
    return ("nnpipe: this study cannot run on this machine (nothing was started): "
            + "; ".join(problems) + ".")


def workflow_study(config: dict, check_machine: bool) -> StudyConfig:
    """The study of Snakemake's ``config`` for ``rules/common.smk``: validated (schema defaults
    filled into ``config`` itself, as Snakemake's ``validate(set_default=True)`` does) and,
    with ``check_machine``, checked against this machine by :func:`machine_problems`.

    A config error or a refusal prints one paragraph on stderr and exits with status 1
    (``SystemExit``), before Snakemake plans any job: no schema dump, no traceback.
    """
    import sys

    from nnpipe.config import study_config, validate_config

    try:
        config.update(validate_config(config))
        study = study_config(config)
    except ValueError as exc:
        print(f"nnpipe: the study config is not valid: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if check_machine:
        problems = machine_problems(study)
        if problems:
            print(refusal(problems), file=sys.stderr)
            raise SystemExit(1)
    return study
