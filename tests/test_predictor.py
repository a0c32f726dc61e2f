"""The Python API (nnpipe.predictor): the user guide's example run as written and compared
with `nnpipe predict` byte for byte; arrays, files and image objects give one answer; two
predictors coexist; bad input is refused with the reason."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnpipe import Predictor
from nnpipe.cli import main
from nnpipe.model import build_unet
from nnpipe.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "user-guide.md"


def _model(plan, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = build_unet(plan, deep_supervision=False, out_channels=plan.num_classes)
    save_checkpoint(path, {"model": net.state_dict(), "plan": plan.to_dict(),
                           "settings": {"regions": False}})
    return path


@pytest.fixture(scope="module")
def checkpoints(tiny_study, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predictor-models")
    return {"3d": _model(tiny_study.plans[3], root / "a" / "fold0" / "final.pt", 0),
            "3d-b": _model(tiny_study.plans[3], root / "b" / "fold0" / "final.pt", 1),
            "2d": _model(tiny_study.plans[2], root / "c" / "fold0" / "final.pt", 0)}


@pytest.fixture(scope="module")
def image_path(tiny_study) -> Path:
    return sorted((tiny_study.raw / "imagesTr").glob("*.nii.gz"))[0]


def guide_example() -> str:
    """The user guide's Python block that uses the Predictor."""
    found = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (code,) = [c for c in found if "from nnpipe import Predictor" in c
               and "nnUNetTrainer__" not in c]  # the v2 one: tests/v2/test_predictor_v2.py
    return code


def raw_bytes(path: Path) -> bytes:
    """A .nii.gz file's NIfTI bytes (header and voxels; the gzip wrapper holds a time)."""
    return gzip.decompress(path.read_bytes())


def test_the_user_guide_example_runs_and_matches_the_cli(tiny_study, checkpoints, tmp_path,
                                                         monkeypatch):
    assert main(["export", "--model", str(checkpoints["3d"]), "--out",
                 str(tmp_path / "model.zip")]) == 0
    scans = tmp_path / "new_scans"
    scans.mkdir()
    for i, src in enumerate(sorted((tiny_study.raw / "imagesTr").glob("*.nii.gz"))[:2], 1):
        shutil.copy(src, scans / f"case_{i:03d}.nii.gz")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(guide_example(), str(GUIDE), "exec"), namespace)  # noqa: S102
    # the example turns TTA off (tta=False), as --no-tta does for the command
    assert main(["predict", "-m", "model.zip", "-i", "new_scans", "-o", "cli", "--no-tta"]) == 0
    cli = sorted(Path("cli").iterdir())
    assert [p.name for p in cli] == ["case_001.nii.gz", "case_002.nii.gz"]
    assert [p.name for p in namespace["written"]] == [p.name for p in cli]
    for path in cli:  # predict_files: the command's files, header and voxels, byte for byte
        assert raw_bytes(Path("segmentations") / path.name) == raw_bytes(path)
    reference = nib.load("cli/case_001.nii.gz")
    labels = namespace["labels"]  # predict(nibabel image): the command's voxels and grid
    assert labels.dtype == reference.get_data_dtype()
    np.testing.assert_array_equal(labels, np.asarray(reference.dataobj))
    assert labels.shape == nib.load("new_scans/case_001.nii.gz").shape[:3]
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (4, *labels.shape)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        np.take(np.array(sorted(namespace["predictor"].labels)), probabilities.argmax(0)),
        labels)


def test_path_array_spacing_and_simpleitk_give_one_answer(checkpoints, image_path):
    predictor = Predictor(checkpoints["3d"], device="cpu")
    from_path = predictor.predict(image_path)
    img = nib.load(image_path)
    array = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0)
    np.testing.assert_array_equal(predictor.predict(array, affine=img.affine), from_path)
    # a reoriented copy of the same voxels: labels come back in the copy's own order
    flipped = array[:, ::-1, :, ::-1]
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[:3, 3] = [array.shape[1] - 1, 0, array.shape[3] - 1]
    np.testing.assert_array_equal(
        predictor.predict(np.ascontiguousarray(flipped), affine=img.affine @ flip),
        from_path[::-1, :, ::-1])
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    if np.allclose(img.affine[:3, :3], np.diag(spacing)):  # the embedded data are RAS+
        np.testing.assert_array_equal(predictor.predict(array, spacing=spacing), from_path)
    # SimpleITK: the 4 channels as vector voxels, LPS+ geometry of the same grid
    sitk = pytest.importorskip("SimpleITK")
    vector = sitk.GetImageFromArray(np.moveaxis(array, 0, -1).transpose(2, 1, 0, 3),
                                    isVector=True)
    lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :3]
    zooms = np.linalg.norm(lps, axis=0)
    vector.SetSpacing([float(z) for z in zooms])
    vector.SetDirection([float(v) for v in (lps / zooms).ravel()])
    vector.SetOrigin([float(v) for v in np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, 3]])
    np.testing.assert_array_equal(predictor.predict(vector), from_path)


def test_two_predictors_coexist(checkpoints, image_path):
    a = Predictor(checkpoints["3d"], device="cpu", tta=False)
    b = Predictor(checkpoints["3d-b"], device="cpu", tta=True)
    la, pa = a.predict(image_path, probabilities=True)
    _, pb = b.predict(image_path, probabilities=True)
    assert b.settings.tta and not a.settings.tta
    assert not np.allclose(pa, pb)  # different weights, different answers
    # interleaved calls change nothing: no state shared between them
    la2, pa2 = a.predict(image_path, probabilities=True)
    np.testing.assert_array_equal(la2, la)
    np.testing.assert_array_equal(pa2, pa)


def test_a_2d_model_and_a_list_of_files(checkpoints, image_path, tmp_path):
    predictor = Predictor([checkpoints["2d"]], device="cpu")
    assert predictor.predict(image_path).shape == nib.load(image_path).shape[:3]
    written = predictor.predict_files([image_path], tmp_path / "out")
    assert [p.name for p in written] == [image_path.name]
    np.testing.assert_array_equal(np.asarray(nib.load(written[0]).dataobj),
                                  predictor.predict(image_path))


@pytest.mark.parametrize(("kwargs", "shape", "message"), [
    ({}, (4, 8, 8, 8), "spacing=.*or affine="),
    ({"spacing": (1, 1, 1), "affine": np.eye(4)}, (4, 8, 8, 8), "not both"),
    ({"spacing": (1, 0, 1)}, (4, 8, 8, 8), "three voxel sizes > 0"),
    ({"affine": np.zeros((4, 4))}, (4, 8, 8, 8), "invertible"),
    ({"spacing": (1, 1, 1)}, (8, 8, 8), r"\(C, X, Y, Z\) with C = 4"),
    ({"spacing": (1, 1, 1)}, (3, 8, 8, 8), "C = 4"),
])
def test_bad_arrays_are_refused_with_the_reason(checkpoints, kwargs, shape, message):
    predictor = Predictor(checkpoints["3d"], device="cpu")
    with pytest.raises(ValueError, match=message):
        predictor.predict(np.zeros(shape, np.float32), **kwargs)


def test_bad_inputs_are_named(checkpoints, image_path, tmp_path):
    predictor = Predictor(checkpoints["3d"], device="cpu")
    nan = np.full((4, 8, 8, 8), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN or Inf"):
        predictor.predict(nan, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="for arrays"):
        predictor.predict(image_path, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="file is missing"):
        predictor.predict(tmp_path / "nope.nii.gz")
    with pytest.raises(TypeError, match="cannot predict a dict"):
        predictor.predict({"not": "an image"})
    with pytest.raises(FileNotFoundError):
        Predictor(tmp_path / "no-model", device="cpu")
