"""Both dataset layouts read back, and every kind of bad input names the case and the file."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.datasets.layout import load_dataset, read_image, read_label
from nnpipe.errors import DataError
from nnpipe.planning.fingerprint import compute_fingerprint

AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])


def _save(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), path)


def _msd(root: Path, channels: int = 2) -> Path:
    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 4, channels)).astype(np.float32)
    label = np.zeros((6, 5, 4), np.uint8)
    label[2:4, 2:4, 1:3] = 1
    _save(root / "imagesTr" / "c1.nii.gz", image)
    _save(root / "labelsTr" / "c1.nii.gz", label)
    _save(root / "imagesTs" / "t1.nii.gz", image)
    meta = {"name": "T", "modality": {str(i): f"M{i}" for i in range(channels)},
            "labels": {"0": "background", "1": "tumour"}, "numTraining": 1, "numTest": 1,
            "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}],
            "test": ["./imagesTs/t1.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout(tmp_path):
    ds = load_dataset(_msd(tmp_path))
    assert ds.layout == "msd" and ds.channels == ("M0", "M1") and ds.labels == {0: "background",
                                                                               1: "tumour"}
    ci = read_image(ds, ds.training[0])
    assert ci.image.shape == (2, 6, 5, 4) and ci.image.dtype == np.float32
    np.testing.assert_array_equal(ci.affine, AFFINE)
    assert read_label(ds, ds.training[0], ci).values.sum() == 8
    assert [c.case_id for c in ds.test] == ["t1"]


def test_label_of_a_training_case_and_of_a_test_case(tmp_path):
    ds = load_dataset(_msd(tmp_path))
    assert ds.label_of("c1") == tmp_path / "labelsTr" / "c1.nii.gz"
    with pytest.raises(DataError, match="t1.*no label file"):
        ds.label_of("t1")  # before: None, and evaluate_fold failed in Path(None)
    with pytest.raises(DataError, match="no such case"):
        ds.label_of("c9")


def test_nnunetv2_layout(tmp_path):
    rng = np.random.default_rng(1)
    for c in range(2):
        _save(tmp_path / "imagesTr" / f"case_a_{c:04d}.nii.gz", rng.random((4, 4, 3)))
    _save(tmp_path / "labelsTr" / "case_a.nii.gz", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1", "1": "CT"}, "labels": {"background": 0, "organ": 1},
         "numTraining": 1, "file_ending": ".nii.gz"}))
    ds = load_dataset(tmp_path)
    assert ds.layout == "nnunetv2" and ds.is_ct == (False, True)
    assert [c.case_id for c in ds.training] == ["case_a"]
    assert read_image(ds, ds.training[0]).image.shape == (2, 4, 4, 3)


def _break_label_shape(root: Path) -> None:
    _save(root / "labelsTr" / "c1.nii.gz", np.zeros((6, 5, 3), np.uint8))


def _break_label_affine(root: Path) -> None:
    _save(root / "labelsTr" / "c1.nii.gz", np.zeros((6, 5, 4), np.uint8), np.diag([1, 1, 1, 1.0]))


def _break_channel(root: Path) -> None:
    _save(root / "imagesTr" / "c1.nii.gz", np.ones((6, 5, 4, 1), np.float32))


def _break_label_value(root: Path) -> None:
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[0, 0, 0] = 5
    _save(root / "labelsTr" / "c1.nii.gz", lab)


def _break_not_nifti(root: Path) -> None:
    (root / "imagesTr" / "c1.nii.gz").write_bytes(b"this is not an image")


def _break_nan(root: Path) -> None:
    arr = np.ones((6, 5, 4, 2), np.float32)
    arr[1, 1, 1, 0] = np.nan
    _save(root / "imagesTr" / "c1.nii.gz", arr)


def _break_truncated(root: Path) -> None:
    path = root / "imagesTr" / "c1.nii.gz"
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_label_shape, r"label grid differs from the image's: shape \(6, 5, 3\) vs "
                             r"\(6, 5, 4\)"),
        (_break_label_affine, r"label grid differs from the image's: spacing \(1, 1, 1\) mm vs "
                              r"\(1\.5, 1, 2\) mm"),
        (_break_channel, r"has 1 channel\(s\) but dataset.json lists 2"),
        (_break_label_value, r"label values \[5\] are not listed"),
        (_break_not_nifti, "cannot be read as NIfTI"),
        (_break_nan, "NaN or Inf"),
        (_break_truncated, "cannot be read as NIfTI"),
    ],
)
def test_bad_input_names_case_and_problem(tmp_path, breaker, message):
    root = _msd(tmp_path)
    breaker(root)
    ds = load_dataset(root)
    with pytest.raises(DataError, match=rf"case 'c1', file '.*c1\.nii\.gz': .*{message}"):
        read_label(ds, ds.training[0], read_image(ds, ds.training[0]))


def test_listed_but_missing_file(tmp_path):
    root = _msd(tmp_path)
    (root / "labelsTr" / "c1.nii.gz").unlink()
    with pytest.raises(DataError, match="case 'c1'.*listed in dataset.json as "
                                        r"'./labelsTr/c1.nii.gz' but missing; tried: "):
        load_dataset(root)


def _rewrite_entries(root, change):
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = [{k: change(v) for k, v in e.items()} for e in meta["training"]]
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change", [
    lambda v: ".\\" + v.removeprefix("./").replace("/", "\\"),  # written on Windows
    lambda v: v.removeprefix("./").replace("/", "\\"),
    lambda v: "./././" + v.removeprefix("./"),
    lambda v: " " + v + " ",
    lambda v: "/home/someone/Task05/" + v.removeprefix("./"),  # another machine's path
    lambda v: "C:\\Users\\me\\Task05\\" + v.removeprefix("./").replace("/", "\\"),
])
def test_entries_written_on_any_os_resolve(tmp_path, change, capsys):
    root = _msd(tmp_path)
    before = load_dataset(root)
    _rewrite_entries(root, change)
    after = load_dataset(root)
    assert after.training == before.training


def test_backslash_entry_that_does_not_resolve_names_entry_and_tries(tmp_path):
    root = _msd(tmp_path)
    _rewrite_entries(root, lambda v: v.replace("/", "\\").replace("c1", "c9"))
    with pytest.raises(DataError, match=r"case 'c9'.*listed in dataset.json as '\.\\\\"
                                        r"imagesTr\\\\c9\.nii\.gz' but missing \(backslashes "
                                        r"were read as separators\); tried: "
                                        r".*imagesTr/c9\.nii\.gz"):
        load_dataset(root)


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DataError, match="dataset.json is missing"):
        load_dataset(tmp_path)


def _break_single_slice(root: Path) -> None:
    _save(root / "imagesTr" / "c1.nii.gz", np.ones((6, 5, 1, 2), np.float32))
    _save(root / "labelsTr" / "c1.nii.gz", np.ones((6, 5, 1), np.uint8))


def test_single_slice_case_in_a_volume_dataset(tmp_path):
    """One dataset-level message naming the single-slice cases, not a per-case error."""
    root = _msd(tmp_path)
    for folder in ("imagesTr", "labelsTr"):  # a second, volume case c2
        (root / folder / "c2.nii.gz").write_bytes((root / folder / "c1.nii.gz").read_bytes())
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/c2.nii.gz", "label": "./labelsTr/c2.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    _break_single_slice(root)
    ds = load_dataset(root)
    assert read_image(ds, ds.training[0]).image.shape == (2, 6, 5, 1)
    with pytest.raises(DataError, match=r"1 of 2 cases are single slices \(c1\) but the "
                                        r"others are volumes"):
        compute_fingerprint(ds, progress=False)


def _nnunetv2(root: Path, affines: tuple[np.ndarray, np.ndarray]) -> None:
    for c, affine in enumerate(affines):
        _save(root / "imagesTr" / f"k_{c:04d}.nii.gz", np.ones((4, 4, 3), np.float32), affine)
    _save(root / "labelsTr" / "k.nii.gz", np.zeros((4, 4, 3), np.uint8))
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 1},
         "numTraining": 1, "file_ending": ".nii.gz"}))


def test_channel_spacing_mismatch_names_both_spacings(tmp_path):
    _nnunetv2(tmp_path, (AFFINE, np.diag([1.5, 1.0, 3.0, 1.0])))
    ds = load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"case 'k', file '.*k_0001\.nii\.gz': channel grid "
                                        r"differs from the first channel's \(k_0000.nii.gz\): "
                                        r"spacing \(1\.5, 1, 3\) mm vs \(1\.5, 1, 2\) mm"):
        read_image(ds, ds.training[0])


def test_channel_position_mismatch(tmp_path):
    moved = AFFINE.copy()
    moved[:3, 3] = 10.0
    _nnunetv2(tmp_path, (AFFINE, moved))
    ds = load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"channel grid differs .*: origin \(10, 10, 10\) mm vs "
                                        r"\(0, 0, 0\) mm \(17.32 mm apart\)"):
        read_image(ds, ds.training[0])


def test_missing_channel_file_of_nnunetv2_case(tmp_path):
    _nnunetv2(tmp_path, (AFFINE, AFFINE))
    (tmp_path / "imagesTr" / "k_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'k', file '.*imagesTr': has channel files \[0\]; "
                                        r"expected _0000 to _0001"):
        load_dataset(tmp_path)


def test_empty_label_is_a_warning_naming_the_case(tmp_path, capsys):
    root = _msd(tmp_path)
    _save(root / "labelsTr" / "c1.nii.gz", np.zeros((6, 5, 4), np.uint8))
    ds = load_dataset(root)
    label = read_label(ds, ds.training[0]).values
    assert label.shape == (6, 5, 4) and label.sum() == 0
    assert "warning: case 'c1', file" in capsys.readouterr().err


def test_entries_in_another_case_resolve(tmp_path):
    root = _msd(tmp_path)
    before = load_dataset(root)
    _rewrite_entries(root, lambda v: v.replace("imagesTr", "ImagesTr").replace("c1", "C1"))
    assert load_dataset(root).training == before.training


def test_nnunet_v1_channel_files_behind_a_case_entry(tmp_path, capsys):
    """nnU-Net v1's raw format: dataset.json names ``imagesTr/c1.nii.gz``, the folder holds
    ``c1_0000.nii.gz`` and ``c1_0001.nii.gz``: one case of two channels."""
    root = _msd(tmp_path)
    before = load_dataset(root)
    expected = read_image(before, before.training[0]).image
    for case in before.training:
        ci = read_image(before, case)
        for c in range(2):
            nib.save(nib.Nifti1Image(ci.image[c], ci.affine),
                     root / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz")
        case.images[0].unlink()
    ds = load_dataset(root)
    assert [c.case_id for c in ds.training] == [c.case_id for c in before.training]
    assert [p.name for p in ds.training[0].images] == ["c1_0000.nii.gz", "c1_0001.nii.gz"]
    np.testing.assert_array_equal(read_image(ds, ds.training[0]).image, expected)
    assert "nnU-Net v1: one file per channel" in capsys.readouterr().err


def test_num_training_that_disagrees_is_named(tmp_path, capsys):
    root = _msd(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 99
    (root / "dataset.json").write_text(json.dumps(meta))
    load_dataset(root)
    assert "numTraining is 99 but the list holds" in capsys.readouterr().err


def test_modality_written_as_a_list_is_channels_in_order(tmp_path):
    root = _msd(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = ["T1", "noNorm"]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert load_dataset(root).channels == ("T1", "noNorm")
