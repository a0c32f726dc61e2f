"""Label values as users write them, class indices as the network sees them.

A dataset may label its structures with any non-negative integers: ``0, 1, 4`` (a class
dropped from a protocol), ``0, 205, 420, 500, 550, 600, 820, 850`` (a uint16 atlas). The
network needs consecutive class indices ``0 .. K-1``. :class:`LabelTable` is the one mapping
between the two: index ``k`` is the ``k``-th smallest listed value, so the order of values
is kept (BraTS region mode, "label >= l_i", reads the same in both spaces). The plan records
the table; preprocessing writes indices; every label map nnpipe writes holds values again,
in the smallest unsigned dtype that holds the largest value.

Label files are integers in theory and floats in practice: ``0.99999994`` from a float32
export, ``2.0000002`` from ``scl_slope = 1/255``. :func:`integer_labels` rounds values within
:data:`INTEGER_TOLERANCE` of an integer and refuses real fractions (an interpolated label)
naming the case and file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnpipe.errors import DataError

# A label value within this distance of an integer is that integer (float32 round-off and
# scl_slope scaling stay below 1e-6; a linearly interpolated border is 0.25 or more off).
INTEGER_TOLERANCE = 1e-3

# Preprocessed label maps are stored as uint8 class indices.
MAX_CLASSES = 256


@dataclass(frozen=True)
class LabelTable:
    """Value ↔ class index table: ``values[k]`` is the label value of class index ``k``.

    ``values`` are sorted, unique, non-negative and start with the background 0.
    Raises ``ValueError`` otherwise or for more than :data:`MAX_CLASSES` classes.
    """

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        v = self.values
        if not v or v[0] != 0:
            raise ValueError(f"label values must include the background 0, got {list(v)}")
        if list(v) != sorted(set(v)):
            raise ValueError(f"label values must be sorted and unique, got {list(v)}")
        if len(v) > MAX_CLASSES:
            raise ValueError(f"{len(v)} label values; nnpipe supports at most {MAX_CLASSES}")

    @classmethod
    def from_labels(cls, labels: Mapping[int, Any] | Sequence[int]) -> LabelTable:
        """The table of a ``{value: name}`` mapping (or a list of values)."""
        return cls(tuple(sorted(int(v) for v in labels)))

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def is_identity(self) -> bool:
        """True when values are already ``0 .. K-1``."""
        return self.values == tuple(range(len(self.values)))

    @property
    def value_dtype(self) -> type[np.unsignedinteger]:
        """Smallest unsigned dtype holding every value (uint8, uint16 or uint32)."""
        top = self.values[-1]
        for dt in (np.uint8, np.uint16, np.uint32):
            if top <= np.iinfo(dt).max:
                return dt
        return np.uint64

    def to_indices(self, labels: np.ndarray, *, case: str | None = None,
                   path: Path | str | None = None) -> np.ndarray:
        """Integer label values ``(X, Y, Z)`` -> uint8 class indices of the same shape.

        Raises :class:`DataError` naming the case and file for a value not in the table.
        """
        present = np.unique(labels)
        unknown = sorted(set(present.tolist()) - set(self.values))
        if unknown:
            raise DataError(f"label values {unknown[:10]} are not listed in dataset.json "
                            f"(listed: {list(self.values)})", case=case, path=path)
        if self.is_identity:
            return labels.astype(np.uint8)
        lut = np.zeros(int(present.max()) + 1 if present.size else 1, dtype=np.uint8)
        for k, v in enumerate(self.values):
            if v < lut.size:
                lut[v] = k
        return lut[labels.astype(np.int64, copy=False)]

    def to_values(self, indices: np.ndarray) -> np.ndarray:
        """Class indices (any integer array) -> label values in :attr:`value_dtype`."""
        lut = np.asarray(self.values, dtype=self.value_dtype)
        return lut[np.asarray(indices, dtype=np.int64)]

    def index_of(self, value: int) -> int:
        return self.values.index(int(value))


def integer_labels(data: np.ndarray, *, case: str | None = None,
                   path: Path | str | None = None) -> tuple[np.ndarray, bool]:
    """A label map read from a file as int64, and whether any value had to be rounded.

    Integer dtypes pass unchanged (never narrowed). Floats within
    :data:`INTEGER_TOLERANCE` of an integer are rounded; anything else (NaN, a fraction,
    a negative value) raises :class:`DataError` naming the case and file.
    """
    if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        out = data.astype(np.int64, copy=False)
        rounded = False
    else:
        if not np.isfinite(data).all():
            raise DataError("label holds NaN or Inf values", case=case, path=path)
        nearest = np.round(data)
        off = np.abs(data - nearest)
        worst = float(off.max()) if off.size else 0.0
        if worst > INTEGER_TOLERANCE:
            bad = np.unique(data[off > INTEGER_TOLERANCE])[:6]
            raise DataError(
                f"label holds fractional values ({', '.join(f'{v:.4g}' for v in bad)}, ...; "
                f"up to {worst:.3g} from an integer): it was probably resampled with "
                f"linear interpolation; label maps must be resampled nearest-neighbour",
                case=case, path=path)
        rounded = worst > 0
        out = nearest.astype(np.int64)
    if out.size and int(out.min()) < 0:
        raise DataError(f"label holds negative values (min {int(out.min())})", case=case,
                        path=path)
    return out, rounded


def parse_labels(labels: Any, *, layout: str, path: Path | str) -> dict[int, str]:
    """dataset.json's ``labels`` as ``{value: name}``, sorted by value.

    MSD writes ``{"0": "background", "1": "edema"}``, nnU-Net v2 ``{"background": 0}``. Either
    form is accepted in either layout when it is unambiguous (exactly one side is integers).
    v2 region lists (``"whole tumor": [1, 2, 3]``) are refused. Raises :class:`DataError`
    naming dataset.json, the ``labels`` key and both accepted forms otherwise.
    """
    forms = ('accepted forms: {"0": "background", "1": "tumour"} (MSD) or '
             '{"background": 0, "tumour": 1} (nnU-Net v2)')
    if not isinstance(labels, Mapping) or not labels:
        raise DataError(f"'labels' must be a non-empty mapping; {forms}", path=path)
    keys_int = all(_as_int(k) is not None for k in labels)
    vals_int = all(_as_int(v) is not None for v in labels.values())
    if any(isinstance(v, list) for v in labels.values()):
        raise DataError("'labels' holds region lists (nnU-Net v2 region training); nnpipe "
                        "needs one value per label (region mode: config training.regions)",
                        path=path)
    if keys_int and not vals_int:
        out = {_int(k, path): str(v) for k, v in labels.items()}
    elif vals_int and not keys_int:
        out = {_int(v, path): str(k) for k, v in labels.items()}
        if len(out) != len(labels):
            raise DataError(f"'labels' gives one value to several names; {forms}", path=path)
    elif keys_int and vals_int:
        # both sides numbers: the layout's own form decides
        if layout == "nnunetv2":
            out = {_int(v, path): str(k) for k, v in labels.items()}
        else:
            out = {_int(k, path): str(v) for k, v in labels.items()}
    else:
        raise DataError(f"'labels' has neither integer keys nor integer values; {forms}",
                        path=path)
    if any(v < 0 for v in out):
        raise DataError(f"'labels' lists negative values {sorted(v for v in out if v < 0)}; "
                        "label values must be non-negative integers", path=path)
    if 0 not in out:
        raise DataError(f"'labels' does not list the background value 0 (listed: "
                        f"{sorted(out)}); nnpipe needs background = 0; {forms}", path=path)
    return dict(sorted(out.items()))


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    return None


def _int(v: Any, path: Path | str) -> int:
    out = _as_int(v)
    if out is None:
        raise DataError(f"'labels' value {v!r} is not an integer", path=path)
    return out
