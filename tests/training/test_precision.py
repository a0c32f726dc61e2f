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
