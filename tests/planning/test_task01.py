from __future__ import annotations

import pytest

from nnpipe.model import build_unet, count_parameters
from nnpipe.planning.task01 import SYNTHETIC_DATASET, TASK01_LABELS, task01_plan

# (dim, patch (X, Y[, Z]), levels, filters, parameters without / with deep supervision)
TASK01 = [
    (3, (128, 128, 128), 6, (32, 64, 128, 256, 320, 320), 31_192_068, 31_192_844),
    (2, (160, 192), 6, (32, 64, 128, 256, 512, 512), 20_612_100, 20_612_876),
]


@pytest.mark.parametrize(("dim", "patch", "levels", "filters", "params", "params_ds"), TASK01,
                         ids=["3d", "2d"])
def test_default_network_is_the_reference_task01_network(dim, patch, levels, filters, params,
                                                        params_ds):
    """The reference's MSD Task01 (BraTS) network: 4 MRI channels, 4 classes, 128³ in 3D and
    192×160 in 2D (stored (X, Y) = 160×192), isotropic 3³ kernels, stride 2 down to 4 voxels
    per axis, 32 filters doubling to 320 (3D) or 512 (2D)."""
    plan = task01_plan(dim)
    assert plan.dim == dim and plan.patch_size == patch
    assert plan.num_channels == 4 and plan.num_classes == 4 and plan.labels == TASK01_LABELS
    assert plan.dataset == SYNTHETIC_DATASET
    assert len(plan.strides) == levels and plan.filters == filters
    assert plan.strides[0] == (1,) * dim and all(s == (2,) * dim for s in plan.strides[1:])
    assert all(k == (3,) * dim for k in plan.kernels)
    # pinned: a change in topology, filters or heads shows here
    assert count_parameters(build_unet(plan, deep_supervision=False)) == params
    # two deep-supervision heads, 1x1 convs from levels 1 and 2 (64 and 128 filters) to 4
    assert count_parameters(build_unet(plan)) - params == (64 * 4 + 4) + (128 * 4 + 4)
    assert count_parameters(build_unet(plan)) == params_ds
