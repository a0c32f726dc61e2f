"""Network presets (``planning.network``) and their GPU-memory model: pure numbers, no torch.

``plain`` is the reference's U-Net (:class:`nnpipe.model.unet.UNet`), planned by voxel
budgets. ``resenc_m`` and ``resenc_l`` are nnU-Net v2's residual-encoder presets (Isensee et
al. 2024, "nnU-Net Revisited"): residual basic blocks in the encoder, more of them at deeper
levels, a light decoder. M and L share the architecture rule; they differ in the GPU memory
the planner may fill (about 8 GB and 24 GB), so L gets a larger patch or batch and, where
the larger patch allows another downsampling, one more level.

:func:`layers` lists every convolution a network for a topology holds, in the same structure
the modules in :mod:`nnpipe.model` build (``tests/planning/test_network_presets.py`` checks
the parameter count against the built modules). From it come the parameter count and the
feature-map volume that :func:`estimate_vram_gb` turns into training memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PLAIN = "plain"


@dataclass(frozen=True)
class NetworkPreset:
    """One ``planning.network`` value.

    ``residual``: residual encoder (ResEnc) instead of the plain U-Net. ``vram_target_gb``:
    GPU memory a training step may use (ResEnc presets; 0 for ``plain``, which is planned by
    the voxel budgets of :class:`~nnpipe.planning.planner.PlannerSettings`).
    """

    name: str
    residual: bool
    vram_target_gb: float


NETWORKS: dict[str, NetworkPreset] = {p.name: p for p in (
    NetworkPreset(PLAIN, residual=False, vram_target_gb=0.0),
    NetworkPreset("resenc_m", residual=True, vram_target_gb=8.0),
    NetworkPreset("resenc_l", residual=True, vram_target_gb=24.0),
)}

# Residual blocks per encoder level (level 0 = full resolution), the schedule of nnU-Net v2's
# ResEnc presets: few blocks where feature maps are large (memory), more where they are small
# (capacity at little memory cost). Levels past the table repeat its last entry.
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6)
# Convolutions (conv-norm-act) per decoder level of a ResEnc network: one, as in nnU-Net v2's
# presets; the encoder carries the capacity, the decoder only merges the skip.
RESENC_DECODER_CONVS = 1
# Extra supervised decoder outputs besides the full-resolution one (same rule for every
# network, so the trainer's loss weights do not depend on the preset).
MAX_DEEP_SUPERVISION_HEADS = 2


def network_preset(name: str) -> NetworkPreset:
    """The preset called ``name``; ``ValueError`` lists the known ones."""
    if name not in NETWORKS:
        raise ValueError(f"planning.network {name!r} is unknown; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]


def encoder_blocks(name: str, n_levels: int) -> tuple[int, ...]:
    """Residual blocks per level for network ``name`` (``()`` for ``plain``)."""
    if not network_preset(name).residual:
        return ()
    return tuple(RESENC_BLOCKS[min(i, len(RESENC_BLOCKS) - 1)] for i in range(n_levels))


def deep_supervision_heads(n_levels: int) -> int:
    """Extra decoder heads of a network with ``n_levels`` levels: at most 2, at most n - 2."""
    return max(0, min(MAX_DEEP_SUPERVISION_HEADS, n_levels - 2))


@dataclass(frozen=True)
class Conv:
    """One convolution: channels in and out, kernel voxels, output voxels per sample, and
    whether it has a bias (the 1x1 heads) or an affine instance norm after it (all others)."""

    c_in: int
    c_out: int
    kernel_voxels: int
    out_voxels: int
    bias: bool = False
    norm: bool = True

    @property
    def parameters(self) -> int:
        return (self.c_in * self.c_out * self.kernel_voxels + (self.c_out if self.bias else 0)
                + (2 * self.c_out if self.norm else 0))


def layers(patch: Sequence[int], kernels: Sequence[Sequence[int]],
           strides: Sequence[Sequence[int]], filters: Sequence[int], in_channels: int,
           out_channels: int, blocks: Sequence[int] = (), heads: int = 0) -> list[Conv]:
    """Every convolution of the network (``blocks`` empty: plain U-Net; else ResEnc).

    Transposed convolutions count as convolutions with kernel = stride; deep-supervision
    heads are included when ``heads > 0``.
    """
    n = len(filters)
    voxels = []
    size = [int(p) for p in patch]
    for stride in strides:
        size = [math.ceil(s / st) for s, st in zip(size, stride, strict=True)]
        voxels.append(math.prod(size))
    kvox = [math.prod(k) for k in kernels]
    svox = [math.prod(s) for s in strides]
    convs: list[Conv] = []
    if blocks:
        convs.append(Conv(in_channels, filters[0], kvox[0], voxels[0]))  # stem
        for i in range(n):
            for j in range(blocks[i]):
                c_in = filters[i - 1] if (i > 0 and j == 0) else filters[i]
                convs.append(Conv(c_in, filters[i], kvox[i], voxels[i]))
                convs.append(Conv(filters[i], filters[i], kvox[i], voxels[i]))
                if c_in != filters[i] or (j == 0 and svox[i] > 1):
                    convs.append(Conv(c_in, filters[i], 1, voxels[i]))  # projection
        dec_kernels, dec_convs = kvox[:-1], RESENC_DECODER_CONVS
    else:
        for i in range(n):
            c_in = in_channels if i == 0 else filters[i - 1]
            convs.append(Conv(c_in, filters[i], kvox[i], voxels[i]))
            convs.append(Conv(filters[i], filters[i], kvox[i], voxels[i]))
        # the plain U-Net's decoder level i uses the kernel of level i + 1 (MONAI DynUNet's
        # convention, kept for checkpoint compatibility)
        dec_kernels, dec_convs = kvox[1:], 2
    for i in reversed(range(n - 1)):
        convs.append(Conv(filters[i + 1], filters[i], svox[i + 1], voxels[i], norm=False))
        for c in range(dec_convs):
            convs.append(Conv(2 * filters[i] if c == 0 else filters[i], filters[i],
                              dec_kernels[i], voxels[i]))
    for i in range(1 + heads):
        convs.append(Conv(filters[i], out_channels, 1, voxels[i], bias=True, norm=False))
    return convs


def parameter_count(convs: Sequence[Conv]) -> int:
    return sum(c.parameters for c in convs)


def feature_map_voxels(convs: Sequence[Conv]) -> int:
    """Output elements of all convolutions for one sample (channels x voxels)."""
    return sum(c.c_out * c.out_voxels for c in convs)


# --- GPU memory of one training step -------------------------------------------------------
# Elements autograd keeps for the backward pass, per element of convolution output. Measured
# on CPU with torch.autograd.graph.saved_tensors_hooks (unique storages, parameters
# excluded) for one training forward with deep supervision: 1.91-1.93 for plain and ResEnc
# networks of 4-6 levels, 2D and 3D (torch 2.x; the conv output kept by the norm, the
# activation kept by the in-place LeakyReLU and the next convolution, plus concatenations and
# pooled skips). tests/planning/test_network_presets.py re-measures it (fails beyond 5 %).
SAVED_PER_CONV_OUTPUT = 1.92
# Bytes per saved element: mixed precision (amp/bf16) keeps convolution outputs in 16 bits,
# which is how GPU studies train; float32 training needs about twice the activation memory.
ACTIVATION_BYTES = 2
# float32 weights, gradients and Adam's two moments.
PARAMETER_STATE_BYTES = 16
# CUDA context, cuDNN workspaces and allocator slack that do not scale with the batch: an
# assumption (about 1 GB is typical), not yet measured against torch.cuda.max_memory_allocated.
FIXED_OVERHEAD_GB = 1.0
GB = 1e9


def estimate_vram_gb(convs: Sequence[Conv], batch_size: int) -> float:
    """GPU memory (GB, 1e9 bytes) of one mixed-precision training step: activations kept for
    backward for ``batch_size`` samples, parameter and optimizer state, fixed overhead."""
    activations = batch_size * feature_map_voxels(convs) * SAVED_PER_CONV_OUTPUT * ACTIVATION_BYTES
    state = parameter_count(convs) * PARAMETER_STATE_BYTES
    return (activations + state) / GB + FIXED_OVERHEAD_GB
