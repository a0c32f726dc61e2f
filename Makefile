# The two commands: `make demo` runs the default study, `make test` runs the tests.
# Each creates the virtual environment .venv on first use (Python 3.10+ and pip suffice).

VENV ?= .venv
CORES ?= all
# The CPU build of torch; set TORCH= (empty) to keep whatever torch the venv already has,
# or e.g. TORCH=torch==2.11.0 for a CUDA machine.
TORCH ?= torch==2.13.0
PYTHON ?= python3
# NVIDIA DALI (the optional GPU data pipeline; its CPU pipelines run in the tests) ships
# wheels for x86-64 Linux only.
# formats: SimpleITK, tifffile and Pillow (NRRD, MetaImage, TIFF, PNG/BMP).
EXTRAS ?= dev,formats$(if $(filter x86_64,$(shell uname -m)),$(comma)dali)
comma := ,

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.installed

.PHONY: demo test lint env clean

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

lint: $(STAMP)
	$(BIN)/ruff check src tests workflow
	$(BIN)/snakemake --lint

# -rs prints why a test was skipped (tests/slurm starts a local SLURM cluster itself when it
# runs as root with apt-get, through scripts/slurm/start-local-slurm.sh; skipped otherwise)
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf results logs benchmarks .snakemake
