"""BraTS region mode: one sigmoid output per nested tumour region instead of one softmax class.

BraTS labels (MSD Task01 and the embedded dataset) are 1 edema, 2 non-enhancing core,
3 enhancing tumour. What is scored clinically are three nested regions:

* WT, whole tumour = {1, 2, 3}
* TC, tumour core  = {2, 3}
* ET, enhancing    = {3}

Generally, for sorted foreground labels ``l_1 < ... < l_n`` region ``i`` is "label >= l_i".
The network gets one output channel per region (``n`` instead of ``n + 1``), each trained as
an independent sigmoid with region Dice + binary cross-entropy; at export the regions are
thresholded at 0.5 and turned back into labels, innermost last (a voxel in ET is label 3,
in TC but not ET label 2, in WT only label 1). Evaluation scores the regions, not the labels.

Enabled by the config key ``training.regions``; the flag travels in the checkpoint's
settings, so prediction and evaluation pick it up from the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from nnpipe.metrics import ScoredClass

BRATS_REGION_NAMES = ("WT", "TC", "ET")
THRESHOLD = 0.5


def nested_regions(labels: Mapping[int, str] | Sequence[int]) -> tuple[ScoredClass, ...]:
    """The regions for a label set (background 0 included or not): region i = labels >= l_i.

    Named WT, TC, ET for the three BraTS labels, else ``ge<label>``.
    """
    fg = sorted(int(v) for v in labels if int(v) != 0)
    if not fg:
        raise ValueError("region mode needs at least one foreground label")
    names = BRATS_REGION_NAMES if fg == [1, 2, 3] else tuple(f"ge{v}" for v in fg)
    return tuple(ScoredClass(name, tuple(v for v in fg if v >= lo))
                 for name, lo in zip(names, fg, strict=True))


def output_channels(num_classes: int, regions: bool) -> int:
    """Network outputs: ``num_classes`` softmax logits, or one sigmoid per region."""
    return num_classes - 1 if regions else num_classes


def labels_to_regions(seg: torch.Tensor, regions: Sequence[ScoredClass]) -> torch.Tensor:
    """Integer labels ``(B, 1, *S)`` -> float region masks ``(B, R, *S)``."""
    lowest = [min(r.labels) for r in regions]
    return torch.cat([(seg >= lo) for lo in lowest], dim=1).float()


def regions_to_labels(probs: np.ndarray, regions: Sequence[ScoredClass],
                      threshold: float = THRESHOLD) -> np.ndarray:
    """Region probabilities ``(R, *S)`` -> labels ``(*S)`` (the smallest unsigned dtype that
    holds them): each region's lowest label where its probability exceeds ``threshold``,
    inner regions written last."""
    if probs.shape[0] != len(regions):
        raise ValueError(f"got {probs.shape[0]} region maps for {len(regions)} regions")
    top = max((max(r.labels) for r in regions), default=0)
    out = np.zeros(probs.shape[1:], dtype=np.uint8 if top <= 255 else np.uint16)
    for r, p in zip(regions, probs, strict=True):  # outermost (WT) first
        out[p > threshold] = min(r.labels)
    return out


class RegionLoss(torch.nn.Module):
    """Region Dice (sigmoid, batch Dice) + binary cross-entropy; shapes as
    :class:`~nnpipe.training.loss.DeepSupervisionLoss`: logits ``(B, R, *S)``, target
    ``(B, 1, *S)`` integer labels, converted to regions here."""

    def __init__(self, regions: Sequence[ScoredClass]) -> None:
        from monai.losses import DiceLoss  # here: prediction imports this module, not MONAI

        super().__init__()
        self.regions = tuple(regions)
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        masks = labels_to_regions(target, self.regions)
        return self.dice(logits, masks) + self.bce(logits, masks)


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


def region_dice(logits: torch.Tensor, seg: torch.Tensor,
                regions: Sequence[ScoredClass]) -> list[float]:
    """Validation Dice per region pooled over the batch (1.0 when both are empty)."""
    return dice_from_counts(region_counts(logits, seg, regions))


def region_counts(logits: torch.Tensor, seg: torch.Tensor,
                  regions: Sequence[ScoredClass]) -> torch.Tensor:
    """:func:`dice_counts` per region: prediction sigmoid(logit) > 0.5, i.e. logit > 0."""
    return dice_counts(logits > 0, labels_to_regions(seg, regions).bool())


# ---------------------------------------------------------------- trainer hooks (one line each)


def model_outputs(num_classes: int, enabled: bool) -> int:
    """``out_channels`` for :func:`nnpipe.model.build_unet` (hook for the trainer)."""
    return output_channels(num_classes, enabled)


def head_loss(labels: Mapping[int, str] | Sequence[int], enabled: bool
              ) -> torch.nn.Module | None:
    """The per-head loss in region mode, else ``None`` (Dice + CE, the default). ``labels``
    are the class indices the preprocessed maps hold (``range(num_classes)``): the regions
    "index >= i" are the regions "value >= l_i", as the value <-> index table keeps order."""
    return RegionLoss(nested_regions(labels)) if enabled else None


def validation_counts(logits: torch.Tensor, seg: torch.Tensor, num_classes: int,
                      loss_fn: torch.nn.Module,
                      default: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
                      ) -> torch.Tensor:
    """Per-region :func:`dice_counts` when ``loss_fn`` trains regions, else
    ``default(logits, seg, K)``."""
    base = getattr(loss_fn, "dice_ce", None)
    if isinstance(base, RegionLoss):
        return region_counts(logits, seg, base.regions)
    return default(logits, seg, num_classes)
