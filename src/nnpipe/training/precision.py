"""Precision modes: one value that selects autocast dtype, TF32 and gradient scaling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | tf32 | amp | bf16
    autocast_dtype: torch.dtype | None  # None: no autocast
    allow_tf32: bool
    grad_scaling: bool  # fp16 needs loss scaling; bf16 has fp32's exponent range and does not


_PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", None, False, False),
    "tf32": Precision("tf32", None, True, False),
    "amp": Precision("amp", torch.float16, True, True),
    "bf16": Precision("bf16", torch.bfloat16, True, False),
}

# On CPU, TF32 does not exist and fp16 autocast is not a supported training mode.
_CPU_PRECISIONS = ("fp32", "bf16")


def get_precision(name: str, device: torch.device) -> Precision:
    """Return the :class:`Precision` for ``name``, rejecting modes the device cannot run."""
    if name not in _PRECISIONS:
        raise ValueError(f"precision {name!r} is unknown; choose one of {sorted(_PRECISIONS)}")
    if device.type == "cpu" and name not in _CPU_PRECISIONS:
        raise ValueError(f"precision {name!r} needs a CUDA GPU; on CPU use one of "
                         f"{list(_CPU_PRECISIONS)}")
    return _PRECISIONS[name]


def configure_backend(precision: Precision) -> None:
    """Set the TF32 switches for matmul and cuDNN convolutions as the precision asks."""
    torch.backends.cuda.matmul.allow_tf32 = precision.allow_tf32
    torch.backends.cudnn.allow_tf32 = precision.allow_tf32


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device) -> Iterator[None]:
    if precision.autocast_dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=precision.autocast_dtype):
        yield


def make_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=precision.grad_scaling)
