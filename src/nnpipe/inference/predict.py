"""Whole-case prediction: images in, label maps out, in each input's format and geometry.

This module orchestrates; the memory estimate is :mod:`nnpipe.inference.memory`, the case
transform (preprocess forward, restore inverse) :mod:`nnpipe.preprocessing.transform`, the
probabilities file :mod:`nnpipe.inference.export`.

Per case: check its estimated peak memory from the header (:func:`check_memory`), read the
image through the one reader (:mod:`nnpipe.datasets.layout`: canonical voxel order, mm),
apply the plan's case transform forward (crop, normalize, resample), run the
sliding window of every model (3D tiles, or 2D tiles slice by slice) and average their
logits (over flips, tiles, and the fold models of an ensemble), resample the logits back to
the crop box of the original grid, take the argmax (or, in region mode, a sigmoid per
region thresholded at 0.5 and written in ``regions_class_order``), paste into the full grid
(background outside the crop box), optionally keep only the largest component of some
classes, and write (nnU-Net v2 2.8.1's order: ``inference/predict_from_raw_data.py``,
``inference/export_prediction.py``; issue 19 rows 4 and 11):

* ``<case><ending>`` (the input's ending and format): the label values of dataset.json
  (the plan's value <-> index table; the smallest unsigned dtype holding them) in the
  input's own voxel order, with its header geometry (NIfTI: qform and sform, matrices and
  codes; code 1 "scanner" where the source had none);
* with ``save_probabilities``, first ``<case>.npz``: ``probabilities`` ``(K, X, Y, Z)``
  float16 (compressed, the input's voxel order): the softmax (regions: sigmoid) of the
  restored logits, background 1 (regions 0) outside the crop box; ``affine`` and ``names``
  (class or region names).

Every file is written atomically and the label map last, so an interrupted run leaves no
file that looks finished, and ``--continue`` skips exactly the cases already done.
A cascade member (plan ``3d_cascade``) first gets the previous stage's segmentation of the case
(:class:`PreviousStage`: its low-resolution models predict the image, or a folder holds their
predictions) and takes it, one-hot, as extra input channels
(:func:`nnpipe.preprocessing.previous.previous_channels`).

A bad case (too large for ``inference.memory_gb``, wrong channel count, unreadable file, or
any exception in its work) is reported with its name and file and the other cases are still
predicted; the run then fails listing every bad case.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nnpipe.config import InferenceSettings
from nnpipe.datasets.layout import (
    Case,
    find_cases,
    load_dataset,
    prediction_path,
    read_case_image,
    read_label_file,
    write_prediction,
)
from nnpipe.errors import DataError
from nnpipe.imageio import ENDINGS, ending_of
from nnpipe.inference.ensemble import LoadedModel, average_logits
from nnpipe.inference.export import write_probabilities
from nnpipe.inference.memory import check_memory
from nnpipe.inference.postprocess import keep_largest_component, load_decision
from nnpipe.inference.shards import Shard, select_part, write_part_record
from nnpipe.inference.sliding_window import apply_activation
from nnpipe.labels import REGION_THRESHOLD, outputs_to_labels
from nnpipe.metrics import ScoredClass
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.pipeline import (
    CaseMeta,
    paste_probabilities,
)
from nnpipe.preprocessing.previous import previous_channels
from nnpipe.preprocessing.transform import CaseTransform
from nnpipe.progress import log

if TYPE_CHECKING:  # imported where used (load_configuration), as before
    from nnpipe.inference.model_spec import ModelSpec



class PredictionFailed(DataError):
    """Raised after all cases were tried when some failed; names every failed case."""


@dataclass(frozen=True)
class PreviousStage:
    """Where a cascade member gets the previous stage's segmentation of a case: predicted
    by ``models`` (that stage's fold models, averaged), or read from ``folder`` (its
    predictions, ``<case><ending>`` in the image's geometry; the cross-validation's)."""

    models: tuple[LoadedModel, ...] = ()
    folder: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.models) == (self.folder is not None):
            raise ValueError("PreviousStage needs exactly one of models and folder")

    def labels(self, image: np.ndarray, affine: np.ndarray, settings: InferenceSettings,
               case_id: str) -> np.ndarray:
        """Label values ``(X, Y, Z)`` of ``image`` ``(C, X, Y, Z)`` in its canonical grid."""
        if self.folder is not None:
            values, _ = read_label_file(prediction_path(self.folder, case_id), case=case_id)
            return values
        return predict_image(self.models, image, affine, settings, case_id).labels


@dataclass(frozen=True)
class CaseResult:
    labels: np.ndarray  # (X, Y, Z) label values in the canonical grid of the input
    # (K, X, Y, Z) float32 softmax / sigmoid of the restored logits, when asked for
    probabilities: np.ndarray | None


# ---------------------------------------------------------------- one case


def predict_image(models: Sequence[LoadedModel], image: np.ndarray, affine: np.ndarray,
                  settings: InferenceSettings, case_id: str, *,
                  postprocess: Sequence[ScoredClass] = (),
                  with_probabilities: bool = False,
                  device_path: bool | None = None,
                  previous: np.ndarray | None = None) -> CaseResult:
    """Label values ``(X, Y, Z)`` (and probabilities) for ``image`` ``(C, X, Y, Z)`` in its
    own grid (the reader's canonical order; :func:`nnpipe.datasets.layout.write_prediction`
    takes them back to the file's).

    ``device_path``: crop, resample and normalize, and later resample the logits back
    and take the argmax, with torch on the models' device (default: when that is not the CPU;
    on CPUs the numpy path is the faster one). Both paths give the same numbers to float32
    rounding. If the device runs out of memory for a step, that step runs on the host (logged).

    ``previous``: a cascade stage's input, the previous stage's label values ``(X, Y, Z)`` in
    the image's grid (required when the plan has previous-stage channels).
    """
    plan = models[0].plan
    if image.ndim != 4 or image.shape[0] != plan.num_channels:
        raise DataError(f"image of shape {image.shape} has {image.shape[0]} channel(s); the "
                        f"model expects {plan.num_channels}", case=case_id)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("affine is not invertible (zero or non-finite voxel size)", case=case_id)
    device = models[0].device
    on_device = device.type != "cpu" if device_path is None else device_path
    transform = CaseTransform.from_plan(plan)
    try:
        prepared, meta = transform.forward(image, affine, device if on_device else None,
                                           case_id=case_id)
    except torch.OutOfMemoryError:
        _out_of_device_memory(device, case_id, "preprocessing")
        prepared, meta = transform.forward(image, affine, case_id=case_id)
    # average_logits takes host arrays
    data = prepared if isinstance(prepared, np.ndarray) else prepared.cpu().numpy()
    del image, prepared
    if plan.previous_channels:
        if previous is None:
            raise DataError(f"the {plan.configuration or 'cascade'} stage needs the "
                            f"{plan.previous_stage} segmentation of the case", case=case_id)
        data = np.concatenate([data, previous_channels(previous, plan.label_table, meta,
                                                       plan.num_classes, case_id)])
    logits = average_logits(models, data, settings)
    del data
    if on_device:
        try:
            labels, full = _restore_on_device(logits, meta, models[0], with_probabilities,
                                              transform)
            return CaseResult(_postprocess(labels, postprocess), full)
        except torch.OutOfMemoryError:
            _out_of_device_memory(device, case_id, "restoring the logits")
    labels, full = transform.inverse(logits, meta, models[0].scheme,
                                     with_probabilities=with_probabilities)
    return CaseResult(_postprocess(labels, postprocess), full)


def _postprocess(labels: np.ndarray, postprocess: Sequence[ScoredClass]) -> np.ndarray:
    for c in postprocess:
        labels = keep_largest_component(labels, c)
    return labels


def _out_of_device_memory(device: torch.device, case_id: str, step: str) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log(f"case {case_id!r}: device memory ran out while {step}; doing it on the host")


def _restore_on_device(logits: np.ndarray, meta: CaseMeta, lm: LoadedModel,
                       with_probabilities: bool, transform: CaseTransform
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """:meth:`CaseTransform.inverse` on ``lm.device``, one channel of ``logits`` ``(K, X', Y', Z')``
    at a time: each is resampled to the crop box and folded into a running argmax (the first
    maximum wins, as in ``argmax``) or, in region mode, its sigmoid thresholded (outermost
    region first). Outside the box every voxel is background, as on the host. Only the label
    values ``(X, Y, Z)`` come back to the host, and with ``with_probabilities`` the restored
    logits, whose softmax (sigmoid) is taken there as on the host."""
    device, table = lm.device, lm.plan.label_table
    box = tuple(slice(lo, hi) for lo, hi in meta.bbox)
    regions = lm.regions is not None
    cropped = None
    if with_probabilities:
        cropped = np.empty((logits.shape[0], *meta.cropped_shape), dtype=np.float32)
    best: torch.Tensor | None = None
    index = torch.zeros(meta.cropped_shape, dtype=torch.int32, device=device)
    with torch.inference_mode():
        for k in range(logits.shape[0]):
            channel = transform.inverse_channel_torch(torch.from_numpy(logits[k]).to(device),
                                                      meta)
            if cropped is not None:
                cropped[k] = channel.cpu().numpy()
            if regions:  # index holds label values here
                # nnpipe.labels.outputs_to_labels, one channel at a time
                index.masked_fill_(torch.sigmoid(channel) > REGION_THRESHOLD,
                                   lm.scheme.regions_class_order[k])
            elif best is None:
                best = channel
            else:
                better = channel > best
                best = torch.where(better, channel, best)
                index.masked_fill_(better, k)
        small = table.value_dtype == np.uint8
        if not regions:
            lut = torch.tensor(table.values, dtype=torch.int32, device=device)
            index = lut[index]
        labels = torch.zeros(meta.original_shape, device=device,
                             dtype=torch.uint8 if small else torch.int32)
        labels[box] = index
        host = labels.cpu().numpy()
    full = None
    if cropped is not None:
        probs = apply_activation(torch.from_numpy(cropped),
                                 "sigmoid" if regions else "softmax")
        full = paste_probabilities(probs.numpy(), meta.bbox, meta.original_shape,
                                   regions=regions)
    return host.astype(table.value_dtype, copy=False), full


# ---------------------------------------------------------------- many cases


def predict_cases(models: Sequence[LoadedModel] | Sequence[Sequence[LoadedModel]],
                  cases: Sequence[Case], out_dir: Path,
                  settings: InferenceSettings, *, skip_existing: bool = False,
                  postprocess: Sequence[ScoredClass] = (),
                  errors: Sequence[DataError] = (),
                  previous: Sequence[PreviousStage | None] = ()) -> list[Path]:
    """Predict ``cases`` into ``out_dir/<case>.nii.gz``; returns the label paths written.

    ``models``: the models of one plan (averaged on its grid), or one such list per member
    of a configuration whose members have different plans (a 2D and a 3D run): each member
    predicts in its own plan and the members' probabilities are averaged in the original
    grid (:func:`predict_members_image`). ``previous``: per member, a cascade member's
    :class:`PreviousStage` (None for the others).

    A case that fails is logged and skipped; after the last case :class:`PredictionFailed`
    lists every failure (``errors`` found earlier, e.g. incomplete channel files, included).
    """
    groups = as_groups(models)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = [str(e) for e in errors]
    for e in errors:
        log(f"predict: skipped: {e}")
    written: list[Path] = []
    names = class_names(groups[0][0])
    t0 = time.monotonic()
    for i, case in enumerate(cases, start=1):
        label_path = out_dir / f"{case.case_id}{ending_of(case.images[0])}"
        prob_path = out_dir / f"{case.case_id}.npz"
        if skip_existing and label_path.is_file() and (
                not settings.save_probabilities or prob_path.is_file()):
            log(f"{_bar(i, len(cases), t0)} {case.case_id}: exists, skipped")
            written.append(label_path)
            continue
        t_case = time.monotonic()
        try:
            label_path = _predict_one(groups, case, out_dir, settings, postprocess, names,
                                      previous)
        except Exception as exc:  # any failure of one case: name it, go on with the others
            message = DataError.of(exc, case=case.case_id, path=case.images[0])
            failed.append(str(message))
            log(f"{_bar(i, len(cases), t0)} {case.case_id}: FAILED: {message}")
            continue
        written.append(label_path)
        log(f"{_bar(i, len(cases), t0)} {case.case_id}: {time.monotonic() - t_case:.1f}s "
            f"-> {label_path}")
    if failed:
        raise PredictionFailed(f"{len(failed)} case(s) failed, the others were written:\n  "
                               + "\n  ".join(failed))
    return written


def as_groups(models: Sequence[LoadedModel] | Sequence[Sequence[LoadedModel]]
              ) -> list[list[LoadedModel]]:
    """``models`` as one list of models per member (a flat list is one member)."""
    if not models:
        raise ValueError("no model given")
    if isinstance(models[0], LoadedModel):
        return [list(models)]  # type: ignore[arg-type]
    groups = [list(g) for g in models]  # type: ignore[arg-type]
    if any(not g for g in groups):
        raise ValueError("a member of the configuration has no model")
    return groups


def predict_members_image(groups: Sequence[Sequence[LoadedModel]], image: np.ndarray,
                          affine: np.ndarray, settings: InferenceSettings, case_id: str, *,
                          postprocess: Sequence[ScoredClass] = (),
                          with_probabilities: bool = False,
                          previous: Sequence[PreviousStage | None] = ()) -> CaseResult:
    """:func:`predict_image` of a configuration: one member predicts as it does; several
    (each a list of fold models of one plan) each predict ``image`` ``(C, X, Y, Z)`` in
    their own plan, their probabilities ``(K, X, Y, Z)`` are averaged in the image's grid,
    then the argmax (or the region thresholds) and ``postprocess``. A cascade member first
    gets its previous stage's segmentation (``previous``, one entry per member)."""
    stages = list(previous) or [None] * len(groups)
    if len(stages) != len(groups):
        raise ValueError(f"{len(stages)} previous stages for {len(groups)} members")

    def prior(i: int) -> np.ndarray | None:
        if not groups[i][0].plan.previous_channels:
            return None
        stage = stages[i]
        if stage is None:
            raise DataError(f"member {i} is a cascade stage without its "
                            f"{groups[i][0].plan.previous_stage} stage", case=case_id)
        return stage.labels(image, affine, settings, case_id)

    if len(groups) == 1:
        return predict_image(groups[0], image, affine, settings, case_id,
                             postprocess=postprocess, with_probabilities=with_probabilities,
                             previous=prior(0))
    total: np.ndarray | None = None
    for i, group in enumerate(groups):
        result = predict_image(group, image, affine, settings, case_id,
                               with_probabilities=True, previous=prior(i))
        assert result.probabilities is not None  # asked for above
        if total is None:
            total = result.probabilities
        else:
            total += result.probabilities
    assert total is not None  # groups is not empty
    total /= len(groups)
    labels = outputs_to_labels(total, groups[0][0].scheme)
    return CaseResult(_postprocess(labels, postprocess), total if with_probabilities else None)


def _predict_one(groups: Sequence[Sequence[LoadedModel]], case: Case, out_dir: Path,
                 settings: InferenceSettings, postprocess: Sequence[ScoredClass],
                 names: Sequence[str], previous: Sequence[PreviousStage | None] = ()) -> Path:
    """Read, predict and write one case; the label map is written last. Returns its path."""
    plan = groups[0][0].plan
    for group in groups:
        check_memory(case, group[0].plan, group[0].out_channels, settings.memory_gb)
    ci = read_case_image(case, plan.num_channels)
    result = predict_members_image(groups, ci.image, ci.affine, settings, case.case_id,
                                   postprocess=postprocess,
                                   with_probabilities=settings.save_probabilities,
                                   previous=previous)
    if result.probabilities is not None:
        write_probabilities(out_dir / f"{case.case_id}.npz",
                            ci.orientation.undo(result.probabilities, channel_first=True),
                            ci.source.affine, names)
    return write_prediction(out_dir, result.labels, ci)


def class_names(model: LoadedModel) -> list[str]:
    if model.regions is not None:
        return [r.name for r in model.regions]
    return [model.plan.labels[k] for k in sorted(model.plan.labels)]


def _bar(i: int, n: int, t0: float, width: int = 20) -> str:
    """``predict [#####-----] 3/10 eta 12s``: a progress bar that is one log line per case."""
    done = int(width * i / max(n, 1))
    elapsed = time.monotonic() - t0
    eta = elapsed / max(i - 1, 1) * (n - i + 1) if i > 1 else float("nan")
    eta_s = "" if eta != eta else f" eta {eta:.0f}s"
    return f"predict [{'#' * done}{'-' * (width - done)}] {i}/{n}{eta_s}"


def select_device(name: str = "auto") -> torch.device:
    """``auto``: the first GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------- entry points of the CLI


def load_configuration(models: Sequence[Path | str] | ModelSpec, device: str = "auto",
                       plan: Path | str | None = None, postprocess: Path | str | None = None,
                       previous: Path | str | None = None
                       ) -> tuple[list[list[LoadedModel]], list[ScoredClass], str,
                                  list[PreviousStage | None]]:
    """``--model`` (checkpoints, a run folder, best.json or model.zip;
    :func:`nnpipe.inference.resolve.resolve_model`) as networks on ``device``, one list
    per member, with the postprocessing to apply (``postprocess``, a decision JSON, replaces
    the model's own), a name for messages, and per member its :class:`PreviousStage` (a
    cascade member's low-resolution models, or the folder ``previous`` of their
    predictions; None for other members). ``models`` may be resolved already (a
    :class:`~nnpipe.inference.model_spec.ModelSpec`), so the CLI reads it once."""
    from nnpipe.inference.model_spec import ModelSpec
    from nnpipe.inference.resolve import resolve_model

    spec = models if isinstance(models, ModelSpec) else resolve_model(models)
    if plan is not None:
        wanted = Plan.load(plan)
        for m in spec.members:
            if m.plan != wanted:
                diff = [k for k in wanted.to_dict()
                        if wanted.to_dict()[k] != m.plan.to_dict().get(k)]
                raise ValueError(f"model {spec.source!r} ({m.name}) was trained with a "
                                 f"different plan than plan {str(plan)!r} (differs in: "
                                 f"{', '.join(diff)}); predict with models of one plan")
    dev = select_device(device)
    groups = spec.load(dev)
    classes = load_decision(postprocess) if postprocess else spec.postprocess_classes()
    stages: list[PreviousStage | None]
    if previous is not None:
        stages = [PreviousStage(folder=Path(previous)) if m.plan.previous_stage else None
                  for m in spec.members]
    else:
        stages = [None if g is None else PreviousStage(models=tuple(g))
                  for g in spec.load_previous(dev)]
    return groups, classes, spec.source, stages


def predict_folder(models: Sequence[Path | str] | ModelSpec, input_dir: Path | str,
                   out_dir: Path | str, settings: InferenceSettings, *,
                   plan: Path | str | None = None, postprocess: Path | str | None = None,
                   skip_existing: bool = False,
                   allow_empty: bool = False, device: str = "auto",
                   layout: str | None = None, previous: Path | str | None = None,
                   shard: Shard | None = None,
                   part_record: Path | str | None = None) -> list[Path]:
    """``nnpipe predict --model ... --input DIR``: every image of a folder (no labels
    needed), found by the rule of ``layout`` (default: the layout the model was trained on;
    :func:`nnpipe.datasets.layout.find_cases`); models averaged if several, the members of a
    best.json or model.zip in the original grid. ``shard``: only that part of the cases
    (:mod:`nnpipe.inference.shards`); ``part_record``: a JSON written when every case of the
    part is done, for :func:`nnpipe.inference.shards.gather`."""
    groups, classes, source, stages = load_configuration(models, device, plan, postprocess,
                                                         previous)
    mp = groups[0][0].plan
    cases: list[Case]
    errors: list[DataError]
    if allow_empty and not Path(input_dir).is_dir():
        cases, errors = [], []
    else:
        cases, errors = find_cases(input_dir, layout=layout or mp.layout,
                                   num_channels=mp.num_channels)
    if not cases and not errors and not allow_empty:
        raise DataError("holds no images (" + ", ".join(ENDINGS) + ")"
                        + _layout_hint(Path(input_dir), layout or mp.layout), path=input_dir)
    selection, errors = select_part(cases, shard or Shard(0, 1), out_dir, errors)
    cases = list(selection.cases)
    log(f"predict {len(cases)} case(s) from {input_dir} with {_describe(groups, source)}")
    written = predict_cases(groups, cases, Path(out_dir), settings,
                            skip_existing=skip_existing, postprocess=classes, errors=errors,
                            previous=stages)
    if part_record is not None:
        write_part_record(part_record, selection, input_dir, out_dir)
    return written


def _layout_hint(input_dir: Path, layout: str) -> str:
    """``; ... give --layout msd`` when the folder has images that only the nnU-Net v2
    layout's ``<case>_0000`` rule left out (one file per case, as MSD names them)."""
    if layout != "nnunetv2" or not input_dir.is_dir():
        return ""
    images = sorted(p.name for p in input_dir.iterdir() if ending_of(p) is not None)
    if not images:
        return ""
    return (f" named <case>_0000<ending> (nnU-Net v2 layout, one file per channel), but "
            f"{len(images)} image file(s) without that suffix, e.g. {images[0]}: for one file "
            "per case, give --layout msd")


def predict_dataset(models: Sequence[Path | str] | ModelSpec, raw: Path | str,
                    case_ids: Sequence[str] | None, out_dir: Path | str,
                    settings: InferenceSettings, *, plan: Path | str | None = None,
                    postprocess: Path | str | None = None, skip_existing: bool = False,
                    device: str = "auto",
                    previous: Path | str | None = None,
                    shard: Shard | None = None) -> list[Path]:
    """``nnpipe predict --raw RAW --splits S --fold F`` (or ``--cases``, or ``--test``):
    cases of a dataset by id, or with ``case_ids=None`` its test cases (dataset.json's
    ``test`` list, or ``imagesTs``); the models must fit the dataset's channels and labels.
    ``previous``: a cascade model's low-resolution predictions of these cases (a folder; by
    default its low-resolution models predict them). ``shard``: only that part of the cases
    (:mod:`nnpipe.inference.shards`)."""
    ds = load_dataset(raw)
    groups, classes, source, stages = load_configuration(models, device, plan, postprocess,
                                                         previous)
    mp = groups[0][0].plan
    # a plan records the classes without the ignore value; plans older than that list it
    if mp.num_channels != ds.num_channels \
            or dict(mp.labels) not in (dict(ds.labels), dict(ds.scheme.names)):
        raise ValueError(f"model {source!r} ({mp.num_channels} channel(s), labels "
                         f"{mp.labels}) does not fit dataset {str(raw)!r} ({ds.num_channels} "
                         f"channel(s), labels {ds.labels})")
    cases = list(ds.test) if case_ids is None else [ds.case(c) for c in case_ids]
    if shard is not None:
        cases = list(select_part(cases, shard, out_dir)[0].cases)
    log(f"predict {len(cases)} case(s) of {raw} with {_describe(groups, source)}")
    return predict_cases(groups, cases, Path(out_dir), settings,
                         skip_existing=skip_existing, postprocess=classes, previous=stages)


def _describe(groups: Sequence[Sequence[LoadedModel]], source: str) -> str:
    n = sum(len(g) for g in groups)
    if len(groups) == 1:
        return f"{n} model(s)"
    return f"{n} models of {len(groups)} plans averaged in the original grid ({source})"
