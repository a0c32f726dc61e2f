"""Dice + CE: MONAI's values, and no op that lacks a deterministic CUDA kernel."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss as MonaiDiceCELoss
from torch.utils._python_dispatch import TorchDispatchMode

from nnpipe.model import build_unet
from nnpipe.training.loss import DeepSupervisionLoss

# aten ops that raise under torch.use_deterministic_algorithms(True) on CUDA (the list in
# torch.use_deterministic_algorithms' documentation), by name prefix.
NOT_DETERMINISTIC_ON_CUDA = (
    "aten.nll_loss", "aten.avg_pool3d_backward", "aten._adaptive_avg_pool2d_backward",
    "aten._adaptive_avg_pool3d_backward", "aten.adaptive_max_pool2d_backward",
    "aten.fractional_max_pool", "aten.max_unpool", "aten.upsample_linear1d_backward",
    "aten.upsample_bilinear2d_backward", "aten.upsample_bicubic2d_backward",
    "aten.upsample_trilinear3d_backward", "aten.reflection_pad", "aten._ctc_loss_backward",
    "aten.embedding_bag", "aten.put_", "aten.histc", "aten.bincount", "aten.median",
    "aten.grid_sampler_2d_backward", "aten.grid_sampler_3d_backward", "aten.cumsum",
    "aten.scatter_reduce",
)


class _OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def test_dice_ce_equals_monai():
    from nnpipe.training.loss import DiceCELoss

    torch.manual_seed(0)
    logits, seg = torch.randn(2, 4, 6, 6, 6), torch.randint(0, 4, (2, 1, 6, 6, 6))
    monai = MonaiDiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                            batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    assert float(DiceCELoss()(logits, seg)) == pytest.approx(float(monai(logits, seg)),
                                                             rel=1e-6)


def test_one_hot_of_labels():
    from nnpipe.training.loss import one_hot

    seg = torch.tensor([0, 2, 1, 2]).reshape(1, 1, 4)
    assert one_hot(seg, 3, torch.float32)[0].tolist() == [[1, 0, 0, 0], [0, 0, 1, 0],
                                                          [0, 1, 0, 1]]


@pytest.mark.parametrize("dim", [2, 3])
def test_training_step_has_only_deterministic_cuda_kernels(tiny_study, dim):
    """Forward, deep-supervision loss and backward of the real network dispatch no op that
    raises in deterministic mode on CUDA (``nll_loss`` did: training.deterministic failed at
    the first loss on a GPU)."""
    plan = tiny_study.plans[dim]
    model = build_unet(plan, deep_supervision=True).train()
    image = torch.randn(2, plan.num_channels, *plan.patch_size)
    seg = torch.randint(0, plan.num_classes, (2, 1, *plan.patch_size))
    with _OpNames() as ops:
        DeepSupervisionLoss()(model(image), seg).backward()
    used = sorted(n for n in ops.names if n.startswith(NOT_DETERMINISTIC_ON_CUDA))
    assert used == [], f"ops without a deterministic CUDA kernel: {used}"
