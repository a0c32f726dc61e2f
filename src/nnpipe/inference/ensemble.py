"""Models for prediction: loading checkpoints, refusing mismatched plans, averaging models.

An ensemble is several models trained with the same plan (the fold models of one run): each
predicts the same preprocessed case and their logits are averaged (:func:`average_logits`),
as nnU-Net v2 2.8.1 averages its folds (``inference/predict_from_raw_data.py``
``predict_logits_from_preprocessed_data``); softmax or sigmoid come once, after the logits
are resampled back to the image's grid (:func:`nnpipe.inference.predict.predict_image`).
Members of a configuration with different plans (a 2D and a 3D run of best.json) are a
different kind of ensemble: their probabilities are averaged in the image's grid, as
``nnUNetv2_ensemble`` does.
Models trained with different plans see differently preprocessed inputs and cannot be
averaged voxel by voxel, so they are refused with the name of the model that differs.

Accumulation: on a GPU, the whole-volume sums live on the GPU when they fit (fast: no tile
leaves the device) and in host memory otherwise; the choice is made from the free device
memory before the case starts and again, on the host, if the device runs out anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.allocator import PREDICTION_TRIM_BYTES, keep_freed_memory
from nnpipe.config import InferenceSettings
from nnpipe.inference.runtime import Forward, build_forward
from nnpipe.inference.sliding_window import predict_volume_2d, sliding_window
from nnpipe.labels import LabelScheme
from nnpipe.metrics import ScoredClass
from nnpipe.model import build_unet
from nnpipe.model.onednn import OneDnnConv3d  # also re-exported: one class for predict and train
from nnpipe.model.unet import DYNUNET_ALIAS_PREFIX
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.study import CHECKPOINT_NAMES
from nnpipe.training.checkpoint import load_checkpoint

# Fraction of the free GPU memory the whole-volume sums may take; the rest is for the
# network's activations and the tile batch.
DEVICE_ACCUMULATION_SHARE = 0.5


@dataclass
class LoadedModel:
    model: torch.nn.Module
    plan: Plan
    device: torch.device
    path: Path
    regions: tuple[ScoredClass, ...] | None = None  # region mode: one sigmoid per region
    memory_format: torch.memory_format = torch.contiguous_format  # of the tiles fed in
    # forward(tiles) -> logits per (runtime, precision), built once (inference/runtime.py)
    forwards: dict[tuple[str, str], Forward] = field(default_factory=dict, repr=False,
                                                     compare=False)

    @property
    def out_channels(self) -> int:
        return self.scheme.output_channels

    @property
    def scheme(self) -> LabelScheme:
        """The label concept the model was trained with: its plan's (an older plan's region
        mode came from the checkpoint's settings, kept in :attr:`regions`)."""
        return self.plan.scheme(legacy_regions=self.regions is not None)


def checkpoint_path(model: Path | str) -> Path:
    """``model`` itself if it is a file, else its ``final.pt`` (or ``last.pt``)."""
    model = Path(model)
    if model.is_dir():
        for name in CHECKPOINT_NAMES:
            if (model / name).is_file():
                return model / name
        raise FileNotFoundError(f"model folder {str(model)!r} holds no "
                                f"{' or '.join(CHECKPOINT_NAMES)}")
    if not model.is_file():
        raise FileNotFoundError(f"model {str(model)!r} does not exist")
    return model


def load_model(model: Path | str, device: torch.device | None = None) -> LoadedModel:
    """Load a run folder or checkpoint: the plan it was trained with and its weights."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = checkpoint_path(model)
    ckpt = load_checkpoint(path)  # on the CPU; the network is moved below
    if "plan" not in ckpt or "model" not in ckpt:
        raise ValueError(f"checkpoint {str(path)!r} is not an nnpipe training checkpoint "
                         "(no plan or model weights)")
    plan = Plan.from_dict(ckpt["plan"])
    use_regions = bool(ckpt.get("settings", {}).get("regions", False))
    return build_model(plan, ckpt["model"], use_regions, device, path)


def build_model(plan: Plan, weights: dict[str, torch.Tensor], use_regions: bool,
                device: torch.device, source: Path | str) -> LoadedModel:
    """The prediction network of ``plan`` with ``weights`` (a training checkpoint's
    ``model`` state dict, or an exported archive's fold weights) on ``device``; ``source``
    names where the weights came from in errors. The plan's label concept decides the
    outputs; ``use_regions`` (the checkpoint's settings) only for plans older than it."""
    scheme = plan.scheme(legacy_regions=use_regions)
    net = build_unet(plan, deep_supervision=False, out_channels=scheme.output_channels)
    load_weights(net, weights, source)
    net.to(device).eval()
    regions = scheme.regions or None
    fmt = torch.contiguous_format
    if device.type == "cpu":
        # the forward passes reuse their activations' pages (nnpipe.allocator)
        keep_freed_memory(PREDICTION_TRIM_BYTES)
        net, fmt = cpu_fast_path(net, plan.dim)
    return LoadedModel(net, plan, device, Path(source), regions, fmt)


# Deep-supervision heads exist only in training (UNet.deep_supervision_heads); prediction
# uses the main path alone, so exactly these keys are dropped from a training checkpoint.
# MONAI DynUNet checkpoints also hold aliases of other entries, which the network drops.
DROPPED_PREFIXES = ("deep_supervision_heads.", DYNUNET_ALIAS_PREFIX)


def load_weights(net: torch.nn.Module, weights: dict[str, torch.Tensor],
                 path: Path | str) -> None:
    """Load ``weights`` into ``net`` strictly, deep-supervision heads dropped by name.

    A checkpoint whose other keys or shapes differ from the network its plan builds would
    otherwise predict with random weights for the keys that did not match.

    Raises:
        ValueError: naming the checkpoint and the missing, unexpected or mis-shaped keys.
    """
    kept = {k: v for k, v in weights.items() if not k.startswith(DROPPED_PREFIXES)}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    shapes = sorted(f"{k} {tuple(kept[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(kept) & set(expected) if kept[k].shape != expected[k].shape)
    problems = [f"{what}: {', '.join(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected),
                 ("shape (checkpoint vs plan)", shapes)) if keys]
    if problems:
        raise ValueError(f"checkpoint {str(path)!r} does not match the network its plan "
                         f"builds ({'; '.join(problems)}); it was not written by this "
                         "nnpipe's trainer for that plan")
    net.load_state_dict(kept, strict=True)


def cpu_fast_path(net: torch.nn.Module, dim: int
                  ) -> tuple[torch.nn.Module, torch.memory_format]:
    """The same network, faster on CPUs.

    * every InstanceNorm becomes a GroupNorm with one group per channel (the same function:
      per sample and channel, over the spatial axes): 16 channels at 64^3, instance_norm
      57 ms vs group_norm 15 ms;
    * 3D weights and tiles go channels-last;
    * 3D convolutions always run in oneDNN (:class:`OneDnnConv3d`). PyTorch sends a
      float32 convolution of a single tile (batch 1) whose first four axes hold fewer than
      20480 elements to its slow reference kernel: with a 4-channel 64^3 tile that is the
      first convolution (58 ms; 4 ms in oneDNN) and every one at 16^3 and below.

    Measured with torch 2.13 on 2 Xeon (Sapphire Rapids) cores, the 5-level 16-filter U-Net
    on one 4x64^3 tile: 297 ms as built, 250 ms with the first two changes, 154 ms with all
    three. GPUs keep the network as built (not measured there).
    """
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.instancenorm._InstanceNorm) and \
                    not child.track_running_stats:
                group = torch.nn.GroupNorm(child.num_features, child.num_features, child.eps,
                                           affine=child.affine)
                if child.affine:
                    group.weight.data.copy_(child.weight.data)
                    group.bias.data.copy_(child.bias.data)
                setattr(module, child_name, group)
            elif type(child) is torch.nn.Conv3d and OneDnnConv3d.supports(child):
                setattr(module, child_name, OneDnnConv3d.from_conv(child))
    if dim == 3:
        # the ignore: torch's stub of Module.to lacks memory_format, which it accepts at runtime
        net = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        return net, torch.channels_last_3d
    return net, torch.contiguous_format


def load_models(models: Sequence[Path | str], device: torch.device | None = None,
                plan: Path | str | None = None) -> list[LoadedModel]:
    """Load every model; ``ValueError`` naming the model if its plan (or region mode)
    differs from ``plan`` (a plan JSON) or, without one, from the first model's."""
    if not models:
        raise ValueError("no model given")
    loaded = [load_model(m, device) for m in models]
    reference = Plan.load(plan) if plan is not None else loaded[0].plan
    where = f"plan {str(plan)!r}" if plan is not None else f"model {str(loaded[0].path)!r}"
    for lm in loaded:
        if lm.plan != reference:
            diff = [k for k in reference.to_dict()
                    if reference.to_dict()[k] != lm.plan.to_dict().get(k)]
            raise ValueError(f"model {str(lm.path)!r} was trained with a different plan than "
                             f"{where} (differs in: {', '.join(diff)}); predict with models "
                             "of one plan")
        if (lm.regions is None) != (loaded[0].regions is None):
            raise ValueError(f"model {str(lm.path)!r} and {str(loaded[0].path)!r} differ in "
                             "region mode; they cannot be averaged")
    return loaded


def predict_logits(lm: LoadedModel, data: np.ndarray,
                   settings: InferenceSettings) -> np.ndarray:
    """Logits ``(K, X', Y', Z')`` float32 for a preprocessed case ``(C, X', Y', Z')``:
    averaged over the TTA flips and blended over the tiles (no softmax or sigmoid yet)."""
    acc = _accumulation_device(lm, data)
    try:
        return _predict(lm, data, settings, acc)
    except torch.OutOfMemoryError:
        if acc.type == "cpu":
            raise
        torch.cuda.empty_cache()
        log(f"device memory ran out for a {data.shape[1:]} volume; stitching in host memory")
        return _predict(lm, data, settings, torch.device("cpu"))


def average_logits(models: Sequence[LoadedModel], data: np.ndarray,
                   settings: InferenceSettings) -> np.ndarray:
    """The mean of every model's :func:`predict_logits` (summed in place): the fold models
    of one plan, averaged in logit space as nnU-Net v2 does."""
    total = predict_logits(models[0], data, settings)
    for lm in models[1:]:
        total += predict_logits(lm, data, settings)
    if len(models) > 1:
        total /= len(models)
    return total


def _accumulation_device(lm: LoadedModel, data: np.ndarray) -> torch.device:
    """The model's device if the sums fit in its free memory, else the CPU."""
    if lm.device.type != "cuda":
        return lm.device
    free, _ = torch.cuda.mem_get_info(lm.device)
    # image + class sums + weight sum, float32
    needed = 4 * int(np.prod(data.shape[1:])) * (data.shape[0] + lm.out_channels + 1)
    if needed > DEVICE_ACCUMULATION_SHARE * free:
        log(f"volume {data.shape[1:]} needs {needed / 2**30:.1f} GiB of sums, more than "
            f"{DEVICE_ACCUMULATION_SHARE:.0%} of the free device memory; stitching in host "
            "memory")
        return torch.device("cpu")
    return lm.device


def _predict(lm: LoadedModel, data: np.ndarray, settings: InferenceSettings,
             acc: torch.device) -> np.ndarray:
    plan = lm.plan
    image = torch.from_numpy(np.ascontiguousarray(data)).to(acc)
    kwargs: dict[str, Any] = dict(
        num_classes=lm.out_channels, overlap=settings.overlap, blend=settings.blend,
        batch_size=settings.batch_size, tta_flips=settings.tta, device=lm.device,
        accumulate_device=acc)
    # bf16 autocast: the forward passes only; the sums stay in float32
    autocast = torch.autocast(lm.device.type, dtype=torch.bfloat16,
                              enabled=settings.precision == "bf16")

    forward = model_forward(lm, settings)

    with torch.inference_mode(), autocast:
        if plan.dim == 3:
            logits = sliding_window(forward, image, tuple(plan.patch_size), **kwargs)
        else:
            logits = predict_volume_2d(forward, image, plan.slice_axis,
                                       tuple(plan.patch_size), **kwargs)
    return logits.float().cpu().numpy()


def model_forward(lm: LoadedModel, settings: InferenceSettings) -> Forward:
    """``forward(tiles) -> logits`` of ``lm`` on ``settings.runtime``, built on first use
    (an ONNX export, a compilation) and kept on ``lm`` for its later cases."""
    key = (settings.runtime, settings.precision)
    if key not in lm.forwards:
        lm.forwards[key] = build_forward(lm.model, settings.runtime, lm.memory_format,
                                         settings.precision)
    return lm.forwards[key]
