"""The GPU suite's logic on the CPU: the one table from partial results, the budget and
failure handling of ``bench``, the profile lines and the whole-case timing. (The figures
themselves need the H200: scripts/gpu-checks.sh.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_profile as prof
from benchmarks import gpu_suite as G

# ---------------------------------------------------------------- the table


def _write(path: Path, obj) -> None:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _rows(text: str) -> dict[str, list[list[str]]]:
    """Table rows by their first cell."""
    out: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| check"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out.setdefault(cells[0], []).append(cells)
    return out


def test_table_has_every_target_row_when_nothing_ran(tmp_path):
    text = G.table(tmp_path, None)
    rows = _rows(text)
    for key in ("train3d", "predict3d", "train2d", "case"):
        (row,) = rows[G.TARGETS[key][0]]
        assert row[1] == "not measured" and row[4] == "not run"
    assert rows[G.TARGETS["study"][0]][0][1] == "not run"
    assert (tmp_path / "table.md").read_text().strip() == text
    assert json.loads((tmp_path / "results.json").read_text())["rows"]


def test_table_shows_partial_results_failures_and_the_anchor(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(tmp_path / "bench.json", {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11",
                                     "rows": [
        {"row": "train3d", "config": "bf16 eager", "value": 45.04, "limit": "GPU busy 97%"},
        {"row": "predict3d", "config": "bf16 eager", "error": "RuntimeError: CUDA error"},
        {"row": "train3d", "config": "bf16 compiled", "skipped": "20 s of the budget left"},
        {"row": "case", "config": "bf16, device path", "value": 0.8123, "limit": "read 0.3 s"},
    ]})
    _write(tmp_path / "anchor.json", [
        {"name": "3d train fp16 eager (reference-like)", "img_per_s": 31.9},
        {"name": "3d predict fp16 eager bs4", "error": "OutOfMemoryError: boom"}])
    # the window anchor was stopped before writing sw.json: its JSON lines are in the log
    _write(logs / "anchor-window.log", "\n".join([
        "2.11 NVIDIA H200",
        json.dumps({"overlap": 0.5, "mode": "gaussian", "tta": False, "sw_batch": 4,
                    "dtype": "torch.float16", "s_per_case": 0.15}),
        json.dumps({"overlap": 0.5, "mode": "gaussian", "tta": True, "sw_batch": 4,
                    "dtype": "torch.float16", "s_per_case": 1.11})]))
    _write(tmp_path / "study.json", {"device": "cuda", "checks": [
        {"name": "amp: resume", "ok": True, "detail": ""},
        {"name": "bf16: resume", "ok": False, "detail": "exit 1"}]})
    _write(tmp_path / "steps.tsv", "study\t1\t80\texit 1\nanchor\t0\t60\t\n")
    text = G.table(tmp_path, logs)
    rows = _rows(text)
    train = rows[G.TARGETS["train3d"][0]]
    assert train[0][1:7] == ["45.0 samples/s", "bf16 eager", "≥ 110", "31.9 fp16 eager", "no",
                             "GPU busy 97%"]
    assert train[1][1] == "skipped" and "budget" in train[1][6]
    (predict,) = rows[G.TARGETS["predict3d"][0]]
    assert predict[1] == "FAILED" and "CUDA error" in predict[6]
    assert "fp16 eager failed: OutOfMemoryError" in predict[4]
    (case,) = rows[G.TARGETS["case"][0]]
    assert case[1:6] == ["0.812 s", "bf16, device path", "≤ 1", "1.11 s window alone, float16",
                         "yes"]
    (study,) = rows[G.TARGETS["study"][0]]
    assert study[1] == "1/2 checks" and study[5] == "no" and "FAIL bf16: resume" in study[6]
    assert rows[G.TARGETS["train2d"][0]][0][1] == "not measured"
    assert "FAILED step study (exit 1 after 80 s): exit 1" in text
    assert "FAILED step anchor" not in text
    assert text.startswith("NVIDIA H200 · torch 2.11")


def test_a_study_stopped_by_its_time_limit_is_not_a_pass(tmp_path):
    _write(tmp_path / "study.json", {"device": "cuda", "checks": [
        {"name": "amp: resume", "ok": True, "detail": ""}]})
    _write(tmp_path / "steps.tsv", "study\t124\t150\tstopped at its 150 s limit\n")
    (study,) = _rows(G.table(tmp_path, None))[G.TARGETS["study"][0]]
    assert study[1] == "1/1 checks" and study[5] == "no"
    assert study[6] == "study step: stopped at its 150 s limit (its later checks are missing)"


@pytest.mark.parametrize(("row", "value", "device", "met"),
                         [("case", 0.9, "cuda", "yes"), ("case", 1.2, "cuda", "no"),
                          ("train3d", 120.0, "cuda", "yes"), ("train3d", 120.0, "cpu",
                                                               "n/a (cpu)"),
                          ("loader3d", 300.0, "cuda", ""), ("train2d", None, "cuda", "")])
def test_met_compares_with_the_target_on_a_gpu_only(row, value, device, met):
    assert G._met(row, value, device) == met


# ---------------------------------------------------------------- bench: budget and failures


@pytest.fixture
def fake_bench(monkeypatch):
    """``bench`` without data or networks: every cell 'measures' 10 samples/s, except the
    ones named in the returned set, which raise."""
    failing: set[str] = set()
    monkeypatch.setattr(G, "prepare", lambda work, tiny: {2: ("plan2", None),
                                                          3: ("plan3", None)})

    def measure(cell, plan, pre, device, steps):
        if cell.row in failing:
            raise RuntimeError(f"{cell.row} broke")
        return {"row": cell.row, "config": cell.config, "value": 10.0, "limit": "x"}

    monkeypatch.setattr(G, "measure_cell", measure)
    monkeypatch.setattr(prof, "whole_case", lambda work, plan, device, tiny: [
        {"row": "case", "config": "bf16", "value": 0.5, "limit": "y"}])
    return failing


def test_bench_records_every_cell_and_goes_on_after_a_failure(tmp_path, fake_bench, capsys):
    fake_bench.add("predict3d")
    failed = G.bench(tmp_path / "w", tmp_path, "cpu", True, True, 3)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    n_predict = sum(c.row == "predict3d" for c in G.EAGER_CELLS + G.COMPILED_CELLS)
    assert failed == n_predict
    assert len(rows) == len(G.EAGER_CELLS) + len(G.COMPILED_CELLS) + 1
    assert [r["row"] for r in rows if "error" in r] == ["predict3d"] * n_predict
    assert "FAIL: bench predict3d bf16 eager: RuntimeError: predict3d broke" in \
        capsys.readouterr().out
    # the whole case comes after the eager cells, the compiled cells last
    order = [r["row"] if r["row"] == "case" else r["config"].endswith("channels-last")
             and "compiled" in r["config"] for r in rows]
    assert order.index("case") == len(G.EAGER_CELLS) and all(order[len(G.EAGER_CELLS) + 1:])


def test_bench_skips_what_does_not_fit_the_budget(tmp_path, fake_bench, capsys):
    assert G.bench(tmp_path / "w", tmp_path, "cpu", True, True, 3, budget_s=1.0) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows and all("skipped" in r for r in rows)
    assert "skip: bench train3d bf16 eager: 1 s of the budget left" in capsys.readouterr().out


def test_bench_rows_choose_the_jobs(tmp_path, fake_bench):
    G.bench(tmp_path / "w", tmp_path, "cpu", True, False, 3, rows=("case", "loader2d"))
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["loader2d", "case"]


# ---------------------------------------------------------------- what limits each figure


def test_summarize_ops_groups_and_rates():
    times = {"aten::cudnn_convolution": 600.0, "aten::convolution_backward": 200.0,
             "aten::native_group_norm": 150.0, "aten::add_": 50.0}
    line = prof.summarize_ops(times, step_s=0.0002, n_steps=5, flops_per_step=2e10,
                              unit="GPU")
    assert line == ("GPU busy 100% of the step · GPU time: convolution 80%, normalization "
                    "15%, elementwise & other 5% · 100.0 TFLOP/s")
    cpu = prof.summarize_ops(times, step_s=0.5, n_steps=5, flops_per_step=1e9, unit="CPU")
    assert cpu == ("CPU time: convolution 80%, normalization 15%, elementwise & other 5% · "
                   "2.0 GFLOP/s")
    assert prof.summarize_ops({}, 1.0, 5, 0.0, "GPU") == "no GPU time recorded"


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_step_profile_of_a_real_step_on_the_cpu(tiny_study, mode):
    line = prof.step_profile(tiny_study.plans[3], mode, 2, "fp32", False, "cpu", 10.0)
    assert line.startswith("CPU time: convolution") and "FLOP/s" in line


def test_step_profile_never_raises():
    assert prof.step_profile(None, "train", 2, "fp32", False, "cpu", 1.0).startswith(
        "profile failed: AttributeError")


def test_stage_line():
    line = prof.stage_line(1.0, {"read": 0.3, "network": 0.5, "write": 0.1},
                           {"network": "8 tiles × 8 flips"})
    assert line == ("read 0.300 s · network 0.500 s (8 tiles × 8 flips) · write 0.100 s · "
                    "other 0.100 s")


def test_written_case_is_brats_like(tmp_path):
    import nibabel as nib

    folder = prof.write_case(tmp_path, (40, 40, 26))
    img = nib.load(folder / "BRATS_case.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.shape == (40, 40, 26, 4) and data.dtype == np.float32
    assert np.array_equal(data, np.round(data))  # integer intensities, as BraTS stores them
    inside = (data != 0).any(-1)
    box = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != ax)))
           for ax in range(3)]
    extent = [b[-1] - b[0] + 1 for b in box]
    assert extent[0] < 30 and extent[1] < 36 and 0.1 < inside.mean() < 0.5


def test_whole_case_rows_time_every_stage(tiny_study, tmp_path):
    rows = prof.whole_case(tmp_path, tiny_study.plans[3], "cpu", tiny=True)
    assert [r["config"] for r in rows] == ["bf16, host path", "bf16, device path on cpu"]
    for r in rows:
        assert r["row"] == "case" and r["value"] > 0
        for stage in ("read", "preprocess", "network", "restore", "write", "other"):
            assert f"{stage} " in r["limit"]
        assert "tiles × 8 flips of 16×16×16" in r["limit"]
    assert (tmp_path / "case" / "pred" / "BRATS_case.nii.gz").is_file()


def test_command_line_table(tmp_path, capsys):
    assert G.main(["table", "--out", str(tmp_path)]) == 0
    assert "| check | nnpipe |" in capsys.readouterr().out


def test_bench_refuses_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert G.main(["bench", "--work", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert "FAIL: gpu_suite bench --device cuda: no CUDA GPU is visible" in \
        capsys.readouterr().out


def test_scripts_parse():
    import subprocess

    root = Path(__file__).resolve().parents[2]
    for script in ("gpu-checks.sh", "fetch-gpu-wheels.sh"):
        res = subprocess.run(["bash", "-n", str(root / "scripts" / script)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_v2_model_rows_show_each_tta_setting_and_its_stages(tmp_path):
    rows = _rows(G.table(tmp_path, None))
    (missing,) = rows["nnU-Net v2 model folder, CT case, NIfTI read → written, TTA off/on"]
    assert missing[1] == "not measured" and missing[6] == "v2model: not run"
    _write(tmp_path / "v2.json", {"device": "cuda", "case": "512x512x160", "patch": [128] * 3,
                                  "rows": {"tta_off": {"read_s": 1.5, "predict_s": 3.25,
                                                       "write_s": 0.5, "total_s": 5.25},
                                           "tta_on": {"read_s": 1.5, "predict_s": 20.0,
                                                      "write_s": 0.5, "total_s": 22.0}}})
    rows = _rows(G.table(tmp_path, None))
    (off,) = rows["nnU-Net v2 model folder, CT case, NIfTI read → written, TTA off"]
    (on,) = rows["nnU-Net v2 model folder, CT case, NIfTI read → written, TTA on"]
    assert off[1] == "5.25 s" and on[1] == "22.00 s"
    assert "fp16 autocast" in off[2] and off[6] == "read 1.5 s, predict 3.25 s, write 0.5 s"


@pytest.mark.slow
def test_v2_model_check_runs_a_v2_folder_on_the_cpu(tmp_path):
    import nibabel as nib

    from benchmarks import gpu_v2

    assert gpu_v2.main(["--work", str(tmp_path), "--out", str(tmp_path / "out"), "--device",
                        "cpu", "--tiny"]) == 0
    record = json.loads((tmp_path / "out" / "v2.json").read_text())
    assert set(record["rows"]) == {"tta_off", "tta_on"}
    for key in ("tta_off", "tta_on"):
        row = record["rows"][key]
        assert row["total_s"] >= row["predict_s"] > 0
    seg = nib.load(tmp_path / "v2out" / "tta1.nii.gz")
    assert seg.shape == (32, 32, 20) and np.allclose(seg.affine, np.diag([0.8, 0.8, 2.5, 1]))
