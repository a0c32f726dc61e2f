"""Checkpoints that resume exactly: model, optimizer, scaler, scheduler, RNGs, epoch, history."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.io import atomic_path


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` under a temporary name, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=False`` because the checkpoint holds RNG states (Python tuples, NumPy
    arrays); only load checkpoints this project wrote.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded ({type(exc).__name__}: "
                         f"{exc}); delete it to start that run afresh") from exc
