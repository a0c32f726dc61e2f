"""Reading an nnU-Net v2 trained model's ``plans.json`` and ``dataset.json``.

A configuration of the plans (``configurations[name]``, with ``inherits_from`` resolved as
v2 resolves it: the child's keys over its parent's) becomes a :class:`V2Configuration`: the
network (class and keyword arguments, :mod:`nnpipe.v2.network`) and the
:class:`~nnpipe.v2.semantics.V2Semantics` prediction reads. Plans written by nnU-Net v2.0 /
2.1 (``UNet_class_name``, ``n_conv_per_stage_encoder`` ... instead of ``architecture``) are
read into the same description, with the values v2 itself assumes for them (conv bias,
instance norm eps 1e-5 affine, LeakyReLU).

Anything this reader does not know (a custom architecture, a normalisation scheme, a
resampling function, an image reader) is refused with the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnpipe.v2.semantics import (
    NORMALIZATION_SCHEMES,
    ZSCORE,
    Resampling,
    V2Semantics,
)

PLAIN = "PlainConvUNet"
RESENC = "ResidualEncoderUNet"
ARCHITECTURES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": PLAIN,
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": RESENC,
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": RESENC,
}
OLD_ARCHITECTURES = {"PlainConvUNet": PLAIN, "ResidualEncoderUNet": RESENC}
# the resampling function v2's default plans name for data and probabilities
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing")
READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")  # nnpipe.v2.imageio


class V2PlansError(ValueError):
    """A v2 plans.json / dataset.json that nnpipe cannot read; names the file and field."""


@dataclass(frozen=True)
class V2Configuration:
    """One configuration of a v2 model: network description and prediction semantics."""

    name: str
    architecture: str  # PLAIN or RESENC
    arch_kwargs: Mapping[str, Any]  # v2's arch_kwargs, import names still as strings
    input_channels: int
    semantics: V2Semantics
    dataset_name: str
    channel_names: tuple[str, ...]


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise V2PlansError(f"{where}: no field {key!r}")
    return d[key]


def resolve_configuration(plans: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    """``plans['configurations'][name]`` with ``inherits_from`` resolved (child over parent).

    Raises:
        V2PlansError: unknown configuration (naming the ones there) or an inheritance cycle.
    """
    configurations = _need(plans, "configurations", where)
    seen: list[str] = []
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None:
        if current not in configurations:
            raise V2PlansError(f"{where}: configuration {current!r} not in the plans (there: "
                               f"{', '.join(configurations)})")
        if current in seen:
            raise V2PlansError(f"{where}: configurations inherit in a cycle: {seen + [current]}")
        seen.append(current)
        chain.append(dict(configurations[current]))
        current = configurations[current].get("inherits_from")
    merged: dict[str, Any] = {}
    for config in reversed(chain):
        merged.update(config)
    return merged


def _architecture(config: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """``(PLAIN | RESENC, arch_kwargs)`` from a new-format ``architecture`` or old fields."""
    if "architecture" in config:
        arch = config["architecture"]
        cls = _need(arch, "network_class_name", f"{where} architecture")
        if cls not in ARCHITECTURES:
            raise V2PlansError(f"{where}: field architecture.network_class_name is {cls!r}; "
                               f"nnpipe reads {', '.join(sorted(set(ARCHITECTURES)))}")
        return ARCHITECTURES[cls], dict(_need(arch, "arch_kwargs", f"{where} architecture"))
    # v2.0 / 2.1 plans: the network is described by loose fields
    cls = _need(config, "UNet_class_name", where)
    if cls not in OLD_ARCHITECTURES:
        raise V2PlansError(f"{where}: field UNet_class_name is {cls!r}; nnpipe reads "
                           f"{', '.join(OLD_ARCHITECTURES)}")
    encoder = list(_need(config, "n_conv_per_stage_encoder", where))
    n = len(encoder)
    dim = len(_need(config, "patch_size", where))
    base = int(_need(config, "UNet_base_num_features", where))
    top = int(_need(config, "unet_max_num_features", where))
    kwargs: dict[str, Any] = {
        "n_stages": n,
        "features_per_stage": [min(base * 2**i, top) for i in range(n)],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": _need(config, "conv_kernel_sizes", where),
        "strides": _need(config, "pool_op_kernel_sizes", where),
        ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): encoder,
        "n_conv_per_stage_decoder": list(_need(config, "n_conv_per_stage_decoder", where)),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return OLD_ARCHITECTURES[cls], kwargs


def _resampling(config: dict[str, Any], which: str, where: str) -> Resampling:
    fn = _need(config, f"resampling_fn_{which}", where)
    if fn not in RESAMPLING_FUNCTIONS:
        raise V2PlansError(f"{where}: field resampling_fn_{which} is {fn!r}; nnpipe reads "
                           f"{', '.join(RESAMPLING_FUNCTIONS)}")
    kw = dict(config.get(f"resampling_fn_{which}_kwargs") or {})
    if kw.get("is_seg"):
        raise V2PlansError(f"{where}: resampling_fn_{which}_kwargs.is_seg is true")
    unknown = set(kw) - {"is_seg", "order", "order_z", "force_separate_z",
                         "separate_z_anisotropy_threshold"}
    if unknown:
        raise V2PlansError(f"{where}: resampling_fn_{which}_kwargs has unknown field(s) "
                           f"{sorted(unknown)}")
    rule = Resampling(order=int(kw.get("order", 3)), order_z=int(kw.get("order_z", 0)),
                      force_separate_z=kw.get("force_separate_z"))
    if "separate_z_anisotropy_threshold" in kw:
        rule = Resampling(rule.order, rule.order_z, rule.force_separate_z,
                          float(kw["separate_z_anisotropy_threshold"]))
    return rule


def _normalization(config: dict[str, Any], channels: int, where: str) -> tuple[str, ...]:
    schemes = list(_need(config, "normalization_schemes", where))
    masks = list(config.get("use_mask_for_norm") or [False] * len(schemes))
    if len(schemes) != channels or len(masks) != channels:
        raise V2PlansError(f"{where}: normalization_schemes {schemes} / use_mask_for_norm "
                           f"{masks} do not have one entry per channel ({channels})")
    out = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks, strict=True)):
        if scheme == ZSCORE:
            out.append("zscore_nonzero" if mask else "zscore")
        elif scheme in NORMALIZATION_SCHEMES:
            out.append(NORMALIZATION_SCHEMES[scheme])
        else:
            raise V2PlansError(f"{where}: field normalization_schemes[{c}] is {scheme!r}; "
                               f"nnpipe reads {', '.join([ZSCORE, *NORMALIZATION_SCHEMES])}")
    return tuple(out)


def _labels(dataset: Mapping[str, Any], where: str
            ) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...] | None,
                       tuple[int, ...] | None, int | None]:
    """``(label values, regions, regions_class_order, ignore)`` of dataset.json (v2 rules:
    labels sorted, ``ignore`` never an output; regions: every non-background region in file
    order, with ``regions_class_order`` saying which value each writes)."""
    labels = _need(dataset, "labels", where)
    ignore = labels.get("ignore")
    if ignore is not None and not isinstance(ignore, int):
        raise V2PlansError(f"{where}: labels.ignore must be one integer, got {ignore!r}")
    values: set[int] = set()
    regions: list[tuple[int, ...]] = []
    has_regions = False
    for name, v in labels.items():
        if name == "ignore":
            continue
        group = tuple(int(x) for x in v) if isinstance(v, list | tuple) else (int(v),)
        has_regions |= isinstance(v, list | tuple) and len(v) > 1
        values.update(group)
        if set(group) != {0}:
            regions.append(group)
    if 0 not in values:
        raise V2PlansError(f"{where}: labels have no background (0)")
    if not has_regions:
        return tuple(sorted(values)), None, None, ignore
    order = dataset.get("regions_class_order")
    if order is None or len(order) != len(regions):
        raise V2PlansError(f"{where}: region labels need regions_class_order with one entry "
                           f"per region ({len(regions)}), got {order!r}")
    return tuple(sorted(values)), tuple(regions), tuple(int(o) for o in order), ignore


def read_configuration(plans: Mapping[str, Any], dataset: Mapping[str, Any], name: str,
                       mirror_axes: tuple[int, ...] | None,
                       plans_path: Path | str = "plans.json",
                       dataset_path: Path | str = "dataset.json") -> V2Configuration:
    """The :class:`V2Configuration` ``name`` of ``plans`` with ``dataset`` (dataset.json) and
    the checkpoint's ``inference_allowed_mirroring_axes``.

    Raises:
        V2PlansError: naming the file and the field nnpipe cannot read.
    """
    where = f"{str(plans_path)!r} configuration {name!r}"
    config = resolve_configuration(plans, name, str(plans_path))
    architecture, kwargs = _architecture(config, where)
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise V2PlansError(f"{str(plans_path)!r}: field image_reader_writer is {reader!r}; "
                           f"nnpipe reads {', '.join(READERS)}")
    dwhere = str(dataset_path)
    channels = _need(dataset, "channel_names", dwhere) if "channel_names" in dataset else \
        _need(dataset, "modality", dwhere)
    channel_names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    intensity_all = plans.get("foreground_intensity_properties_per_channel") or {}
    intensity = tuple(dict(intensity_all.get(str(c), {})) for c in range(len(channel_names)))
    normalization = _normalization(config, len(channel_names), where)
    for c, scheme in enumerate(normalization):
        missing = {"mean", "std", "percentile_00_5", "percentile_99_5"} - set(intensity[c])
        if scheme == "ct" and missing:
            raise V2PlansError(f"{str(plans_path)!r}: foreground_intensity_properties_per_"
                               f"channel[{c}] lacks {sorted(missing)} (CTNormalization)")
    values, regions, order, ignore = _labels(dataset, dwhere)
    forward = tuple(int(a) for a in plans.get("transpose_forward", (0, 1, 2)))
    backward = tuple(int(a) for a in plans.get("transpose_backward", (0, 1, 2)))
    patch = tuple(int(p) for p in _need(config, "patch_size", where))
    spacing = tuple(float(s) for s in _need(config, "spacing", where))
    if len(spacing) != len(patch) or len(patch) not in (2, 3):
        raise V2PlansError(f"{where}: patch_size {patch} and spacing {spacing} must both have "
                           "2 or 3 entries")
    semantics = V2Semantics(
        configuration=name, transpose_forward=forward, transpose_backward=backward,
        spacing=spacing, patch_size=patch, normalization=normalization, intensity=intensity,
        data_resampling=_resampling(config, "data", where),
        probabilities_resampling=_resampling(config, "probabilities", where),
        mirror_axes=mirror_axes, labels=values, regions=regions, regions_class_order=order,
        ignore_label=ignore, file_ending=str(dataset.get("file_ending", ".nii.gz")),
        reader=reader)
    if config.get("previous_stage") or name.endswith("cascade_fullres"):
        raise V2PlansError(f"{where}: a cascade stage (previous_stage "
                           f"{config.get('previous_stage')!r}); nnpipe does not read v2 "
                           "cascades yet")
    return V2Configuration(name, architecture, kwargs, len(channel_names), semantics,
                           str(plans.get("dataset_name", dataset.get("name", ""))),
                           channel_names)
