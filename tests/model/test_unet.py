from __future__ import annotations

import pytest
import torch

from nnpipe.model import build_unet, count_parameters
from nnpipe.model.unet import deep_supervision_heads
from nnpipe.planning.plan import ChannelNorm, Plan


def make_plan(dim: int, patch, strides, filters) -> Plan:
    kernels = tuple((3,) * dim for _ in strides)
    return Plan(dataset="t", dim=dim, spacing=(1.0,) * dim, full_spacing=(1.0, 1.0, 1.0),
                patch_size=tuple(patch), kernels=kernels,
                strides=tuple(tuple(s) for s in strides), filters=tuple(filters), batch_size=2,
                num_channels=4, num_classes=4, labels={0: "bg", 1: "a", 2: "b", 3: "c"},
                channel_norms=(ChannelNorm("zscore_nonzero"),) * 4,
                slice_axis=2 if dim == 2 else None)


PLAN3 = make_plan(3, (32, 32, 32), [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)], [8, 16, 32, 64])
PLAN2 = make_plan(2, (64, 48), [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2)], [8, 16, 32, 64, 128])


@pytest.mark.parametrize("plan", [PLAN3, PLAN2], ids=["3d", "2d"])
def test_output_shapes(plan):
    net = build_unet(plan)
    x = torch.randn(2, plan.num_channels, *plan.patch_size)
    net.train()
    out = net(x)
    heads = deep_supervision_heads(plan)
    assert out.shape == (2, 1 + heads, plan.num_classes, *plan.patch_size)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, plan.num_classes, *plan.patch_size)


def test_heads_limited_by_depth():
    assert deep_supervision_heads(PLAN3) == 2
    shallow = make_plan(3, (16, 16, 16), [(1, 1, 1), (2, 2, 2)], [8, 16])
    assert deep_supervision_heads(shallow) == 0


def test_parameter_count_is_pinned():
    # Golden: the topology above must keep building the same network (MONAI DynUNet, instance
    # norm with affine, transposed-conv up-sampling, two deep-supervision heads).
    assert count_parameters(build_unet(PLAN3, deep_supervision=False)) == 351_428
    # each deep-supervision head is a 1x1x1 conv from its level's filters to the 4 classes:
    # (16 * 4 + 4) + (32 * 4 + 4) = 200 parameters
    assert count_parameters(build_unet(PLAN3)) - 351_428 == 200


def test_mismatched_plan_is_refused():
    bad = make_plan(3, (32, 32, 32), [(1, 1, 1), (2, 2, 2)], [8, 16, 32])
    with pytest.raises(ValueError, match="must match"):
        build_unet(bad)



def _dynunet(plan: Plan, heads: int):
    """MONAI's DynUNet configured as the reference (our UNet's twin)."""
    from monai.networks.nets import DynUNet

    return DynUNet(spatial_dims=plan.dim, in_channels=plan.num_channels,
                   out_channels=plan.num_classes, kernel_size=[list(k) for k in plan.kernels],
                   strides=[list(s) for s in plan.strides],
                   upsample_kernel_size=[list(s) for s in plan.strides[1:]],
                   filters=list(plan.filters), norm_name=("INSTANCE", {"affine": True}),
                   act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                   deep_supervision=heads > 0, deep_supr_num=max(heads, 1), res_block=False)


ANISO = Plan(dataset="t", dim=3, spacing=(0.8, 0.8, 3.0), full_spacing=(0.8, 0.8, 3.0),
             patch_size=(48, 40, 16), kernels=((3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3)),
             strides=((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)), filters=(8, 16, 32, 64),
             batch_size=2, num_channels=2, num_classes=3, labels={0: "bg", 1: "a", 2: "b"},
             channel_norms=(ChannelNorm("zscore_nonzero"),) * 2)


@pytest.mark.parametrize("plan", [PLAN3, PLAN2, ANISO], ids=["3d", "2d", "anisotropic"])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_same_network_as_monai_dynunet(plan, deep_supervision):
    """Seeded, our UNet and DynUNet build the same weights and compute the same function,
    and a DynUNet state dict (with its skip_layers aliases) loads into ours strictly."""
    heads = deep_supervision_heads(plan) if deep_supervision else 0
    torch.manual_seed(3)
    theirs = _dynunet(plan, heads)
    torch.manual_seed(3)
    ours = build_unet(plan, deep_supervision=deep_supervision)
    their_state = {k: v for k, v in theirs.state_dict().items()
                   if not k.startswith("skip_layers.")}
    assert list(ours.state_dict()) == list(their_state)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, their_state[key]), key
    with torch.no_grad():  # distinct affine parameters, loaded from DynUNet's full state dict
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    fresh = build_unet(plan, deep_supervision=deep_supervision)
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, plan.num_channels, *plan.patch_size)
    for train in (True, False):
        theirs.train(train)
        fresh.train(train)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), theirs(x), rtol=1e-5, atol=1e-5)
