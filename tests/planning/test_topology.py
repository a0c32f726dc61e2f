"""Golden topologies of the reference (spacing and patch in (z, y, x) as the reference lists them;
the function does not care about axis order)."""

from __future__ import annotations

import pytest

from nnpipe.planning.topology import total_strides, unet_filters, unet_topology


@pytest.mark.parametrize(
    ("patch", "spacing", "strides", "kernels"),
    [
        # Task01 BrainTumour 3D: isotropic, 5 downsamplings to a 4^3 bottleneck
        ((128, 128, 128), (1.0, 1.0, 1.0), [(1, 1, 1)] + [(2, 2, 2)] * 5, [(3, 3, 3)] * 6),
        # Task05 Prostate 3D: in-plane first until voxels are near-isotropic; z stops at 5
        ((20, 320, 256), (3.6, 0.62, 0.62),
         [(1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)],
         [(1, 3, 3), (1, 3, 3)] + [(3, 3, 3)] * 4),
        # Task04 Hippocampus 3D: small patch, 4 levels
        ((40, 56, 40), (1.0, 1.0, 1.0), [(1, 1, 1)] + [(2, 2, 2)] * 3, [(3, 3, 3)] * 4),
        # Task01 2D
        ((192, 160), (1.0, 1.0), [(1, 1)] + [(2, 2)] * 5, [(3, 3)] * 6),
    ],
)
def test_reference_topologies(patch, spacing, strides, kernels):
    k, s = unet_topology(patch, spacing)
    assert list(s) == strides
    assert list(k) == kernels


def test_bottleneck_size_task01():
    _, strides = unet_topology((128, 128, 128), (1.0, 1.0, 1.0))
    assert tuple(128 // t for t in total_strides(strides)) == (4, 4, 4)


def test_axis_order_does_not_matter():
    k, s = unet_topology((256, 320, 20), (0.62, 0.62, 3.6))
    assert s[1] == (2, 2, 1)
    assert k[0] == (3, 3, 1)


def test_max_depth_caps_levels():
    _, s = unet_topology((512, 512, 512), (1.0, 1.0, 1.0), max_depth=3)
    assert len(s) == 4
    _, s = unet_topology((512, 512, 512), (1.0, 1.0, 1.0), max_depth=0)
    assert s == ((1, 1, 1),)


def test_too_small_patch_has_one_level():
    k, s = unet_topology((6, 6, 6), (1.0, 1.0, 1.0))
    assert s == ((1, 1, 1),)
    assert k == ((3, 3, 3),)


def test_total_strides():
    assert total_strides(((1, 1, 1), (1, 2, 2), (2, 2, 2))) == (2, 4, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [(((64, 64), (1.0, 1.0, 1.0)), "2 or 3"), (((64, 64, 64), (1.0, 0.0, 1.0)), "> 0"),
     (((64,), (1.0,)), "2 or 3")],
)
def test_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        unet_topology(*args)


def test_filters():
    assert unet_filters(6, 3) == (32, 64, 128, 256, 320, 320)
    assert unet_filters(7, 2) == (32, 64, 128, 256, 512, 512, 512)
    assert unet_filters(3, 3, base=16) == (16, 32, 64)
    with pytest.raises(ValueError, match="dim"):
        unet_filters(3, 4)
