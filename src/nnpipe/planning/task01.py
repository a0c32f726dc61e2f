"""The network the reference benchmarks when no plan is given: MSD Task01 (BraTS).

The reference's ``scripts/benchmark.py`` measures the Task01_BrainTumour network on
synthetic data: 4 MRI channels in, 4 classes out (background, edema, non-enhancing tumour,
enhancing tumour), a 128^3 patch in 3D and 192x160 in 2D at 1 mm, topology derived from the
patch. :func:`task01_plan` builds that plan with the same code as ``planning.preset:
reference`` (:func:`nnpipe.planning.presets.reference_plan`), from a fingerprint that holds
only what the preset does not fix: one BraTS-sized case (240x240x155 voxels at 1 mm) and
the task's labels. No data is read; the benchmark feeds random tensors.
"""

from __future__ import annotations

from nnpipe.planning.fingerprint import Fingerprint, IntensityStats
from nnpipe.planning.plan import Plan
from nnpipe.planning.planner import PlannerSettings
from nnpipe.planning.presets import PRESETS, reference_plan

TASK01 = "Task01_BrainTumour"
# MSD Task01's dataset.json labels
TASK01_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
BRATS_SHAPE = (240, 240, 155)  # voxels (X, Y, Z) at 1 mm
SYNTHETIC_DATASET = "synthetic-Task01_BrainTumour"


def task01_fingerprint() -> Fingerprint:
    """A one-case fingerprint with Task01's channels, labels and BraTS geometry (standard
    normal intensities: the benchmark's inputs are ``torch.randn``)."""
    channels = PRESETS[TASK01].channels
    stats = IntensityStats(mean=0.0, std=1.0, min=-5.0, max=5.0, p00_5=-2.6, p99_5=2.6,
                           n_voxels=1)
    return Fingerprint(case_ids=("synthetic",), spacings=((1.0, 1.0, 1.0),),
                       shapes=(BRATS_SHAPE,), cropped_shapes=(BRATS_SHAPE,),
                       intensity=(stats,) * channels, num_channels=channels,
                       labels=dict(TASK01_LABELS), is_ct=(False,) * channels)


def task01_plan(dim: int) -> Plan:
    """The reference's Task01 plan in ``dim`` D: 3D 128^3, six levels, filters 32..320;
    2D 192x160 (``(X, Y)`` = 160x192 in nnpipe's axis order), filters 32..512."""
    return reference_plan(task01_fingerprint(), dim, PRESETS[TASK01], PlannerSettings(),
                          SYNTHETIC_DATASET)
