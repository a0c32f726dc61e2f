"""Whole-case prediction: NIfTI images in, NIfTI label maps out, in the source geometry.

Per case: read the image, apply the plan's preprocessing (crop, resample, normalize), run the
sliding window of every model (3D tiles, or 2D tiles slice by slice) and average their
probabilities (one model, or the fold models of an ensemble), undo the preprocessing on the
probabilities (resample to the cropped grid, paste into the full grid), take the argmax (or,
in region mode, threshold the regions and turn them back into labels), optionally keep only
the largest component of some classes, and write:

* ``<case>.nii.gz``: integer labels (uint8; uint16 past 255 labels) with the source image's
  qform and sform (matrices and codes; code 1 "scanner" where the source had none);
* with ``save_probabilities``, first ``<case>.npz``: ``probabilities`` ``(K, X, Y, Z)``
  float16 (compressed), ``affine`` and ``names`` (class or region names).

Every file is written atomically and the label map last, so an interrupted run leaves no
file that looks finished, and ``--continue`` skips exactly the cases already done.
A bad case (wrong channel count, affine not invertible, unreadable file) is reported with
its name and the other cases are still predicted; the run then fails listing every bad case.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from nnpipe.config import InferenceSettings
from nnpipe.datasets.layout import Case, Dataset, read_image
from nnpipe.errors import DataError
from nnpipe.evaluation.metrics import ScoredClass
from nnpipe.inference.ensemble import LoadedModel, average_probabilities, load_models
from nnpipe.inference.postprocess import keep_largest_component, load_decision
from nnpipe.io import atomic_path, load_nifti
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.pipeline import CaseMeta, preprocess_image, restore_probabilities
from nnpipe.progress import log
from nnpipe.training.regions import regions_to_labels

NIFTI_ENDING = ".nii.gz"
CHANNEL_SUFFIX_LEN = len("_0000")


class PredictionFailed(DataError):
    """Raised after all cases were tried when some failed; names every failed case."""


@dataclass(frozen=True)
class CaseResult:
    labels: np.ndarray  # (X, Y, Z) integer labels in the source grid
    probabilities: np.ndarray | None  # (K, X, Y, Z) float32, when asked for


# ---------------------------------------------------------------- finding input images


def find_cases(folder: Path | str, num_channels: int) -> tuple[list[Case], list[DataError]]:
    """The cases of a folder of NIfTI images in a dataset's channel layout.

    ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... (nnU-Net v2: one file per channel) or
    ``<case>.nii.gz`` (MSD: 4D ``(X, Y, Z, C)``, or 3D with one channel). Returns the cases,
    sorted, and one error per case whose channel files are incomplete.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("input folder does not exist", path=folder)
    per_channel: dict[str, dict[int, Path]] = {}
    whole: list[Case] = []
    for path in sorted(folder.glob(f"*{NIFTI_ENDING}")):
        stem = path.name[: -len(NIFTI_ENDING)]
        suffix = stem[-CHANNEL_SUFFIX_LEN:]
        if len(stem) > CHANNEL_SUFFIX_LEN and suffix[0] == "_" and suffix[1:].isdigit():
            per_channel.setdefault(stem[:-CHANNEL_SUFFIX_LEN], {})[int(suffix[1:])] = path
        else:
            whole.append(Case(stem, (path,)))
    errors: list[DataError] = []
    cases = list(whole)
    for case_id, files in per_channel.items():
        expected = set(range(num_channels))
        if set(files) != expected:
            errors.append(DataError(f"has channel files {sorted(files)}; the model expects "
                                    f"_0000 to _{num_channels - 1:04d}", case=case_id,
                                    path=folder))
            continue
        cases.append(Case(case_id, tuple(files[i] for i in range(num_channels))))
    return sorted(cases, key=lambda c: c.case_id), errors


def read_case(case: Case, num_channels: int) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Image ``(C, X, Y, Z)`` float32, its affine and the first file's header."""
    if len(case.images) == 1:
        data, affine = load_nifti(case.images[0], case=case.case_id)
        data = data[..., None] if data.ndim == 3 else data
        if data.ndim != 4:
            raise DataError(f"expected a 3D or 4D image, got shape {data.shape}",
                            case=case.case_id, path=case.images[0])
        image = np.moveaxis(data, -1, 0).astype(np.float32, copy=False)
        if image.shape[0] != num_channels:
            raise DataError(f"has {image.shape[0]} channel(s); the model expects "
                            f"{num_channels}", case=case.case_id, path=case.images[0])
        if not np.isfinite(image).all():
            raise DataError("contains NaN or Inf voxels", case=case.case_id, path=case.images[0])
    else:
        names = tuple(f"channel{i}" for i in range(num_channels))
        ds = Dataset(case.images[0].parent, "input", "nnunetv2", names, {0: "background"},
                     (), (case,))
        image, affine = read_image(ds, case)
    header = nib.load(str(case.images[0])).header
    return image, affine, header


# ---------------------------------------------------------------- one case


def predict_image(models: Sequence[LoadedModel], image: np.ndarray, affine: np.ndarray,
                  settings: InferenceSettings, case_id: str, *,
                  postprocess: Sequence[ScoredClass] = (),
                  with_probabilities: bool = False) -> CaseResult:
    """Labels ``(X, Y, Z)`` (and probabilities) for ``image`` ``(C, X, Y, Z)`` in its own grid."""
    plan = models[0].plan
    if image.ndim != 4 or image.shape[0] != plan.num_channels:
        raise DataError(f"image of shape {image.shape} has {image.shape[0]} channel(s); the "
                        f"model expects {plan.num_channels}", case=case_id)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("affine is not invertible (zero or non-finite voxel size)", case=case_id)
    data, meta = preprocess_image(image, affine, plan, case_id)
    del image
    probs = average_probabilities(models, data, settings)
    del data
    regions = models[0].regions
    full = _restore(probs, meta, regions is not None)
    del probs
    if regions is not None:
        labels = regions_to_labels(full, regions)
    else:
        labels = full.argmax(0).astype(label_dtype(plan))
    for c in postprocess:
        labels = keep_largest_component(labels, c)
    return CaseResult(labels, full if with_probabilities else None)


def _restore(probs: np.ndarray, meta: CaseMeta, regions: bool) -> np.ndarray:
    """Probabilities back to the source grid. Outside the crop box the background has
    probability 1; regions get a dummy leading background channel for that, dropped after."""
    if not regions:
        return restore_probabilities(probs, meta)
    padded = np.concatenate([np.zeros_like(probs[:1]), probs])
    return restore_probabilities(padded, meta)[1:]


def label_dtype(plan: Plan) -> type:
    """The smallest unsigned integer type holding every label of ``plan``."""
    return np.uint8 if max(plan.labels) <= np.iinfo(np.uint8).max else np.uint16


def write_labels(path: Path | str, labels: np.ndarray, source: nib.Nifti1Header,
                 affine: np.ndarray) -> None:
    """Write integer ``labels`` with the source's qform and sform (matrices and codes)."""
    img = nib.Nifti1Image(labels, affine)
    qform, qcode = source.get_qform(coded=True) if hasattr(source, "get_qform") else (None, 0)
    sform, scode = source.get_sform(coded=True) if hasattr(source, "get_sform") else (None, 0)
    # a source with neither code set gets code 1 (scanner) from its best affine, so every
    # viewer places the labels where it placed the image
    img.set_qform(qform if qcode else affine, code=int(qcode) or 1)
    img.set_sform(sform if scode else affine, code=int(scode) or 1)
    img.set_data_dtype(labels.dtype)
    img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_probabilities(path: Path | str, probs: np.ndarray, affine: np.ndarray,
                        names: Sequence[str]) -> None:
    """``probabilities`` ``(K, X, Y, Z)`` float16 in a compressed ``.npz``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, probabilities=probs.astype(np.float16), affine=affine,
                            names=np.asarray(list(names)))


# ---------------------------------------------------------------- many cases


def predict_cases(models: Sequence[LoadedModel], cases: Sequence[Case], out_dir: Path,
                  settings: InferenceSettings, *, skip_existing: bool = False,
                  postprocess: Sequence[ScoredClass] = (),
                  errors: Sequence[DataError] = ()) -> list[Path]:
    """Predict ``cases`` into ``out_dir/<case>.nii.gz``; returns the label paths written.

    A case that fails is logged and skipped; after the last case :class:`PredictionFailed`
    lists every failure (``errors`` found earlier, e.g. incomplete channel files, included).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = [str(e) for e in errors]
    for e in errors:
        log(f"predict: skipped: {e}")
    written: list[Path] = []
    names = class_names(models[0])
    t0 = time.monotonic()
    for i, case in enumerate(cases, start=1):
        label_path = out_dir / f"{case.case_id}{NIFTI_ENDING}"
        prob_path = out_dir / f"{case.case_id}.npz"
        if skip_existing and label_path.is_file() and (
                not settings.save_probabilities or prob_path.is_file()):
            log(f"{_bar(i, len(cases), t0)} {case.case_id}: exists, skipped")
            written.append(label_path)
            continue
        t_case = time.monotonic()
        try:
            image, affine, header = read_case(case, models[0].plan.num_channels)
            result = predict_image(models, image, affine, settings, case.case_id,
                                   postprocess=postprocess,
                                   with_probabilities=settings.save_probabilities)
            if result.probabilities is not None:
                write_probabilities(prob_path, result.probabilities, affine, names)
            write_labels(label_path, result.labels, header, affine)
        except DataError as exc:
            failed.append(str(exc))
            log(f"{_bar(i, len(cases), t0)} {case.case_id}: FAILED: {exc}")
            continue
        written.append(label_path)
        log(f"{_bar(i, len(cases), t0)} {case.case_id}: {time.monotonic() - t_case:.1f}s "
            f"-> {label_path}")
    if failed:
        raise PredictionFailed(f"{len(failed)} case(s) failed, the others were written:\n  "
                               + "\n  ".join(failed))
    return written


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


def predict_folder(models: Sequence[Path | str], input_dir: Path | str, out_dir: Path | str,
                   settings: InferenceSettings, *, plan: Path | str | None = None,
                   postprocess: Path | str | None = None, skip_existing: bool = False,
                   allow_empty: bool = False, device: str = "auto") -> list[Path]:
    """``nnpipe predict --model ... --input DIR``: every case of a folder of NIfTI images
    (in the dataset's channel layout, no labels needed); models averaged if several."""
    loaded = load_models(models, select_device(device), plan)
    if allow_empty and not Path(input_dir).is_dir():
        cases, errors = [], []
    else:
        cases, errors = find_cases(input_dir, loaded[0].plan.num_channels)
    if not cases and not errors and not allow_empty:
        raise DataError(f"holds no {NIFTI_ENDING} images", path=input_dir)
    log(f"predict {len(cases)} case(s) from {input_dir} with {len(loaded)} model(s)")
    return predict_cases(loaded, cases, Path(out_dir), settings, skip_existing=skip_existing,
                         postprocess=load_decision(postprocess) if postprocess else (),
                         errors=errors)


def predict_dataset(models: Sequence[Path | str], raw: Path | str, case_ids: Sequence[str],
                    out_dir: Path | str, settings: InferenceSettings, *,
                    plan: Path | str | None = None, postprocess: Path | str | None = None,
                    skip_existing: bool = False, device: str = "auto") -> list[Path]:
    """``nnpipe predict --raw RAW --splits S --fold F``: cases of a dataset by id; the
    models must fit the dataset's channels and labels."""
    from nnpipe.datasets.layout import load_dataset

    ds = load_dataset(raw)
    loaded = load_models(models, select_device(device), plan)
    mp = loaded[0].plan
    if mp.num_channels != ds.num_channels or dict(mp.labels) != dict(ds.labels):
        raise ValueError(f"model {str(loaded[0].path)!r} ({mp.num_channels} channel(s), labels "
                         f"{mp.labels}) does not fit dataset {str(raw)!r} ({ds.num_channels} "
                         f"channel(s), labels {ds.labels})")
    return predict_cases(loaded, [ds.case(c) for c in case_ids], Path(out_dir), settings,
                         skip_existing=skip_existing,
                         postprocess=load_decision(postprocess) if postprocess else ())
