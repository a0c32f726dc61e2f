"""Golden plans of ``planning.preset: reference`` for every MSD task, 2D and 3D.

Expected values are written in the reference's (z, y, x) order, as its table lists them; the
plan stores (X, Y, Z), so each check reverses explicitly.
"""

from __future__ import annotations

import dataclasses

import pytest

from nnpipe.config import study_config
from nnpipe.planning.fingerprint import Fingerprint, IntensityStats
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.planning.planner import PlannerSettings
from nnpipe.planning.presets import PRESETS, find_preset, plan_for, reference_plan, zyx_to_xyz

S2 = (2, 2, 2)
Z1 = (1, 2, 2)  # no pooling along z (reference order)
K3 = (3, 3, 3)
K1 = (1, 3, 3)

# task: (3D patch zyx, 3D spacing zyx, 3D strides zyx, 3D kernels zyx, 2D patch yx, 2D spacing)
GOLDEN = {
    "Task01_BrainTumour": ((128, 128, 128), (1.0, 1.0, 1.0), [S2] * 5, [K3] * 6,
                           (192, 160), (1.0, 1.0)),
    "Task02_Heart": ((80, 192, 160), (1.37, 1.25, 1.25), [S2] * 4 + [Z1], [K3] * 6,
                     (320, 256), (1.25, 1.25)),
    "Task03_Liver": ((128, 128, 128), (1.0, 0.7676, 0.7676), [S2] * 5, [K3] * 6,
                     (512, 512), (0.7676, 0.7676)),
    "Task04_Hippocampus": ((40, 56, 40), (1.0, 1.0, 1.0), [S2] * 3, [K3] * 4,
                           (56, 40), (1.0, 1.0)),
    "Task05_Prostate": ((20, 320, 256), (3.6, 0.62, 0.62), [Z1, Z1, S2, S2, Z1],
                        [K1, K1] + [K3] * 4, (320, 320), (0.62, 0.62)),
    "Task06_Lung": ((80, 192, 160), (1.24, 0.79, 0.79), [S2] * 4 + [Z1], [K3] * 6,
                    (512, 512), (0.79, 0.79)),
    "Task07_Pancreas": ((40, 224, 224), (2.5, 0.8, 0.8), [Z1, S2, S2, S2, Z1], [K1] + [K3] * 5,
                        (512, 512), (0.8, 0.8)),
    "Task08_HepaticVessel": ((64, 192, 192), (1.5, 0.8, 0.8), [S2] * 4 + [Z1], [K3] * 6,
                             (512, 512), (0.8, 0.8)),
    "Task09_Spleen": ((64, 192, 160), (1.6, 0.79, 0.79), [Z1] + [S2] * 4, [K1] + [K3] * 5,
                      (512, 512), (0.79, 0.79)),
    "Task10_Colon": ((56, 192, 160), (3.0, 0.78, 0.78), [Z1, S2, S2, S2, Z1], [K1] + [K3] * 5,
                     (512, 512), (0.78, 0.78)),
}
CT = {"Task03_Liver": (-17, 201, 99.4, 39.36), "Task06_Lung": (-1024, 325, -158.58, 324.7),
      "Task07_Pancreas": (-96, 215, 77.9, 75.4), "Task08_HepaticVessel": (-3, 243, 104.37, 52.62),
      "Task09_Spleen": (-41, 176, 99.29, 39.47), "Task10_Colon": (-30, 165.82, 62.18, 32.65)}
STATS = IntensityStats(mean=1.0, std=1.0, min=0.0, max=2.0, p00_5=0.0, p99_5=2.0, n_voxels=10)
SETTINGS = PlannerSettings(max_patch_voxels_3d=128**3, max_patch_voxels_2d=192 * 160)


def _fp(channels: int, z_spacings=(2.0, 3.0, 4.0)) -> Fingerprint:
    n = len(z_spacings)
    return Fingerprint(
        case_ids=tuple(f"c{i}" for i in range(n)),
        spacings=tuple((0.8, 0.8, z) for z in z_spacings),
        shapes=((300, 300, 60),) * n, cropped_shapes=((300, 300, 60),) * n,
        intensity=(STATS,) * channels, num_channels=channels,
        labels={0: "background", 1: "a", 2: "b"}, is_ct=(False,) * channels)


def test_every_task_has_a_golden_row():
    assert sorted(GOLDEN) == sorted(PRESETS)
    assert len(PRESETS) == 10


def _rev_levels(levels) -> list[tuple[int, ...]]:
    return [zyx_to_xyz(level) for level in levels]


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_reference_3d_plan(task):
    patch, spacing, strides, kernels, _, _ = GOLDEN[task]
    preset = PRESETS[task]
    plan = reference_plan(_fp(preset.channels), 3, preset, SETTINGS, task)
    assert plan.patch_size == zyx_to_xyz(patch)  # (X, Y, Z)
    assert plan.spacing == pytest.approx(zyx_to_xyz(spacing))
    assert plan.full_spacing == pytest.approx(zyx_to_xyz(spacing))
    assert list(plan.strides) == _rev_levels([(1, 1, 1)] + strides)
    assert list(plan.kernels) == _rev_levels(kernels)
    assert plan.filters == tuple(min(32 * 2**i, 320) for i in range(len(strides) + 1))
    assert plan.slice_axis is None
    assert plan.batch_size >= 2
    # the bottleneck keeps at least 4 voxels on every axis
    total = [1, 1, 1]
    for level in plan.strides:
        total = [t * s for t, s in zip(total, level, strict=True)]
    assert all(p // t >= 4 for p, t in zip(plan.patch_size, total, strict=True))


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_reference_2d_plan(task):
    *_, patch, spacing = GOLDEN[task]
    preset = PRESETS[task]
    plan = reference_plan(_fp(preset.channels), 2, preset, SETTINGS, task)
    assert plan.patch_size == zyx_to_xyz(patch)  # (X, Y) with Z sliced
    assert plan.slice_axis == 2 and plan.in_plane_axes == (0, 1)
    assert plan.spacing == pytest.approx(zyx_to_xyz(spacing))
    assert plan.full_spacing == pytest.approx((*zyx_to_xyz(spacing), 3.0))  # median z
    # every 2D preset is isotropic in-plane: stride 2 until 5 levels or the 4-pixel floor
    levels = min(5, min(((p // 4).bit_length() - 1) for p in patch))
    assert plan.strides == ((1, 1),) + ((2, 2),) * levels
    assert plan.kernels == ((3, 3),) * (levels + 1)
    assert plan.filters == tuple(min(32 * 2**i, 512) for i in range(levels + 1))


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_reference_normalization(task):
    preset = PRESETS[task]
    plan = reference_plan(_fp(preset.channels), 3, preset, SETTINGS, task)
    if task in CT:
        low, high, mean, std = CT[task]
        assert plan.channel_norms == (ChannelNorm("ct", clip_low=low, clip_high=high, mean=mean,
                                                  std=std),)
    else:  # _fp's cases have nothing to crop: z-score over every voxel (nnU-Net's rule)
        assert plan.channel_norms == (ChannelNorm("zscore"),) * preset.channels
        cropped = dataclasses.replace(_fp(preset.channels),
                                      cropped_shapes=((150, 300, 60),) * 3)
        assert reference_plan(cropped, 3, preset, SETTINGS, task).channel_norms == \
            (ChannelNorm("zscore_nonzero"),) * preset.channels


def test_examples_from_the_reference_text():
    """Task01 bottleneck 4^3; Task05 (1,3,3) kernels at the first two levels; Task04 4 levels."""
    p1 = reference_plan(_fp(4), 3, PRESETS["Task01_BrainTumour"], SETTINGS, "t")
    assert len(p1.strides) == 6 and p1.patch_size[0] // 2**5 == 4
    p5 = reference_plan(_fp(2), 3, PRESETS["Task05_Prostate"], SETTINGS, "t")
    assert p5.patch_size == (256, 320, 20)
    assert p5.kernels[:2] == ((3, 3, 1), (3, 3, 1))
    p4 = reference_plan(_fp(1), 3, PRESETS["Task04_Hippocampus"], SETTINGS, "t")
    assert len(p4.strides) == 4


def test_channel_count_must_match():
    with pytest.raises(ValueError, match="Task01_BrainTumour expects 4 channel"):
        reference_plan(_fp(1), 3, PRESETS["Task01_BrainTumour"], SETTINGS, "t")


def test_find_preset_from_task_or_name():
    assert find_preset("", "Task09_Spleen").task == "Task09_Spleen"
    assert find_preset("5", "whatever").task == "Task05_Prostate"
    with pytest.raises(ValueError, match="needs an MSD task"):
        find_preset("", "embedded")


def test_plan_for_dispatches_from_config():
    cfg = study_config({"dataset": {"name": "spleen", "task": "Task09"},
                        "planning": {"preset": "reference"}})
    plan = plan_for(_fp(1), 3, SETTINGS, cfg.dataset.name, cfg.planning.preset, cfg.dataset.task)
    assert plan.patch_size == (160, 192, 64) and plan.dataset == "spleen"
    assert Plan.from_dict(plan.to_dict()) == plan
    auto = plan_for(_fp(1), 3, SETTINGS, "spleen")
    assert auto.notes != plan.notes
    with pytest.raises(ValueError, match="unknown"):
        plan_for(_fp(1), 3, SETTINGS, "x", "magic")
