"""CaseTransform: one forward (preprocess) and inverse (restore) for nnpipe plans and v2
semantics, on the host and a torch device (the CPU device here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpipe.errors import DataError
from nnpipe.labels import LabelScheme
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.preprocessing.pipeline import crop_normalize_resample, preprocess_image
from nnpipe.preprocessing.resample import Resampling
from nnpipe.preprocessing.transform import CaseTransform

SPACING = (0.9, 1.1, 3.5)
NORMS = (ChannelNorm("zscore_nonzero"), ChannelNorm("ct", -100.0, 200.0, 40.0, 50.0))


def _plan(dim: int = 3, slice_axis: int | None = None) -> Plan:
    spacing = (1.5, 1.5, 2.5)
    net = spacing if dim == 3 else tuple(spacing[a] for a in range(3) if a != slice_axis)
    return Plan(dataset="tiny", dim=dim, spacing=net, full_spacing=spacing,
                patch_size=(16,) * dim, kernels=((3,) * dim,) * 2,
                strides=((1,) * dim, (2,) * dim), filters=(8, 16), batch_size=2,
                num_channels=2, num_classes=2, labels={0: "background", 1: "blob"},
                channel_norms=NORMS, slice_axis=slice_axis)


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((2, 30, 26, 9), dtype=np.float32)
    image[:, 3:27, 2:24, 1:8] = rng.normal(60.0, 30.0, size=(2, 24, 22, 7))
    image[0, 12, 12, 4] = 0.0  # a hole, filled: z-scored as tissue
    return image


@pytest.mark.parametrize(("dim", "slice_axis"), [(3, None), (2, 2)])
def test_forward_of_a_plan_is_preprocess_image(dim, slice_axis):
    plan = _plan(dim, slice_axis)
    image, affine = _image(), np.diag([*SPACING, 1.0])
    ref, ref_meta = preprocess_image(image, affine, plan, "c")
    data, meta = CaseTransform.from_plan(plan).forward(image, affine, case_id="c")
    assert isinstance(data, np.ndarray) and meta == ref_meta
    np.testing.assert_array_equal(data, ref)


def test_forward_on_the_device_equals_the_host():
    transform = CaseTransform.from_plan(_plan())
    image, affine = _image(1), np.diag([*SPACING, 1.0])
    host, host_meta = transform.forward(image, affine, case_id="c")
    dev, meta = transform.forward(image, affine, torch.device("cpu"), case_id="c")
    assert isinstance(dev, torch.Tensor) and meta == host_meta
    np.testing.assert_allclose(dev.numpy(), host, rtol=0, atol=2e-5)
    assert image[0, 12, 12, 4] == 0.0  # the caller's image is not normalized in place


def test_transpose_and_v2_rules_are_data():
    """A permuted voxel order, no lower bound on the shape and a forced separate axis: the
    same steps as on the permuted array, and the inverse gives the image's own order."""
    transform = CaseTransform(norms=NORMS, target_spacing=(2.0, 1.0, 1.0),
                              transpose=(2, 0, 1), min_size=0,
                              resampling=Resampling(order=3, force_separate_z=True))
    image, spacing = _image(2), (1.0, 1.0, 3.5)
    data, meta = transform.forward(image, np.diag([*spacing, 1.0]), case_id="t")
    moved = image.transpose(0, 3, 1, 2)
    ref = crop_normalize_resample(moved, (3.5, 1.0, 1.0), (2.0, 1.0, 1.0), NORMS, min_size=0,
                                  resampling=Resampling(order=3, force_separate_z=True))
    np.testing.assert_array_equal(data, ref.data)
    assert meta.original_shape == moved.shape[1:] and meta.bbox == ref.bbox
    assert meta.original_spacing == (3.5, 1.0, 1.0)
    # logits favouring class 1 everywhere: label 1 inside the crop box, 0 outside, in the
    # image's own axis order; probabilities: the softmax inside, background 1 outside
    logits = np.stack([np.zeros(meta.resampled_shape), np.full(meta.resampled_shape, 2.0)])
    scheme = LabelScheme.from_values({0: "background", 1: "a"})
    labels, full = transform.inverse(logits.astype(np.float32), meta, scheme,
                                     with_probabilities=True)
    assert labels.shape == image.shape[1:] and full is not None
    assert full.shape == (2, *image.shape[1:])
    inside = np.zeros(image.shape[1:], bool)
    inside[tuple(slice(lo, hi) for lo, hi in
                 (meta.bbox[1], meta.bbox[2], meta.bbox[0]))] = True
    assert np.all(labels[inside] == 1) and np.all(labels[~inside] == 0)
    np.testing.assert_allclose(full[1][inside], 1 / (1 + np.exp(-2.0)), rtol=1e-5)
    assert np.all(full[0][~inside] == 1.0)


def test_bad_channel_count_is_named():
    with pytest.raises(DataError, match="case 'x'.*1 channel"):
        CaseTransform.from_plan(_plan()).forward(_image()[:1], np.eye(4), case_id="x")


def test_inverse_refuses_a_rule_the_restore_functions_do_not_apply():
    transform = CaseTransform(norms=NORMS, target_spacing=(1.0, 1.0, 1.0),
                              restore_resampling=Resampling(order=3))
    image, affine = _image(3), np.eye(4)
    data, meta = transform.forward(image, affine, case_id="r")
    with pytest.raises(NotImplementedError, match="order=3"):
        transform.inverse(np.zeros((2, *meta.resampled_shape), np.float32), meta,
                          LabelScheme.from_values({0: "background", 1: "a"}))
