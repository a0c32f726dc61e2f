"""Whole-case prediction: raw NIfTI in, label NIfTI out in the source geometry.

For each case: read the image, apply the plan's preprocessing (crop, resample, normalize),
run the sliding window (3D tiles, or 2D tiles slice by slice), undo the preprocessing on the
class probabilities (resample to the cropped grid, paste into the full grid), take the argmax
and write a uint8 NIfTI with the source image's affine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnpipe.config import InferenceSettings
from nnpipe.datasets.layout import Dataset, read_image
from nnpipe.errors import DataError
from nnpipe.inference.sliding_window import predict_volume_2d, sliding_window
from nnpipe.io import save_nifti
from nnpipe.model import build_unet
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.pipeline import preprocess_image, restore_probabilities
from nnpipe.progress import log
from nnpipe.training.checkpoint import load_checkpoint


@dataclass
class LoadedModel:
    model: torch.nn.Module
    plan: Plan
    device: torch.device


def load_model(checkpoint: Path | str, device: torch.device | None = None) -> LoadedModel:
    """Load ``final.pt`` (or ``last.pt``): the plan it was trained with and its weights."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(checkpoint, "cpu")
    plan = Plan.from_dict(ckpt["plan"])
    model = build_unet(plan, deep_supervision=False)
    # deep-supervision heads exist only in training; inference needs the main path only
    model.load_state_dict(ckpt["model"], strict=False)
    model.to(device).eval()
    return LoadedModel(model, plan, device)


def predict_probabilities(lm: LoadedModel, data: np.ndarray,
                          settings: InferenceSettings) -> np.ndarray:
    """Class probabilities ``(K, X', Y', Z')`` for a preprocessed case ``(C, X', Y', Z')``."""
    plan = lm.plan
    image = torch.from_numpy(np.ascontiguousarray(data)).to(lm.device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return lm.model(x)

    kwargs = dict(num_classes=plan.num_classes, overlap=settings.overlap, blend=settings.blend,
                  batch_size=settings.batch_size, tta_flips=settings.tta)
    with torch.inference_mode():
        if plan.dim == 3:
            probs = sliding_window(forward, image, tuple(plan.patch_size), **kwargs)
        else:
            probs = predict_volume_2d(forward, image, plan.slice_axis,
                                      tuple(plan.patch_size), **kwargs)
    return probs.float().cpu().numpy()


def predict_case(lm: LoadedModel, ds: Dataset, case_id: str, settings: InferenceSettings,
                 out_path: Path) -> None:
    """Predict one case of ``ds`` and write its label map to ``out_path`` atomically."""
    case = ds.case(case_id)
    image, affine = read_image(ds, case)
    if image.shape[0] != lm.plan.num_channels:
        raise DataError(f"has {image.shape[0]} channels; the model expects "
                        f"{lm.plan.num_channels}", case=case_id, path=case.images[0])
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("affine is not invertible", case=case_id, path=case.images[0])
    data, meta = preprocess_image(image, affine, lm.plan, case_id)
    probs = predict_probabilities(lm, data, settings)
    full = restore_probabilities(probs, meta)
    labels = full.argmax(0).astype(np.uint8)
    save_nifti(out_path, labels, affine)


def predict_cases(checkpoint: Path | str, ds: Dataset, case_ids: Sequence[str], out_dir: Path,
                  settings: InferenceSettings, *, skip_existing: bool = False) -> list[Path]:
    """Predict ``case_ids`` into ``out_dir/<case>.nii.gz``; returns the written paths."""
    lm = load_model(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, case_id in enumerate(case_ids, start=1):
        out_path = out_dir / f"{case_id}{ds.file_ending}"
        if skip_existing and out_path.is_file():
            log(f"predict {i}/{len(case_ids)} {case_id}: exists, skipped")
            written.append(out_path)
            continue
        predict_case(lm, ds, case_id, settings, out_path)
        log(f"predict {i}/{len(case_ids)} {case_id} -> {out_path}")
        written.append(out_path)
    return written
