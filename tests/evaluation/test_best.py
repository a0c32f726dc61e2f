"""nnpipe.evaluation.best on a tiny study with planted predictions and probabilities: the
candidates' scores, the choice (runs, 2D + 3D ensemble, ties), best.json, and prediction
with it (two plans averaged in the original grid)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnpipe.cli import main
from nnpipe.config import InferenceSettings
from nnpipe.datasets.layout import load_dataset, read_case_image
from nnpipe.errors import DataError
from nnpipe.evaluation.best import (
    candidates,
    find_best,
    previous_run,
    run_configuration,
    run_names_in,
)
from nnpipe.evaluation.run import scored_classes
from nnpipe.imageio import read_file, write_like
from nnpipe.inference.ensemble import load_models
from nnpipe.inference.export import write_probabilities
from nnpipe.inference.postprocess import (
    decide_to_file,
    keep_largest_component,
    load_decision,
)
from nnpipe.inference.predict import predict_folder, predict_image
from nnpipe.inference.resolve import resolve_model
from nnpipe.metrics import dice, nanmean
from nnpipe.model import build_unet
from nnpipe.training.checkpoint import save_checkpoint
from nnpipe.training.splits import load_fold

RUN2, RUN3 = "2d-fp32-1gpu", "3d-fp32-1gpu"
FOLDS = (0, 1, 2, 3, 4)
SETTINGS = InferenceSettings(overlap=0.5, blend="gaussian", tta=False, batch_size=2)


def planted_probabilities(ref: np.ndarray, values: list[int], wrong: np.ndarray,
                          right: float = 0.9, low: float = 0.4) -> np.ndarray:
    """``(K, X, Y, Z)``: probability ``right`` for the reference class and the rest for the
    next class, except in ``wrong`` where the reference class gets ``low`` (< 0.5: the
    argmax is wrong there)."""
    k = len(values)
    index = np.searchsorted(values, ref)
    a = np.where(wrong, low, right)
    probs = np.zeros((k, *ref.shape), np.float32)
    np.put_along_axis(probs, index[None], a[None].astype(np.float32), 0)
    np.put_along_axis(probs, ((index + 1) % k)[None], (1 - a)[None].astype(np.float32), 0)
    return probs


def make_study(tiny_study, root: Path, wrong: dict[str, str]) -> Path:
    """results/<dataset> with the tiny study's raw data, plans and splits, and planted fold
    predictions of a 2D and a 3D run: ``wrong[run]`` says where that run's argmax is wrong
    ("low x", "high x" half of the foreground, or "none")."""
    study = root / "tiny"
    shutil.copytree(tiny_study.raw, study / "raw")
    shutil.copy(tiny_study.splits, study / "splits.json")
    for dim in (2, 3):
        tiny_study.plans[dim].save(study / "plans" / f"{dim}d.json")
    ds = load_dataset(study / "raw")
    values = sorted(ds.labels)
    classes = scored_classes(ds.labels, False)
    for run, where in wrong.items():
        pairs = []
        for fold in FOLDS:
            out = study / "predict" / run / f"fold{fold}"
            out.mkdir(parents=True)
            for case in load_fold(study / "splits.json", fold)["val"]:
                ref_file = read_file(ds.case(case).label)
                ref = np.asarray(ref_file.data[..., 0]).astype(np.int64)
                x = np.arange(ref.shape[0])[:, None, None]
                half = (x < ref.shape[0] // 2) if where == "low x" else (x >= ref.shape[0] // 2)
                mask = (ref > 0) & half if where != "none" else np.zeros(ref.shape, bool)
                probs = planted_probabilities(ref, values, mask)
                write_probabilities(out / f"{case}.npz", probs, ref_file.affine,
                                    [ds.labels[v] for v in values])
                labels = np.asarray(values, np.uint8)[probs.argmax(0)]
                write_like(out / f"{case}.nii.gz", labels, ref_file)
                pairs.append((case, out / f"{case}.nii.gz", ds.case(case).label))
        decide_to_file(pairs, classes, study / "postprocess" / f"{run}.json")
    return study


def expected_dice(study: Path, run: str, postprocessed: bool = True) -> float:
    """The run's cross-validation Dice computed here independently: per case the mean over
    the classes scored in it, mean over all cases; with the run's decision applied."""
    ds = load_dataset(study / "raw")
    keep = load_decision(study / "postprocess" / f"{run}.json") if postprocessed else []
    per_case = []
    for fold in FOLDS:
        for case in load_fold(study / "splits.json", fold)["val"]:
            pred = nib.load(study / "predict" / run / f"fold{fold}" / f"{case}.nii.gz")
            ref = nib.load(ds.case(case).label)
            p, r = np.asarray(pred.dataobj).astype(np.int64), np.asarray(ref.dataobj)
            for c in keep:
                p = keep_largest_component(p, c)
            per_case.append(nanmean(dice(p == v, r == v) for v in sorted(ds.labels) if v))
    return nanmean(per_case)


def test_cascade_runs_are_candidates_and_name_their_stage() -> None:
    runs = ["2d-fp32-1gpu", "3d-fp32-1gpu", "3d_lowres-fp32-1gpu", "3d_cascade-fp32-1gpu"]
    assert candidates(runs) == [(r,) for r in runs] + [
        ("2d-fp32-1gpu", "3d-fp32-1gpu"), ("2d-fp32-1gpu", "3d_cascade-fp32-1gpu")]
    assert [run_configuration(r) for r in runs] == ["2d", "3d", "3d_lowres", "3d_cascade"]
    assert previous_run("3d_cascade-bf16-2gpu") == "3d_lowres-bf16-2gpu"
    assert previous_run("3d_lowres-bf16-2gpu") is None
    with pytest.raises(ValueError, match="configurations"):
        run_configuration("4d-fp32-1gpu")


def test_candidates_are_runs_then_2d_3d_pairs() -> None:
    assert candidates([RUN2]) == [(RUN2,)]
    assert candidates(["3d-fp32-1gpu", "3d-bf16-1gpu"]) == [("3d-fp32-1gpu",),
                                                             ("3d-bf16-1gpu",)]
    assert candidates([RUN2, "2d-bf16-1gpu", RUN3]) == [
        (RUN2,), ("2d-bf16-1gpu",), (RUN3,), (RUN2, RUN3), ("2d-bf16-1gpu", RUN3)]


def test_ensemble_of_complementary_runs_wins(tiny_study, tmp_path) -> None:
    # each run is wrong on a different half of the foreground; their average is right
    study = make_study(tiny_study, tmp_path, {RUN2: "low x", RUN3: "high x"})
    record = find_best(study, [RUN2, RUN3], FOLDS, study / "best.json")
    scores = {c["name"]: c["dice"] for c in record["candidates"]}
    for run in (RUN2, RUN3):
        assert scores[run] == pytest.approx(expected_dice(study, run))
        (raw,) = [c["dice_before_postprocessing"] for c in record["candidates"]
                  if c["name"] == run]
        assert raw == pytest.approx(expected_dice(study, run, postprocessed=False))
    assert record["candidates"][0]["postprocess_applied"] == ["3"]  # planted islands
    assert max(scores[RUN2], scores[RUN3]) < 0.9
    assert scores[f"{RUN2}+{RUN3}"] == pytest.approx(1.0)
    best = json.loads((study / "best.json").read_text())
    assert best == json.loads(json.dumps(record))
    assert "inference" not in best  # none given: predict then uses its own settings
    with_settings = find_best(study, [RUN2, RUN3], FOLDS, study / "b2.json",
                              inference={"tta": True, "overlap": 0.5})
    assert with_settings["inference"] == {"tta": True, "overlap": 0.5}
    assert json.loads((study / "b2.json").read_text())["inference"] == {"tta": True, "overlap": 0.5}
    assert best["best"]["name"] == f"{RUN2}+{RUN3}" and best["best"]["runs"] == [RUN2, RUN3]
    assert [m["plan"] for m in best["best"]["members"]] == ["plans/2d.json", "plans/3d.json"]
    assert best["best"]["members"][1]["models"] == [
        f"train/{RUN3}/fold{f}/final.pt" for f in FOLDS]
    assert set(best["best"]["postprocess"]["classes"]) == {"1", "2", "3"}
    # the ensemble's cross-validation label maps and decision are kept
    ens = study / "crossval" / f"{RUN2}+{RUN3}"
    assert (ens / "postprocess.json").is_file()
    case = load_fold(study / "splits.json", 0)["val"][0]
    pred = nib.load(ens / "fold0" / f"{case}.nii.gz")
    ref = nib.load(study / "raw" / "labelsTr" / f"{case}.nii.gz")
    np.testing.assert_array_equal(np.asarray(pred.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(pred.affine, ref.affine)


def test_a_perfect_run_beats_an_equal_ensemble_on_a_tie(tiny_study, tmp_path) -> None:
    study = make_study(tiny_study, tmp_path, {RUN2: "low x", RUN3: "none"})
    record = find_best(study, [RUN2, RUN3], FOLDS, study / "best.json")
    scores = {c["name"]: c["dice"] for c in record["candidates"]}
    assert scores[RUN3] == pytest.approx(1.0) == scores[f"{RUN2}+{RUN3}"]
    assert record["best"]["name"] == RUN3 and record["best"]["runs"] == [RUN3]


def test_one_run_no_ensemble_and_cli(tiny_study, tmp_path, capsys) -> None:
    study = make_study(tiny_study, tmp_path, {RUN3: "low x"})
    assert main(["best", "--study", str(study)]) == 0
    best = json.loads((study / "best.json").read_text())
    assert [c["name"] for c in best["candidates"]] == [RUN3]
    assert best["best"]["name"] == RUN3
    assert best["best"]["dice"] == pytest.approx(expected_dice(study, RUN3))
    assert main(["find_best_configuration", "--study", str(study), "--runs", RUN3,
                 "--folds", "0", "1", "--out", str(tmp_path / "b.json")]) == 0
    other = json.loads((tmp_path / "b.json").read_text())
    assert other["folds"] == [0, 1] and other["best"]["members"][0]["plan"] == "tiny/plans/3d.json"


def test_missing_probabilities_are_named(tiny_study, tmp_path, capsys) -> None:
    study = make_study(tiny_study, tmp_path, {RUN2: "low x", RUN3: "high x"})
    gone = next((study / "predict" / RUN3 / "fold2").glob("*.npz"))
    gone.unlink()
    with pytest.raises(DataError, match=rf"{gone.name}.*save_probabilities"):
        find_best(study, [RUN2, RUN3], FOLDS, study / "best.json")
    assert main(["best", "--study", str(study), "--runs", RUN2, RUN3]) == 1
    assert gone.name in capsys.readouterr().err


def save_fold_models(study: Path, tiny_study, folds: tuple[int, ...]) -> None:
    """Untrained fold models of both runs (distinct seeds) where best.json names them."""
    for run, dim in ((RUN2, 2), (RUN3, 3)):
        for f in folds:
            torch.manual_seed(10 * dim + f)
            net = build_unet(tiny_study.plans[dim], deep_supervision=False)
            save_checkpoint(study / "train" / run / f"fold{f}" / "final.pt",
                            {"model": net.state_dict(), "plan": tiny_study.plans[dim].to_dict(),
                             "settings": {"regions": False}})


def test_predict_with_best_json_averages_two_plans_in_the_original_grid(tiny_study,
                                                                           tmp_path) -> None:
    study = make_study(tiny_study, tmp_path, {RUN2: "low x", RUN3: "high x"})
    folds = (0, 1)
    find_best(study, [RUN2, RUN3], folds, study / "best.json")
    save_fold_models(study, tiny_study, folds)
    spec = resolve_model([study / "best.json"])
    assert [m.name for m in spec.members] == [RUN2, RUN3]
    assert [m.plan.dim for m in spec.members] == [2, 3]
    assert spec.channel_names == load_dataset(study / "raw").channels
    src = tmp_path / "in"
    src.mkdir()
    image_path = sorted((study / "raw" / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copy(image_path, src / image_path.name)
    (out,) = predict_folder([study / "best.json"], src, tmp_path / "out", SETTINGS,
                            device="cpu")
    # by hand: each run's fold models in its own plan, probabilities averaged, argmax
    case_id = image_path.name.removesuffix(".nii.gz")
    ci = read_case_image(load_dataset(study / "raw").case(case_id), 4)
    probs = []
    for run in (RUN2, RUN3):
        lms = load_models([study / "train" / run / f"fold{f}" for f in folds],
                          torch.device("cpu"))
        result = predict_image(lms, ci.image, ci.affine, SETTINGS, "c", with_probabilities=True)
        probs.append(result.probabilities)
    values = np.asarray(sorted(tiny_study.plans[3].labels), np.uint8)
    labels = values[((probs[0] + probs[1]) / 2).argmax(0)]
    for c in spec.postprocess_classes():
        labels = keep_largest_component(labels, c)
    got = ci.orientation.apply(np.asarray(nib.load(out).dataobj))
    np.testing.assert_array_equal(got, labels)
    # the same choice exported: two members, each plan with its folds, and the decision
    assert main(["export", "--model", str(study / "best.json"), "--out",
                 str(tmp_path / "best.zip")]) == 0
    shutil.rmtree(study)
    (again,) = predict_folder([tmp_path / "best.zip"], src, tmp_path / "again", SETTINGS,
                              device="cpu")
    np.testing.assert_array_equal(np.asarray(nib.load(again).dataobj),
                                  np.asarray(nib.load(out).dataobj))


def test_run_names_are_the_runs_with_fold_predictions(tmp_path) -> None:
    study = tmp_path / "results" / "d"
    with pytest.raises(ValueError, match="no run predictions"):
        run_names_in(study)
    for folder in ("3d_cascade-bf16-2gpu/fold1", "2d-fp32-1gpu/fold0", "notarun/fold0",
                   "3d-fp32-1gpu", "3d-fp16-1gpu/fold0"):
        (study / "predict" / folder).mkdir(parents=True)
    assert run_names_in(study) == ["2d-fp32-1gpu", "3d_cascade-bf16-2gpu"]
