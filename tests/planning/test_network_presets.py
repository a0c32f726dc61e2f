"""``planning.network``: presets, the GPU-memory model, and the planner's patch/batch choice."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nnpipe.planning import network as N
from nnpipe.planning.fingerprint import Fingerprint, IntensityStats
from nnpipe.planning.plan import Plan
from nnpipe.planning.planner import PlannerSettings, make_plan, settings_from_config
from nnpipe.planning.presets import plan_for
from nnpipe.planning.topology import unet_filters, unet_topology

from .conftest import uniform_fingerprint

STATS = IntensityStats(mean=0.0, std=1.0, min=-5.0, max=5.0, p00_5=-2.6, p99_5=2.6,
                       n_voxels=1000)
LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}


def make_fp(n: int, spacing, shape, channels: int = 4) -> Fingerprint:
    return uniform_fingerprint(n, spacing, shape, channels, LABELS, STATS)


# MSD Task01 as nnU-Net sees it: 484 BraTS cases, 240x240x155 at 1 mm, 4 MRI channels
TASK01 = make_fp(484, (1.0, 1.0, 1.0), (240, 240, 155))
# a small anisotropic dataset (prostate-like): 30 cases, 0.6 x 0.6 x 3.6 mm
ANISO = make_fp(30, (0.6, 0.6, 3.6), (320, 320, 20), channels=2)


@pytest.mark.parametrize(
    ("fp", "network", "dim", "patch", "batch"),
    [
        # plain: the voxel budgets (unchanged by the presets)
        (TASK01, "plain", 3, (128, 128, 128), 2),
        (TASK01, "plain", 2, (256, 256), 2),
        # M (8 GB): 160x128x128 would need 8.4 GB at batch 2
        (TASK01, "resenc_m", 3, (128, 128, 128), 2),
        (TASK01, "resenc_m", 2, (256, 256), 47),
        # L (24 GB): nearly the whole median image at batch 2; in 2D the batch cap (64)
        (TASK01, "resenc_l", 3, (256, 224, 160), 2),
        (TASK01, "resenc_l", 2, (256, 256), 64),
        # anisotropic, few cases: M shrinks in-plane; L's batch is capped at 5 % of the
        # dataset's voxels (3D: 6 -> 2; 2D: 64 -> 30)
        (ANISO, "plain", 3, (320, 320, 20), 2),
        (ANISO, "resenc_m", 3, (288, 256, 20), 2),
        (ANISO, "resenc_l", 3, (320, 320, 20), 2),
        (ANISO, "resenc_m", 2, (320, 320), 30),
        (ANISO, "resenc_l", 2, (320, 320), 30),
    ])
def test_planned_patch_and_batch(fp, network, dim, patch, batch):
    plan = make_plan(fp, dim, PlannerSettings(network=network), "t")
    assert (plan.patch_size, plan.batch_size) == (patch, batch)
    assert plan.network == network
    assert plan.encoder_blocks == N.encoder_blocks(network, len(plan.strides))
    if network != "plain":
        assert any(n.startswith(f"network {network}: patch") for n in plan.notes)


@pytest.mark.parametrize("network", ["resenc_m", "resenc_l"])
def test_planned_step_fits_the_target(network):
    target = N.NETWORKS[network].vram_target_gb
    for dim in (2, 3):
        plan = make_plan(TASK01, dim, PlannerSettings(network=network), "t")
        convs = N.layers(plan.patch_size, plan.kernels, plan.strides, plan.filters, 4, 4,
                         plan.encoder_blocks, N.deep_supervision_heads(len(plan.strides)))
        assert N.estimate_vram_gb(convs, plan.batch_size) <= target


def test_explicit_vram_target_and_too_small_target():
    small = make_plan(TASK01, 3, PlannerSettings(network="resenc_m", vram_target_gb=3.0), "t")
    assert small.patch_size == (80, 80, 64) and small.batch_size == 2
    with pytest.raises(ValueError, match="GPU memory target of 1 GB"):
        make_plan(TASK01, 3, PlannerSettings(network="resenc_m", vram_target_gb=1.0), "t")


def test_blocks_schedule():
    assert N.encoder_blocks("plain", 6) == ()
    assert N.encoder_blocks("resenc_m", 4) == (1, 3, 4, 6)
    assert N.encoder_blocks("resenc_l", 8) == (1, 3, 4, 6, 6, 6, 6, 6)


@pytest.mark.parametrize(("dim", "patch", "spacing"),
                         [(3, (48, 40, 32), (1.0, 1.0, 1.0)), (3, (64, 64, 16), (0.7, 0.7, 3.0)),
                          (2, (96, 80), (1.0, 1.0))])
@pytest.mark.parametrize("network", ["plain", "resenc_m"])
def test_layer_list_matches_the_built_network(dim, patch, spacing, network):
    """:func:`N.layers` (what the planner estimates) describes the modules the model builds."""
    from nnpipe.model import build_unet, count_parameters
    from nnpipe.model.summary import with_network

    plan = _plan(dim, patch, spacing, network)
    heads = N.deep_supervision_heads(len(plan.strides))
    convs = N.layers(patch, plan.kernels, plan.strides, plan.filters, 4, 4,
                     plan.encoder_blocks, heads)
    assert N.parameter_count(convs) == count_parameters(build_unet(with_network(plan, network)))


def _plan(dim: int, patch, spacing, network: str) -> Plan:
    kernels, strides = unet_topology(patch, spacing)
    plan = make_plan(make_fp(1, (1.0, 1.0, 1.0), (16, 16, 16)), dim, PlannerSettings(), "t")
    return dataclasses.replace(
        plan, patch_size=tuple(patch), spacing=tuple(spacing), kernels=kernels, strides=strides,
        filters=unet_filters(len(strides), dim, 8), network=network,
        encoder_blocks=N.encoder_blocks(network, len(strides)))


@pytest.mark.parametrize("network", ["plain", "resenc_m"])
def test_saved_tensor_constant_matches_torch(network):
    """Re-measure SAVED_PER_CONV_OUTPUT: what autograd keeps for one training forward (unique
    storages, parameters excluded) per element of convolution output."""
    from nnpipe.model import build_unet

    plan = _plan(3, (32, 32, 32), (1.0, 1.0, 1.0), network)
    net = build_unet(plan, onednn=False).train()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(2, 4, 32, 32, 32))
    convs = N.layers(plan.patch_size, plan.kernels, plan.strides, plan.filters, 4, 4,
                     plan.encoder_blocks, N.deep_supervision_heads(len(plan.strides)))
    measured = sum(kept.values()) / 4 / (2 * N.feature_map_voxels(convs))  # float32, batch 2
    assert measured == pytest.approx(N.SAVED_PER_CONV_OUTPUT, rel=0.05)


def test_vram_estimate_grows_with_batch():
    plan = _plan(3, (64, 64, 64), (1.0, 1.0, 1.0), "resenc_m")
    convs = N.layers(plan.patch_size, plan.kernels, plan.strides, plan.filters, 4, 4,
                     plan.encoder_blocks, 2)
    one, two = N.estimate_vram_gb(convs, 1), N.estimate_vram_gb(convs, 2)
    assert N.FIXED_OVERHEAD_GB < one < two
    per_sample = N.feature_map_voxels(convs) * N.SAVED_PER_CONV_OUTPUT * N.ACTIVATION_BYTES
    assert two - one == pytest.approx(per_sample / N.GB)


def test_plan_records_the_network_and_old_plans_are_plain():
    plan = make_plan(TASK01, 3, PlannerSettings(network="resenc_l"), "t")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.encoder_blocks == (1, 3, 4, 6, 6, 6)
    old = make_plan(TASK01, 3, PlannerSettings(), "t").to_dict()
    del old["network"], old["encoder_blocks"]
    assert Plan.from_dict(old).network == "plain"
    assert Plan.from_dict(old).encoder_blocks == ()


def test_unknown_network_and_reference_preset_are_refused():
    with pytest.raises(ValueError, match="resenc_xl"):
        PlannerSettings(network="resenc_xl")
    with pytest.raises(ValueError, match="vram_target_gb"):
        PlannerSettings(network="resenc_m", vram_target_gb=-1)
    with pytest.raises(ValueError, match="needs preset auto"):
        plan_for(TASK01, 3, PlannerSettings(network="resenc_m"), "t", "reference",
                 "Task01_BrainTumour")
    ref = plan_for(TASK01, 3, PlannerSettings(), "t", "reference", "Task01_BrainTumour")
    assert ref.network == "plain" and ref.encoder_blocks == ()


def test_config_selects_the_network():
    from nnpipe.config import study_config

    default = settings_from_config(study_config({}).planning)
    assert (default.network, default.vram_target_gb) == ("plain", 0.0)
    cfg = study_config({"planning": {"network": "resenc_l", "vram_target_gb": 12}}).planning
    settings = settings_from_config(cfg)
    assert (settings.network, settings.vram_target_gb) == ("resenc_l", 12)
    with pytest.raises(ValueError, match="planning/network"):
        study_config({"planning": {"network": "resenc_xxl"}})
