"""The decoder's up-sampling and skip concatenation as one matrix product and one buffer.

Both U-Nets (:mod:`nnpipe.model.unet`, :mod:`nnpipe.model.resenc`) enter each decoder level
with ``torch.cat((transp_conv(x), skip), dim=1)``, a transposed convolution whose kernel
equals its stride ``s``. Such a convolution maps every input voxel to its own block of
``s_1 x ... x s_d`` output voxels,

    out[n, o, s * i + a] = sum_c x[n, c, i] * w[c, o, a]  (+ bias[o]),

which is one matrix product ``(N * prod(spatial), C_in) @ (C_in, C_out * prod(s))`` followed by
a rearrangement of the blocks. :func:`up_concat` computes that product and writes the
rearranged blocks and the skip straight into one channels-last buffer, which *is* the
concatenation: no separate up-sampled tensor, no copy by ``torch.cat``. PyTorch itself sends
a batch-1 float32 transposed convolution of a small input (the deepest levels) to its
reference kernel ``slow_conv_transpose3d``.

It applies where :func:`nnpipe.inference.ensemble.cpu_fast_path` puts prediction: CPU, no
autograd, no autocast, a channels-last input (3D), the transposed convolution with kernel =
stride, no padding, no dilation, one group. Everywhere else (GPUs, training, 2D networks
left in the default layout) the plain ``torch.cat`` path runs; both give the same values up
to float rounding (``tests/model/test_upsample.py``).

Measured with torch 2.13 on 2 Xeon (Sapphire Rapids) cores, the 5-level 16-filter 3D U-Net on
one 4x64^3 tile after ``cpu_fast_path`` with :mod:`nnpipe.allocator`'s setting: 118 -> 114 ms
(docs/benchmarks.md, "Float32 with 8-flip TTA").
"""

from __future__ import annotations

import math

import torch
from torch import nn

_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def up_concat(up: nn.Module, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat((up(x), skip), dim=1)``: ``(N, C_up + C_skip, *skip_spatial)``.

    ``up`` is the level's transposed convolution (or a one-module ``nn.Sequential`` holding
    it, the parameter layout of :class:`~nnpipe.model.unet.UpBlock`); ``x`` ``(N, C_in,
    *spatial)``; ``skip`` ``(N, C_skip, *spatial * stride)``. On the prediction path
    described in the module docstring the result is channels-last and computed without the
    intermediate up-sampled tensor; otherwise it is exactly the ``torch.cat`` expression.
    """
    conv = up[0] if isinstance(up, nn.Sequential) and len(up) == 1 else up
    if not isinstance(conv, _TRANSPOSED) or not _fusable(conv, x, skip):
        return torch.cat((up(x), skip), dim=1)
    nd = x.ndim - 2
    n, c_in = x.shape[:2]
    spatial = tuple(x.shape[2:])
    strides = tuple(int(s) for s in conv.stride)
    weight = conv.weight  # (C_in, C_up, *strides)
    c_up, c_skip = weight.shape[1], skip.shape[1]
    rows = x.permute(0, *range(2, nd + 2), 1).reshape(-1, c_in)  # a view: x is channels-last
    # (C_in, prod(strides) * C_up), C_up fastest: a view of a channels-last weight, and the
    # block copy below then moves runs of C_up contiguous values
    cols = weight.permute(0, *range(2, nd + 2), 1).reshape(c_in, -1)
    if conv.bias is not None:
        blocks = torch.addmm(conv.bias.repeat(math.prod(strides)), rows, cols)
    else:
        blocks = rows @ cols
    blocks = blocks.view(n, *spatial, *strides, c_up)
    # buffer (N, D, s_D, H, s_H, W, s_W, C): its (D*s_D, H*s_H, W*s_W, C) view is the output
    interleaved = [v for pair in zip(spatial, strides, strict=True) for v in pair]
    buf = torch.empty((n, *interleaved, c_up + c_skip), dtype=x.dtype, device=x.device)
    order = [0, *(a for i in range(nd) for a in (1 + i, nd + 1 + i)), 2 * nd + 1]
    buf[..., :c_up] = blocks.permute(*order)
    full = buf.view(n, *(s * k for s, k in zip(spatial, strides, strict=True)), c_up + c_skip)
    full[..., c_up:] = skip.permute(0, *range(2, nd + 2), 1)
    return full.permute(0, nd + 1, *range(1, nd + 1))  # (N, C, *spatial), channels-last


def _fusable(conv: nn.ConvTranspose2d | nn.ConvTranspose3d, x: torch.Tensor,
             skip: torch.Tensor) -> bool:
    """Whether :func:`up_concat`'s product path computes ``conv`` on ``x`` exactly."""
    nd = x.ndim - 2
    if x.device.type != "cpu" or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return False
    if tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) \
            or any(conv.output_padding) or any(d != 1 for d in conv.dilation) \
            or conv.groups != 1 or nd != len(conv.stride):
        return False
    if not x.dtype == skip.dtype == conv.weight.dtype or skip.shape[0] != x.shape[0]:
        return False
    if tuple(skip.shape[2:]) != tuple(s * k for s, k in zip(x.shape[2:], conv.stride,
                                                            strict=True)):
        return False
    # channels-last input: its (N, *spatial, C) permutation is contiguous, so rows is a view
    return x.permute(0, *range(2, nd + 2), 1).is_contiguous()
