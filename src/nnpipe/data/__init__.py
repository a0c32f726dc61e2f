"""Training data: patch sampling from preprocessed cases, GPU-capable augmentation, loaders.

The DALI backend (:mod:`nnpipe.data.dali`) is imported only on demand (``make_loader("dali",
...)``), so this package works without nvidia-dali.
"""

from __future__ import annotations

from nnpipe.data.augment import EXTRA_TRANSFORMS, AugmentSettings, augment
from nnpipe.data.loader import (
    LOADER_BACKENDS,
    BatchLoader,
    Loader,
    loader_throughput,
    make_loader,
)
from nnpipe.data.sampling import PatchSampler, SamplerSettings

__all__ = [
    "EXTRA_TRANSFORMS",
    "LOADER_BACKENDS",
    "AugmentSettings",
    "BatchLoader",
    "Loader",
    "PatchSampler",
    "SamplerSettings",
    "augment",
    "loader_throughput",
    "make_loader",
]
