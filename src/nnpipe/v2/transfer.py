"""Fine-tuning from an nnU-Net v2 model: its plan as nnpipe's :class:`Plan`, its weights in
the key layout of nnpipe's U-Net.

nnpipe trains its own networks (:mod:`nnpipe.model`), so a v2 model is carried over where
its network *is* nnpipe's plain U-Net: v2's ``PlainConvUNet`` with two convolutions per
stage on both paths, instance norm (affine), LeakyReLU(0.01), no dropout, norm before the
non-linearity and v2's "same" padding (what v2's default planner writes). Then

* **plan** (:func:`plan_from_v2`): kernels, strides, ``features_per_stage`` -> filters,
  patch, target spacing, batch size, and the normalisation schemes map one to one;
* **weights** (:func:`nnpipe_weights`): every convolution, transposed convolution, norm
  and segmentation head maps to the tensor of the same role (the table in
  :func:`weight_name`), so nnpipe's network computes v2's function except for the biases
  it has no place for: the convolution biases, which the instance norm right after each
  cancels exactly (a per-channel constant is removed with the mean), and the transposed
  convolutions' biases, which are not cancelled near the patch border (the next
  convolution pads with zeros). With those biases zero the two networks agree to float
  rounding (``tests/v2/test_transfer.py``). The biases are returned under their v2 names,
  so :func:`nnpipe.training.transfer.transfer_weights` logs them as not used. One
  difference of convention: v2's decoder convolves level ``s`` with that level's kernel,
  nnpipe's U-Net (after MONAI's DynUNet) with the deeper level's. Where v2's is smaller (an
  anisotropic plan: ``[1, 3, 3]`` above ``[3, 3, 3]``) it is embedded in the larger kernel
  with zeros around it, which computes the same ("same" padding, stride 1); where it is
  larger, the weights are refused naming ``kernel_sizes``.

v2's ``ResidualEncoderUNet`` is refused: nnpipe's ``resenc_*`` networks are written from
the paper and differ from v2's (stem, pool-only skips, block counts per stage), so the
weights would not carry over one to one; train such a model with nnU-Net, or plan from its
spacing and patch by hand.

Axes: v2 works in ``(z, y, x)`` of SimpleITK's array, then ``transpose_forward``; nnpipe in
the file's voxel order ``(X, Y, Z)`` reoriented to the closest RAS. For files stored in
(near-)canonical voxel order (axial NIfTI, the common case) v2's axis ``a`` is nnpipe's
axis ``2 - transpose_forward[a]``; patch, spacing, kernels, strides and every convolution
kernel are permuted by that map (a 2D configuration slices along nnpipe's axis
``2 - transpose_forward[0]``).
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nnpipe.io import read_json
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.v2.checkpoint import load_v2_checkpoint
from nnpipe.v2.model import _FOLD, _MODEL_DIR, CHECKPOINTS, _is_model_dir, _model_dirs
from nnpipe.v2.network import canonical_state_dict
from nnpipe.v2.plans import PLAIN, V2Configuration, read_configuration, resolve_configuration

# the configuration a v2 dataset folder offers for an nnpipe plan of each dimensionality
V2_CONFIGURATION = {3: "3d_fullres", 2: "2d"}
_LEAKY_SLOPE = 0.01  # nnpipe's U-Net (nnpipe.model.unet.LEAKY_SLOPE); torch's default


@dataclass(frozen=True)
class V2Source:
    """A v2 configuration read for fine-tuning: where it is, its description, the batch
    size of its plans and (with a fold) the checkpoint file."""

    source: str  # what the user named (folder or zip), for messages
    folder: str  # <Trainer>__<Plans>__<configuration>
    configuration: V2Configuration
    batch_size: int
    checkpoint: Path | None
    checkpoint_source: str = ""  # the checkpoint as the user knows it (inside a zip: zip:member)


def _choose_dir(root: Path, dim: int, source: str) -> Path:
    """The trained-model folder ``root`` is or holds (a zip's root holds the dataset
    folder); of several, the configuration of ``dim`` (``3d_fullres``, ``2d``)."""
    if _is_model_dir(root):
        return root
    found = _model_dirs(root)
    if not found:
        inner = [p for p in root.iterdir() if p.is_dir()]
        if len(inner) == 1:
            return _choose_dir(inner[0], dim, source)
        raise ValueError(f"{source!r} holds no nnU-Net v2 trained model")
    if len(found) == 1:
        return found[0]
    want = V2_CONFIGURATION[dim]
    chosen = [p for p in found if (m := _MODEL_DIR.match(p.name))
              and m.group("configuration") == want]
    if len(chosen) != 1:
        raise ValueError(f"{source!r} holds {', '.join(p.name for p in found)}: name the "
                         f"trained-model folder of the {want} configuration itself")
    return chosen[0]


def _pick_fold(folds: Sequence[str], fold: int, where: str) -> str:
    """``fold`` if present, else the first numbered fold (``fold_all`` last resort)."""
    numbered = sorted((f for f in folds if f != "all"), key=int)
    if str(fold) in numbered:
        return str(fold)
    if numbered:
        return numbered[0]
    if "all" in folds:
        return "all"
    raise FileNotFoundError(f"v2 model {where!r} has no fold_N/{CHECKPOINTS['final']}")


@contextmanager
def open_v2(path: Path | str, dim: int, fold: int | None = None) -> Iterator[V2Source]:
    """The v2 model at ``path`` (trained-model folder, dataset folder, or v2 zip) for a
    ``dim``-D nnpipe plan; with ``fold`` also that fold's checkpoint path (else the first
    fold's). Of a zip only plans.json, dataset.json and that one checkpoint are extracted.

    Raises:
        ValueError / FileNotFoundError: naming the path and what is missing.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="nnpipe-v2-") as tmp:
        if path.suffix == ".zip":
            root = Path(tmp)
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                meta = [n for n in names if re.search(r"(^|/)(plans|dataset)\.json$", n)]
                _extract(zf, meta, root, path)
                for n in names:  # the fold folders, empty: the layout says which model it is
                    if re.search(r"(^|/)fold_(\d+|all)/checkpoint_\w+\.pth$", n):
                        _inside(root, n, path).parent.mkdir(parents=True, exist_ok=True)
                model_dir = _choose_dir(root, dim, str(path))
                rel = model_dir.relative_to(root).as_posix()
                ckpts = {m.group(1): n for n in names if (m := re.fullmatch(
                    rf"{re.escape(rel)}/fold_(\d+|all)/{CHECKPOINTS['final']}", n))}
                chosen = _pick_fold(list(ckpts), fold if fold is not None else -1, str(path))
                _extract(zf, [ckpts[chosen]], root, path)
                checkpoint: Path | None = root / ckpts[chosen]
                shown_ckpt = f"{path}:{ckpts[chosen]}"
        else:
            model_dir = _choose_dir(path, dim, str(path))
            folds = [m.group(1) for p in model_dir.iterdir()
                     if (m := _FOLD.fullmatch(p.name)) and (p / CHECKPOINTS["final"]).is_file()]
            chosen = _pick_fold(folds, fold if fold is not None else -1, str(model_dir))
            checkpoint = model_dir / f"fold_{chosen}" / CHECKPOINTS["final"]
            shown_ckpt = str(checkpoint)
        plans_path, dataset_path = model_dir / "plans.json", model_dir / "dataset.json"
        plans, dataset = read_json(plans_path), read_json(dataset_path)
        m = _MODEL_DIR.match(model_dir.name)
        name = m.group("configuration") if m else V2_CONFIGURATION[dim]
        shown = f"{path}:{model_dir.name}" if path.suffix == ".zip" else str(model_dir)
        config = read_configuration(plans, dataset, name, None, f"{shown}/plans.json",
                                    f"{shown}/dataset.json")
        batch = int(resolve_configuration(plans, name, str(plans_path)).get("batch_size", 2))
        yield V2Source(str(path), model_dir.name, config, batch,
                       checkpoint if fold is not None else None,
                       shown_ckpt if fold is not None else "")


def _inside(dest: Path, name: str, archive: Path) -> Path:
    """``dest / name``, refused when it would land outside ``dest``."""
    target = (dest / name).resolve()
    if dest.resolve() not in target.parents:
        raise ValueError(f"zip {str(archive)!r}: member {name!r} points outside the "
                         "archive's folder; not extracted")
    return target


def _extract(zf: zipfile.ZipFile, members: Sequence[str], dest: Path, archive: Path) -> None:
    """Extract ``members``; refuse one that would land outside ``dest``."""
    for name in members:
        _inside(dest, name, archive)
        zf.extract(name, dest)


# ---------------------------------------------------------------- axes


def axis_map(config: V2Configuration) -> tuple[list[int], int | None]:
    """``(perm, slice_axis)``: nnpipe's network axis ``k`` is v2's network axis
    ``perm[k]``; a 2D configuration's slice axis in nnpipe's voxel axes (module
    docstring)."""
    forward = config.semantics.transpose_forward
    voxel = [2 - int(a) for a in forward]  # nnpipe voxel axis of each v2 (transposed) axis
    if config.semantics.dim == 3:
        return [voxel.index(k) for k in range(3)], None
    in_plane = voxel[1:]
    return [in_plane.index(k) for k in sorted(in_plane)], voxel[0]


def _permuted(values: Sequence[Any], perm: Sequence[int]) -> tuple[Any, ...]:
    return tuple(values[p] for p in perm)


# ---------------------------------------------------------------- plan


def _check_plain(config: V2Configuration, where: str, weights: bool = False) -> None:
    """Refuse, naming the field, a v2 network nnpipe's plain U-Net is not; with
    ``weights`` also one whose decoder kernels nnpipe's cannot hold (v2's decoder stage
    that ends at level ``s`` convolves with ``kernel_sizes[s]``, nnpipe's, after MONAI's
    DynUNet, with the deeper level's ``kernel_sizes[s+1]``; a smaller v2 kernel is
    embedded in the larger one, :func:`nnpipe_weights`)."""
    kw = config.arch_kwargs
    dim = config.semantics.dim
    if config.architecture != PLAIN:
        raise ValueError(f"{where}: field architecture.network_class_name is "
                         f"{config.architecture!r}; nnpipe fine-tunes v2's PlainConvUNet only "
                         "(its resenc networks differ from v2's ResidualEncoderUNet: stem, "
                         "skips, blocks per stage, so the weights cannot carry over)")

    def per_stage(key: str, n: int) -> list[Any]:
        v = kw.get(key)
        return list(v) if isinstance(v, list | tuple) else [v] * n

    n = int(kw["n_stages"])
    problems = []
    if any(int(c) != 2 for c in per_stage("n_conv_per_stage", n)):
        problems.append(f"arch_kwargs.n_conv_per_stage is {kw['n_conv_per_stage']} (nnpipe: 2 "
                        "per stage)")
    if any(int(c) != 2 for c in per_stage("n_conv_per_stage_decoder", n - 1)):
        problems.append(f"arch_kwargs.n_conv_per_stage_decoder is "
                        f"{kw['n_conv_per_stage_decoder']} (nnpipe: 2 per stage)")
    norm = str(kw.get("norm_op"))
    if not norm.endswith(f"InstanceNorm{dim}d") or not (kw.get("norm_op_kwargs") or {}).get(
            "affine", False):
        problems.append(f"arch_kwargs.norm_op is {norm!r} {kw.get('norm_op_kwargs')} (nnpipe: "
                        "affine InstanceNorm)")
    nonlin_kw = dict(kw.get("nonlin_kwargs") or {})
    if not str(kw.get("nonlin")).endswith("LeakyReLU") or float(nonlin_kw.get(
            "negative_slope", _LEAKY_SLOPE)) != _LEAKY_SLOPE:
        problems.append(f"arch_kwargs.nonlin is {kw.get('nonlin')!r} {nonlin_kw} (nnpipe: "
                        "LeakyReLU(0.01))")
    if kw.get("dropout_op") is not None:
        problems.append(f"arch_kwargs.dropout_op is {kw['dropout_op']!r} (nnpipe: none)")
    if kw.get("nonlin_first"):
        problems.append("arch_kwargs.nonlin_first is true (nnpipe: norm, then non-linearity)")
    strides = per_stage("strides", n)
    kernels = per_stage("kernel_sizes", n)
    first = strides[0] if isinstance(strides[0], list | tuple) else [strides[0]] * dim
    if any(int(s) != 1 for s in first):
        problems.append(f"arch_kwargs.strides[0] is {strides[0]} (nnpipe: all 1)")
    for s, (k, st) in enumerate(zip(kernels, strides, strict=True)):
        ks = k if isinstance(k, list | tuple) else [k] * dim
        ss = st if isinstance(st, list | tuple) else [st] * dim
        if any((int(a) - int(b) + 1) // 2 != (int(a) - 1) // 2 for a, b in zip(ks, ss,
                                                                              strict=True)):
            problems.append(f"arch_kwargs.kernel_sizes[{s}] {k} with strides[{s}] {st} pads "
                            "differently in nnpipe's U-Net")
    if weights:
        for s in range(n - 1):
            own, deeper = _per_axis_list(kernels[s], dim), _per_axis_list(kernels[s + 1], dim)
            if any(a > b or (b - a) % 2 for a, b in zip(own, deeper, strict=True)):
                problems.append(
                    f"arch_kwargs.kernel_sizes[{s}] {kernels[s]} is larger than kernel_sizes"
                    f"[{s + 1}] {kernels[s + 1]} along an axis: v2's decoder convolves level "
                    f"{s} with kernel_sizes[{s}], nnpipe's U-Net with kernel_sizes[{s + 1}], "
                    "which cannot hold it")
    if problems:
        raise ValueError(f"{where}: nnpipe's U-Net cannot be this network: "
                         + "; ".join(problems))


def _per_axis_list(v: Any, dim: int) -> list[int]:
    return [int(x) for x in v] if isinstance(v, list | tuple) else [int(v)] * dim


def plan_from_v2(own: Plan, source: V2Source, channel_names: Sequence[str] = ()) -> Plan:
    """``own`` (the new dataset's automatic plan) with the v2 configuration's network,
    patch, target spacing, batch size and normalisation schemes; labels, channel count,
    median shape and CT statistics stay the dataset's own (v2 computes CT normalisation
    from the target dataset's fingerprint too).

    Raises:
        ValueError: naming the model and the field: another dimensionality, a network
            nnpipe's U-Net is not (:func:`_check_plain`), another channel count or channel
            names, or a CT channel on one side only.
    """
    config = source.configuration
    where = f"planning.like: nnU-Net v2 model {source.source!r} ({source.folder})"
    if config.semantics.dim != own.dim:
        raise ValueError(f"{where} is a {config.semantics.dim}D configuration "
                         f"({config.name}); the dataset's plan is {own.dim}D: give the "
                         f"{V2_CONFIGURATION[own.dim]} model or leave {own.dim}D out of "
                         "grid.dims")
    _check_plain(config, where)
    if config.input_channels != own.num_channels:
        raise ValueError(f"{where} takes {config.input_channels} channel(s) "
                         f"{list(config.channel_names)}, the dataset {own.dataset!r} has "
                         f"{own.num_channels} {list(channel_names) or ''}; the channels "
                         "cannot match")
    if channel_names and [c.strip().casefold() for c in config.channel_names] != [
            c.strip().casefold() for c in channel_names]:
        raise ValueError(f"{where} was trained on channels {list(config.channel_names)} "
                         f"(dataset.json channel_names), the dataset {own.dataset!r} has "
                         f"{list(channel_names)}; the channels cannot match (same channels "
                         "in the same order are needed)")
    norms = []
    for c, (scheme, mine) in enumerate(zip(config.semantics.normalization, own.channel_norms,
                                           strict=True)):
        if scheme == mine.scheme:
            norms.append(mine)
        elif "ct" not in (scheme, mine.scheme):  # no statistics needed: take the model's
            norms.append(ChannelNorm(scheme, channel=mine.channel))
        else:
            raise ValueError(f"{where}: field normalization_schemes[{c}] gives {scheme!r}, "
                             f"the dataset {own.dataset!r} normalises channel {c} with "
                             f"{mine.scheme!r}; CT normalisation needs the dataset's own "
                             "CT statistics on both sides, the channels cannot match")
    perm, slice_axis = axis_map(config)
    kw = config.arch_kwargs
    n, dim = int(kw["n_stages"]), own.dim

    def per_axis(v: Any) -> tuple[int, ...]:
        return _permuted([int(x) for x in v] if isinstance(v, list | tuple) else [int(v)] * dim,
                         perm)

    kernels = tuple(per_axis(k) for k in kw["kernel_sizes"])
    strides = tuple(per_axis(s) for s in kw["strides"])
    spacing = _permuted([float(s) for s in config.semantics.spacing], perm)
    patch = _permuted([int(p) for p in config.semantics.patch_size], perm)
    if dim == 3:
        full = (spacing[0], spacing[1], spacing[2])
    else:
        assert slice_axis is not None  # a 2D configuration has one
        axes = sorted({0, 1, 2} - {slice_axis})
        values = dict(zip(axes, spacing, strict=True))
        values[slice_axis] = own.full_spacing[slice_axis]  # the dataset's own, as v2 2D
        full = (values[0], values[1], values[2])
    filters = tuple(int(f) for f in kw["features_per_stage"])
    if len(filters) != n or len(kernels) != n or len(strides) != n:
        raise ValueError(f"{where}: arch_kwargs lists do not have n_stages ({n}) entries")
    note = (f"planned like nnU-Net v2 model {source.source} ({source.folder}): network, "
            "patch, spacing, batch and normalisation schemes taken from it (planning.like)")
    return replace(own, spacing=spacing, full_spacing=full, patch_size=patch,
                   kernels=kernels, strides=strides, filters=filters,
                   batch_size=source.batch_size, slice_axis=slice_axis, network="plain",
                   encoder_blocks=(), channel_norms=tuple(norms), notes=(note, *own.notes))


# ---------------------------------------------------------------- weights


def _level(s: int, n: int) -> str:
    """nnpipe's module of encoder level ``s`` of ``n``."""
    return "input_block" if s == 0 else "bottleneck" if s == n - 1 else f"downsamples.{s - 1}"


_ENCODER = re.compile(r"encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias)")
_DECODER = re.compile(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)")
_TRANSP = re.compile(r"decoder\.transpconvs\.(\d+)\.(weight|bias)")
_SEG = re.compile(r"decoder\.seg_layers\.(\d+)\.(weight|bias)")


def weight_name(key: str, n: int) -> str | None:
    """nnpipe U-Net's name for v2 ``PlainConvUNet`` tensor ``key`` (``n`` stages), or None
    for a tensor it has no place for (a convolution's or transposed convolution's bias)::

        encoder.stages.s.0.convs.i.conv.weight   <level s>.conv{i+1}.conv.weight
        encoder.stages.s.0.convs.i.norm.P        <level s>.norm{i+1}.P
        decoder.transpconvs.j.weight             upsamples.j.transp_conv.conv.weight
        decoder.stages.j.convs.i.conv.weight     upsamples.j.conv_block.conv{i+1}.conv.weight
        decoder.stages.j.convs.i.norm.P          upsamples.j.conv_block.norm{i+1}.P
        decoder.seg_layers.{n-2}.P               output_block.conv.conv.P
        decoder.seg_layers.{n-2-L}.P             deep_supervision_heads.{L-1}.conv.conv.P

    (``<level s>``: ``input_block``, ``downsamples.{s-1}``, ``bottleneck``; decoder stage
    ``j`` of both takes level ``n-1-j`` up to ``n-2-j``.)
    """
    if m := _ENCODER.fullmatch(key):
        s, i, kind, p = int(m[1]), int(m[2]), m[3], m[4]
        if kind == "conv":
            return f"{_level(s, n)}.conv{i + 1}.conv.weight" if p == "weight" else None
        return f"{_level(s, n)}.norm{i + 1}.{p}"
    if m := _DECODER.fullmatch(key):
        j, i, kind, p = int(m[1]), int(m[2]), m[3], m[4]
        if kind == "conv":
            return f"upsamples.{j}.conv_block.conv{i + 1}.conv.weight" if p == "weight" else None
        return f"upsamples.{j}.conv_block.norm{i + 1}.{p}"
    if m := _TRANSP.fullmatch(key):
        return f"upsamples.{m[1]}.transp_conv.conv.weight" if m[2] == "weight" else None
    if m := _SEG.fullmatch(key):
        level = n - 2 - int(m[1])
        return (f"output_block.conv.conv.{m[2]}" if level == 0
                else f"deep_supervision_heads.{level - 1}.conv.conv.{m[2]}")
    return None


def nnpipe_weights(weights: Mapping[str, torch.Tensor], config: V2Configuration,
                   source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """v2 ``network_weights`` of a ``PlainConvUNet`` renamed to nnpipe's U-Net, kernels
    permuted to nnpipe's axes (:func:`axis_map`), and the v2 names of the tensors without a
    place (kept in the dict under those names, so the transfer lists them as not used).

    Raises:
        ValueError: the network is not one nnpipe's U-Net can be (naming the field), or an
            alias in the file disagrees with its entry.
    """
    _check_plain(config, f"training.init_weights: nnU-Net v2 model {source!r}", weights=True)
    perm, _ = axis_map(config)
    dim = config.semantics.dim
    n = int(config.arch_kwargs["n_stages"])
    kernels = [_per_axis_list(k, dim) for k in config.arch_kwargs["kernel_sizes"]]
    out: dict[str, torch.Tensor] = {}
    unplaced = []
    for key, tensor in canonical_state_dict(weights, source).items():
        name = weight_name(key, n)
        if name is None:
            out[key] = tensor
            unplaced.append(key)
            continue
        if (m := _DECODER.fullmatch(key)) and m[3] == "conv":
            # nnpipe's decoder stage j convolves with the deeper level's kernel
            tensor = _embed(tensor, kernels[n - 1 - int(m[1])])
        if tensor.ndim == dim + 2:  # a kernel: (out, in, *spatial) or (in, out, *spatial)
            tensor = tensor.permute(0, 1, *[2 + p for p in perm]).contiguous()
        out[name] = tensor
    return out, unplaced


def _embed(kernel: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``kernel`` ``(out, in, *k)`` zero-padded symmetrically to spatial ``size``: with
    stride 1 and "same" padding (``(k - 1) // 2``) the larger convolution computes the
    same output (its extra taps are zero; :func:`_check_plain` allows odd growth only)."""
    pads: list[int] = []
    for have, want in reversed(list(zip(kernel.shape[2:], size, strict=True))):
        pads += [(want - have) // 2] * 2
    return torch.nn.functional.pad(kernel, pads) if any(pads) else kernel


def load_v2_fold(path: Path | str, plan: Plan, fold: int) -> tuple[dict[str, torch.Tensor], str,
                                                                    list[str]]:
    """``training.init_weights: <v2 model>``: fold ``fold`` (else the first) of its
    configuration for ``plan``'s dimensionality, only that checkpoint read, as nnpipe
    U-Net weights (:func:`nnpipe_weights`); with its source and the tensors left out."""
    with open_v2(path, plan.dim, fold) as src:
        if src.configuration.semantics.dim != plan.dim:
            raise ValueError(f"training.init_weights: nnU-Net v2 model {str(path)!r} is a "
                             f"{src.configuration.semantics.dim}D configuration "
                             f"({src.configuration.name}); the plan is {plan.dim}D")
        assert src.checkpoint is not None  # asked for with a fold
        ckpt = load_v2_checkpoint(src.checkpoint)
        where = src.checkpoint_source
        weights, unplaced = nnpipe_weights(ckpt.weights, src.configuration, where)
    return weights, where, unplaced
