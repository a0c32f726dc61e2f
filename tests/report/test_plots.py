"""Plots from fixed inputs: the data drawn is the data given, files are PNGs of the set size."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from nnpipe.datasets.layout import load_dataset, read_label
from nnpipe.errors import DataError
from nnpipe.io import save_nifti
from nnpipe.report.plots import (
    DPI,
    class_names,
    pick_cases,
    plot_dice_per_class,
    plot_overlays,
    plot_throughput,
    plot_training_curves,
)

NAMES = {"1": "1: edema", "2": "2: non-enhancing tumor", "3": "3: enhancing tumour"}


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG that matplotlib can read back."""
    image = imread(path)
    return image.shape[1], image.shape[0]


def _metrics(path: Path, epochs: int, offset: float, lr: float = 1e-3) -> Path:
    e = np.arange(1, epochs + 1)
    pd.DataFrame({"epoch": e, "train_loss": 2.0 / e + offset, "val_loss": 2.2 / e + offset,
                  "val_dice_mean": 0.1 * e, "val_dice_1": 0.1 * e + 0.1, "val_dice_2": 0.1 * e,
                  "val_dice_3": 0.1 * e - 0.1 + offset, "lr": lr, "epoch_time_s": 1.0,
                  "samples_per_s": 4.0}).to_csv(path, index=False)
    return path


def test_training_curves_draw_every_fold_and_the_class_means(tmp_path: Path) -> None:
    metrics = {0: _metrics(tmp_path / "m0.csv", 4, 0.0), 1: _metrics(tmp_path / "m1.csv", 4, 0.1)}
    out = tmp_path / "curves.png"
    fig = plot_training_curves(metrics, out, title="3d-fp32-1gpu", class_names=NAMES)
    ax_loss, ax_dice, ax_cls, ax_lr = fig.axes
    # per fold: train (solid) and validation (dashed); plus two empty legend-only lines
    assert len(ax_loss.lines) == 2 * 2 + 2
    np.testing.assert_allclose(ax_loss.lines[2].get_ydata(), 2.0 / np.arange(1, 5) + 0.1)
    np.testing.assert_allclose(ax_dice.lines[0].get_ydata(), [10, 20, 30, 40])
    # class 3 is the mean over folds of (0.1 e - 0.1) and (0.1 e), in percent
    cls3 = [ln for ln in ax_cls.lines if ln.get_label().startswith("3: enhancing")][0]
    np.testing.assert_allclose(cls3.get_ydata(), [5, 15, 25, 35])
    # the same lr in every fold: one line, not two hidden behind each other
    assert [ln.get_label() for ln in ax_lr.lines] == ["every fold"]
    assert _png_size(out) == (round(11 * DPI), round(7.5 * DPI))


def test_training_curves_reject_a_csv_without_the_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n1,2.0\n")
    with pytest.raises(DataError, match=r"bad\.csv.*val_loss"):
        plot_training_curves({0: bad}, tmp_path / "x.png", title="t")
    assert not (tmp_path / "x.png").exists()


def _scores(path: Path, cases: list[str], means: list[float]) -> Path:
    m = np.asarray(means)
    pd.DataFrame({"case": cases, "dice_1": m + 0.1, "dice_2": m, "dice_3": m - 0.1,
                  "dice_mean": m}).to_csv(path, index=False)
    return path


def test_dice_boxes_per_class_and_run_with_means(tmp_path: Path) -> None:
    runs = {"2d-fp32-1gpu": {0: _scores(tmp_path / "a0.csv", ["a", "b"], [0.5, 0.7]),
                             1: _scores(tmp_path / "a1.csv", ["c"], [0.9])},
            "3d-fp32-1gpu": {0: _scores(tmp_path / "b0.csv", ["a", "b"], [0.2, 0.4]),
                             1: _scores(tmp_path / "b1.csv", ["c"], [0.6])}}
    fig = plot_dice_per_class(runs, tmp_path / "dice.png", class_names=NAMES)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["1: edema", "2: non-enhancing tumor", "3: enhancing tumour",
                      "mean of classes"]
    # mean over the 3 cases of both folds, in percent, written above each box
    assert [t.get_text() for t in fig.axes[0].texts] == ["80.0", "50.0"]
    assert [t.get_text() for t in fig.axes[3].texts] == ["70.0", "40.0"]
    # every case is drawn as a dot at its Dice
    dots = fig.axes[2].collections
    np.testing.assert_allclose(sorted(dots[1].get_offsets()[:, 1]), [10, 30, 50])
    assert (tmp_path / "dice.png").stat().st_size > 0


def test_dice_boxes_leave_out_classes_not_scored(tmp_path: Path) -> None:
    # empty cells = absent from both reference and prediction: class 2 in case b, class 3
    # in every case (never scored)
    csv = tmp_path / "f0.csv"
    csv.write_text("case,dice_1,dice_2,dice_3,dice_mean\n"
                   "a,0.9,0.5,,0.7\nb,0.6,,,0.6\nc,0.3,0.1,,0.2\n")
    fig = plot_dice_per_class({"3d-fp32-1gpu": {0: csv}}, tmp_path / "d.png",
                              class_names=NAMES)
    assert [ax.texts[0].get_text() for ax in fig.axes] == ["60.0", "30.0", "n/a", "50.0"]
    np.testing.assert_allclose(sorted(fig.axes[1].collections[0].get_offsets()[:, 1]), [10, 50])
    assert len(fig.axes[2].collections[0].get_offsets()) == 0


def test_dice_boxes_of_regions(tiny_study, tmp_path: Path) -> None:
    """Region mode scores WT, TC, ET (columns dice_WT, ...): one panel per region."""
    m = np.array([0.5, 0.7])
    table = pd.DataFrame({"case": ["a", "b"], "dice_WT": m + 0.2, "hd95_WT": 3.0,
                          "dice_TC": m, "dice_ET": m - 0.2, "dice_mean": m, "hd95_mean": 3.0})
    table.to_csv(tmp_path / "f0.csv", index=False)
    plan = tiny_study.plans[3]
    assert class_names(plan) == {"1": "1: edema", "2": "2: non-enhancing tumor",
                                 "3": "3: enhancing tumour"}
    # region mode comes from the plan's label scheme (planning.regions recorded it) ...
    regions = plan.with_scheme(plan.scheme().with_nested_regions())
    regions.save(tmp_path / "3d.json")
    names = class_names(tmp_path / "3d.json")
    assert names["WT"] == names["1"] == "WT (labels 1, 2, 3)"
    assert names["ET"] == "ET (labels 3)"
    # ... and from config training.regions only for a plan older than the recorded scheme
    old = replace(plan, label_scheme=None)
    assert class_names(old, legacy_regions=True) == names
    assert class_names(regions, legacy_regions=False) == names
    fig = plot_dice_per_class({"3d-fp32-1gpu": {0: tmp_path / "f0.csv"}}, tmp_path / "d.png",
                              class_names=names)
    assert [ax.get_title() for ax in fig.axes] == [
        "WT (labels 1, 2, 3)", "TC (labels 2, 3)", "ET (labels 3)", "mean of classes"]
    assert [ax.texts[0].get_text() for ax in fig.axes] == ["80.0", "60.0", "40.0", "60.0"]


def _bench(mode: str, dim: int, precision: str, bs: int, thr: float, gpus: int = 1) -> dict:
    return {"mode": mode, "dim": dim, "precision": precision, "batch_size": bs, "gpus": gpus,
            "throughput": thr, "device": "cpu"}


def test_throughput_lines_by_batch_size_in_precision_order(tmp_path: Path) -> None:
    recs = [_bench("train", 3, "bf16", 2, 6.0), _bench("train", 3, "bf16", 1, 4.0),
            _bench("train", 3, "fp32", 2, 3.0), _bench("train", 3, "fp32", 1, 1.0),
            _bench("predict", 3, "fp32", 1, 2.0), _bench("train", 3, "fp32", 1, 1.8, gpus=2)]
    paths = []
    for i, r in enumerate(recs):  # paths and contents are both accepted
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    fig = plot_throughput(paths, tmp_path / "thr.png")
    train, predict = fig.axes[:2]
    assert train.get_title() == "3D training" and predict.get_title() == "3D inference (patches)"
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in train.lines}
    assert list(lines) == ["fp32, 1 GPU", "fp32, 2 GPUs", "bf16, 1 GPU"]
    assert lines["fp32, 1 GPU"] == ([1, 2], [1.0, 3.0])
    assert lines["bf16, 1 GPU"] == ([1, 2], [4.0, 6.0])
    assert [ln.get_label() for ln in predict.lines] == ["fp32, 1 GPU"]
    assert "ran on: cpu" in fig.get_suptitle()


def test_pick_cases_worst_median_best() -> None:
    scores = pd.DataFrame({"case": list("abcdefg"), "dice_mean": [0.5, 0.1, 0.9, 0.3, 0.7,
                                                                   0.2, 0.6]})
    assert list(pick_cases(scores, 3)["case"]) == ["b", "a", "c"]  # 0.1, 0.5, 0.9
    assert list(pick_cases(scores.head(2), 3)["case"]) == ["b", "a"]
    # a case with no class scored (empty dice_mean) has no rank: never worst or best
    unscored = pd.concat([scores, pd.DataFrame({"case": ["h"], "dice_mean": [float("nan")]})])
    assert list(pick_cases(unscored, 3)["case"]) == ["b", "a", "c"]
    assert list(pick_cases(unscored.tail(1), 3)["case"]) == []


def test_overlays_show_the_slice_with_the_most_labelled_voxels(tiny_study, tmp_path) -> None:
    ds = load_dataset(tiny_study.raw)
    cases = [c.case_id for c in ds.training[:3]]
    pred_dir = tmp_path / "pred"
    for cid in cases:  # the prediction is the reference itself
        img = nib.load(ds.case(cid).label)
        save_nifti(pred_dir / f"{cid}.nii.gz", np.asarray(img.dataobj).astype(np.uint8),
                   img.affine)
    csv = _scores(tmp_path / "fold0.csv", cases, [0.8, 0.2, 0.5])
    table = pd.read_csv(csv)
    table.loc[1, "dice_3"] = np.nan  # class 3 absent from both in the worst case: not scored
    table.to_csv(csv, index=False)
    fig = plot_overlays(tiny_study.raw, {0: csv}, {0: pred_dir}, tmp_path / "ov.png",
                        title="3d-fp32-1gpu")
    rows = [ax for i, ax in enumerate(fig.axes) if i % 3 == 0]
    # worst, median, best by dice_mean, case id and fold named at the left
    assert [ax.get_ylabel().split(" ")[0] for ax in rows] == [cases[1], cases[2], cases[0]]
    assert rows[0].get_ylabel().endswith(" n/a") and "nan" not in rows[0].get_ylabel()
    worst = ds.case(cases[1])
    canonical = np.asarray(nib.as_closest_canonical(nib.load(worst.label)).dataobj)
    np.testing.assert_array_equal(read_label(ds, worst).values, canonical)  # the reader: RAS
    z = int(np.argmax((canonical > 0).sum(axis=(0, 1))))
    assert fig.axes[0].get_title() == f"{ds.channels[0]}, slice z={z}"
    voxels = int((canonical[:, :, z] > 0).sum())
    assert fig.axes[1].get_title() == f"reference ({voxels} labelled voxels)"
    assert "tumour" not in fig.get_suptitle() and "labelled reference voxels" in fig.get_suptitle()
    assert fig.axes[2].get_title() == "prediction, Dice mean 20.0"
    assert class_names(tiny_study.plans[3]) == {str(v): f"{v}: {n}" for v, n in ds.labels.items()
                                           if v}


def test_overlays_reject_a_prediction_on_another_grid(tiny_study, tmp_path) -> None:
    ds = load_dataset(tiny_study.raw)
    cid = ds.training[0].case_id
    img = nib.load(ds.case(cid).label)
    save_nifti(tmp_path / "pred" / f"{cid}.nii.gz",
               np.zeros(tuple(s + 1 for s in img.shape), np.uint8), img.affine)
    csv = _scores(tmp_path / "fold0.csv", [cid], [0.5])
    with pytest.raises(DataError, match=f"{cid}.*prediction grid"):
        plot_overlays(tiny_study.raw, {0: csv}, {0: tmp_path / "pred"}, tmp_path / "ov.png",
                      title="t")
