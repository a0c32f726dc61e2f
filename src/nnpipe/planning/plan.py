"""The :class:`Plan`: every number the later stages need, saved as readable JSON.

Axis convention everywhere in nnpipe: arrays are in NIfTI voxel order ``(X, Y, Z)``;
spacings are in mm along those axes. A 2D plan names ``slice_axis``, the voxel axis the 2D
network slices along (the coarsest one); its ``patch_size`` and ``spacing`` then hold the two
in-plane axes, in increasing axis order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nnpipe.io import write_json
from nnpipe.labels import LabelScheme, LabelTable

# The version of the preprocessing rules (nnpipe.preprocessing.pipeline), recorded in every
# preprocessed folder's manifest and given to Snakemake's preprocess rule as a param, so
# folders made by older rules are rebuilt rather than mixed with new ones. 2: nnU-Net v2's
# order and rules (normalize on the cropped grid with the filled nonzero mask, then
# resample; cubic clipped to the input's range; separate-axis ties -> none; order-0 slices
# half up; v2's shape rounding). Folders without the field are version 1.
PREPROCESSING_VERSION = 2

@dataclass(frozen=True)
class ChannelNorm:
    """How one input channel is normalized.

    ``scheme`` names one of :data:`nnpipe.preprocessing.normalize.NORMALIZERS`:
    ``"zscore_nonzero"`` (MRI: z-score over voxels inside the nonzero mask, zero outside),
    ``"zscore"`` (over every voxel), ``"ct"`` (clip to ``[clip_low, clip_high]``, then
    ``(x - mean) / std`` with the foreground statistics of the whole training set),
    ``"none"``, ``"rescale_0_1"`` or ``"rgb_0_1"``. ``channel`` is the channel's name in
    dataset.json, which chose the scheme ("" in plans older than it).
    """

    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    channel: str = ""


@dataclass(frozen=True)
class Plan:
    dataset: str
    dim: int  # 2 or 3
    spacing: tuple[float, ...]  # target spacing of the network's axes, mm (len == dim)
    full_spacing: tuple[float, float, float]  # target spacing of all three voxel axes, mm
    patch_size: tuple[int, ...]  # voxels along the network's axes (len == dim)
    kernels: tuple[tuple[int, ...], ...]  # per level, per axis
    strides: tuple[tuple[int, ...], ...]  # per level, per axis; level 0 is all ones
    filters: tuple[int, ...]  # per level
    batch_size: int
    num_channels: int
    num_classes: int  # label values including background
    labels: dict[int, str]
    channel_norms: tuple[ChannelNorm, ...]
    slice_axis: int | None = None  # 2D only: the voxel axis sliced along
    median_shape: tuple[int, ...] = ()  # median cropped shape at the target spacing (X, Y, Z)
    notes: tuple[str, ...] = field(default_factory=tuple)  # why the planner chose what it did
    # class index -> label value (nnpipe.labels.LabelTable); () in plans older than the table
    label_values: tuple[int, ...] = ()
    layout: str = "msd"  # the dataset layout: how `nnpipe predict --input` groups channels
    # planning.network (nnpipe.planning.network.NETWORKS): which network the plan builds;
    # "plain" in plans older than the residual-encoder presets
    network: str = "plain"
    # residual blocks per encoder level (ResEnc presets; () for plain), recorded so a
    # checkpoint rebuilds exactly the network it was trained with
    encoder_blocks: tuple[int, ...] = ()
    # nnU-Net's configuration names: "2d", "3d", "3d_lowres" (the cascade's low-resolution
    # stage) or "3d_cascade" (its full-resolution stage); "" in plans older than the cascade
    configuration: str = ""
    # the configuration whose segmentation this stage takes as extra input ("3d_lowres" for
    # "3d_cascade"; "" otherwise): see :attr:`previous_channels`
    previous_stage: str = ""
    # the label concept (nnpipe.labels.LabelScheme): value <-> index table, regions, ignore;
    # None in plans older than it (then :meth:`scheme` derives it the old way)
    label_scheme: LabelScheme | None = None
    # crop each case to its nonzero box before resampling (nnpipe.preprocessing.pipeline);
    # False when training labels reach beyond it (Fingerprint.crop_to_nonzero)
    crop_to_nonzero: bool = True

    def __post_init__(self) -> None:
        ls = self.label_scheme
        if ls is not None and (dict(self.labels) != ls.names or self.num_classes != ls.num_classes
                               or self.label_values not in ((), ls.values)):
            raise ValueError(f"plan for {self.dataset!r}: labels {self.labels}, num_classes "
                             f"{self.num_classes}, label_values {list(self.label_values)} "
                             f"disagree with its label_scheme {ls.to_dict()} (use with_scheme)")

    def scheme(self, legacy_regions: bool = False) -> LabelScheme:
        """The plan's label concept. A plan older than the recorded scheme has no ignore value
        (its label maps were trained with every listed value a class) and region mode came
        from outside: the checkpoint's settings or config ``training.regions``
        (``legacy_regions``); a recorded scheme ignores ``legacy_regions``."""
        if self.label_scheme is not None:
            return self.label_scheme
        return LabelScheme.from_values(dict(zip(self.label_table.values, (
            self.labels.get(v, str(v)) for v in self.label_table.values), strict=True)),
            regions=legacy_regions)

    def with_scheme(self, scheme: LabelScheme) -> Plan:
        """This plan with ``scheme`` recorded, and the class fields that follow from it."""
        return replace(self, label_scheme=scheme, labels=dict(scheme.names),
                       num_classes=scheme.num_classes, label_values=scheme.values)

    @property
    def previous_channels(self) -> int:
        """Extra input channels of a cascade stage: the previous stage's segmentation one-hot,
        foreground classes only (``num_classes - 1``; background is where all are zero), as
        nnU-Net does. 0 for every other plan."""
        return self.num_classes - 1 if self.previous_stage else 0

    @property
    def input_channels(self) -> int:
        """Channels the network takes: the image's, then :attr:`previous_channels`."""
        return self.num_channels + self.previous_channels

    @property
    def label_table(self) -> LabelTable:
        """The value <-> class index table: training and losses use indices, files values."""
        if self.label_scheme is not None:
            return self.label_scheme.table
        return LabelTable(self.label_values or tuple(sorted(self.labels)))

    @property
    def in_plane_axes(self) -> tuple[int, ...]:
        """The voxel axes the network sees: all three in 3D, the two non-slice axes in 2D."""
        if self.dim == 3:
            return (0, 1, 2)
        return tuple(a for a in range(3) if a != self.slice_axis)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        d["label_scheme"] = None if self.label_scheme is None else self.label_scheme.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        d["channel_norms"] = tuple(ChannelNorm(**c) for c in d["channel_norms"])
        for key in ("spacing", "full_spacing", "patch_size", "filters", "median_shape", "notes",
                    "label_values", "encoder_blocks"):
            d[key] = tuple(d.get(key, ()))
        d["kernels"] = tuple(tuple(k) for k in d["kernels"])
        d["strides"] = tuple(tuple(s) for s in d["strides"])
        scheme = d.get("label_scheme")
        d["label_scheme"] = None if scheme is None else LabelScheme.from_dict(scheme)
        return cls(**d)

    def save(self, path: Path | str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))
