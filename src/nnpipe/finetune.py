"""Fine-tuning: plan a new dataset like a trained model, and start from its weights.

nnU-Net v2 users adapt a model to a new dataset in two steps: they move the pretraining
dataset's plan onto the new one (``nnUNetv2_move_plans_between_datasets``), then train with
``-pretrained_weights``. A study does both with two config keys:

* ``planning.like: MODEL`` (:func:`plan_like`): the new dataset's plan takes MODEL's
  network (topology, kernels, strides, filters, residual blocks), patch size, target
  spacing, 2D slice axis, batch size and normalisation schemes; its labels, channel count,
  median shape and the intensity statistics of its CT channels stay the new dataset's own
  (as v2 computes the normalisation from the target dataset's fingerprint). Refused when
  the channels cannot match: another number of channels, other channel names, or another
  normalisation scheme for a channel.
* ``training.init_weights: MODEL`` (:func:`pretrained_weights`): training starts from
  MODEL's weights (:func:`nnpipe.training.transfer.transfer_weights`), re-initialising only
  the output heads (other classes) and the first convolution (other channels).

MODEL is anything ``nnpipe predict --model`` takes: a checkpoint ``final.pt``, a run folder
``train/RUN`` (the same fold is taken if it has it, else its first fold), ``best.json`` or
a ``model.zip``; of several members the one with the plan's dimensionality is used.

MODEL may also be an nnU-Net v2 model (trained-model folder, dataset folder, v2 zip) whose
network is nnpipe's plain U-Net (v2's default ``PlainConvUNet``): its plan maps to nnpipe's
and its weights to nnpipe's key layout (:mod:`nnpipe.v2.transfer`, which says what maps,
what is refused naming the plans' field, and the axis convention).

This module sits above ``planning``, ``training`` and ``inference`` (it resolves models
with :func:`nnpipe.inference.model_spec.resolve_model`); only the CLI imports it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from nnpipe.inference.model_spec import (
    Member,
    ModelSpec,
    fold_dirs,
    from_checkpoints,
    has_checkpoint,
)
from nnpipe.inference.resolve import resolve_model
from nnpipe.io import read_json
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.study import fold_number
from nnpipe.v2.model import is_v2_model

# Configurations a pretrained model's plan may be carried to (the cascade plans its two
# stages from the fingerprint, which a moved plan would contradict).
LIKE_CONFIGURATIONS = ("2d", "3d")


def _choose(plans: list[tuple[str, Plan]], plan: Plan, source: str, key: str) -> int:
    """Index of the member (``(name, plan)``) with ``plan``'s dimensionality, its
    configuration preferred.

    Raises:
        ValueError: naming the model, when none has this dimensionality.
    """
    same_dim = [i for i, (_, p) in enumerate(plans) if p.dim == plan.dim]
    if not same_dim:
        have = ", ".join(f"{n} ({p.dim}D)" for n, p in plans)
        raise ValueError(f"{key}: model {source!r} has no {plan.dim}D network (it has "
                         f"{have}); give a {plan.dim}D model or leave {plan.dim}D out of "
                         "grid.dims")
    want = plan.configuration or f"{plan.dim}d"
    exact = [i for i in same_dim if (plans[i][1].configuration or f"{plans[i][1].dim}d") == want]
    return (exact or same_dim)[0]


def _member(spec: ModelSpec, plan: Plan, key: str) -> Member:
    """The member of ``spec`` with ``plan``'s dimensionality (its configuration preferred)."""
    return spec.members[_choose([(m.name, m.plan) for m in spec.members], plan, spec.source,
                                key)]


def _same_name(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def plan_like(own: Plan, model: str | Path, channel_names: tuple[str, ...] = ()) -> Plan:
    """``own`` (the new dataset's automatic plan) with ``model``'s network, patch, spacing,
    batch and normalisation schemes (see the module docstring for what stays).

    Args:
        own: the plan the planner made for the new dataset (same configuration).
        model: the pretrained model (anything ``nnpipe predict --model`` takes).
        channel_names: the new dataset's channel names (dataset.json), compared with the
            model's where both are known (case-insensitive).

    Raises:
        ValueError: naming the model and the mismatch (configuration, channel count, channel
            names, normalisation scheme, or no network of this dimensionality).
    """
    key = "planning.like"
    configuration = own.configuration or f"{own.dim}d"
    if configuration not in LIKE_CONFIGURATIONS:
        raise ValueError(f"{key} plans the {' and '.join(LIKE_CONFIGURATIONS)} configurations, "
                         f"not {configuration!r}: set planning.cascade: off")
    if is_v2_model(Path(model)):
        from nnpipe.v2.transfer import open_v2, plan_from_v2

        with open_v2(model, own.dim) as source:
            return plan_from_v2(own, source, channel_names)
    spec = resolve_model([model])
    member = _member(spec, own, key)
    src = member.plan
    if src.num_channels != own.num_channels:
        raise ValueError(f"{key}: model {spec.source!r} takes {src.num_channels} channel(s) "
                         f"{list(spec.channel_names) or ''}, the dataset {own.dataset!r} has "
                         f"{own.num_channels} {list(channel_names) or ''}; the channels cannot "
                         "match")
    if spec.channel_names and channel_names and (
            len(spec.channel_names) != len(channel_names)
            or not all(_same_name(a, b) for a, b in
                                   zip(spec.channel_names, channel_names, strict=False))):
        raise ValueError(f"{key}: model {spec.source!r} was trained on channels "
                         f"{list(spec.channel_names)}, the dataset {own.dataset!r} has "
                         f"{list(channel_names)}; the channels cannot match (same channels "
                         "in the same order are needed)")
    norms = []
    for c, (a, b) in enumerate(zip(src.channel_norms, own.channel_norms, strict=True)):
        if a.scheme == b.scheme:
            norms.append(b)
        elif "ct" not in (a.scheme, b.scheme):
            # no statistics of the dataset needed (z-score with or without the mask, none,
            # rescale): the model's scheme, so the inputs look like those it was trained on
            norms.append(replace(b, scheme=a.scheme))
        else:
            name = f" ({channel_names[c]})" if c < len(channel_names) else ""
            raise ValueError(f"{key}: channel {c}{name} is normalised with {a.scheme!r} by model "
                             f"{spec.source!r} but with {b.scheme!r} for the dataset "
                             f"{own.dataset!r}; CT normalisation needs the dataset's own CT "
                             "statistics on both sides, the channels cannot match")
    note = (f"planned like {spec.source} ({member.name}): network, patch, spacing, batch and "
            "normalisation schemes taken from it (planning.like)")
    return replace(own, spacing=src.spacing, full_spacing=src.full_spacing,
                   patch_size=src.patch_size, kernels=src.kernels, strides=src.strides,
                   filters=src.filters, batch_size=src.batch_size, slice_axis=src.slice_axis,
                   network=src.network, encoder_blocks=src.encoder_blocks,
                   channel_norms=tuple(norms), notes=(note, *own.notes))


def pretrained_weights(model: str | Path, plan: Plan, fold: int
                       ) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to start training ``plan``'s fold ``fold`` from, and its source.

    The member of ``model`` with the plan's dimensionality; of its folds the one numbered
    ``fold`` if it has it, else the first. Only that fold's weights are read (a 5-fold run
    folder or best.json loads one checkpoint, not five; a ``model.zip`` is hash-checked
    whole, as every read of it is, and unpickles one fold).

    Raises:
        ValueError: naming the model, when it has no network of this dimensionality.
    """
    key = "training.init_weights"
    path = Path(model)
    if is_v2_model(path):
        from nnpipe.v2.transfer import load_v2_fold

        weights, where, unplaced = load_v2_fold(path, plan, fold)
        log(f"fine-tuning from nnU-Net v2 weights {where}: mapped to nnpipe's U-Net "
            f"(nnpipe.v2.transfer); {len(unplaced)} bias tensor(s) have no place in it (the "
            "convolutions' biases are cancelled by the instance norm after each; the "
            "transposed convolutions' biases are dropped)")
        return weights, where
    if path.suffix == ".zip":
        return _archive_fold(path, plan, fold, key)
    if path.suffix == ".json":
        return _best_fold(path, plan, fold, key)
    if path.is_dir() and not has_checkpoint(path) and fold_dirs(path):
        dirs = fold_dirs(path)  # a run folder: train/RUN/fold<N>/
        chosen = next((d for d in dirs if fold_number(d.name) == fold), dirs[0])
        spec = from_checkpoints([chosen], name=path.name)
    else:
        spec = resolve_model([path])  # one checkpoint or fold folder
    member = _member(spec, plan, key)
    return dict(member.folds[0].weights), member.folds[0].source


def _best_fold(path: Path, plan: Plan, fold: int, key: str
               ) -> tuple[dict[str, torch.Tensor], str]:
    """A best.json's member of ``plan``'s dimensionality, one fold checkpoint read."""
    spec_record = read_json(path)
    try:
        members = [(str(m["run"]), m) for m in spec_record["best"]["members"]]
    except (KeyError, TypeError):
        return _fallback(path, plan, fold, key)
    root = path.parent
    plans = [(name, Plan.load(root / m["plan"])) for name, m in members]
    name, record = members[_choose(plans, plan, str(path), key)]
    models = [Path(f) for f in record["models"]]
    chosen = next((f for f in models if fold_number(f.parent.name) == fold), models[0])
    spec = from_checkpoints([root / chosen], name=name, plan=root / record["plan"])
    return dict(spec.members[0].folds[0].weights), spec.members[0].folds[0].source


def _fallback(path: Path, plan: Plan, fold: int, key: str
              ) -> tuple[dict[str, torch.Tensor], str]:
    """Every fold read (the reader then names what is wrong with the file)."""
    member = _member(resolve_model([path]), plan, key)
    chosen = next((f for f in member.folds if f.fold == fold), member.folds[0])
    return dict(chosen.weights), chosen.source


def _archive_fold(path: Path, plan: Plan, fold: int, key: str
                  ) -> tuple[dict[str, torch.Tensor], str]:
    """A model.zip's member of ``plan``'s dimensionality: the archive verified as
    :func:`~nnpipe.inference.archive.load_archive` verifies it, one fold unpickled."""
    from nnpipe.inference.archive import MANIFEST, ArchiveError, _load_tensors, _read_verified

    data = _read_verified(path)
    try:
        records = json.loads(data[MANIFEST])["members"]
        plans = [(str(r["name"]), Plan.from_dict(json.loads(data[r["plan"]])))
                 for r in records]
        record = records[_choose(plans, plan, str(path), key)]
        chosen = next((f for f in record["folds"] if f["fold"] == fold), record["folds"][0])
        where = f"{path}:{chosen['weights']}"
        return _load_tensors(data[chosen["weights"]], where), where
    except (KeyError, TypeError, IndexError) as exc:
        raise ArchiveError(path, f"manifest or member is malformed ({type(exc).__name__}: "
                           f"{exc})") from None
