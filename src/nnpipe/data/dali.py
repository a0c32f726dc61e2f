"""The DALI loader backend: the same batches as :class:`~nnpipe.data.loader.BatchLoader`,
augmented inside an NVIDIA DALI pipeline (``device="cpu"`` on the CPU, ``"gpu"`` on CUDA).

Patches come from the same host staging (:class:`~nnpipe.data.staging.BatchStager`: memory-
mapped cases, sampler threads, per-batch generators) through DALI's ``external_source``.
Every augmentation *decision and parameter* (which transform, zoom factor and position,
angles, flips, sigmas, factors, gamma, coarse size) is drawn by
:class:`~nnpipe.data.augment.Draws` from the same torch generator as the torch backend and
fed to DALI as per-sample argument inputs; DALI only executes them (``warp_affine``, ``flip``,
``noise.gaussian``, ``gaussian_blur``, arithmetic, ``resize``) under per-sample conditionals.
So for one seed both backends sample the same patches and take the same decisions; voxel
values differ where the implementations do: rotation, scaling and zoom are one resampling here
(two in torch), blur borders are mirrored (replicated in torch), and the noise field comes
from DALI's own generator.

Resume is therefore exact except for the Gaussian noise values: DALI cannot save or restore
its generators. :meth:`DaliLoader.state_dict` says so (``"exact": False``); restoring a state
reproduces the patches and all decisions and parameters, and reseeds DALI's noise generator
from ``(seed, batches_delivered)``, so a resumed run is deterministic but its noise differs
from the uninterrupted run's. With ``noise_prob=0`` resume is exact.

Layout: the pipeline works channel-last (``DHWC``/``HWC``, what DALI's spatial operators want)
and transposes back; labels travel as uint8 and are widened to int64 in torch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def
from nvidia.dali.data_node import DataNode

from nnpipe.data.augment import AugmentSettings, Draws
from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.data.staging import BatchStager, check_loader_args, default_workers
from nnpipe.data.transforms import gamma_exponents, sampling_matrices, scaled

# Per-sample inputs of the pipeline, in external_source output order.
_INPUTS = ("image", "seg", "spatial", "matrix", "flip0", "flip1", "flip2", "noise", "noise_std",
           "blur", "blur_sigma", "brightness", "brightness_factor", "contrast",
           "contrast_factor", "lowres", "lowres_size", "gamma_inverted", "gamma_inverted_value",
           "gamma", "gamma_value")


def _identity_parameters(batch: int, dim: int) -> dict[str, np.ndarray]:
    """Parameters that change nothing (every transform off)."""
    false = np.zeros(batch, dtype=bool)
    ones = np.ones(batch, dtype=np.float32)
    matrix = np.zeros((batch, dim, dim + 1), dtype=np.float32)
    matrix[:, :, :dim] = np.eye(dim, dtype=np.float32)
    return {"spatial": false, "matrix": matrix,
            **{f"flip{k}": np.zeros(batch, dtype=np.int32) for k in range(3)},
            "noise": false, "noise_std": np.zeros(batch, np.float32), "blur": false,
            "blur_sigma": ones, "brightness": false, "brightness_factor": ones,
            "contrast": false, "contrast_factor": ones, "lowres": false,
            "lowres_size": np.ones((batch, dim), np.float32), "gamma_inverted": false,
            "gamma_inverted_value": ones, "gamma": false, "gamma_value": ones}


def _warp_matrices(draws: Draws, settings: AugmentSettings,
                   patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Which samples move, and DALI ``warp_affine`` matrices (B, dim, dim + 1) for them.

    Rotation/scaling (:func:`sampling_matrices`, voxel offsets ``M``) followed by the zoom
    (factor ``z``, region shift ``s`` in voxels, placed as the torch backend places it)
    compose to ``src = M (o / z + s)`` for an output offset ``o`` from the centre. DALI wants
    it in (x, y, z) = reversed axis order and in continuous coordinates whose centre is
    ``size / 2``.
    """
    batch, dim = draws.apply.shape[0], len(patch)
    angles, scale = torch.zeros(batch, 3), torch.ones(batch)
    moved = draws.apply[:, 0].clone()
    if draws.extra_apply is not None and draws.extra_value is not None:
        rotate, rescale = draws.extra_apply[:, 0], draws.extra_apply[:, 1]
        angles = torch.where(rotate[:, None],
                             scaled(draws.extra_value[:, 6:9], settings.rotation_range), angles)
        scale = torch.where(rescale, scaled(draws.extra_value[:, 0], settings.scaling_range),
                            scale)
        moved |= rotate | rescale
    matrices = sampling_matrices(angles, scale, dim).double()
    zoom = torch.where(draws.apply[:, 0], scaled(draws.value[:, 0], settings.zoom_range),
                       torch.ones(batch)).double()
    sizes = torch.tensor(patch, dtype=torch.float64)
    # The torch zoom's shift column k belongs to affine_grid axis k, i.e. tensor axis dim-1-k.
    shift = (2.0 * draws.shift.double().flip(1) - 1.0) * (1.0 - 1.0 / zoom)[:, None] * sizes / 2
    linear = (matrices / zoom[:, None, None]).flip(1).flip(2)
    offset = (matrices @ shift[:, :, None])[:, :, 0].flip(1)
    centre = sizes.flip(0) / 2
    translation = centre - linear @ centre + offset
    warp = torch.cat([linear, translation[:, :, None]], dim=2)
    return moved.numpy(), warp.float().numpy()


def dali_parameters(draws: Draws, settings: AugmentSettings,
                    patch: Sequence[int]) -> dict[str, np.ndarray]:
    """The per-sample inputs of the DALI graph for one batch's draws (numpy, batch-major)."""
    batch, dim = draws.apply.shape[0], len(patch)
    p = _identity_parameters(batch, dim)
    p["spatial"], p["matrix"] = _warp_matrices(draws, settings, patch)
    for axis in range(dim):
        p[f"flip{axis}"] = (draws.flip[:, axis] < settings.flip_prob).numpy().astype(np.int32)
    apply, value = draws.apply.numpy(), draws.value
    p["noise"], p["blur"], p["brightness"], p["contrast"] = (apply[:, k] for k in (1, 2, 3, 4))
    p["noise_std"] = scaled(value[:, 1], settings.noise_std).numpy()
    p["blur_sigma"] = scaled(value[:, 2], settings.blur_sigma).numpy()
    p["brightness_factor"] = scaled(value[:, 3], settings.brightness_range).numpy()
    p["contrast_factor"] = scaled(value[:, 4], settings.contrast_range).numpy()
    if draws.extra_apply is not None and draws.extra_value is not None:
        extra, e = draws.extra_apply.numpy(), draws.extra_value
        p["gamma"], p["gamma_inverted"], p["lowres"] = extra[:, 2], extra[:, 3], extra[:, 4]
        p["gamma_value"] = gamma_exponents(e[:, 1], e[:, 2], settings.gamma_range).numpy()
        p["gamma_inverted_value"] = gamma_exponents(e[:, 3], e[:, 4],
                                                    settings.gamma_range).numpy()
        factor = scaled(e[:, 5], settings.lowres_range).numpy()
        # Same coarse size as the torch backend: round(size / factor), at least 1 voxel.
        p["lowres_size"] = np.maximum(1, np.round(np.asarray(patch)[None, :]
                                                  / factor[:, None])).astype(np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32 if v.dtype == np.float64 else v.dtype)
            for k, v in p.items()}


def _gamma(image: Any, lo: Any, hi: Any, gamma: Any, inverted: bool) -> Any:
    spread = hi - lo
    unit = ((hi - image) if inverted else (image - lo)) / dmath.max(spread, 1e-30)
    curved = dmath.pow(dmath.clamp(unit, 0.0, 1.0), gamma) * spread
    return hi - curved if inverted else lo + curved


@pipeline_def(enable_conditionals=True)
def _graph(source: Any, patch: tuple[int, ...], blur_window: int, on_gpu: bool,
           augment_on: bool) -> tuple[Any, Any]:
    """The DALI graph: external batch and parameters in, augmented (image, seg) out."""
    dim = len(patch)
    channel_last, channel_first = (["DHWC", "CDHW"] if dim == 3 else ["HWC", "CHW"])
    count = len(_INPUTS) if augment_on else 2  # no parameters when nothing is augmented
    nodes = fn.external_source(source=source, num_outputs=count, batch=True,
                               layout=[channel_first, channel_first] + [""] * (count - 2))
    x = {name: nodes[k] for k, name in enumerate(_INPUTS[:count])}
    image, seg = x["image"], x["seg"]
    if on_gpu:
        image, seg = image.gpu(), seg.gpu()
    if not augment_on:
        return image, seg
    to_last, to_first = [*range(1, dim + 1), 0], [dim, *range(dim)]
    image = fn.transpose(image, perm=to_last)
    seg = fn.transpose(seg, perm=to_last)
    spatial_axes = list(range(dim))
    if x["spatial"]:
        image = fn.warp_affine(image, matrix=x["matrix"], size=list(patch), inverse_map=True,
                               interp_type=types.DALIInterpType.INTERP_LINEAR, fill_value=0.0)
        seg = fn.warp_affine(seg, matrix=x["matrix"], size=list(patch), inverse_map=True,
                             interp_type=types.DALIInterpType.INTERP_NN, fill_value=0.0)
    # DALI flip names: depthwise = D, vertical = H, horizontal = W (our axes 0, 1, 2 in 3D).
    names = ["depthwise", "vertical", "horizontal"][3 - dim:]
    flips: dict[str, Any] = {name: x[f"flip{axis}"] for axis, name in enumerate(names)}
    image, seg = fn.flip(image, **flips), fn.flip(seg, **flips)
    if x["noise"]:
        image = fn.noise.gaussian(image, stddev=x["noise_std"])
    if x["blur"]:
        image = fn.gaussian_blur(image, sigma=x["blur_sigma"], window_size=blur_window)
    if x["brightness"]:
        image = image * x["brightness_factor"]
    if x["contrast"]:
        mean = fn.reductions.mean(image, axes=spatial_axes)
        lo = fn.reductions.min(image, axes=spatial_axes)
        hi = fn.reductions.max(image, axes=spatial_axes)
        image = dmath.clamp((image - mean) * x["contrast_factor"] + mean, lo, hi)
    if x["lowres"]:
        # one output each (save_attrs off), though fn.resize's stub also allows a sequence
        small = cast(DataNode, fn.resize(image, size=x["lowres_size"], antialias=False,
                                         interp_type=types.DALIInterpType.INTERP_NN))
        image = cast(DataNode, fn.resize(small, size=list(patch), antialias=False,
                                         interp_type=types.DALIInterpType.INTERP_CUBIC
                                         if dim == 2 else types.DALIInterpType.INTERP_LINEAR))
    for inverted in (True, False):
        key = "gamma_inverted" if inverted else "gamma"
        if x[key]:
            lo = fn.reductions.min(image, axes=spatial_axes)
            hi = fn.reductions.max(image, axes=spatial_axes)
            image = _gamma(image, lo, hi, x[f"{key}_value"], inverted)
    return fn.transpose(image, perm=to_first), fn.transpose(seg, perm=to_first)


def _to_torch(batch: Any, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (dense) as a torch tensor on ``device``."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        dense = batch.as_tensor()
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(batch.as_tensor()))


class DaliLoader:
    """An endless iterator of augmented training batches from a DALI pipeline.

    Same arguments, batches and interface as :class:`~nnpipe.data.loader.BatchLoader`, plus
    ``num_threads`` (DALI's CPU threads; default: ``workers``). ``device`` ``"cpu"`` runs the
    pipeline on the CPU (no GPU needed), a CUDA device runs it on that GPU.

    Resume is exact except for the Gaussian noise values (see the module docstring):
    :meth:`state_dict` restores the patches, every augmentation decision and parameter, and
    reseeds DALI from ``(seed, batches_delivered)``.
    """

    def __init__(self, preprocessed_dir: Path | str, case_ids: Sequence[str],
                 sampler_settings: SamplerSettings, augment_settings: AugmentSettings,
                 batch_size: int, seed: int, device: torch.device | str, prefetch: int = 2,
                 workers: int | None = None, num_threads: int | None = None):
        check_loader_args("DaliLoader", batch_size, prefetch, seed)
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DaliLoader runs on 'cpu' or a CUDA device, got {self.device}")
        self.sampler = PatchSampler(preprocessed_dir, case_ids, sampler_settings)
        self.augment_settings = augment_settings
        self.batch_size, self.prefetch, self.seed = batch_size, prefetch, seed
        workers = workers or default_workers()
        self.num_threads = num_threads or workers
        self._stager = BatchStager(self.sampler, batch_size, seed, workers,
                                   max(prefetch, workers), pin=False)
        self._torch_generator = torch.Generator().manual_seed(seed)  # as of the next delivery
        self._source_generator = torch.Generator()  # runs ahead, as DALI calls the source
        self._pending: deque[torch.Tensor] = deque()
        self._delivered = 0
        self._pipe: Any = None

    def _source(self) -> tuple[np.ndarray, ...]:
        image, seg = self._stager.next()
        patch = self.sampler.settings.patch_size
        if not self.augment_settings.enabled:
            self._pending.append(self._source_generator.get_state())
            return image.numpy(), seg.numpy()
        draws = Draws.draw(self.batch_size, len(patch), self.augment_settings,
                           self._source_generator)
        parameters = dali_parameters(draws, self.augment_settings, patch)
        self._pending.append(self._source_generator.get_state())
        return (image.numpy(), seg.numpy(), *(parameters[name] for name in _INPUTS[2:]))

    def _build(self) -> None:
        self._source_generator.set_state(self._torch_generator.get_state())
        self._pending.clear()
        on_gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None
                     else torch.cuda.current_device()) if on_gpu else None
        # DALI's own generator (only the noise field uses it) from (seed, position).
        dali_seed = int(np.random.SeedSequence([self.seed, self._delivered]).generate_state(1)[0]
                        & 0x7FFFFFFF)
        blur_window = 2 * math.ceil(3.0 * self.augment_settings.blur_sigma[1]) + 1
        self._pipe = _graph(source=self._source, patch=self.sampler.settings.patch_size,
                            blur_window=blur_window, on_gpu=on_gpu,
                            augment_on=self.augment_settings.enabled,
                            batch_size=self.batch_size, num_threads=self.num_threads,
                            device_id=device_id, seed=dali_seed,
                            prefetch_queue_depth=self.prefetch)
        self._pipe.build()

    def __iter__(self) -> DaliLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pipe is None:
            self._build()
        try:
            image, seg = self._pipe.run()
        except Exception:
            self.close()
            raise
        self._torch_generator.set_state(self._pending.popleft())
        self._delivered += 1
        return _to_torch(image, self.device), _to_torch(seg, self.device).long()

    @property
    def batches_delivered(self) -> int:
        return self._delivered

    def state_dict(self) -> dict[str, Any]:
        """What the next batches depend on, as far as DALI lets it be saved.

        ``"exact": False`` and ``"not_restored"`` record that the Gaussian noise values are
        not reproduced after a restore (DALI's generator state cannot be saved).
        """
        return {"backend": "dali", "seed": self._stager.seed,
                "torch": self._torch_generator.get_state(),
                "batches_delivered": self._delivered, "exact": False,
                "not_restored": "Gaussian noise values (DALI generator state cannot be saved; "
                                "it is reseeded from seed and batches_delivered)"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: same patches, decisions and parameters; new noise field."""
        missing = {"seed", "torch", "batches_delivered"} - set(state)
        if missing:
            raise ValueError(f"DaliLoader state lacks {sorted(missing)}; it has {sorted(state)}")
        delivered = int(state["batches_delivered"])
        self.close()
        self._stager.load_state_dict({"seed": state["seed"], "next_batch": delivered})
        self.seed = int(state["seed"])
        self._torch_generator.set_state(state["torch"])
        self._delivered = delivered

    def close(self) -> None:
        """Drop the pipeline and the prefetched batches; iterating rebuilds them (from the
        next batch to deliver, with DALI reseeded as after a restore)."""
        self._pipe = None
        self._pending.clear()
        self._stager.close()
        self._stager.load_state_dict({"seed": self._stager.seed, "next_batch": self._delivered})

    def __enter__(self) -> DaliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_stager", None) is not None:
            self.close()
