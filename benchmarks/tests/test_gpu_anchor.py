"""The MONAI anchor runner: stops a script once the table's figures are printed, names what
is missing or failed, keeps the window anchor's lines (fake anchor scripts: no GPU here)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from benchmarks import gpu_anchor as A

ANCHOR_LINE = 'print(json.dumps({{"name": {name!r}, {value}}}), flush=True)'


def _fake_script(path: Path, body: str) -> Path:
    path.write_text("import json, sys, time\n" + textwrap.dedent(body))
    return path


def test_anchor_is_stopped_once_the_tables_figures_are_printed(tmp_path):
    lines = "\n".join(ANCHOR_LINE.format(name=cells[0][0], value='"img_per_s": 1.5')
                      for cells in A.ANCHOR_CELLS.values())
    done = tmp_path / "ran-to-the-end"
    script = _fake_script(tmp_path / "monai_anchor.py", "\n".join([
        'print("2.11 NVIDIA H200", flush=True)', lines, "time.sleep(60)",
        f"open({str(done)!r}, 'w').close()"]))
    assert A.run_anchor(script, tmp_path / "out", timeout_s=300) == 0
    assert not done.exists()  # stopped, not waited for


def test_anchor_failures_and_missing_figures_are_named(tmp_path, capsys):
    name = A.ANCHOR_CELLS["train3d"][0][0]
    script = _fake_script(tmp_path / "monai_anchor.py", ANCHOR_LINE.format(
        name=name, value='"error": "RuntimeError: no CUDA"') + "\nsys.exit(1)\n")
    assert A.run_anchor(script, tmp_path / "out", timeout_s=60) == 1
    out = capsys.readouterr().out
    assert f"FAIL: anchor monai_anchor.py: {name}: RuntimeError: no CUDA" in out
    assert "no figure for ['2d train fp16 eager bs64', '3d predict fp16 eager bs4']" in out


def test_window_anchor_keeps_its_lines_in_sw_json(tmp_path):
    recs = [{"overlap": 0.5, "mode": "gaussian", "tta": tta, "sw_batch": 4,
             "dtype": "torch.float16", "s_per_case": s} for tta, s in ((False, 0.2), (True, 1.1))]
    body = "".join(f"print(json.dumps({r!r}), flush=True)\n" for r in recs)
    script = _fake_script(tmp_path / "monai_anchor_sliding_window.py",
                          body + "time.sleep(60)\n")
    out = tmp_path / "out"
    assert A.run_anchor(script, out, timeout_s=300) == 0
    assert json.loads((out / "sw.json").read_text()) == recs
    assert A.anchor_figures(out, None)["case"] == ["1.1 s window alone, float16"]


def test_window_anchor_without_the_tta_figure_fails(tmp_path, capsys):
    script = _fake_script(tmp_path / "monai_anchor_sliding_window.py", "sys.exit(3)\n")
    assert A.run_anchor(script, tmp_path / "out", timeout_s=60) == 1
    assert "no 8-flip TTA window figure" in capsys.readouterr().out
