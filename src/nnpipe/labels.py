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

:class:`LabelScheme` is the one label concept the plan records: the value ↔ index table,
region mode with its regions (nnU-Net v2's ``regions_class_order``) and the ``ignore`` value
of sparse annotations. It is built once from dataset.json (:meth:`LabelScheme.from_dataset_json`,
MSD and nnU-Net v2 forms) and every later stage reads it from the plan (or from the
checkpoint, which carries the plan). :func:`outputs_to_labels` is the one way network outputs
become label values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
    # the value marking unannotated voxels (sparse annotations): class index ``len(values)``,
    # which no output channel predicts and every loss and score leaves out
    ignore: int | None = None

    def __post_init__(self) -> None:
        v = self.values
        if self.ignore is not None and self.ignore in v:
            raise ValueError(f"the ignore value {self.ignore} is also a class value {list(v)}")
        if not v or v[0] != 0:
            raise ValueError(f"label values must include the background 0, got {list(v)}")
        if list(v) != sorted(set(v)):
            raise ValueError(f"label values must be sorted and unique, got {list(v)}")
        if len(v) > MAX_CLASSES - (self.ignore is not None):
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

    @property
    def ignore_index(self) -> int | None:
        """The class index unannotated voxels get (``num_classes``), or None."""
        return None if self.ignore is None else len(self.values)

    def to_indices(self, labels: np.ndarray, *, case: str | None = None,
                   path: Path | str | None = None) -> np.ndarray:
        """Integer label values ``(X, Y, Z)`` -> uint8 class indices of the same shape; the
        ignore value becomes :attr:`ignore_index`.

        Raises :class:`DataError` naming the case and file for a value not in the table.
        """
        present = np.unique(labels)
        known = set(self.values) | ({self.ignore} if self.ignore is not None else set())
        unknown = sorted(set(present.tolist()) - known)
        if unknown:
            raise DataError(f"label values {unknown[:10]} are not listed in dataset.json "
                            f"(listed: {sorted(known)})", case=case, path=path)
        if self.is_identity and (self.ignore is None or self.ignore == len(self.values)):
            return labels.astype(np.uint8)
        lut = np.zeros(int(present.max()) + 1 if present.size else 1, dtype=np.uint8)
        for k, v in enumerate(self.values):
            if v < lut.size:
                lut[v] = k
        if self.ignore is not None and self.ignore < lut.size:
            lut[self.ignore] = len(self.values)
        return lut[labels.astype(np.int64, copy=False)]

    def to_values(self, indices: np.ndarray) -> np.ndarray:
        """Class indices (any integer array) -> label values in :attr:`value_dtype`."""
        lut = np.asarray(self.values, dtype=self.value_dtype)
        return lut[np.asarray(indices, dtype=np.int64)]

    def index_of(self, value: int) -> int:
        return self.values.index(int(value))


IGNORE_NAME = "ignore"  # nnU-Net v2's name for the value of unannotated voxels
REGION_THRESHOLD = 0.5  # a region's sigmoid probability above this is inside the region
BRATS_REGION_NAMES = ("WT", "TC", "ET")


@dataclass(frozen=True)
class ScoredClass:
    """What one output channel region or score column stands for: ``name`` (``"1"`` or
    ``"WT"``) and its label values (one for a label, several for a region)."""

    name: str
    labels: tuple[int, ...]

    def mask(self, label_map: np.ndarray) -> np.ndarray:
        if len(self.labels) == 1:
            return label_map == self.labels[0]
        return np.isin(label_map, self.labels)


def nested_regions(labels: Mapping[int, Any] | Sequence[int]) -> tuple[ScoredClass, ...]:
    """BraTS-style nested regions of a label set (background 0 included or not): for sorted
    foreground labels ``l_1 < ... < l_n`` region ``i`` is "label >= l_i". Named WT, TC, ET for
    the BraTS labels 1, 2, 3 (MSD Task01), else ``ge<label>``."""
    fg = sorted(int(v) for v in labels if int(v) != 0)
    if not fg:
        raise ValueError("region mode needs at least one foreground label")
    names = BRATS_REGION_NAMES if fg == [1, 2, 3] else tuple(f"ge{v}" for v in fg)
    return tuple(ScoredClass(name, tuple(v for v in fg if v >= lo))
                 for name, lo in zip(names, fg, strict=True))


@dataclass(frozen=True)
class LabelScheme:
    """The label concept of a dataset, recorded in the plan.

    ``names``: class value -> name, background 0 included, the ignore value excluded (class
    index ``k`` is the ``k``-th smallest value, :class:`LabelTable`). ``regions``: empty for
    softmax training (one output per class), else one sigmoid output per region (label
    values it unites); ``regions_class_order``: the label value written for each region, in
    that order, later regions over earlier ones (nnU-Net v2's key of the same name).
    ``ignore``: the value of unannotated voxels (nnU-Net v2: the label named ``ignore``, the
    highest value), which is never predicted and left out of losses, sampling and scores.
    Raises ``ValueError`` for an inconsistent scheme.
    """

    names: dict[int, str]
    regions: tuple[ScoredClass, ...] = ()
    regions_class_order: tuple[int, ...] = ()
    ignore: int | None = None

    def __post_init__(self) -> None:
        LabelTable(tuple(sorted(self.names)), self.ignore)  # values and ignore checked there
        if self.ignore is not None and self.ignore < max(self.names):
            raise ValueError(f"the ignore value {self.ignore} must be the highest label value "
                             f"(nnU-Net v2's rule), but {max(self.names)} is higher")
        if len(self.regions_class_order) != len(self.regions):
            raise ValueError(f"{len(self.regions)} regions but regions_class_order "
                             f"{list(self.regions_class_order)}")
        fg = set(self.names) - {0}
        for r in self.regions:
            if not r.labels or not set(r.labels) <= fg:
                raise ValueError(f"region {r.name!r} {list(r.labels)} must be a non-empty set "
                                 f"of foreground label values {sorted(fg)}")
        if not set(self.regions_class_order) <= fg:
            raise ValueError(f"regions_class_order {list(self.regions_class_order)} must be "
                             f"foreground label values {sorted(fg)}")

    # ---- construction

    @classmethod
    def from_dataset_json(cls, labels: Any, *, layout: str = "nnunetv2",
                          regions_class_order: Sequence[int] | None = None,
                          nested: bool = False, path: Path | str = "dataset.json"
                          ) -> LabelScheme:
        """The scheme of dataset.json's ``labels`` (and ``regions_class_order``).

        MSD ``{"0": "background", "1": "edema", "4": "ignore"}`` and nnU-Net v2
        ``{"background": 0, "edema": 1, "ignore": 4}`` give the same scheme; v2 region lists
        (``"whole tumor": [1, 2, 3]``) give region mode (``regions_class_order`` required
        unless each region's lowest value is distinct: that value is written then).
        ``nested=True`` asks for BraTS nested regions (:func:`nested_regions`) over plain
        labels. Raises :class:`DataError` naming ``path``.
        """
        values = parse_labels(labels, layout=layout, path=path)
        ignore = [v for v, n in values.items() if n.strip().lower() == IGNORE_NAME]
        if len(ignore) > 1:
            raise DataError(f"'labels' names {len(ignore)} values 'ignore' ({ignore}); "
                            "sparse annotations have one ignore value", path=path)
        names = {v: n for v, n in values.items() if v not in ignore}
        regions: tuple[ScoredClass, ...] = ()
        if any(isinstance(v, list | tuple) for v in labels.values()):
            # v2 region training: every entry but background and ignore is a region
            regions = tuple(ScoredClass(str(k), tuple(sorted({int(x) for x in _items(v)})))
                            for k, v in labels.items()
                            if [_as_int(x) for x in _items(v)] != [0]
                            and str(k).strip().lower() != IGNORE_NAME)
        elif nested:
            regions = nested_regions(names)
        if regions and regions_class_order is None:
            lowest = [min(r.labels) for r in regions]
            if len(set(lowest)) != len(lowest):
                raise DataError("'labels' has regions but no 'regions_class_order' (the label "
                                "value to write for each region, nnU-Net v2)", path=path)
            regions_class_order = lowest
        try:
            order = tuple(int(v) for v in regions_class_order or ()) if regions else ()
            return cls(names, regions, order,
                       ignore[0] if ignore else None)
        except ValueError as e:
            raise DataError(f"'labels': {e}", path=path) from e

    @classmethod
    def from_values(cls, labels: Mapping[int, str], *, regions: bool = False) -> LabelScheme:
        """The scheme plans older than it imply: every listed value a class (no ignore), BraTS
        nested regions when ``regions`` (config ``training.regions`` then)."""
        rs = nested_regions(labels) if regions else ()
        return cls(dict(labels), rs, tuple(min(r.labels) for r in rs))

    def with_nested_regions(self) -> LabelScheme:
        """This scheme in BraTS region mode (unchanged when it already has regions)."""
        if self.regions:
            return self
        rs = nested_regions(self.names)
        return LabelScheme(self.names, rs, tuple(min(r.labels) for r in rs), self.ignore)

    # ---- what the stages ask

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(sorted(self.names))

    @property
    def table(self) -> LabelTable:
        return LabelTable(self.values, self.ignore)

    @property
    def num_classes(self) -> int:
        """Classes the label maps hold (background included, ignore excluded)."""
        return len(self.names)

    @property
    def region_mode(self) -> bool:
        return bool(self.regions)

    @property
    def output_channels(self) -> int:
        """Network outputs: one softmax logit per class, or one sigmoid per region."""
        return len(self.regions) if self.regions else self.num_classes

    @property
    def scored_classes(self) -> tuple[ScoredClass, ...]:
        """What evaluation and postprocessing score: the regions, else each foreground label."""
        if self.regions:
            return self.regions
        return tuple(ScoredClass(str(v), (v,)) for v in self.values if v != 0)

    @property
    def index_regions(self) -> tuple[tuple[int, ...], ...]:
        """The regions as class indices (what the preprocessed label maps hold)."""
        table = self.table
        return tuple(tuple(table.index_of(v) for v in r.labels) for r in self.regions)

    # ---- JSON

    def to_dict(self) -> dict[str, Any]:
        return {"labels": {str(k): v for k, v in sorted(self.names.items())},
                "regions": [{"name": r.name, "labels": list(r.labels)} for r in self.regions],
                "regions_class_order": list(self.regions_class_order),
                "ignore": self.ignore}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelScheme:
        return cls({int(k): str(v) for k, v in d["labels"].items()},
                   tuple(ScoredClass(str(r["name"]), tuple(int(x) for x in r["labels"]))
                         for r in d.get("regions", ())),
                   tuple(int(v) for v in d.get("regions_class_order", ())),
                   None if d.get("ignore") is None else int(d["ignore"]))


def outputs_to_labels(outputs: Any, scheme: LabelScheme, *, logits: bool = False) -> Any:
    """The one way network outputs become label values.

    ``outputs``: ``(C, *S)`` numpy array or torch tensor with ``C ==
    scheme.output_channels``: softmax probabilities (or logits) per class, or in region mode
    sigmoid probabilities (or, with ``logits=True``, logits) per region. Softmax: the argmax
    class index (first maximum wins) mapped to its label value; regions: each region's
    :attr:`LabelScheme.regions_class_order` value where its probability exceeds
    :data:`REGION_THRESHOLD`, later regions written over earlier ones (nnU-Net v2's rule).
    Returns ``(*S)`` in :attr:`LabelTable.value_dtype` (a numpy array or a tensor of the
    input's kind). Never returns the ignore value. Raises ``ValueError`` for a wrong channel
    count.
    """
    if outputs.shape[0] != scheme.output_channels:
        raise ValueError(f"got {outputs.shape[0]} output channels; the label scheme has "
                         f"{scheme.output_channels} ({'regions' if scheme.regions else 'classes'})")
    dtype = scheme.table.value_dtype
    is_numpy = isinstance(outputs, np.ndarray)
    if not scheme.regions:
        index = outputs.argmax(0)
        if is_numpy:
            return scheme.table.to_values(index)
        import torch

        lut = torch.as_tensor(np.asarray(scheme.values, dtype=np.int64), device=index.device)
        return lut[index].to(_torch_dtype(dtype))
    cut = 0.0 if logits else REGION_THRESHOLD
    if is_numpy:
        out = np.zeros(outputs.shape[1:], dtype=dtype)
        for channel, value in zip(outputs, scheme.regions_class_order, strict=True):
            out[channel > cut] = value
        return out
    import torch

    res = torch.zeros(outputs.shape[1:], dtype=_torch_dtype(dtype), device=outputs.device)
    for channel, value in zip(outputs, scheme.regions_class_order, strict=True):
        res.masked_fill_(channel > cut, value)
    return res


def _items(v: Any) -> list[Any]:
    """A dataset.json ``labels`` entry as a list (v2: an integer or a region list)."""
    return list(v) if isinstance(v, list | tuple) else [v]


def _torch_dtype(dtype: type[np.unsignedinteger]) -> Any:
    import torch

    # torch has no uint16/uint32 arithmetic on every device: int32/int64 hold the values
    return {np.uint8: torch.uint8, np.uint16: torch.int32}.get(dtype, torch.int64)


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
    """dataset.json's ``labels`` as ``{value: name}``, sorted by value: every value a label
    file may hold, the ``ignore`` value of sparse annotations included.

    MSD writes ``{"0": "background", "1": "edema"}``, nnU-Net v2 ``{"background": 0}``. Either
    form is accepted in either layout when it is unambiguous (exactly one side is integers).
    v2 region lists (``"whole tumor": [1, 2, 3]``) add their values; a value named by no
    entry of its own takes the name of the smallest region holding it
    (:meth:`LabelScheme.from_dataset_json` reads the regions). Raises :class:`DataError`
    naming dataset.json, the ``labels`` key and both accepted forms otherwise.
    """
    forms = ('accepted forms: {"0": "background", "1": "tumour"} (MSD) or '
             '{"background": 0, "tumour": 1} (nnU-Net v2)')
    if not isinstance(labels, Mapping) or not labels:
        raise DataError(f"'labels' must be a non-empty mapping; {forms}", path=path)
    region_lists = {k: v for k, v in labels.items() if isinstance(v, list | tuple)}
    if region_lists:
        return _parse_region_labels(labels, region_lists, path)
    keys_int = all(_as_int(k) is not None for k in labels)
    vals_int = all(_as_int(v) is not None for v in labels.values())
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
    return _checked(out, forms, path)


def _checked(out: dict[int, str], forms: str, path: Path | str) -> dict[int, str]:
    if any(v < 0 for v in out):
        raise DataError(f"'labels' lists negative values {sorted(v for v in out if v < 0)}; "
                        "label values must be non-negative integers", path=path)
    if 0 not in out:
        raise DataError(f"'labels' does not list the background value 0 (listed: "
                        f"{sorted(out)}); nnpipe needs background = 0; {forms}", path=path)
    return dict(sorted(out.items()))


def _parse_region_labels(labels: Mapping[Any, Any], lists: Mapping[Any, Any],
                         path: Path | str) -> dict[int, str]:
    """``{value: name}`` of nnU-Net v2 labels with region lists (always the v2 form)."""
    members: dict[str, tuple[int, ...]] = {}
    for name, v in labels.items():
        items = list(v) if isinstance(v, list | tuple) else [v]
        ints = [_as_int(x) for x in items]
        if not items or any(i is None for i in ints):
            raise DataError(f"'labels' entry {name!r}: {v!r} is neither an integer nor a "
                            "non-empty list of integers (nnU-Net v2 region form)", path=path)
        members[str(name)] = tuple(sorted({cast(int, i) for i in ints}))
    out: dict[int, str] = {}
    for name, vals in members.items():
        if len(vals) == 1 and name not in lists:
            out[vals[0]] = name
    for v in sorted({x for vals in members.values() for x in vals} - set(out)):
        # a value with no entry of its own: named by the smallest region that holds it
        out[v] = min((n for n, vals in members.items() if v in vals),
                     key=lambda n: (len(members[n]), n))
    return _checked(out, "nnU-Net v2 region form: {\"background\": 0, \"whole tumor\": "
                    "[1, 2, 3], \"enhancing\": 3}", path)


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
