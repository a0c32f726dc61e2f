"""Normalization values per scheme."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.planning.channels import channel_name_warnings, near_miss, scheme_for_channel
from nnpipe.planning.plan import ChannelNorm
from nnpipe.preprocessing.normalize import (
    check_value_ranges,
    nonzero_mask,
    normalize,
)


def test_zscore_inside_mask_zero_outside():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 10, 10, 10), dtype=np.float32)
    image[0, 2:8, 2:8, 2:8] = rng.normal(300.0, 40.0, size=(6, 6, 6))
    mask = nonzero_mask(image)
    out = normalize(image, [ChannelNorm("zscore_nonzero")], mask)
    assert out.dtype == np.float32
    assert out[0][mask].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[0][mask].std() == pytest.approx(1.0, abs=1e-5)
    assert np.all(out[0][~mask] == 0)


def test_zscore_mask_is_any_channel():
    image = np.zeros((2, 2, 1, 1), dtype=np.float32)
    image[0, 0] = 4.0  # channel 1 is zero there but inside the mask
    image[1, 1] = 2.0
    out = normalize(image, [ChannelNorm("zscore_nonzero")] * 2)
    assert np.allclose(out[0, :, 0, 0], [1.0, -1.0])
    assert np.allclose(out[1, :, 0, 0], [-1.0, 1.0])


def test_ct_clip_and_standardize():
    image = np.array([-1000.0, -100.0, 50.0, 200.0, 3000.0], dtype=np.float32).reshape(1, 5, 1, 1)
    norm = ChannelNorm("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    out = normalize(image, [norm])
    assert np.allclose(out.ravel(), [-6.0, -6.0, 0.0, 6.0, 6.0])


def test_constant_channel_does_not_divide_by_zero():
    out = normalize(np.full((1, 2, 2, 2), 7.0, dtype=np.float32), [ChannelNorm("zscore_nonzero")])
    assert np.all(out == 0)


@pytest.mark.parametrize(
    ("norms", "message"),
    [([ChannelNorm("histogram")], "unknown normalization scheme 'histogram'"),
     ([ChannelNorm("ct")], "CT normalization needs"),
     ([ChannelNorm("ct")] * 2, "does not match 2 channel")],
)
def test_bad_norms(norms, message):
    with pytest.raises(ValueError, match=message):
        normalize(np.ones((1, 2, 2, 2), dtype=np.float32), norms)


# ---------------------------------------------------------------- nnU-Net v2's other schemes


def test_zscore_without_mask_uses_every_voxel():
    image = np.array([0.0, 0.0, 2.0, 6.0], dtype=np.float32).reshape(1, 4, 1, 1)
    out = normalize(image, [ChannelNorm("zscore")])
    # mean 2, std sqrt((4 + 4 + 0 + 16) / 4) = sqrt(6): zeros are voxels like any other
    np.testing.assert_allclose(out.ravel(), np.array([-2.0, -2.0, 0.0, 4.0]) / np.sqrt(6),
                               rtol=1e-6)


def test_none_only_casts_to_float32():
    image = np.array([-3, 0, 7, 1000], dtype=np.int16).reshape(1, 4, 1, 1)
    out = normalize(image, [ChannelNorm("none")])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.ravel(), [-3.0, 0.0, 7.0, 1000.0])


def test_rescale_0_1_per_image():
    image = np.array([100.0, 150.0, 300.0, 500.0], dtype=np.float32).reshape(1, 4, 1, 1)
    np.testing.assert_allclose(normalize(image, [ChannelNorm("rescale_0_1")]).ravel(),
                               [0.0, 0.125, 0.5, 1.0])
    constant = np.full((1, 2, 2, 2), 9.0, dtype=np.float32)
    assert np.all(normalize(constant, [ChannelNorm("rescale_0_1")]) == 0)


def test_rgb_0_1_divides_by_255_and_refuses_other_values():
    image = np.array([0.0, 51.0, 255.0], dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(normalize(image, [ChannelNorm("rgb_0_1")]).ravel(),
                               [0.0, 0.2, 1.0])
    for bad in (-1.0, 256.0):
        image[0, 0] = bad
        with pytest.raises(ValueError, match=r"rgb_0_1 .* needs 8-bit colour values in \[0, "
                                             r"255\]"):
            normalize(image, [ChannelNorm("rgb_0_1")])


def test_value_ranges_checked_before_resampling():
    norms = [ChannelNorm("rgb_0_1", channel="rgb_to_0_1"), ChannelNorm("zscore_nonzero")]
    image = np.zeros((2, 2, 1, 1), dtype=np.float32)
    check_value_ranges(image, norms)
    image[0, 1] = 300.0
    with pytest.raises(ValueError, match=r"channel 0 \('rgb_to_0_1'\) .* values in \[0, 300\]"):
        check_value_ranges(image, norms)


@pytest.mark.parametrize(("name", "scheme"), [
    ("CT", "ct"), ("ct", "ct"), (" Ct ", "ct"), ("noNorm", "none"), ("NONORM", "none"),
    ("rescale_to_0_1", "rescale_0_1"), ("Rescale_To_0_1", "rescale_0_1"),
    ("rgb_to_0_1", "rgb_0_1"), ("RGB_to_0_1", "rgb_0_1"), ("zscore", "zscore_nonzero"),
    ("T2", "zscore_nonzero"), ("FLAIR", "zscore_nonzero"), ("no_norm", "zscore_nonzero"),
    ("Ct scan", "zscore_nonzero"), ("", "zscore_nonzero")])
def test_scheme_for_channel_follows_nnunet_v2_names(name, scheme):
    assert scheme_for_channel(name) == scheme


@pytest.mark.parametrize(("name", "meant"), [
    ("no_norm", "noNorm"), ("No Norm", "noNorm"), ("no-normalization", "noNorm"),
    ("none", "noNorm"), ("Ct scan", "CT"), ("CT_arterial", "CT"), ("CTscan", "CT"),
    ("native CT", "CT"), ("rescale01", "rescale_to_0_1"), ("rescale_0_1", "rescale_to_0_1"),
    ("rgb_0_1", "rgb_to_0_1"), ("RGB-to-0-1", "rgb_to_0_1"),
    # exact names and ordinary channel names are no near miss
    ("CT", None), ("noNorm", None), ("rescale_to_0_1", None), ("T1", None), ("T1Gd", None),
    ("FLAIR", None), ("MRI", None), ("PET", None), ("ADC", None), ("DWI", None),
    ("RGB", None), ("zscore", None), ("T2", None)])
def test_near_miss_names_the_intended_scheme(name, meant):
    assert near_miss(name) == meant


def test_channel_name_warning_says_what_is_used_and_what_to_write():
    (line,) = channel_name_warnings(["T2", "no_norm", "rescale_to_0_1"])
    assert line.startswith("warning: channel 1 is named 'no_norm'")
    assert "looks like 'noNorm'" in line and "normalized with 'zscore_nonzero'" in line
    assert "write 'noNorm' in dataset.json if 'none' was meant" in line
