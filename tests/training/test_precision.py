from __future__ import annotations

import pytest
import torch

from nnpipe.training.precision import autocast, get_precision


@pytest.mark.parametrize(("name", "dtype", "scaling"),
                         [("fp32", None, False), ("bf16", torch.bfloat16, False)])
def test_cpu_precisions(name, dtype, scaling):
    p = get_precision(name, torch.device("cpu"))
    assert p.autocast_dtype == dtype
    assert p.grad_scaling is scaling


@pytest.mark.parametrize("name", ["tf32", "amp"])
def test_gpu_only_precisions_are_refused_on_cpu(name):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        get_precision(name, torch.device("cpu"))


def test_bf16_autocast_changes_matmul_dtype():
    p = get_precision("bf16", torch.device("cpu"))
    with autocast(p, torch.device("cpu")):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.bfloat16


def _fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> torch.device:
    """Pretend cuda:0 is ``name`` with ``capability`` (this machine has no GPU)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: capability >= (8, 0))
    return torch.device("cuda", 0)


@pytest.mark.parametrize(("gpu", "capability", "name", "refused"), [
    ("Tesla V100-SXM2-32GB", (7, 0), "tf32", True),
    ("Tesla V100-SXM2-32GB", (7, 0), "bf16", True),
    ("Tesla T4", (7, 5), "bf16", True),
    ("Tesla T4", (7, 5), "tf32", True),
    ("Tesla T4", (7, 5), "amp", False),
    ("Tesla T4", (7, 5), "fp32", False),
    ("NVIDIA A100-SXM4-80GB", (8, 0), "tf32", False),
    ("NVIDIA A100-SXM4-80GB", (8, 0), "bf16", False),
    ("NVIDIA H200", (9, 0), "bf16", False),
])
def test_precision_checked_against_the_gpu(monkeypatch, gpu, capability, name, refused):
    device = _fake_gpu(monkeypatch, gpu, capability)
    if not refused:
        assert get_precision(name, device).name == name
        return
    with pytest.raises(ValueError) as err:
        get_precision(name, device)
    message = str(err.value)
    assert gpu in message and repr(name) in message
    assert f"{capability[0]}.{capability[1]}" in message and "8.0" in message
