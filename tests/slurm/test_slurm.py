"""The study through the SLURM profile on a real (local) SLURM cluster, and preemption.

scripts/slurm/start-local-slurm.sh installs and starts munged, slurmctld and slurmd with two
fake GPUs; without root or apt the tests are skipped with the reason. Slow (about 2-4 min on
2 cores): every SLURM job costs 10-15 s of scheduling, so tests/slurm/profile groups cheap
stages and the grid holds one training run, with 2 ranks under torchrun (gloo, CPU).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BIN, HERE, ROOT, RUN, SCRIPTS, TRAIN_LOG

EPOCHS = 30  # tests/slurm/config.yaml: long enough (a few s) to be signalled mid-run
pytestmark = pytest.mark.slurm


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(scope="module")
def cluster():
    """The local cluster: started here (4 CPU slots on this machine's cores, 4 fake GPUs so
    that the benchmarks do not queue the training job), stopped after."""
    check = subprocess.run([str(SCRIPTS / "start-local-slurm.sh"), "--check"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"no local SLURM cluster: {(check.stdout + check.stderr).strip()}")
    t0 = time.monotonic()
    env = dict(os.environ, NNPIPE_SLURM_CPUS="4", NNPIPE_SLURM_GPUS="4")
    start = subprocess.run([str(SCRIPTS / "start-local-slurm.sh")], capture_output=True,
                           text=True, env=env, timeout=600)
    out = (start.stdout + start.stderr).strip()
    if start.returncode != 0:
        if "apt-get could not install" in out:
            pytest.skip(f"no local SLURM cluster: {out}")
        pytest.fail(f"start-local-slurm.sh failed:\n{out}")
    print(f"\n{out} ({time.monotonic() - t0:.1f} s)")
    yield
    if "already running" not in out:  # leave a cluster someone else started
        subprocess.run([str(SCRIPTS / "stop-local-slurm.sh"), "--quiet"], timeout=120)


def snakemake(work: Path, *args: str, timeout: int = 600) -> subprocess.Popen:
    """Start Snakemake on the test study through tests/slurm/profile (not waiting)."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(HERE / "config.yaml"), "--profile", str(HERE / "profile"), *args]
    log = open(work / f"snakemake-{time.monotonic_ns()}.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=_env())
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    proc.deadline = time.monotonic() + timeout  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait; past the deadline SIGINT (Snakemake then cancels its SLURM jobs), then kill."""
    try:
        proc.wait(timeout=max(1.0, proc.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode, proc.log_path.read_text()


def job_states() -> dict[str, tuple[str, str]]:
    """SLURM job id -> (state, comment); finished jobs stay listed for 5 min (MinJobAge)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"],
                         capture_output=True, text=True, check=True).stdout
    return {i: (s, c) for i, s, c in (line.split("|", 2) for line in out.splitlines())}


def epochs_and_losses(path: Path) -> list[tuple[int, float]]:
    with open(path) as f:
        return [(int(r["epoch"]), float(r["val_loss"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("slurmstudy")
    t0 = time.monotonic()
    rc, out = finish(snakemake(work, "results/tables.md"))
    assert rc == 0, out[-5000:]
    print(f"\nstudy through SLURM: {time.monotonic() - t0:.0f} s")
    return work


def test_study_runs_as_slurm_jobs_and_fills_the_table(study):
    text = (study / "results" / "tables.md").read_text()
    row = re.search(r"^\| 2 \| 2 \| \d+ \| (\d+\.\d+) \(1 fold\) \|", text, flags=re.M)
    assert row, text
    scores = (study / "results/slurmtest/evaluate/2d-fp32-2gpu/fold0.csv").read_text()
    assert len(scores.strip().splitlines()) >= 2 and 0.0 <= float(row.group(1)) <= 100.0
    # every non-local stage ran as a SLURM job (cheap ones grouped, see tests/slurm/profile);
    # the fingerprint is a checkpoint (a 2D dataset drops the 3D runs), so the prep group is
    # submitted in two parts: up to the checkpoint, then what the re-evaluated DAG adds;
    # the best configuration (rules/best.smk) reads the run's postprocessing decision
    logs = study / ".snakemake" / "slurm_logs"
    assert {p.name for p in logs.iterdir()} == {
        "group_prep_download_fingerprint", "group_prep_plan_preprocess",
        "group_score_evaluate_predict", "rule_benchmark", "rule_train", "rule_postprocess",
        "rule_best"}


def test_training_job_ran_two_ranks_under_torchrun(study):
    summary = json.loads((study / RUN / "train.json").read_text())
    assert summary["gpus"] == 2 and summary["epochs"] == EPOCHS  # gpus = torch world size
    (slurm_log,) = (study / ".snakemake" / "slurm_logs" / "rule_train").rglob("*.log")
    job = slurm_log.read_text()
    assert "torchrun --standalone --nproc-per-node 2 -m nnpipe train" in job
    assert "gpu=2" in job  # the job's resources: sbatch --gpus=2 (the fake GRES)
    log = (study / TRAIN_LOG).read_text().splitlines()
    print("\n2-rank training log (first and last lines):\n" + "\n".join(log[:2] + log[-1:]))
    # the stage's own progress, one line per epoch from rank 0 only, no progress bars
    epochs = [ln for ln in log if re.search(rf"fold 0 epoch \d+/{EPOCHS} loss", ln)]
    assert len(epochs) == EPOCHS and "\r" not in "".join(log)


def test_preempted_training_resumes_from_its_checkpoint(study):
    """SIGTERM to a running training job (what SLURM sends before a time limit or a
    preemption): it checkpoints and fails; the profile's retry resumes and ends with the
    epochs, and the losses, of the uninterrupted run."""
    uninterrupted = epochs_and_losses(study / RUN / "metrics.csv")
    log = study / TRAIN_LOG
    log.unlink()
    proc = snakemake(study, "--forcerun", f"{RUN}/final.pt", "--", f"{RUN}/final.pt")
    deadline = time.monotonic() + 300
    while not (log.is_file() and f"epoch 3/{EPOCHS}" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)[1][-3000:]
        time.sleep(0.1)
    (job,) = [i for i, (s, c) in job_states().items() if s == "RUNNING" and "rule_train" in c]
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    while job_states()[job][0] not in ("FAILED", "COMPLETED"):
        time.sleep(0.2)
    first_attempt = log.read_text()  # before the retry's job starts and rewrites it
    rc, out = finish(proc)
    assert rc == 0, out[-5000:]
    print(f"\npreemption: job {job} {job_states()[job][0]}; it logged:\n"
          + "\n".join(ln for ln in first_attempt.splitlines() if "nnpipe" in ln)[-600:])
    assert job_states()[job][0] == "FAILED"
    assert "SIGTERM: checkpoint written" in first_attempt  # the failed job's log names why
    retry = log.read_text()
    resumed = re.search(r"resuming fold 0 from \S+last\.pt at epoch (\d+)", retry)
    assert resumed and 3 <= int(resumed.group(1)) < EPOCHS, retry[:2000]
    print(f"retry: {resumed.group(0)}")
    after = epochs_and_losses(study / RUN / "metrics.csv")
    assert [e for e, _ in after] == [e for e, _ in uninterrupted] == list(range(1, EPOCHS + 1))
    # deterministic training (config): the resumed run has the uninterrupted run's weights at
    # every epoch (validation loss on fixed patches). Not train_loss: the interrupted epoch's
    # mean is off when ranks > 1 (only rank 0's partial loss sum is checkpointed).
    assert [loss for _, loss in after] == pytest.approx([loss for _, loss in uninterrupted],
                                                        rel=1e-6)
    assert not (study / RUN / "last.pt").exists()
