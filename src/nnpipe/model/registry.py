"""The one place networks are found by name: ``planning.network`` -> builder.

STYLE.md rule 6: a variant chosen by name is one explicit ``dict[str, Callable]`` in one
module. Every network :mod:`nnpipe.planning.network` can plan has a builder here
(``tests/model/test_registry.py`` checks both lists agree), and :func:`build_unet` is the only
way the trainer, prediction and the benchmark build one.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from nnpipe.model.resenc import build_resenc
from nnpipe.model.unet import build_plain_unet
from nnpipe.planning.plan import Plan


class NetworkBuilder(Protocol):
    def __call__(self, plan: Plan, *, deep_supervision: bool = True,
                 out_channels: int | None = None, onednn: bool = True) -> nn.Module: ...


BUILDERS: dict[str, NetworkBuilder] = {
    "plain": build_plain_unet,
    "resenc_m": build_resenc,
    "resenc_l": build_resenc,
}


def build_unet(plan: Plan, *, deep_supervision: bool = True,
               out_channels: int | None = None, onednn: bool = True) -> nn.Module:
    """Build the network for ``plan``: the builder :data:`BUILDERS` names for
    ``plan.network`` (:class:`~nnpipe.model.unet.UNet` for ``plain``, the residual-encoder
    :class:`~nnpipe.model.resenc.ResEncUNet` for ``resenc_m``/``resenc_l``).

    Input ``(B, C, *patch)`` with ``C = plan.input_channels``; output logits
    ``(B, K, *patch)`` with ``K = plan.num_classes`` (or ``out_channels``). In training mode
    with deep supervision the output is ``(B, 1 + heads, K, *patch)``: the full-resolution
    output first, then the heads upsampled to the patch size.

    ``onednn``: 3D convolutions are :class:`~nnpipe.model.onednn.OneDnnConv3d`, so that
    float32 training and prediction on CPUs stay in oneDNN at batch 1 (forward and
    backward); on GPUs and under autocast they are plain ``nn.Conv3d`` calls. ``False``
    builds plain ``nn.Conv3d`` modules (the reference the tests compare against). Both
    have the same parameters, state-dict keys and seeded weights.

    Raises:
        ValueError: if the plan's per-level lists differ in length, or its network has no
            builder (naming the known ones).
    """
    if len(plan.kernels) != len(plan.strides) or len(plan.filters) != len(plan.strides):
        raise ValueError(f"plan for {plan.dataset} {plan.dim}D has {len(plan.kernels)} kernels, "
                         f"{len(plan.strides)} strides and {len(plan.filters)} filter counts; "
                         "they must match (one per level)")
    if plan.network not in BUILDERS:
        raise ValueError(f"plan for {plan.dataset} {plan.dim}D has network {plan.network!r}; "
                         f"known: {', '.join(BUILDERS)}")
    return BUILDERS[plan.network](plan, deep_supervision=deep_supervision,
                                  out_channels=out_channels, onednn=onednn)
