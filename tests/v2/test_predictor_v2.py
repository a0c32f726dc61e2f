"""``nnpipe.Predictor`` on nnU-Net v2 model folders built by the test: the user guide's
example run as written and compared with ``nnpipe predict --model`` byte for byte; paths,
arrays, per-channel lists, a zip and a dataset folder give the command's labels; the
probabilities agree with the labels; two predictors coexist; a nibabel-reorienting model
takes arrays by their affine."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnpipe import Predictor
from nnpipe.cli import main
from tests.v2.conftest import V2Folder, write_image

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "user-guide.md"


def _cli(model: Path, inputs: Path, out: Path, *extra: str) -> None:
    assert main(["predict", "--device", "cpu", "--model", str(model), "-i", str(inputs),
                 "-o", str(out), *extra]) == 0


def _scans(folder: Path, n: int = 2, channels: int = 1, seed: int = 0) -> None:
    """``n`` cases ``case_00K_000C.nii.gz`` (z, y, x) = (10, 22, 19), a crop box inside,
    3 mm slices against the model's 2 mm (so resampling happens both ways)."""
    rng = np.random.default_rng(seed)
    for k in range(1, n + 1):
        for c in range(channels):
            image = np.zeros((10, 22, 19), np.float32)
            image[1:9, 2:20, 1:18] = rng.uniform(-100, 300, (8, 18, 17))
            write_image(folder / f"case_{k:03d}_{c:04d}.nii.gz", image,
                        spacing=(0.9, 1.1, 3.0))


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())  # the gzip wrapper holds a time


def _labels_of(path: Path) -> np.ndarray:
    """A written label map in the file's voxel order (X, Y, Z)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def guide_example() -> str:
    """The user guide's Python block that uses the Predictor on a v2 model."""
    found = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (code,) = [c for c in found if "Predictor(" in c and "nnUNetTrainer__" in c]
    return code


def test_the_user_guide_example_runs_and_matches_the_cli(v2_folder: V2Folder, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    v2_folder(folds=(0, 1), seed=7)  # Dataset901_Test/nnUNetTrainer__nnUNetPlans__3d_fullres
    _scans(tmp_path / "new_scans")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(guide_example(), str(GUIDE), "exec"), namespace)  # noqa: S102
    _cli(Path("Dataset901_Test/nnUNetTrainer__nnUNetPlans__3d_fullres"), Path("new_scans"),
         Path("cli"), "--tta")
    cli = sorted(Path("cli").iterdir())
    assert [p.name for p in cli] == ["case_001.nii.gz", "case_002.nii.gz"]
    assert [p.name for p in namespace["written"]] == [p.name for p in cli]
    for path in cli:  # predict_files: the command's files, header and voxels, byte for byte
        assert _raw(Path("v2_segmentations") / path.name) == _raw(path)
    expected = _labels_of(cli[0])
    assert len(np.unique(expected)) > 1  # a network that is not constant: the test can fail
    labels = namespace["labels"]
    assert labels.dtype == np.uint8 and labels.shape == (19, 22, 10)
    np.testing.assert_array_equal(labels, expected)
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (3, 19, 22, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(0), labels)  # labels 0, 1, 2
    assert (probabilities[0][labels == 0] > 0).all()
    # outside v2's crop box: background with probability 1, as v2 writes it
    assert (probabilities[:, 0] == np.array([1, 0, 0])[:, None, None]).all()
    v2 = namespace["v2"]
    assert v2.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert v2.class_names == ["background", "liver", "tumour"] and v2.num_channels == 1


def test_arrays_zip_dataset_folder_and_two_predictors(v2_folder: V2Folder,
                                                      tmp_path: Path) -> None:
    """Without TTA: an array with its affine or spacing, a zip and a dataset folder give the
    command's labels; a second model loaded beside the first leaves its answers alone."""
    first = shutil.copytree(v2_folder(folds=(0,), seed=0), tmp_path / "A" / "Dataset901_Test"
                            / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    second = v2_folder(folds=(0,), seed=7)
    _scans(tmp_path / "in", n=1, seed=3)
    _cli(first, tmp_path / "in", tmp_path / "cli_a", "--no-tta")
    _cli(second, tmp_path / "in", tmp_path / "cli_b", "--no-tta")
    a, b = (_labels_of(tmp_path / f"cli_{x}" / "case_001.nii.gz") for x in "ab")
    assert (a != b).any()  # two different networks: the comparison below can fail

    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in first.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(first.parent.parent))
    pa = Predictor(first, device="cpu", tta=False)
    pb = Predictor(second.parent, configuration="3d_fullres", device="cpu", tta=False)
    pz = Predictor(archive, device="cpu", tta=False, folds=[0])
    scan = tmp_path / "in" / "case_001_0000.nii.gz"
    img = nib.load(scan)
    array = np.asarray(img.dataobj, dtype=np.float32)
    np.testing.assert_array_equal(pa.predict(scan), a)
    np.testing.assert_array_equal(pb.predict(scan), b)
    np.testing.assert_array_equal(pz.predict(scan), a)
    np.testing.assert_array_equal(pa.predict(array[None], affine=img.affine), a)
    np.testing.assert_array_equal(pa.predict(array, spacing=img.header.get_zooms()), a)
    np.testing.assert_array_equal(pb.predict(sitk.ReadImage(str(scan))), b)
    np.testing.assert_array_equal(pa.predict(img), a)
    assert "1 network(s)" in repr(pa) and pa.device.type == "cpu"


def test_two_channels_from_a_list_or_an_array(v2_folder: V2Folder, tmp_path: Path) -> None:
    folder = v2_folder(folds=(0,), channels=2)
    _scans(tmp_path / "in", n=1, channels=2)
    _cli(folder, tmp_path / "in", tmp_path / "cli", "--no-tta")
    expected = _labels_of(tmp_path / "cli" / "case_001.nii.gz")
    predictor = Predictor(folder, device="cpu", tta=False)
    files = sorted((tmp_path / "in").iterdir())
    np.testing.assert_array_equal(predictor.predict(files), expected)
    imgs = [nib.load(f) for f in files]
    array = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs])
    np.testing.assert_array_equal(predictor.predict(array, affine=imgs[0].affine), expected)
    with pytest.raises(ValueError, match="C = 2 channel"):
        predictor.predict(array[:1], affine=imgs[0].affine)
    with pytest.raises(ValueError, match="expects 2"):
        predictor.predict(files[0])


def test_a_reorienting_reader_takes_arrays_by_their_affine(v2_folder: V2Folder,
                                                          tmp_path: Path) -> None:
    folder = v2_folder(folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    plans["image_reader_writer"] = "NibabelIOWithReorient"
    (folder / "plans.json").write_text(json.dumps(plans))
    affine = np.array([[0, 0, -3.0, 10], [-0.9, 0, 0, 5], [0, 1.1, 0, -3], [0, 0, 0, 1]])
    rng = np.random.default_rng(2)
    image = np.zeros((19, 22, 10), np.float32)  # nibabel's (i, j, k)
    image[1:18, 2:20, 1:9] = rng.uniform(-100, 300, (17, 18, 8))
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "in" / "n_0000.nii.gz"))
    _cli(folder, tmp_path / "in", tmp_path / "cli", "--no-tta")
    expected = np.asarray(nib.load(tmp_path / "cli" / "n.nii.gz").dataobj)
    assert len(np.unique(expected)) > 1
    predictor = Predictor(folder, device="cpu", tta=False)
    np.testing.assert_array_equal(predictor.predict(image, affine=affine), expected)
    np.testing.assert_array_equal(predictor.predict(tmp_path / "in" / "n_0000.nii.gz"),
                                  expected)
    # a SimpleITK image goes to nibabel's reader as NIfTI (nibabel reads no .mha)
    np.testing.assert_array_equal(
        predictor.predict(sitk.ReadImage(str(tmp_path / "in" / "n_0000.nii.gz"))), expected)
    labels, probabilities = predictor.predict(image, affine=affine, probabilities=True)
    np.testing.assert_array_equal(probabilities.argmax(0), labels)
    with pytest.raises(ValueError, match="give affine="):
        predictor.predict(image, spacing=(0.9, 1.1, 3.0))


def test_files_list_and_refusals(v2_folder: V2Folder, tmp_path: Path) -> None:
    folder = v2_folder(folds=(0,))
    _scans(tmp_path / "in", n=2)
    _cli(folder, tmp_path / "in", tmp_path / "cli", "--no-tta")
    predictor = Predictor(folder, device="cpu", tta=False)
    files = sorted((tmp_path / "in").iterdir())
    written = predictor.predict_files(files, tmp_path / "out")
    assert [p.name for p in written] == ["case_001.nii.gz", "case_002.nii.gz"]
    for p in written:
        assert _raw(p) == _raw(tmp_path / "cli" / p.name)
    with pytest.raises(ValueError, match="for nnU-Net v2 models"):
        Predictor(tmp_path / "cli" / "case_001.nii.gz", configuration="3d_fullres")
    with pytest.raises(ValueError, match="postprocess="):
        Predictor(folder, postprocess=tmp_path / "x.json")
    with pytest.raises(ValueError, match="for arrays"):
        predictor.predict(files[0], spacing=(1, 1, 1))
