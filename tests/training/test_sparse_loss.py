"""Sparse annotations: the loss over a target with ignore voxels equals MONAI's dense loss
over the annotated voxels alone (softmax Dice + CE, region Dice + BCE, deep supervision),
and validation Dice counts annotated voxels only."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss as MonaiDiceCELoss
from monai.losses import DiceLoss

from nnpipe.labels import LabelScheme
from nnpipe.training.loss import DeepSupervisionLoss, DiceCELoss
from nnpipe.training.regions import RegionLoss, head_loss, labels_to_regions
from nnpipe.training.validation import class_counts

K = 4  # classes 0..3; index 4 marks unannotated voxels


def _sparse_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 6, 5, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, K, (2, 1, 6, 5, 4), generator=g)
    unannotated = torch.rand(2, 1, 6, 5, 4, generator=g) < 0.6
    return logits, target.masked_fill(unannotated, K), ~unannotated


def _annotated_only(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(1, C, M)``: the M annotated voxels of the whole batch."""
    return x.movedim(1, 0).reshape(x.shape[1], -1)[:, keep.flatten()].unsqueeze(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_dice_ce_equals_monai_dense_loss_on_annotated_voxels(seed):
    logits, target, keep = _sparse_batch(seed)
    sparse = DiceCELoss(ignore=True)(logits, target)
    monai = MonaiDiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                            batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    dense = monai(_annotated_only(logits, keep), _annotated_only(target, keep))
    assert float(sparse) == pytest.approx(float(dense), rel=1e-10, abs=1e-12)
    # the ignore voxels really are out: changing their logits changes nothing
    other = logits.clone()
    other[~keep.expand_as(logits)] = 50.0
    assert float(DiceCELoss(ignore=True)(other, target)) == pytest.approx(float(sparse),
                                                                           rel=1e-10)
    # without ignore the same target would be wrong (index K is no class): the plain loss
    # differs, so the test could fail
    assert abs(float(DiceCELoss()(logits, target)) - float(dense)) > 1e-3


def test_sparse_loss_of_a_dense_target_is_the_dense_loss():
    logits, target, _ = _sparse_batch(3)
    dense_target = target.clamp_max(K - 1)
    assert float(DiceCELoss(ignore=True)(logits, dense_target)) == pytest.approx(
        float(DiceCELoss()(logits, dense_target)), rel=1e-10)


def test_sparse_region_loss_equals_monai_dense_loss_on_annotated_voxels():
    logits, target, keep = _sparse_batch(4)
    regions = ((1, 2, 3), (2, 3), (3,))
    logits = logits[:, :3]
    sparse = RegionLoss(regions, ignore_index=K)(logits, target)
    lo, masks = _annotated_only(logits, keep), _annotated_only(
        labels_to_regions(target, regions).double(), keep)
    dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(lo, masks)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(lo, masks)
    assert float(sparse) == pytest.approx(float(dice + bce), rel=1e-10)


def test_deep_supervision_heads_all_leave_ignore_out():
    logits, target, keep = _sparse_batch(5)
    heads = torch.stack([logits, logits * 0.5, -logits], dim=1)  # (B, H, K, *S)
    scheme = LabelScheme.from_dataset_json({"0": "bg", "1": "a", "2": "b", "3": "c",
                                            "4": "ignore"}, layout="msd")
    loss = DeepSupervisionLoss(head_loss(scheme))
    monai = MonaiDiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                            batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    t = _annotated_only(target, keep)
    want = sum(w / 1.75 * float(monai(_annotated_only(h, keep), t))
               for w, h in zip((1.0, 0.5, 0.25), (logits, logits * 0.5, -logits), strict=True))
    assert float(loss(heads, target)) == pytest.approx(want, rel=1e-6)  # heads run in float32


def test_validation_counts_leave_unannotated_voxels_out():
    seg = torch.tensor([1, 1, 4, 4, 2, 0]).reshape(1, 1, 6)
    pred = torch.tensor([1, 1, 1, 2, 2, 0])
    logits = torch.nn.functional.one_hot(pred, K).T.unsqueeze(0).float()
    # class 1: 2 of 2 right (the predictions on ignore voxels do not count); class 2: 1 of 1
    assert class_counts(logits, seg, K).tolist() == [[2, 2, 2], [1, 1, 1], [0, 0, 0]]


def test_regions_and_ignore_together():
    """A v2 dataset.json with regions and an ignore label: one sigmoid per region, ignore
    voxels left out of the region loss and of the region validation Dice."""
    scheme = LabelScheme.from_dataset_json(
        {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3, "ignore": 4},
        regions_class_order=[1, 2, 3])
    loss = head_loss(scheme)
    assert isinstance(loss, RegionLoss) and loss.ignore_index == 4
    assert loss.regions == ((1, 2, 3), (2, 3), (3,)) and scheme.output_channels == 3
    logits, target, keep = _sparse_batch(6)
    logits = logits[:, :3]
    want = RegionLoss(((1, 2, 3), (2, 3), (3,)))(  # dense loss of the annotated voxels
        _annotated_only(logits, keep), _annotated_only(target, keep))
    # RegionLoss makes float32 region masks: float32 round-off in the reference
    assert float(loss(logits, target)) == pytest.approx(float(want), rel=1e-6)
    from nnpipe.training.regions import region_counts

    counts = region_counts(logits, target, loss.regions, loss.ignore_index)
    dense = region_counts(_annotated_only(logits, keep), _annotated_only(target, keep),
                          loss.regions)
    assert torch.equal(counts, dense)
