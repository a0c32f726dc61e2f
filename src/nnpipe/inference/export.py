"""Prediction outputs written to files beside the label maps (which
:func:`nnpipe.datasets.layout.write_prediction` writes): the probabilities ``.npz`` of
``--save-probabilities``, for nnpipe's own models and nnU-Net v2's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnpipe.io import atomic_path


def write_probabilities(path: Path | str, probs: np.ndarray, affine: np.ndarray,
                        names: Sequence[str]) -> None:
    """``probabilities`` ``(K, X, Y, Z)`` float16 in a compressed ``.npz``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, probabilities=probs.astype(np.float16), affine=affine,
                            names=np.asarray(list(names)))
