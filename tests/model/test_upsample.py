"""up_concat: the product path equals torch.cat((transp_conv(x), skip)) and runs only where
it computes exactly that."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnpipe.model.upsample import _fusable, up_concat

CL = {2: torch.channels_last, 3: torch.channels_last_3d}
CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _case(dim: int, stride: tuple[int, ...], bias: bool, batch: int = 1,
          c_in: int = 6, c_up: int = 3, c_skip: int = 5):
    torch.manual_seed(0)
    conv = CONV_T[dim](c_in, c_up, stride, stride, bias=bias)
    if bias:
        conv.bias.data.uniform_(-1, 1)
    spatial = (3, 4, 5)[:dim]
    x = torch.randn(batch, c_in, *spatial)
    skip = torch.randn(batch, c_skip, *(s * k for s, k in zip(spatial, stride, strict=True)))
    return conv, x, skip


@pytest.mark.parametrize("dim,stride", [(3, (2, 2, 2)), (3, (1, 2, 2)), (3, (2, 1, 2)),
                                        (3, (2, 2, 1)), (2, (2, 2)), (2, (1, 2))])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_product_path_equals_the_concatenation(dim, stride, bias, batch):
    conv, x, skip = _case(dim, stride, bias, batch)
    with torch.no_grad():
        expected = torch.cat((conv(x), skip), dim=1)
        conv = conv.to(memory_format=CL[dim])
        x_cl, skip_cl = (t.contiguous(memory_format=CL[dim]) for t in (x, skip))
        assert _fusable(conv, x_cl, skip_cl)
        got = up_concat(conv, x_cl, skip_cl)
        # the UpBlock layout: the transposed convolution inside a one-module Sequential
        wrapped = up_concat(nn.Sequential(conv), x_cl, skip_cl)
    assert got.shape == expected.shape == (batch, 3 + 5, *skip.shape[2:])
    assert got.is_contiguous(memory_format=CL[dim])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wrapped, got, atol=0, rtol=0)
    # the skip channels are copied, not computed: exactly equal
    assert torch.equal(got[:, 3:], skip)


def test_contiguous_weight_gives_the_same_values():
    """A weight not in channels-last layout (a copy of the matrix instead of a view)."""
    conv, x, skip = _case(3, (2, 2, 2), bias=True)
    with torch.no_grad():
        expected = torch.cat((conv(x), skip), dim=1)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        got = up_concat(conv, x_cl, skip)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_falls_back_where_the_product_is_not_the_convolution():
    conv, x, skip = _case(3, (2, 2, 2), bias=False)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    overlapping = nn.ConvTranspose3d(6, 3, 3, 2, padding=1, output_padding=1, bias=False)
    with torch.no_grad():
        assert not _fusable(conv, x, skip)  # default layout: rows would be a copy
        assert not _fusable(overlapping, x_cl, skip)  # kernel 3, stride 2
        assert not _fusable(conv, x_cl, skip[..., :-1])  # skip of another size
        assert not _fusable(conv, x_cl.double(), skip)  # mixed dtypes
        for up in (conv, overlapping):
            expected = torch.cat((up(x), skip), dim=1)
            torch.testing.assert_close(up_concat(up, x_cl, skip), expected, atol=0, rtol=0)
    # autograd (training) always takes torch's own path, and gradients flow
    x_cl.requires_grad_(True)
    assert not _fusable(conv, x_cl, skip)
    up_concat(conv, x_cl, skip).sum().backward()
    assert x_cl.grad is not None and conv.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _fusable(conv, x_cl, skip)
