"""The device path of whole-case prediction (torch preprocessing, restore, argmax and label
values on the models' device), run on the CPU device: the same numbers as the numpy path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nnpipe.config import InferenceSettings
from nnpipe.datasets.layout import load_dataset, read_image
from nnpipe.errors import DataError
from nnpipe.inference import predict as P
from nnpipe.inference.ensemble import load_models
from nnpipe.labels import LabelScheme
from nnpipe.planning.plan import ChannelNorm
from nnpipe.preprocessing import transform as T
from nnpipe.preprocessing.pipeline import (
    preprocess_image,
    preprocess_image_torch,
    restore_channel_torch,
    restore_logits,
)

SETTINGS = InferenceSettings(overlap=0.5, blend="gaussian", tta=False, batch_size=2)
CPU = torch.device("cpu")


def _anisotropic_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image (4, 30, 28, 9) zero outside a box, on a grid of 2 x 2 x 9 mm: more than 3x
    coarser along z than in-plane, so z is resampled separately (nearest)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, 30, 28, 9), dtype=np.float32)
    image[:, 3:27, 2:25, 1:8] = rng.normal(300.0, 80.0, size=(4, 24, 23, 7))
    image[:, 3:8, 2:6, 1:3] = 0.0  # a zero corner inside the box: outside the nonzero mask
    return image, np.diag([2.0, 2.0, 9.0, 1.0])


def _case(tiny_study, i: int = 0):
    ds = load_dataset(tiny_study.raw)
    ci = read_image(ds, ds.training[i])
    return ci.image, ci.affine


def _ct(plan):
    norm = ChannelNorm("ct", clip_low=100.0, clip_high=400.0, mean=250.0, std=60.0)
    return dataclasses.replace(plan, channel_norms=(norm,) * plan.num_channels)


@pytest.mark.parametrize(("dim", "source", "norm"),
                         [(3, 0, "zscore"), (3, 3, "zscore"), (2, 1, "zscore"),
                          (3, "aniso", "zscore"), (2, "aniso", "zscore"), (3, "aniso", "ct")])
def test_preprocessing_on_the_device_equals_the_host(tiny_study, dim, source, norm):
    plan = tiny_study.plans[dim]
    plan = _ct(plan) if norm == "ct" else plan
    image, affine = _anisotropic_case() if source == "aniso" else _case(tiny_study, source)
    ref, ref_meta = preprocess_image(image, affine, plan, "c")
    got, meta = preprocess_image_torch(image, affine, plan, "c", CPU)
    assert meta == ref_meta
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape
    # normalized values (about N(0, 1), CT up to 2.5): float32 rounding
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("dim", [3, 2])
def test_every_scheme_on_the_device_equals_the_host(tiny_study, dim):
    """zscore (no mask), none, rescale_0_1 and rgb_0_1 (values in [0, 255], so spline
    overshoot has to be clipped) on the device and on the host."""
    plan = dataclasses.replace(tiny_study.plans[dim], channel_norms=tuple(
        ChannelNorm(s) for s in ("zscore", "none", "rescale_0_1", "rgb_0_1")))
    image, affine = _anisotropic_case(3)
    image = np.clip(image - 100.0, 0.0, 255.0)  # 8-bit range, zeros around the body
    ref, ref_meta = preprocess_image(image, affine, plan, "c")
    got, meta = preprocess_image_torch(image, affine, plan, "c", CPU, chunk_bytes=4096)
    assert meta == ref_meta
    assert ref[2].min() >= 0.0 and ref[2].max() == pytest.approx(1.0)  # rescale_0_1
    assert ref[3].min() >= 0.0 and ref[3].max() <= 1.0  # rgb_0_1: overshoot clipped
    np.testing.assert_allclose(got.numpy(), ref, atol=5e-5, rtol=1e-6)


def test_rgb_values_out_of_range_are_refused_naming_the_case(tiny_study):
    plan = dataclasses.replace(tiny_study.plans[3], channel_norms=(
        ChannelNorm("rgb_0_1", channel="rgb_to_0_1"),) * 4)
    image, affine = _anisotropic_case()
    for run in (preprocess_image, lambda *a: preprocess_image_torch(*a, CPU)):
        with pytest.raises(DataError, match=r"case 'c'.*channel 0 \('rgb_to_0_1'\) is "
                                            r"normalized with 'rgb_0_1'"):
            run(image, affine, plan, "c")


def test_device_preprocessing_slabs_do_not_change_the_result(tiny_study):
    image, affine = _anisotropic_case(1)
    plan = tiny_study.plans[3]
    ref, _ = preprocess_image_torch(image, affine, plan, "c", CPU)
    got, _ = preprocess_image_torch(image, affine, plan, "c", CPU, chunk_bytes=1)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5, rtol=0)


def test_an_all_zero_image_keeps_its_extent_and_becomes_zeros(tiny_study):
    plan = tiny_study.plans[3]
    image = np.zeros((4, 10, 9, 8), dtype=np.float32)
    ref, ref_meta = preprocess_image(image, np.eye(4) * 8.0, plan, "zero")
    got, meta = preprocess_image_torch(image, np.eye(4) * 8.0, plan, "zero", CPU)
    assert meta == ref_meta and meta.bbox == ((0, 10), (0, 9), (0, 8))
    assert not got.any() and not ref.any()


def test_unknown_normalization_on_the_device_is_named(tiny_study):
    plan = dataclasses.replace(tiny_study.plans[3],
                               channel_norms=(ChannelNorm("minmax"),) * 4)
    image, affine = _anisotropic_case()
    with pytest.raises(ValueError, match="scheme 'minmax' of channel 0 has no device version"):
        preprocess_image_torch(image, affine, plan, "c", CPU)


@pytest.mark.parametrize("source", [0, "aniso"])
def test_restore_on_the_device_equals_the_host(tiny_study, source):
    plan = tiny_study.plans[3]
    image, affine = _anisotropic_case() if source == "aniso" else _case(tiny_study, source)
    _, meta = preprocess_image(image, affine, plan, "c")
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 3.0, size=(4, *meta.resampled_shape)).astype(np.float32)
    ref = restore_logits(logits, meta)
    assert ref.shape == (4, *meta.cropped_shape)
    for k in range(4):
        channel = restore_channel_torch(torch.from_numpy(logits[k]), meta)
        assert tuple(channel.shape) == meta.cropped_shape
        np.testing.assert_allclose(channel.numpy(), ref[k], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="does not match the preprocessed shape"):
        restore_channel_torch(torch.from_numpy(logits[0][:-1]), meta)


def _both_paths(lms, image, affine, **kw):
    host = P.predict_image(lms, image, affine, SETTINGS, "c", device_path=False, **kw)
    device = P.predict_image(lms, image, affine, SETTINGS, "c", device_path=True, **kw)
    return host, device


def _assert_same(host, device, regions: bool = False):
    """Same probabilities to float32 rounding; the same labels wherever the decision is not
    a float32 tie (top two classes, or a region at its 0.5 threshold)."""
    assert device.labels.dtype == host.labels.dtype
    assert device.labels.shape == host.labels.shape
    np.testing.assert_allclose(device.probabilities, host.probabilities, atol=1e-5, rtol=0)
    if regions:
        clear = (np.abs(host.probabilities - 0.5) > 1e-5).all(0)
    else:
        top2 = np.sort(host.probabilities, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(device.labels[clear], host.labels[clear])


@pytest.mark.parametrize(("which", "source"),
                         [(("3d",), 0), (("3d",), 2), (("2d",), 1), (("3d-regions",), 0),
                          (("3d", "3d-b"), 4), (("3d",), "aniso")])
def test_predict_image_device_path_gives_the_host_labels(tiny_study, models, which, source):
    lms = load_models([models[w] for w in which], CPU)
    image, affine = _anisotropic_case() if source == "aniso" else _case(tiny_study, source)
    host, device = _both_paths(lms, image, affine, with_probabilities=True)
    assert device.probabilities.shape == host.probabilities.shape == (
        lms[0].out_channels, *image.shape[1:])
    _assert_same(host, device, regions=lms[0].regions is not None)


@pytest.mark.parametrize("which", ["3d", "3d-regions"])
def test_device_path_without_probabilities_gives_the_same_labels(tiny_study, models, which):
    lms = load_models([models[which]], CPU)
    image, affine = _case(tiny_study, 0)
    with_probs = P.predict_image(lms, image, affine, SETTINGS, "c", device_path=True,
                                 with_probabilities=True)
    labels_only = P.predict_image(lms, image, affine, SETTINGS, "c", device_path=True)
    assert labels_only.probabilities is None
    np.testing.assert_array_equal(labels_only.labels, with_probs.labels)


def test_device_path_maps_wide_label_values(tiny_study, models):
    """Label values 0, 2, 5, 300 (uint16): the lookup on the device gives the host's."""
    (lm,) = load_models([models["3d"]], CPU)
    values = (0, 2, 5, 300)
    plan = lm.plan.with_scheme(LabelScheme.from_values({v: f"l{v}" for v in values}))
    lm = dataclasses.replace(lm, plan=plan)
    image, affine = _case(tiny_study, 0)
    host, device = _both_paths([lm], image, affine, with_probabilities=True)
    assert host.labels.dtype == np.uint16
    assert set(np.unique(host.labels)) <= set(values)
    _assert_same(host, device)


def test_models_off_the_cpu_take_the_device_path_by_default(tiny_study, models, monkeypatch):
    (lm,) = load_models([models["3d"]], CPU)
    seen = []

    class Taken(Exception):
        pass

    def spy(image, spacing, target, norms, device, **kw):
        seen.append(torch.device(device))
        raise Taken

    # the case transform's device step (nnpipe.preprocessing.transform.CaseTransform.forward)
    monkeypatch.setattr(T, "crop_normalize_resample_torch", spy)
    image, affine = _case(tiny_study, 0)
    P.predict_image([lm], image, affine, SETTINGS, "c")  # CPU models: the numpy path
    assert seen == []
    with pytest.raises(Taken):
        P.predict_image([dataclasses.replace(lm, device=torch.device("meta"))], image, affine,
                        SETTINGS, "c")
    assert seen == [torch.device("meta")]


def test_device_out_of_memory_falls_back_to_the_host_and_says_so(tiny_study, models,
                                                                  monkeypatch, capsys):
    lms = load_models([models["3d"]], CPU)
    image, affine = _case(tiny_study, 0)
    host = P.predict_image(lms, image, affine, SETTINGS, "c", device_path=False)

    def out_of_memory(*args, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(T, "crop_normalize_resample_torch", out_of_memory)
    monkeypatch.setattr(T, "restore_channel_torch", out_of_memory)
    got = P.predict_image(lms, image, affine, SETTINGS, "c", device_path=True)
    np.testing.assert_array_equal(got.labels, host.labels)
    err = capsys.readouterr().err
    assert "case 'c': device memory ran out while preprocessing; doing it on the host" in err
    assert "while restoring the logits; doing it on the host" in err


def test_uncropped_plan_on_the_device_equals_the_host(tiny_study):
    plan = dataclasses.replace(tiny_study.plans[3], crop_to_nonzero=False)
    image, affine = _anisotropic_case(2)
    ref, ref_meta = preprocess_image(image, affine, plan, "c")
    got, meta = preprocess_image_torch(image, affine, plan, "c", CPU)
    assert meta == ref_meta and meta.bbox == ((0, 30), (0, 28), (0, 9))
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-5, rtol=0)
