"""The best configuration of a study: which run, or which 2D + 3D ensemble, to predict with.

Candidates: every run (``{configuration}-{precision}-{gpus}gpu``, the cascade's two stages
``3d_lowres`` and ``3d_cascade`` included) and, when the runs include both a 2D and a 3D run,
every pair of one 2D and one full-resolution 3D run (``3d`` or ``3d_cascade``), averaged.
A candidate's score is its cross-validation Dice *after its postprocessing*: for every
validation case of every fold, the mean Dice over the classes scored in that case (a class
absent from reference and prediction is not scored, :mod:`nnpipe.metrics`), then
the mean over all those cases (pooled over folds, so every case weighs the same).

* A run's predictions are the fold models' validation predictions (``predict/RUN/foldF``)
  with the run's decision (``postprocess/RUN.json``) applied.
* An ensemble is not retrained: the two runs' saved validation probabilities
  (``predict/RUN/foldF/<case>.npz``, float16, in the original grid, so a 2D and a 3D run
  average voxel by voxel) are averaged, then the argmax (or region thresholds). Its label
  maps go to ``crossval/<2D run>+<3D run>/foldF/``, and its largest-component
  postprocessing is decided from them exactly as a run's
  (:func:`nnpipe.inference.postprocess.decide`), in ``crossval/<name>/postprocess.json``.

The highest score wins; on a tie the earlier candidate (runs before ensembles, in the order
given) wins, since it is cheaper to predict with. ``best.json`` records every candidate's
score and the choice: its runs, their plans and fold models (paths relative to the study
folder ``results/<dataset>``; a cascade run's with its ``3d_lowres`` stage as ``previous``),
and the postprocessing, so that ``nnpipe predict --model
best.json`` and ``nnpipe export --model best.json`` need nothing else.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnpipe.datasets.layout import load_dataset, prediction_path
from nnpipe.errors import DataError
from nnpipe.imageio import read_file, write_like
from nnpipe.inference.model_spec import BEST_FORMAT, BEST_FORMAT_VERSION
from nnpipe.inference.postprocess import (
    annotated,
    decide_to_file,
    keep_largest_component,
    load_decision,
    read_scored_pair,
)
from nnpipe.io import read_json, write_json
from nnpipe.labels import outputs_to_labels
from nnpipe.metrics import ScoredClass, dice, nanmean
from nnpipe.planning.plan import Plan
from nnpipe.progress import log
from nnpipe.study import (
    CASCADE,
    StudyPaths,
    configuration,
    configuration_dim,
    parse_run_name,
    previous_run,
    study_file,
)
from nnpipe.training.splits import load_fold

METRIC = ("mean over all cross-validation cases of the mean Dice over the classes scored in "
          "the case, after the candidate's postprocessing")


@dataclass(frozen=True)
class Study:
    """The files of one study folder ``results/<dataset>`` that the comparison reads, named
    by the study grammar (:class:`nnpipe.study.StudyPaths`)."""

    root: Path

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(str(self.root.parent), self.root.name)

    def predictions(self, run: str, fold: int) -> Path:
        return Path(self.paths.run_file("predictions", run, fold=fold))

    def decision(self, run: str) -> Path:
        return Path(self.paths.run_file("decision", run))

    def model(self, run: str, fold: int) -> Path:
        return Path(self.paths.run_file("model", run, fold=fold))

    def plan(self, run: str) -> Path:
        return Path(self.paths.path("plan", config=run_configuration(run)))

    @property
    def crossval(self) -> Path:
        return Path(self.paths.path("crossval"))

    def crossval_predictions(self, ensemble: str, fold: int) -> Path:
        return Path(self.paths.path("crossval_predictions", ensemble=ensemble, fold=fold))

    def crossval_decision(self, ensemble: str) -> Path:
        return Path(self.paths.path("crossval_decision", ensemble=ensemble))

    @property
    def raw(self) -> Path:
        return Path(self.paths.raw)

    @property
    def splits(self) -> Path:
        return Path(self.paths.splits)


def run_configuration(run: str) -> str:
    """``3d_cascade`` from a run name ``{configuration}-{precision}-{gpus}gpu``.

    Raises ``ValueError`` naming the run and the known configurations.
    """
    return str(parse_run_name(run)["config"])


def run_dim(run: str) -> int:
    """2 or 3 from a run name ``{configuration}-{precision}-{gpus}gpu``."""
    return configuration_dim(run_configuration(run))


def run_names_in(study_dir: Path | str) -> list[str]:
    """The runs with fold predictions in ``study_dir`` (``predict/RUN/foldF``), 2D first (for
    ``nnpipe best`` without ``--runs``)."""
    pattern = Study(Path(study_dir)).paths.path("predictions", config="*", precision="*",
                                                 gpus="*", fold="*")
    runs = sorted({f.run for p in glob.glob(pattern)
                   if (f := study_file(p)) is not None and f.kind == "predictions"})
    if not runs:
        raise ValueError(f"no run predictions {pattern!r}; give --runs or run the "
                         "study's predict jobs first")
    return runs


def candidates(runs: Sequence[str]) -> list[tuple[str, ...]]:
    """Every run alone, then every (2D run, full-resolution 3D run) pair when there is more
    than one run (a low-resolution stage is scored alone, not ensembled)."""
    found: list[tuple[str, ...]] = [(r,) for r in runs]
    if len(runs) > 1:
        found += [(a, b) for a in runs if run_dim(a) == 2 for b in runs
                  if run_configuration(b) in (configuration(3), CASCADE)]
    return found


def find_best(study_dir: Path | str, runs: Sequence[str], folds: Sequence[int], out: Path | str,
              *, regions: bool = False, inference: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """Score every candidate of ``runs`` over ``folds``, write ``out`` (best.json); returns it.

    ``inference``: the study's ``inference`` config section, kept in best.json (and in an
    archive exported from it) so that `nnpipe predict` without ``--config`` predicts with the
    study's settings (test-time flips, overlap, batch).

    Raises:
        ValueError / DataError: naming a missing prediction, probability file or decision.
    """
    study = Study(Path(study_dir))
    if not runs:
        raise ValueError("no runs to compare")
    study.crossval.mkdir(parents=True, exist_ok=True)  # the rule's output, even if empty
    ds = load_dataset(study.raw)
    # the label concept of the runs' plan (region mode from config only for older plans)
    scheme = Plan.load(study.plan(runs[0])).scheme(legacy_regions=regions)
    classes = scheme.scored_classes
    cases = [(fold, c) for fold in folds for c in load_fold(study.splits, fold)["val"]]
    refs: dict[str, Path] = {}
    for _, c in cases:
        label = ds.case(c).label
        if label is None:
            raise DataError("validation case has no label file to score against", case=c)
        refs[c] = label
    scores: list[dict[str, Any]] = []
    for members in candidates(runs):
        name = "+".join(members)
        if len(members) == 1:
            pred_dir = {f: study.predictions(name, f) for f in folds}
            decision = study.decision(name)
        else:
            pred_dir = {f: study.crossval_predictions(name, f) for f in folds}
            _ensemble_folder(study, members, cases, pred_dir, regions)
        pairs = [(c, prediction_path(pred_dir[f], c), refs[c]) for f, c in cases]
        if len(members) > 1:
            decision = study.crossval_decision(name)
            decide_to_file(pairs, classes, decision, scheme.ignore)
        applied = load_decision(decision)
        raw_dice, post_dice = cv_dice(pairs, classes, applied, scheme.ignore)
        log(f"best: {name}: cross-validation Dice {100 * raw_dice:.2f} -> "
            f"{100 * post_dice:.2f} after postprocessing ({len(pairs)} cases)")
        scores.append({"name": name, "runs": list(members), "dice": _num(post_dice),
                       "dice_before_postprocessing": _num(raw_dice), "n_cases": len(pairs),
                       "postprocess_applied": [c.name for c in applied],
                       "postprocess": _rel(decision, out)})
    record = best_record(study, scores, folds, ds.name, out)
    if inference is not None:
        record["inference"] = dict(inference)
    write_json(out, record)
    log(f"best: {record['best']['name']} (Dice {100 * (record['best']['dice'] or 0):.2f}) "
        f"-> {out}")
    return record


def best_record(study: Study, scores: Sequence[dict[str, Any]], folds: Sequence[int],
                dataset: str, out: Path | str) -> dict[str, Any]:
    """best.json from the candidates' ``scores`` (in candidate order); paths in it are
    relative to the folder of ``out``."""
    def key(i: int) -> tuple[float, int]:
        d = scores[i]["dice"]
        return (-math.inf if d is None else d, -i)

    chosen = dict(scores[max(range(len(scores)), key=key)])
    chosen["postprocess_file"] = chosen["postprocess"]
    chosen["postprocess"] = read_json(Path(out).parent / chosen["postprocess"])
    def member(r: str) -> dict[str, Any]:
        record: dict[str, Any] = {"run": r, "plan": _rel(study.plan(r), out),
                  "models": [_rel(study.model(r, f), out) for f in folds]}
        prev = previous_run(r)
        if prev is not None:  # a cascade stage predicts after its low-resolution stage
            record["previous"] = member(prev)
        return record

    chosen["members"] = [member(r) for r in chosen["runs"]]
    return {"format": BEST_FORMAT, "format_version": BEST_FORMAT_VERSION,
            "dataset": dataset, "folds": list(folds), "metric": METRIC,
            "dataset_json": _rel(study.raw / "dataset.json", out),
            "candidates": list(scores), "best": chosen}


def _rel(path: Path, out: Path | str) -> str:
    """``path`` relative to the folder of best.json (so a moved study folder still works)."""
    return os.path.relpath(path, Path(out).parent)


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def cv_dice(pairs: Sequence[tuple[str, Path, Path]], classes: Sequence[ScoredClass],
            postprocess: Sequence[ScoredClass], ignore: int | None = None
            ) -> tuple[float, float]:
    """(Dice before, Dice after ``postprocess``) over ``(case, prediction, reference)``
    files: per case the mean over the classes scored in it, then the mean over cases;
    reference voxels holding ``ignore`` (sparse annotations) are scored in neither map."""
    before, after = [], []
    for case, pred_path, ref_path in pairs:
        pred, ref = read_scored_pair(case, pred_path, ref_path)
        keep = annotated(ref, ignore)
        before.append(nanmean(dice(c.mask(pred) & keep, c.mask(ref)) for c in classes))
        for c in postprocess:
            pred = keep_largest_component(pred, c)
        after.append(nanmean(dice(c.mask(pred) & keep, c.mask(ref)) for c in classes))
    return nanmean(before), nanmean(after)


def _ensemble_folder(study: Study, members: Sequence[str], cases: Sequence[tuple[int, str]],
                     out: dict[int, Path], regions: bool) -> None:
    """Label maps of the members' averaged validation probabilities, one folder per fold,
    each in the file grid of the first member's prediction (the case's own grid)."""
    plan = Plan.load(study.plan(members[0]))
    scheme = plan.scheme(legacy_regions=regions)
    for fold, case in cases:
        total: np.ndarray | None = None
        names: list[str] = []
        for run in members:
            probs, run_names = _read_probabilities(study.predictions(run, fold), case)
            if total is None:
                total, names = probs, run_names
                continue
            if run_names != names or probs.shape != total.shape:
                raise DataError(f"probabilities of {run} ({run_names}, shape {probs.shape}) "
                                f"do not match those of {members[0]} ({names}, shape "
                                f"{total.shape})", case=case,
                                path=study.predictions(run, fold) / f"{case}.npz")
            total += probs
        assert total is not None  # members is not empty
        total /= len(members)
        labels = outputs_to_labels(total, scheme)
        template = read_file(prediction_path(study.predictions(members[0], fold), case),
                             case=case)
        out[fold].mkdir(parents=True, exist_ok=True)
        write_like(out[fold] / template.path.name, labels, template)


def _read_probabilities(folder: Path, case: str) -> tuple[np.ndarray, list[str]]:
    """``(K, X, Y, Z)`` float32 and the class names of ``folder/<case>.npz``."""
    path = folder / f"{case}.npz"
    if not path.is_file():
        raise DataError("probabilities are missing: the fold's predictions were made without "
                        "inference.save_probabilities (the study's predict rule saves them "
                        "when grid.dims holds 2 and 3; rerun that predict job)", case=case,
                        path=path)
    with np.load(path, allow_pickle=False) as npz:
        return npz["probabilities"].astype(np.float32), [str(n) for n in npz["names"]]
