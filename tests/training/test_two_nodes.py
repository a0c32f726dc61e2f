"""Two nodes, proven on one machine: the multi-node launch a SLURM job runs, as two agents.

A multi-node train job runs ``srun ... torchrun --nnodes 2 ... --rdzv-backend c10d
--rdzv-endpoint $(hostname):PORT --rdzv-id $SLURM_JOB_ID -m nnpipe train ...`` in its batch
step (rules/train.smk, nnpipe.training.launch). Here that line, with only ``srun`` left out,
runs twice on this machine as two separate agents: they meet at the c10d rendezvous (no
``--node-rank``), number themselves node 0 and node 1, and train one fold for a few steps
with gloo on the CPU. Each agent's log must show its own rank at work, and the run must end
with exactly one checkpoint.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nnpipe.training.launch import (
    RDZV_PORT_BASE,
    RDZV_PORTS,
    agent_command,
    launcher,
    srun_prefix,
)
from nnpipe.training.splits import load_fold

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODES = 2
SETTINGS = {"training": {"epochs": 1, "steps_per_epoch": 2, "val_patches": 2,
                         "deterministic": True}}
FOLD = 0
# a hung rendezvous or collective fails the test instead of blocking CI (the run itself
# takes 15-40 s on a loaded 2-core machine, most of it four processes importing torch)
TIMEOUT_S = 150


def _free_job_id() -> str:
    """A fake SLURM job id whose rendezvous port (the rule's ``RDZV_PORT_BASE + id %
    RDZV_PORTS``) is free on this machine, so parallel test runs do not meet each other."""
    offsets = list(range(RDZV_PORTS))
    random.shuffle(offsets)
    for offset in offsets:
        with socket.socket() as s:
            try:
                s.bind(("", RDZV_PORT_BASE + offset))
            except OSError:
                continue
        return str(1000 * RDZV_PORTS + offset)
    pytest.fail(f"no free port in {RDZV_PORT_BASE}..{RDZV_PORT_BASE + RDZV_PORTS - 1}")


def _rule_shell() -> str:
    """The train rule's ``shell:`` template: its string literals, comments skipped."""
    body = (ROOT / "rules/train.smk").read_text().split("    shell:\n", 1)[1]
    parts = []
    for line in body.splitlines():
        if line.strip().startswith("#"):
            continue
        if not line.strip().startswith('"'):
            break
        parts.append(ast.literal_eval(line.strip()))
    return "".join(parts)


def _shell(study, out: Path, log: Path) -> str:
    """The train rule's shell for a 2-GPU run of 1-GPU nodes, rendered as Snakemake would,
    with only ``srun`` left out. In a SLURM job srun gathers both agents' output into the one
    ``{log}``; here each agent writes its own, so the test can tell the nodes apart."""
    shutdown_s = re.search(r"^TORCHRUN_SHUTDOWN_S = (\d+)$",
                           (ROOT / "rules/train.smk").read_text(), re.M).group(1)
    full = launcher(NODES, NODES)
    srun = srun_prefix(NODES) + " "
    assert full.startswith(srun)
    params = SimpleNamespace(
        torchrun_shutdown_s=shutdown_s, launch=full.removeprefix(srun),
        settings=shlex.quote(json.dumps(SETTINGS)), preprocessed=study.preprocessed[3], out=out,
        cascade="")  # a 3d run: no cascade arguments (rules/common.smk get_train_cascade_args)
    # Snakemake's `{x:q}` is shlex quoting: the value above is quoted already
    return _rule_shell().replace(":q}", "}").format(
        params=params, input=SimpleNamespace(splits=study.splits), threads=1, log=log,
        wildcards=SimpleNamespace(fold=FOLD, precision="fp32"))


def _run_agents(lines: list[str], logs: list[Path]) -> list[int]:
    """Start one agent per line (each in its own session, like srun's tasks), wait for all;
    past TIMEOUT_S kill every process the agents started and fail."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               SLURM_JOB_ID=_free_job_id(), OMP_NUM_THREADS="1")
    procs = []
    for line, log in zip(lines, logs, strict=True):
        procs.append(subprocess.Popen(["bash", "-c", line], env=env, start_new_session=True,
                                      cwd=log.parent))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        pytest.fail(f"the two agents did not finish in {TIMEOUT_S} s:\n"
                    + "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs))


def test_the_multinode_line_is_the_agent_line_behind_srun():
    """What each node runs is the rule's launch with only ``srun`` (and its flags) left out."""
    assert launcher(4, 2) == f"{srun_prefix(2)} {agent_command(4, 2)}"
    assert launcher(NODES, NODES) == f"{srun_prefix(NODES)} {agent_command(NODES, NODES)}"
    assert "--node-rank" not in agent_command(NODES, NODES)


@pytest.mark.slow  # starts processes (torchrun, signals): make test, not make check
def test_two_agents_train_one_fold_as_two_nodes(tiny_study, tmp_path):
    out = tmp_path / "fold0"
    logs = [tmp_path / f"node{i}.log" for i in range(NODES)]
    t0 = time.monotonic()
    lines = [_shell(tiny_study, out, log) for log in logs]
    print("\neach node runs:", lines[0])
    codes = _run_agents(lines, logs)
    took = time.monotonic() - t0
    texts = [log.read_text() for log in logs]
    assert codes == [0] * NODES, "\n".join(f"--- {t}" for t in texts)

    # each agent's log holds the lines of one rank, on its own node: both nodes took part
    ranks, shards = [], []
    for text in texts:
        (joined,) = re.findall(rf"rank (\d) of {NODES} on node (\d) \(local rank 0\): "
                               r"host [^,]+, cpu, gloo", text)
        (shard,) = re.findall(r"rank (\d) on node (\d): \d+ of \d+ training cases \((.*)\)",
                              text)
        assert joined == shard[:2]  # nproc-per-node 1: rank = node
        ranks.append(joined)
        shards.append(set(shard[2].split(", ")))
    assert sorted(ranks) == [("0", "0"), ("1", "1")]
    # the nodes' ranks sampled disjoint shards of the fold's training cases
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(load_fold(tiny_study.splits, FOLD)["train"])
    # rank 0 alone logs epochs and writes: one epoch line, one checkpoint
    assert sum(t.count(f"fold {FOLD} epoch 1/1 loss") for t in texts) == 1
    assert sorted(p.name for p in out.glob("*.pt")) == ["final.pt"]
    ckpt = torch.load(out / "final.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == NODES and len(ckpt["loader"]) == NODES
    assert ckpt["gpus"] == 0 and ckpt["state"]["epoch"] == 1
    assert json.loads((out / "train.json").read_text())["gpus"] == NODES
    print(f"\ntwo nodes in {took:.1f} s:\n" + "\n".join(
        ln for t in texts for ln in t.splitlines() if re.search(r"rank \d|epoch 1/1", ln)))
