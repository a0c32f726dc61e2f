"""Dataset fingerprint: the per-case geometry and foreground intensities planning needs.

One pass over the training cases (in parallel when ``workers > 1``) records each case's
spacing, shape and shape after cropping to the nonzero box, and per-channel intensity
statistics over foreground voxels (label > 0). Memory stays bounded: mean, std, min and max
are exact and combined from per-case partial sums; the 0.5/99.5 percentiles come from a
seeded sample of at most ``max_samples_per_case`` foreground voxels per case (cases are
weighted equally), never from all voxels of all cases.
"""

from __future__ import annotations

import math
import multiprocessing
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from nnpipe.datasets.layout import Case, Dataset, read_image, read_label
from nnpipe.errors import DataError
from nnpipe.geometry import axis_codes, spacing_of
from nnpipe.labels import INTEGER_TOLERANCE, LabelScheme
from nnpipe.planning.channels import (
    DEFAULT_SCHEME,
    channel_name_warnings,
    scheme_for_channel,
)
from nnpipe.progress import log

Bbox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
T = TypeVar("T")
R = TypeVar("R")

MAX_SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel over the whole training set."""

    mean: float
    std: float
    min: float
    max: float
    p00_5: float  # 0.5th percentile
    p99_5: float  # 99.5th percentile
    n_voxels: int  # foreground voxels counted (all cases)


@dataclass(frozen=True)
class Fingerprint:
    """What planning knows about a dataset. Per-case tuples follow ``case_ids``' order.

    Shapes are voxels along (X, Y, Z); spacings are mm along the same axes.
    """

    case_ids: tuple[str, ...]
    spacings: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]  # original image shape
    cropped_shapes: tuple[tuple[int, int, int], ...]  # after crop to the nonzero box
    intensity: tuple[IntensityStats, ...]  # per channel
    num_channels: int
    labels: dict[int, str]  # label value -> name, background included
    is_ct: tuple[bool, ...]  # per channel
    layout: str = "msd"  # dataset layout ("msd" or "nnunetv2"): how predict finds channels
    # label value -> number of training cases whose label map contains it
    class_cases: dict[int, int] = field(default_factory=dict)
    # per channel, its name in dataset.json (selects the normalization scheme,
    # nnpipe.planning.channels.scheme_for_channel); () in fingerprints older than it
    channel_names: tuple[str, ...] = ()
    # case id -> labelled voxels outside the image's nonzero box (kept: the crop box grows to
    # hold them; nnpipe.planning.fingerprint.crop_to_nonzero); cases with none are left out
    labelled_outside_crop: dict[str, int] = field(default_factory=dict)

    @property
    def crop_to_nonzero(self) -> bool:
        """Whether cases are cropped to their nonzero box for training and prediction: not
        when a training case has labelled voxels beyond it, since then structures reach where
        the image is 0 and a prediction cropped to the image alone could never reach them."""
        return not self.labelled_outside_crop
    # dataset.json's label concept (regions, ignore); None in fingerprints older than it
    label_scheme: LabelScheme | None = None

    @property
    def scheme(self) -> LabelScheme:
        """The label concept planning records (derived from ``labels`` for old fingerprints:
        a value named ``ignore`` is the ignore value)."""
        if self.label_scheme is not None:
            return self.label_scheme
        return LabelScheme.from_dataset_json({str(k): v for k, v in self.labels.items()},
                                             layout="msd")

    @property
    def median_relative_size_after_cropping(self) -> float:
        """The median over cases of (voxels after the crop to the nonzero box) / (voxels of
        the image), in (0, 1]: how much background cropping removes from a typical case.

        Source: nnU-Net v2 2.8.1 ``DatasetFingerprintExtractor`` (its
        ``median_relative_size_after_cropping``)."""
        ratios = [math.prod(c) / math.prod(s)
                  for s, c in zip(self.shapes, self.cropped_shapes, strict=True)]
        return float(np.median(ratios))

    @property
    def single_slice(self) -> bool:
        """True for a 2D dataset: every case has one voxel along some axis."""
        return all(1 in s for s in self.shapes)

    @property
    def slice_axis_2d(self) -> int | None:
        """The (canonical) axis every case is one voxel thick along, for a 2D dataset."""
        if not self.single_slice:
            return None
        common = [a for a in range(3) if all(s[a] == 1 for s in self.shapes)]
        return common[0] if common else None

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        if n == 0:
            raise ValueError("a fingerprint needs at least one case")
        for name in ("spacings", "shapes", "cropped_shapes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} cases")
        for name in ("intensity", "is_ct", "channel_names"):
            if name == "channel_names" and not self.channel_names:
                continue
            if len(getattr(self, name)) != self.num_channels:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for "
                                 f"{self.num_channels} channels")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        d["class_cases"] = {str(k): v for k, v in self.class_cases.items()}
        d["label_scheme"] = None if self.label_scheme is None else self.label_scheme.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(
            case_ids=tuple(str(c) for c in d["case_ids"]),
            spacings=tuple((float(x), float(y), float(z)) for x, y, z in d["spacings"]),
            shapes=tuple(_shape3(s) for s in d["shapes"]),
            cropped_shapes=tuple(_shape3(s) for s in d["cropped_shapes"]),
            intensity=tuple(IntensityStats(**s) for s in d["intensity"]),
            num_channels=int(d["num_channels"]),
            labels={int(k): str(v) for k, v in d["labels"].items()},
            is_ct=tuple(bool(v) for v in d["is_ct"]),
            layout=str(d.get("layout", "msd")),
            class_cases={int(k): int(v) for k, v in d.get("class_cases", {}).items()},
            channel_names=tuple(str(v) for v in d.get("channel_names", ())),
            label_scheme=(LabelScheme.from_dict(d["label_scheme"])
                          if d.get("label_scheme") is not None else None),
            labelled_outside_crop={str(k): int(v)
                                   for k, v in d.get("labelled_outside_crop", {}).items()},
        )


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The half-open box ``((lo, hi), ...)`` (voxels) of the True voxels of a boolean mask of
    any number of axes; an empty mask gives the whole array (nothing to crop to; nnU-Net v2
    would fail there).

    Source: nnU-Net v2 2.8.1 ``preprocessing/cropping/cropping.py`` (``get_bbox_from_mask``
    of the nonzero mask; filling its holes does not move the box).
    """
    if not mask.any():
        return tuple((0, int(n)) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _box(mask: np.ndarray) -> Bbox:
    """The half-open bounding box of a boolean ``(X, Y, Z)`` mask (:func:`bounding_box`)."""
    box = bounding_box(mask)
    return (box[0], box[1], box[2])


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None,
                    ignore: int | None = None) -> tuple[Bbox, np.ndarray, np.ndarray | None]:
    """Crop ``image`` (C, X, Y, Z) and ``label`` (X, Y, Z) to the box of nonzero voxels, grown
    to hold every labelled voxel (label > 0, other than the ``ignore`` value of sparse
    annotations: unannotated voxels are no structure to keep).

    A voxel counts as nonzero if it is nonzero in any channel (the box of nnU-Net v2's filled
    nonzero mask is the same: a filled hole touches no face of it). The box is half-open,
    ``((x0, x1), (y0, y1), (z0, z1))`` in voxels. Labelled voxels where the image is 0 (a
    structure reaching beyond a mask or the field of view; nnU-Net issues #1425, #2796) stay
    inside the box, so nothing a user labelled is dropped. An all-zero image keeps its full
    extent.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape[1:]}")
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        bbox: Bbox = ((0, image.shape[1]), (0, image.shape[2]), (0, image.shape[3]))
    else:
        bbox = _box(nonzero if label is None else nonzero | _labelled(label, ignore))
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    cropped_label = None if label is None else label[sl]
    return bbox, image[(slice(None), *sl)], cropped_label


def _labelled(label: np.ndarray, ignore: int | None) -> np.ndarray:
    """Voxels a user labelled: label > 0, the ``ignore`` value (unannotated) left out."""
    return (label > 0) if ignore is None else (label > 0) & (label != ignore)


def labelled_outside_nonzero(image: np.ndarray, label: np.ndarray,
                             ignore: int | None = None) -> tuple[int, int]:
    """Labelled voxels (label > 0, not ``ignore``) of ``label`` ``(X, Y, Z)`` where ``image``
    ``(C, X, Y, Z)`` is 0 in every channel, and how many of them lie outside the image's nonzero
    box (those a crop to the image alone would drop). An all-zero image counts (0, 0): it is
    not cropped."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return 0, 0
    labelled = _labelled(label, ignore)
    inside = np.zeros_like(nonzero)
    inside[tuple(slice(lo, hi) for lo, hi in _box(nonzero))] = True
    return int((labelled & ~nonzero).sum()), int((labelled & ~inside).sum())


@dataclass(frozen=True)
class _ChannelPart:
    """One case's contribution to one channel's statistics."""

    n: int
    mean: float
    m2: float  # sum of squared deviations from the mean
    min: float
    max: float
    sample: np.ndarray  # at most max_samples_per_case foreground intensities


@dataclass(frozen=True)
class _CaseRecord:
    case_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]
    channels: tuple[_ChannelPart, ...]
    classes: tuple[int, ...]  # label values present
    rounded: bool  # label values rounded from floats
    axis_codes: str  # the file's voxel order, e.g. "RAS" or "ASR"
    # labelled voxels where the image is 0, and of those outside its nonzero box
    outside: tuple[int, int] = (0, 0)
    # per channel: constant over the whole image (all zero, say): left out of the statistics
    constant: tuple[float | None, ...] = ()


def _case_seed(case_id: str) -> int:
    """A seed that depends only on the case id, so results do not depend on worker order."""
    return zlib.crc32(case_id.encode())


def _fingerprint_case(args: tuple[Dataset, Case, int]) -> _CaseRecord:
    ds, case, max_samples = args
    ci = read_image(ds, case)
    image, affine = ci.image, ci.affine
    label, rounded = read_label(ds, case, ci)
    ignore = ds.scheme.ignore  # unannotated voxels are no foreground
    _, cropped, _ = crop_to_nonzero(image, label, ignore=ignore)
    foreground = (label > 0) if ignore is None else (label > 0) & (label != ignore)
    n = int(foreground.sum())
    rng = np.random.default_rng(_case_seed(case.case_id))
    pick = np.sort(rng.choice(n, size=max_samples, replace=False)) if n > max_samples else None
    parts, constant = [], []
    for channel in image:
        first = float(channel.flat[0])
        # A channel holding one value everywhere (an all-zero image) says nothing about the
        # dataset's intensities: it is named and left out of them, like an empty label.
        flat = bool(np.all(channel == first))
        constant.append(first if flat else None)
        values = channel[foreground].astype(np.float64)
        sample = (values if pick is None else values[pick]).astype(np.float32)
        if n == 0 or flat:
            parts.append(_ChannelPart(0, 0.0, 0.0, np.inf, -np.inf, sample[:0]))
            continue
        mean = float(values.mean())
        parts.append(_ChannelPart(n, mean, float(((values - mean) ** 2).sum()),
                                  float(values.min()), float(values.max()), sample))
    spacing = spacing_of(affine)
    return _CaseRecord(case.case_id, (spacing[0], spacing[1], spacing[2]),
                       _shape3(image.shape[1:]), _shape3(cropped.shape[1:]), tuple(parts),
                       tuple(int(v) for v in np.unique(label)), rounded,
                       axis_codes(ci.file_affine), labelled_outside_nonzero(image, label, ignore),
                       tuple(constant))


def _shape3(shape: Iterable[int]) -> tuple[int, int, int]:
    s = tuple(int(v) for v in shape)
    return (s[0], s[1], s[2])


def _combine(parts: list[_ChannelPart]) -> IntensityStats:
    """Chan et al.'s pairwise combination of per-case means and squared deviations."""
    n, mean, m2 = 0, 0.0, 0.0
    for p in parts:
        if p.n == 0:
            continue
        total = n + p.n
        delta = p.mean - mean
        mean += delta * p.n / total
        m2 += p.m2 + delta * delta * n * p.n / total
        n = total
    if n == 0:  # every case left out (constant channel everywhere): nothing to describe
        return IntensityStats(mean=0.0, std=0.0, min=0.0, max=0.0, p00_5=0.0, p99_5=0.0,
                              n_voxels=0)
    pooled = np.concatenate([p.sample for p in parts])
    low, high = np.percentile(pooled, [0.5, 99.5])
    return IntensityStats(mean=mean, std=float(np.sqrt(m2 / n)), min=min(p.min for p in parts),
                          max=max(p.max for p in parts), p00_5=float(low), p99_5=float(high),
                          n_voxels=n)


def imap_cases(func: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    """``map(func, items)`` in order, in a process pool when ``workers > 1``.

    Uses ``fork`` where available: ``spawn`` would re-run a Snakemake ``script:`` (which has no
    ``__main__`` guard) in every worker. An exception in any worker ends the pool and is
    re-raised here.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(items) <= 1:
        yield from map(func, items)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, len(items))) as pool:
        yield from pool.imap(func, items, chunksize=1)


def compute_fingerprint(ds: Dataset, workers: int = 1, progress: bool = True, *,
                        max_samples_per_case: int = MAX_SAMPLES_PER_CASE) -> Fingerprint:
    """Read every training case once and summarize it.

    Raises :class:`DataError` naming the case for unreadable or inconsistent files (shape or
    affine mismatch, unknown label values, NaN), and if no case has any foreground voxel.
    """
    items = [(ds, case, max_samples_per_case) for case in ds.training]
    records: list[_CaseRecord] = []
    for i, rec in enumerate(imap_cases(_fingerprint_case, items, workers), start=1):
        records.append(rec)
        if progress:
            log(f"fingerprint {i}/{len(items)} {rec.case_id}: shape {rec.shape} spacing "
                f"{tuple(round(s, 3) for s in rec.spacing)} cropped {rec.cropped_shape}")
    if not any(v > 0 for r in records for v in r.classes):
        raise DataError("no training case has any foreground voxel (label > 0)", path=ds.root)
    class_cases = {v: sum(v in r.classes for r in records) for v in ds.labels}
    _dataset_messages(ds, records, class_cases)
    return Fingerprint(
        case_ids=tuple(r.case_id for r in records),
        spacings=tuple(r.spacing for r in records),
        shapes=tuple(r.shape for r in records),
        cropped_shapes=tuple(r.cropped_shape for r in records),
        intensity=tuple(_combine([r.channels[c] for r in records])
                        for c in range(ds.num_channels)),
        num_channels=ds.num_channels,
        labels=dict(ds.labels),
        is_ct=ds.is_ct,
        layout=ds.layout,
        class_cases=class_cases,
        channel_names=tuple(ds.channels),
        label_scheme=ds.scheme,
        labelled_outside_crop={r.case_id: r.outside[1] for r in records if r.outside[1]},
    )


def _dataset_messages(ds: Dataset, records: list[_CaseRecord],
                      class_cases: dict[int, int]) -> None:
    """Dataset-level facts, one message each: rounded labels, reoriented cases, classes
    never or rarely labelled, a 2D dataset (or single slices mixed into a 3D one: an error)."""
    n = len(records)
    schemes = [scheme_for_channel(name) for name in ds.channels]
    if any(s != DEFAULT_SCHEME for s in schemes):
        # a z-scored channel's mask (zscore_nonzero or zscore) is the plan's decision
        # (nnpipe.planning.planner.uses_mask_for_norm), made from the whole fingerprint
        log("normalization by channel name: " + "; ".join(
            f"channel {c} {name!r}: {'z-score' if s == DEFAULT_SCHEME else s}"
            for c, (name, s) in enumerate(zip(ds.channels, schemes, strict=True))))
    for line in channel_name_warnings(ds.channels):
        log(line)
    _statistics_messages(ds, records)
    rounded = [r.case_id for r in records if r.rounded]
    if rounded:
        log(f"labels: {len(rounded)} of {n} case(s) hold integers up to float round-off "
            f"(within {INTEGER_TOLERANCE:g}); rounded: {_ids(rounded)}")
    codes: dict[str, list[str]] = {}
    for r in records:
        codes.setdefault(r.axis_codes, []).append(r.case_id)
    if len(codes) > 1 or "RAS" not in codes:
        log("orientation: cases are read in the canonical (RAS) voxel order and written back "
            "in their own; stored as " + "; ".join(f"{c}: {len(v)} case(s) ({_ids(v)})"
                                                   for c, v in sorted(codes.items())))
    never = [f"{v} ({ds.labels[v]})" for v, k in class_cases.items() if v != 0 and k == 0]
    rare = [f"{v} ({ds.labels[v]}, {k} case)" for v, k in class_cases.items()
            if v != 0 and k == 1]
    if never:
        log(f"warning: class(es) {', '.join(never)} listed in dataset.json but present in no "
            f"training label: the network cannot learn them")
    if rare and n > 1:
        log(f"warning: class(es) {', '.join(rare)} present in fewer than two training cases: "
            f"most cross-validation folds cannot score them")
    thin = [r.case_id for r in records if 1 in r.shape]
    if thin and len(thin) == n:
        log(f"2D dataset: all {n} cases are single slices; only 2D is planned (3D runs are "
            f"left out of the study)")
    elif thin:
        raise DataError(f"{len(thin)} of {n} cases are single slices ({_ids(thin)}) but the "
                        f"others are volumes; a dataset must be all 2D or all 3D", path=ds.root)


def _statistics_messages(ds: Dataset, records: list[_CaseRecord]) -> None:
    """Labels beyond the image's nonzero region, and cases left out of the intensity
    statistics (empty label, constant channel), one line each."""
    n = len(records)
    outside = [r for r in records if r.outside[0]]
    if outside:
        beyond = sum(r.outside[1] for r in outside)
        log(f"crop: {len(outside)} of {n} case(s) have labelled voxels where the image is 0 "
            f"(outside its nonzero region): " + ", ".join(
                f"{r.case_id} ({r.outside[0]} voxel(s), {r.outside[1]} outside the nonzero box)"
                for r in outside[:6]) + (f" and {len(outside) - 6} more" if len(outside) > 6
                                         else "")
            + (f"; {beyond} labelled voxel(s) lie beyond the image's nonzero box: cases are "
               f"not cropped to it (training and prediction), so none is dropped and "
               f"predictions can reach them" if beyond else
               "; all of them lie inside the crop box"))
    left_out = []
    for r in records:
        why = [f"channel {c} ({ds.channels[c]!r}) is {v:g} everywhere"
               for c, v in enumerate(r.constant) if v is not None]
        if not any(v > 0 for v in r.classes):
            why.insert(0, "empty label (no foreground)")
        if why:
            left_out.append(f"{r.case_id}: {'; '.join(why)}")
    if left_out:
        log(f"statistics: {len(left_out)} of {n} case(s) left out of the intensity statistics "
            f"of the channels named: " + " | ".join(left_out[:8])
            + (f" | and {len(left_out) - 8} more" if len(left_out) > 8 else ""))


def _ids(ids: list[str], limit: int = 6) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
