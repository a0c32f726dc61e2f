"""``results/tables.md``: the reference's three table families, rendered from outputs only.

1. Training accuracy: Dice and time to train per (dim, GPUs), one column pair per precision
   (rows for the low-resolution cascade's two stages, ``3d_lowres`` and ``3d_cascade``, after
   the 3D rows when the study plans it); then the best configuration (``best.json``,
   :mod:`nnpipe.report.best_table`).
2. Training throughput: samples/s per (dim, GPUs, batch/GPU) and precision, speedup over the
   first precision, weak scaling.
3. Inference throughput: samples/s and latency per (dim, batch, resolution) and precision.

:func:`render_tables` is pure (numbers in, markdown out); :func:`render_inputs` reads the files
it is given (:class:`TableInputs`: the tables rule's declared inputs, each read back into its
run, fold or benchmark cell by the study grammar, :func:`nnpipe.study.parse_path`) and writes
the markdown atomically; :func:`collect_and_render` (``nnpipe tables``) gives it the files of
the grid that exist. A cell without a measurement
says why in words ("missing: <path>", "— (1 GPU not in grid)"), never shows a number.
Under each table, links to the PNG plots (:mod:`nnpipe.report.plots`) written beside it in
``plots/``; a plot that is not there is named as not rendered.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from nnpipe.benchmark.steady import record_failure, steps_for_quantile
from nnpipe.errors import DataError
from nnpipe.io import read_json, write_text
from nnpipe.machine import machine_info
from nnpipe.report.best_table import best_section
from nnpipe.study import CASCADE_STAGES, StudyFile, StudyPaths, parse_path, run_name

if TYPE_CHECKING:
    from nnpipe.config import StudyConfig

BENCH_KEYS = ("mode", "dim", "precision", "batch_size", "gpus", "patch_size", "throughput",
              "latency_ms")
LATENCY_KEYS = ("mean", "p90", "p95", "p99")


class RunKey(NamedTuple):
    """One training run of the grid (plain tuples ``(dim, precision, gpus, fold)`` work too);
    ``dim`` is 2 or 3, or a cascade configuration's name (``"3d_lowres"``, ``"3d_cascade"``)."""

    dim: int | str
    precision: str
    gpus: int
    fold: int


@dataclass(frozen=True)
class TableGrid:
    """The configured experiment grid: which rows and columns the tables have."""

    dims: tuple[int, ...]
    precisions: tuple[str, ...]  # training precisions; the first is the speedup baseline
    gpus: tuple[int, ...]
    folds: tuple[int, ...]
    bench_precisions: tuple[str, ...]
    bench_gpus: tuple[int, ...]  # process counts of the training benchmark
    train_batch_sizes: Mapping[int, tuple[int, ...]]  # dim -> benchmark batch sizes per GPU
    predict_batch_sizes: Mapping[int, tuple[int, ...]]  # dim -> inference benchmark batches
    cascade: bool = False  # the study runs the low-resolution cascade (planned for the data)

    @property
    def benchmarked(self) -> bool:
        """Whether the study has any benchmark cell (``benchmark.precisions`` and one of the
        dims' batch-size lists non-empty); without one there is no throughput plot."""
        return bool(self.bench_precisions) and any(
            self.train_batch_sizes.get(d) or self.predict_batch_sizes.get(d) for d in self.dims)

    @property
    def configurations(self) -> tuple[int | str, ...]:
        """Rows of the accuracy table: the dims, then the cascade's stages when planned."""
        return (*self.dims, *(CASCADE_STAGES if self.cascade else ()))

    @classmethod
    def from_study(cls, study: StudyConfig) -> TableGrid:
        """The grid of a validated study config (its ``grid`` and ``benchmark`` sections)."""
        grid, bench = study.grid, study.benchmark
        return cls(dims=grid.dims, precisions=grid.precisions, gpus=grid.gpus, folds=grid.folds,
                   bench_precisions=bench.cells_precisions(), bench_gpus=bench.gpus,
                   train_batch_sizes={d: bench.train_batch_sizes(d) for d in grid.dims},
                   predict_batch_sizes={d: bench.predict_batch_sizes(d) for d in grid.dims})


# ---------------------------------------------------------------- the path grammar (nnpipe.study)


def best_json_path(results_dir: Path | str, dataset: str) -> str:
    return StudyPaths(str(results_dir), dataset).best


def eval_csv_path(results_dir: Path | str, dataset: str, dim: int | str, precision: str,
                  gpus: int, fold: int | str) -> Path:
    return Path(StudyPaths(str(results_dir), dataset).eval_csv(dim, precision, gpus, fold))


def train_json_path(results_dir: Path | str, dataset: str, dim: int | str, precision: str,
                    gpus: int, fold: int | str) -> Path:
    return Path(StudyPaths(str(results_dir), dataset).train_json(dim, precision, gpus, fold))


def bench_json_path(results_dir: Path | str, dataset: str, mode: str, dim: int, precision: str,
                    batch_size: int, gpus: int) -> Path:
    return Path(StudyPaths(str(results_dir), dataset).bench_json(mode, dim, precision,
                                                                 batch_size, gpus))


class PlotLink(NamedTuple):
    """A PNG linked from ``tables.md``: under which table, its label, where, whether it exists."""

    section: str  # "accuracy" (under the Dice table) or "throughput" (under both others)
    family: str  # "training curves", ...: one list item per family
    label: str
    href: str  # relative to tables.md
    present: bool = True


def study_plots(grid: TableGrid, paths: StudyPaths | None = None
                ) -> list[tuple[str, str, str, str]]:
    """``(section, family, label, path)`` of every plot: the path of ``paths``'s study, or
    relative to the study's dataset folder (``plots/...``) without ``paths``.

    The plot rules in ``rules/tables.smk`` write exactly these files.
    """
    study = paths or StudyPaths(".", "_")

    def where(kind: str, run: str | None = None) -> str:
        path = study.run_file(kind, run) if run else study.path(kind)
        return path if paths else study.relative(path)

    runs = [run_name(d, p, g) for d in grid.configurations for p in grid.precisions
            for g in grid.gpus]
    plots = [("accuracy", "Dice per class across cases and folds", "box plots",
              where("dice_plot"))]
    plots += [("accuracy", "training curves (loss, Dice, lr)", r, where("curves_plot", r))
              for r in runs]
    plots += [("accuracy", "image, reference and prediction (worst, median, best case)", r,
               where("overlays_plot", r)) for r in runs]
    if grid.benchmarked:
        plots.append(("throughput", "throughput", "samples/s against batch size",
                      where("throughput_plot")))
    return plots


# ---------------------------------------------------------------- rendering (pure)


def render_tables(grid: TableGrid, dice: Mapping[RunKey, float],
                  train_info: Mapping[RunKey, Mapping[str, Any]], bench: Sequence[Mapping],
                  machine: Mapping[str, str], *, dataset: str,
                  results_dir: Path | str = "results", plots: Sequence[PlotLink] = (),
                  left_out: Mapping[int, str] | None = None,
                  best: Mapping[str, Any] | None = None, cascade_why: str = "",
                  classes: Mapping[int, str] | None = None, demo: bool = False) -> str:
    """The whole ``tables.md``.

    ``dice``: fold Dice in percent per ``RunKey`` (NaN: no class scored in any case of the
    fold, see :func:`read_fold_dice`); ``train_info``: ``train.json`` contents per
    ``RunKey``; ``bench``: benchmark JSON contents; ``machine``: cpu, gpu, torch, monai and
    nnpipe versions; ``plots``: PNGs to link under the tables. Only measurements present are
    given; the rest is named as missing under ``results_dir``. ``left_out``: dims of the
    config's grid the study does not run (not in ``grid.dims``), each with why, said under
    the header. ``best``: the contents of best.json (``nnpipe best``), rendered as the
    "Best configuration" section after the accuracy table. ``cascade_why``: whether and why
    the study runs the low-resolution cascade (a sentence under the header; none if empty).
    ``classes``: the dataset's foreground labels (value -> name, dataset.json), named under
    the header; ``demo``: the embedded demo dataset, whose header says it is not BraTS.
    """
    paths = _Paths(str(results_dir), dataset)
    index = _index_bench(bench)
    accuracy = [p for p in plots if p.section == "accuracy"]
    throughput = [p for p in plots if p.section == "throughput"]
    cascade_line = (f"\nLow-resolution cascade ({', '.join(CASCADE_STAGES)}) "
                    f"{'planned' if grid.cascade else 'not planned'}: {cascade_why}.\n"
                    if cascade_why else "")
    parts = [_header(dataset, classes or {}, demo), _left_out_lines(left_out or {}), cascade_line,
             _dice_table(grid, dice, train_info, machine, paths), _plots_line(accuracy),
             best_section(best, best_json_path(results_dir, dataset)),
             _train_bench_table(grid, index, machine, paths),
             _plots_line(throughput), _predict_bench_table(grid, index, machine, paths),
             _plots_line(throughput)]
    return "".join(parts)


def _left_out_lines(left_out: Mapping[int, str]) -> str:
    """``3D runs left out: <why>.``, one paragraph per dim the study does not run."""
    return "".join(f"\n{dim}D runs left out: {why}.\n" for dim, why in sorted(left_out.items()))


def _plots_line(links: Sequence[PlotLink]) -> str:
    """A list ``- family: [label](href), ...``; a missing PNG is named, not linked."""
    if not links:
        return ""
    families: dict[str, list[str]] = {}
    for p in links:
        families.setdefault(p.family, []).append(
            f"[{p.label}]({p.href})" if p.present else f"{p.label} (not rendered: {p.href})")
    return "\nPlots:\n\n" + "".join(f"- {f}: {', '.join(c)}\n" for f, c in families.items())


@dataclass(frozen=True)
class _Paths:
    root: str
    dataset: str

    def eval(self, dim: int | str, p: str, g: int, folds: Sequence[int]) -> str:
        return str(eval_csv_path(self.root, self.dataset, dim, p, g, _folds_token(folds)))

    def train(self, dim: int | str, p: str, g: int, folds: Sequence[int]) -> str:
        return str(train_json_path(self.root, self.dataset, dim, p, g, _folds_token(folds)))

    def bench(self, mode: str, dim: int, p: str, bs: int, g: int) -> str:
        return str(bench_json_path(self.root, self.dataset, mode, dim, p, bs, g))


def _folds_token(folds: Sequence[int]) -> str:
    return str(folds[0]) if len(folds) == 1 else "{" + ",".join(map(str, folds)) + "}"


def _header(dataset: str, classes: Mapping[int, str], demo: bool) -> str:
    """Title, the dataset's classes, and what the numbers are (the demo's disclaimer only on
    the embedded demo dataset)."""
    named = ", ".join(f"{v} = {n}" for v, n in sorted(classes.items()) if v > 0)
    return (
        f"# nnpipe results: dataset `{dataset}`\n\n"
        + (f"Classes scored: {named}.\n\n" if named else "")
        + "Rendered by `nnpipe.report.tables` from the pipeline's outputs only (evaluation CSVs,\n"
        "`train.json`, benchmark JSONs). "
        + ("The embedded default dataset is small and synthetic,\n"
           "not BraTS (MSD Task01_BrainTumour), and the machine named under each table is not\n"
           "NVIDIA's DGX A100: these figures are not comparable with the reference's A100\n"
           "figures (NVIDIA's nnU-Net for PyTorch 22.11 README, Results section); they show\n"
           "the same measurements, taken here.\n" if demo else
           "Each table names the machine it was measured on.\n")
    )


def _machine_line(machine: Mapping[str, str], devices: Sequence[str] = ()) -> str:
    def get(key: str) -> str:
        return str(machine.get(key, "unknown"))

    line = (f"Machine: CPU {get('cpu')}; GPU {get('gpu')}; torch {get('torch')}, "
            f"MONAI {get('monai')}, nnpipe {get('nnpipe')}.")
    if devices:
        line += f" Benchmarks ran on: {', '.join(sorted(set(devices)))}."
    return line + "\n"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _speedup_header(precisions: Sequence[str]) -> list[str]:
    if len(precisions) <= 1:
        return ["Speedup"]
    return [f"Speedup {precisions[0]}→{p}" for p in precisions[1:]]


def _format_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _folds_note(n: int, total: int, extra: str = "") -> str:
    if n == total:
        return f"({n} fold{'s' if n > 1 else ''}{extra})"
    return f"({n} of {total} folds{extra})"


def _dice_cell(values: list[float], total: int, missing: str) -> str:
    """Mean ± sample std over the folds; a fold whose Dice is NaN (no class scored in any
    of its cases) is left out and counted, and with no fold left the cell says n/a."""
    if not values:
        return f"missing: {missing}"
    scored = [v for v in values if not math.isnan(v)]
    unscored = len(values) - len(scored)
    if not scored:
        return f"n/a (no class scored in {_folds_note(unscored, total)[1:-1]})"
    mean = statistics.fmean(scored)
    spread = f" ± {statistics.stdev(scored):.2f}" if len(scored) > 1 else ""
    extra = f"; {unscored} with no class scored" if unscored else ""
    return f"{mean:.2f}{spread} {_folds_note(len(scored), total, extra)}"


def _dice_table(grid: TableGrid, dice: Mapping[RunKey, float],
                train_info: Mapping[RunKey, Mapping[str, Any]], machine: Mapping[str, str],
                paths: _Paths) -> str:
    header = ["Dim", "GPUs", "Batch/GPU", *(f"Dice {p}" for p in grid.precisions),
              *(f"Time {p}" for p in grid.precisions), *_speedup_header(grid.precisions)]
    rows = []
    for dim in grid.configurations:
        for g in grid.gpus:
            dice_cells, time_cells, times = [], [], []
            batches: set[int] = set()
            for p in grid.precisions:
                keys = [RunKey(dim, p, g, f) for f in grid.folds]
                values = [dice[k] for k in keys if k in dice]
                dice_cells.append(_dice_cell(values, len(keys), paths.eval(dim, p, g, grid.folds)))
                infos = [train_info[k] for k in keys if k in train_info]
                batches |= {int(i["batch_size"]) for i in infos}
                t = statistics.fmean(float(i["time_to_train_s"]) for i in infos) if infos else None
                times.append(t)
                time_cells.append(_time_cell(t, len(infos), len(keys),
                                             paths.train(dim, p, g, grid.folds)))
            batch = "/".join(map(str, sorted(batches))) or "— (no train.json)"
            speedups = _ratio_cells(grid.precisions, times, "time", invert=True)
            rows.append([str(dim), str(g), batch, *dice_cells, *time_cells, *speedups])
    return ("\n## Training accuracy\n\n" + _machine_line(machine) + "\n"
            "Dice: mean over the classes scored in a case (a class absent from both reference\n"
            "and prediction is not scored), mean over a fold's validation cases, in percent;\n"
            "mean ± sample std over folds. Time: wall time of one fold's training, mean over\n"
            "folds. Speedup: time of the first precision / time of the other.\n\n"
            + _md_table(header, rows))


def _time_cell(seconds: float | None, n: int, total: int, missing: str) -> str:
    if seconds is None:
        return f"missing: {missing}"
    return _format_time(seconds) + ("" if n == total else f" {_folds_note(n, total)}")


def _ratio_cells(precisions: Sequence[str], values: Sequence[float | None], what: str,
                 invert: bool) -> list[str]:
    """Speedup cells of each precision after the first, against the first."""
    if len(precisions) == 1:
        return ["— (one precision in grid)"]
    base = values[0]
    cells = []
    for p, v in zip(precisions[1:], values[1:], strict=True):
        if base is None or v is None:
            cells.append(f"— (no {what} for {precisions[0] if base is None else p})")
        else:
            cells.append(f"{(base / v) if invert else (v / base):.2f}")
    return cells


BenchIndex = dict[tuple[str, int, str, int, int], Mapping[str, Any]]


def _index_bench(bench: Sequence[Mapping[str, Any]]) -> BenchIndex:
    index: BenchIndex = {}
    for b in bench:
        key = (str(b["mode"]), int(b["dim"]), str(b["precision"]), int(b["batch_size"]),
               int(b["gpus"]))
        if key in index:
            raise ValueError(f"two benchmark results for mode/dim/precision/batch/gpus {key}")
        index[key] = b
    return index


def _train_bench_table(grid: TableGrid, index: BenchIndex, machine: Mapping[str, str],
                       paths: _Paths) -> str:
    ps = grid.bench_precisions
    if not ps:
        return "\n## Training throughput\n\n" + _NOT_BENCHMARKED
    header = ["Dim", "GPUs", "Batch/GPU", *(f"{p} [samples/s]" for p in ps),
              *_speedup_header(ps), *(f"Weak scaling {p}" for p in ps)]
    rows, devices = [], []
    for dim in grid.dims:
        for g in grid.bench_gpus:
            for bs in grid.train_batch_sizes.get(dim, ()):
                found = [index.get(("train", dim, p, bs, g)) for p in ps]
                devices += [str(b.get("device", "unknown")) for b in found if b is not None]
                thr = [float(b["throughput"]) if b else None for b in found]
                cells = [_throughput_cell(b, paths.bench("train", dim, p, bs, g))
                         for p, b in zip(ps, found, strict=True)]
                scaling = [_weak_scaling(grid, index, dim, p, bs, g, t)
                           for p, t in zip(ps, thr, strict=True)]
                rows.append([str(dim), str(g), str(bs), *cells,
                             *_bench_ratio_cells(ps, found), *scaling])
    return ("\n## Training throughput\n\n" + _machine_line(machine, devices) + "\n"
            "samples/s = global batch / mean step time after warm-up steps, as in the reference;\n"
            "in brackets the same from the median, p90 and p99 step time (p99 from 368 steps).\n"
            + _FAILED_NOTE +
            "Speedup: throughput of a precision / throughput of the first. Weak scaling:\n"
            "throughput at N GPUs / throughput at 1 GPU with the same batch per GPU (ideal: N),\n"
            "as in the reference.\n\n"
            + _md_table(header, rows))


_NOT_BENCHMARKED = ("Not measured in this study: `benchmark.enabled` is false or"
                    " `benchmark.precisions` is empty.\n")
_FAILED_NOTE = ("A cell says \"not a result\" only when the measurement failed (fewer than 4\n"
                "timed steps, or mean and median step time more than 30 % apart) and says\n"
                "what to do.\n")


def _failed(record: Mapping[str, Any] | None) -> str | None:
    """Why a benchmark record's figure is not a result (the measurement failed:
    :func:`nnpipe.benchmark.steady.record_failure`), or ``None``."""
    return None if record is None else record_failure(record)


def _throughput_cell(record: Mapping[str, Any] | None, path: str, beside: bool = True) -> str:
    """samples/s from the mean step time, as the reference; ``beside``: the median-based
    figure and the figures at the p90 and p99 step times after it (p99 only once enough
    steps bound it). A missing record names its file; a failed measurement says why and
    what to do, without the number (the record keeps it)."""
    if record is None:
        return f"missing: {path}"
    why = _failed(record)
    if why is not None:
        steps = record.get("timed_steps")
        return (f"not a result: {why}{f' ({steps} steps)' if steps else ''}; "
                f"snakemake --forcerun {path}")
    thr = float(record["throughput"])
    lat = record["latency_ms"]
    if not beside or "median" not in lat:
        return f"{thr:.2f}"
    # global batch / step time: the mean-based figure scaled by mean / that step time
    at = {k: thr * float(lat["mean"]) / float(lat[k]) for k in ("median", "p90", "p99")}
    extra = [f"median {at['median']:.2f}", f"p90 {at['p90']:.2f}"]
    if record.get("p99_resolved") is not False:
        extra.append(f"p99 {at['p99']:.2f}")
    return f"{thr:.2f} ({', '.join(extra)})"


def _bench_ratio_cells(ps: Sequence[str], found: Sequence[Mapping[str, Any] | None]
                       ) -> list[str]:
    """Speedups over the first precision; none computed from a failed measurement."""
    thr = [float(b["throughput"]) if b else None for b in found]
    cells = _ratio_cells(ps, thr, "throughput", invert=False)
    if len(ps) == 1 or found[0] is None:
        return cells
    for i, b in enumerate(found[1:]):
        shaky = [p for p, r in ((ps[0], found[0]), (ps[i + 1], b)) if _failed(r)]
        if shaky and b is not None:
            cells[i] = f"— ({' and '.join(shaky)} not a result)"
    return cells


def _weak_scaling(grid: TableGrid, index: BenchIndex, dim: int, p: str, bs: int, g: int,
                  thr: float | None) -> str:
    if g == 1:
        return "— (1-GPU baseline)"
    if 1 not in grid.bench_gpus:
        return "— (1 GPU not in grid)"
    one = index.get(("train", dim, p, bs, 1))
    if thr is None or one is None:
        return f"— (no {'1-GPU' if one is None else f'{g}-GPU'} measurement)"
    shaky = [f"{n}-GPU" for n, r in ((1, one), (g, index.get(("train", dim, p, bs, g))))
             if _failed(r)]
    if shaky:
        return f"— ({' and '.join(shaky)} measurement not a result)"
    return f"{thr / float(one['throughput']):.2f}"


def _predict_bench_table(grid: TableGrid, index: BenchIndex, machine: Mapping[str, str],
                         paths: _Paths) -> str:
    ps = grid.bench_precisions
    if not ps:
        return "\n## Inference throughput\n\n" + _NOT_BENCHMARKED
    header = ["Dim", "Batch", "Resolution"]
    for p in ps:
        header += [f"{p} [samples/s]", f"{p} latency mean / p90 / p95 / p99 [ms]"]
    rows, devices = [], []
    for dim in grid.dims:
        for bs in grid.predict_batch_sizes.get(dim, ()):
            found = [index.get(("predict", dim, p, bs, 1)) for p in ps]
            present = [b for b in found if b is not None]
            devices += [str(b.get("device", "unknown")) for b in present]
            resolution = (_resolution(present[0]["patch_size"]) if present
                          else "unknown (no benchmark file)")
            row = [str(dim), str(bs), resolution]
            for p, b in zip(ps, found, strict=True):
                cell = _throughput_cell(b, paths.bench("predict", dim, p, bs, 1),
                                        beside=False)  # the latency column has them
                if b is None:
                    row += [cell, "— (no benchmark file)"]
                elif _failed(b):
                    row += [cell, "— (not a result)"]
                else:
                    row += [cell, _latency_cell(b)]
            rows.append(row)
    return ("\n## Inference throughput\n\n" + _machine_line(machine, devices) + "\n"
            "Patch inference on 1 process (no sliding window), as in the reference; samples/s\n"
            "from the mean step time, latency per batch.\n" + _FAILED_NOTE + "\n"
            + _md_table(header, rows))


def _latency_cell(record: Mapping[str, Any]) -> str:
    """mean / p90 / p95 / p99 in ms; a p99 from too few steps to bound it is not printed."""
    lat = record["latency_ms"]
    parts = [f"{float(lat[k]):.2f}" for k in LATENCY_KEYS]
    if record.get("p99_resolved") is False:
        parts[-1] = (f"n/a ({record.get('timed_steps', '?')} < "
                     f"{record.get('p99_min_steps', steps_for_quantile())} steps)")
    return " / ".join(parts)


def _resolution(patch_size: Sequence[int]) -> str:
    """``192×160``, or ``128³`` for a cube, as the reference writes them."""
    sizes = [int(s) for s in patch_size]
    if len(sizes) == 3 and len(set(sizes)) == 1:
        return f"{sizes[0]}³"
    return "×".join(map(str, sizes))


# ---------------------------------------------------------------- reading the outputs


@dataclass(frozen=True)
class TableInputs:
    """The files ``tables.md`` is rendered from: the tables rule's declared inputs
    (``rules/common.smk`` ``get_table_inputs``), or for ``nnpipe tables`` the files of the
    grid that exist. Each is read back into its run, fold or benchmark cell by its path
    (:func:`nnpipe.study.parse_path`); a file of another kind is refused."""

    evaluations: Sequence[str] = ()  # evaluate/RUN/foldF.csv
    train: Sequence[str] = ()  # train/RUN/foldF/train.json
    benchmarks: Sequence[str] = ()  # benchmark/<cell>.json
    best: str | None = None  # best.json
    dataset: str | None = None  # raw/dataset.json (the classes named under the header)
    plots: Sequence[str] = ()  # the PNGs that exist (linked; the others named not rendered)

    @classmethod
    def existing(cls, paths: StudyPaths, grid: TableGrid) -> TableInputs:
        """The files of ``grid`` in the study ``paths`` that exist (``nnpipe tables``)."""
        def have(files: Sequence[str]) -> list[str]:
            return [f for f in files if Path(f).is_file()]

        keys = [dict(config=d, precision=p, gpus=g, fold=f) for d in grid.configurations
                for p in grid.precisions for g in grid.gpus for f in grid.folds]
        best, dataset = paths.best, paths.path("dataset_json")
        return cls(evaluations=have([paths.path("scores", **k) for k in keys]),
                   train=have([paths.path("train_json", **k) for k in keys]),
                   benchmarks=have([paths.path("benchmark", **c) for c in bench_cells(grid)]),
                   best=best if Path(best).is_file() else None,
                   dataset=dataset if Path(dataset).is_file() else None,
                   plots=have([path for *_, path in study_plots(grid, paths)]))

    @classmethod
    def from_rule(cls, inputs: Any) -> TableInputs:
        """A Snakemake job's named ``input`` (or a mapping of the same names): lists
        ``evaluations``, ``train``, ``benchmarks``, ``plots``; files ``best`` and
        ``dataset`` (optional)."""
        def get(name: str) -> Any:
            return inputs.get(name) if isinstance(inputs, Mapping) else getattr(
                inputs, name, None)

        def many(name: str) -> list[str]:
            return [str(p) for p in get(name) or ()]

        return cls(evaluations=many("evaluations"), train=many("train"),
                   benchmarks=many("benchmarks"), best=str(get("best") or "") or None,
                   dataset=str(get("dataset") or "") or None, plots=many("plots"))


def bench_cells(grid: TableGrid) -> list[dict[str, Any]]:
    """The benchmark cells of ``grid`` as the fields of their file name (mode, dim, precision,
    bs, gpus; rules/common.smk ``benchmark_keys`` names the same cells)."""
    cells: list[dict[str, Any]] = []
    for dim in grid.dims:
        for p in grid.bench_precisions:
            cells += [dict(mode="train", dim=dim, precision=p, bs=bs, gpus=g)
                      for g in grid.bench_gpus for bs in grid.train_batch_sizes.get(dim, ())]
            cells += [dict(mode="predict", dim=dim, precision=p, bs=bs, gpus=1)
                      for bs in grid.predict_batch_sizes.get(dim, ())]
    return cells


def collect_and_render(results_dir: Path | str, dataset: str, grid: TableGrid,
                       out_path: Path | str, machine: Mapping[str, str] | None = None,
                       left_out: Mapping[int, str] | None = None,
                       cascade_why: str = "", demo: bool = False) -> str:
    """Read every output the grid names that exists (:meth:`TableInputs.existing`), render,
    write ``out_path`` atomically; returns the markdown (:func:`render_inputs`)."""
    inputs = TableInputs.existing(StudyPaths(str(results_dir), dataset), grid)
    return render_inputs(results_dir, dataset, grid, inputs, out_path, machine=machine,
                         left_out=left_out, cascade_why=cascade_why, demo=demo)


def _run_key(file: StudyFile) -> RunKey:
    """The grid's key of a per-fold file: dim 2 or 3 for 2d/3d, else the configuration."""
    config = str(file.fields["config"])
    dim: int | str = int(config[0]) if config in ("2d", "3d") else config
    return RunKey(dim, str(file.fields["precision"]), int(file.fields["gpus"]),
                  int(file.fields["fold"]))


def _read_as(path: str, kind: str, dataset: str) -> StudyFile:
    """``path`` read back by the study grammar, refused unless a ``kind`` file of ``dataset``."""
    try:
        file = parse_path(path)
    except ValueError as exc:
        raise DataError(f"is no {kind} file of the study ({exc})", path=path) from None
    if file.kind != kind or file.dataset != dataset:
        raise DataError(f"is a {file.kind} file of dataset {file.dataset!r}, not a {kind} file "
                        f"of {dataset!r}", path=path)
    return file


def render_inputs(results_dir: Path | str, dataset: str, grid: TableGrid, inputs: TableInputs,
                  out_path: Path | str, *, machine: Mapping[str, str] | None = None,
                  left_out: Mapping[int, str] | None = None, cascade_why: str = "",
                  demo: bool = False) -> str:
    """Render ``tables.md`` of ``grid`` from the files ``inputs`` names (and nothing else),
    write ``out_path`` atomically; returns the markdown.

    ``machine`` defaults to :func:`nnpipe.machine.machine_info` of the machine running this.
    Plots of :func:`study_plots` are linked relative to ``out_path``, as not rendered where
    ``inputs.plots`` does not hold their PNG; a cell without its file names the path it
    would have under ``results_dir``. A file that is unusable, or whose name is not a file
    of the kind it was given as, raises ``DataError`` naming it.
    """
    dice: dict[RunKey, float] = {}
    train_info: dict[RunKey, Mapping[str, Any]] = {}
    for path in inputs.evaluations:
        dice[_run_key(_read_as(path, "scores", dataset))] = read_fold_dice(Path(path))
    for path in inputs.train:
        train_info[_run_key(_read_as(path, "train_json", dataset))] = _read_checked(
            Path(path), ("time_to_train_s", "batch_size"))
    bench = []
    for path in inputs.benchmarks:
        f = _read_as(path, "benchmark", dataset).fields
        bench.append(_read_bench(Path(path), (f["mode"], f["dim"], f["precision"], f["bs"],
                                              f["gpus"])))
    present = {os.path.normpath(p) for p in inputs.plots}
    paths = StudyPaths(str(results_dir), dataset)
    plots = [PlotLink(section, family, label, os.path.relpath(path, Path(out_path).parent),
                      os.path.normpath(path) in present)
             for section, family, label, path in study_plots(grid, paths)]
    best = _read_checked(Path(inputs.best), ("best", "candidates", "folds")) \
        if inputs.best else None
    classes = _dataset_classes(Path(inputs.dataset).parent) if inputs.dataset else {}
    text = render_tables(grid, dice, train_info, bench, machine or machine_info(),
                         dataset=dataset, results_dir=results_dir, plots=plots,
                         left_out=left_out, best=best, cascade_why=cascade_why,
                         classes=classes, demo=demo)
    write_text(out_path, text)
    return text


def _dataset_classes(raw: Path) -> dict[int, str]:
    """The labels of the study's ``raw/dataset.json`` (value -> name); none without one."""
    if not (raw / "dataset.json").is_file():
        return {}
    from nnpipe.datasets.layout import load_dataset

    return dict(load_dataset(raw).labels)


def read_fold_dice(path: Path) -> float:
    """A fold's Dice in percent: the mean of the ``dice_mean`` column (fractions) × 100.

    An empty cell (NaN: no class scored in that case) is left out; NaN if every cell is.
    """
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot be read as CSV ({exc})", path=path) from exc
    if "dice_mean" not in table.columns or len(table) == 0:
        raise DataError("evaluation CSV has no dice_mean column or no rows", path=path)
    return 100.0 * float(table["dice_mean"].mean(skipna=True))


def _read_bench(path: Path, want: tuple) -> dict[str, Any]:
    data = _read_checked(path, BENCH_KEYS)
    got = (data["mode"], int(data["dim"]), data["precision"], int(data["batch_size"]),
           int(data["gpus"]))
    if got != want:
        raise DataError(f"holds mode/dim/precision/batch/gpus {got}, its name says {want}",
                        path=path)
    missing = [k for k in LATENCY_KEYS if k not in data["latency_ms"]]
    if missing:
        raise DataError(f"latency_ms lacks {missing}", path=path)
    return data


def _read_checked(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    try:
        data = read_json(path)
    except ValueError as exc:
        raise DataError(f"is not valid JSON ({exc})", path=path) from exc
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"lacks the keys {missing}", path=path)
    return data


def render_study(cfg: StudyConfig, out_path: Path,
                 left_out: Mapping[int, str] | None = None, cascade: bool = False,
                 cascade_why: str = "", inputs: TableInputs | None = None) -> str:
    """Render the tables of the study ``cfg`` describes into ``out_path``.

    ``inputs``: the files to read (the tables rule's inputs); default: every file of the
    grid that exists (``nnpipe tables``).

    ``left_out``: dims of ``cfg.grid.dims`` the study does not run, each with why (e.g. 3 for a
    2D dataset, see rules/common.smk ``left_out_dims``): no rows for them, a sentence instead.
    ``cascade``: the study runs the low-resolution cascade (rows for its two stages);
    ``cascade_why``: why it does or does not (a sentence under the header).
    """
    left_out = dict(left_out or {})
    grid = TableGrid.from_study(cfg)
    grid = replace(grid, dims=tuple(d for d in grid.dims if d not in left_out),
                   cascade=cascade)
    paths = StudyPaths(cfg.results_dir, cfg.dataset.name)
    return render_inputs(cfg.results_dir, cfg.dataset.name, grid,
                         inputs or TableInputs.existing(paths, grid), out_path,
                         left_out=left_out, cascade_why=cascade_why,
                         demo=cfg.dataset.source == "embedded")
