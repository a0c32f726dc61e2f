"""Random corruption of the cascade's previous-stage channels (nnpipe.data.previous)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnpipe.data import previous as P


def _ball(radius: int, dim: int = 3) -> np.ndarray:
    grid = np.mgrid[(slice(-radius, radius + 1),) * dim]
    return (grid ** 2).sum(0) <= radius ** 2


def _blobs(seed: int, shape=(40, 40, 40), margin: int = 12) -> np.ndarray:
    """Random blobs well inside the array (no voxel within ``margin`` of its edge)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    inner = tuple(slice(margin, s - margin) for s in shape)
    mask[inner] = ndimage.gaussian_filter(rng.random(shape), 2)[inner] > 0.5
    return mask


SCIPY = {"dilation": ndimage.binary_dilation, "erosion": ndimage.binary_erosion,
         "opening": ndimage.binary_opening, "closing": ndimage.binary_closing}


@pytest.mark.parametrize("operation", P.OPERATIONS)
@pytest.mark.parametrize("radius", [1, 2, 4])
def test_morphology_equals_scipy_with_a_euclidean_ball(operation, radius):
    """Away from the array's edge the distance-transform morphology is the textbook one."""
    for seed in (0, 1):
        mask = _blobs(seed)
        assert mask.any()
        expected = SCIPY[operation](mask, structure=_ball(radius))
        np.testing.assert_array_equal(P.morphology(mask, operation, radius), expected)


def test_morphology_in_2d_patches_uses_discs():
    mask = _blobs(3, shape=(40, 1, 40), margin=10)
    got = P.morphology(mask, "dilation", 3)
    expected = ndimage.binary_dilation(mask[:, 0], structure=_ball(3, 2))
    np.testing.assert_array_equal(got[:, 0], expected)


def test_the_patch_edge_is_not_an_object_edge():
    full = np.ones((6, 6, 6), dtype=bool)
    np.testing.assert_array_equal(P.morphology(full, "erosion", 2), full)
    slab = np.zeros((10, 10, 10), dtype=bool)
    slab[:4] = True  # touches the edge at x = 0; its inner face is at x = 3
    eroded = P.morphology(slab, "erosion", 2)
    np.testing.assert_array_equal(eroded[:, 5, 5], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    empty = np.zeros((5, 5, 5), dtype=bool)
    for operation in P.OPERATIONS:
        assert not P.morphology(empty, operation, 3).any()
    with pytest.raises(ValueError, match="dilation, erosion"):
        P.morphology(slab, "tophat", 1)


def _onehot(seed: int) -> np.ndarray:
    """(3, 24, 24, 24) channels of a label map with three touching classes."""
    seg = np.zeros((24, 24, 24), dtype=np.uint8)
    seg[4:20, 4:20, 4:20] = 1
    seg[8:16, 8:16, 8:16] = 2
    seg[10:13, 10:13, 10:13] = 3
    seg[1:3, 1:3, 1:3] = 3  # a small second component of class 3
    rng = np.random.default_rng(seed)
    seg[rng.random(seg.shape) < 0.01] = 0
    return (seg[None] == np.arange(1, 4).reshape(-1, 1, 1, 1)).astype(np.float32)


def test_perturbation_keeps_the_channels_one_hot_and_changes_some_samples():
    changed = 0
    for seed in range(40):
        hot = _onehot(seed)
        before = hot.copy()
        P.perturb_previous(hot, np.random.default_rng(seed))
        assert set(np.unique(hot)) <= {0.0, 1.0}
        assert hot.sum(0).max() <= 1  # at most one class per voxel
        changed += not np.array_equal(hot, before)
    # P(neither corruption) = 0.6 * 0.8 = 0.48: about half the samples change
    assert 10 <= changed <= 32


def test_draws_do_not_depend_on_the_content():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    P.perturb_previous(_onehot(0), a)
    P.perturb_previous(np.zeros((3, 24, 24, 24), dtype=np.float32), b)
    assert a.random() == b.random()


class _Forced:
    """A generator whose ``random()`` returns the given values in turn, else numpy's."""

    def __init__(self, values):
        self._values, self._rng = list(values), np.random.default_rng(0)

    def random(self):
        return self._values.pop(0) if self._values else self._rng.random()

    def __getattr__(self, name):
        return getattr(self._rng, name)


def test_component_removal_spares_components_above_the_size_limit():
    hot = np.zeros((1, 20, 20, 20), dtype=np.float32)
    hot[0, 2:18, 2:18, 2:18] = 1  # 51 % of the patch: never removed
    hot[0, 0, 0, 0] = 1  # a corner voxel apart from it: the only candidate
    # morphology off (0.9 >= 0.4), removal on (0.0 < 0.2), the candidate drawn with u = 0.5
    P.perturb_previous(hot, _Forced([0.9, 0.0, 0.5]))
    assert hot[0, 0, 0, 0] == 0
    assert hot[0, 2:18, 2:18, 2:18].all()
    big_only = np.zeros((1, 20, 20, 20), dtype=np.float32)
    big_only[0, 2:18, 2:18, 2:18] = 1
    P.perturb_previous(big_only, _Forced([0.9, 0.0, 0.5]))
    assert big_only.sum() == 16 ** 3
