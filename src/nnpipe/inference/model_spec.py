"""What ``--model`` names, in one in-memory description: :class:`ModelSpec`.

``nnpipe predict --model`` and ``nnpipe export --model`` accept four things, and
:func:`nnpipe.inference.resolve.resolve_model` reads each into the same description (members,
each a plan with its fold weights; the postprocessing decision; the label table and channel
names):

========================================  ============================================
``--model``                               members
========================================  ============================================
``train/RUN/foldF`` or its ``final.pt``   one member, one fold (several paths: one
                                          member with those folds, averaged)
``train/RUN`` (holding ``fold*/``)        one member, every fold; the run's
                                          ``postprocess/RUN.json`` if the study has it
``best.json`` (``nnpipe best``)           the chosen run(s), each with its plan and folds,
                                          and the chosen postprocessing
``model.zip`` (``nnpipe export``)         what the archive holds, verified
                                          (:mod:`nnpipe.inference.archive`)
========================================  ============================================

Members with different plans (a 2D and a 3D run) are not averaged on the network's grid: each
predicts in its own plan and their probabilities are averaged in the original grid
(:func:`nnpipe.inference.predict.predict_cases`).

A cascade member (plan ``3d_cascade``) carries its low-resolution stage as ``previous`` (a
member of its own), which prediction runs first on each image: from checkpoints or a run
folder it is the same folds of the sibling run ``train/3d_lowres-<precision>-<gpus>gpu``;
best.json and model.zip record it beside the member. Every weight file is read with
``weights_only=True`` (training checkpoints through
:func:`nnpipe.training.checkpoint.load_checkpoint`), so no code is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nnpipe.inference.ensemble import LoadedModel, build_model, checkpoint_path
from nnpipe.inference.postprocess import decision_classes
from nnpipe.io import read_json
from nnpipe.metrics import ScoredClass
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.study import CHECKPOINT_NAMES, StudyPaths, fold_number, previous_run, study_file
from nnpipe.training.checkpoint import load_checkpoint

BEST_FORMAT = "nnpipe-best"
BEST_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FoldWeights:
    """One fold model: ``weights`` (the network's state dict, tensors on the CPU) and where
    they came from (``source``, for messages)."""

    fold: int | None
    weights: dict[str, torch.Tensor]
    source: str


@dataclass(frozen=True)
class Member:
    """One run: its plan, region mode and fold models (averaged on the plan's grid)."""

    name: str
    plan: Plan
    regions: bool
    folds: tuple[FoldWeights, ...]
    # a cascade stage's previous stage (its low-resolution run); None for other plans, or
    # when it was not found (prediction then needs the previous segmentations as files)
    previous: Member | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything prediction needs, whatever ``--model`` named (``source``)."""

    source: str
    members: tuple[Member, ...]
    postprocess: Mapping[str, Any] | None = None  # a decision record (postprocess.decide)
    channel_names: tuple[str, ...] = ()
    dataset_name: str = ""
    file_ending: str = ".nii.gz"
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. best.json's candidates
    inference: Mapping[str, Any] | None = None  # the study's inference section (best.json)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError(f"model {self.source!r} has no members")
        first = self.members[0]
        for m in self.members[1:]:
            for what, a, b in (("labels", first.plan.labels, m.plan.labels),
                               ("label values", first.plan.label_values, m.plan.label_values),
                               ("channels", first.plan.num_channels, m.plan.num_channels),
                               ("region mode", first.regions, m.regions)):
                if a != b:
                    raise ValueError(f"model {self.source!r}: members {first.name!r} and "
                                     f"{m.name!r} differ in {what} ({a} vs {b}); they "
                                     "cannot be averaged")

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.members[0].plan.labels)

    def postprocess_classes(self) -> list[ScoredClass]:
        """The classes whose largest component is kept (none without a decision)."""
        if self.postprocess is None:
            return []
        return decision_classes(self.postprocess, self.source)

    def load(self, device: torch.device) -> list[list[LoadedModel]]:
        """The networks on ``device``: one list of fold models per member."""
        return [[build_model(m.plan, f.weights, m.regions, device, f.source) for f in m.folds]
                for m in self.members]

    def load_previous(self, device: torch.device) -> list[list[LoadedModel] | None]:
        """Per member, its previous stage's fold models on ``device`` (None: not a cascade).

        Raises:
            ValueError: for a cascade member whose previous stage was not found.
        """
        out: list[list[LoadedModel] | None] = []
        for m in self.members:
            if not m.plan.previous_stage:
                out.append(None)
            elif m.previous is None:
                raise ValueError(f"model {self.source!r} ({m.name}) is a cascade stage, but its "
                                 f"{m.plan.previous_stage} stage was not found (expected the "
                                 f"same folds of train/{previous_run_name(m.name, m.plan)}); "
                                 "train it, or give its predictions (--previous)")
            else:
                p = m.previous
                out.append([build_model(p.plan, f.weights, p.regions, device, f.source)
                            for f in p.folds])
        return out


# ---------------------------------------------------------------- readers


def from_checkpoints(paths: Sequence[Path | str], name: str | None = None,
                     plan: Path | str | None = None) -> ModelSpec:
    """One member from fold checkpoints (or fold folders) of one plan (``plan``, a plan
    JSON, when given: the plan they must have been trained with)."""
    folds = []
    plans: list[tuple[Plan, bool, Path]] = []
    for p in paths:
        path = checkpoint_path(p)
        ckpt = load_checkpoint(path)
        if "plan" not in ckpt or "model" not in ckpt:
            raise ValueError(f"checkpoint {str(path)!r} is not an nnpipe training checkpoint "
                             "(no plan or model weights)")
        plans.append((Plan.from_dict(ckpt["plan"]), bool(ckpt.get("settings", {}).get(
            "regions", False)), path))
        folds.append(FoldWeights(fold_number(path.parent.name), ckpt["model"], str(path)))
    reference, regions, first = plans[0]
    where = f"model {str(first)!r}"
    if plan is not None:
        reference, where = Plan.load(plan), f"plan {str(plan)!r}"
    del first
    for trained, r, path in plans:
        if trained != reference:
            diff = [k for k in reference.to_dict()
                    if reference.to_dict()[k] != trained.to_dict().get(k)]
            raise ValueError(f"model {str(path)!r} was trained with a different plan than "
                             f"{where} (differs in: {', '.join(diff)}); predict with "
                             "models of one plan")
        if r != regions:
            raise ValueError(f"model {str(path)!r} and {str(plans[0][2])!r} differ in region "
                             "mode; they cannot be averaged")
    run = name or _run_name(Path(plans[0][2]))
    source = str(paths[0]) if len(paths) == 1 else f"{len(paths)} models of {run}"
    dataset_json = find_dataset_json(plans[0][2])
    previous = _sibling_previous([p for *_, p in plans], run, reference) \
        if reference.previous_stage else None
    return ModelSpec(source, (Member(run, reference, regions, tuple(folds), previous),),
                     **_dataset_facts(dataset_json))


def previous_run_name(run: str, plan: Plan) -> str:
    """``3d_lowres-fp32-1gpu`` for the cascade run ``3d_cascade-fp32-1gpu``: a cascade stage
    and its previous stage share precision and GPUs (:func:`nnpipe.study.previous_run`); a
    run named otherwise gets its plan's previous stage in front of or instead of its
    configuration."""
    try:
        previous = previous_run(run)
    except ValueError:  # not named by the study grammar (a renamed folder)
        previous = None
    if previous is not None:
        return previous
    if plan.configuration and run.startswith(plan.configuration):
        return plan.previous_stage + run[len(plan.configuration):]
    return f"{plan.previous_stage}-{run}"


def _sibling_previous(checkpoints: Sequence[Path], run: str, plan: Plan) -> Member | None:
    """The previous stage of cascade fold checkpoints ``train/RUN/foldF/final.pt`` of a study:
    the same folds of ``train/<previous run>/``, or None when any is missing (or the
    checkpoints are not in a study's results tree)."""
    found = []
    for path in checkpoints:
        fold = study_file(path.parent)
        if fold is None or fold.kind != "fold_folder":
            return None
        sibling = Path(StudyPaths(fold.results_dir, fold.dataset).run_file(
            "fold_folder", previous_run_name(run, plan), fold=fold.fields["fold"]))
        if not has_checkpoint(sibling):
            return None
        found.append(sibling)
    spec = from_checkpoints(found, name=previous_run_name(run, plan))
    member = spec.members[0]
    if member.plan.configuration != plan.previous_stage:
        raise ValueError(f"model {str(found[0])!r} is not a {plan.previous_stage} stage "
                         f"(its plan says {member.plan.configuration!r})")
    return member


def from_run_folder(run_dir: Path | str) -> ModelSpec:
    """Every fold of ``train/RUN``, with the study's ``postprocess/RUN.json`` if it exists."""
    run_dir = Path(run_dir)
    folds = fold_dirs(run_dir)
    spec = from_checkpoints(folds, name=run_dir.name)
    run = study_file(run_dir)
    decision = Path(StudyPaths(run.results_dir, run.dataset).run_file("decision", run.run)) \
        if run is not None and run.kind == "run_folder" else None
    record = None
    if decision is not None and decision.is_file():
        log(f"model {str(run_dir)!r}: applying the run's postprocessing {str(decision)!r}")
        record = read_json(decision)
    return ModelSpec(str(run_dir), spec.members, record, spec.channel_names,
                     spec.dataset_name, spec.file_ending)


def from_best_json(path: Path | str) -> ModelSpec:
    """The configuration ``nnpipe best`` chose; its paths are relative to the file's folder."""
    path = Path(path)
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != BEST_FORMAT:
        raise ValueError(f"{str(path)!r} is not a best-configuration file (written by "
                         "`nnpipe best`; no \"format\": \"nnpipe-best\")")
    version = record.get("format_version")
    if version != BEST_FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has format_version {version!r}; this nnpipe reads "
                         f"{BEST_FORMAT_VERSION}: rerun `nnpipe best` with this nnpipe")
    root = path.parent
    members = []
    try:
        for m in record["best"]["members"]:
            spec = from_checkpoints([root / f for f in m["models"]], name=m["run"],
                                    plan=root / m["plan"])
            member = spec.members[0]
            if m.get("previous"):  # a cascade member: its low-resolution stage, recorded
                p = m["previous"]
                prev = from_checkpoints([root / f for f in p["models"]], name=p["run"],
                                        plan=root / p["plan"]).members[0]
                member = replace(member, previous=prev)
            members.append(member)
        postprocess = record["best"]["postprocess"]
        facts = _dataset_facts(root / record["dataset_json"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"best-configuration file {str(path)!r} lacks {exc}") from None
    return ModelSpec(str(path), tuple(members), postprocess, **facts,
                     extra={"best": record["best"]["name"]}, inference=record.get("inference"))


# ---------------------------------------------------------------- helpers


def has_checkpoint(folder: Path) -> bool:
    return any((folder / n).is_file() for n in CHECKPOINT_NAMES)


def fold_dirs(run_dir: Path) -> list[Path]:
    """``fold<N>/`` folders holding a checkpoint, by fold number."""
    found = [(f, p) for p in run_dir.iterdir()
             if p.is_dir() and (f := fold_number(p.name)) is not None and has_checkpoint(p)]
    return [p for _, p in sorted(found)]


def _run_name(checkpoint: Path) -> str:
    """``3d-fp32-1gpu`` for ``.../train/3d-fp32-1gpu/fold0/final.pt``, else the folder name."""
    folder = checkpoint.parent
    return folder.parent.name if fold_number(folder.name) is not None else folder.name


def find_dataset_json(path: Path | str) -> Path | None:
    """``<results>/<dataset>/raw/dataset.json`` for a file of a study's results tree (a
    checkpoint, a run folder: :func:`nnpipe.study.study_file`); None outside one."""
    file = study_file(path)
    return None if file is None else Path(
        StudyPaths(file.results_dir, file.dataset).path("dataset_json"))


def _dataset_facts(dataset_json: Path | None) -> dict[str, Any]:
    """Channel names, dataset name and file ending from a dataset.json (MSD or nnU-Net v2)."""
    if dataset_json is None or not Path(dataset_json).is_file():
        return {}
    meta = read_json(dataset_json)
    channels = meta.get("channel_names") or meta.get("modality") or {}
    names = tuple(str(channels[k]) for k in sorted(channels, key=int)) if isinstance(
        channels, dict) else ()
    return {"channel_names": names, "dataset_name": str(meta.get("name", "")),
            "file_ending": str(meta.get("file_ending", ".nii.gz"))}
