"""The residual-encoder U-Net: golden sizes, output contract, checkpoint compatibility."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nnpipe.inference.ensemble import load_weights
from nnpipe.model import build_unet, count_parameters
from nnpipe.model.resenc import BasicBlock, ResEncUNet, build_resenc
from nnpipe.model.summary import (
    format_costs,
    forward_flops,
    planned_task01_costs,
    task01_costs,
    with_network,
)
from nnpipe.model.unet import UNet, deep_supervision_heads
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.task01 import task01_plan


def make_plan(dim: int, patch, strides, filters, network: str = "resenc_m",
              kernels=None) -> Plan:
    kernels = kernels or tuple((3,) * dim for _ in strides)
    plan = Plan(dataset="t", dim=dim, spacing=(1.0,) * dim, full_spacing=(1.0, 1.0, 1.0),
                patch_size=tuple(patch), kernels=tuple(tuple(k) for k in kernels),
                strides=tuple(tuple(s) for s in strides), filters=tuple(filters), batch_size=2,
                num_channels=4, num_classes=4, labels={0: "bg", 1: "a", 2: "b", 3: "c"},
                channel_norms=(ChannelNorm("zscore_nonzero"),) * 4,
                slice_axis=2 if dim == 2 else None)
    return with_network(plan, network)


PLAN3 = make_plan(3, (32, 32, 32), [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)], [8, 16, 32, 64])
PLAN2 = make_plan(2, (64, 48), [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2)], [8, 16, 32, 64, 128])
# anisotropic: in-plane pooling first, kernel 1 across the coarse axis at full resolution
ANISO = make_plan(3, (32, 32, 8), [(1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)], [8, 16, 32, 64],
                  kernels=[(3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3)])


@pytest.mark.parametrize(("plan", "blocks"), [(PLAN3, (1, 3, 4, 6)), (PLAN2, (1, 3, 4, 6, 6))],
                         ids=["3d", "2d"])
def test_blocks_per_level(plan, blocks):
    assert plan.encoder_blocks == blocks
    net = build_unet(plan, onednn=False)
    assert isinstance(net, ResEncUNet)
    assert tuple(len(stage) for stage in net.encoder) == blocks
    assert all(isinstance(b, BasicBlock) for stage in net.encoder for b in stage)


@pytest.mark.parametrize(
    ("plan", "params", "heads_params"),
    [(PLAN3, 1_620_932, 200), (PLAN2, 2_361_348, 200), (ANISO, 1_615_236, 200)],
    ids=["3d", "2d", "3d-anisotropic"])
def test_parameter_count_is_pinned(plan, params, heads_params):
    # Golden: stem, 1/3/4/6(/6) basic blocks with avg-pool + 1x1 projections where the level
    # changes, one conv per decoder level, 1x1 heads; heads: (16*4+4) + (32*4+4) = 200
    assert count_parameters(build_unet(plan, deep_supervision=False)) == params
    assert count_parameters(build_unet(plan)) - params == heads_params


@pytest.mark.parametrize(
    ("network", "dim", "params"),
    [("plain", 3, 31_192_068), ("resenc_m", 3, 102_440_068), ("resenc_l", 3, 102_440_068),
     ("plain", 2, 20_612_100), ("resenc_m", 2, 72_059_908), ("resenc_l", 2, 72_059_908)])
def test_task01_parameter_counts(network, dim, params):
    # the reference's Task01 topology (4 in, 4 out; 128^3 / 192x160; filters 32..320 / 512);
    # M and L share the architecture rule and differ in the planned patch and batch
    with torch.device("meta"):
        net = build_unet(with_network(task01_plan(dim), network), deep_supervision=False,
                         onednn=False)
    assert count_parameters(net) == params


@pytest.mark.parametrize("plan", [PLAN3, PLAN2, ANISO], ids=["3d", "2d", "3d-anisotropic"])
def test_output_shapes(plan):
    net = build_unet(plan, onednn=False)
    x = torch.randn(2, plan.num_channels, *plan.patch_size)
    net.train()
    out = net(x)
    heads = deep_supervision_heads(plan)
    assert heads == 2
    assert out.shape == (2, 1 + heads, plan.num_classes, *plan.patch_size)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, plan.num_classes, *plan.patch_size)


def test_same_contract_as_the_plain_unet():
    plain = build_unet(dataclasses.replace(PLAN3, network="plain", encoder_blocks=()),
                       onednn=False)
    assert isinstance(plain, UNet)
    res = build_unet(PLAN3, onednn=False)
    x = torch.randn(1, 4, 16, 16, 16)
    assert plain.train()(x).shape == res.train()(x).shape
    # the heads are the keys prediction drops: a training checkpoint loads into the
    # prediction network (deep_supervision=False) strictly
    names = {k.split(".")[0] for k in res.state_dict()}
    assert {"output_block", "deep_supervision_heads"} <= names
    target = build_unet(PLAN3, deep_supervision=False, onednn=False)
    load_weights(target, res.state_dict(), "test.pt")
    res.eval()
    with torch.no_grad():
        assert torch.equal(target.eval()(x), res(x))


def test_onednn_path_matches_plain_conv3d():
    torch.manual_seed(0)
    ref = build_unet(PLAN3, deep_supervision=False, onednn=False).eval()
    fast = build_unet(PLAN3, deep_supervision=False).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-4)


def test_old_plan_builds_the_plain_unet():
    d = dataclasses.replace(PLAN3, network="plain", encoder_blocks=()).to_dict()
    del d["network"], d["encoder_blocks"]  # a plan written before the ResEnc presets
    plan = Plan.from_dict(d)
    assert plan.network == "plain" and plan.encoder_blocks == ()
    assert isinstance(build_unet(plan), UNet)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"network": "resenc_xl"}, "resenc_xl"), ({"encoder_blocks": (1, 3)}, "block counts"),
     ({"encoder_blocks": (1, 0, 4, 6)}, ">= 1 residual block")])
def test_bad_plans_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        build_unet(dataclasses.replace(PLAN3, **change))


def test_build_resenc_refuses_plain_plans():
    with pytest.raises(ValueError, match="not a residual-encoder"):
        build_resenc(dataclasses.replace(PLAN3, network="plain"))


def test_task01_forward_flops_are_pinned():
    # torch's FlopCounterMode on the meta device; plain 3D matches DESIGN.md's 966 GFLOP
    costs = {(c.network, c.dim): round(c.gflops, 1) for c in task01_costs()}
    assert costs == {("plain", 3): 965.6, ("resenc_m", 3): 1446.0, ("resenc_l", 3): 1446.0,
                     ("plain", 2): 13.4, ("resenc_m", 2): 29.7, ("resenc_l", 2): 29.7}
    assert forward_flops(PLAN2) > 0
    table = format_costs(task01_costs(networks=("resenc_m",), dims=(3,)))
    assert "| resenc_m | 3D | 128x128x128 | 102,440,068 | 1,446.0 |" in table


def test_each_preset_at_its_own_task01_plan():
    rows = {r.network: r for r in planned_task01_costs(dims=(3,))}
    assert rows["resenc_m"].patch_size == (128, 128, 128)
    assert rows["resenc_l"].patch_size == (256, 224, 160)
    assert all(r.batch_size == 2 for r in rows.values())
    assert rows["resenc_m"].vram_gb <= 8 and rows["resenc_l"].vram_gb <= 24
    assert "| batch | est. GB (amp step) |" in format_costs(list(rows.values()))


def test_cpu_prediction_path_computes_the_same_function():
    """cpu_fast_path (group norm, oneDNN, channels-last, the fused up-sampling of
    nnpipe.model.upsample) on a ResEnc network: the same logits as the network as built."""
    from nnpipe.inference.ensemble import cpu_fast_path

    torch.manual_seed(0)
    net = build_unet(PLAN3, deep_supervision=False, onednn=False).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        expected = net(x)
        fast, fmt = cpu_fast_path(net, 3)
        got = fast(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
