from __future__ import annotations

import pytest
import torch
from torch import nn

from nnpipe.model import build_unet
from nnpipe.model.onednn import OneDnnConv3d, use_onednn
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.topology import unet_filters, unet_topology
from nnpipe.training.loss import DeepSupervisionLoss

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch has no oneDNN")

# (in, out, kernel, stride, padding, dilation, bias, input spatial shape): the U-Net's
# convolutions (3^3 stride 1 and 2, 1^3 heads, in-plane 3x3x1 kernels of anisotropic plans)
# and the cases that stress the cut into halves (odd and tiny output sizes, dilation)
CONVS = {
    "3x3x3": (4, 8, 3, 1, 1, 1, False, (12, 10, 8)),
    "stride 2": (8, 16, 3, 2, 1, 1, False, (12, 10, 8)),
    "stride 2 odd": (8, 16, 3, 2, 1, 1, False, (9, 7, 5)),
    "odd output": (4, 4, 3, 1, 1, 1, False, (7, 6, 5)),
    "1x1x1 head with bias": (8, 4, 1, 1, 0, 1, True, (8, 8, 8)),
    "anisotropic 3x3x1": (4, 8, (3, 3, 1), (2, 2, 1), (1, 1, 0), 1, False, (10, 10, 4)),
    "dilated": (4, 4, 3, 1, 2, 2, True, (9, 8, 7)),
    "tiny 2 outputs": (4, 4, 3, 1, 1, 1, False, (2, 2, 2)),
    "single output voxel": (4, 4, 3, 1, 0, 1, False, (3, 3, 3)),
}


@pytest.mark.parametrize("case", CONVS.values(), ids=CONVS.keys())
@pytest.mark.parametrize("batch", [1, 2])
def test_conv_matches_plain_conv3d_forward_and_backward(case, batch):
    cin, cout, k, s, p, d, bias, shape = case
    torch.manual_seed(0)
    plain = nn.Conv3d(cin, cout, k, s, p, d, bias=bias)
    fast = OneDnnConv3d.from_conv(plain)
    assert fast.weight is plain.weight and fast.bias is plain.bias
    x = torch.randn(batch, cin, *shape, requires_grad=True)
    expected = plain(x)
    got = fast(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(expected)
    params = [plain.weight] + ([plain.bias] if bias else [])
    want = torch.autograd.grad(expected, [x, *params], grad)
    have = torch.autograd.grad(got, [x, *params], grad)
    for w, h in zip(want, have, strict=True):
        torch.testing.assert_close(h, w, atol=1e-4, rtol=1e-4)


def test_training_at_batch_1_never_reaches_the_reference_kernel():
    """Forward: no slow_conv3d; backward: convolution_backward sees batches of 2 (the
    halves), which PyTorch gives to oneDNN, never the single sample."""
    from torch.profiler import profile

    conv = OneDnnConv3d.from_conv(nn.Conv3d(4, 8, 3, 1, 1, bias=False))
    x = torch.randn(1, 4, 16, 16, 16, requires_grad=True)
    with profile(record_shapes=True) as prof:
        conv(x).sum().backward()
    events = prof.events()
    names = {e.name for e in events}
    assert "aten::mkldnn_convolution" in names
    assert not any("slow_conv3d" in n for n in names)
    backward = [e for e in events if e.name == "aten::convolution_backward"]
    assert backward and all(e.input_shapes[1][0] == 2 for e in backward)


def test_without_autograd_the_sample_is_not_cut():
    from torch.profiler import profile

    conv = OneDnnConv3d.from_conv(nn.Conv3d(4, 8, 3, 1, 1, bias=False))
    with torch.no_grad(), profile(record_shapes=True) as prof:
        conv(torch.randn(1, 4, 8, 8, 8))
    shapes = [e.input_shapes[0] for e in prof.events() if e.name == "aten::mkldnn_convolution"]
    assert shapes == [[1, 4, 8, 8, 8]]


def test_other_dtypes_and_autocast_take_the_plain_path():
    torch.manual_seed(0)
    plain = nn.Conv3d(4, 4, 3, 1, 1)
    fast = OneDnnConv3d.from_conv(plain)
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), plain(x))
    x64 = x.double()
    plain64 = OneDnnConv3d.from_conv(nn.Conv3d(4, 4, 3, 1, 1).double())
    assert plain64(x64).dtype == torch.float64


def test_under_torch_compile_the_plain_path_is_traced(monkeypatch):
    """mkldnn_convolution has no fake-tensor kernel: dynamo must see nn.Conv3d's call."""
    from torch.profiler import profile

    conv = OneDnnConv3d.from_conv(nn.Conv3d(4, 8, 3, 1, 1, bias=False))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with profile() as prof:
        conv(torch.randn(1, 4, 8, 8, 8, requires_grad=True))
    names = {e.name for e in prof.events()}
    assert "aten::conv3d" in names and "aten::mkldnn_convolution" not in names


def _plan(patch: int = 16, base: int = 4) -> Plan:
    kernels, strides = unet_topology((patch,) * 3, (1.0,) * 3)
    return Plan(dataset="t", dim=3, spacing=(1.0,) * 3, full_spacing=(1.0,) * 3,
                patch_size=(patch,) * 3, kernels=kernels, strides=strides,
                filters=unet_filters(len(strides), 3, base), batch_size=2, num_channels=4,
                num_classes=4, labels={0: "bg", 1: "a", 2: "b", 3: "c"},
                channel_norms=(ChannelNorm("zscore_nonzero"),) * 4)


def test_built_unet_uses_it_and_keeps_state_dict_and_seeded_weights():
    plan = _plan()
    torch.manual_seed(1)
    fast = build_unet(plan)
    torch.manual_seed(1)
    plain = build_unet(plan, onednn=False)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is OneDnnConv3d for m in convs)
    assert not any(type(m) is OneDnnConv3d for m in plain.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    for key, value in fast.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key
    # and back: the same modules, sharing the parameters
    back = use_onednn(fast, enabled=False)
    assert not any(type(m) is OneDnnConv3d for m in back.modules())
    assert back.input_block.conv1.conv.weight is convs[0].weight


@pytest.mark.parametrize("batch", [1, 2])
def test_unet_training_step_same_outputs_and_gradients_as_plain_network(batch):
    """The deep-supervision U-Net in training mode, loss and backward: oneDNN path (the
    halves at batch 1) against plain nn.Conv3d, from the same seeded weights."""
    plan = _plan()
    torch.manual_seed(2)
    fast = build_unet(plan).train()
    torch.manual_seed(2)
    plain = build_unet(plan, onednn=False).train()
    x = torch.randn(batch, 4, *plan.patch_size)
    seg = torch.randint(0, 4, (batch, 1, *plan.patch_size))
    loss_fn = DeepSupervisionLoss()
    results = []
    for net in (fast, plain):
        out = net(x)
        loss_fn(out, seg).backward()
        results.append((out.detach(), {n: p.grad for n, p in net.named_parameters()}))
    (out_fast, grads_fast), (out_plain, grads_plain) = results
    torch.testing.assert_close(out_fast, out_plain, atol=1e-4, rtol=1e-4)
    assert grads_fast.keys() == grads_plain.keys()
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_fast[name], g, atol=1e-4, rtol=1e-3, msg=name)
