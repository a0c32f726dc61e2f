"""Normalization values per scheme."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.planning.plan import ChannelNorm
from nnpipe.preprocessing.normalize import nonzero_mask, normalize


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
