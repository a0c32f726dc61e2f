"""Residual-encoder U-Net (``planning.network: resenc_m | resenc_l``), built from a plan.

The architecture of nnU-Net v2's ResEnc presets (Isensee et al. 2024, "nnU-Net Revisited"),
written from the paper's description:

* a stem: one conv -> instance norm -> LeakyReLU at full resolution;
* encoder level ``i``: ``plan.encoder_blocks[i]`` basic residual blocks (conv-norm-act-conv-
  norm, plus the input, then act). The first block of a level enters it with the level's
  stride; where the stride or the channel count changes, the skip path is an average pool
  (kernel = stride) and a 1x1 conv with norm, so the skip sees every input voxel rather than
  one in eight (as a strided 1x1 conv would);
* a plain decoder: transposed conv (kernel = stride) up, concatenate the encoder's output of
  that level, one conv-norm-act (:data:`~nnpipe.planning.network.RESENC_DECODER_CONVS`);
* 1x1 heads: full resolution, plus deep-supervision heads on decoder levels 1..heads.

Its output contract is :class:`~nnpipe.model.unet.UNet`'s, so the trainer, the loss, the
sliding window and checkpoint loading need no change: ``(B, C, *patch)`` -> ``(B, K,
*patch)``; in training mode with heads ``(B, 1 + heads, K, *patch)``, the heads upsampled
(nearest) to the patch size; the heads are the module list ``deep_supervision_heads`` (which
prediction drops by name), the full-resolution head is ``output_block``.

``nnpipe network`` (:mod:`nnpipe.model.summary`) prints parameters and forward FLOPs per
sample for plain/resenc_m/resenc_l on MSD Task01.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from nnpipe.model.norm import InstanceNorm2d, InstanceNorm3d
from nnpipe.model.onednn import use_onednn
from nnpipe.model.unet import (
    LEAKY_SLOPE,
    _head,
    _init_weights,
    _padding,
    deep_supervision_heads,
    stack_deep_supervision,
)
from nnpipe.model.upsample import up_concat
from nnpipe.planning.network import RESENC_DECODER_CONVS, network_preset
from nnpipe.planning.plan import Plan

# Layer classes by dimensionality, typed as plain callables as in nnpipe.model.unet: sizes
# are tuples of length dim, which torch's per-class stubs cannot check for a runtime dim.
_CONV: dict[int, Callable[..., nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, Callable[..., nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
# instance norms that run the group-norm kernel on CPUs (nnpipe.model.norm)
_NORM: dict[int, Callable[..., nn.Module]] = {2: InstanceNorm2d, 3: InstanceNorm3d}
_POOL: dict[int, Callable[..., nn.Module]] = {2: nn.AvgPool2d, 3: nn.AvgPool3d}


class ConvNormAct(nn.Module):
    """conv (stride) -> instance norm (affine) -> LeakyReLU(0.01)."""

    def __init__(self, dim: int, c_in: int, c_out: int, kernel: Sequence[int],
                 stride: Sequence[int] | None = None) -> None:
        super().__init__()
        stride = tuple(stride or (1,) * dim)
        self.conv = _CONV[dim](c_in, c_out, tuple(kernel), stride, _padding(kernel, stride),
                               bias=False)
        self.norm = _NORM[dim](c_out, affine=True)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class BasicBlock(nn.Module):
    """``act(norm(conv(act(norm(conv(x))))) + skip(x))``; ``skip`` is the identity unless the
    block changes resolution or channels (then average pool + 1x1 conv + norm)."""

    def __init__(self, dim: int, c_in: int, c_out: int, kernel: Sequence[int],
                 stride: Sequence[int]) -> None:
        super().__init__()
        stride = tuple(stride)
        ones = (1,) * dim
        self.conv1 = _CONV[dim](c_in, c_out, tuple(kernel), stride, _padding(kernel, stride),
                                bias=False)
        self.norm1 = _NORM[dim](c_out, affine=True)
        self.conv2 = _CONV[dim](c_out, c_out, tuple(kernel), ones, _padding(kernel, ones),
                                bias=False)
        self.norm2 = _NORM[dim](c_out, affine=True)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.skip: nn.Module = nn.Identity()
        if c_in != c_out or any(s > 1 for s in stride):
            pool: nn.Module = nn.Identity()
            if any(s > 1 for s in stride):
                # ceil_mode: the same output size as the strided 3x3 conv for odd sizes too
                pool = _POOL[dim](stride, stride, ceil_mode=True, count_include_pad=False)
            self.skip = nn.Sequential(pool, _CONV[dim](c_in, c_out, 1, bias=False),
                                      _NORM[dim](c_out, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.skip(x))


class ResEncUNet(nn.Module):
    """Residual-encoder U-Net: ``(B, C, *patch)`` -> logits ``(B, K, *patch)``.

    Level ``i`` (0 = full resolution) has ``filters[i]`` channels, kernel ``kernels[i]``,
    ``blocks[i]`` residual blocks, and is entered with stride ``strides[i]``. Training mode
    with ``heads > 0``: ``(B, 1 + heads, K, *patch)`` as :class:`~nnpipe.model.unet.UNet`.
    """

    def __init__(self, dim: int, in_channels: int, out_channels: int,
                 kernels: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 filters: Sequence[int], blocks: Sequence[int], heads: int = 0) -> None:
        super().__init__()
        n = len(filters)
        if n < 2 or not len(kernels) == len(strides) == len(blocks) == n:
            raise ValueError(f"a ResEnc U-Net needs >= 2 levels and one kernel, stride, filter "
                             f"count and block count per level; got {len(kernels)} kernels, "
                             f"{len(strides)} strides, {n} filter counts, {len(blocks)} blocks")
        if any(b < 1 for b in blocks):
            raise ValueError(f"every level needs >= 1 residual block, got {tuple(blocks)}")
        if not 0 <= heads <= n - 2:
            raise ValueError(f"deep-supervision heads must be in [0, {n - 2}] for {n} levels, "
                             f"got {heads}")
        self.heads = heads
        self.stem = ConvNormAct(dim, in_channels, filters[0], kernels[0])
        self.encoder = nn.ModuleList(
            nn.Sequential(*(
                BasicBlock(dim, filters[max(i - 1, 0)] if j == 0 else filters[i], filters[i],
                           kernels[i], strides[i] if j == 0 else (1,) * dim)
                for j in range(blocks[i])))
            for i in range(n))
        # deepest first: up j takes level n-1-j up to level n-2-j
        self.upsamples = nn.ModuleList(
            _CONV_T[dim](filters[i + 1], filters[i], tuple(strides[i + 1]),
                         tuple(strides[i + 1]), bias=False)
            for i in reversed(range(n - 1)))
        self.decoder = nn.ModuleList(
            nn.Sequential(*(ConvNormAct(dim, 2 * filters[i] if c == 0 else filters[i],
                                        filters[i], kernels[i])
                            for c in range(RESENC_DECODER_CONVS)))
            for i in reversed(range(n - 1)))
        self.output_block = _head(dim, filters[0], out_channels)
        if heads:
            self.deep_supervision_heads = nn.ModuleList(
                _head(dim, filters[i + 1], out_channels) for i in range(heads))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        supervise = self.training and self.heads > 0
        extra: list[torch.Tensor] = []
        for j, (up, block) in enumerate(zip(self.upsamples, self.decoder, strict=True)):
            level = len(self.upsamples) - 1 - j  # the level x is at after this step
            x = block(up_concat(up, x, skips[level]))
            if supervise and 1 <= level <= self.heads:
                extra.append(self.deep_supervision_heads[level - 1](x))
        out = self.output_block(x)
        return stack_deep_supervision(out, extra) if supervise else out


def build_resenc(plan: Plan, *, deep_supervision: bool = True, out_channels: int | None = None,
                 onednn: bool = True) -> ResEncUNet:
    """The ResEnc network of ``plan`` (``plan.network`` resenc_m or resenc_l); arguments and
    output as :func:`nnpipe.model.build_unet`."""
    if not network_preset(plan.network).residual:
        raise ValueError(f"plan for {plan.dataset} {plan.dim}D has network {plan.network!r}, "
                         "not a residual-encoder preset")
    if len(plan.encoder_blocks) != len(plan.strides):
        raise ValueError(f"plan for {plan.dataset} {plan.dim}D ({plan.network}) has "
                         f"{len(plan.encoder_blocks)} encoder block counts for "
                         f"{len(plan.strides)} levels; they must match")
    heads = deep_supervision_heads(plan) if deep_supervision else 0
    net = ResEncUNet(plan.dim, plan.input_channels, out_channels or plan.num_classes,
                     plan.kernels, plan.strides, plan.filters, plan.encoder_blocks, heads)
    return use_onednn(net) if onednn and plan.dim == 3 else net
