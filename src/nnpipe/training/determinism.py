"""``training.deterministic``: the same run gives the same weights, on the CPU and on CUDA.

What it takes on CUDA:

* ``torch.use_deterministic_algorithms(True)``: deterministic cuDNN convolutions and an error
  from any op without a deterministic kernel. The loss avoids the one such op it would hit
  (``nll_loss``; see :mod:`nnpipe.training.loss`).
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) in the environment before cuBLAS first
  runs: without it, deterministic mode raises at the first matmul. PyTorch reads it once, when
  it sizes its cuBLAS workspace, so it is set here before CUDA is initialized.
* no cuDNN autotuning (``cudnn.benchmark`` picks the fastest kernel by timing, which varies).

What cannot be deterministic is refused with the reason: the DALI loader, whose random
generator state cannot be saved, so a resumed run draws other noise.
"""

from __future__ import annotations

import os

import torch

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
# The two settings cuBLAS documents for reproducible results (4096 x 8 KiB or 16 x 8 KiB).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def configure_determinism(deterministic: bool, loader: str = "torch") -> None:
    """Switch deterministic algorithms on or off; call before CUDA is initialized.

    Raises:
        ValueError: ``deterministic`` with ``loader='dali'``; ``CUBLAS_WORKSPACE_CONFIG`` set
            to another value; or CUDA already initialized without that variable (too late
            for cuBLAS to pick it up).
    """
    if deterministic:
        if loader == "dali":
            raise ValueError("training.deterministic cannot hold with training.loader 'dali': "
                             "DALI's random generator state cannot be saved, so a resumed run "
                             "draws other noise; use loader 'torch' or deterministic: false")
        _set_cublas_workspace()
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _set_cublas_workspace() -> None:
    value = os.environ.get(CUBLAS_ENV)
    if value is None:
        if torch.cuda.is_initialized():
            raise ValueError(f"training.deterministic needs {CUBLAS_ENV}={CUBLAS_DETERMINISTIC[0]}"
                             " before CUDA starts, and CUDA is already initialized in this "
                             f"process; export {CUBLAS_ENV}={CUBLAS_DETERMINISTIC[0]} before "
                             "starting it")
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC[0]
    elif value not in CUBLAS_DETERMINISTIC:
        raise ValueError(f"training.deterministic needs {CUBLAS_ENV} to be one of "
                         f"{list(CUBLAS_DETERMINISTIC)}, but the environment sets it to "
                         f"{value!r}; unset it or choose one of those")
