from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")

from nnpipe.data.augment import AugmentSettings  # noqa: E402
from nnpipe.data.dali import DaliLoader  # noqa: E402
from nnpipe.data.loader import BatchLoader, make_loader  # noqa: E402
from nnpipe.data.sampling import SamplerSettings  # noqa: E402

NOTHING = dict(zoom_prob=0.0, flip_prob=0.0, noise_prob=0.0, blur_prob=0.0,
               brightness_prob=0.0, contrast_prob=0.0)
S3 = SamplerSettings((8, 10, 6), foreground_prob=0.5)
S2 = SamplerSettings((8, 10), foreground_prob=0.5, dim=2, slice_axis=2)


def only(**kwargs: object) -> AugmentSettings:
    return AugmentSettings(**{**NOTHING, **kwargs})


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cases of 14x13x9 voxels, labels 0-3 in blocks; channel c is (c + 1) * labels."""
    folder = tmp_path_factory.mktemp("dali")
    rng = np.random.default_rng(0)
    cases = {}
    for case_id in ("p", "q", "r"):
        coarse = rng.integers(0, 4, size=(4, 4, 3))
        seg = coarse.repeat(4, 0).repeat(4, 1).repeat(3, 2)[:14, :13, :9].astype(np.uint8)
        np.save(folder / f"{case_id}.npy", np.stack([seg * 1.0, seg * 2.0]).astype(np.float32))
        np.save(folder / f"{case_id}_seg.npy", seg)
        cases[case_id] = {"class_locations": {str(k): np.argwhere(seg == k)[::7].tolist()
                                              for k in (1, 2, 3)}}
    (folder / "manifest.json").write_text(json.dumps({"plan": {}, "cases": cases}))
    return folder


def dali(folder: Path, augment: AugmentSettings, sampler: SamplerSettings = S3,
         seed: int = 0) -> DaliLoader:
    return DaliLoader(folder, ["p", "q", "r"], sampler, augment, 4, seed, "cpu", workers=1,
                      num_threads=1)


def torch_loader(folder: Path, augment: AugmentSettings, sampler: SamplerSettings = S3,
                 seed: int = 0) -> BatchLoader:
    return BatchLoader(folder, ["p", "q", "r"], sampler, augment, 4, seed, "cpu", workers=1)


def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


@pytest.mark.parametrize("sampler", [S3, S2])
def test_shapes_dtypes_and_labels(preprocessed: Path, sampler: SamplerSettings) -> None:
    with dali(preprocessed, AugmentSettings(), sampler) as loader:
        image, seg = next(loader)
    assert image.shape == (4, 2, *sampler.patch_size) and image.dtype == torch.float32
    assert seg.shape == (4, 1, *sampler.patch_size) and seg.dtype == torch.int64
    assert set(seg.unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("sampler", [S3, S2])
def test_unaugmented_and_flipped_batches_equal_the_torch_backend(
        preprocessed: Path, sampler: SamplerSettings) -> None:
    for settings in (AugmentSettings.disabled(), only(flip_prob=0.5)):
        with dali(preprocessed, settings, sampler) as d, \
                torch_loader(preprocessed, settings, sampler) as t:
            for (image_d, seg_d), (image_t, seg_t) in zip(take(d, 3), take(t, 3), strict=True):
                assert torch.equal(image_d, image_t) and torch.equal(seg_d, seg_t)


def test_flips_with_probability_one_are_exact(preprocessed: Path) -> None:
    with dali(preprocessed, only(flip_prob=1.0)) as d, \
            torch_loader(preprocessed, AugmentSettings.disabled()) as t:
        (image, seg), (plain, plain_seg) = next(d), next(t)
    assert torch.equal(image, plain.flip([2, 3, 4])) and torch.equal(seg, plain_seg.flip([2, 3, 4]))


@pytest.mark.parametrize("sampler", [S3, S2])
def test_spatial_transforms_keep_seg_aligned(preprocessed: Path,
                                             sampler: SamplerSettings) -> None:
    settings = only(zoom_prob=1.0, flip_prob=0.5, rotation_prob=1.0, scaling_prob=1.0)
    with dali(preprocessed, settings, sampler) as d, \
            torch_loader(preprocessed, AugmentSettings.disabled(), sampler) as t:
        for (image, seg), (plain, _) in zip(take(d, 3), take(t, 3), strict=True):
            assert not torch.equal(image, plain)  # it did move
            labels = seg.float()
            pool = F.max_pool3d if sampler.dim == 3 else F.max_pool2d
            boundary = pool(labels, 3, 1, 1) != -pool(-labels, 3, 1, 1)
            mismatch = (image[:, :1] - labels).abs() > 1e-4
            inner = (slice(None), slice(None)) + (slice(1, -1),) * sampler.dim
            assert not (mismatch & ~boundary)[inner].any()
            torch.testing.assert_close(image[:, 1:], 2.0 * image[:, :1])


def test_same_decisions_as_the_torch_backend(preprocessed: Path) -> None:
    # Zoom: one linear resampling in both, same factor and position, so labels agree exactly.
    settings = only(zoom_prob=0.7, flip_prob=0.5, brightness_prob=0.5, contrast_prob=0.5,
                    gamma_prob=0.5, gamma_inverted_prob=0.5)
    with dali(preprocessed, settings) as d, torch_loader(preprocessed, settings) as t:
        for (image_d, seg_d), (image_t, seg_t) in zip(take(d, 4), take(t, 4), strict=True):
            assert torch.equal(seg_d, seg_t)
            # Interpolation near the zoom's label edges differs (fill vs border); elsewhere equal.
            close = (image_d - image_t).abs() < 1e-4
            assert close.float().mean() > 0.9


def test_same_seed_same_batches_noise_included(preprocessed: Path) -> None:
    settings = AugmentSettings.from_names(True, ["rotation", "gamma", "lowres"])
    with dali(preprocessed, settings, seed=3) as a, dali(preprocessed, settings, seed=3) as b:
        for (image_a, seg_a), (image_b, seg_b) in zip(take(a, 3), take(b, 3), strict=True):
            assert torch.equal(image_a, image_b) and torch.equal(seg_a, seg_b)
    with dali(preprocessed, settings, seed=3) as a, dali(preprocessed, settings, seed=4) as b:
        assert not torch.equal(next(a)[0], next(b)[0])


def test_resume_is_exact_without_noise_and_says_so(preprocessed: Path) -> None:
    settings = replace(AugmentSettings(), noise_prob=0.0)
    with dali(preprocessed, settings, seed=5) as loader:
        take(loader, 2)
        state = loader.state_dict()
        expected = take(loader, 3)
    assert state["exact"] is False and "noise" in state["not_restored"]
    with dali(preprocessed, settings, seed=77) as resumed:
        resumed.load_state_dict(state)
        for (image, seg), (image_e, seg_e) in zip(take(resumed, 3), expected, strict=True):
            assert torch.equal(image, image_e) and torch.equal(seg, seg_e)
        assert resumed.batches_delivered == 5


def test_make_loader_builds_the_dali_backend(preprocessed: Path) -> None:
    loader = make_loader("dali", preprocessed, ["p", "q"], S3, AugmentSettings(), 2, 0, "cpu",
                         workers=1)
    with loader:
        assert isinstance(loader, DaliLoader) and next(loader)[0].shape == (2, 2, 8, 10, 6)


def test_sparse_labels_keep_their_ignore_index(tmp_path: Path) -> None:
    """Sparse annotations: the ignore index (4, one past class 3) travels through DALI's
    nearest-neighbour warps and flips like any label and equals the torch backend's."""
    rng = np.random.default_rng(1)
    cases = {}
    for case_id in ("p", "q", "r"):
        seg = rng.integers(0, 4, size=(14, 13, 9)).astype(np.uint8)
        seg[:, :, 1::2] = 4  # every second slice unannotated
        np.save(tmp_path / f"{case_id}.npy", np.stack([seg * 1.0, seg * 2.0]).astype(np.float32))
        np.save(tmp_path / f"{case_id}_seg.npy", seg)
        cases[case_id] = {"class_locations": {str(k): np.argwhere(seg == k)[::7].tolist()
                                              for k in (1, 2, 3)}}
    (tmp_path / "manifest.json").write_text(json.dumps({"plan": {}, "cases": cases}))
    settings = only(zoom_prob=0.7, flip_prob=0.5)
    with dali(tmp_path, settings) as d, torch_loader(tmp_path, settings) as t:
        for (_, seg_d), (_, seg_t) in zip(take(d, 3), take(t, 3), strict=True):
            assert set(seg_d.unique().tolist()) <= {0, 1, 2, 3, 4} and (seg_d == 4).any()
            assert torch.equal(seg_d, seg_t)
