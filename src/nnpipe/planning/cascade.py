"""The low-resolution cascade: when it is planned, and the plans of its two stages.

nnU-Net's rule: when the full-resolution 3D patch covers less than a quarter of the median
image (in voxels, both at the full-resolution spacing), a network sees too little context per
patch; the cascade then adds

* ``3d_lowres``: a 3D network at a coarser spacing, raised in small steps until its patch
  covers at least :data:`CASCADE_THRESHOLD` of the median image at that spacing (patch and
  topology replanned at every step, so the last step is the first coarse enough);
* ``3d_cascade``: the full-resolution 3D plan, whose network also takes the low-resolution
  segmentation (upsampled, one-hot, foreground classes) as extra input channels
  (:attr:`nnpipe.planning.plan.Plan.previous_channels`).

Pure functions: a fingerprint and planner settings in, plans (or a decision) out.
"""

from __future__ import annotations

import math
from dataclasses import replace
from enum import Enum

import numpy as np

from nnpipe.planning.fingerprint import Fingerprint
from nnpipe.planning.plan import Plan
from nnpipe.planning.planner import PlannerSettings, make_plan
from nnpipe.study import CASCADE, CONFIGURATION_DIMS, LOWRES
from nnpipe.study import configuration as configuration_name

# A patch covering less than this fraction of the median image (voxels) asks for a cascade;
# the low-resolution stage is coarse enough once its patch covers at least this fraction.
CASCADE_THRESHOLD = 0.25
# Each step multiplies the low-resolution spacing by this factor: small enough that the stage
# is not coarser than it needs to be (3 % more spacing is about 9 % fewer voxels), large
# enough that planning stays fast (a 4x coarser spacing takes 47 steps).
LOWRES_STEP = 1.03
# While some axis is more than this many times finer than the coarsest, only such fine axes
# are raised: anisotropic data (e.g. 0.8 x 0.8 x 5 mm) first becomes less anisotropic
# instead of losing still more resolution along the coarse axis.
ANISOTROPY_RATIO = 2.0
# Steps at most (1.03^400 is about 10^5: far beyond any image); reaching it is a bug.
MAX_STEPS = 400



class CascadeMode(str, Enum):
    """``planning.cascade``: ``auto`` plans a cascade where nnU-Net's rule asks for one."""

    AUTO = "auto"
    OFF = "off"


def patch_coverage(plan: Plan) -> float:
    """Fraction of the median image (voxels, at the plan's spacing) one patch covers."""
    if not plan.median_shape:
        raise ValueError(f"plan for {plan.dataset!r} has no median shape")
    median = [plan.median_shape[a] for a in plan.in_plane_axes]
    return math.prod(plan.patch_size) / math.prod(median)


def cascade_decision(fp: Fingerprint, settings: PlannerSettings, mode: str = "auto",
                     preset: str = "auto") -> tuple[bool, str]:
    """Whether the study plans the cascade for ``fp``, and why (one sentence for the logs).

    Only automatic planning (``preset: auto``) of 3D datasets plans one: the reference preset
    is a fixed network at a fixed spacing.
    """
    CascadeMode(mode)  # ValueError names the value
    if mode == CascadeMode.OFF:
        return False, "planning.cascade is off"
    if preset != "auto":
        return False, f"planning.preset {preset!r} plans no cascade"
    if fp.single_slice:
        return False, "a 2D dataset has no 3D stages"
    full = make_plan(fp, 3, settings, "")
    coverage = patch_coverage(full)
    verdict = "below" if coverage < CASCADE_THRESHOLD else "at or above"
    return coverage < CASCADE_THRESHOLD, (
        f"the 3D patch {full.patch_size} covers {coverage:.1%} of the median image "
        f"{full.median_shape}, {verdict} the {CASCADE_THRESHOLD:.0%} threshold")


def lowres_spacings(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """One step of the low-resolution spacing (mm): the axes more than
    :data:`ANISOTROPY_RATIO` times finer than the coarsest grow by :data:`LOWRES_STEP`, or
    every axis when none is."""
    sp = np.asarray(spacing, dtype=np.float64)
    fine = sp.max() / sp > ANISOTROPY_RATIO
    sp = np.where(fine, sp * LOWRES_STEP, sp) if fine.any() else sp * LOWRES_STEP
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def lowres_plan(fp: Fingerprint, settings: PlannerSettings, dataset_name: str) -> Plan:
    """The ``3d_lowres`` plan: the full-resolution spacing raised step by step
    (:func:`lowres_spacings`) until the replanned patch covers at least
    :data:`CASCADE_THRESHOLD` of the median image at that spacing.

    Raises:
        ValueError: if the full-resolution patch already covers that much (no cascade).
    """
    full = make_plan(fp, 3, settings, dataset_name)
    if patch_coverage(full) >= CASCADE_THRESHOLD:
        raise ValueError(f"dataset {dataset_name!r} needs no cascade: the 3D patch "
                         f"{full.patch_size} covers {patch_coverage(full):.1%} of the median "
                         f"image {full.median_shape} (threshold {CASCADE_THRESHOLD:.0%})")
    spacing = full.full_spacing
    for step in range(1, MAX_STEPS + 1):
        spacing = lowres_spacings(spacing)
        plan = make_plan(fp, 3, settings, dataset_name, spacing=spacing)
        if patch_coverage(plan) >= CASCADE_THRESHOLD:
            factor = max(s / f for s, f in zip(spacing, full.full_spacing, strict=True))
            note = (f"3d_lowres: spacing raised in {step} step(s) of x{LOWRES_STEP} (up to "
                    f"x{factor:.3g}) until the patch {plan.patch_size} covers "
                    f"{patch_coverage(plan):.1%} of the median image {plan.median_shape}")
            return replace(plan, configuration=LOWRES, notes=(*plan.notes, note))
    raise RuntimeError(f"low-resolution planning did not converge in {MAX_STEPS} steps "
                       f"(at spacing {spacing})")  # not reachable: the patch covers it at last


def cascade_plan(fp: Fingerprint, settings: PlannerSettings, dataset_name: str) -> Plan:
    """The ``3d_cascade`` plan: the full-resolution 3D plan whose network also takes the
    ``3d_lowres`` segmentation as :attr:`~nnpipe.planning.plan.Plan.previous_channels`."""
    full = make_plan(fp, 3, settings, dataset_name)
    note = (f"3d_cascade: the 3D plan plus the 3d_lowres segmentation as "
            f"{full.num_classes - 1} one-hot input channel(s) (foreground classes)")
    return replace(full, configuration=CASCADE, previous_stage=LOWRES,
                   notes=(*full.notes, note))


# nnU-Net's configuration names (the run names' first part) -> the plan's dimensionality
CONFIGURATIONS = CONFIGURATION_DIMS


def plan_configuration(fp: Fingerprint, configuration: str, settings: PlannerSettings,
                       dataset_name: str, preset: str = "auto", task: str = "") -> Plan:
    """The plan of a configuration: ``2d`` and ``3d`` as ``planning.preset`` plans them
    (:func:`nnpipe.planning.presets.plan_for`), the cascade's two stages automatically."""
    from nnpipe.planning.presets import plan_for

    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration {configuration!r} is unknown; known: "
                         f"{', '.join(CONFIGURATIONS)}")
    if configuration in (configuration_name(2), configuration_name(3)):
        return plan_for(fp, CONFIGURATIONS[configuration], settings, dataset_name, preset, task)
    if preset != "auto":
        raise ValueError(f"planning.preset {preset!r} plans no cascade ({configuration}); "
                         "use preset auto")
    if configuration == LOWRES:
        return lowres_plan(fp, settings, dataset_name)
    return cascade_plan(fp, settings, dataset_name)
