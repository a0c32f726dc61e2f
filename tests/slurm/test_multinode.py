"""A 2-node training job through the SLURM profile: two slurmd on this machine (n1, n2).

Opt-in (about 3 min on 2 cores, beyond the CI budget): ``NNPIPE_SLURM_MULTINODE=1 pytest
tests/slurm/test_multinode.py``, as root. scripts/slurm/start-local-slurm.sh starts the
cluster with NNPIPE_SLURM_NODES=2: Debian's slurmd runs twice on one host, each node with its
own port (``NodeName=n1 ... Port=17101``, ``slurmd -N n1``). The profile is tests/slurm's with
one fake GPU per node, so the 2-GPU run spans both nodes: its job runs ``srun`` with one
torchrun agent per node (rules/common.smk, nnpipe.training.launch). The same line runs
without SLURM, as two agents, in tests/training/test_two_nodes.py (part of every test run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, HERE, ROOT, RUN, SCRIPTS, TRAIN_LOG

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("NNPIPE_SLURM_MULTINODE") != "1",
                       reason="opt-in: NNPIPE_SLURM_MULTINODE=1 (about 3 min, as root)"),
]


@pytest.fixture(scope="module")
def two_nodes():
    """Two SLURM nodes on this machine, 2 CPUs and 1 fake GPU each; stopped after."""
    check = subprocess.run([str(SCRIPTS / "start-local-slurm.sh"), "--check"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"no local SLURM cluster: {(check.stdout + check.stderr).strip()}")
    env = dict(os.environ, NNPIPE_SLURM_NODES="2", NNPIPE_SLURM_CPUS="2", NNPIPE_SLURM_GPUS="1")
    start = subprocess.run([str(SCRIPTS / "start-local-slurm.sh")], capture_output=True,
                           text=True, env=env, timeout=600)
    out = (start.stdout + start.stderr).strip()
    assert start.returncode == 0, out
    print(f"\n{out}")
    yield
    if "already running" not in out:
        subprocess.run([str(SCRIPTS / "stop-local-slurm.sh"), "--quiet"], timeout=120)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """tests/slurm/profile with one GPU per node: a 2-GPU run spans two nodes."""
    settings = yaml.safe_load((HERE / "profile" / "config.v8+.yaml").read_text())
    settings["config"] = ["gpus_per_node=1"]
    folder = tmp_path_factory.mktemp("profile2nodes")
    (folder / "config.v8+.yaml").write_text(yaml.safe_dump(settings))
    return folder


def _snakemake(work: Path, profile: Path, *args: str) -> subprocess.Popen:
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(HERE / "config.yaml"), "--profile", str(profile), *args]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def _finish(proc: subprocess.Popen, timeout: float = 500) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def _ranks(log: str) -> list[tuple[str, str, str]]:
    """(rank, node rank, SLURM node) of every rank that joined."""
    return re.findall(r"rank (\d) of 2 on node (\d) \(local rank 0\): "
                      r"host \S+ \(SLURM node (n\d)\), cpu, gloo", log)


@pytest.fixture(scope="module")
def study(two_nodes, profile, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("study2nodes")
    t0 = time.monotonic()
    _finish(_snakemake(work, profile, f"{RUN}/final.pt"))
    print(f"\n2-node study up to training through SLURM: {time.monotonic() - t0:.0f} s")
    return work


def test_a_two_node_training_job(study):
    (slurm_log,) = (study / ".snakemake" / "slurm_logs" / "rule_train").rglob("*.log")
    assert "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 torchrun --nnodes 2" in \
        slurm_log.read_text()
    log = (study / TRAIN_LOG).read_text()
    print("\n".join(ln for ln in log.splitlines() if re.search(r"rank \d", ln)))
    # one rank on each SLURM node, the rendezvous numbering the nodes 0 and 1
    joined = _ranks(log)
    assert sorted((r, n) for r, n, _ in joined) == [("0", "0"), ("1", "1")]
    assert sorted(s for _, _, s in joined) == ["n1", "n2"]
    run = study / RUN
    assert sorted(p.name for p in run.glob("*.pt")) == ["final.pt"]
    assert json.loads((run / "train.json").read_text())["gpus"] == 2


def test_sigterm_on_both_nodes_checkpoints_and_the_retry_resumes(study, profile):
    """The warning signal (here scancel --signal=TERM) reaches both nodes' agents and ranks:
    the ranks agree to stop, rank 0 writes last.pt, the job fails, the retry resumes on two
    nodes again."""
    log = study / TRAIN_LOG
    log.unlink()
    proc = _snakemake(study, profile, "--forcerun", f"{RUN}/final.pt", "--", f"{RUN}/final.pt")
    deadline = time.monotonic() + 300
    while not (log.is_file() and "epoch 3/" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    jobs = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True,
                          text=True, check=True).stdout.splitlines()
    (job,) = [j.split("|")[0] for j in jobs if "rule_train" in j]
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    while subprocess.run(["squeue", "-h", "--states=all", "-j", job, "-o", "%T"],
                         capture_output=True, text=True).stdout.strip() not in (
                             "FAILED", "COMPLETED"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first = log.read_text()  # before the retry rewrites it
    _finish(proc)
    # both ranks, one per node, saw the signal and stopped at the same step
    # (rank 0 wrote the checkpoint; rank 1 says where it stopped and where rank 0 wrote it)
    stops = re.findall(r"SIGTERM: (?:checkpoint written to \S+ at|rank 1 stopped at) "
                       r"epoch (\d+) step (\d+)", first)
    assert len(stops) == 2 and stops[0] == stops[1], first[-3000:]
    assert first.count("SIGTERM: checkpoint written") == 1, first[-3000:]
    retry = log.read_text()
    resumed = re.search(r"resuming fold 0 from \S+last\.pt at epoch (\d+) step (\d+)", retry)
    assert resumed and resumed.groups() == stops[0], retry[:2000]
    assert sorted(s for _, _, s in _ranks(retry)) == ["n1", "n2"]
    print(f"\nSIGTERM to job {job}: {stops[0]}; retry: {resumed.group(0)}")
    assert sorted(p.name for p in (study / RUN).glob("*.pt")) == ["final.pt"]
