"""Dice + cross-entropy, summed over deep-supervision heads with halving weights.

The cross-entropy is computed from a one-hot target (``-sum(onehot * log_softmax)``), not
with ``nll_loss``: ``nll_loss`` has no deterministic CUDA kernel, so
``training.deterministic`` would raise at the first loss on a GPU. The one-hot product is
element-wise plus plain reductions, deterministic on every device, and the one-hot target is
shared with the Dice term (which needs it anyway), so it costs no extra memory pass.

Sparse annotations (:attr:`nnpipe.labels.LabelScheme.ignore`): unannotated voxels hold the
class index ``K`` (one past the last class, :attr:`nnpipe.labels.LabelTable.ignore_index`).
Both terms then run over annotated voxels only: the probabilities are zeroed where the target
is ``K`` (its one-hot row is all zero already), so the Dice sums see annotated voxels only,
and the cross-entropy is averaged over annotated voxels. The deep-supervision heads are
upsampled to the patch (:mod:`nnpipe.model.unet`), so the one full-resolution mask holds for
every head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels ``(B, 1, *S)`` -> one-hot ``(B, K, *S)`` of ``dtype``.

    A comparison with ``arange(K)`` rather than ``scatter``: element-wise, hence deterministic
    on CUDA. Labels outside ``[0, K)`` give an all-zero row (the ignore index ``K`` of sparse
    annotations relies on this; checking would cost a device synchronisation per step).
    """
    classes = torch.arange(num_classes, device=target.device)
    return (target == classes.view(1, -1, *([1] * (target.dim() - 2)))).to(dtype)


class DiceCELoss(torch.nn.Module):
    """Soft Dice over foreground classes (pooled over the batch) + cross-entropy over all
    classes, both means; the same function as MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)``.

    Logits ``(B, K, *S)`` float32, target ``(B, 1, *S)`` integer labels; returns a scalar.
    With ``ignore=True`` target voxels equal to ``K`` are unannotated: the loss equals the
    dense loss over the annotated voxels alone (module docstring).
    """

    def __init__(self, ignore: bool = False) -> None:
        super().__init__()
        self.ignore = ignore
        self.dice = DiceLoss(softmax=not ignore, include_background=False, batch=True,
                             smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = one_hot(target, logits.shape[1], logits.dtype)
        if not self.ignore:
            ce = -(onehot * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            return self.dice(logits, onehot) + ce
        annotated = (target < logits.shape[1]).to(logits.dtype)  # (B, 1, *S)
        log_p = F.log_softmax(logits, dim=1)
        ce = -(onehot * log_p).sum() / annotated.sum().clamp_min(1.0)
        return self.dice(log_p.exp() * annotated, onehot) + ce


class DeepSupervisionLoss(torch.nn.Module):
    """:class:`DiceCELoss` (or ``base``) summed over deep-supervision heads.

    Accepts logits ``(B, K, *S)`` or, with deep supervision, ``(B, H, K, *S)`` where head 0 is
    the full-resolution output; head ``i`` weighs ``0.5**i`` and the weights are normalized to
    sum to 1 (nnU-Net's scheme). Target: ``(B, 1, *S)`` integer labels.
    ``base`` replaces Dice + CE per head (:func:`nnpipe.training.regions.head_loss`).
    """

    def __init__(self, base: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.dice_ce = base or DiceCELoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() == target.dim():
            return self.dice_ce(logits.float(), target)
        heads = logits.shape[1]
        weights = [0.5**i for i in range(heads)]
        total = sum(weights)
        return sum(w / total * self.dice_ce(logits[:, i].float(), target)
                   for i, w in enumerate(weights))
