"""The cascade's planning rule on fingerprints either side of the 25 % threshold."""

from __future__ import annotations

import math

import pytest

from nnpipe.planning.cascade import (
    ANISOTROPY_RATIO,
    CASCADE_THRESHOLD,
    LOWRES_STEP,
    cascade_decision,
    cascade_plan,
    lowres_plan,
    lowres_spacings,
    patch_coverage,
)
from nnpipe.planning.fingerprint import Fingerprint
from nnpipe.planning.planner import PlannerSettings, make_plan

from .conftest import uniform_fingerprint

# a 16^3 patch budget: 4096 voxels
SETTINGS = PlannerSettings(max_patch_voxels_3d=16**3, base_filters=4, max_depth=2,
                           min_feature_size=4)


def make_fp(shape, spacing=(1.0, 1.0, 1.0), n: int = 3) -> Fingerprint:
    return uniform_fingerprint(n, spacing, shape)


# median images of 16^3 x {1, 3.5, 4.5, 8} voxels against a 16^3 patch: coverage 100 %,
# 28.6 % and 22.2 % (either side of 25 %) and 12.5 %
@pytest.mark.parametrize(("shape", "cascade"), [
    ((16, 16, 16), False),
    ((16, 16, 56), False),
    ((16, 16, 72), True),
    ((32, 32, 32), True),
])
def test_decision_either_side_of_the_threshold(shape, cascade):
    fp = make_fp(shape)
    full = make_plan(fp, 3, SETTINGS, "t")
    assert (patch_coverage(full) < CASCADE_THRESHOLD) is cascade
    decided, why = cascade_decision(fp, SETTINGS)
    assert decided is cascade
    assert f"{patch_coverage(full):.1%}" in why


def test_coverage_is_patch_over_median_voxels():
    full = make_plan(make_fp((16, 16, 72)), 3, SETTINGS, "t")
    assert full.patch_size == (16, 16, 16)
    assert patch_coverage(full) == pytest.approx(16**3 / (16 * 16 * 72))


def test_off_and_reference_and_2d_plan_no_cascade():
    fp = make_fp((32, 32, 32))
    assert cascade_decision(fp, SETTINGS, mode="off")[0] is False
    assert cascade_decision(fp, SETTINGS, preset="reference")[0] is False
    assert cascade_decision(make_fp((32, 32, 1)), SETTINGS)[0] is False
    with pytest.raises(ValueError, match="sometimes"):
        cascade_decision(fp, SETTINGS, mode="sometimes")


def test_lowres_plan_covers_a_quarter_at_a_coarser_spacing():
    fp = make_fp((32, 32, 32))
    low = lowres_plan(fp, SETTINGS, "t")
    full = make_plan(fp, 3, SETTINGS, "t")
    assert low.configuration == "3d_lowres" and low.previous_stage == ""
    assert patch_coverage(low) >= CASCADE_THRESHOLD
    # isotropic data: every axis raised alike, by a whole number of steps
    ratio = low.full_spacing[0] / full.full_spacing[0]
    assert low.full_spacing[0] == pytest.approx(low.full_spacing[2])
    steps = round(math.log(ratio) / math.log(LOWRES_STEP))
    assert ratio == pytest.approx(LOWRES_STEP**steps)
    # the step before was not coarse enough: the first sufficient spacing is taken
    before = make_plan(fp, 3, SETTINGS, "t",
                       spacing=tuple(s / LOWRES_STEP for s in low.full_spacing))
    assert patch_coverage(before) < CASCADE_THRESHOLD
    assert any("3d_lowres" in n for n in low.notes)


def test_lowres_plan_refuses_a_dataset_without_cascade():
    with pytest.raises(ValueError, match="needs no cascade"):
        lowres_plan(make_fp((16, 16, 16)), SETTINGS, "t")


def test_spacing_step_raises_fine_axes_of_anisotropic_data_first():
    aniso = lowres_spacings((0.8, 0.8, 5.0))
    assert aniso == pytest.approx((0.8 * LOWRES_STEP, 0.8 * LOWRES_STEP, 5.0))
    iso = lowres_spacings((1.0, 1.0, 1.5))
    assert iso == pytest.approx(tuple(s * LOWRES_STEP for s in (1.0, 1.0, 1.5)))
    assert 5.0 / 0.8 > ANISOTROPY_RATIO > 1.5


def test_cascade_plan_is_the_3d_plan_with_extra_channels():
    fp = make_fp((32, 32, 32))
    full = make_plan(fp, 3, SETTINGS, "t")
    casc = cascade_plan(fp, SETTINGS, "t")
    assert casc.configuration == "3d_cascade" and casc.previous_stage == "3d_lowres"
    assert (casc.patch_size, casc.full_spacing, casc.strides) == (
        full.patch_size, full.full_spacing, full.strides)
    assert casc.previous_channels == 2  # foreground classes
    assert casc.input_channels == 3
    assert full.previous_channels == 0 and full.input_channels == 1


def test_plan_configuration_names_each_stage():
    from nnpipe.planning.cascade import plan_configuration

    fp = make_fp((32, 32, 32))
    assert plan_configuration(fp, "3d", SETTINGS, "t") == make_plan(fp, 3, SETTINGS, "t")
    assert plan_configuration(fp, "3d_lowres", SETTINGS, "t").configuration == "3d_lowres"
    assert plan_configuration(fp, "3d_cascade", SETTINGS, "t").previous_stage == "3d_lowres"
    with pytest.raises(ValueError, match="plans no cascade"):
        plan_configuration(fp, "3d_lowres", SETTINGS, "t", preset="reference")
    with pytest.raises(ValueError, match="unknown"):
        plan_configuration(fp, "3d_fullres", SETTINGS, "t")
