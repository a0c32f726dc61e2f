"""Predicting with an nnU-Net v2 model: v2's segmentation, read and written as v2 does.

Per case, in v2's order (every rule from :class:`~nnpipe.v2.semantics.V2Semantics`):

1. read each channel with the plans' reader (:mod:`nnpipe.v2.imageio`: ``(z, y, x)``,
   spacing in the same order), stack ``(C, z, y, x)`` float32;
2. ``transpose_forward``; crop to the filled nonzero mask of all channels;
3. normalise each channel by its scheme (:func:`nnpipe.preprocessing.normalize.normalize`,
   the mask being the filled nonzero mask), then resample to the target spacing
   (:func:`nnpipe.v2.semantics.resample`: cubic, clipped, v2's separate-axis rule);
4. sliding window of logits through nnpipe's own
   (:func:`nnpipe.inference.sliding_window.sliding_window`, whose tile starts and zero
   padding are v2's) with v2's facts as data: its Gaussian importance map, every flip of
   the checkpoint's mirror axes (TTA), float16 sums; logits averaged over flips and tiles,
   then over folds; a 2D configuration slides over the slices of the first (transposed)
   axis;
5. logits resampled back to the cropped grid (linear, v2's probabilities rule), then
   argmax (labels) or sigmoid > 0.5 written in ``regions_class_order`` (regions), by the
   decision nnpipe's own models use (:func:`nnpipe.preprocessing.transform.decide_and_paste`);
6. pasted into the uncropped grid, ``transpose_backward``, written by the same reader as
   uint8 (uint16 from 255 foreground labels) with the input's geometry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from nnpipe.datasets.layout import Case, find_cases
from nnpipe.errors import DataError
from nnpipe.inference.export import write_probabilities
from nnpipe.inference.predict import PredictionFailed
from nnpipe.inference.shards import Shard, select_part, write_part_record
from nnpipe.inference.sliding_window import predict_volume_2d, sliding_window
from nnpipe.labels import LabelScheme, ScoredClass
from nnpipe.planning.plan import ChannelNorm
from nnpipe.preprocessing.transform import CaseTransform, decide_and_paste
from nnpipe.progress import log
from nnpipe.v2.imageio import V2Image, read_v2_image, write_v2_segmentation
from nnpipe.v2.model import V2Model, to_device
from nnpipe.v2.semantics import (
    V2Semantics,
    gaussian_importance,
    resample,
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


def sliding_window_logits(nets: Sequence[torch.nn.Module], data: np.ndarray, sem: V2Semantics,
                          device: torch.device, tta: bool = True, batch_size: int = 1,
                          memory_format: torch.memory_format = torch.contiguous_format
                          ) -> np.ndarray:
    """Logits ``(K, *spatial)`` of ``data`` ``(C, *spatial)`` in ``sem.accumulate_dtype``.

    nnpipe's own sliding window (:func:`nnpipe.inference.sliding_window.sliding_window`;
    a 2D configuration: :func:`~nnpipe.inference.sliding_window.predict_volume_2d` over the
    slices of axis 0, the first transposed axis) with v2's facts as data: v2's Gaussian
    importance map (:func:`nnpipe.v2.semantics.gaussian_importance`, in the accumulators'
    dtype), the flips of the checkpoint's mirror axes (``tta``), v2's tile step, and sums
    in ``sem.accumulate_dtype`` (float16 in v2). Folds (``nets``) each slide over the whole
    case and their logits are summed in that dtype and divided once, as nnU-Net v2 2.8.1's
    ``predict_logits_from_preprocessed_data``; on a CUDA device the forward passes run
    under fp16 autocast, as v2's. Raises ``ValueError`` when the float16 sums overflow
    (v2 stops there too).
    """
    acc = torch.float16 if sem.accumulate_dtype == "float16" else torch.float32
    weight = torch.from_numpy(gaussian_importance(
        sem.patch_size, dtype=np.float16 if acc == torch.float16 else np.float32))
    image = torch.from_numpy(np.ascontiguousarray(data)).to(device)
    flip = bool(tta and sem.mirror_axes)
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")
    total: torch.Tensor | None = None
    with torch.inference_mode():
        for net in nets:
            def forward(x: torch.Tensor, net: torch.nn.Module = net) -> torch.Tensor:
                return net(x.contiguous(memory_format=memory_format) if x.ndim == 5 else x)

            kwargs: dict[str, Any] = dict(
                num_classes=sem.num_outputs, overlap=1.0 - sem.tile_step_size, blend=weight,
                batch_size=batch_size, tta_flips=flip, device=device,
                mirror_axes=sem.mirror_axes if flip else None, accumulate_dtype=acc)
            with autocast:
                if sem.dim == 3:
                    logits = sliding_window(forward, image, sem.patch_size, **kwargs)
                else:
                    logits = predict_volume_2d(forward, image, 0, sem.patch_size, **kwargs)
            if torch.isinf(logits).any():  # float16 holds up to 65504: v2 stops here too
                raise ValueError("the summed logits overflow float16 (inf), as they would "
                                 "in nnU-Net v2; this model's logits are too large for v2's "
                                 "accumulators")
            logits = logits.cpu()
            total = logits if total is None else total.add_(logits)  # accumulators' dtype
        assert total is not None  # a V2Model has at least one fold
        if len(nets) > 1:
            total /= len(nets)
    return total.numpy()  # float16 as v2 exports them


# ---------------------------------------------------------------- export


def label_scheme(sem: V2Semantics) -> LabelScheme:
    """The v2 model's labels as nnpipe's :class:`~nnpipe.labels.LabelScheme`: one class per
    label value, or one sigmoid per region written in ``regions_class_order``; the ignore
    label is never an output, so never predicted."""
    names = {v: str(v) for v in sem.labels}
    if sem.regions is None:
        return LabelScheme(names, ignore=sem.ignore_label)
    assert sem.regions_class_order is not None  # the plans reader requires it with regions
    regions = tuple(ScoredClass(f"region {i}", tuple(r)) for i, r in enumerate(sem.regions))
    return LabelScheme(names, regions, sem.regions_class_order, sem.ignore_label)


def segmentation(logits: np.ndarray, prepared: Prepared, sem: V2Semantics, *,
                 with_probabilities: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Steps 5-6 before writing: label values ``(z, y, x)`` in the file's voxel order and,
    with ``with_probabilities``, probabilities ``(K, z, y, x)`` float32 (softmax or sigmoid
    of the restored logits; background 1, regions 0, outside the crop box).

    The logits are resampled back with v2's rule (:func:`nnpipe.v2.semantics.resample`,
    ``sem.probabilities_resampling``), keeping their dtype (float16 from v2's accumulators:
    v2 takes the argmax of float16 logits, the first class winning a tie), then decided and
    pasted by nnpipe's :func:`nnpipe.preprocessing.transform.decide_and_paste` (labels from the
    probabilities when they are saved, as v2 does), then ``transpose_backward``."""
    back = resample(logits, prepared.cropped_shape, prepared.target_spacing, prepared.spacing,
                    sem.probabilities_resampling)
    labels, probs = decide_and_paste(torch.from_numpy(back), prepared.bbox,
                                     prepared.shape_before_crop, label_scheme(sem),
                                     with_probabilities,
                                     labels_from_probabilities=with_probabilities,
                                     dtype=sem.output_dtype)
    labels = labels.transpose(sem.transpose_backward)
    if probs is not None:
        probs = probs.transpose(0, *[a + 1 for a in sem.transpose_backward])
    return labels, probs


def predict_v2_image(model: V2Model, nets: Sequence[torch.nn.Module], image: V2Image,
                     device: torch.device, tta: bool = True, batch_size: int = 1,
                     memory_format: torch.memory_format = torch.contiguous_format, *,
                     with_probabilities: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Label values ``(z, y, x)`` (the file's order) of one case, and with
    ``with_probabilities`` its probabilities ``(K, z, y, x)`` (:func:`segmentation`)."""
    sem = model.configuration.semantics
    if image.data.shape[0] != model.configuration.input_channels:
        raise ValueError(f"image has {image.data.shape[0]} channel(s); the model expects "
                         f"{model.configuration.input_channels}")
    # on a GPU the case is cropped, normalised and resampled there (the host path's numbers
    # to float32 rounding); on a CPU the numpy path is the faster one
    prepared = preprocess(image, sem, device if device.type != "cpu" else None)
    logits = sliding_window_logits(nets, prepared.data, sem, device, tta, batch_size,
                                   memory_format)
    return segmentation(logits, prepared, sem, with_probabilities=with_probabilities)


def predict_v2_folder(model: V2Model, input_dir: Path | str, out_dir: Path | str, *,
                      device: torch.device, tta: bool = True, batch_size: int = 1,
                      skip_existing: bool = False, shard: Shard | None = None,
                      part_record: Path | str | None = None,
                      save_probabilities: bool = False) -> list[Path]:
    """``nnpipe predict --model <v2 model> -i IN -o OUT``: every case of ``IN``
    (``<case>_<NNNN><ending>``, one file per channel) written to ``OUT/<case><ending>``.
    ``shard``: only that part of the cases, as for nnpipe's own models
    (:mod:`nnpipe.inference.shards`); ``part_record``: written when every case of the part
    is done, for ``nnpipe gather``. ``save_probabilities``: first ``OUT/<case>.npz`` as
    nnpipe writes its own (:func:`nnpipe.inference.export.write_probabilities`:
    ``probabilities`` ``(K, i, j, k)`` float16 in the file's voxel order, ``affine``, and
    ``names``: the label values, or each region's values joined by ``+``), the values being
    v2's (softmax / sigmoid of the logits resampled back; v2's own ``.npz`` holds the same
    numbers as float32 ``(K, z, y, x)``).

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
        probs_path = out / f"{case.case_id}.npz"
        if skip_existing and target.is_file() and (not save_probabilities
                                                   or probs_path.is_file()):
            written.append(target)
            continue
        t0 = time.monotonic()
        try:
            image = read_v2_image(case.images, config.semantics.reader, case.case_id)
            seg, probs = predict_v2_image(model, nets, image, device, tta, batch_size, fmt,
                                          with_probabilities=save_probabilities)
            if probs is not None:
                file_probs, affine = file_order(probs, image)
                write_probabilities(probs_path, file_probs, affine,
                                    class_names(config.semantics))
            write_v2_segmentation(target, seg, image, config.semantics.output_dtype)
        except Exception as exc:  # one bad case: name it and go on
            msg = DataError.of(exc, case=case.case_id, path=case.images[0])
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


def class_names(sem: V2Semantics) -> list[str]:
    """One name per output: the label value, or a region's values joined by ``+``."""
    if sem.regions is None:
        return [str(v) for v in sem.labels]
    return ["+".join(str(v) for v in r) for r in sem.regions]


def file_order(probs: np.ndarray, image: V2Image) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(K, z, y, x)`` in the reader's order -> ``(K, i, j, k)`` in the
    file's voxel order (as nibabel indexes it) and that grid's affine (RAS, mm): what
    nnpipe's own ``.npz`` holds. SimpleITK's direction and origin are LPS (x and y negated
    for RAS); a 2D image gets a third axis of one voxel."""
    g = image.geometry
    data = probs.transpose(0, *range(probs.ndim - 1, 0, -1))  # (K, x, y, z)
    if image.reader == "SimpleITKIO":
        n = len(g["spacing"])
        affine = np.eye(4)
        direction = np.asarray(g["direction"], dtype=float).reshape(n, n)
        affine[:n, :n] = direction * np.asarray(g["spacing"], dtype=float)
        affine[:n, 3] = g["origin"]
        affine[:2] *= -1.0  # LPS -> RAS: negate the rows of x and y
        return np.ascontiguousarray(data), affine  # 2D: (K, 1, y, x) -> (K, x, y, 1)
    original = np.asarray(g["original_affine"], dtype=float)
    if image.reader == "NibabelIO":
        return np.ascontiguousarray(data), original
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(original))
    data = np.stack([apply_orientation(channel, back) for channel in data])
    return data, original


def _ending(case: Case) -> str:
    from nnpipe.imageio import ending_of

    return ending_of(case.images[0]) or ".nii.gz"
