"""Inference: sliding-window prediction of whole images with a patch-trained network."""

from __future__ import annotations

from nnpipe.inference.sliding_window import (
    Blend,
    blend_weight,
    gaussian_weight,
    predict_volume_2d,
    sliding_window,
    tile_grid,
    tile_starts,
)

__all__ = [
    "Blend",
    "blend_weight",
    "gaussian_weight",
    "predict_volume_2d",
    "sliding_window",
    "tile_grid",
    "tile_starts",
]
