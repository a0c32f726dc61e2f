"""U-Net construction from a :class:`~nnpipe.planning.plan.Plan`.

The plan fixes the topology (kernels, strides, filters per level); this module only maps it
onto MONAI's ``DynUNet`` with the reference's choices: instance norm, LeakyReLU(0.01),
strided convolutions down, transposed convolutions up, optional deep supervision.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet

from nnpipe.planning.plan import Plan

# Extra supervised decoder outputs besides the full-resolution one (nnU-Net and the reference
# supervise the two levels below the top; fewer when the network is shallow).
MAX_DEEP_SUPERVISION_HEADS = 2


def deep_supervision_heads(plan: Plan) -> int:
    """How many extra decoder heads a network for ``plan`` gets: at most 2, at most levels - 2."""
    return max(0, min(MAX_DEEP_SUPERVISION_HEADS, len(plan.strides) - 2))


def build_unet(plan: Plan, *, deep_supervision: bool = True,
               out_channels: int | None = None) -> DynUNet:
    """Build the network for ``plan``.

    Input ``(B, C, *patch)`` with ``C = plan.num_channels``; output logits
    ``(B, K, *patch)`` with ``K = plan.num_classes``. In training mode with deep supervision
    MONAI returns ``(B, 1 + heads, K, *patch)``: the full-resolution output first, then the
    heads upsampled to the patch size.
    """
    heads = deep_supervision_heads(plan) if deep_supervision else 0
    if len(plan.kernels) != len(plan.strides) or len(plan.filters) != len(plan.strides):
        raise ValueError(f"plan for {plan.dataset} {plan.dim}D has {len(plan.kernels)} kernels, "
                         f"{len(plan.strides)} strides and {len(plan.filters)} filter counts; "
                         "they must match (one per level)")
    return DynUNet(
        spatial_dims=plan.dim,
        in_channels=plan.num_channels,
        out_channels=out_channels or plan.num_classes,
        kernel_size=[list(k) for k in plan.kernels],
        strides=[list(s) for s in plan.strides],
        upsample_kernel_size=[list(s) for s in plan.strides[1:]],
        filters=list(plan.filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=heads > 0,
        deep_supr_num=max(heads, 1),
        res_block=False,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
