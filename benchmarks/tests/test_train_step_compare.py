"""train_step_compare's pieces that need no nnU-Net v2: nnpipe's worker (the trainer's step on
the plan translated from v2's configuration), the rotation and the summary table. The
comparison itself is run by hand (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import train_step_compare as C


def _plans(tmp_path: Path) -> Path:
    plans = {**C.V2_EMBEDDED, "configurations": {
        "2d": C._v2_configuration(2, [16, 24], 2, [1.0, 1.0])}}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    return path


def test_embedded_plans_are_v2s_default_2d_and_3d():
    cfg2, cfg3 = (C.V2_EMBEDDED["configurations"][c] for c in ("2d", "3d_fullres"))
    assert (cfg2["patch_size"], cfg2["batch_size"]) == ([48, 64], 46)
    assert (cfg3["patch_size"], cfg3["batch_size"]) == ([48, 64, 56], 2)
    for cfg in (cfg2, cfg3):
        kw = cfg["architecture"]["arch_kwargs"]
        assert kw["features_per_stage"] == [32, 64, 128, 256] and kw["n_stages"] == 4


def test_nnpipe_worker_times_the_trainers_step_on_v2s_plan(tmp_path, monkeypatch):
    from nnpipe.training import step as S

    built: list[Any] = []
    build = S.build_step
    monkeypatch.setattr(S, "build_step", lambda *a, **k: built.append(a) or build(*a, **k))
    rec = C.nnpipe_steps({"plans": str(_plans(tmp_path)), "configuration": "2d", "dim": 2,
                          "in_channels": 2, "num_classes": 3, "threads": 1, "warmup": 1,
                          "steps": 2, "seed": 0, "clock": "process", "config": ""})
    assert rec["tool"] == "nnpipe" and len(rec["step_s"]) == 2
    assert all(t > 0 for t in rec["step_s"])
    plan = built[0][0]  # the plan plan_from_v2 made from v2's configuration
    assert (plan.filters, plan.batch_size, plan.num_channels) == ((32, 64, 128, 256), 2, 2)
    assert sorted(rec["patch_size"]) == [16, 24] and rec["batch_size"] == 2


def test_tools_rotate_and_the_table_gives_medians_and_ratios(tmp_path, monkeypatch):
    calls: list[str] = []

    def fake_run(tool: str, spec: dict[str, Any], o: Any) -> dict[str, Any]:
        calls.append(tool)
        return {"step_s": [{"nnpipe": 1.0, "nnunetv2": 2.0, "nnpipe-before": 3.0}[tool]] * 2}

    monkeypatch.setattr(C, "_run", fake_run)
    o = C.argparse.Namespace(dims=[2], rounds=3, steps=2, warmup=0, threads=1, clock="wall",
                             channels=4, classes=4, config=None, before=Path("old/src"))
    rec = C.compare(o, _plans(tmp_path))
    assert calls == ["nnpipe", "nnunetv2", "nnpipe-before", "nnunetv2", "nnpipe-before",
                     "nnpipe", "nnpipe-before", "nnpipe", "nnunetv2"]
    table = C.summary(rec)
    assert "| 2d | nnpipe | 1.000 | 1.00 - 1.00 | 6 | 0.50 |" in table
    assert "| 2d | nnpipe-before | 3.000 | 3.00 - 3.00 | 6 | 1.50 |" in table


def test_a_plans_file_without_the_configuration_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "_run", lambda *a: pytest.fail("nothing may run"))
    o = C.argparse.Namespace(dims=[3], rounds=1, steps=1, warmup=0, threads=1, clock="wall",
                             channels=4, classes=4, config=None, before=None)
    with pytest.raises(ValueError, match="no '3d_fullres' configuration"):
        C.compare(o, _plans(tmp_path))
