# The two commands: `make demo` runs the default study, `make test` runs the tests.
# Each creates the virtual environment .venv on first use (Python 3.10+ and pip suffice).

VENV ?= .venv
CORES ?= all
# torch, installed before nnpipe. A plain version pin, so pip picks the build: on this
# project's machines pip's local wheel folder supplies the CPU build (2.13.0+cpu); elsewhere
# pip installs PyPI's default build (on Linux x86-64 the CUDA one). TORCH=torch==2.11.0 pins
# another version; TORCH= (empty) installs none and keeps the torch .venv already has (put a
# CPU or a specific CUDA build there first). docs/install.md says more.
TORCH ?= torch==2.13.0
PYTHON ?= python3
# NVIDIA DALI (training.loader: dali, a GPU data pipeline; about 1 GB) only where it can
# run: x86-64 Linux (its only wheels) with an NVIDIA GPU (nvidia-smi on the PATH). Elsewhere
# ask for it: make env EXTRAS=dev,formats,dali (its CPU pipelines then run in the tests).
# formats: SimpleITK, tifffile and Pillow (NRRD, MetaImage, TIFF, PNG/BMP).
GPU := $(shell command -v nvidia-smi 2>/dev/null)
EXTRAS ?= dev,formats$(if $(and $(filter x86_64,$(shell uname -m)),$(GPU)),$(comma)dali)
comma := ,

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install --quiet "$(TORCH)")
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) results/tables.md
	@echo "== results/tables.md =="
	@cat results/tables.md

lint: $(STAMP) typecheck
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint

# mypy on src/nnpipe, configured in pyproject.toml ([tool.mypy]); about 20-30 s from a clean
# clone on 2 cores, under a second when .mypy_cache is current
typecheck: $(STAMP)
	$(BIN)/mypy

# -rs prints why a test was skipped (tests/slurm starts a local SLURM cluster itself when it
# runs as root with apt-get, through scripts/slurm/start-local-slurm.sh; skipped otherwise)
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs --durations=25

# The fast tier for the edit-test loop: ruff, then every test but the Snakemake runs
# (tests/workflow), the local SLURM cluster (tests/slurm) and the few that start training
# processes (marker slow: torchrun ranks, SIGTERM/SIGKILL). `make test` stays the full suite.
check: $(STAMP)
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/python -m pytest -q -m "not workflow and not slurm and not slow" --durations=10

# results/ holds every study (outputs, logs, Snakemake timings); logs/ is where studies
# before per-dataset folders wrote their logs
clean:
	rm -rf results logs .snakemake
