"""Predicting with an nnU-Net v2 model: v2's segmentation, read and written as v2 does.

Per case, in v2's order (every rule from :class:`~nnpipe.v2.semantics.V2Semantics`):

1. read each channel with the plans' reader (:mod:`nnpipe.v2.imageio`: ``(z, y, x)``,
   spacing in the same order), stack ``(C, z, y, x)`` float32;
2. ``transpose_forward``; crop to the filled nonzero mask of all channels;
3. normalise each channel by its scheme (:func:`nnpipe.preprocessing.normalize.normalize`,
   the mask being the filled nonzero mask), then resample to the target spacing
   (:func:`nnpipe.v2.semantics.resample`: cubic, clipped, v2's separate-axis rule);
4. sliding window of logits: zero padding to the patch, v2's tile starts and Gaussian,
   every flip of the checkpoint's mirror axes (TTA), logits averaged over flips, folds and
   tiles; a 2D configuration slides over the slices of the first (transposed) axis;
5. logits resampled back to the cropped grid (linear, v2's probabilities rule), then
   argmax (labels) or sigmoid > 0.5 written in ``regions_class_order`` (regions);
6. pasted into the uncropped grid, ``transpose_backward``, written by the same reader as
   uint8 (uint16 from 255 foreground labels) with the input's geometry.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnpipe.datasets.layout import Case, find_cases
from nnpipe.errors import DataError
from nnpipe.inference.predict import PredictionFailed
from nnpipe.inference.shards import Shard, select_part, write_part_record
from nnpipe.planning.plan import ChannelNorm
from nnpipe.preprocessing.transform import CaseTransform
from nnpipe.progress import log
from nnpipe.v2.imageio import V2Image, read_v2_image, write_v2_segmentation
from nnpipe.v2.model import V2Model, to_device
from nnpipe.v2.semantics import (
    V2Semantics,
    gaussian_importance,
    pad_to_patch,
    resample,
    tile_starts,
)

# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Prepared:
    data: np.ndarray  # (C, *resampled) float32, normalised
    bbox: tuple[tuple[int, int], ...]  # crop box in the transposed grid
    shape_before_crop: tuple[int, ...]
    cropped_shape: tuple[int, ...]
    spacing: tuple[float, ...]  # original spacing, transposed (mm)
    target_spacing: tuple[float, ...]  # 3 entries (mm)


def channel_norms(sem: V2Semantics) -> list[ChannelNorm]:
    """The plans' normalisation per channel as nnpipe's :class:`ChannelNorm` (CT: clip to
    the foreground 0.5/99.5 percentiles, the foreground mean and std)."""
    norms = []
    for scheme, props in zip(sem.normalization, sem.intensity, strict=True):
        if scheme == "ct":
            norms.append(ChannelNorm("ct", float(props["percentile_00_5"]),
                                     float(props["percentile_99_5"]), float(props["mean"]),
                                     float(props["std"])))
        else:
            norms.append(ChannelNorm(scheme))
    return norms


def case_transform(sem: V2Semantics) -> CaseTransform:
    """The v2 model's :class:`~nnpipe.preprocessing.transform.CaseTransform`: its plans'
    voxel order (``transpose_forward``), per-channel schemes and CT statistics
    (:func:`channel_norms`), target spacing (2D: the first permuted axis keeps the case's
    own), data and probabilities resampling rules; always cropped; no lower bound on the
    new shape (v2's ``compute_new_shape``)."""
    if sem.dim == 3:
        target = (float(sem.spacing[0]), float(sem.spacing[1]), float(sem.spacing[2]))
        keep = None
    else:  # the first axis' entry is a placeholder: each case keeps its own
        target = (1.0, float(sem.spacing[0]), float(sem.spacing[1]))
        keep = 0
    fwd = sem.transpose_forward
    return CaseTransform(norms=tuple(channel_norms(sem)), target_spacing=target,
                         keep_axis=keep, transpose=(int(fwd[0]), int(fwd[1]), int(fwd[2])),
                         crop=True, resampling=sem.data_resampling,
                         restore_resampling=sem.probabilities_resampling, min_size=0)


def preprocess(image: V2Image, sem: V2Semantics, device: torch.device | None = None,
               case_id: str = "case") -> Prepared:
    """Steps 2-3 of the module docstring: ``(C, *resampled)`` float32 and the crop facts.

    The one preprocessing of every model (:meth:`CaseTransform.forward
    <nnpipe.preprocessing.transform.CaseTransform.forward>`, on the host or ``device``)
    with v2's facts as data (:func:`case_transform`). The result is a host array."""
    affine = np.diag([*(float(s) for s in image.spacing), 1.0])
    data, meta = case_transform(sem).forward(image.data, affine, device, case_id=case_id)
    host = data if isinstance(data, np.ndarray) else data.cpu().numpy()
    return Prepared(host, meta.bbox, meta.original_shape, meta.cropped_shape,
                    meta.original_spacing, meta.target_spacing)


# ---------------------------------------------------------------- sliding window


def _flips(mirror_axes: tuple[int, ...] | None, tta: bool) -> list[tuple[int, ...]]:
    """Network-axis combinations to flip: none, then every non-empty combination of the
    checkpoint's mirror axes by size, as v2 orders them (shifted past batch and channel)."""
    if not tta or not mirror_axes:
        return [()]
    axes = [a + 2 for a in mirror_axes]
    return [()] + [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


def sliding_window_logits(nets: Sequence[torch.nn.Module], data: np.ndarray, sem: V2Semantics,
                          device: torch.device, tta: bool = True, batch_size: int = 1,
                          memory_format: torch.memory_format = torch.contiguous_format
                          ) -> np.ndarray:
    """Logits ``(K, *spatial)`` of ``data`` ``(C, *spatial)`` in ``sem.accumulate_dtype``
    (3D grid; a 2D configuration slides over the slices of axis 0): Gaussian-weighted mean
    over tiles of the logits averaged over flips and ``nets`` (the folds)."""
    patch = sem.patch_size
    pads = pad_to_patch(data.shape, patch)
    lead = [(0, 0)] * (data.ndim - len(pads))
    padded = np.pad(data, lead + pads) if any(p for pair in pads for p in pair) else data
    spatial = padded.shape[1:]
    grid = spatial[-len(patch):]
    starts = [tile_starts(s, p, sem.tile_step_size) for s, p in zip(grid, patch, strict=True)]
    tiles: list[tuple[slice | int, ...]] = []
    for slice_index in (range(spatial[0]) if sem.dim == 2 else [None]):
        for corner in itertools.product(*starts):
            box = tuple(slice(a, a + p) for a, p in zip(corner, patch, strict=True))
            tiles.append(box if slice_index is None else (slice_index, *box))
    acc = torch.float16 if sem.accumulate_dtype == "float16" else torch.float32
    weight = torch.from_numpy(gaussian_importance(
        patch, dtype=np.float16 if acc == torch.float16 else np.float32)).to(device)
    logits = torch.zeros((sem.num_outputs, *spatial), dtype=acc, device=device)
    weights = torch.zeros(spatial, dtype=acc, device=device)
    image = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
    flips = _flips(sem.mirror_axes, tta)
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for i in range(0, len(tiles), batch_size):
            chunk = tiles[i:i + batch_size]
            batch = torch.stack([image[(slice(None), *t)] for t in chunk])
            batch = batch.contiguous(memory_format=memory_format) if batch.ndim == 5 else batch
            total = None
            for net in nets:
                pred = None
                for axes in flips:
                    out = net(batch.flip(axes) if axes else batch).float()
                    out = out.flip(axes) if axes else out
                    pred = out if pred is None else pred + out
                assert pred is not None
                pred /= len(flips)
                total = pred if total is None else total + pred
            assert total is not None
            if len(nets) > 1:
                total /= len(nets)
            total *= weight  # float32 logits times the weights (float16 in v2)
            for t, p in zip(chunk, total, strict=True):
                logits[(slice(None), *t)] += p  # rounded to the accumulator's dtype
                weights[t] += weight
    logits /= weights
    if torch.isinf(logits).any():  # float16 holds up to 65504: v2 stops here too
        raise ValueError("the summed logits overflow float16 (inf), as they would in nnU-Net "
                         "v2; this model's logits are too large for v2's accumulators")
    crop = tuple(slice(b, b + n) for (b, _), n in zip([(0, 0)] * (len(spatial) - len(pads))
                                                       + pads, data.shape[1:], strict=True))
    return logits[(slice(None), *crop)].cpu().numpy()  # float16 as v2 exports them


# ---------------------------------------------------------------- export


def segmentation(logits: np.ndarray, prepared: Prepared, sem: V2Semantics) -> np.ndarray:
    """Step 5-6 before writing: label values in the file's voxel order ``(z, y, x)``.

    ``logits`` keep their dtype through resampling (float16 from v2's accumulators: v2
    takes the argmax of float16 logits, the first class winning a tie)."""
    back = resample(logits, prepared.cropped_shape, prepared.target_spacing, prepared.spacing,
                    sem.probabilities_resampling)
    if sem.regions is None:
        lut = np.asarray(sem.labels, dtype=np.int64)
        seg = lut[back.argmax(0)]
    else:
        assert sem.regions_class_order is not None
        probs = torch.sigmoid(torch.from_numpy(back).float()).numpy()
        seg = np.zeros(back.shape[1:], dtype=np.int64)
        for i, value in enumerate(sem.regions_class_order):
            seg[probs[i] > 0.5] = value
    full = np.zeros(prepared.shape_before_crop, dtype=sem.output_dtype)
    full[tuple(slice(lo, hi) for lo, hi in prepared.bbox)] = seg
    return full.transpose(sem.transpose_backward)


def predict_v2_image(model: V2Model, nets: Sequence[torch.nn.Module], image: V2Image,
                     device: torch.device, tta: bool = True, batch_size: int = 1,
                     memory_format: torch.memory_format = torch.contiguous_format
                     ) -> np.ndarray:
    """Label values ``(z, y, x)`` (the file's order) of one case."""
    sem = model.configuration.semantics
    if image.data.shape[0] != model.configuration.input_channels:
        raise ValueError(f"image has {image.data.shape[0]} channel(s); the model expects "
                         f"{model.configuration.input_channels}")
    prepared = preprocess(image, sem)
    logits = sliding_window_logits(nets, prepared.data, sem, device, tta, batch_size,
                                   memory_format)
    return segmentation(logits, prepared, sem)


def predict_v2_folder(model: V2Model, input_dir: Path | str, out_dir: Path | str, *,
                      device: torch.device, tta: bool = True, batch_size: int = 1,
                      skip_existing: bool = False, shard: Shard | None = None,
                      part_record: Path | str | None = None) -> list[Path]:
    """``nnpipe predict --model <v2 model> -i IN -o OUT``: every case of ``IN``
    (``<case>_<NNNN><ending>``, one file per channel) written to ``OUT/<case><ending>``.
    ``shard``: only that part of the cases, as for nnpipe's own models
    (:mod:`nnpipe.inference.shards`); ``part_record``: written when every case of the part
    is done, for ``nnpipe gather``.

    A case that fails is logged and the others predicted; then :class:`DataError` lists
    the failures.
    """
    config = model.configuration
    cases, errors = find_cases(input_dir, layout="nnunetv2", num_channels=config.input_channels)
    if not cases and not errors:
        raise DataError("holds no images", path=input_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selection, errors = select_part(cases, shard or Shard(0, 1), out, errors)
    cases = list(selection.cases)
    nets = to_device(model, device)
    fmt = torch.channels_last_3d if device.type == "cpu" and config.semantics.dim == 3 \
        else torch.contiguous_format
    log(f"predict {len(cases)} case(s) from {input_dir} with nnU-Net v2 model {model.folder} "
        f"({len(nets)} fold(s), {model.trainer}; v2 semantics)")
    failed = [str(e) for e in errors]
    written = []
    for case in cases:
        target = out / f"{case.case_id}{_ending(case)}"
        if skip_existing and target.is_file():
            written.append(target)
            continue
        t0 = time.monotonic()
        try:
            image = read_v2_image(case.images, config.semantics.reader, case.case_id)
            seg = predict_v2_image(model, nets, image, device, tta, batch_size, fmt)
            write_v2_segmentation(target, seg, image, config.semantics.output_dtype)
        except Exception as exc:  # one bad case: name it and go on
            msg = exc if isinstance(exc, DataError) else DataError(
                f"{type(exc).__name__}: {exc}", case=case.case_id, path=case.images[0])
            failed.append(str(msg))
            log(f"{case.case_id}: FAILED: {msg}")
            continue
        written.append(target)
        log(f"{case.case_id}: {time.monotonic() - t0:.1f}s -> {target}")
    if failed:
        raise PredictionFailed(f"{len(failed)} case(s) failed, the others were written:\n  "
                               + "\n  ".join(failed))
    if part_record is not None:
        write_part_record(part_record, selection, input_dir, out_dir)
    return written


def _ending(case: Case) -> str:
    from nnpipe.imageio import ending_of

    return ending_of(case.images[0]) or ".nii.gz"
