"""Every supported format reads to (X, Y, Z, C) with its RAS+ mm affine, and a label map written
like it has the same size, origin, spacing and direction when SimpleITK reads both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nnpipe.errors import DataError
from nnpipe.geometry import orientation_of, spacing_of
from nnpipe.imageio import ending_of, read_file, read_header, strip_ending, write_like

SHAPE = (5, 4, 3)  # (X, Y, Z): distinct, and Z = 3 is what TIFF writers mistake for RGB
SPACING = (0.6, 0.9, 2.5)  # mm
ORIGIN_LPS = (10.5, -20.25, 31.0)  # mm, as SimpleITK stores it
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _direction() -> np.ndarray:
    """An oblique direction: a permutation of the axes rotated by 30° about z."""
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    perm = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])
    return rot @ perm


def _ras_affine_of(img: sitk.Image) -> np.ndarray:
    """What SimpleITK says, converted here from LPS+ to RAS+ (independently of nnpipe)."""
    dim = img.GetDimension()
    d = np.eye(3)
    d[:dim, :dim] = np.reshape(img.GetDirection(), (dim, dim))
    s = np.ones(3)
    s[:dim] = img.GetSpacing()
    o = np.zeros(3)
    o[:dim] = img.GetOrigin()
    a = np.eye(4)
    a[:3, :3] = LPS_TO_RAS @ d @ np.diag(s)
    a[:3, 3] = LPS_TO_RAS @ o
    return a


def _nifti_affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = LPS_TO_RAS @ _direction() @ np.diag(SPACING)
    a[:3, 3] = LPS_TO_RAS @ np.asarray(ORIGIN_LPS)
    return a


def _volume(dtype: type = np.int16) -> np.ndarray:
    """``(X, Y, Z)`` with every voxel different."""
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 3 + 1).astype(dtype)


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) % 4).astype(np.uint8)


def _write_source(folder: Path, ending: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write a source image; return its path, voxels (X, Y, Z) and expected affine (RAS mm)."""
    path = folder / f"img{ending}"
    if ending in (".nii.gz", ".nii"):
        vol = _volume()
        img = nib.Nifti1Image(vol, _nifti_affine())
        img.set_qform(_nifti_affine(), code=1)
        img.set_sform(_nifti_affine(), code=1)
        nib.save(img, path)
        return path, vol, np.asarray(nib.load(path).affine)
    if ending in (".nrrd", ".nhdr", ".mha", ".mhd"):
        vol = _volume()
        img = sitk.GetImageFromArray(vol.T)  # SimpleITK arrays are (Z, Y, X)
        img.SetSpacing(SPACING)
        img.SetOrigin(ORIGIN_LPS)
        img.SetDirection(_direction().ravel().tolist())
        sitk.WriteImage(img, str(path))
        return path, vol, _ras_affine_of(sitk.ReadImage(str(path)))
    if ending == ".tif":
        vol = _volume(np.uint16)
        tifffile.imwrite(path, vol.transpose(2, 1, 0), photometric="minisblack")
        # nnU-Net v2's sidecar: the spacing in the array's (z, y, x) order
        (folder / "img.json").write_text(json.dumps({"spacing": list(SPACING)[::-1]}))
        return path, vol, np.diag([*SPACING, 1.0])
    # PNG (with a 2D spacing sidecar) and BMP (without): one slice, Z = 1
    vol = (np.arange(20).reshape(5, 4, 1) * 7).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(vol[:, :, 0].T)).save(path)
    if ending == ".png":
        (folder / "img.json").write_text(json.dumps({"spacing": [0.4, 0.3]}))  # (y, x)
        return path, vol, np.diag([0.3, 0.4, 1.0, 1.0])
    return path, vol, np.eye(4)


FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".png", ".bmp"]
SITK_GEOMETRY = {".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"}


@pytest.mark.parametrize("ending", FORMATS)
def test_read_file_data_and_affine(tmp_path, ending):
    path, vol, expected = _write_source(tmp_path, ending)
    f = read_file(path, case="c1")
    assert f.data.shape == (*vol.shape, 1)
    assert f.spatial_shape == vol.shape and f.channels == 1
    np.testing.assert_array_equal(f.data[..., 0], vol)
    np.testing.assert_allclose(f.affine, expected, atol=1e-6)
    if ending in SITK_GEOMETRY:  # and nnpipe agrees with SimpleITK's own reading
        np.testing.assert_allclose(f.affine, _ras_affine_of(sitk.ReadImage(str(path))),
                                   atol=1e-5)
        assert not np.allclose(f.affine[:3, :3], np.diag(np.diag(f.affine[:3, :3])))


def _sitk_scalar(img: sitk.Image) -> np.ndarray:
    """Voxels as (X, Y[, Z]); BMP palettes come back as equal RGB components."""
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        assert np.all(arr == arr[..., :1])
        arr = arr[..., 0]
    return arr.T


@pytest.mark.parametrize("ending", FORMATS)
def test_write_like_keeps_the_grid(tmp_path, ending):
    path, vol, _ = _write_source(tmp_path, ending)
    src = read_file(path, case="c1")
    labels = _labels(vol.shape)
    out = tmp_path / "out" / f"pred{ending}"
    write_like(out, labels, src)

    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert b.GetSize() == a.GetSize()
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(_sitk_scalar(b).reshape(vol.shape), labels)
    # and nnpipe reads it back on the source's grid (TIFF/PNG: the spacing sidecar too)
    back = read_file(out)
    np.testing.assert_array_equal(back.data[..., 0], labels)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)
    # nothing half-written or temporary is left beside it (detached .zraw/.raw.gz included)
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("ending, companion", [(".mhd", "pred.zraw"), (".nhdr", "pred.raw.gz")])
def test_detached_header_names_its_data_file(tmp_path, ending, companion):
    path, vol, _ = _write_source(tmp_path, ending)
    out = tmp_path / f"pred{ending}"
    src = read_file(path)
    write_like(out, _labels(vol.shape), src)
    write_like(out, _labels(vol.shape), src)  # overwriting leaves no orphans either
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pred")) == sorted(
        [out.name, companion])
    assert companion in out.read_text(errors="replace")


@pytest.mark.parametrize("ending, labels, ok", [
    (".bmp", np.array([[[0], [3]], [[2], [1]]], dtype=np.int64), True),  # values decide
    (".bmp", np.array([[[0], [300]], [[2], [1]]], dtype=np.uint16), False),
    (".png", np.array([[[0], [850]], [[2], [1]]], dtype=np.uint16), True),
    (".png", np.array([[[0], [70000]], [[2], [1]]], dtype=np.uint32), False),
])
def test_pillow_label_value_range(tmp_path, ending, labels, ok):
    path = tmp_path / f"img{ending}"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(path)
    src = read_file(path)
    out = tmp_path / f"pred{ending}"
    if ok:
        write_like(out, labels, src)
        np.testing.assert_array_equal(read_file(out).data[..., 0], labels)
    else:
        with pytest.raises(DataError, match="cannot be written as"):
            write_like(out, labels, src)
        assert not out.exists()


def test_write_like_refuses_another_shape(tmp_path):
    path, _, _ = _write_source(tmp_path, ".nii.gz")
    with pytest.raises(ValueError, match=r"do not match the source grid \(5, 4, 3\)"):
        write_like(tmp_path / "p.nii.gz", np.zeros((5, 4, 2), np.uint8), read_file(path))


# ---------------------------------------------------------------- NIfTI specifics


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray, unit: str = "mm") -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(unit)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("unit, per_mm", [("meter", 1e-3), ("micron", 1e3), ("mm", 1.0)])
def test_xyzt_units_become_mm(tmp_path, unit, per_mm):
    mm = np.diag([0.5, 0.8, 2.0, 1.0])
    mm[:3, 3] = (10.0, -20.0, 30.0)
    in_unit = mm.copy()
    in_unit[:3, :] *= per_mm  # spacing 0.0005 m = 0.5 mm, 500 µm = 0.5 mm
    path = _nifti(tmp_path / "img.nii.gz", _volume(), in_unit, unit)
    f = read_file(path)
    np.testing.assert_allclose(f.affine, mm, rtol=1e-6, atol=1e-6)
    assert bool(f.notes) == (unit != "mm")
    if f.notes:
        assert unit in f.notes[0] and "mm" in f.notes[0]
    # the label keeps the header's units and its affine in those units
    out = tmp_path / "pred.nii.gz"
    write_like(out, _labels(SHAPE), f)
    written = nib.load(out)
    assert written.header.get_xyzt_units()[0] == unit
    np.testing.assert_allclose(written.affine, nib.load(path).affine, rtol=1e-6)
    np.testing.assert_allclose(read_file(out).affine, mm, rtol=1e-6, atol=1e-6)


def test_sform_wins_and_qform_is_kept(tmp_path):
    qform = np.diag([1.0, 1.0, 2.0, 1.0])
    sform = np.diag([1.0, 1.0, 2.0, 1.0])
    sform[:3, 3] = (4.0, -3.0, 8.0)
    img = nib.Nifti1Image(_volume(), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    path = tmp_path / "img.nii.gz"
    nib.save(img, path)
    f = read_file(path)
    np.testing.assert_allclose(f.affine, sform)
    assert f.other_affine is not None
    np.testing.assert_allclose(f.other_affine, qform)
    # written back with both forms and their codes
    out = tmp_path / "pred.nii.gz"
    write_like(out, _labels(SHAPE), f)
    h = nib.load(out).header
    q, qcode = h.get_qform(coded=True)
    s, scode = h.get_sform(coded=True)
    assert (int(qcode), int(scode)) == (1, 2)
    np.testing.assert_allclose(q, qform, atol=1e-6)
    np.testing.assert_allclose(s, sform, atol=1e-6)
    assert int(h["intent_code"]) == 1002


@pytest.mark.parametrize("qcode, scode, chosen", [(1, 0, "qform"), (0, 1, "sform")])
def test_one_coded_form_is_the_affine(tmp_path, qcode, scode, chosen):
    qform = np.diag([1.0, 1.5, 2.0, 1.0])
    sform = np.diag([3.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(_volume(), None)
    img.set_qform(qform, code=qcode)
    img.set_sform(sform, code=scode)
    path = tmp_path / "img.nii"
    nib.save(img, path)
    f = read_file(path)
    np.testing.assert_allclose(f.affine, qform if chosen == "qform" else sform)
    assert f.other_affine is None


def test_rgb24_voxels_are_three_channels(tmp_path):
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 7
    rgb["G"] = 9
    rgb["B"] = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    f = read_file(path)
    assert f.data.shape == (*SHAPE, 3) and f.data.dtype == np.uint8
    np.testing.assert_array_equal(f.data[..., 0], 7)
    np.testing.assert_array_equal(f.data[..., 1], 9)
    np.testing.assert_array_equal(f.data[..., 2], rgb["B"])
    assert read_header(path).channels == 3


def test_5d_vector_image_is_channels(tmp_path):
    data = np.arange(np.prod(SHAPE) * 2, dtype=np.float32).reshape(*SHAPE, 1, 2)
    path = tmp_path / "vec.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    f = read_file(path)
    assert f.data.shape == (*SHAPE, 2)
    np.testing.assert_array_equal(f.data, data[:, :, :, 0, :])
    assert read_header(path).channels == 2


def test_2d_nifti_written_back_2d(tmp_path):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 4), np.int16), np.diag([0.5, 0.5, 1.0, 1.0])), path)
    f = read_file(path)
    assert f.data.shape == (5, 4, 1, 1)
    out = tmp_path / "pred.nii.gz"
    write_like(out, _labels((5, 4, 1)), f)
    assert nib.load(out).shape == (5, 4)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), _labels((5, 4)))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("ending, module, package", [
    (".nrrd", "SimpleITK", "SimpleITK"),
    (".tif", "tifffile", "tifffile"),
    (".png", "PIL", "Pillow"),
])
def test_missing_extra_names_pip_install(tmp_path, monkeypatch, ending, module, package):
    path, _, _ = _write_source(tmp_path, ending)
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    for reader in (read_file, read_header):
        with pytest.raises(DataError) as err:
            reader(path, case="c9")
        msg = str(err.value)
        assert "pip install 'nnpipe[formats]'" in msg and f"pip install {package}" in msg
        assert "case 'c9'" in msg and str(path) in msg


@pytest.mark.parametrize("name, content, words", [
    ("img.nii.gz", b"not a nifti at all", ["cannot be read as NIfTI"]),
    ("img.mha", b"garbage", ["cannot be read as"]),
    ("img.jpg", b"\xff\xd8", ["unsupported file type", ".nii.gz"]),
])
def test_unreadable_files_name_case_and_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_file(path, case="c2")
    msg = str(err.value)
    assert "case 'c2'" in msg and name in msg
    for w in words:
        assert w in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file is missing"):
        read_file(tmp_path / "nope.nii.gz", case="c1")


@pytest.mark.parametrize("name, ending, stem", [
    ("case_0000.nii.gz", ".nii.gz", "case_0000"),
    ("CASE.NII", ".nii", "CASE"),
    ("a.b.nrrd", ".nrrd", "a.b"),
    ("x.tiff", ".tiff", "x"),
    ("x.gz", None, "x"),
    (".nii.gz", None, ".nii"),
])
def test_endings(name, ending, stem):
    assert ending_of(name) == ending
    assert strip_ending(name) == stem


# ---------------------------------------------------------------- headers only


def _sagittal_affine() -> np.ndarray:
    """Voxel axes (P, I, R): stored as sagittal slices along the last axis."""
    a = np.zeros((4, 4))
    a[1, 0] = -0.8  # axis 0 -> posterior, 0.8 mm
    a[2, 1] = -1.2  # axis 1 -> inferior, 1.2 mm
    a[0, 2] = 3.0  # axis 2 -> right, 3 mm slices
    a[:, 3] = (5.0, 6.0, 7.0, 1.0)
    return a


def test_read_header_canonical_without_voxels(tmp_path):
    path = _nifti(tmp_path / "sag.nii", _volume(np.float32), _sagittal_affine())
    # cut the voxels off: read_file fails, the header alone still answers
    path.write_bytes(path.read_bytes()[:352 + 8])
    with pytest.raises(DataError):
        read_file(path)
    h = read_header(path, case="c1")
    assert h.shape == (3, 5, 4)  # (R, A, S) from file axes (2, 0, 1)
    np.testing.assert_allclose(h.spacing, (3.0, 0.8, 1.2), rtol=1e-6)
    assert h.channels == 1


def test_read_header_sitk_without_data_file(tmp_path):
    path, _, _ = _write_source(tmp_path, ".mhd")
    (tmp_path / "img.raw").unlink()
    h = read_header(path)
    # file axes point (mostly) P, S, L: canonical (R, A, S) comes from file axes (2, 0, 1)
    assert h.shape == (3, 5, 4) and h.channels == 1
    np.testing.assert_allclose(h.spacing, (SPACING[2], SPACING[0], SPACING[1]), rtol=1e-6)


@pytest.mark.parametrize("ending, shape, spacing", [
    (".tif", (5, 4, 3), SPACING),
    (".png", (5, 4, 1), (0.3, 0.4, 1.0)),
    (".bmp", (5, 4, 1), (1.0, 1.0, 1.0)),
    (".nrrd", (3, 5, 4), (SPACING[2], SPACING[0], SPACING[1])),
    (".nii.gz", (3, 5, 4), (SPACING[2], SPACING[0], SPACING[1])),
])
def test_read_header_matches_read_file(tmp_path, ending, shape, spacing):
    path, _, _ = _write_source(tmp_path, ending)
    h = read_header(path)
    assert h.shape == shape and h.channels == 1
    np.testing.assert_allclose(h.spacing, spacing, rtol=1e-6)
    f = read_file(path)
    o = orientation_of(f.affine, f.spatial_shape)
    assert o.canonical_shape == h.shape
    np.testing.assert_allclose(spacing_of(o.canonical_affine(f.affine)), h.spacing, rtol=1e-6)


@pytest.mark.parametrize("top, stored", [(3, np.uint8), (850, np.uint16), (70000, np.uint32)])
def test_int64_labels_written_in_the_smallest_type(tmp_path, top, stored):
    """Labels as the reader returns them (int64, which nibabel refuses to write as is)."""
    path, vol, _ = _write_source(tmp_path, ".nii.gz")
    labels = _labels(vol.shape).astype(np.int64)
    labels[0, 0, 0] = top
    out = tmp_path / "pred.nii.gz"
    write_like(out, labels, read_file(path))
    assert nib.load(out).get_data_dtype() == stored
    np.testing.assert_array_equal(read_file(out).data[..., 0], labels)


# ---------------------------------------------------------------- header forms round trip


def _other_affine() -> np.ndarray:
    """A second grid (another rotation and origin) for files whose qform and sform differ."""
    t = np.deg2rad(-20)
    a = np.eye(4)
    a[:3, :3] = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0],
                          [-np.sin(t), 0, np.cos(t)]]) @ np.diag(SPACING)
    a[:3, 3] = (-7.0, 12.0, 3.5)
    return a


def _flipped_affine() -> np.ndarray:
    """A left-handed grid (qfac -1: the z axis flipped), as many DICOM converters write."""
    a = _nifti_affine()
    a[:, 2] *= -1
    return a


# name -> (header class, endianness, qform code, sform code, qform, sform, units)
HEADER_FORMS = {
    "no codes, pixdim only": (nib.Nifti1Header, "<", 0, 0, None, None, "mm"),
    "qform only": (nib.Nifti1Header, "<", 1, 0, _nifti_affine(), None, "mm"),
    "sform only": (nib.Nifti1Header, "<", 0, 1, None, _nifti_affine(), "mm"),
    "both code 1": (nib.Nifti1Header, "<", 1, 1, _nifti_affine(), _nifti_affine(), "mm"),
    "both code 2 (aligned)": (nib.Nifti1Header, "<", 2, 2, _nifti_affine(), _nifti_affine(),
                              "mm"),
    "qform 1, sform 4 (MNI), different": (nib.Nifti1Header, "<", 1, 4, _nifti_affine(),
                                          _other_affine(), "mm"),
    "left-handed (qfac -1)": (nib.Nifti1Header, "<", 1, 1, _flipped_affine(),
                              _flipped_affine(), "mm"),
    "big-endian": (nib.Nifti1Header, ">", 1, 1, _nifti_affine(), _nifti_affine(), "mm"),
    "units micron": (nib.Nifti1Header, "<", 1, 1, _nifti_affine(), _nifti_affine(), "micron"),
    "NIfTI-2": (nib.Nifti2Header, "<", 1, 2, _nifti_affine(), _nifti_affine(), "mm"),
    "NIfTI-2 no codes": (nib.Nifti2Header, "<", 0, 0, None, None, "mm"),
}


def cls_of(form: str) -> type:
    return HEADER_FORMS[form][0]


def _write_form(path: Path, form: str) -> Path:
    """A float image whose header holds exactly ``form`` (nibabel's save() keeps a header it
    is given when the image has no affine of its own)."""
    cls, endian, qcode, scode, qform, sform, unit = HEADER_FORMS[form]
    h = cls(endianness=endian)
    h.set_data_shape(SHAPE)
    h.set_data_dtype(np.float32)
    h.set_xyzt_units(unit, "sec")
    h.set_zooms(SPACING)
    if qform is not None:
        h.set_qform(qform, code=qcode)
    if sform is not None:
        h.set_sform(sform, code=scode)
    h["qform_code"], h["sform_code"] = qcode, scode
    h["scl_slope"], h["cal_max"] = 2.0, 500.0  # the image's scaling and display range
    img_cls = nib.Nifti2Image if cls is nib.Nifti2Header else nib.Nifti1Image
    nib.save(img_cls(_volume(np.float32), None, header=h), path)
    return path


def _sitk_geometry(path: Path) -> tuple[np.ndarray, ...]:
    img = sitk.ReadImage(str(path))
    return (np.asarray(img.GetOrigin()), np.asarray(img.GetSpacing()),
            np.asarray(img.GetDirection()), np.asarray(img.GetSize()))


@pytest.mark.parametrize("form", list(HEADER_FORMS))
def test_prediction_header_says_what_the_input_said(tmp_path, form):
    """nibabel reads the prediction's header as the input's (codes, forms, units, pixdim,
    endianness); SimpleITK reads the same grid and orientation for both; where the two
    libraries agree on the input they agree on the prediction too."""
    src = _write_form(tmp_path / "img.nii.gz", form)
    out = tmp_path / "pred.nii.gz"
    write_like(out, _labels(SHAPE), read_file(src))
    hi, ho = nib.load(src).header, nib.load(out).header
    for coded in (hi.get_qform, hi.get_sform):
        mine = getattr(ho, coded.__name__)(coded=True)
        theirs = coded(coded=True)
        assert int(mine[1]) == int(theirs[1]), coded.__name__
        if theirs[0] is not None:
            np.testing.assert_allclose(mine[0], theirs[0], atol=1e-6)
    assert ho.get_xyzt_units() == hi.get_xyzt_units()
    np.testing.assert_array_equal(ho["pixdim"][:4], hi["pixdim"][:4])  # qfac and spacing
    np.testing.assert_allclose(ho.get_best_affine(), hi.get_best_affine(), atol=1e-6)
    assert ho.endianness == hi.endianness and type(ho) is type(hi)
    assert int(ho["intent_code"]) == 1002 and float(ho["cal_max"]) == 0.0
    labels = np.asanyarray(nib.load(out).dataobj)
    np.testing.assert_array_equal(labels, _labels(SHAPE))  # no scaling of label values
    if cls_of(form) is nib.Nifti2Header:
        return  # SimpleITK 2.5 reads no NIfTI-2 file at all, the input included
    # SimpleITK: same grid and orientation as the input's
    for a, b in zip(_sitk_geometry(out), _sitk_geometry(src), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    nib_in, nib_out = nib.load(src).affine, nib.load(out).affine
    sitk_in = _ras_affine_of(sitk.ReadImage(str(src)))
    sitk_out = _ras_affine_of(sitk.ReadImage(str(out)))
    if np.allclose(nib_in, sitk_in, atol=1e-4):
        np.testing.assert_allclose(nib_out, sitk_out, atol=1e-4)


# ---------------------------------------------------------------- the content decides


def _misnamed(tmp_path: Path, kind: str) -> tuple[Path, np.ndarray]:
    """A file whose content contradicts its name; returns it and the affine it holds."""
    import gzip

    affine = _nifti_affine()
    right = _nifti(tmp_path / "right.nii", _volume(), affine)
    if kind == "nii.gz not gzipped":
        path = tmp_path / "case.nii.gz"
        path.write_bytes(right.read_bytes())
    elif kind == "nii gzipped":
        path = tmp_path / "case.nii"
        path.write_bytes(gzip.compress(right.read_bytes()))
    else:  # an NRRD named .nii.gz
        img = sitk.GetImageFromArray(np.ascontiguousarray(_volume().T))
        img.SetSpacing(SPACING)
        img.SetOrigin(ORIGIN_LPS)
        img.SetDirection(_direction().ravel().tolist())
        sitk.WriteImage(img, str(tmp_path / "right.nrrd"))
        path = tmp_path / "case.nii.gz"
        path.write_bytes((tmp_path / "right.nrrd").read_bytes())
    return path, affine


@pytest.mark.parametrize("kind", ["nii.gz not gzipped", "nii gzipped", "nrrd named nii.gz"])
def test_a_file_is_read_as_what_it_holds_not_what_its_name_says(tmp_path, kind):
    path, affine = _misnamed(tmp_path, kind)
    f = read_file(path)
    assert f.path == path
    np.testing.assert_array_equal(f.data[..., 0], _volume())
    np.testing.assert_allclose(f.affine, affine, atol=1e-5)
    assert len(f.notes) == 1 and "although the name ends in .nii" in f.notes[0], f.notes
    assert read_header(path).shape == orientation_of(affine, SHAPE).canonical_shape
    # the prediction is a true file of the name's format, on the same grid
    out = tmp_path / f"pred{ending_of(path)}"
    write_like(out, _labels(SHAPE), f)
    back = read_file(out)
    assert not back.notes
    np.testing.assert_array_equal(back.data[..., 0], _labels(SHAPE))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
