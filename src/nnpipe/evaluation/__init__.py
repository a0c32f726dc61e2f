"""Evaluation: Dice of predicted label maps against references, per case and per class."""

from __future__ import annotations

from nnpipe.evaluation.metrics import dice_per_class, evaluate_case, evaluate_folder, mean_dice

__all__ = ["dice_per_class", "evaluate_case", "evaluate_folder", "mean_dice"]
