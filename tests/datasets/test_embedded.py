"""Tests for the embedded dataset generator (tiny: 3 training + 1 test case at 6 mm)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnpipe.datasets import embedded
from nnpipe.datasets.embedded import generate_embedded
from nnpipe.datasets.layout import Dataset, load_dataset, read_image, read_label
from nnpipe.io import spacing_of

SMALL = {"n_train": 3, "n_test": 1, "resolution_mm": 6.0, "progress": False}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_embedded(tmp_path_factory.mktemp("emb") / "raw", seed=0, **SMALL)


@pytest.fixture(scope="module")
def ds(generated: Path) -> Dataset:
    return load_dataset(generated)


@pytest.fixture(scope="module")
def cases(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image (C, X, Y, Z), label (X, Y, Z), affine) per training case, read back via layout."""
    out = []
    for case in ds.training:
        ci = read_image(ds, case)
        image, affine = ci.image, ci.affine
        label = read_label(ds, case, ci).values
        out.append((image, label, affine))
    return out


def _digest(root: Path) -> str:
    ds = load_dataset(root)
    h = hashlib.sha256()
    for case in ds.training + ds.test:
        ci = read_image(ds, case)
        image, affine = ci.image, ci.affine
        h.update(image.tobytes())
        h.update(affine.tobytes())
        if case.label is not None:
            h.update(read_label(ds, case).values.astype(np.uint8).tobytes())
    return h.hexdigest()


def test_layout_reads_back(generated: Path, ds: Dataset) -> None:
    meta = json.loads((generated / "dataset.json").read_text())
    assert meta["name"] == "Embedded_BrainTumour"
    assert meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                              "3": "enhancing tumour"}
    assert (meta["numTraining"], meta["numTest"]) == (3, 1)
    assert meta["training"][0] == {"image": "./imagesTr/BRATS_001.nii.gz",
                                   "label": "./labelsTr/BRATS_001.nii.gz"}
    assert meta["test"] == ["./imagesTs/BRATS_004.nii.gz"]
    assert ds.layout == "msd"
    assert [c.case_id for c in ds.training] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert [c.case_id for c in ds.test] == ["BRATS_004"]
    image = read_image(ds, ds.test[0]).image
    assert image.shape[0] == 4
    notice = (generated / "LICENSE-MNI152.txt").read_text()
    assert "Copyright (C) 1993-2009 Louis Collins" in notice
    assert not list(generated.parent.glob(".raw.*"))  # no temporary sibling left behind


def test_shapes_and_dtypes(generated: Path, cases: list) -> None:
    import nibabel as nib

    raw = nib.load(str(generated / "imagesTr" / "BRATS_001.nii.gz"))
    assert raw.ndim == 4 and raw.shape[3] == 4 and raw.get_data_dtype() == np.float32
    lab = nib.load(str(generated / "labelsTr" / "BRATS_001.nii.gz"))
    assert lab.get_data_dtype() == np.uint8 and lab.shape == raw.shape[:3]
    for image, label, _ in cases:
        assert image.dtype == np.float32 and label.dtype == np.int64  # values as written
        assert image.shape[1:] == label.shape
        # 6 mm grid over a ~150-180 mm brain: 20-40 voxels per side (fewer on a coarse axis)
        assert all(12 <= n <= 45 for n in label.shape), label.shape


def test_labels_nested_like_brats(cases: list) -> None:
    for image, label, _ in cases:
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
        assert (label == 1).any() and (label >= 2).any()  # oedema and a core in every case
        core = label >= 2
        # Every 6-neighbour of the tumour core is tumour: oedema surrounds the core.
        ring = ndimage.binary_dilation(core) & ~core
        assert (label[ring] == 1).all()
        # The tumour lies inside the brain (nonzero image).
        assert (image[:, label > 0] > 0).all()
    enh = [bool((label == 3).any()) for _, label, _ in cases]
    assert enh == [True, False, True]  # BRATS_002 deterministically has no enhancing tumour


def test_background_zero_outside_brain(cases: list) -> None:
    for image, label, _ in cases:
        nonzero = image != 0
        brain = nonzero[0]
        assert all((nonzero[c] == brain).all() for c in range(4))  # one mask for all channels
        assert 0.15 < brain.mean() < 0.8
        assert not brain[0].any() and not brain[-1].any()  # margins of the field of view
        assert (label[~brain] == 0).all()
        assert (image >= 0).all() and np.isfinite(image).all()


def test_tumour_contrast_on_flair(cases: list) -> None:
    for image, label, _ in cases:
        brain = image[0] > 0
        tumour_flair = image[0][label > 0].mean()
        healthy_flair = image[0][brain & (label == 0)].mean()
        assert tumour_flair > 1.3 * healthy_flair
    # Enhancing tumour is brighter on T1-Gd than the rest of the core.
    image, label, _ = cases[0]
    assert image[2][label == 3].mean() > 1.5 * image[2][label == 2].mean()


def test_geometry_varies(cases: list) -> None:
    spacings = np.array([spacing_of(affine) for _, _, affine in cases])
    ratios = spacings.max(1) / spacings.min(1)
    assert ratios[2] > 1.4  # case index 2 has one coarse axis
    assert ratios[0] < 1.01 and ratios[1] < 1.01
    assert len({round(float(s), 4) for s in spacings.ravel()}) >= 3
    assert ((spacings > 4.5) & (spacings < 17.0)).all()
    for _, _, affine in cases:
        rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        assert np.abs(rot - np.eye(3)).max() > 1e-3  # oblique grid, not axis-aligned
        assert np.linalg.det(rot) == pytest.approx(1.0)  # a proper rotation
    translations = np.array([affine[:3, 3] for _, _, affine in cases])
    assert np.ptp(translations, axis=0).max() > 1.0


def test_deterministic(tmp_path: Path, generated: Path) -> None:
    again = generate_embedded(tmp_path / "again", seed=0, **SMALL)
    other = generate_embedded(tmp_path / "other", seed=1, **SMALL)
    assert _digest(again) == _digest(generated)
    assert _digest(other) != _digest(generated)


def test_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_embedded(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_accepts_empty_out_dir_and_reports_progress(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    generate_embedded(out, n_train=2, n_test=0, resolution_mm=6.0, progress=True)
    assert (out / "dataset.json").is_file()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "BRATS_" in ln]
    assert len(lines) == 2 and "BRATS_002" in lines[1]


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = embedded.make_case

    def failing(seed: int, index: int, resolution_mm: float = 3.0):
        if index == 1:
            raise RuntimeError("simulated crash")
        return real(seed, index, resolution_mm)

    monkeypatch.setattr(embedded, "make_case", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_embedded(tmp_path / "raw", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"n_train": 0}, "n_train"),
    ({"n_test": -1}, "n_test"),
    ({"seed": -3}, "seed"),
    ({"resolution_mm": 0.5}, "resolution_mm"),
    ({"resolution_mm": 20.0}, "resolution_mm"),
])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_embedded(tmp_path / "raw", **{**SMALL, **kwargs})
    assert not (tmp_path / "raw").exists()
