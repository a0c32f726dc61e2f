from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.data.staging import BatchStager, batch_generator


@pytest.fixture
def sampler(tmp_path: Path) -> PatchSampler:
    """Two cases whose voxel values are their flat indices; labels 0-2."""
    cases = {}
    for case_id, shape in (("a", (9, 8, 7)), ("b", (6, 10, 5))):
        image = np.arange(2 * np.prod(shape), dtype=np.float32).reshape(2, *shape)
        seg = (np.arange(np.prod(shape)) % 3).astype(np.uint8).reshape(shape)
        np.save(tmp_path / f"{case_id}.npy", image)
        np.save(tmp_path / f"{case_id}_seg.npy", seg)
        cases[case_id] = {"class_locations": {"1": np.argwhere(seg == 1)[:5].tolist()}}
    (tmp_path / "manifest.json").write_text(json.dumps({"plan": {}, "cases": cases}))
    return PatchSampler(tmp_path, ["a", "b"], SamplerSettings((4, 5, 3), 0.5))


def test_batch_k_is_what_its_own_generator_samples(sampler: PatchSampler) -> None:
    stager = BatchStager(sampler, 3, seed=11, workers=2, prefetch=2, pin=False)
    staged = [stager.next() for _ in range(4)]
    stager.close()
    for k, (image, seg) in enumerate(staged):
        expected_image, expected_seg = sampler.sample(batch_generator(11, k), 3)
        assert image.dtype == torch.float32 and seg.dtype == torch.uint8
        np.testing.assert_array_equal(image.numpy(), expected_image)
        np.testing.assert_array_equal(seg.numpy(), expected_seg)


def test_state_continues_at_the_next_batch(sampler: PatchSampler) -> None:
    stager = BatchStager(sampler, 2, seed=3, workers=3, prefetch=6, pin=False)
    stager.next()
    state = stager.state_dict()
    expected = stager.next()
    stager.close()
    other = BatchStager(sampler, 2, seed=0, workers=1, prefetch=1, pin=False)
    other.load_state_dict(state)
    image, seg = other.next()
    other.close()
    assert state == {"seed": 3, "next_batch": 1}
    assert torch.equal(image, expected[0]) and torch.equal(seg, expected[1])


def test_worker_errors_reach_the_consumer(sampler: PatchSampler) -> None:
    def broken(rng: np.random.Generator, image: np.ndarray, seg: np.ndarray) -> None:
        raise OSError("disk went away")

    sampler.sample_into = broken  # type: ignore[method-assign]
    stager = BatchStager(sampler, 2, seed=0, workers=2, prefetch=2, pin=False)
    with pytest.raises(OSError, match="disk went away"):
        stager.next()
    assert not stager.running


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"workers": 0}, "workers"), ({"prefetch": 0}, "prefetch"), ({"seed": -2}, "non-negative"),
])
def test_bad_arguments_are_rejected(sampler: PatchSampler, kwargs: dict, message: str) -> None:
    arguments = {"batch_size": 2, "seed": 0, "workers": 1, "prefetch": 1, "pin": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        BatchStager(sampler, **arguments)


def test_sample_into_rejects_wrong_buffers(sampler: PatchSampler) -> None:
    with pytest.raises(ValueError, match="buffers of shapes"):
        sampler.sample_into(np.random.default_rng(0), np.empty((2, 2, 4, 5, 3), np.float32),
                            np.empty((2, 1, 4, 5, 4), np.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_staging(sampler: PatchSampler) -> None:
    stager = BatchStager(sampler, 2, seed=0, workers=1, prefetch=1, pin=True)
    image, seg = stager.next()
    stager.close()
    assert image.is_pinned() and seg.is_pinned()
