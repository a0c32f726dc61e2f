"""``nnpipe benchmark --gpus N``: start N ranks with torchrun, measure weak scaling.

The reference's ``scripts/benchmark.py --gpus N`` launches its ranks itself; so does
:func:`measure_ranks`: one torchrun of 1 rank (the baseline) and one of N ranks, each rank
running :func:`nnpipe.benchmark.throughput.run_benchmark` on the same spec and plan (passed
as a JSON job file, read by :func:`main`). Weak scaling = throughput of N ranks / throughput
of 1 rank, at the same batch per rank, as in the reference's tables (ideal: N). GPUs get one
rank each (NCCL); without GPUs, or with ``--cpu``, the ranks share the CPUs (gloo) with
``cores / N`` threads each unless ``--threads`` says otherwise, in the baseline as well, so
that a rank has the same resources in both runs.

Under a torchrun the caller started (the workflow's launcher for a ``-{N}gpu`` cell), the
CLI does not start ranks: it is one of them.

``--bind`` pins each rank to its own contiguous share of the CPUs this process may use
(``os.sched_setaffinity``), rank ``local_rank`` taking share ``local_rank`` of
``LOCAL_WORLD_SIZE``; the reference binds each GPU's rank to the cores of its NUMA node,
which this matches where cores are numbered node by node (the usual Linux numbering).

    python -m nnpipe.benchmark.launch JOB.json   # what each rank runs
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nnpipe.benchmark.throughput import BenchmarkSpec, result_line, run_benchmark
from nnpipe.io import read_json, write_json
from nnpipe.planning.plan import Plan


class RanksFailed(RuntimeError):
    """A torchrun of benchmark ranks exited with an error (the ranks' own messages were
    printed on stderr before)."""


@dataclasses.dataclass(frozen=True)
class RankJob:
    """What every rank measures; written as JSON for the ranks to read."""

    spec: BenchmarkSpec
    plan: Plan
    preprocessed: str | None = None
    threads: int | None = None
    force_cpu: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "plan": self.plan.to_dict(),
                "preprocessed": self.preprocessed, "threads": self.threads,
                "force_cpu": self.force_cpu}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankJob:
        return cls(BenchmarkSpec.from_dict(d["spec"]), Plan.from_dict(d["plan"]),
                   d["preprocessed"], d["threads"], d["force_cpu"])


def inside_torchrun() -> bool:
    """Whether this process is a rank of a torchrun (it sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ


def torchrun_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _per_rank_threads(job: RankJob, n: int) -> int | None:
    """Threads per rank: the given number, else on CPUs ``cores / n`` (the baseline's one
    rank gets as many as each of the n ranks), else (GPUs) torch's default."""
    if job.threads:
        return job.threads
    import torch

    if torch.cuda.is_available() and not job.force_cpu:
        return None
    return max(1, len(os.sched_getaffinity(0)) // n)


def run_ranks(job: RankJob, n: int, work: Path) -> dict[str, Any]:
    """Run ``job`` on ``n`` torchrun ranks; returns rank 0's record.

    Raises:
        RanksFailed: if torchrun exits with an error.
    """
    job_path, record_path = work / f"job-{n}.json", work / f"record-{n}.json"
    threads = _per_rank_threads(job, n)
    write_json(job_path, dataclasses.replace(job, threads=threads).to_dict())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={n}", "-m", "nnpipe.benchmark.launch", str(job_path),
           str(record_path)]
    env = dict(os.environ)
    if threads:  # torchrun would otherwise set OMP_NUM_THREADS=1 for every rank
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, check=False, env=env)
    if done.returncode != 0 or not record_path.is_file():
        raise RanksFailed(f"torchrun of {n} benchmark rank(s) exited with code "
                          f"{done.returncode} (command: {' '.join(cmd)})")
    return read_json(record_path)


def measure_ranks(job: RankJob, n: int) -> dict[str, Any]:
    """The ``n``-rank record with the 1-rank baseline and the weak scaling added
    (``one_rank``: the baseline's throughput, median-based throughput and spread)."""
    if n < 2:
        raise ValueError(f"measure_ranks starts >= 2 ranks, got {n}")
    _check_devices(job, n)
    with tempfile.TemporaryDirectory(prefix="nnpipe-bench-") as tmp:
        one = run_ranks(job, 1, Path(tmp))
        print(result_line(one), flush=True)
        record = run_ranks(job, n, Path(tmp))
    record["one_rank"] = {k: one[k] for k in ("throughput", "throughput_median", "spread",
                                              "steady", "timed_steps", "device")}
    record["weak_scaling"] = record["throughput"] / one["throughput"]
    return record


def _check_devices(job: RankJob, n: int) -> None:
    """Refuse, before any rank starts, what every rank would fail on."""
    import torch

    from nnpipe.training.precision import get_precision

    use_cuda = torch.cuda.is_available() and not job.force_cpu
    if use_cuda and n > torch.cuda.device_count():
        raise ValueError(f"--gpus {n}, but {torch.cuda.device_count()} GPU(s) are visible; "
                         "give at most that many, or --cpu for CPU ranks")
    get_precision(job.spec.precision, torch.device("cuda" if use_cuda else "cpu"))


def main(argv: list[str] | None = None) -> int:
    """One rank: ``JOB.json RECORD.json``; rank 0 writes the record."""
    job_file, record_file = argv if argv is not None else sys.argv[1:]
    job = RankJob.from_dict(read_json(Path(job_file)))
    record = run_benchmark(job.plan, job.spec,
                           Path(job.preprocessed) if job.preprocessed else None,
                           threads=job.threads, force_cpu=job.force_cpu)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(record_file, record)
    return 0


if __name__ == "__main__":
    status = main()  # the process group is destroyed inside (run_benchmark's finally)
    sys.stdout.flush()
    sys.stderr.flush()
    # A rank leaves without the interpreter's teardown: there, gloo's C++ worker threads can
    # be destroyed while joinable ("terminate called without an active exception", SIGABRT),
    # failing a run whose record is already written (seen once in `make test` on 2 CPU ranks;
    # pytorch/pytorch#179291 describes the teardown race).
    os._exit(status)
