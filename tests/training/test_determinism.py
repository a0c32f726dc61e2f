"""training.deterministic: cuBLAS configured before CUDA starts; what cannot hold is refused."""

from __future__ import annotations

import os

import pytest
import torch

from nnpipe.training import determinism
from nnpipe.training.determinism import CUBLAS_ENV, configure_determinism


@pytest.fixture(autouse=True)
def _keep_global_flags():
    """configure_determinism switches process-wide flags; put them back after each test."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


def test_deterministic_flags_on_and_off(monkeypatch):
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    configure_determinism(True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and os.environ[CUBLAS_ENV] == ":4096:8"
    configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_a_users_deterministic_cublas_setting_is_kept(monkeypatch):
    monkeypatch.setenv(CUBLAS_ENV, ":16:8")
    configure_determinism(True)
    assert os.environ[CUBLAS_ENV] == ":16:8"


@pytest.mark.parametrize(("case", "match"), [
    ("dali", "loader 'dali'"),
    ("bad-env", "sets it to ':0:0'"),
    ("cuda-started", "CUDA is already initialized"),
])
def test_what_cannot_be_deterministic_is_refused(monkeypatch, case, match):
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    if case == "bad-env":
        monkeypatch.setenv(CUBLAS_ENV, ":0:0")
    if case == "cuda-started":
        monkeypatch.setattr(determinism.torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match=match):
        configure_determinism(True, loader="dali" if case == "dali" else "torch")
