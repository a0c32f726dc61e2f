"""The MONAI anchor beside nnpipe's GPU figures: run the shared anchor scripts
(``monai_anchor.py``: the reference network's training and patch inference;
``monai_anchor_sliding_window.py``: its whole-case sliding window) in the same call, stop
each once it has printed the figures the table of :mod:`benchmarks.gpu_suite` needs, and
read those figures back.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The MONAI anchor's figures for each row: (anchor.json name, label), first is the reference.
ANCHOR_CELLS: dict[str, tuple[tuple[str, str], ...]] = {
    "train3d": (("3d train fp16 eager (reference-like)", "fp16 eager"),
                ("3d train bf16 compile", "bf16 compiled")),
    "predict3d": (("3d predict fp16 eager bs4", "fp16 eager"),
                  ("3d predict bf16 compile bs4", "bf16 compiled")),
    "train2d": (("2d train fp16 eager bs64", "fp16 eager"),
                ("2d train bf16 channels_last bs64", "bf16 channels-last")),
}


def _wanted_window(rec: dict[str, Any]) -> bool:
    """The window anchor's line for the case row: 8-flip TTA, overlap 0.5, Gaussian, 4 tiles
    per pass, fp16 eager (the reference's way)."""
    return bool(rec.get("tta")) and rec.get("overlap") == 0.5 and \
        rec.get("mode") == "gaussian" and rec.get("sw_batch") == 4 and \
        "float16" in str(rec.get("dtype")) and "bfloat16" not in str(rec.get("dtype"))


def run_anchor(script: Path, out: Path, timeout_s: float, compile_: bool = False) -> int:
    """Run an anchor script (``monai_anchor.py`` or ``monai_anchor_sliding_window.py``) until
    it has printed the figures the table needs, then stop it (its other cells cost time and
    are not reported). Its JSON lines are echoed; the window anchor's go to ``sw.json``
    (the script writes that only at its very end). Returns 1 (``FAIL: ...`` printed) if a
    needed figure is missing or failed."""
    window = "sliding_window" in script.name
    wanted = set() if window else {cells[0][0] for cells in ANCHOR_CELLS.values()}
    if compile_ and not window:
        wanted |= {cells[1][0] for cells in ANCHOR_CELLS.values() if "compile" in cells[1][0]}
    cmd = [sys.executable, str(script)] + (["--compile"] if compile_ and not window else [])
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OUT": str(out)})
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    records: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    done = False
    while not done:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        print(line, end="", flush=True)
        try:
            rec = json.loads(line) if line.startswith("{") else None
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            continue
        records.append(rec)
        name = rec.get("name")
        if "error" in rec and name in wanted:
            errors[name] = str(rec["error"])[:200]
        wanted.discard(name)
        done = (any(_wanted_window(r) for r in records) if window else not wanted)
        if time.monotonic() > deadline:
            break
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if window:
        (out / "sw.json").write_text(json.dumps(records, indent=1))
        if not any(_wanted_window(r) for r in records):
            print(f"FAIL: anchor {script.name}: no 8-flip TTA window figure within "
                  f"{timeout_s:g} s (exit {proc.returncode})", flush=True)
            return 1
        return 0
    for name, error in errors.items():
        print(f"FAIL: anchor {script.name}: {name}: {error}", flush=True)
    if wanted:
        print(f"FAIL: anchor {script.name}: no figure for {sorted(wanted)} within "
              f"{timeout_s:g} s (exit {proc.returncode})", flush=True)
    return 1 if wanted or errors else 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def anchor_figures(out: Path, logs: Path | None) -> dict[str, list[str]]:
    """The MONAI anchor's figures per row, as short strings (``31.9 fp16 eager``)."""
    figures: dict[str, list[str]] = {}
    anchor = _read_json(out / "anchor.json") or []
    by_name = {r.get("name"): r for r in anchor if isinstance(r, dict)}
    for row, cells in ANCHOR_CELLS.items():
        for name, label in cells:
            r = by_name.get(name)
            if r is None:
                continue
            figures.setdefault(row, []).append(
                f"{r['img_per_s']:g} {label}" if r.get("img_per_s") is not None
                else f"{label} failed: {str(r.get('error', '?'))[:60]}")
    windows = _read_json(out / "sw.json") or []
    if not windows and logs is not None and (logs / "anchor-window.log").is_file():
        for line in (logs / "anchor-window.log").read_text().splitlines():
            if line.startswith("{"):
                try:
                    windows.append(json.loads(line))
                except ValueError:
                    continue
    for w in windows:
        if _wanted_window(w):
            dtype = str(w.get("dtype", "")).replace("torch.", "")
            figures.setdefault("case", []).append(
                f"{w['s_per_case']:g} s window alone, {dtype}")
    return figures
