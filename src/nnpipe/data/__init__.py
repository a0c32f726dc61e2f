"""Training data: patch sampling from preprocessed cases, GPU-capable augmentation, loaders."""

from __future__ import annotations

from nnpipe.data.augment import AugmentSettings, augment
from nnpipe.data.loader import BatchLoader, loader_throughput
from nnpipe.data.sampling import PatchSampler, SamplerSettings

__all__ = [
    "AugmentSettings",
    "BatchLoader",
    "PatchSampler",
    "SamplerSettings",
    "augment",
    "loader_throughput",
]
