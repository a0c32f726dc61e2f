"""nnpipe: nnU-Net for PyTorch rebuilt as a Snakemake pipeline."""

from __future__ import annotations

from nnpipe.version import __version__

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> object:
    # `from nnpipe import Predictor` loads torch and the inference code only when asked, so
    # `import nnpipe` (the CLI, Snakemake's rule files) stays light
    if name == "Predictor":
        from nnpipe.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'nnpipe' has no attribute {name!r}")
