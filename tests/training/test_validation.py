"""Validation in chunks of the training batch size, sharded over ranks, summed exactly."""

from __future__ import annotations

import pytest
import torch

from nnpipe.labels import LabelScheme
from nnpipe.training import distributed as D
from nnpipe.training import validation as V
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.precision import get_precision
from nnpipe.training.regions import dice_from_counts, head_loss

CPU = torch.device("cpu")
FP32 = get_precision("fp32", CPU)


class _Recorder(torch.nn.Module):
    """Logits that are a fixed function of the image; records each forward's batch."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batches: list[list[int]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.batches.append(image[:, 0, 0, 0].long().tolist())  # patch ids, see _patches
        scale = torch.arange(self.num_classes, dtype=torch.float32).view(1, -1, 1, 1)
        return image[:, 1:2] * scale - scale**2 / 2


def _patches(n: int, num_classes: int = 3) -> V.ValidationPatches:
    """``n`` 2D patches (2 channels, 6x6): channel 0 holds the patch id in voxel (0, 0)."""
    g = torch.Generator().manual_seed(1)
    seg = torch.randint(0, num_classes, (n, 1, 6, 6), generator=g)
    image = torch.stack([torch.zeros(n, 6, 6), seg[:, 0].float() +
                         0.8 * torch.rand(n, 6, 6, generator=g) - 0.4], dim=1)
    image[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return V.ValidationPatches(image, seg)


def _validate(model, patches, batch_size, info, loss_fn=None):
    return V.validate(model, patches, loss_fn or DeepSupervisionLoss(), 3, batch_size, FP32,
                      torch.contiguous_format, info)


@pytest.mark.parametrize(("n", "batch", "rank", "world", "seen"), [
    (5, 2, 0, 1, [[0, 1], [2, 3], [4]]),
    (5, 2, 0, 2, [[0, 2], [4]]),
    (5, 2, 1, 2, [[1, 3]]),
    (8, 4, 3, 4, [[3, 7]]),
    (2, 2, 2, 4, []),  # fewer patches than ranks: this rank scores none, still reduces
])
def test_validation_runs_in_batch_sized_chunks_of_this_ranks_shard(monkeypatch, n, batch, rank,
                                                                   world, seen):
    reduced: list[torch.Tensor] = []
    monkeypatch.setattr(D, "all_reduce_sum", lambda t, info: reduced.append(t.clone()) or t)
    model = _Recorder(3)
    _validate(model, _patches(n), batch, D.DistInfo(rank, world, rank, CPU))
    assert model.batches == seen
    assert len(reduced) == 1 and reduced[0].shape == (2 + 3 * 2,)  # loss, n, 2 classes x 3


def test_sums_over_ranks_give_the_dice_of_all_patches_at_once(monkeypatch):
    """Two ranks' sums, added as the all-reduce would, equal one pass over every patch."""
    patches, sums = _patches(7), []
    monkeypatch.setattr(D, "all_reduce_sum", lambda t, info: sums.append(t) or t)
    for rank in (0, 1):
        _validate(_Recorder(3), patches, 2, D.DistInfo(rank, 2, rank, CPU))
    total = sums[0] + sums[1]
    with torch.inference_mode():
        logits = _Recorder(3)(patches.image)
    whole = dice_from_counts(V.class_counts(logits, patches.seg, 3))
    assert dice_from_counts(total[2:].view(-1, 3)) == pytest.approx(whole)
    assert total[1] == 7


def test_region_mode_counts_regions():
    patches = _patches(3, num_classes=4)
    model = torch.nn.Conv2d(2, 3, 1)
    region = DeepSupervisionLoss(head_loss(LabelScheme.from_values(
        {0: 'b', 1: 'a', 2: 'c', 3: 'd'}, regions=True)))
    loss, dice = _validate(model, patches, 2, D.DistInfo(0, 1, 0, CPU), loss_fn=region)
    assert len(dice) == 3 and all(0.0 <= d <= 1.0 for d in dice) and loss > 0


def test_chunks_rejects_a_zero_size():
    with pytest.raises(ValueError, match="at least 1, got 0"):
        list(V.chunks([1, 2], 0))
