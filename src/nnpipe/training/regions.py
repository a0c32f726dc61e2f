"""Region mode: one sigmoid output per region instead of one softmax class.

BraTS labels (MSD Task01 and the embedded dataset) are 1 edema, 2 non-enhancing core,
3 enhancing tumour. What is scored clinically are three nested regions:

* WT, whole tumour = {1, 2, 3}
* TC, tumour core  = {2, 3}
* ET, enhancing    = {3}

The regions are part of the plan's label concept (:class:`nnpipe.labels.LabelScheme`):
``planning.regions`` asks for these nested regions, and an nnU-Net v2 dataset.json with
region lists brings its own. The network gets one output channel per region, each trained as
an independent sigmoid with region Dice + binary cross-entropy; at export
:func:`nnpipe.labels.outputs_to_labels` thresholds them at 0.5 and writes each region's
``regions_class_order`` value, later regions over earlier ones. Evaluation scores the regions.

With sparse annotations the target's ignore index (``K``, one past the last class) marks
unannotated voxels: they are left out of the Dice sums and of the cross-entropy mean, and out
of validation Dice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from nnpipe.labels import (
    BRATS_REGION_NAMES,
    REGION_THRESHOLD,
    LabelScheme,
    ScoredClass,
    nested_regions,
)

__all__ = ["BRATS_REGION_NAMES", "THRESHOLD", "nested_regions"]  # re-exported

THRESHOLD = REGION_THRESHOLD
Regions = Sequence[ScoredClass] | Sequence[Sequence[int]]


def _members(regions: Regions) -> list[tuple[int, ...]]:
    return [tuple(r.labels) if isinstance(r, ScoredClass) else tuple(r) for r in regions]


def labels_to_regions(seg: torch.Tensor, regions: Regions) -> torch.Tensor:
    """Integer labels ``(B, 1, *S)`` -> float region masks ``(B, R, *S)``: region ``r`` is
    where ``seg`` holds one of its labels (in the labels' space: class indices in training)."""
    masks = []
    for members in _members(regions):
        m = seg == members[0]
        for v in members[1:]:
            m = m | (seg == v)
        masks.append(m)
    return torch.cat(masks, dim=1).float()


class RegionLoss(torch.nn.Module):
    """Region Dice (sigmoid, batch Dice) + binary cross-entropy; shapes as
    :class:`~nnpipe.training.loss.DeepSupervisionLoss`: logits ``(B, R, *S)``, target
    ``(B, 1, *S)`` integer labels, converted to regions here. ``regions`` are in the target's
    space (class indices); ``ignore_index``: the target value of unannotated voxels, left
    out of both terms (None: dense)."""

    def __init__(self, regions: Regions, ignore_index: int | None = None) -> None:
        from monai.losses import DiceLoss  # here: prediction imports this module, not MONAI

        super().__init__()
        self.regions = tuple(_members(regions))
        self.ignore_index = ignore_index
        self.dice = DiceLoss(sigmoid=ignore_index is None, batch=True, smooth_nr=1e-5,
                             smooth_dr=1e-5)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        masks = labels_to_regions(target, self.regions)
        if self.ignore_index is None:
            return self.dice(logits, masks) + self.bce(logits, masks)
        annotated = (target != self.ignore_index).to(logits.dtype)  # (B, 1, *S)
        masks = masks * annotated
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, masks, reduction="none")
        bce = (bce * annotated).sum() / (annotated.sum() * logits.shape[1]).clamp_min(1.0)
        return self.dice(torch.sigmoid(logits) * annotated, masks) + bce


def dice_counts(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Voxel counts ``(n, 3)`` float64 on the CPU: per channel |P and R|, |P|, |R|, summed
    over the batch and space, for boolean masks ``(B, n, *S)``. Counts add up over chunks and
    ranks, so Dice from their sums equals the Dice of all patches in one batch."""
    dims = [0, *range(2, pred.dim())]
    return torch.stack([(pred & ref).sum(dims), pred.sum(dims), ref.sum(dims)],
                       dim=1).double().cpu()


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """Dice per row of :func:`dice_counts` sums: 2|P and R| / (|P| + |R|), 1.0 when both
    are empty (nothing to find, nothing found)."""
    return [1.0 if p + r == 0 else 2.0 * tp / (p + r) for tp, p, r in counts.tolist()]


def region_dice(logits: torch.Tensor, seg: torch.Tensor, regions: Regions,
                ignore_index: int | None = None) -> list[float]:
    """Validation Dice per region pooled over the batch (1.0 when both are empty)."""
    return dice_from_counts(region_counts(logits, seg, regions, ignore_index))


def region_counts(logits: torch.Tensor, seg: torch.Tensor, regions: Regions,
                  ignore_index: int | None = None) -> torch.Tensor:
    """:func:`dice_counts` per region: prediction sigmoid(logit) > 0.5, i.e. logit > 0;
    unannotated voxels (``seg == ignore_index``) counted in neither."""
    pred = logits > 0
    if ignore_index is not None:
        pred = pred & (seg != ignore_index)
    return dice_counts(pred, labels_to_regions(seg, regions).bool())


# ---------------------------------------------------------------- trainer hooks (one line each)


def head_loss(scheme: LabelScheme) -> torch.nn.Module:
    """The per-head loss of a label scheme: region Dice + BCE in region mode, else Dice + CE;
    both leave the scheme's ignore voxels out. The preprocessed maps hold class indices, so
    the regions are taken as indices (:attr:`LabelScheme.index_regions`)."""
    from nnpipe.training.loss import DiceCELoss

    ignore = scheme.table.ignore_index
    if scheme.region_mode:
        return RegionLoss(scheme.index_regions, ignore)
    return DiceCELoss(ignore=ignore is not None)


def validation_counts(logits: torch.Tensor, seg: torch.Tensor, num_classes: int,
                      loss_fn: torch.nn.Module,
                      default: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
                      ) -> torch.Tensor:
    """Per-region :func:`dice_counts` when ``loss_fn`` trains regions, else
    ``default(logits, seg, K)``."""
    base = getattr(loss_fn, "dice_ce", None)
    if isinstance(base, RegionLoss):
        return region_counts(logits, seg, base.regions, base.ignore_index)
    return default(logits, seg, num_classes)
