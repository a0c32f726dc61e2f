"""The CPU instance norm (nnpipe.model.norm): torch's instance norm, through group norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnpipe.model import build_unet
from nnpipe.model.norm import InstanceNorm2d, InstanceNorm3d
from nnpipe.planning.plan import ChannelNorm, Plan

CASES = [  # (ours, torch's, input shape (B, C, *S))
    (InstanceNorm2d, nn.InstanceNorm2d, (3, 5, 12, 10)),
    (InstanceNorm3d, nn.InstanceNorm3d, (2, 4, 6, 7, 5)),
]


def _pair(ours: type[nn.Module], theirs: type[nn.Module], c: int) -> tuple[nn.Module, nn.Module]:
    a, b = ours(c, affine=True), theirs(c, affine=True)
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial affine parameters, the same in both
        a.weight.uniform_(0.5, 1.5)
        a.bias.uniform_(-0.5, 0.5)
    b.load_state_dict(a.state_dict())
    return a, b


def _ops(module: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        module(x)
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize(("ours", "theirs", "shape"), CASES)
def test_values_and_gradients_equal_torchs_instance_norm(ours, theirs, shape):
    a, b = _pair(ours, theirs, shape[1])
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    grad = torch.randn(shape)
    ya, yb = a(x), b(x2)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.weight.grad, b.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(a.bias.grad, b.bias.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("ours", "theirs", "shape"), CASES)
def test_cpu_float32_runs_the_group_norm_kernel_and_the_rest_instance_norm(ours, theirs, shape):
    a, _ = _pair(ours, theirs, shape[1])
    x = torch.randn(shape)
    ops = _ops(a, x)
    assert "aten::native_group_norm" in ops and "aten::instance_norm" not in ops
    ops = _ops(a.double(), x.double())  # float64: torch's own path
    assert "aten::instance_norm" in ops and "aten::native_group_norm" not in ops
    a.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "aten::instance_norm" in _ops(a, x)


@pytest.mark.parametrize(("ours", "theirs", "shape"), CASES)
def test_state_dict_and_type_are_torchs(ours, theirs, shape):
    a, b = ours(shape[1], affine=True), theirs(shape[1], affine=True)
    assert isinstance(a, theirs)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_the_unet_trains_with_the_cpu_instance_norm(dim):
    plan = Plan(dataset="t", dim=dim, spacing=(1.0,) * dim, full_spacing=(1.0, 1.0, 1.0),
                patch_size=(16,) * dim, kernels=((3,) * dim,) * 3,
                strides=((1,) * dim, (2,) * dim, (2,) * dim), filters=(4, 8, 16),
                batch_size=2, num_channels=1, num_classes=2, labels={0: "bg", 1: "fg"},
                channel_norms=(ChannelNorm("zscore"),), slice_axis=2 if dim == 2 else None)
    net = build_unet(plan).train()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    assert norms and all(type(m) is (InstanceNorm2d if dim == 2 else InstanceNorm3d)
                         for m in norms)
    assert "aten::native_group_norm" in _ops(net, torch.randn(2, 1, *(16,) * dim))
