"""Cases in parallel under a RAM budget.

nnU-Net v2 preprocesses with a fixed number of processes, so a few large cases arriving
together can take more RAM than the machine has. Here every case first gets a peak-memory
estimate from its NIfTI headers alone (shape, channels, spacing: no voxel is read), and a
case starts only while the estimates of the cases in flight, plus its own, fit the budget; a
case larger than the whole budget runs alone. ``workers`` still caps the processes.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from nnpipe.datasets.layout import Case
from nnpipe.imageio import read_header
from nnpipe.preprocessing.resample import target_shape

T = TypeVar("T")
R = TypeVar("R")

GB = 1024**3


def estimate_case_bytes(case: Case, target_spacing: Callable[[Sequence[float]], Sequence[float]]
                        ) -> int:
    """Peak bytes one case needs while it is preprocessed, from its headers (no voxel read).

    With ``n`` input and ``m`` output voxels per channel and ``C`` channels: the float32 image
    and its normalized copy, normalized before resampling (``8Cn``), the filled nonzero mask
    and scipy's temporaries while filling it (``2n``), the float64 spline coefficients of the
    channel being resampled (``8n``), the resampled channels and their stacked copy
    (``8Cm``), and for the label one float32 class map in and two out (``4n + 8m``) plus the
    uint8 maps. Measured peaks stay below this (tests/preprocessing/test_parallel.py).
    """
    headers = [read_header(p, case=case.case_id) for p in case.images]
    spatial = headers[0].shape
    spacing = headers[0].spacing
    channels = sum(h.channels for h in headers)
    n = math.prod(spatial)
    target = target_spacing(spacing)
    m = math.prod(target_shape(spatial, spacing, target))
    return 8 * channels * n + 8 * n + 8 * channels * m + 7 * n + 10 * m


def _finished(done: queue.Queue[tuple[int, bool, Any]], index: int, ok: bool,
              result: Any) -> None:
    """Pool callback: item ``index`` ended with ``result`` (its value, or the exception)."""
    done.put((index, ok, result))


def imap_bounded(func: Callable[[T], R], items: Sequence[T], costs: Sequence[int],
                 workers: int, budget_bytes: int = 0) -> Iterator[R]:
    """``func`` over ``items`` in up to ``workers`` processes; results as they finish.

    Items start in order; an item starts only while the running items' ``costs`` plus its
    own stay within ``budget_bytes`` (0: no budget), or when nothing else runs. The first
    exception in a worker stops the pool and is re-raised here.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if budget_bytes < 0:
        raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
    if len(costs) != len(items):
        raise ValueError(f"{len(costs)} costs for {len(items)} items")
    if workers == 1 or len(items) <= 1:
        yield from map(func, items)
        return
    # fork: spawn would re-run a Snakemake script: (no __main__ guard) in every worker.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    done: queue.Queue[tuple[int, bool, Any]] = queue.Queue()
    pending = deque(range(len(items)))
    running: dict[int, int] = {}
    with multiprocessing.get_context(method).Pool(min(workers, len(items))) as pool:
        while pending or running:
            while pending and len(running) < workers and (
                    not running or budget_bytes == 0
                    or sum(running.values()) + costs[pending[0]] <= budget_bytes):
                i = pending.popleft()
                running[i] = costs[i]
                pool.apply_async(func, (items[i],),
                                 callback=functools.partial(_finished, done, i, True),
                                 error_callback=functools.partial(_finished, done, i, False))
            i, ok, result = done.get()
            del running[i]
            if not ok:
                pool.terminate()
                raise result
            yield result
