"""What limits each GPU figure of :mod:`benchmarks.gpu_suite`.

* :func:`step_profile`: the measured step again on synthetic inputs, under ``torch.profiler``:
  the share of the measured step time the GPU is busy (low: data loading or host overhead
  limits; high: the kernels do), where the GPU time goes, and the TFLOP/s reached.
* :func:`whole_case`: one BraTS-sized case through ``nnpipe predict``'s own code
  (:func:`nnpipe.inference.predict.predict_cases`), from NIfTI read to NIfTI written, timed
  stage by stage; once on the device path and once with preprocessing and export on the host.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# op name fragment -> the group it is reported in (first match wins)
OP_GROUPS = (("conv", "convolution"), ("norm", "normalization"), ("mm", "matmul"),
             ("adam", "optimizer"), ("foreach", "optimizer"), ("copy", "copies"),
             ("cat", "copies"), ("clone", "copies"), ("contiguous", "copies"))
PROFILED_STEPS = 5


def _group(op: str) -> str:
    name = op.lower()
    return next((g for frag, g in OP_GROUPS if frag in name), "elementwise & other")


def summarize_ops(times_us: dict[str, float], step_s: float | None, n_steps: int,
                  flops_per_step: float, unit: str) -> str:
    """One line from per-op self times (µs over ``n_steps``): busy share of ``step_s`` (the
    measured step), the top three groups and TFLOP/s at the measured step time."""
    total = sum(times_us.values())
    if total <= 0:
        return f"no {unit} time recorded"
    groups: dict[str, float] = {}
    for op, t in times_us.items():
        groups[_group(op)] = groups.get(_group(op), 0.0) + t
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:3]
    parts = []
    if step_s and unit == "GPU":  # CPU op times add up over threads: no busy share there
        busy = total / n_steps / 1e6 / step_s
        parts.append(f"GPU busy {busy:.0%} of the step")
    parts.append(f"{unit} time: " + ", ".join(f"{g} {t / total:.0%}" for g, t in top))
    if step_s and flops_per_step:
        rate = flops_per_step / step_s
        parts.append(f"{rate / 1e12:.1f} TFLOP/s" if rate >= 1e12 else
                     f"{rate / 1e9:.1f} GFLOP/s")
    return " · ".join(parts)


def step_profile(plan: Any, mode: str, batch: int, precision: str, channels_last: bool,
                 device: str, throughput: float) -> str:
    """The profile line of a measured ``train`` or ``predict`` cell (never raises: a failed
    profile is said in the line, the figure stands)."""
    try:
        return _step_profile(plan, mode, batch, precision, channels_last, device, throughput)
    except Exception as exc:  # the figure is already measured; say why there is no profile
        return f"profile failed: {type(exc).__name__}: {exc}"[:160]


def _step_profile(plan: Any, mode: str, batch: int, precision: str, channels_last: bool,
                  device: str, throughput: float) -> str:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    step = _synthetic_step(plan, mode, batch, precision, channels_last, torch.device(device))
    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as p:
        for _ in range(PROFILED_STEPS):
            step()
        if cuda:
            torch.cuda.synchronize()
    times: dict[str, float] = {}
    for e in p.key_averages():
        # operators only: on CUDA their self device time is that of the kernels each launched
        # itself; the kernels' own rows would count the same time twice
        if e.device_type != DeviceType.CPU or "ProfilerStep" in e.key:
            continue
        if cuda:
            t = getattr(e, "self_device_time_total", None)
            t = getattr(e, "self_cuda_time_total", 0.0) if t is None else t
        else:
            t = e.self_cpu_time_total
        if t:
            times[e.key] = times.get(e.key, 0.0) + float(t)
    return summarize_ops(times, batch / throughput if throughput else None, PROFILED_STEPS,
                         float(counter.get_total_flops()), "GPU" if cuda else "CPU")


def _synthetic_step(plan: Any, mode: str, batch: int, precision: str, channels_last: bool,
                    device: torch.device) -> Callable[[], None]:
    """The benchmark's train or predict step on random inputs already on ``device``; the
    train step is the trainer's (:mod:`nnpipe.training.step`, the schema's default settings)."""
    import dataclasses

    from nnpipe.config import study_config
    from nnpipe.model import build_unet
    from nnpipe.training.precision import autocast, configure_backend, get_precision
    from nnpipe.training.step import build_step, train_step

    x = torch.randn((batch, plan.num_channels, *plan.patch_size), device=device)
    y = torch.randint(0, plan.num_classes, (batch, 1, *plan.patch_size), device=device)
    if mode == "train":
        s = dataclasses.replace(study_config({}).training, channels_last=channels_last)
        parts = build_step(plan, s, precision, device, 1, s.epochs * s.steps_per_epoch)
        parts.net.train()

        def train() -> None:
            train_step(parts, x, y, device)

        return train
    prec = get_precision(precision, device)
    configure_backend(prec)
    fmt = torch.contiguous_format
    if channels_last:
        fmt = torch.channels_last_3d if plan.dim == 3 else torch.channels_last
    # the ignore: torch's stub of Module.to lacks memory_format, which it accepts at runtime
    model = build_unet(plan, deep_supervision=False).to(device, memory_format=fmt)  # type: ignore[call-overload]
    model.eval()
    x = x.contiguous(memory_format=fmt)

    def predict() -> None:
        with torch.inference_mode(), autocast(prec, device):
            model(x)

    return predict


# ---------------------------------------------------------------- the whole case


def write_case(folder: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A BraTS-like 4-channel float32 image ``shape`` at 1 mm (MSD layout: one 4D NIfTI):
    integer-valued intensities (as BraTS stores them) inside a head-sized ellipsoid, zeros
    around it, so the nonzero crop keeps about the BraTS brain box (140×170×140 of
    240×240×155)."""
    from nnpipe.io import save_nifti

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "BRATS_case.nii.gz"
    if path.is_file():
        return folder
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    r2 = (x[:, None, None] / 0.58) ** 2 + (y[None, :, None] / 0.72) ** 2 \
        + (z[None, None, :] / 0.9) ** 2
    inside = r2 < 1.0
    smooth = (np.sin(7 * x)[:, None, None] + np.cos(5 * y)[None, :, None]
              + np.sin(9 * z)[None, None, :]).astype(np.float32)
    image = np.zeros((*shape, 4), dtype=np.float32)
    for c in range(4):
        noise = rng.normal(0.0, 25.0, size=shape).astype(np.float32)
        image[..., c] = np.round((400.0 + 100.0 * c + 80.0 * smooth + noise) * inside)
    save_nifti(path, image, np.eye(4))
    return folder


def _save_model(path: Path, plan: Any) -> Path:
    """An untrained network of ``plan`` as a training checkpoint (speed needs no weights)."""
    from nnpipe.model import build_unet
    from nnpipe.training.checkpoint import save_checkpoint

    if not path.is_file():
        torch.manual_seed(0)
        net = build_unet(plan, deep_supervision=False)
        save_checkpoint(path, {"model": net.state_dict(), "plan": plan.to_dict(),
                               "settings": {"regions": False}})
    return path


@contextlib.contextmanager
def _stage_timers(stages: list[tuple[Any, str, str]], seconds: dict[str, float],
                  returned: dict[str, Any]) -> Iterator[None]:
    """Time every call of ``owner.<function>`` into ``seconds[stage]`` (``stages``: owner,
    function, stage; an owner is a module or a class) while inside, and keep its last result
    in ``returned[stage]``. Each of these returns host data (the preprocessing's device
    tensor excepted: its work is synchronised by the copy that follows), so its GPU work is
    done when it returns."""
    saved = [(owner, fn, owner.__dict__[fn]) for owner, fn, _ in stages]

    def timed(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                returned[stage] = fn(*args, **kwargs)
                return returned[stage]
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0
        return wrapper

    try:
        for (owner, fn, original), (_, _, stage) in zip(saved, stages, strict=True):
            setattr(owner, fn, timed(original, stage))
        yield
    finally:
        for owner, fn, original in saved:
            setattr(owner, fn, original)


def _stages() -> list[tuple[Any, str, str]]:
    """What :func:`_timed_case` times: the reader, the case transform's forward
    (preprocess) and inverse (restore, host), the network, the device restore, the writer."""
    from nnpipe.inference import predict as P
    from nnpipe.preprocessing.transform import CaseTransform

    return [(P, "read_case_image", "read"), (CaseTransform, "forward", "preprocess"),
            (P, "average_logits", "network"), (CaseTransform, "inverse", "restore"),
            (P, "_restore_on_device", "restore"), (P, "write_prediction", "write")]


def _timed_case(models: list[Any], cases: list[Any], out: Path, settings: Any,
                device_path: bool | None, repeats: int = 2
                ) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Best-of-``repeats`` seconds of predicting ``cases``, that run's stage times, and the
    stages' last results."""
    from nnpipe.inference import predict as P

    real = P.predict_image
    best: tuple[float, dict[str, float], dict[str, Any]] = (float("inf"), {}, {})
    try:
        P.predict_image = functools.partial(real, device_path=device_path)
        for _ in range(repeats):
            seconds: dict[str, float] = {}
            returned: dict[str, Any] = {}
            with _stage_timers(_stages(), seconds, returned):
                t0 = time.perf_counter()
                P.predict_cases(models, cases, out, settings)
                total = time.perf_counter() - t0
            if total < best[0]:
                best = (total, seconds, returned)
    finally:
        P.predict_image = real
    return best


def stage_line(total: float, seconds: dict[str, float], extra: dict[str, str]) -> str:
    parts = [f"{s} {seconds[s]:.3f} s" + (f" ({extra[s]})" if s in extra else "")
             for s in ("read", "preprocess", "network", "restore", "write") if s in seconds]
    parts.append(f"other {total - sum(seconds.values()):.3f} s")
    return " · ".join(parts)


def whole_case(work: Path, plan: Any, device: str, tiny: bool) -> list[dict[str, Any]]:
    """The case's rows: the device path (on a GPU) and the host path, bf16, 8-flip TTA,
    overlap 0.5, Gaussian, 4 tiles per forward pass; one warm-up run (cuDNN autotuning)."""
    from nnpipe.config import InferenceSettings
    from nnpipe.inference import predict as P
    from nnpipe.inference.ensemble import load_models
    from nnpipe.inference.predict import find_cases
    from nnpipe.inference.sliding_window import tile_grid

    shape = (48, 48, 31) if tiny else (240, 240, 155)
    folder = write_case(work / "case" / "images", shape)
    model = _save_model(work / "case" / f"model-{'tiny' if tiny else 'ref'}.pt", plan)
    models = load_models([model], torch.device(device))
    cases, errors = find_cases(folder, layout="msd", num_channels=plan.num_channels)
    if errors or len(cases) != 1:
        raise RuntimeError(f"the case folder {folder} holds {len(cases)} case(s): {errors}")
    settings = InferenceSettings(overlap=0.5, blend="gaussian", tta=True, batch_size=4,
                                 precision="bf16")
    out = work / "case" / "pred"
    P.predict_cases(models, cases, out, settings)  # warm-up: cuDNN autotuning, allocator
    rows = []
    paths = [("device path", None), ("host preprocessing and export", False)] \
        if device == "cuda" else [("host path", None), ("device path on cpu", True)]
    for label, device_path in paths:
        total, seconds, returned = _timed_case(models, cases, out, settings, device_path)
        shape = returned["preprocess"][1].resampled_shape
        grid = [max(s, p) for s, p in zip(shape, plan.patch_size, strict=True)]
        tiles = len(tile_grid(grid, plan.patch_size, 0.5))
        extra = {"network": f"{tiles} tiles × 8 flips of {'×'.join(map(str, plan.patch_size))}",
                 "preprocess": f"to {'×'.join(map(str, shape))}"}
        rows.append({"row": "case", "config": f"bf16, {label}", "value": total,
                     "limit": stage_line(total, seconds, extra)})
    return rows
