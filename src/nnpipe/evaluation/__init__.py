"""Evaluation: Dice, IoU, HD95 and surface Dice of predicted label maps, per case and class."""

from __future__ import annotations

from nnpipe.metrics import (
    ScoredClass,
    dice_per_class,
    evaluate_case,
    evaluate_folder,
    hd95,
    iou,
    mean_dice,
    normalized_surface_dice,
)

__all__ = ["ScoredClass", "dice_per_class", "evaluate_case", "evaluate_folder", "hd95", "iou",
           "mean_dice", "normalized_surface_dice"]
