from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpipe.data.augment import AugmentSettings
from nnpipe.data.loader import BatchLoader, loader_throughput, make_loader
from nnpipe.data.sampling import SamplerSettings

SAMPLER = SamplerSettings((6, 6, 4), foreground_prob=0.4)
AUGMENT = AugmentSettings(zoom_prob=0.5, noise_prob=0.5, blur_prob=0.5,
                          brightness_prob=0.5, contrast_prob=0.5)


@pytest.fixture
def preprocessed(tmp_path: Path) -> Path:
    """Three random 2-channel cases of 10x9x7 voxels with labels 0-2 and a manifest."""
    rng = np.random.default_rng(0)
    cases = {}
    for case_id in ("p", "q", "r"):
        image = rng.normal(size=(2, 10, 9, 7)).astype(np.float32)
        seg = np.zeros((10, 9, 7), np.uint8)
        seg[3:6, 2:5, 1:4] = 1
        seg[8, 7, 5] = 2
        np.save(tmp_path / f"{case_id}.npy", image)
        np.save(tmp_path / f"{case_id}_seg.npy", seg)
        locations = {str(k): np.argwhere(seg == k).tolist() for k in (1, 2)}
        cases[case_id] = {"class_locations": locations}
    (tmp_path / "manifest.json").write_text(json.dumps({"plan": {}, "cases": cases}))
    return tmp_path


def make(folder: Path, seed: int = 0, prefetch: int = 2, batch_size: int = 3) -> BatchLoader:
    return BatchLoader(folder, ["p", "q", "r"], SAMPLER, AUGMENT, batch_size, seed, "cpu",
                       prefetch=prefetch)


def take(loader: BatchLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (image_a, seg_a), (image_b, seg_b) in zip(first, second, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(seg_a, seg_b)


def test_batches_have_the_training_shapes(preprocessed: Path) -> None:
    with make(preprocessed) as loader:
        image, seg = next(loader)
    assert image.shape == (3, 2, 6, 6, 4) and image.dtype == torch.float32
    assert seg.shape == (3, 1, 6, 6, 4) and seg.dtype == torch.int64
    assert image.device.type == "cpu" and set(seg.unique().tolist()) <= {0, 1, 2}


def test_same_seed_same_batches_other_seed_other_batches(preprocessed: Path) -> None:
    with make(preprocessed, seed=5) as a, make(preprocessed, seed=5, prefetch=4) as b:
        assert_same(take(a, 4), take(b, 4))
    with make(preprocessed, seed=5) as a, make(preprocessed, seed=6) as b:
        assert not torch.equal(next(a)[0], next(b)[0])


def test_resume_reproduces_the_following_batches(preprocessed: Path, tmp_path: Path) -> None:
    with make(preprocessed, seed=1, prefetch=4) as loader:
        take(loader, 3)
        # Let the thread run ahead: the saved state must still be that of batch 4.
        deadline = time.monotonic() + 5.0
        while loader._stager.queued() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loader._stager.queued() == 4
        state = loader.state_dict()
        expected = take(loader, 4)
    torch.save(state, tmp_path / "loader.pt")  # a checkpoint holds it; weights_only loads it
    restored = torch.load(tmp_path / "loader.pt", weights_only=True)
    assert restored["batches_delivered"] == 3
    with make(preprocessed, seed=99) as resumed:
        resumed.load_state_dict(restored)
        assert_same(take(resumed, 4), expected)
        assert resumed.batches_delivered == 7


def test_loading_a_state_rewinds_a_running_loader(preprocessed: Path) -> None:
    with make(preprocessed, seed=2) as loader:
        start = loader.state_dict()
        first = take(loader, 3)
        loader.load_state_dict(start)
        assert_same(take(loader, 3), first)


def test_close_and_continue_keeps_the_sequence(preprocessed: Path) -> None:
    with make(preprocessed, seed=3) as reference:
        expected = take(reference, 4)
    with make(preprocessed, seed=3) as loader:
        part = take(loader, 2)
        loader.close()  # drops prefetched batches; the next one is sampled again
        assert_same(part + take(loader, 2), expected)


def test_sampling_errors_reach_the_training_thread(preprocessed: Path) -> None:
    loader = make(preprocessed)

    def broken(rng: np.random.Generator, image: np.ndarray, seg: np.ndarray) -> None:
        raise OSError("disk went away")

    loader.sampler.sample_into = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk went away"):
        next(loader)
    assert not loader._stager.running


def test_throughput_is_positive(preprocessed: Path) -> None:
    with make(preprocessed) as loader:
        rate = loader_throughput(loader, 3)
    assert rate > 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size"),
    ({"prefetch": 0}, "prefetch"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_rejected(preprocessed: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(preprocessed, **kwargs)


def test_bad_state_is_rejected(preprocessed: Path) -> None:
    with make(preprocessed) as loader, pytest.raises(ValueError, match="torch"):
        loader.load_state_dict({"numpy": {}, "batches_delivered": 0})


def test_batches_do_not_depend_on_the_number_of_workers(preprocessed: Path) -> None:
    one = BatchLoader(preprocessed, ["p", "q", "r"], SAMPLER, AUGMENT, 3, 4, "cpu", workers=1)
    three = BatchLoader(preprocessed, ["p", "q", "r"], SAMPLER, AUGMENT, 3, 4, "cpu",
                        prefetch=5, workers=3)
    with one, three:
        assert_same(take(one, 5), take(three, 5))


def test_resume_with_other_workers_continues_the_stream(preprocessed: Path) -> None:
    with make(preprocessed, seed=8) as loader:
        take(loader, 2)
        state = loader.state_dict()
        expected = take(loader, 3)
    other = BatchLoader(preprocessed, ["p", "q", "r"], SAMPLER, AUGMENT, 3, 0, "cpu", workers=3)
    with other:
        other.load_state_dict(state)
        assert_same(take(other, 3), expected)


def test_make_loader_builds_the_torch_backend(preprocessed: Path) -> None:
    loader = make_loader("torch", preprocessed, ["p", "q", "r"], SAMPLER, AUGMENT, 3, 5, "cpu")
    with loader, make(preprocessed, seed=5) as reference:
        assert isinstance(loader, BatchLoader)
        assert_same(take(loader, 2), take(reference, 2))


def test_make_loader_rejects_an_unknown_backend(preprocessed: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown loader backend 'jax'; choose from \['dali', "
                                         r"'torch'\]"):
        make_loader("jax", preprocessed, ["p"], SAMPLER, AUGMENT, 3, 0, "cpu")


def test_make_loader_says_when_dali_is_missing(preprocessed: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes the import fail
    with pytest.raises(ValueError, match="'dali' needs nvidia-dali, which is not installed"):
        make_loader("dali", preprocessed, ["p"], SAMPLER, AUGMENT, 3, 0, "cpu")


def test_torch_loader_refuses_a_dali_state(preprocessed: Path) -> None:
    with make(preprocessed) as loader:
        state = {**loader.state_dict(), "backend": "dali"}
        with pytest.raises(ValueError, match="'dali' loader state"):
            loader.load_state_dict(state)
