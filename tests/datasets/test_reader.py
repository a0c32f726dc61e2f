"""The one reader: which files are cases, canonical images and labels, and predictions written
back on each case's own grid and header."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnpipe.datasets.layout import (
    find_cases,
    load_dataset,
    prediction_path,
    read_case_image,
    read_label,
    read_label_file,
    write_prediction,
)
from nnpipe.errors import DataError

SHAPE = (4, 5, 3)  # file order (X, Y, Z)
AXIAL = np.diag([1.0, 1.0, 2.0, 1.0])


def _sagittal() -> np.ndarray:
    """File axes (P, I, R): sagittal slices along the last axis, 0.8 × 1.2 × 3 mm."""
    a = np.zeros((4, 4))
    a[1, 0] = -0.8
    a[2, 1] = -1.2
    a[0, 2] = 3.0
    a[:, 3] = (5.0, 6.0, 7.0, 1.0)
    return a


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AXIAL, *,
          qform: np.ndarray | None = None, sform: np.ndarray | None = None,
          codes: tuple[int, int] = (1, 1)) -> Path:
    """NIfTI with explicit qform and sform (both ``affine`` unless given) and codes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine if qform is None else qform, code=codes[0])
    img.set_sform(affine if sform is None else sform, code=codes[1])
    nib.save(img, path)
    return path


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith((".nii.gz", ".nii")):
            _save(folder / name, np.zeros(SHAPE, np.float32))
        else:
            (folder / name).write_bytes(b"x")


def _image() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:3, 0:2, 0] = 1
    lab[0, 3:5, 1:3] = 2
    return lab


def _msd(root: Path, affine: np.ndarray = AXIAL, extra: tuple[str, ...] = ()) -> Path:
    _save(root / "imagesTr" / "c1.nii.gz", _image(), affine)
    _save(root / "labelsTr" / "c1.nii.gz", _label(), affine)
    _touch(root / "imagesTr", *extra)
    meta = {"name": "T", "modality": {"0": "MR"},
            "labels": {"0": "background", "1": "a", "2": "b"},
            "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}],
            "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ---------------------------------------------------------------- which files are cases


def test_hidden_and_appledouble_files_ignored_with_one_line(tmp_path, capsys):
    _touch(tmp_path, "a.nii.gz", "._a.nii.gz", ".hidden.nii.gz", ".DS_Store")
    cases, errors = find_cases(tmp_path, layout="msd", num_channels=1)
    assert [c.case_id for c in cases] == ["a"] and errors == []
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "ignored 3 hidden file(s) (1 macOS '._' twins)" in lines[0]
    assert str(tmp_path) in lines[0]


def test_nii_beside_nii_gz_of_other_cases(tmp_path, capsys):
    _touch(tmp_path, "a.nii", "b.nii.gz")
    cases, _ = find_cases(tmp_path, layout="msd", num_channels=1)
    assert [(c.case_id, c.images[0].name) for c in cases] == [("a", "a.nii"),
                                                              ("b", "b.nii.gz")]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("layout, names", [
    ("msd", ("a.nii", "a.nii.gz")),
    ("nnunetv2", ("a_0000.nii", "a_0000.nii.gz")),
    ("msd", ("a.nrrd", "a.nii.gz")),
])
def test_one_case_in_two_files_names_both(tmp_path, layout, names):
    _touch(tmp_path, *names)
    with pytest.raises(DataError) as err:
        find_cases(tmp_path, layout=layout, num_channels=1)
    msg = str(err.value)
    assert all(n in msg for n in names) and "keep one" in msg and str(tmp_path) in msg


def test_msd_ids_keep_channel_like_suffixes(tmp_path):
    _touch(tmp_path, "BRATS_0007.nii.gz", "la_0000.nii")
    cases, errors = find_cases(tmp_path, layout="msd", num_channels=4)
    assert [c.case_id for c in cases] == ["BRATS_0007", "la_0000"] and errors == []
    assert all(len(c.images) == 1 for c in cases)


def test_msd_dataset_json_ids_kept_whole(tmp_path):
    root = _msd(tmp_path)
    _save(root / "imagesTr" / "la_0007.nii.gz", _image())
    _save(root / "labelsTr" / "la_0007.nii.gz", _label())
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/la_0007.nii.gz",
                             "label": "./labelsTr/la_0007.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    assert [c.case_id for c in load_dataset(root).training] == ["c1", "la_0007"]


def test_v2_channels_grouped_and_missing_channel_is_an_error(tmp_path):
    _touch(tmp_path, "case_a_0000.nii.gz", "case_a_0001.nii.gz", "case_b_0001.nii.gz",
           "case_b_0000.nii.gz", "case_c_0000.nii.gz", "case_d_0000.nii.gz",
           "case_d_0002.nii.gz")
    cases, errors = find_cases(tmp_path, layout="nnunetv2", num_channels=2)
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("case_a", ["case_a_0000.nii.gz", "case_a_0001.nii.gz"]),
        ("case_b", ["case_b_0000.nii.gz", "case_b_0001.nii.gz"])]
    assert [e.case for e in errors] == ["case_c", "case_d"]
    assert "has channel files [0]; expected _0000 to _0001" in str(errors[0])
    assert "has channel files [0, 2]" in str(errors[1])


def test_v2_dataset_with_a_missing_channel_is_refused(tmp_path):
    _touch(tmp_path / "imagesTr", "x_0000.nii.gz", "x_0001.nii.gz", "y_0000.nii.gz")
    _touch(tmp_path / "labelsTr", "x.nii.gz", "y.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1},
         "file_ending": ".nii.gz"}))
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert "case 'y'" in str(err.value) and "expected _0000 to _0001" in str(err.value)


def test_v2_file_without_channel_suffix_is_named(tmp_path, capsys):
    _touch(tmp_path, "x_0000.nii.gz", "nosuffix.nii.gz")
    cases, _ = find_cases(tmp_path, layout="nnunetv2", num_channels=1)
    assert [c.case_id for c in cases] == ["x"]
    err = capsys.readouterr().err
    assert "warning:" in err and "nosuffix.nii.gz" in err and "no _NNNN channel suffix" in err


def test_unsupported_file_is_named_companions_are_not(tmp_path, capsys):
    _touch(tmp_path, "a.nii.gz", "notes.txt", "b.json", "c.raw", "d.zraw")
    cases, _ = find_cases(tmp_path, layout="msd", num_channels=1)
    assert [c.case_id for c in cases] == ["a"]
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "warning:" in lines[0] and "notes.txt" in lines[0]
    assert "not a supported image file" in lines[0]


def test_msd_files_not_in_dataset_json_are_named(tmp_path, capsys):
    root = _msd(tmp_path, extra=("stray.nii.gz", "old_0001.nii"))
    ds = load_dataset(root)
    assert [c.case_id for c in ds.training] == ["c1"]
    err = capsys.readouterr().err
    assert "warning:" in err and "2 file(s) not listed" in err
    assert "stray.nii.gz" in err and "old_0001.nii" in err and "'training'" in err


# ---------------------------------------------------------------- canonical images, labels


def test_sagittal_case_round_trip(tmp_path):
    """Read canonical, write back: the prediction file equals the source's grid and header."""
    root = _msd(tmp_path, affine=_sagittal())
    ds = load_dataset(root)
    case = ds.training[0]
    ci = read_case_image(case, ds.num_channels, ds.channels)
    source = nib.load(case.images[0])
    canonical = nib.as_closest_canonical(source)
    assert ci.image.shape == (1, 3, 4, 5) and ci.image.dtype == np.float32
    assert ci.spatial_shape == (3, 4, 5)
    np.testing.assert_array_equal(ci.image[0], canonical.get_fdata())
    np.testing.assert_allclose(ci.affine, canonical.affine, atol=1e-6)
    np.testing.assert_allclose(ci.file_affine, source.affine, atol=1e-6)

    label = read_label(ds, case, ci)
    assert label.rounded is False and label.values.dtype == np.int64
    np.testing.assert_array_equal(
        label.values, nib.as_closest_canonical(nib.load(case.label)).get_fdata())

    out = write_prediction(tmp_path / "pred", label.values, ci)
    assert out == tmp_path / "pred" / "c1.nii.gz"
    written = nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    np.testing.assert_allclose(written.get_qform(), source.get_qform(), atol=1e-6)
    np.testing.assert_allclose(written.get_sform(), source.get_sform(), atol=1e-6)
    assert [int(c) for c in written.get_qform(coded=True)[1:] + written.get_sform(coded=True)[1:]
            ] == [1, 1]
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), _label())

    values, affine = read_label_file(out, case="c1")
    np.testing.assert_array_equal(values, label.values)
    np.testing.assert_allclose(affine, ci.affine, atol=1e-6)


def test_prediction_of_a_sitk_case_keeps_its_header(tmp_path):
    img = sitk.GetImageFromArray(_image().T)
    img.SetSpacing((0.8, 1.2, 3.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection((0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    path = tmp_path / "imagesTs" / "s1.mha"
    path.parent.mkdir()
    sitk.WriteImage(img, str(path))
    cases, _ = find_cases(path.parent, layout="msd", num_channels=1)
    ci = read_case_image(cases[0], 1)
    assert not ci.orientation.is_identity
    canonical_labels = ci.orientation.apply(_label())
    out = write_prediction(tmp_path / "pred", canonical_labels, ci)
    assert out.name == "s1.mha"
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert (b.GetSize(), b.GetOrigin(), b.GetSpacing(), b.GetDirection()) == (
        a.GetSize(), a.GetOrigin(), a.GetSpacing(), a.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b).T, _label())


def test_float_label_rounded(tmp_path):
    root = _msd(tmp_path)
    lab = _label().astype(np.float32)
    lab[lab == 1] = 0.99999994
    _save(root / "labelsTr" / "c1.nii.gz", lab)
    ds = load_dataset(root)
    ci = read_case_image(ds.training[0], 1)
    label = read_label(ds, ds.training[0], ci)
    assert label.rounded is True
    np.testing.assert_array_equal(label.values, _label())


def test_label_on_the_image_qform_is_accepted_with_a_warning(tmp_path, capsys):
    qform = AXIAL.copy()
    sform = AXIAL.copy()
    sform[:3, 3] = (5.0, 0.0, 0.0)  # the sform puts the image 5 mm to the right
    root = _msd(tmp_path)
    _save(root / "imagesTr" / "c1.nii.gz", _image(), qform=qform, sform=sform, codes=(1, 2))
    _save(root / "labelsTr" / "c1.nii.gz", _label(), qform, codes=(1, 0))  # qform only
    ds = load_dataset(root)
    ci = read_case_image(ds.training[0], 1)
    np.testing.assert_allclose(ci.file_affine, sform)
    capsys.readouterr()
    label = read_label(ds, ds.training[0], ci)
    np.testing.assert_array_equal(label.values, _label())
    err = capsys.readouterr().err
    assert "warning:" in err and "case 'c1'" in err and "labelsTr/c1.nii.gz" in err
    assert "matches the image's qform" in err and "accepted" in err


def _moved(what: str) -> tuple[tuple[int, int, int], np.ndarray]:
    a = AXIAL.copy()
    shape = SHAPE
    if what == "shape":
        shape = (4, 5, 4)
    elif what == "spacing":
        a[2, 2] = 2.5
    elif what == "origin":
        a[:3, 3] = (0.0, 3.0, 0.0)
    elif what == "direction":
        a[0, 0] = -1.0  # left instead of right; the origin stays
    return shape, a


@pytest.mark.parametrize("what, detail", [
    ("shape", "shape (4, 5, 4) vs (4, 5, 3)"),
    ("spacing", "spacing (1, 1, 2.5) mm vs (1, 1, 2) mm"),
    ("origin", "origin (0, 3, 0) mm vs (0, 0, 0) mm (3 mm apart)"),
    ("direction", "direction LAS vs RAS"),
])
def test_label_on_another_grid_names_the_difference(tmp_path, what, detail):
    root = _msd(tmp_path)
    shape, affine = _moved(what)
    _save(root / "labelsTr" / "c1.nii.gz", np.zeros(shape, np.uint8), affine)
    ds = load_dataset(root)
    ci = read_case_image(ds.training[0], 1)
    with pytest.raises(DataError) as err:
        read_label(ds, ds.training[0], ci)
    msg = str(err.value)
    assert "case 'c1'" in msg and "labelsTr/c1.nii.gz" in msg
    assert f"label grid differs from the image's: {detail}" in msg
    others = {"shape", "spacing", "origin", "direction"} - {what}
    assert not [o for o in others if f"{o} (" in msg or f"; {o}" in msg]


# ---------------------------------------------------------------- predictions found again


@pytest.mark.parametrize("names, case_id, found", [
    (("c1.nii",), "c1", "c1.nii"),
    (("c1.nrrd", "c10.nii.gz", "._c1.nii.gz"), "c1", "c1.nrrd"),
    (("a[1].nii.gz",), "a[1]", "a[1].nii.gz"),
])
def test_prediction_path_finds_any_ending(tmp_path, names, case_id, found):
    _touch(tmp_path, *names)
    assert prediction_path(tmp_path, case_id) == tmp_path / found


@pytest.mark.parametrize("names, problem", [
    ((), "prediction is missing"),
    (("c1.txt",), "prediction is missing"),
    (("c1.nii", "c1.nii.gz"), "several predictions: c1.nii, c1.nii.gz"),
])
def test_prediction_path_errors(tmp_path, names, problem):
    _touch(tmp_path, *names)
    with pytest.raises(DataError) as err:
        prediction_path(tmp_path, "c1")
    assert problem in str(err.value) and "case 'c1'" in str(err.value)


def test_per_channel_files_read_as_cases_point_to_the_nnunetv2_layout(tmp_path: Path):
    """A 4-channel model given v2's per-channel files one by one (``x_0000.nii.gz`` read as
    case ``x_0000``): the error says to group them with --layout nnunetv2, not to edit
    dataset.json; a whole case of the wrong channel count keeps the dataset.json advice."""
    from nnpipe.datasets.layout import Case

    one = _save(tmp_path / "brain_0000.nii.gz", _image())
    with pytest.raises(DataError, match="--layout nnunetv2") as err:
        read_case_image(Case("brain_0000", (one,)), num_channels=4)
    assert "brain_0000" in str(err.value)
    whole = _save(tmp_path / "brain.nii.gz", _image())
    with pytest.raises(DataError, match="list 1 channel\\(s\\) in dataset.json") as err:
        read_case_image(Case("brain", (whole,)), num_channels=4)
    assert "--layout" not in str(err.value)
