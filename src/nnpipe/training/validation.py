"""Validation after each epoch: fixed patches, scored in chunks, sharded over ranks.

One forward pass over all ``val_patches`` needs ``val_patches / batch_size`` times the
activations of a training step (8x at 128^3 with the defaults), on every rank. Instead, rank
``r`` of ``W`` scores patches ``r, r + W, ...`` in chunks of at most the training batch size.
Each chunk adds its loss times its size, its size, and per foreground class (or region) the
voxel counts |P and R|, |P|, |R| to one small float64 vector, summed over ranks once at the
end. Dice from the summed counts equals the Dice of all patches in one batch; the loss is
the mean over patches of the chunk losses (Dice + CE's Dice term pools over a chunk).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from nnpipe.training import distributed as D
from nnpipe.training import regions as R
from nnpipe.training.precision import Precision, autocast


@dataclass(frozen=True)
class ValidationPatches:
    """The fixed validation patches, on the CPU (each chunk is copied to the device)."""

    image: torch.Tensor  # (N, C, *patch) float32
    seg: torch.Tensor  # (N, 1, *patch) integer labels


def shard(n: int, info: D.DistInfo) -> list[int]:
    """The patch indices rank ``info.rank`` scores: every ``world_size``-th from its rank
    (empty when there are fewer patches than ranks)."""
    return list(range(info.rank, n, info.world_size))


def chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    """``indices`` in consecutive pieces of at most ``size`` (>= 1)."""
    if size < 1:
        raise ValueError(f"validation chunk size must be at least 1, got {size!r}")
    for start in range(0, len(indices), size):
        yield list(indices[start: start + size])


def class_counts(logits: torch.Tensor, seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """:func:`~nnpipe.training.regions.dice_counts` of the argmax for classes 1..K-1.

    ``logits`` ``(B, K, *S)``, ``seg`` ``(B, 1, *S)`` on the same device; returns
    ``(K - 1, 3)`` float64 on the CPU. Unannotated voxels of sparse annotations (``seg``
    holds the ignore index ``K`` there) count in neither the prediction nor the reference.
    """
    view = (1, -1) + (1,) * (seg.dim() - 2)
    classes = torch.arange(1, num_classes, device=logits.device).view(view)
    pred = (logits.argmax(1, keepdim=True) == classes) & (seg < num_classes)
    return R.dice_counts(pred, seg == classes)


@torch.inference_mode()
def validate(model: torch.nn.Module, patches: ValidationPatches, loss_fn: torch.nn.Module,
             num_classes: int, batch_size: int, precision: Precision,
             memory_format: torch.memory_format, info: D.DistInfo) -> tuple[float, list[float]]:
    """Mean validation loss and Dice per foreground class (or region), over all ranks.

    Every rank must call this (the sums are all-reduced). ``model`` in eval mode returns
    ``(B, K, *patch)`` logits; at most ``batch_size`` patches go through it at once.
    """
    totals: torch.Tensor | None = None
    for idx in chunks(shard(len(patches.image), info), batch_size):
        image = patches.image[idx].to(info.device).contiguous(memory_format=memory_format)
        seg = patches.seg[idx].to(info.device)
        with autocast(precision, info.device):
            logits = model(image).float()
        loss = loss_fn(logits, seg).double().cpu().view(1)
        counts = R.validation_counts(logits, seg, num_classes, loss_fn, class_counts)
        row = torch.cat([loss * len(idx), torch.tensor([float(len(idx))]), counts.flatten()])
        totals = row if totals is None else totals + row
    if totals is None:  # fewer patches than ranks: this rank adds nothing
        totals = torch.zeros(2 + 3 * _scored(num_classes, loss_fn), dtype=torch.float64)
    totals = D.all_reduce_sum(totals, info)
    return float(totals[0] / totals[1]), R.dice_from_counts(totals[2:].view(-1, 3))


def _scored(num_classes: int, loss_fn: torch.nn.Module) -> int:
    """How many Dice values validation reports: regions in region mode, else K - 1."""
    base = getattr(loss_fn, "dice_ce", None)
    return len(base.regions) if isinstance(base, R.RegionLoss) else num_classes - 1
