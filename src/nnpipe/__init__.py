"""nnpipe: nnU-Net for PyTorch rebuilt as a Snakemake pipeline."""

from __future__ import annotations

__version__ = "0.1.0"
