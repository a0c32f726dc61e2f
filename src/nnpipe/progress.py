"""Progress output that suits both a terminal and a scheduler's log file.

One line per unit of work (case, epoch), flushed at once, to stderr: readable in
``logs/...`` files written by Snakemake or SLURM, where redrawn progress bars would flood.
"""

from __future__ import annotations

import sys
import time

_T0 = time.monotonic()


def log(message: str) -> None:
    """Print ``[nnpipe +12.3s] message`` to stderr and flush."""
    print(f"[nnpipe +{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)
