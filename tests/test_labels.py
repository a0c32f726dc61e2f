"""Label values ↔ class indices, float label files rounded or refused, dataset.json labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnpipe.errors import DataError
from nnpipe.imageio import read_file
from nnpipe.labels import INTEGER_TOLERANCE, LabelTable, integer_labels, parse_labels

# ---------------------------------------------------------------- LabelTable


@pytest.mark.parametrize("values, dtype", [
    ((0, 1, 4), np.uint8),
    ((0, 205, 420, 500, 550, 600, 820, 850), np.uint16),
    ((0, 1, 2), np.uint8),
    ((0, 70000), np.uint32),
])
def test_to_indices_to_values_round_trip(values, dtype):
    table = LabelTable(values)
    assert table.value_dtype is dtype
    rng = np.random.default_rng(0)
    stored = np.asarray(values, dtype=dtype)[rng.integers(0, len(values), size=(4, 5, 3))]
    indices = table.to_indices(stored)
    assert indices.dtype == np.uint8 and indices.shape == stored.shape
    np.testing.assert_array_equal(indices, np.searchsorted(values, stored))
    back = table.to_values(indices)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, stored)
    assert table.num_classes == len(values)
    assert [table.index_of(v) for v in values] == list(range(len(values)))


def test_to_values_of_every_index():
    table = LabelTable((0, 205, 420, 500, 550, 600, 820, 850))
    out = table.to_values(np.arange(8, dtype=np.uint8))
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 205, 420, 500, 550, 600, 820, 850]
    assert not table.is_identity and LabelTable((0, 1, 2)).is_identity


def test_unlisted_value_names_case_and_file():
    table = LabelTable((0, 1, 4))
    labels = np.array([[[0, 1], [4, 3]]], dtype=np.uint8)
    with pytest.raises(DataError) as err:
        table.to_indices(labels, case="case_7", path="labelsTr/case_7.nii.gz")
    msg = str(err.value)
    assert "case 'case_7'" in msg and "labelsTr/case_7.nii.gz" in msg
    assert "[3]" in msg and "listed: [0, 1, 4]" in msg


@pytest.mark.parametrize("values, problem", [
    ((1, 2), "background 0"),
    ((0, 2, 1), "sorted and unique"),
    ((0, 1, 1), "sorted and unique"),
    (tuple(range(300)), "at most 256"),
])
def test_bad_tables_are_refused(values, problem):
    with pytest.raises(ValueError, match=problem):
        LabelTable(values)


def test_from_labels_sorts_the_values():
    assert LabelTable.from_labels({4: "b", 0: "bg", 1: "a"}).values == (0, 1, 4)


# ---------------------------------------------------------------- integer_labels


@pytest.mark.parametrize("data, expected, rounded", [
    (np.array([0.0, 0.99999994, 2.0000002], dtype=np.float32), [0, 1, 2], True),
    (np.array([0.0, 1 + 1e-12, 3.0], dtype=np.float64), [0, 1, 3], True),
    (np.array([0.0, 1.0, 2.0], dtype=np.float32), [0, 1, 2], False),
    (np.array([0, 1, 850], dtype=np.uint16), [0, 1, 850], False),
    (np.array([False, True]), [0, 1], False),
], ids=["float32", "float64", "exact-float", "uint16", "bool"])
def test_integer_labels_round_near_integers(data, expected, rounded):
    out, was_rounded = integer_labels(data)
    assert out.dtype == np.int64
    assert out.tolist() == expected
    assert was_rounded is rounded


def test_scl_slope_labels_read_through_imageio(tmp_path):
    """int16 stored 0, 255, 510 with scl_slope = 1/255: nibabel gives 1.0000000x, 2.0000002."""
    path = tmp_path / "label.nii"
    raw = np.array([0, 255, 510, 255], dtype=np.int16).reshape(2, 2, 1)
    nib.save(nib.Nifti1Image(raw, np.eye(4)), path)
    header = nib.load(path).header.copy()
    header["scl_slope"] = 1 / 255
    header["scl_inter"] = 0
    header["vox_offset"] = 352  # where nibabel put the voxels of a single-file .nii
    with open(path, "r+b") as fh:  # the slope as written by other tools, not nibabel's own
        fh.write(header.binaryblock)

    f = read_file(path, case="c1")
    assert f.data.dtype.kind == "f"
    assert not np.array_equal(f.data[..., 0], np.round(f.data[..., 0]))  # really off
    out, rounded = integer_labels(f.data[..., 0], case="c1", path=path)
    assert rounded is True
    assert out.tolist() == [[[0], [1]], [[2], [1]]]


@pytest.mark.parametrize("bad, words", [
    (0.25, ["fractional", "0.25", "nearest-neighbour"]),
    (1.5, ["fractional", "1.5"]),
    (1 + 2 * INTEGER_TOLERANCE, ["fractional"]),
    (np.nan, ["NaN"]),
    (-1.0, ["negative"]),
])
def test_integer_labels_refuse_non_integers(bad, words):
    data = np.array([0.0, 1.0, bad], dtype=np.float32)
    with pytest.raises(DataError) as err:
        integer_labels(data, case="case_3", path=Path("labelsTr/case_3.nii.gz"))
    msg = str(err.value)
    assert "case 'case_3'" in msg and "labelsTr/case_3.nii.gz" in msg
    for w in words:
        assert w in msg


# ---------------------------------------------------------------- parse_labels

MSD = {"0": "background", "1": "edema", "2": "tumour"}
V2 = {"background": 0, "edema": 1, "tumour": 2}
EXPECTED = {0: "background", 1: "edema", 2: "tumour"}


@pytest.mark.parametrize("labels, layout", [
    (MSD, "msd"),
    (V2, "nnunetv2"),
    (V2, "msd"),  # reversed form in the MSD layout
    (MSD, "nnunetv2"),  # reversed form in the v2 layout
    ({"2": "tumour", "0": "background", "1": "edema"}, "msd"),  # sorted by value
    ({"background": 0.0, "edema": 1.0, "tumour": 2}, "nnunetv2"),  # integral floats
])
def test_parse_labels_forms(labels, layout):
    out = parse_labels(labels, layout=layout, path="ds/dataset.json")
    assert out == EXPECTED
    assert list(out) == [0, 1, 2]


@pytest.mark.parametrize("layout, expected", [
    ("msd", {0: "2", 1: "0", 2: "1"}),  # MSD: the keys are the values
    ("nnunetv2", {0: "1", 1: "2", 2: "0"}),  # v2: the values are the values
])
def test_parse_labels_numbers_on_both_sides(layout, expected):
    """Integers on both sides are ambiguous: the layout's own form decides."""
    out = parse_labels({"0": 2, "1": 0, "2": 1}, layout=layout, path="dataset.json")
    assert out == expected


@pytest.mark.parametrize("labels, words", [
    ({"1": "tumour", "2": "edema"}, ["background value 0", "listed: [1, 2]",
                                    '{"0": "background", "1": "tumour"} (MSD)',
                                    '{"background": 0, "tumour": 1} (nnU-Net v2)']),
    ({"tumour": 1}, ["background value 0", "(MSD)", "(nnU-Net v2)"]),
    ({"background": "bg"}, ["neither integer keys nor integer values", "(MSD)",
                            "(nnU-Net v2)"]),
    ({}, ["non-empty mapping", "(MSD)", "(nnU-Net v2)"]),
    (["background", "tumour"], ["non-empty mapping"]),
    ({"background": 0, "tumour": 0}, ["one value to several names"]),
    ({"-1": "x", "0": "background"}, ["negative values [-1]"]),
], ids=["no-background-msd", "no-background-v2", "no-integers", "empty",
        "list", "duplicate", "negative"])
def test_parse_labels_refusals_name_dataset_json(labels, words):
    with pytest.raises(DataError) as err:
        parse_labels(labels, layout="msd", path="/data/Task01/dataset.json")
    msg = str(err.value)
    assert "/data/Task01/dataset.json" in msg and "'labels'" in msg
    for w in words:
        assert w in msg


def test_parse_labels_reads_v2_region_lists():
    """nnU-Net v2 region lists add their values; the regions themselves are read by
    nnpipe.labels.LabelScheme.from_dataset_json (tests/test_label_scheme.py)."""
    labels = {"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    assert parse_labels(labels, layout="nnunetv2", path="dataset.json") == {
        0: "background", 1: "whole tumour", 2: "core", 3: "enhancing"}
