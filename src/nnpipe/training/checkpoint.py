"""Checkpoints that resume exactly: model, optimizer, scaler, scheduler, RNGs, epoch, history.

Checkpoints are always read onto the CPU and their parts moved where they belong by whoever
restores them (``load_state_dict`` copies weights and optimizer state onto the parameters'
device). Loading straight onto a GPU would move the RNG states there too, and
``torch.set_rng_state`` / ``Generator.set_state`` accept CPU ``ByteTensor`` s only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.io import atomic_path


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states of this process: Python, NumPy, torch's CPU generator and, when
    ``device`` is a GPU, that GPU's generator only (a rank touches its own GPU, and a resume
    may run on a node with another number of GPUs)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _byte_tensor(state: torch.Tensor) -> torch.Tensor:
    """An RNG state as the CPU ``uint8`` tensor that the ``set_rng_state`` functions take."""
    return state.detach().to("cpu", torch.uint8)


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; the CUDA state only onto ``device`` when it is a GPU.

    Raises:
        ValueError: if ``device`` is a GPU and ``state`` holds no CUDA state (a checkpoint
            written on the CPU cannot continue a GPU's random stream exactly).
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if device is None or device.type != "cuda":
        return
    if "cuda" not in state:
        raise ValueError(f"the checkpoint holds no CUDA RNG state for {device}; it was "
                         "written by a CPU run, which a GPU run cannot continue exactly")
    torch.cuda.set_rng_state(_byte_tensor(state["cuda"]), device)


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` under a temporary name, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _numpy_globals() -> list[Any]:
    """What unpickling the NumPy RNG state (an ``ndarray`` of ``uint32``) needs; allowed by
    name so that checkpoints load with ``weights_only=True``."""
    reconstruct = np.zeros(1, np.uint32).__reduce__()[0]  # numpy(._core).multiarray._reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, every tensor on the CPU.

    ``weights_only=True``: unpickling runs no code; besides tensors and containers only the
    NumPy array type of the RNG state is allowed. Tensors stay on the CPU whatever device
    wrote them; the caller moves what it restores.

    Raises:
        ValueError: naming the file if it cannot be read.
    """
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded ({type(exc).__name__}: "
                         f"{exc}); delete it to start that run afresh") from exc
