"""Loading nnU-Net v2 checkpoints (``checkpoint_final.pth``) without unpickling code.

v2 saves a dict with ``network_weights`` (the state dict), the optimizer and grad-scaler
states, ``logging`` (lists of floats, some NumPy scalars), ``init_args`` (the plans,
dataset.json, configuration, fold, a ``torch.device``), ``trainer_name`` and
``inference_allowed_mirroring_axes``. v2 itself loads it with ``weights_only=False``: any
object the file names would be imported and called. Here it is read with
``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers, plus the
few NumPy types v2's logging holds (:data:`NUMPY_GLOBALS`, allowed for this call only); a file
naming anything else is refused with the file and the global it needs.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _numpy_globals() -> list[Any]:
    """NumPy scalars and arrays as pickled by NumPy 1 and 2 (``numpy.core`` /
    ``numpy._core``): the reconstructors and the dtype classes of plain numbers."""
    found: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(module, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        found += [mod.scalar, mod._reconstruct]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                 "Int16DType", "Int8DType", "UInt8DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            found.append(cls)
    return found


NUMPY_GLOBALS = _numpy_globals()


@dataclass(frozen=True)
class V2Checkpoint:
    """What prediction needs from a v2 checkpoint."""

    weights: dict[str, torch.Tensor]
    trainer_name: str
    configuration: str | None  # init_args["configuration"]
    mirror_axes: tuple[int, ...] | None
    source: str


def load_v2_checkpoint(path: Path | str, mmap: bool = False) -> V2Checkpoint:
    """Read a v2 checkpoint with ``weights_only=True`` and the NumPy allowlist.

    ``mmap``: the tensors are mapped from the file (``torch.load(mmap=True)``) instead of
    read: what is never used (the optimizer's state, as large as the weights or twice as
    large) is never read or held in memory. The file must then stay in place while the
    weights are used (deleting it is fine on POSIX systems, where the mapping stays valid).

    Raises:
        ValueError: the file needs a global outside the allowlist (named), is not a v2
            checkpoint (no ``network_weights``), or holds a non-tensor weight.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            # torch maps only its zip format (every v2 checkpoint); an older file is read
            ckpt = torch.load(path, map_location="cpu", weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {str(path)!r} holds objects nnpipe does not unpickle "
                         f"(only tensors, plain containers and NumPy numbers are allowed): "
                         f"{first}") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(ckpt, Mapping) or "network_weights" not in ckpt:
        raise ValueError(f"checkpoint {str(path)!r} is not an nnU-Net v2 checkpoint (no field "
                         "network_weights)")
    weights = ckpt["network_weights"]
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor)
                                                   for v in weights.values()):
        raise ValueError(f"checkpoint {str(path)!r}: field network_weights is not a state "
                         "dict of tensors")
    axes = ckpt.get("inference_allowed_mirroring_axes")
    if axes is not None:
        try:
            axes = tuple(int(a) for a in axes)
        except (TypeError, ValueError):
            raise ValueError(f"checkpoint {str(path)!r}: field inference_allowed_mirroring_"
                             f"axes is {axes!r}, not a list of axes") from None
    init_args = ckpt.get("init_args") or {}
    configuration = init_args.get("configuration") if isinstance(init_args, Mapping) else None
    return V2Checkpoint(dict(weights), str(ckpt.get("trainer_name", "")),
                        str(configuration) if configuration is not None else None, axes,
                        str(path))
