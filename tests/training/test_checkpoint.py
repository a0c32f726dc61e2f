"""Checkpoints load on the CPU, with weights_only, and restore CUDA RNG state only for the
device in use (CUDA faked: this machine has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpipe.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class _FakeCuda:
    """Records what the checkpoint code asks of torch.cuda; the *_all functions fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.saved: list[torch.device] = []
        self.restored: list[tuple[torch.device, torch.dtype, torch.device]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self._get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self._all)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self._all)

    def _get(self, device: torch.device) -> torch.Tensor:
        self.saved.append(torch.device(device))
        return torch.full((16,), 7, dtype=torch.uint8)

    def _set(self, state: torch.Tensor, device: torch.device) -> None:
        self.restored.append((state.device, state.dtype, torch.device(device)))

    @staticmethod
    def _all(*_: object) -> None:
        raise AssertionError("every GPU's RNG state touched, not only the device in use")


def test_cuda_rng_state_saved_and_restored_for_the_device_in_use_only(monkeypatch):
    cuda = _FakeCuda(monkeypatch)
    state = rng_state(torch.device("cuda", 1))
    assert cuda.saved == [torch.device("cuda", 1)]
    set_rng_state(state, torch.device("cuda", 1))
    assert cuda.restored == [(torch.device("cpu"), torch.uint8, torch.device("cuda", 1))]


def test_cpu_run_touches_no_cuda_rng(monkeypatch):
    cuda = _FakeCuda(monkeypatch)
    set_rng_state(rng_state(torch.device("cpu")), torch.device("cpu"))
    assert cuda.saved == [] and cuda.restored == []


def test_gpu_resume_of_a_cpu_checkpoint_is_refused(monkeypatch):
    _FakeCuda(monkeypatch)
    with pytest.raises(ValueError, match="no CUDA RNG state for cuda:0"):
        set_rng_state(rng_state(torch.device("cpu")), torch.device("cuda", 0))


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state(torch.device("cpu"))})
    expected = torch.rand(4), np.random.rand(4)
    torch.rand(9)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["rng"]["torch"].device.type == "cpu"
    set_rng_state(ckpt["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])


class _Arbitrary:
    """Any class: unpickling it would run its module's code."""


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    """Unpickling runs no code: an object of an arbitrary class is refused."""
    torch.save({"model": {}, "hook": _Arbitrary()}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="odd.pt.*cannot be loaded"):
        load_checkpoint(tmp_path / "odd.pt")
