from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nnpipe.config import study_config
from nnpipe.errors import DataError
from nnpipe.report.tables import (
    PlotLink,
    RunKey,
    TableGrid,
    bench_json_path,
    collect_and_render,
    eval_csv_path,
    read_fold_dice,
    render_tables,
    study_plots,
    train_json_path,
)

GOLDEN = Path(__file__).with_name("golden_tables.md")

GRID = TableGrid(
    dims=(2, 3), precisions=("fp32", "bf16"), gpus=(1, 2), folds=(0, 1, 2),
    bench_precisions=("fp32", "bf16"), bench_gpus=(1, 2),
    train_batch_sizes={2: (4,), 3: (1,)}, predict_batch_sizes={2: (4,), 3: (1,)},
)
MACHINE = {"cpu": "x86_64 (2 cores)", "gpu": "none", "torch": "2.13.0", "monai": "1.6.1",
           "nnpipe": "0.1.0"}

# fold Dice in percent
DICE = {
    RunKey(2, "fp32", 1, 0): 60.0, RunKey(2, "fp32", 1, 1): 62.0, RunKey(2, "fp32", 1, 2): 64.0,
    RunKey(2, "bf16", 1, 0): 61.0, RunKey(2, "bf16", 1, 1): 63.0,
    RunKey(2, "fp32", 2, 0): 59.5,
    RunKey(3, "fp32", 1, 0): 70.0, RunKey(3, "fp32", 1, 1): 71.0, RunKey(3, "fp32", 1, 2): 72.0,
}
TIMES = {  # (run key) -> (time_to_train_s, batch_size)
    RunKey(2, "fp32", 1, 0): (600, 4), RunKey(2, "fp32", 1, 1): (660, 4),
    RunKey(2, "fp32", 1, 2): (720, 4),
    RunKey(2, "bf16", 1, 0): (300, 4), RunKey(2, "bf16", 1, 1): (360, 4),
    RunKey(2, "fp32", 2, 0): (45, 4),
    RunKey(3, "fp32", 1, 0): (1200, 2), RunKey(3, "fp32", 1, 1): (1200, 2),
    RunKey(3, "fp32", 1, 2): (1200, 2),
}
TRAIN_INFO = {k: {"time_to_train_s": t, "epochs": 10, "batch_size": bs, "precision": k.precision,
                  "dim": k.dim, "gpus": k.gpus, "fold": k.fold} for k, (t, bs) in TIMES.items()}


def bench(mode: str, dim: int, precision: str, bs: int, gpus: int, thr: float,
          lat: tuple[float, float, float, float] = (10.0, 11.0, 12.0, 13.0)) -> dict[str, Any]:
    return {"mode": mode, "dim": dim, "precision": precision, "batch_size": bs, "gpus": gpus,
            "patch_size": [32, 48] if dim == 2 else [32, 32, 32], "throughput": thr,
            "latency_ms": dict(zip(("mean", "p90", "p95", "p99"), lat, strict=True)),
            "warmup_steps": 2, "timed_steps": 5, "device": "cpu"}


BENCH = [
    bench("train", 2, "fp32", 4, 1, 100.0), bench("train", 2, "bf16", 4, 1, 150.0),
    bench("train", 2, "fp32", 4, 2, 190.0),
    bench("train", 3, "fp32", 1, 1, 10.0),
    bench("predict", 2, "fp32", 4, 1, 400.0),
    bench("predict", 2, "bf16", 4, 1, 500.0, (8.0, 9.0, 9.5, 10.0)),
    bench("predict", 3, "bf16", 1, 1, 20.0, (50.0, 51.0, 52.0, 53.0)),
]


# the plots of GRID as collect_and_render links them from results/tables.md; one not rendered
PLOTS = [PlotLink(section, family, label, path,
                  present=not (label == "3d-bf16-2gpu" and "prediction" in family))
         for section, family, label, path in study_plots(GRID)]


def candidate(name: str, dice: float | None, before: float | None, kept: list[str]
              ) -> dict[str, Any]:
    return {"name": name, "runs": name.split("+"), "dice": dice,
            "dice_before_postprocessing": before, "n_cases": 20, "postprocess_applied": kept,
            "postprocess": f"postprocess/{name}.json"}


# best.json of nnpipe.evaluation.best (only what the section reads, and the choice)
BEST = {"folds": [0, 1, 2], "candidates": [
    candidate("2d-fp32-1gpu", 0.62, 0.615, ["2"]),
    candidate("3d-fp32-1gpu", 0.71, 0.70, []),
    candidate("2d-fp32-1gpu+3d-fp32-1gpu", 0.7234, 0.72, ["1", "3"])],
    "best": {"name": "2d-fp32-1gpu+3d-fp32-1gpu"}}


def render(best: dict[str, Any] | None = BEST) -> str:
    return render_tables(GRID, DICE, TRAIN_INFO, BENCH, MACHINE, dataset="embedded",
                         plots=PLOTS, best=best, demo=True)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under ``## heading`` as lists of cells."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_render_matches_golden_file() -> None:
    assert render() == GOLDEN.read_text()


def test_best_configuration_section() -> None:
    rows = table_rows(render(), "Best configuration")
    assert rows == [
        ["2d-fp32-1gpu", "run", "62.00", "61.50", "2", "20"],
        ["3d-fp32-1gpu", "run", "71.00", "70.00", "none", "20"],
        ["**2d-fp32-1gpu+3d-fp32-1gpu** (chosen)", "ensemble (probabilities averaged)",
         "72.34", "72.00", "1, 3", "20"]]
    text = render()
    assert "`nnpipe predict --model results/embedded/best.json --input DIR" in text
    missing = render(best=None).split("## Best configuration\n", 1)[1].split("\n## ", 1)[0]
    assert missing.strip() == "missing: results/embedded/best.json"


def test_dice_table_values() -> None:
    rows = table_rows(render(), "Training accuracy")
    by_key = {(r[0], r[1]): r for r in rows}
    # Dim GPUs Batch | Dice fp32 | Dice bf16 | Time fp32 | Time bf16 | Speedup fp32→bf16
    assert by_key[("2", "1")] == ["2", "1", "4", "62.00 ± 2.00 (3 folds)",
                                  "62.00 ± 1.41 (2 of 3 folds)", "11.0 min",
                                  "5.5 min (2 of 3 folds)", "2.00"]
    assert by_key[("2", "2")][3:] == [
        "59.50 (1 of 3 folds)",
        "missing: results/embedded/evaluate/2d-bf16-2gpu/fold{0,1,2}.csv",
        "45 s (1 of 3 folds)",
        "missing: results/embedded/train/2d-bf16-2gpu/fold{0,1,2}/train.json",
        "— (no time for bf16)"]
    assert by_key[("3", "1")][2:4] == ["2", "71.00 ± 1.00 (3 folds)"]
    assert by_key[("3", "2")][2] == "— (no train.json)"


def test_train_throughput_values() -> None:
    rows = table_rows(render(), "Training throughput")
    by_key = {(r[0], r[1], r[2]): r[3:] for r in rows}
    # fp32 | bf16 | Speedup | Weak scaling fp32 | Weak scaling bf16
    assert by_key[("2", "1", "4")] == ["100.00", "150.00", "1.50", "— (1-GPU baseline)",
                                       "— (1-GPU baseline)"]
    assert by_key[("2", "2", "4")] == [
        "190.00", "missing: results/embedded/benchmark/train-2d-bf16-bs4-2gpu.json",
        "— (no throughput for bf16)", "1.90", "— (no 2-GPU measurement)"]
    assert by_key[("3", "2", "1")][2:] == ["— (no throughput for fp32)",
                                           "— (no 2-GPU measurement)", "— (no 1-GPU measurement)"]


def test_predict_throughput_values() -> None:
    rows = table_rows(render(), "Inference throughput")
    assert rows[0] == ["2", "4", "32×48", "400.00", "10.00 / 11.00 / 12.00 / 13.00",
                       "500.00", "8.00 / 9.00 / 9.50 / 10.00"]
    # a cubic patch is written as the reference writes 128³; fp32 is missing, bf16 is there
    assert rows[1] == ["3", "1", "32³",
                       "missing: results/embedded/benchmark/predict-3d-fp32-bs1-1gpu.json",
                       "— (no benchmark file)", "20.00", "50.00 / 51.00 / 52.00 / 53.00"]


def test_plot_links_under_the_tables() -> None:
    text = render()
    accuracy = text.split("## Training accuracy\n", 1)[1].split("\n## ", 1)[0]
    assert "- training curves (loss, Dice, lr): [2d-fp32-1gpu](plots/curves-2d-fp32-1gpu.png)" \
        in accuracy
    assert "3d-bf16-2gpu (not rendered: plots/overlays-3d-bf16-2gpu.png)" in accuracy
    assert "[3d-bf16-2gpu](plots/overlays-3d-bf16-2gpu.png)" not in text
    for heading in ("Training throughput", "Inference throughput"):
        section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
        assert "- throughput: [samples/s against batch size](plots/throughput.png)" in section
        assert "curves-" not in section


def test_no_cell_without_measurement_is_empty_and_machine_is_named() -> None:
    text = render()
    for heading in ("Training accuracy", "Training throughput", "Inference throughput"):
        assert all(all(cell for cell in row) for row in table_rows(text, heading))
    assert text.count("Machine: CPU x86_64 (2 cores); GPU none; torch 2.13.0, MONAI 1.6.1") == 3
    assert "not BraTS" in text


def test_single_precision_and_no_one_gpu_baseline() -> None:
    grid = TableGrid(dims=(2,), precisions=("fp32",), gpus=(2,), folds=(0,),
                     bench_precisions=("fp32",), bench_gpus=(2,),
                     train_batch_sizes={2: (4,)}, predict_batch_sizes={2: ()})
    text = render_tables(grid, {RunKey(2, "fp32", 2, 0): 50.0}, {},
                         [bench("train", 2, "fp32", 4, 2, 80.0)], MACHINE, dataset="d")
    assert table_rows(text, "Training accuracy") == [
        ["2", "2", "— (no train.json)", "50.00 (1 fold)",
         "missing: results/d/train/2d-fp32-2gpu/fold0/train.json", "— (one precision in grid)"]]
    assert table_rows(text, "Training throughput") == [
        ["2", "2", "4", "80.00", "— (one precision in grid)", "— (1 GPU not in grid)"]]
    assert table_rows(text, "Inference throughput") == []


def test_cascade_stages_get_rows_after_the_3d_rows_and_a_sentence() -> None:
    grid = TableGrid(dims=(3,), precisions=("fp32",), gpus=(1,), folds=(0,),
                     bench_precisions=("fp32",), bench_gpus=(1,), train_batch_sizes={3: ()},
                     predict_batch_sizes={3: ()}, cascade=True)
    assert grid.configurations == (3, "3d_lowres", "3d_cascade")
    dice = {RunKey(3, "fp32", 1, 0): 50.0, RunKey("3d_lowres", "fp32", 1, 0): 40.0,
            RunKey("3d_cascade", "fp32", 1, 0): 55.0}
    text = render_tables(grid, dice, {}, [], MACHINE, dataset="d",
                         cascade_why="the 3D patch covers 19.0% of the median image")
    rows = table_rows(text, "Training accuracy")
    assert [r[0] for r in rows] == ["3", "3d_lowres", "3d_cascade"]
    assert rows[2][3] == "55.00 (1 fold)"
    assert "missing: results/d/train/3d_cascade-fp32-1gpu/fold0/train.json" in rows[2]
    assert ("Low-resolution cascade (3d_lowres, 3d_cascade) planned: the 3D patch covers "
            "19.0% of the median image.") in text
    assert [p for *_, p in study_plots(grid) if "curves" in p] == [
        f"plots/curves-{c}-fp32-1gpu.png" for c in ("3d", "3d_lowres", "3d_cascade")]


ONE_RUN = TableGrid(dims=(3,), precisions=("fp32", "bf16"), gpus=(1,), folds=(0, 1, 2),
                    bench_precisions=("fp32",), bench_gpus=(1,), train_batch_sizes={3: ()},
                    predict_batch_sizes={3: ()})


def test_folds_with_no_class_scored_are_left_out_and_never_shown_as_nan() -> None:
    nan = float("nan")
    dice = {RunKey(3, "fp32", 1, 0): 60.0, RunKey(3, "fp32", 1, 1): nan,
            RunKey(3, "fp32", 1, 2): 64.0,
            **{RunKey(3, "bf16", 1, f): nan for f in (0, 1, 2)}}
    text = render_tables(ONE_RUN, dice, {}, [], MACHINE, dataset="d")
    # fp32: mean and sample std of 60 and 64 (sqrt(8) = 2.83); bf16: nothing scored
    assert table_rows(text, "Training accuracy")[0][3:5] == [
        "62.00 ± 2.83 (2 of 3 folds; 1 with no class scored)",
        "n/a (no class scored in 3 folds)"]
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_fold_dice_from_csvs_with_empty_cells(tmp_path: Path) -> None:
    # class 2 is never scored (empty cells); case b of fold 1 and all of fold 2 have no
    # class scored (dice_mean empty). Fold Dice: 70 (mean of 0.6, 0.8), 50 (b left out), n/a.
    csvs = {0: "case,dice_1,dice_2,dice_mean\na,0.6,,0.6\nb,0.8,,0.8\n",
            1: "case,dice_1,dice_2,dice_mean\na,0.5,,0.5\nb,,,\n",
            2: "case,dice_1,dice_2,dice_mean\na,,,\n"}
    root = tmp_path / "results"
    for fold, text in csvs.items():
        path = eval_csv_path(root, "d", 3, "fp32", 1, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert read_fold_dice(eval_csv_path(root, "d", 3, "fp32", 1, 0)) == pytest.approx(70.0)
    assert read_fold_dice(eval_csv_path(root, "d", 3, "fp32", 1, 1)) == pytest.approx(50.0)
    text = collect_and_render(root, "d", ONE_RUN, tmp_path / "t.md", machine=MACHINE)
    assert table_rows(text, "Training accuracy")[0][3] == (
        "60.00 ± 14.14 (2 of 3 folds; 1 with no class scored)")
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_grid_from_study_config() -> None:
    study = study_config({
        "grid": {"dims": [2, 3], "precisions": ["fp32", "bf16"], "gpus": [1], "folds": [0]},
        "benchmark": {"precisions": ["bf16"], "gpus": [1, 2], "train_batch_sizes_2d": [8],
                      "train_batch_sizes_3d": [1, 2], "predict_batch_sizes_2d": [16],
                      "predict_batch_sizes_3d": [4]}})
    grid = TableGrid.from_study(study)
    assert grid.precisions == ("fp32", "bf16") and grid.bench_precisions == ("bf16",)
    assert grid.bench_gpus == (1, 2) and grid.folds == (0,)
    assert grid.train_batch_sizes == {2: (8,), 3: (1, 2)}
    assert grid.predict_batch_sizes == {2: (16,), 3: (4,)}


# ---------------------------------------------------------------- reading the files


def write_outputs(root: Path) -> None:
    for key in {k[:3] for k in DICE}:
        folds = [k.fold for k in DICE if k[:3] == key]
        for fold in folds:
            # two cases whose dice_mean average to the fold Dice (in fractions)
            d = DICE[RunKey(*key, fold)] / 100
            table = pd.DataFrame({"case": ["a", "b"], "dice_1": [d, d],
                                  "dice_mean": [d - 0.01, d + 0.01]})
            path = eval_csv_path(root, "embedded", *key, fold)
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)
    for k, info in TRAIN_INFO.items():
        path = train_json_path(root, "embedded", k.dim, k.precision, k.gpus, k.fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info))
    for b in BENCH:
        path = bench_json_path(root, "embedded", b["mode"], b["dim"], b["precision"],
                               b["batch_size"], b["gpus"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(b))


def test_collect_and_render_reads_what_render_expects(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_outputs(root)
    out = tmp_path / "results" / "embedded" / "tables.md"  # the study's own tables
    text = collect_and_render(root, "embedded", GRID, out, machine=MACHINE)
    assert out.read_text() == text
    # plots are linked relative to tables.md (results/<dataset>/plots/); none exists here
    # except the one written below
    not_rendered = [PlotLink(s, f, label, path, present=False)
                    for s, f, label, path in study_plots(GRID)]
    expected = render_tables(GRID, DICE, TRAIN_INFO, BENCH, MACHINE, dataset="embedded",
                             results_dir=root, plots=not_rendered)  # not the demo: no BraTS line
    assert text == expected
    (root / "embedded" / "plots").mkdir()
    (root / "embedded" / "plots" / "throughput.png").write_bytes(b"png")
    text = collect_and_render(root, "embedded", GRID, out, machine=MACHINE)
    assert "- throughput: [samples/s against batch size](plots/throughput.png)" in text
    assert "box plots (not rendered: plots/dice-per-class.png)" in text
    assert f"missing: {root}/embedded/evaluate/2d-bf16-2gpu/fold{{0,1,2}}.csv" in text
    # results/tables.md, the configured study's copy, links the same PNG from one folder up
    latest = collect_and_render(root, "embedded", GRID, root / "tables.md", machine=MACHINE)
    assert "[samples/s against batch size](embedded/plots/throughput.png)" in latest


def test_collect_rejects_unusable_files(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_outputs(root)
    wrong = bench_json_path(root, "embedded", "train", 3, "bf16", 1, 1)
    wrong.write_text(json.dumps(bench("train", 3, "fp32", 1, 1, 5.0)))
    with pytest.raises(DataError, match=r"train-3d-bf16-bs1-1gpu\.json.*its name says"):
        collect_and_render(root, "embedded", GRID, tmp_path / "t.md", machine=MACHINE)
    wrong.unlink()
    info = train_json_path(root, "embedded", 2, "fp32", 1, 0)
    info.write_text(json.dumps({"epochs": 3}))
    with pytest.raises(DataError, match=r"fold0/train\.json.*lacks the keys"):
        collect_and_render(root, "embedded", GRID, tmp_path / "t.md", machine=MACHINE)
    assert not (tmp_path / "t.md").exists()


# ---------------------------------------------------------------- failed benchmark measurements


def with_steps(record: dict[str, Any], mean: float, median: float, steps: int = 50,
               **extra: Any) -> dict[str, Any]:
    """``record`` with a recorded median: mean and median step time (ms), p90/p99 above."""
    lat = {"mean": mean, "median": median, "p90": 1.2 * median, "p95": 1.3 * median,
           "p99": 1.5 * median}
    return {**record, "latency_ms": lat, "timed_steps": steps,
            "spread": {"cv": 0.5, "p99_over_median": 1.5, "mean_over_median": mean / median},
            **extra}


def test_failed_measurements_are_marked_not_printed_and_nothing_is_computed_from_them() -> None:
    """The demo's 2D predict bf16 batch-8 cell (18 samples/s, mean 441 ms, p99 1028 ms,
    beside 1397 at batch 16) must not be printed as a result again; a cell is marked only
    when its measurement failed (two groups of step times, too few steps), and says what to
    do."""
    def key(b: dict[str, Any]) -> tuple:
        return b["mode"], b["dim"], b["precision"], b["gpus"]

    # train records with a median: the 2D fp32 1-GPU cell bimodal (mean 2x the median)
    records = [(with_steps(b, 20.0, 10.0) if key(b) == ("train", 2, "fp32", 1)
                else with_steps(b, 10.5, 10.0)) if b["mode"] == "train" else b for b in BENCH]
    bench = [b for b in records if key(b) != ("predict", 2, "bf16", 1)]
    bench.append({**BENCH[5], "throughput": 18.0,
                  "latency_ms": {"mean": 441.0, "p90": 900.0, "p95": 1000.0, "p99": 1028.0}})
    text = render_tables(GRID, DICE, TRAIN_INFO, bench, MACHINE, dataset="embedded")
    train = {(r[0], r[1], r[2]): r[3:] for r in table_rows(text, "Training throughput")}
    path = "results/embedded/benchmark/train-2d-fp32-bs4-1gpu.json"
    # fp32 | bf16 | Speedup | Weak scaling fp32 | Weak scaling bf16
    assert train[("2", "1", "4")] == [
        "not a result: mean 20 ms vs median 10 ms step, 100% apart: two groups of step times "
        f"(another job on the machine?); rerun this cell alone (50 steps); snakemake "
        f"--forcerun {path}",
        "150.00 (median 157.50, p90 131.25, p99 105.00)",
        "— (fp32 not a result)", "— (1-GPU baseline)", "— (1-GPU baseline)"]
    # the 2-GPU cell stands, but its weak scaling would divide by the failed baseline
    assert train[("2", "2", "4")][0] == "190.00 (median 199.50, p90 166.25, p99 133.00)"
    assert train[("2", "2", "4")][3] == "— (1-GPU measurement not a result)"
    predict = table_rows(text, "Inference throughput")
    # a record without a median (written before it was recorded): judged by p99 / mean
    assert predict[0][5:] == [
        "not a result: p99/mean 2.33 > 2.0 and no median recorded; rerun this cell (5 steps); "
        "snakemake --forcerun results/embedded/benchmark/predict-2d-bf16-bs4-1gpu.json",
        "— (not a result)"]
    assert "18.00" not in text and "441" not in text
    assert predict[0][3:5] == ["400.00", "10.00 / 11.00 / 12.00 / 13.00"]  # stands: as before


def test_too_few_steps_is_not_a_result_and_says_what_to_do() -> None:
    short = with_steps(BENCH[0], 10.0, 10.0, steps=3)
    text = render_tables(GRID, DICE, TRAIN_INFO, [short, *BENCH[1:]], MACHINE,
                         dataset="embedded")
    cell = table_rows(text, "Training throughput")[0][3]
    assert cell.startswith("not a result: 3 timed steps < 4: raise benchmark.timed_steps or "
                           "benchmark.max_timing_s")


RECORDED = Path(__file__).with_name("data") / "noisy_run.json"


def test_table_rule_on_a_recorded_noisy_run() -> None:
    """Two cells measured on the shared 2-core VM at load 21 (tests/report/data): the train
    cell's step times spread widely (CV 0.80, p99/median 2.5: marked "unsteady" before)
    but its mean and median agree within 20 %, so the figure is printed; the predict cell's
    steps fell in two groups (median 134 ms, a third of them near 2 s: mean 4.5x the
    median), so it is not a result."""
    from nnpipe.benchmark.steady import step_stats

    cells = {}
    for r in json.loads(RECORDED.read_text())["records"]:
        stats = step_stats([t / 1000.0 for t in r["step_ms"]])
        mean_s = stats["latency_ms"]["mean"] / 1000.0
        record = {**r, **stats, "throughput": r["batch_size"] * r["gpus"] / mean_s}
        cells[r["mode"]] = record
    assert cells["train"]["spread"]["cv"] > 0.5  # the old rule's limit was 0.20
    grid = TableGrid(dims=(2,), precisions=("fp32",), gpus=(1,), folds=(0,),
                     bench_precisions=("fp32",), bench_gpus=(1,),
                     train_batch_sizes={2: (8,)}, predict_batch_sizes={2: (8,)})
    text = render_tables(grid, {}, {}, list(cells.values()), MACHINE, dataset="embedded")
    train = table_rows(text, "Training throughput")[0][3]
    assert re.fullmatch(r"2\.56 \(median 3\.07, p90 1\.44\)", train), train  # p99: 4 steps
    predict = table_rows(text, "Inference throughput")[0][3]
    assert predict.startswith("not a result: mean 606.6 ms vs median 133.7 ms step, 354% "
                              "apart: two groups of step times"), predict


def test_p99_from_too_few_steps_is_not_printed() -> None:
    shaky_p99 = {**BENCH[4], "timed_steps": 50, "p99_resolved": False, "p99_min_steps": 368}
    bench = [shaky_p99 if b is BENCH[4] else b for b in BENCH]
    rows = table_rows(render_tables(GRID, DICE, TRAIN_INFO, bench, MACHINE,
                                    dataset="embedded"), "Inference throughput")
    assert rows[0][3:5] == ["400.00", "10.00 / 11.00 / 12.00 / n/a (50 < 368 steps)"]


def test_a_study_without_benchmarks_renders_and_plots_no_throughput() -> None:
    """benchmark.precisions: [] — no cells: the sections say so, and no throughput plot is
    expected (its rule would have no record to plot)."""
    grid = TableGrid(dims=(3,), precisions=("fp32",), gpus=(1,), folds=(0,),
                     bench_precisions=(), bench_gpus=(1,), train_batch_sizes={3: (2,)},
                     predict_batch_sizes={3: (1,)})
    assert not grid.benchmarked
    assert not [p for *_, p in study_plots(grid) if "throughput" in p]
    text = render_tables(grid, {RunKey(3, "fp32", 1, 0): 50.0}, {}, [], MACHINE, dataset="d")
    assert text.count("Not measured in this study: `benchmark.enabled` is false or"
                      " `benchmark.precisions` is empty.") == 2
    assert "throughput.png" not in text
    with_cells = TableGrid(dims=(3,), precisions=("fp32",), gpus=(1,), folds=(0,),
                           bench_precisions=("fp32",), bench_gpus=(1,),
                           train_batch_sizes={3: ()}, predict_batch_sizes={3: (1,)})
    assert with_cells.benchmarked
    assert [p for *_, p in study_plots(with_cells) if "throughput" in p] == [
        "plots/throughput.png"]


def test_the_header_names_the_classes_and_says_not_brats_only_on_the_demo() -> None:
    own = render_tables(ONE_RUN, {}, {}, [], MACHINE, dataset="Dataset002_Heart",
                        classes={0: "background", 1: "left atrium"})
    assert "# nnpipe results: dataset `Dataset002_Heart`" in own
    assert "Classes scored: 1 = left atrium." in own
    assert "BraTS" not in own and "embedded" not in own
    demo = render_tables(ONE_RUN, {}, {}, [], MACHINE, dataset="embedded", demo=True)
    assert "not BraTS (MSD Task01_BrainTumour)" in demo
