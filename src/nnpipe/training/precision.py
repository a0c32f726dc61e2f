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
    """Return the :class:`Precision` for ``name``, rejecting modes the device cannot run.

    Checked before training starts, so that a wrong choice fails at once with the GPU's name
    instead of crashing mid-run (bf16 kernels missing) or timing plain fp32 as "tf32".

    Raises:
        ValueError: for an unknown name, a GPU-only mode on the CPU, bf16 on a GPU without
            native bfloat16, or tf32 on a GPU without TF32 tensor cores.
    """
    if name not in _PRECISIONS:
        raise ValueError(f"precision {name!r} is unknown; choose one of {sorted(_PRECISIONS)}")
    if device.type == "cpu" and name not in _CPU_PRECISIONS:
        raise ValueError(f"precision {name!r} needs a CUDA GPU; on CPU use one of "
                         f"{list(_CPU_PRECISIONS)}")
    if device.type == "cuda":
        _check_gpu(name, device)
    return _PRECISIONS[name]


# bfloat16 arithmetic and TF32 tensor cores both arrived with Ampere (compute capability 8.0).
# Before it, torch emulates bf16 (slow, and some kernels are missing) and ignores the TF32
# switches (fp32 timed under the name "tf32").
_AMPERE = (8, 0)


def _check_gpu(name: str, device: torch.device) -> None:
    """``ValueError`` naming the GPU if it cannot run ``name`` natively."""
    if name not in ("bf16", "tf32") or torch.version.hip:  # ROCm: bf16 on every arch
        return
    capability = tuple(torch.cuda.get_device_capability(device))
    if capability >= _AMPERE:
        return
    gpu = torch.cuda.get_device_name(device)
    what = "bfloat16 arithmetic" if name == "bf16" else "TF32 tensor cores"
    raise ValueError(f"precision {name!r} needs {what}, which {device} ({gpu}, compute "
                     f"capability {capability[0]}.{capability[1]}) lacks: they need compute "
                     f"capability {_AMPERE[0]}.{_AMPERE[1]} (Ampere) or newer; on this GPU "
                     "use 'amp' (fp16) or 'fp32'")


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
