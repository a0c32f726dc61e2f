"""Model fixtures for inference tests: untrained networks of the tiny study's plans, saved as
training checkpoints (weights do not matter for geometry, files and error handling)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnpipe.model import build_unet
from nnpipe.planning.plan import Plan
from nnpipe.training.checkpoint import save_checkpoint


def save_model(run_dir: Path, plan: Plan, seed: int, regions: bool = False) -> Path:
    """A checkpoint of random weights; ``regions``: the plan records BraTS region mode."""
    torch.manual_seed(seed)
    if regions:
        plan = plan.with_scheme(plan.scheme().with_nested_regions())
    net = build_unet(plan, deep_supervision=False, out_channels=plan.scheme().output_channels)
    save_checkpoint(run_dir / "final.pt", {"model": net.state_dict(), "plan": plan.to_dict(),
                                           "settings": {"regions": regions}})
    return run_dir


@pytest.fixture(scope="session")
def models(tiny_study, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "3d": save_model(root / "3d-fold0", tiny_study.plans[3], 0),
        "3d-b": save_model(root / "3d-fold1", tiny_study.plans[3], 1),
        "2d": save_model(root / "2d-fold0", tiny_study.plans[2], 0),
        "3d-regions": save_model(root / "3d-regions", tiny_study.plans[3], 0, regions=True),
    }


def two_images(tiny_study, dest: Path) -> Path:
    """A folder of the tiny study's first two training images (MSD layout), to predict."""
    dest.mkdir(parents=True)
    for path in sorted((tiny_study.raw / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(path, dest / path.name)
    return dest


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    """Every label map of a prediction folder, by file name."""
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}
