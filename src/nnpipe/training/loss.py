"""Dice + cross-entropy, summed over deep-supervision heads with halving weights."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss


class DeepSupervisionLoss(torch.nn.Module):
    """MONAI ``DiceCELoss`` (softmax, one-hot target, background included in CE only).

    Accepts logits ``(B, K, *S)`` or, with deep supervision, ``(B, H, K, *S)`` where head 0 is
    the full-resolution output; head ``i`` weighs ``0.5**i`` and the weights are normalized to
    sum to 1 (nnU-Net's scheme). Target: ``(B, 1, *S)`` integer labels.
    ``base`` replaces Dice + CE per head (region mode passes
    :class:`~nnpipe.training.regions.RegionLoss`).
    """

    def __init__(self, base: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.dice_ce = base or DiceCELoss(to_onehot_y=True, softmax=True,
                                          include_background=False, batch=True,
                                          smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() == target.dim():
            return self.dice_ce(logits.float(), target)
        heads = logits.shape[1]
        weights = torch.tensor([0.5**i for i in range(heads)])
        weights = weights / weights.sum()
        return sum(w * self.dice_ce(logits[:, i].float(), target)
                   for i, w in enumerate(weights.tolist()))
