"""What ``--model`` names when it is an nnU-Net v2 model, read into one :class:`V2Model`.

Accepted, as v2 lays them out (``nnUNet_results``):

* a trained-model folder ``<Trainer>__<Plans>__<configuration>/`` holding ``plans.json``,
  ``dataset.json`` and ``fold_<N>/checkpoint_final.pth`` (``fold_all`` too);
* its dataset folder ``Dataset<ID>_<Name>/`` holding one or more such folders: with one, it
  is used; with several, ``configuration`` picks it (``3d_fullres``, or the whole folder
  name);
* a zip written by ``nnUNetv2_export_model_to_zip`` (the same folders inside; extracted to a
  temporary folder, every member checked to stay inside it).

``folds`` (default: every fold folder holding the checkpoint) and ``checkpoint``
(``final``: ``checkpoint_final.pth``, ``best``: ``checkpoint_best.pth``) choose the weights.
Every checkpoint is read with :func:`nnpipe.v2.checkpoint.load_v2_checkpoint` (no code is
unpickled) and the network is built and loaded strictly, so a mismatch fails before the
first case.

Loading costs what reading the weights costs (issue 19 item 4): each checkpoint is mapped
from its file, so the optimizer's state in it is never read; the network is built on the
meta device (no memory, no random initialisation of weights about to be replaced) and takes
the checkpoint's tensors as its parameters instead of copying them.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nnpipe.inference.ensemble import cpu_fast_path
from nnpipe.io import read_json
from nnpipe.v2.checkpoint import load_v2_checkpoint
from nnpipe.v2.network import V2UNet, build_network, load_weights
from nnpipe.v2.plans import V2Configuration, read_configuration

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
_FOLD = re.compile(r"fold_(\d+|all)$")
_ZIP_PLANS = re.compile(r"(^|/)plans\.json$")
_ZIP_CHECKPOINT = re.compile(r"(^|/)fold_(\d+|all)/checkpoint_\w+\.pth$")
_MODEL_DIR = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+)__(?P<configuration>[^_].*)$")


@dataclass(frozen=True)
class V2Fold:
    fold: str  # "0".."N" or "all"
    network: V2UNet  # weights loaded, on the CPU, eval mode
    source: str


@dataclass(frozen=True)
class V2Model:
    """A v2 model ready to predict: its configuration (network + semantics) and folds."""

    source: str
    folder: str  # the trained-model folder's name, <Trainer>__<Plans>__<configuration>
    configuration: V2Configuration
    folds: tuple[V2Fold, ...]
    trainer: str


def is_v2_model(path: Path | str) -> bool:
    """Whether ``path`` is a v2 model folder, dataset folder of them, or a v2 zip."""
    path = Path(path)
    if path.suffix == ".zip" and path.is_file():
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        # nnpipe's own archives hold plan.json and fold weights of another name
        return any(_ZIP_PLANS.search(n) for n in names) and any(
            _ZIP_CHECKPOINT.search(n) for n in names)
    if not path.is_dir():
        return False
    return _is_model_dir(path) or bool(_model_dirs(path))


def _is_model_dir(path: Path) -> bool:
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file() and any(
        p.is_dir() and _FOLD.fullmatch(p.name) for p in path.iterdir())


def _model_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _is_model_dir(p))


def find_model_dir(path: Path, configuration: str | None) -> Path:
    """The trained-model folder ``path`` is or holds (see the module docstring).

    Raises:
        ValueError: none found, or several and ``configuration`` does not pick one.
    """
    if _is_model_dir(path):
        return path
    found = _model_dirs(path)
    if not found:
        inner = [p for p in path.iterdir() if p.is_dir()]
        if len(inner) == 1:  # a zip holds Dataset<ID>_<Name>/ at its root
            return find_model_dir(inner[0], configuration)
        raise ValueError(f"{str(path)!r} holds no nnU-Net v2 trained model "
                         "(<Trainer>__<Plans>__<configuration>/ with plans.json, dataset.json "
                         "and fold_N/)")
    if configuration is not None:
        chosen = [p for p in found if p.name == configuration or (
            (m := _MODEL_DIR.match(p.name)) and m.group("configuration") == configuration)]
        if len(chosen) == 1:
            return chosen[0]
        if not chosen:
            raise ValueError(f"{str(path)!r} has no configuration {configuration!r}; it has "
                             f"{', '.join(p.name for p in found)}")
        raise ValueError(f"{str(path)!r} has several models of configuration "
                         f"{configuration!r} ({', '.join(p.name for p in chosen)}); give "
                         "the folder name to --configuration")
    if len(found) == 1:
        return found[0]
    raise ValueError(f"{str(path)!r} holds several v2 models ({', '.join(p.name for p in found)})"
                     "; choose one with --configuration")


def fold_dirs(model_dir: Path, folds: Sequence[str] | None, checkpoint: str) -> list[Path]:
    """``fold_<N>/`` folders holding the checkpoint: ``folds`` (raises naming a missing one)
    or every one present (``fold_all`` only when asked for, as v2 does)."""
    name = CHECKPOINTS[checkpoint]
    if folds:
        out = []
        for f in folds:
            d = model_dir / f"fold_{f}"
            if not (d / name).is_file():
                raise FileNotFoundError(f"v2 model {str(model_dir)!r} has no fold {f} "
                                        f"({str(d / name)!r} missing)")
            out.append(d)
        return out
    present = [(int(m.group(1)), p) for p in model_dir.iterdir()
               if (m := _FOLD.fullmatch(p.name)) and m.group(1) != "all"
               and (p / name).is_file()]
    if not present:
        raise FileNotFoundError(f"v2 model {str(model_dir)!r} has no fold_N/{name}")
    return [p for _, p in sorted(present)]


def load_v2_model(path: Path | str, configuration: str | None = None,
                  folds: Sequence[str | int] | None = None,
                  checkpoint: str = "final") -> V2Model:
    """Read ``path`` (folder, dataset folder or zip) into a :class:`V2Model` on the CPU.

    Raises:
        ValueError / FileNotFoundError: naming the file and what is wrong with it.
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got "
                         f"{checkpoint!r}")
    path = Path(path)
    fold_names = [str(f) for f in folds] if folds else None
    if path.suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="nnpipe-v2-") as tmp:
            _safe_extract(path, Path(tmp))
            # a mapped file outlives its deletion on POSIX systems only
            model = _load_dir(find_model_dir(Path(tmp), configuration), fold_names, checkpoint,
                              display=str(path), mmap=os.name == "posix")
        return model
    return _load_dir(find_model_dir(path, configuration), fold_names, checkpoint,
                     display=str(path))


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``; refuse a member that would land outside it."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (dest / member.filename).resolve()
            if root not in target.parents and target != root:
                raise ValueError(f"zip {str(archive)!r}: member {member.filename!r} points "
                                 "outside the archive's folder; not extracted")
        zf.extractall(dest)


def _load_dir(model_dir: Path, folds: Sequence[str] | None, checkpoint: str,
              display: str, mmap: bool = True) -> V2Model:
    plans_path, dataset_path = model_dir / "plans.json", model_dir / "dataset.json"
    plans, dataset = read_json(plans_path), read_json(dataset_path)
    loaded = [load_v2_checkpoint(d / CHECKPOINTS[checkpoint], mmap=mmap)
              for d in fold_dirs(model_dir, folds, checkpoint)]
    first = loaded[0]
    m = _MODEL_DIR.match(model_dir.name)
    name = first.configuration or (m.group("configuration") if m else None)
    if name is None:
        raise ValueError(f"v2 model {str(model_dir)!r}: neither its checkpoint (init_args."
                         "configuration) nor its folder name says the configuration")
    for ck in loaded[1:]:
        if ck.configuration not in (None, name):
            raise ValueError(f"checkpoint {ck.source!r} is of configuration "
                             f"{ck.configuration!r}, {first.source!r} of {name!r}")
    config = read_configuration(plans, dataset, name, first.mirror_axes, plans_path,
                                dataset_path)
    where = f"{str(plans_path)!r} configuration {name!r}"
    nets = []
    for ck in loaded:
        with torch.device("meta"):  # parameters without memory; the checkpoint's replace them
            net = build_network(config.architecture, config.arch_kwargs,
                                config.input_channels, config.semantics.num_outputs, where)
        load_weights(net, ck.weights, ck.source, assign=True)
        _check_materialised(net, ck.source)
        net.eval()
        fold = Path(ck.source).parent.name.removeprefix("fold_")
        nets.append(V2Fold(fold, net, ck.source if not display.endswith(".zip")
                           else f"{display}:{Path(ck.source).relative_to(model_dir.parent)}"))
    return V2Model(display, model_dir.name, config, tuple(nets), first.trainer_name)


def _check_materialised(net: torch.nn.Module, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` if a parameter or buffer of ``net`` is still on
    the meta device (one the strict load did not give a value: a non-persistent buffer)."""
    empty = [name for name, t in (*net.named_parameters(), *net.named_buffers())
             if t.is_meta]
    if empty:
        raise ValueError(f"checkpoint {source!r}: the network built from its plans has "
                         f"tensors the checkpoint does not fill: {', '.join(empty[:8])}")


def to_device(model: V2Model, device: torch.device) -> list[torch.nn.Module]:
    """The fold networks on ``device`` (on a CPU through nnpipe's CPU fast path: GroupNorm
    for InstanceNorm, oneDNN 3D convolutions, channels-last; the same function)."""
    out = []
    for f in model.folds:
        net: torch.nn.Module = f.network.to(device)
        if device.type == "cpu":
            net, _ = cpu_fast_path(net, model.configuration.semantics.dim)
        out.append(net)
    return out
