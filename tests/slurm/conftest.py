"""Paths shared by the SLURM tests: the repository, the local-cluster scripts, the 2-GPU run."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCRIPTS = ROOT / "scripts" / "slurm"
BIN = Path(sys.executable).parent
RUN = "results/slurmtest/train/2d-fp32-2gpu/fold0"
TRAIN_LOG = "results/slurmtest/logs/train/2d-fp32-2gpu/fold0.log"
