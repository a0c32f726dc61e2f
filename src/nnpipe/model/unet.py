"""U-Net construction from a :class:`~nnpipe.planning.plan.Plan`.

The plan fixes the topology (kernels, strides, filters per level); :class:`UNet` builds it
with the reference's choices: two convolutions per level, each followed by instance norm
(affine) and LeakyReLU(0.01), strided convolutions down, transposed convolutions (kernel =
stride) up, the skip concatenated after the up-sampled features, a 1x1 convolution out, and
optional deep-supervision heads on the decoder levels below the top.

This is the topology of MONAI's ``DynUNet`` (``res_block=False``), written as a plain module
of our own because it is measured faster where it matters (DESIGN.md allows exactly that):
importing MONAI costs 1.4-2.8 s per process (``import monai`` loads every MONAI subpackage),
which is most of the fixed cost of ``nnpipe predict`` on a few cases, and the forward pass is
a straight loop instead of a recursion of skip layers. Two properties keep it
interchangeable with ``DynUNet``, and ``tests/model`` pins both:

* the same parameter names (``input_block.conv1.conv.weight``, ``upsamples.0.transp_conv.
  conv.weight``, ...), so checkpoints written with ``DynUNet`` load unchanged (its
  ``skip_layers.*`` entries are aliases of the same tensors and are dropped on load);
* the same modules created in the same order and initialised the same way (Kaiming normal,
  a = 0.01; zero biases), so a seeded run builds bit-identical weights and trains the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnpipe.model.norm import InstanceNorm2d, InstanceNorm3d
from nnpipe.model.onednn import use_onednn
from nnpipe.model.upsample import up_concat
from nnpipe.planning import network as N
from nnpipe.planning.plan import Plan

# Extra supervised decoder outputs besides the full-resolution one (nnU-Net and the reference
# supervise the two levels below the top; fewer when the network is shallow).
MAX_DEEP_SUPERVISION_HEADS = N.MAX_DEEP_SUPERVISION_HEADS
LEAKY_SLOPE = 0.01
# state-dict entries of MONAI DynUNet checkpoints that alias other entries
DYNUNET_ALIAS_PREFIX = "skip_layers."

# The layer classes by dimensionality. Typed as plain callables: kernel, stride and padding
# are tuples of length dim, which torch's per-class stubs (tuple[int, int] for 2D, of three
# ints for 3D) cannot check when dim is a runtime value.
_CONV: dict[int, Callable[..., nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, Callable[..., nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
# instance norms that run the group-norm kernel on CPUs (nnpipe.model.norm)
_NORM: dict[int, Callable[..., nn.Module]] = {2: InstanceNorm2d, 3: InstanceNorm3d}


def deep_supervision_heads(plan: Plan) -> int:
    """How many extra decoder heads a network for ``plan`` gets: at most 2, at most levels - 2."""
    return N.deep_supervision_heads(len(plan.strides))


def _named(conv: nn.Module) -> nn.Sequential:
    """``conv`` under the name ``conv`` (the parameter path DynUNet checkpoints use)."""
    return nn.Sequential(OrderedDict(conv=conv))


def _padding(kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """Padding that maps size ``n`` to ``ceil(n / stride)`` for odd kernels."""
    return tuple((k - s + 1) // 2 for k, s in zip(kernel, stride, strict=True))


class ConvBlock(nn.Module):
    """conv (stride) -> instance norm -> LeakyReLU -> conv -> instance norm -> LeakyReLU."""

    def __init__(self, dim: int, in_channels: int, out_channels: int,
                 kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        conv = _CONV[dim]
        self.conv1 = _named(conv(in_channels, out_channels, tuple(kernel), tuple(stride),
                                 _padding(kernel, stride), bias=False))
        ones = (1,) * dim
        self.conv2 = _named(conv(out_channels, out_channels, tuple(kernel), ones,
                                 _padding(kernel, ones), bias=False))
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.norm1 = _NORM[dim](out_channels, affine=True)
        self.norm2 = _NORM[dim](out_channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(self.norm1(self.conv1(x)))
        return self.lrelu(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """Transposed convolution (kernel = stride) up, concatenate the skip, :class:`ConvBlock`."""

    def __init__(self, dim: int, in_channels: int, out_channels: int,
                 kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.transp_conv = _named(_CONV_T[dim](in_channels, out_channels, tuple(stride),
                                               tuple(stride), bias=False))
        self.conv_block = ConvBlock(dim, 2 * out_channels, out_channels, kernel, (1,) * dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(up_concat(self.transp_conv, x, skip))


def _head(dim: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 convolution with bias to the output channels (``<name>.conv.conv.weight``)."""
    return nn.Sequential(OrderedDict(conv=_named(_CONV[dim](in_channels, out_channels, 1))))


class UNet(nn.Module):
    """The U-Net of a plan: ``(B, C, *patch)`` -> logits ``(B, K, *patch)``.

    Level ``i`` (0 = full resolution) has ``filters[i]`` channels, kernel ``kernels[i]`` and
    is entered with stride ``strides[i]``. In training mode with ``heads > 0`` the output is
    ``(B, 1 + heads, K, *patch)``: the full-resolution logits first, then the heads of levels
    1..heads, each upsampled (nearest) to the patch size.
    """

    def __init__(self, dim: int, in_channels: int, out_channels: int,
                 kernels: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 filters: Sequence[int], heads: int = 0) -> None:
        super().__init__()
        n = len(filters)
        if n < 2 or len(kernels) != n or len(strides) != n:
            raise ValueError(f"a U-Net needs >= 2 levels and one kernel, stride and filter "
                             f"count per level; got {len(kernels)} kernels, {len(strides)} "
                             f"strides and {n} filter counts")
        if not 0 <= heads <= n - 2:
            raise ValueError(f"deep-supervision heads must be in [0, {n - 2}] for {n} levels, "
                             f"got {heads}")
        self.heads = heads
        # creation order = DynUNet's, so seeded default initialisation draws the same numbers
        self.input_block = ConvBlock(dim, in_channels, filters[0], kernels[0], strides[0])
        self.downsamples = nn.ModuleList(
            ConvBlock(dim, filters[i - 1], filters[i], kernels[i], strides[i])
            for i in range(1, n - 1))
        self.bottleneck = ConvBlock(dim, filters[-2], filters[-1], kernels[-1], strides[-1])
        # deepest first: up-block j takes level n-1-j up to level n-2-j
        self.upsamples = nn.ModuleList(
            UpBlock(dim, filters[i + 1], filters[i], kernels[i + 1], strides[i + 1])
            for i in reversed(range(n - 1)))
        self.output_block = _head(dim, filters[0], out_channels)
        torch.rand(1)  # DynUNet draws one number here; drawing it too keeps seeded weights equal
        if heads:
            self.deep_supervision_heads = nn.ModuleList(
                _head(dim, filters[i + 1], out_channels) for i in range(heads))
        self.apply(_init_weights)
        self.register_load_state_dict_pre_hook(_drop_dynunet_aliases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.input_block(x)]
        for block in self.downsamples:
            skips.append(block(skips[-1]))
        x = self.bottleneck(skips[-1])
        supervise = self.training and self.heads > 0
        extra: list[torch.Tensor] = []
        for j, up in enumerate(self.upsamples):
            level = len(self.upsamples) - 1 - j  # the level x is at after this block
            x = up(x, skips[level])
            if supervise and 1 <= level <= self.heads:
                extra.append(self.deep_supervision_heads[level - 1](x))
        out = self.output_block(x)
        return stack_deep_supervision(out, extra) if supervise else out


def stack_deep_supervision(out: torch.Tensor, extra: Sequence[torch.Tensor]) -> torch.Tensor:
    """The training output ``(N, 1 + heads, K, *spatial)``: the full-resolution logits ``out``
    ``(N, K, *spatial)``, then each deep-supervision head's logits (``extra``, collected on
    the way up, so the deepest first) upsampled to ``out``'s size by nearest neighbour,
    listed from level 1 down."""
    upsampled = [F.interpolate(h, out.shape[2:]) for h in reversed(extra)]
    return torch.stack([out, *upsampled], dim=1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _drop_dynunet_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                          *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + DYNUNET_ALIAS_PREFIX)]:
        del state_dict[key]


def build_plain_unet(plan: Plan, *, deep_supervision: bool = True,
                     out_channels: int | None = None, onednn: bool = True) -> nn.Module:
    """The plain :class:`UNet` of ``plan`` (``plan.network == "plain"``); arguments and output
    as :func:`nnpipe.model.build_unet`, which picks this builder or the residual one."""
    if N.network_preset(plan.network).residual:
        raise ValueError(f"plan for {plan.dataset} {plan.dim}D has network {plan.network!r}, "
                         "not the plain U-Net")
    heads = deep_supervision_heads(plan) if deep_supervision else 0
    net = UNet(plan.dim, plan.input_channels, out_channels or plan.num_classes,
               plan.kernels, plan.strides, plan.filters, heads)
    return use_onednn(net) if onednn and plan.dim == 3 else net


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
