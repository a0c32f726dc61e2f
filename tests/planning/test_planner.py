"""Planner rules on hand-built fingerprints (no files)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.planner import (
    PlannerSettings,
    fit_patch,
    make_plan,
    median_shape,
    settings_from_config,
    target_spacing,
)
from nnpipe.planning.topology import total_strides

from .conftest import fingerprint

make_fp = fingerprint


SETTINGS = PlannerSettings(max_patch_voxels_3d=128**3, max_patch_voxels_2d=192 * 160)


def test_median_spacing_when_not_anisotropic():
    fp = make_fp([(0.8, 0.8, 2.0), (1.0, 1.0, 3.0), (0.9, 0.9, 2.5)], [(100, 100, 40)] * 3)
    spacing, notes = target_spacing(fp)
    assert spacing == pytest.approx((0.9, 0.9, 2.5))
    assert not any(n.startswith("anisotropic") for n in notes)


def test_anisotropic_uses_10th_percentile():
    z = [4.0, 5.0, 5.0, 6.0, 6.0]
    fp = make_fp([(0.7, 0.7, s) for s in z], [(200, 200, 20)] * 5)
    spacing, notes = target_spacing(fp)
    assert spacing == pytest.approx((0.7, 0.7, 4.4))  # percentile 10 of z
    assert "anisotropic: axis 2 spacing from 10th percentile (4.4 mm)" in notes


def test_anisotropic_spacing_but_many_slices_keeps_median():
    z = [4.0, 5.0, 5.0, 6.0, 6.0]
    fp = make_fp([(0.7, 0.7, s) for s in z], [(200, 200, 100)] * 5)
    assert target_spacing(fp)[0] == pytest.approx((0.7, 0.7, 5.0))


def test_coarse_axis_can_be_x():
    fp = make_fp([(s, 0.5, 0.5) for s in (3.0, 4.0, 5.0)], [(10, 300, 300)] * 3)
    spacing, notes = target_spacing(fp)
    assert spacing == pytest.approx((3.2, 0.5, 0.5))
    assert notes[-1].startswith("anisotropic: axis 0")


def test_median_shape_is_rescaled_to_target_spacing():
    fp = make_fp([(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0)],
                 [(100, 80, 60), (50, 40, 30), (120, 100, 80)])
    # at 1 mm the second case is (100, 80, 60): medians (100, 80, 60)
    assert median_shape(fp, (1.0, 1.0, 1.0)) == (100, 80, 60)
    assert median_shape(fp, (2.0, 2.0, 2.0)) == (50, 40, 30)


def test_3d_plan_isotropic_golden():
    fp = make_fp([(1.0, 1.0, 1.0)] * 3, [(160, 160, 160)] * 3)
    plan = make_plan(fp, 3, SETTINGS, "Task01")
    assert plan.patch_size == (128, 128, 128)
    assert plan.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert plan.filters == (32, 64, 128, 256, 320, 320)
    assert plan.batch_size == 2
    assert plan.spacing == plan.full_spacing == (1.0, 1.0, 1.0)
    assert plan.median_shape == (160, 160, 160)
    assert plan.slice_axis is None
    assert plan.num_classes == 3 and plan.num_channels == 1
    # nothing to crop (relative size 1 >= 3/4): z-score over every voxel, as nnU-Net plans it
    assert plan.channel_norms == (ChannelNorm("zscore"),)


def test_3d_patch_is_median_shape_when_it_fits():
    fp = make_fp([(1.0, 1.0, 1.0)] * 3, [(40, 56, 40)] * 3)
    plan = make_plan(fp, 3, SETTINGS, "Task04")
    assert plan.patch_size == (40, 56, 40)
    assert plan.strides == ((1, 1, 1),) + ((2, 2, 2),) * 3
    # batch budget 2 * 128^3 holds 23 such patches
    assert plan.batch_size == 2 * 128**3 // (40 * 56 * 40)


def test_batch_size_is_clipped():
    fp = make_fp([(1.0, 1.0, 1.0)] * 3, [(32, 32, 32)] * 3)
    plan = make_plan(fp, 3, PlannerSettings(max_batch_size=16), "tiny")
    assert plan.patch_size == (32, 32, 32)
    assert plan.batch_size == 16
    assert any("clipped to 16" in n for n in plan.notes)
    explicit = PlannerSettings(batch_voxels_3d=32**3, min_batch_size=3)
    assert make_plan(fp, 3, explicit, "tiny").batch_size == 3


def test_anisotropic_3d_plan():
    fp = make_fp([(0.62, 0.62, 3.6)] * 3, [(320, 320, 20)] * 3)
    plan = make_plan(fp, 3, PlannerSettings(max_patch_voxels_3d=256 * 256 * 20), "Task05")
    assert math.prod(plan.patch_size) <= 256 * 256 * 20
    assert plan.strides[1] == (2, 2, 1)  # in-plane first
    assert plan.kernels[0] == (3, 3, 1)
    assert plan.patch_size[2] == 20


@pytest.mark.parametrize(
    ("spacing", "shape", "budget"),
    [((1.0, 1.0, 1.0), (173, 141, 97), 96**3), ((0.7, 0.7, 5.0), (301, 277, 23), 64**3),
     ((0.8, 1.1, 1.3), (90, 250, 180), 100_000), ((2.0, 2.0, 2.0), (13, 9, 50), 128**3)],
)
def test_fit_patch_divisible_and_within_budget(spacing, shape, budget):
    patch, kernels, strides = fit_patch(shape, spacing, budget, SETTINGS)
    assert math.prod(patch) <= budget
    assert all(p % t == 0 for p, t in zip(patch, total_strides(strides), strict=True))
    assert len(kernels) == len(strides)


def test_fit_patch_rejects_impossible_budget():
    with pytest.raises(ValueError, match="too small"):
        fit_patch((64, 64, 64), (1.0, 1.0, 1.0), 0, SETTINGS)


def test_2d_plan_slice_axis_and_spacing():
    z = [4.0, 5.0, 5.0, 6.0, 6.0]
    fp = make_fp([(0.7, 0.7, s) for s in z], [(200, 180, 20)] * 5)
    plan = make_plan(fp, 2, SETTINGS, "aniso")
    assert plan.slice_axis == 2
    assert plan.in_plane_axes == (0, 1)
    assert plan.spacing == pytest.approx((0.7, 0.7))
    assert plan.full_spacing == pytest.approx((0.7, 0.7, 5.0))  # median, not 10th percentile
    assert len(plan.patch_size) == 2 and len(plan.strides[0]) == 2
    assert math.prod(plan.patch_size) <= 192 * 160
    assert plan.filters[-1] <= 512
    assert any(n.startswith("2D: slice axis 2 (coarsest median spacing") for n in plan.notes)


def test_2d_slice_axis_ties_go_last_and_x_can_be_sliced():
    iso = make_fp([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)
    assert make_plan(iso, 2, SETTINGS, "iso").slice_axis == 2
    nearly = make_fp([(1.03, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3)  # within 5%: a tie
    assert make_plan(nearly, 2, SETTINGS, "nearly").slice_axis == 2
    y_coarse = make_fp([(1.0, 1.2, 1.0)] * 3, [(64, 64, 64)] * 3)
    assert make_plan(y_coarse, 2, SETTINGS, "y").slice_axis == 1
    x_coarse = make_fp([(3.0, 1.0, 1.0)] * 3, [(30, 64, 48)] * 3)
    plan = make_plan(x_coarse, 2, SETTINGS, "x")
    assert plan.slice_axis == 0
    assert plan.in_plane_axes == (1, 2)
    assert plan.patch_size == (64, 48)


def test_2d_task01_patch():
    fp = make_fp([(1.0, 1.0, 1.0)] * 3, [(192, 160, 140)] * 3)
    plan = make_plan(fp, 2, SETTINGS, "Task01")
    assert plan.patch_size == (192, 160)
    assert plan.strides == ((1, 1),) + ((2, 2),) * 5
    assert plan.filters == (32, 64, 128, 256, 512, 512)
    assert plan.batch_size == 2


def test_ct_channel_norm_values():
    fp = make_fp([(1.0, 1.0, 1.0)] * 2, [(64, 64, 64)] * 2, is_ct=(True, False))
    plan = make_plan(fp, 3, SETTINGS, "ct")
    assert plan.channel_norms == (
        ChannelNorm("ct", clip_low=-10.0, clip_high=150.0, mean=40.0, std=20.0),
        ChannelNorm("zscore"),
    )


def test_channel_names_select_nnunet_schemes():
    fp = dataclasses.replace(
        make_fp([(1.0, 1.0, 1.0)] * 2, [(64, 64, 64)] * 2, is_ct=(False,) * 6),
        channel_names=("ct", "T2", "noNorm", "RESCALE_TO_0_1", "rgb_to_0_1", "no_norm"))
    plan = make_plan(fp, 3, SETTINGS, "names")
    assert plan.channel_norms == (
        ChannelNorm("ct", clip_low=-10.0, clip_high=150.0, mean=40.0, std=20.0, channel="ct"),
        ChannelNorm("zscore", channel="T2"), ChannelNorm("none", channel="noNorm"),
        ChannelNorm("rescale_0_1", channel="RESCALE_TO_0_1"),
        ChannelNorm("rgb_0_1", channel="rgb_to_0_1"),
        ChannelNorm("zscore", channel="no_norm"))
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_plans_without_channel_names_still_load():
    plan = make_plan(make_fp([(1.0, 1.0, 1.0)] * 2, [(64, 64, 64)] * 2), 3, SETTINGS, "old")
    d = plan.to_dict()
    for norm in d["channel_norms"]:
        del norm["channel"]
    assert Plan.from_dict(d).channel_norms == (ChannelNorm("zscore"),)


def test_plan_json_round_trip():
    fp = make_fp([(0.7, 0.7, 5.0)] * 3, [(200, 180, 20)] * 3, is_ct=(True,))
    for dim in (2, 3):
        plan = make_plan(fp, dim, SETTINGS, "rt")
        assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_batch_size": 0}, "min_batch_size"), ({"max_batch_size": 1}, "max_batch_size"),
     ({"anisotropy_threshold": 1.0}, "anisotropy_threshold"),
     ({"max_patch_voxels_3d": 0}, "max_patch_voxels_3d")],
)
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlannerSettings(**kwargs)


def test_make_plan_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        make_plan(make_fp([(1.0, 1.0, 1.0)], [(8, 8, 8)]), 4, SETTINGS, "x")


def test_settings_from_config():
    from nnpipe.config import load_config

    cfg = load_config(None).planning
    settings = settings_from_config(cfg)
    assert settings.max_patch_voxels_3d == cfg.max_patch_voxels_3d
    assert settings.batch_voxels_2d == cfg.batch_voxels_2d
    assert settings.min_batch_size == 2


def test_labels_beyond_the_nonzero_box_turn_the_crop_off():
    fp = make_fp([(1.0, 1.0, 1.0)] * 3, [(40, 40, 40)] * 3)
    fp = dataclasses.replace(fp, shapes=((60, 50, 40),) * 3)
    assert make_plan(fp, 3, SETTINGS, "crop").crop_to_nonzero
    assert median_shape(fp, (1.0, 1.0, 1.0)) == (40, 40, 40)
    beyond = dataclasses.replace(fp, labelled_outside_crop={"case1": 12})
    plan = make_plan(beyond, 3, SETTINGS, "nocrop")
    assert not plan.crop_to_nonzero
    assert plan.median_shape == (60, 50, 40)  # whole cases, as preprocessing will see them
    assert any("no crop to the nonzero box: 1 training case(s)" in n for n in plan.notes)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    old = plan.to_dict()
    del old["crop_to_nonzero"]
    assert Plan.from_dict(old).crop_to_nonzero  # plans older than the flag crop


@pytest.mark.parametrize(("cropped_fraction", "scheme"), [
    (0.5, "zscore_nonzero"), (0.74, "zscore_nonzero"), (0.75, "zscore"), (1.0, "zscore")])
def test_mask_for_norm_follows_nnunets_rule(cropped_fraction, scheme):
    """nnU-Net v2 2.8.1 (ExperimentPlanner): z-score inside the nonzero mask only when the
    median case keeps less than 3/4 of its voxels after the crop; CT channels never."""
    shapes = [(100, 100, 40)] * 3
    kept = round(100 * cropped_fraction)
    cropped = [(kept, 100, 40), (kept, 100, 40), (100, 100, 40)]  # median: the cropped two
    fp = dataclasses.replace(make_fp([(1.0, 1.0, 1.0)] * 3, cropped, is_ct=(False, True)),
                             shapes=tuple(shapes))
    assert fp.median_relative_size_after_cropping == pytest.approx(kept / 100)
    plan = make_plan(fp, 3, SETTINGS, "mask")
    assert [n.scheme for n in plan.channel_norms] == [scheme, "ct"]
    word = "inside the nonzero mask" if scheme == "zscore_nonzero" else "over every voxel"
    assert any(f"z-score {word}" in note for note in plan.notes)
