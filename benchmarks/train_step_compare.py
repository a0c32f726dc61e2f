"""nnpipe's training step against nnU-Net v2's on v2's plans, side by side on one machine.

    # v2's default 2D and 3D plans of the embedded dataset, 2 threads, 5 alternating rounds
    python -m benchmarks.train_step_compare --dims 2 3 --rounds 5 --steps 3 --threads 2
    # also an older nnpipe (a checkout's src/), e.g. main before a change
    python -m benchmarks.train_step_compare --before /tmp/main-checkout/src

Each round starts one short process per tool and plan, in an order that rotates from round
to round (so that a load change on a shared machine falls on every tool alike): build the
parts, ``--warmup`` untimed steps, ``--steps`` timed ones, print the step times. The figure
is the median over every timed step of every round, and the ratio nnpipe / v2 of medians.

* **nnpipe** takes the trainer's own step (:func:`nnpipe.training.step.build_step` and
  :func:`~nnpipe.training.step.train_step`, the schema's training defaults unless
  ``--config`` gives a study) on the plan :func:`benchmarks.accuracy_compare.plan_from_v2`
  translates from v2's configuration (what ``accuracy_compare --plan nnunetv2`` trains);
* **nnunetv2** runs :mod:`benchmarks.v2_train_step` in v2's virtual environment
  (``--nnunet-venv``): ``nnUNetTrainer``'s network, loss, optimizer and ``train_step``.

Both time forward, loss, backward and the optimizer step on a fixed random batch: the data
pipeline is left out of both (v2 runs it in worker processes; nnpipe's is timed by
``nnpipe benchmark --mode loader``). ``--clock process`` times this process's CPU seconds
instead of wall-clock seconds: with ``--threads 1`` the work of a step, nearly blind to the
other jobs of a shared machine.

The plans: ``--plans`` (a v2 plans file, e.g. ``accuracy_compare``'s
``nnunetv2/nnUNet_preprocessed/Dataset998_nnpipeAccuracy/nnUNetPlans.json``), else
:data:`V2_EMBEDDED`, v2's default 2D and 3D configurations of the embedded dataset as
``nnUNetv2_plan_and_preprocess`` wrote them (docs/benchmarks.md, "Accuracy compared with
nnU-Net v2").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
V2_CONFIG = {2: "2d", 3: "3d_fullres"}


def _v2_configuration(dim: int, patch: list[int], batch: int,
                      spacing: list[float]) -> dict[str, Any]:
    """A v2 ``PlainConvUNet`` configuration: 4 stages of 32-256 features, 3^dim kernels,
    strides 1 then 2, two convolutions per stage, conv bias, affine instance norm (eps 1e-5),
    LeakyReLU (v2's ``ExperimentPlanner`` defaults)."""
    return {
        "data_identifier": f"nnUNetPlans_{V2_CONFIG[dim]}", "preprocessor_name":
        "DefaultPreprocessor", "batch_size": batch, "patch_size": patch, "spacing": spacing,
        "batch_dice": True,
        "architecture": {
            "network_class_name":
                "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
                "kernel_sizes": [[3] * dim] * 4, "strides": [[1] * dim] + [[2] * dim] * 3,
                "n_conv_per_stage": [2] * 4, "n_conv_per_stage_decoder": [2] * 3,
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


# v2's default plans of the embedded dataset (4 channels, 4 classes, 3 mm; nnunetv2 2.8.1):
# 2D 48 x 64 at batch 46, 3D 48 x 64 x 56 at batch 2, both 4 stages of 32-256 features
V2_EMBEDDED: dict[str, Any] = {
    "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
    "transpose_backward": [0, 1, 2],
    "configurations": {"2d": _v2_configuration(2, [48, 64], 46, [3.04, 3.06]),
                       "3d_fullres": _v2_configuration(3, [48, 64, 56], 2,
                                                       [3.06, 3.04, 3.06])}}
EMBEDDED_CHANNELS = 4
EMBEDDED_CLASSES = 4


# ----------------------------------------------------------------- nnpipe's side (a worker)


def nnpipe_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """Time nnpipe's trainer step in this process (``spec``: plans, configuration, dim,
    in_channels, num_classes, threads, warmup, steps, seed, clock, config)."""
    import torch

    from benchmarks.accuracy_compare import plan_from_v2
    from nnpipe.config import load_config, study_config
    from nnpipe.planning.plan import ChannelNorm, Plan
    from nnpipe.training.step import build_step, train_step

    torch.set_num_threads(spec["threads"])
    dim, k = spec["dim"], spec["num_classes"]
    base = Plan(dataset="v2-plan", dim=dim, spacing=(1.0,) * dim,
                full_spacing=(1.0, 1.0, 1.0), patch_size=(8,) * dim,
                kernels=((3,) * dim,) * 2, strides=((1,) * dim, (2,) * dim), filters=(8, 16),
                batch_size=2, num_channels=spec["in_channels"], num_classes=k,
                labels={i: f"class{i}" for i in range(k)},
                channel_norms=(ChannelNorm("zscore"),) * spec["in_channels"],
                slice_axis=2 if dim == 2 else None)
    plans = json.loads(Path(spec["plans"]).read_text())
    plan = plan_from_v2(plans, spec["configuration"], base)
    s = (load_config(spec["config"]) if spec.get("config") else study_config({})).training
    torch.manual_seed(spec["seed"])
    device = torch.device("cpu")
    parts = build_step(plan, dataclasses.replace(s, compile=False), "fp32", device, 1,
                       s.epochs * s.steps_per_epoch)
    parts.net.train()
    image = torch.randn(plan.batch_size, plan.num_channels, *plan.patch_size)
    seg = torch.randint(0, k, (plan.batch_size, 1, *plan.patch_size))
    clock = time.process_time if spec.get("clock") == "process" else time.perf_counter
    for _ in range(spec["warmup"]):
        float(train_step(parts, image, seg, device))
    times = []
    for _ in range(spec["steps"]):
        t0 = clock()
        float(train_step(parts, image, seg, device))  # the loss read back, as v2's step does
        times.append(clock() - t0)
    return {"tool": "nnpipe", "step_s": times, "threads": torch.get_num_threads(),
            "batch_size": plan.batch_size, "patch_size": list(plan.patch_size),
            "torch": torch.__version__, "optimizer": s.optimizer}


# ----------------------------------------------------------------- the driver


def _command(tool: str, spec: dict[str, Any], o: argparse.Namespace
             ) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if tool == "nnunetv2":
        return ([str(o.nnunet_venv / "bin" / "python"), str(ROOT / "benchmarks" /
                                                              "v2_train_step.py"),
                 "--spec", json.dumps(spec)], env)
    src = o.before if tool == "nnpipe-before" else ROOT / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(ROOT)])
    return ([sys.executable, "-m", "benchmarks.train_step_compare", "--worker",
             json.dumps(spec)], env)


def _run(tool: str, spec: dict[str, Any], o: argparse.Namespace) -> dict[str, Any]:
    cmd, env = _command(tool, spec, o)
    out = subprocess.run(["nice", "-n", str(o.nice), *cmd], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{tool} step on {spec['configuration']} failed "
                           f"(exit {out.returncode}):\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def compare(o: argparse.Namespace, plans_path: Path) -> dict[str, Any]:
    """Every round, every plan, every tool, in rotating order; the step times per cell."""
    tools = ["nnpipe", "nnunetv2"] + (["nnpipe-before"] if o.before else [])
    plans = json.loads(plans_path.read_text())
    times: dict[str, dict[str, list[float]]] = {}
    for r in range(o.rounds):
        for dim in o.dims:
            config = V2_CONFIG[dim]
            if config not in plans["configurations"]:
                raise ValueError(f"plans {str(plans_path)!r} have no {config!r} configuration")
            spec = {"plans": str(plans_path), "configuration": config, "dim": dim,
                    "in_channels": o.channels, "num_classes": o.classes,
                    "threads": o.threads, "warmup": o.warmup, "steps": o.steps,
                    "seed": r, "clock": o.clock, "config": str(o.config or "")}
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            for tool in order:
                rec = _run(tool, spec, o)
                times.setdefault(f"{dim}d", {}).setdefault(tool, []).extend(rec["step_s"])
                print(f"round {r + 1}/{o.rounds} {dim}D {tool}: "
                      f"{[round(t, 3) for t in rec['step_s']]} s", flush=True)
    return {"times": times, "threads": o.threads, "clock": o.clock, "steps": o.steps,
            "rounds": o.rounds, "plans": str(plans_path), "load": os.getloadavg()}


def summary(rec: dict[str, Any]) -> str:
    """A markdown table: per plan and tool the median step, its spread, and nnpipe / v2."""
    lines = ["| plan | tool | median step (s) | min - max (s) | steps | / v2 |",
             "|---|---|---|---|---|---|"]
    for plan, by_tool in rec["times"].items():
        v2 = statistics.median(by_tool["nnunetv2"])
        for tool, ts in by_tool.items():
            med = statistics.median(ts)
            lines.append(f"| {plan} | {tool} | {med:.3f} | {min(ts):.2f} - {max(ts):.2f} | "
                         f"{len(ts)} | {med / v2:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[2, 3])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (processes)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per process")
    p.add_argument("--threads", type=int, default=2, help="torch threads, both tools")
    p.add_argument("--clock", choices=("wall", "process"), default="wall")
    p.add_argument("--plans", type=Path, help="a v2 plans file (default: v2's plans of the "
                   "embedded dataset, V2_EMBEDDED)")
    p.add_argument("--channels", type=int, default=EMBEDDED_CHANNELS)
    p.add_argument("--classes", type=int, default=EMBEDDED_CLASSES)
    p.add_argument("--config", type=Path, help="nnpipe study config (its training section)")
    p.add_argument("--before", type=Path, help="src/ of another nnpipe checkout, timed too")
    p.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/nnunetv2-venv"))
    p.add_argument("--nice", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the step times as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one nnpipe process (a spec)
    o = p.parse_args(argv)
    if o.worker:
        print(json.dumps(nnpipe_steps(json.loads(o.worker))))
        return 0
    if o.rounds < 1 or o.steps < 1 or o.threads < 1 or o.warmup < 0:
        p.error("--rounds, --steps and --threads must be >= 1, --warmup >= 0")
    with tempfile.TemporaryDirectory() as tmp:
        plans_path = o.plans
        if plans_path is None:
            plans_path = Path(tmp) / "nnUNetPlans.json"
            plans_path.write_text(json.dumps(V2_EMBEDDED))
        rec = compare(o, plans_path)
    print(summary(rec))
    if o.out:
        o.out.write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
