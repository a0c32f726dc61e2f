"""PNG plots written beside ``tables.md``: what people look at before they trust a number.

- :func:`plot_training_curves`: one run's ``metrics.csv`` of every fold: loss, validation
  Dice (mean and per class) and learning rate per epoch.
- :func:`plot_dice_per_class`: box plots of each class's Dice across cases and folds, one box
  per run, from the evaluation CSVs.
- :func:`plot_throughput`: samples/s against batch size from the benchmark JSONs.
- :func:`plot_overlays`: image, reference and prediction on the axial slice with the most
  labelled (foreground) reference voxels, for the worst, median and best case of a run.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so nothing depends on a
display or on global pyplot state, saved atomically, and returned (tests read their data).

An empty cell of an evaluation CSV (NaN) is a class absent from both reference and
prediction in that case, not scored (:mod:`nnpipe.metrics`): it is not drawn,
not averaged, and shown as "n/a" where a number would be written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from nnpipe.datasets.layout import (
    load_dataset,
    prediction_path,
    read_image,
    read_label,
    read_label_file,
)
from nnpipe.errors import DataError
from nnpipe.geometry import grid_difference, spacing_of
from nnpipe.io import atomic_path, read_json
from nnpipe.planning.plan import Plan
from nnpipe.study import PRECISIONS

DPI = 110
# Label colours: 1 edema (gold), 2 non-enhancing core (blue), 3 enhancing rim (red) in
# BraTS; further labels cycle. Dark enough for lines on white, bright enough over grey MRI.
LABEL_COLOURS = ("#e6ab02", "#1f78b4", "#e31a1c", "#33a02c", "#cc79a7", "#56b4e9")
FOLD_COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
# Precisions in a fixed order and colour, so every panel and plot shows fp32 the same way.
PRECISION_ORDER = PRECISIONS
PRECISION_COLOURS = {"fp32": "#0072b2", "tf32": "#009e73", "amp": "#d55e00", "bf16": "#cc79a7"}


def _save(fig: Figure, out_png: Path | str) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")


def _read_csv(path: Path | str, required: Sequence[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot be read as CSV ({exc})", path=path) from exc
    missing = [c for c in required if c not in table.columns]
    if missing or len(table) == 0:
        raise DataError(f"needs the columns {list(required)} and at least one row "
                        f"(missing: {missing})", path=path)
    return table


def _class_columns(table: pd.DataFrame, prefix: str) -> list[tuple[str, str]]:
    """``(class, column)`` of the per-class columns ``<prefix><class>`` in file order.

    A class is a label value (``dice_2``) or, in region mode, a region name (``dice_WT``);
    ``<prefix>mean`` is the mean of the classes, not a class.
    """
    return [(c[len(prefix):], c) for c in table.columns
            if c.startswith(prefix) and c != f"{prefix}mean" and "_" not in c[len(prefix):]]


def _label(names: Mapping[str, str], cls: str) -> str:
    return names.get(cls, f"class {cls}")


def _percent(fraction: float, digits: int) -> str:
    """A Dice fraction as percent text; "n/a" for NaN (not scored)."""
    return "n/a" if np.isnan(fraction) else f"{100 * fraction:.{digits}f}"


# ---------------------------------------------------------------- training curves


def plot_training_curves(metrics: Mapping[int, Path | str], out_png: Path | str, *,
                         title: str, class_names: Mapping[str, str] | None = None) -> Figure:
    """One run's training: a 2×2 figure of loss, validation Dice, Dice per class and lr.

    ``metrics``: fold -> ``metrics.csv`` (columns ``epoch, train_loss, val_loss,
    val_dice_mean, val_dice_<c>, lr``). Each fold is one colour; Dice per class is the mean
    over folds of each epoch, so the classes stay readable with 5 folds.
    """
    if not metrics:
        raise ValueError("plot_training_curves needs at least one fold's metrics.csv")
    names = class_names or {}
    tables = {f: _read_csv(p, ("epoch", "train_loss", "val_loss", "val_dice_mean", "lr"))
              for f, p in sorted(metrics.items())}
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    (ax_loss, ax_dice), (ax_cls, ax_lr) = fig.subplots(2, 2, sharex=True)
    same_lr = all(t["lr"].equals(next(iter(tables.values()))["lr"]) for t in tables.values())
    for i, (fold, t) in enumerate(tables.items()):
        colour = FOLD_COLOURS[i % len(FOLD_COLOURS)]
        ax_loss.plot(t["epoch"], t["train_loss"], color=colour, label=f"fold {fold}")
        ax_loss.plot(t["epoch"], t["val_loss"], color=colour, ls="--")
        ax_dice.plot(t["epoch"], 100 * t["val_dice_mean"], color=colour, marker=".",
                     label=f"fold {fold}")
        if not same_lr:
            ax_lr.plot(t["epoch"], t["lr"], color=colour, label=f"fold {fold}")
    if same_lr:  # one schedule for every fold: one line instead of hidden overlaps
        first = next(iter(tables.values()))
        ax_lr.plot(first["epoch"], first["lr"], color="black", label="every fold")
    # line styles explained once rather than per fold
    ax_loss.plot([], [], color="0.3", label="train (solid)")
    ax_loss.plot([], [], color="0.3", ls="--", label="validation (dashed)")
    both = pd.concat(tables.values())
    per_epoch = both.groupby("epoch").mean(numeric_only=True)
    for i, (c, col) in enumerate(_class_columns(both, "val_dice_")):
        ax_cls.plot(per_epoch.index, 100 * per_epoch[col],
                    color=LABEL_COLOURS[i % len(LABEL_COLOURS)], marker=".",
                    label=_label(names, c))
    ax_cls.plot(per_epoch.index, 100 * per_epoch["val_dice_mean"], color="black", ls="--",
                label="mean of classes")
    ax_loss.set(title="Loss (the training objective)", ylabel="loss")
    ax_dice.set(title="Validation Dice, mean of classes", ylabel="Dice [%]", ylim=(0, 100))
    ax_cls.set(title=f"Validation Dice per class, mean of {len(tables)} fold(s)",
               ylabel="Dice [%]", ylim=(0, 100), xlabel="epoch")
    ax_lr.set(title="Learning rate", ylabel="lr", xlabel="epoch")
    lr = both["lr"].to_numpy(dtype=float)
    if np.all(lr > 0) and lr.max() / lr.min() > 20:
        ax_lr.set_yscale("log")
    else:
        ax_lr.set_ylim(0, lr.max() * 1.15 if lr.max() > 0 else 1)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (ax_loss, ax_dice, ax_cls, ax_lr):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    ax_dice.legend(fontsize=7, loc="lower right")
    ax_cls.legend(fontsize=7, loc="lower right")
    ax_lr.legend(fontsize=7)
    fig.suptitle(f"{title}: training curves of {len(tables)} fold(s); validation = fixed "
                 "patches of each fold's held-out cases, not whole volumes")
    _save(fig, out_png)
    return fig


# ---------------------------------------------------------------- Dice per class


def read_scores(fold_csvs: Mapping[int, Path | str]) -> pd.DataFrame:
    """A run's evaluation CSVs as one table with a ``fold`` column."""
    parts = []
    for fold, path in sorted(fold_csvs.items()):
        t = _read_csv(path, ("case", "dice_mean"))
        parts.append(t.assign(fold=fold))
    return pd.concat(parts, ignore_index=True)


def plot_dice_per_class(runs: Mapping[str, Mapping[int, Path | str]], out_png: Path | str, *,
                        class_names: Mapping[str, str], dataset: str = "") -> Figure:
    """Box plots of Dice [%] per class (and their mean) across cases and folds, box per run.

    ``dataset``: the study's dataset, named in the title.

    ``runs``: run name (``3d-fp32-1gpu``) -> fold -> evaluation CSV. Every case is drawn as a
    dot over its box: with a few dozen cases the spread is worth seeing, not just quartiles.
    Only scored cells are drawn and averaged; a class scored in no case of a run gets no
    box and "n/a" above it.
    """
    if not runs:
        raise ValueError("plot_dice_per_class needs at least one run")
    scores = {name: read_scores(csvs) for name, csvs in runs.items()}
    classes = [(i, _label(class_names, c), col)
               for i, (c, col) in enumerate(_class_columns(next(iter(scores.values())), "dice_"))]
    panels = [*classes, (-1, "mean of classes", "dice_mean")]
    fig = Figure(figsize=(max(3.0 * len(panels), 2.2 * len(panels) * len(runs) / 2), 4.8),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    rng = np.random.default_rng(0)  # fixed jitter: the same inputs give the same picture
    for ax, (c, label, col) in zip(axes, panels, strict=True):
        data = [100 * s[col].dropna().to_numpy(dtype=float) if col in s else np.array([])
                for s in scores.values()]
        colour = "0.6" if c < 0 else LABEL_COLOURS[c % len(LABEL_COLOURS)]
        ax.boxplot(data, tick_labels=list(scores), widths=0.55, showfliers=False,
                   patch_artist=True, boxprops={"facecolor": colour, "alpha": 0.45},
                   medianprops={"color": "black"})
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=10, color="black",
                       alpha=0.6, zorder=3)
            ax.text(i, 101, f"{np.mean(d):.1f}" if len(d) else "n/a", ha="center",
                    va="bottom", fontsize=8)
        ax.set_title(label, pad=16)
        ax.set_ylim(-3, 108)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30 if len(scores) > 2 else 0, labelsize=8)
    axes[0].set_ylabel("Dice [%] per case (numbers: mean)")
    n_cases = {name: len(s) for name, s in scores.items()}
    fig.suptitle((f"{dataset}: " if dataset else "")
                 + "Dice per class across cases and folds (original image space); "
                 f"cases per run: {', '.join(f'{k} {v}' for k, v in n_cases.items())}",
                 fontsize=10)
    _save(fig, out_png)
    return fig


# ---------------------------------------------------------------- throughput


def plot_throughput(records: Sequence[Mapping[str, Any] | Path | str],
                    out_png: Path | str) -> Figure:
    """Samples/s against batch size: training and inference, one panel per (mode, dim).

    ``records``: benchmark JSON contents or paths. One line per (precision, GPUs); the x axis
    is logarithmic in base 2 with the measured batch sizes as ticks.
    """
    recs = [read_json(r) if isinstance(r, str | Path) else r for r in records]
    if not recs:
        raise ValueError("plot_throughput needs at least one benchmark record")
    frame = pd.DataFrame([{"mode": r["mode"], "dim": int(r["dim"]), "precision": r["precision"],
                           "gpus": int(r["gpus"]), "bs": int(r["batch_size"]),
                           "thr": float(r["throughput"])} for r in recs])
    panels = [(m, d) for m in ("train", "predict") for d in sorted(frame["dim"].unique())
              if ((frame["mode"] == m) & (frame["dim"] == d)).any()]
    fig = Figure(figsize=(5.2 * len(panels) if len(panels) < 3 else 10.5,
                          4.2 if len(panels) < 3 else 8.0), layout="constrained")
    ncols = len(panels) if len(panels) < 3 else 2
    axes = np.atleast_1d(fig.subplots(-(-len(panels) // ncols), ncols)).ravel()
    order = {p: i for i, p in enumerate(PRECISION_ORDER)}
    frame = frame.sort_values(["precision", "gpus", "bs"],
                              key=lambda s: s.map(order) if s.name == "precision" else s)
    precisions = list(dict.fromkeys(frame["precision"]))
    markers = ("o", "s", "^", "D", "v")
    for ax, (mode, dim) in zip(axes, panels, strict=False):
        sub = frame[(frame["mode"] == mode) & (frame["dim"] == dim)]
        for (p, g), line in sub.groupby(["precision", "gpus"], sort=False):
            line = line.sort_values("bs")
            ax.plot(line["bs"], line["thr"], marker=markers[precisions.index(p) % len(markers)],
                    color=PRECISION_COLOURS.get(p), ls="-" if g == 1 else "--",
                    label=f"{p}, {g} GPU{'s' if g > 1 else ''}")
            for x, y in zip(line["bs"], line["thr"], strict=True):
                ax.annotate(f"{y:.1f}" if y >= 10 else f"{y:.2f}", (x, y),
                            textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ax.set_xscale("log", base=2)
        ticks = sorted(sub["bs"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(0, sub["thr"].max() * 1.2)
        what = "training" if mode == "train" else "inference (patches)"
        ax.set(title=f"{dim}D {what}",
               xlabel="batch size per GPU" if mode == "train" else "batch size",
               ylabel="samples/s (global)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    devices = sorted({str(r.get("device", "unknown")) for r in recs})
    fig.suptitle("Throughput against batch size (global batch / mean step time after warm-up)"
                 f"\nran on: {'; '.join(devices)}", fontsize=10)
    _save(fig, out_png)
    return fig


# ---------------------------------------------------------------- overlays


def pick_cases(runs_scores: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The worst, median and best case by ``dice_mean`` (``n`` spread evenly; ties by id).

    Cases without a scored class (``dice_mean`` NaN) have no rank and are never picked.
    """
    scored = runs_scores[runs_scores["dice_mean"].notna()]
    ranked = scored.sort_values(["dice_mean", "case"], kind="stable").reset_index(drop=True)
    if len(ranked) <= n:
        return ranked
    picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return ranked.iloc[picks].reset_index(drop=True)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """In-plane (X, Y) box of ``mask`` (X, Y, Z) with ``margin`` voxels; all of Z."""
    if not mask.any():
        return (slice(None), slice(None), slice(None))
    box = []
    for axis in (0, 1):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + margin + 1))
    return (box[0], box[1], slice(None))


def _window(slice_: np.ndarray) -> tuple[float, float]:
    values = slice_[slice_ != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, (1, 99.5))
    return float(lo), float(hi if hi > lo else lo + 1)


def plot_overlays(raw_dir: Path | str, fold_csvs: Mapping[int, Path | str],
                  pred_dirs: Mapping[int, Path | str], out_png: Path | str, *, title: str,
                  n_cases: int = 3, channel: int = 0) -> Figure:
    """Image, reference and prediction on the axial slice with the most labelled voxels.

    Cases: the worst, median and best of the run by Dice (from ``fold_csvs``; each case was
    predicted by the fold that held it out, read from ``pred_dirs[fold]/<case><ending>``).
    Volumes are reoriented to RAS+ so that every case is shown the same way (anterior up,
    patient's right on the right), with the voxel spacing as aspect ratio.
    """
    ds = load_dataset(raw_dir)
    scores = read_scores(fold_csvs)
    picked = pick_cases(scores, n_cases)
    if len(picked) == 0:
        files = ", ".join(str(f) for f in fold_csvs.values())
        raise DataError(f"no case in {files} has a scored class (every dice_mean is empty): "
                        "no worst, median or best case to show")
    # colour of class index k (label values through the dataset's value <-> index table)
    table = ds.label_table
    cmap = ListedColormap(["none", *(LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)]
                                     for k in range(1, table.num_classes))])
    fig = Figure(figsize=(10.5, 3.4 * len(picked) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(picked), 3))
    for row, case in zip(axes, picked.itertuples(index=False), strict=True):
        cid, fold = str(case.case), int(case.fold)
        entry = ds.case(cid)
        ci = read_image(ds, entry)  # the reader gives RAS+ voxel order
        label = read_label(ds, entry, ci).values
        pred_path = prediction_path(pred_dirs[fold], cid)
        pred, pred_affine = read_label_file(pred_path, case=cid)
        diff = grid_difference(label.shape, ci.affine, pred.shape, pred_affine)
        if diff:
            raise DataError(f"prediction grid differs from the reference's: {diff}", case=cid,
                            path=pred_path)
        img, spacing = ci.image[channel], spacing_of(ci.affine)
        ref = table.to_indices(label, case=cid)
        if table.ignore_index is not None:  # sparse annotations: unannotated not drawn
            ref[ref == table.ignore_index] = 0
        prd = table.to_indices(pred, case=cid, path=pred_path)
        z = int(np.argmax((ref > 0).sum(axis=(0, 1))))
        # crop to the head's in-plane box (nonzero anywhere in the volume), 2 voxels margin,
        # so the slice fills the panel instead of a frame of empty background
        box = _bounding_box(img != 0, margin=2)
        img, ref, prd = img[box], ref[box], prd[box]
        aspect = spacing[1] / spacing[0]  # rows are Y, columns X after the transpose below
        lo, hi = _window(img[:, :, z])
        dice = case._asdict()
        parts = [f"{ds.labels.get(int(c), c) if c.isdigit() else c} {_percent(dice[col], 0)}"
                 for c, col in _class_columns(picked, "dice_")]
        panels = [(None, f"{ds.channels[channel]}, slice z={z}"),
                  (ref, f"reference ({int((ref[:, :, z] > 0).sum())} labelled voxels)"),
                  (prd, f"prediction, Dice mean {_percent(dice['dice_mean'], 1)}")]
        for ax, (overlay, panel_title) in zip(row, panels, strict=True):
            ax.imshow(img[:, :, z].T, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                      aspect=aspect, interpolation="nearest")
            if overlay is not None:
                ax.imshow(overlay[:, :, z].T, cmap=cmap, vmin=0, vmax=cmap.N - 1,
                          alpha=0.55, origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_title(panel_title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"{cid} (fold {fold})\n" + ", ".join(parts), fontsize=8)
    handles = [Patch(color=LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)], label=f"{v}: {n}")
               for k, (v, n) in enumerate(sorted(ds.scheme.names.items())) if v > 0]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"{title}: worst, median and best case by Dice; axial slice with the most "
                 "labelled reference voxels (RAS, anterior up)", fontsize=10)
    _save(fig, out_png)
    return fig


def class_names(plan: Plan | Path | str, legacy_regions: bool = False) -> dict[str, str]:
    """Display names of the scored classes from a plan's label scheme (the label concept
    recorded at planning: labels, or regions, without the ignore value of sparse labels).

    Keyed by the column suffix: label value (``"2"`` -> ``"2: non-enhancing tumor"``); in
    region mode by region name (``"WT"``, evaluation CSVs) and by its position (``"1"``,
    ``metrics.csv``), both -> ``"WT (labels 1, 2, 3)"``. ``legacy_regions``: region mode of a
    plan older than the recorded scheme (config ``training.regions``, as training read it).
    """
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    scheme = plan.scheme(legacy_regions=legacy_regions)
    if not scheme.region_mode:
        return {str(v): f"{v}: {n}" for v, n in scheme.names.items() if v > 0}
    names: dict[str, str] = {}
    for i, region in enumerate(scheme.regions, start=1):
        text = f"{region.name} (labels {', '.join(map(str, region.labels))})"
        names[region.name] = names[str(i)] = text
    return names
