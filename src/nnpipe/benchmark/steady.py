"""Steady-state timing: warm up until step times agree, time enough steps for p99, judge spread.

Pure functions over a step callable and a clock (seconds), so that a fake clock can drive
them in tests; :mod:`nnpipe.benchmark.throughput` passes ``time.perf_counter`` and a step
that synchronises the GPU.

**Warm-up.** The first steps of a benchmark are slower (cuDNN autotuning, allocator growth,
oneDNN primitive caches, page faults). A fixed number of warm-up steps is either too few (a
GPU autotuner still running) or wasted; instead warm-up runs at least ``min_steps`` and then
until the last :data:`WARMUP_WINDOW` step times agree within :data:`WARMUP_TOLERANCE`
(range / median), or until ``cap_s`` seconds have passed. The record says which.

**How many timed steps.** The p99 of ``n`` step times is estimated from the ``n / 100``
slowest of them. The chance that at least one of ``n`` steps lies beyond the true p99 is
``1 - 0.99**n``; we ask for 97.5 %, which makes the slowest observed step the upper end of a
distribution-free 95 % confidence interval for p99 (below that, p99 is not bounded by any
observation: it is the maximum of a sample too small to contain the tail). That needs
``n >= ln(0.025) / ln(0.99) = 367.0``, i.e. 368 steps (p95: 72, p90: 36).
:func:`steps_for_quantile` computes it. Timing stops at that count, or at ``cap_s`` after
the configured minimum; a record with fewer steps says ``p99_resolved: false``.

**When a figure is not a result.** The figure is the reference's: samples/s from the mean
step time over the timed window; the median, p90 and p99 are recorded beside it. A step of
10-40 ms on a shared CPU has a long right tail (another process takes the core for a
moment), which widens the spread (CV, p99/median) without making the mean wrong: the
reference, too, reports a mean over an epoch. So spread alone marks nothing. A cell is
marked only when the measurement itself failed (:func:`measurement_failure`):

* too few timed steps (fewer than :data:`MIN_TIMED_STEPS`): no median or spread to judge;
* mean and median disagree by more than :data:`MAX_MEAN_MEDIAN_GAP` (30 %): the step times
  fall in two groups (another job held the machine for part of the window, or a step that
  sometimes recompiles), and the mean describes neither.

The demo's 18 samples/s cell that stood beside 1,397 at the next batch size (mean 441 ms,
p99 1028 ms in 5 steps: a few stalled steps among fast ones) fails the second test.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Time caps (s) of the two phases; the configured minimum step counts are run regardless.
# Sized for the demo: a cell of the 2-core demo study reaches 368 steps or a minute.
WARMUP_CAP_S = 30.0
TIMING_CAP_S = 60.0
# warm-up: the last WARMUP_WINDOW steps must lie within WARMUP_TOLERANCE * their median
WARMUP_WINDOW = 5
WARMUP_TOLERANCE = 0.10
# p99 needs 368 steps (module docstring); the confidence asked of the sample maximum
P99 = 0.99
QUANTILE_CONFIDENCE = 0.95
# a failed measurement (module docstring): fewer timed steps than this, or mean and median
# step time further apart than this fraction of the median
MIN_TIMED_STEPS = 4
MAX_MEAN_MEDIAN_GAP = 0.30
# records written before the median was recorded: judged by p99 / mean (the old limit)
LEGACY_MAX_P99_OVER_MEAN = 2.0

def steps_for_quantile(q: float = P99, confidence: float = QUANTILE_CONFIDENCE) -> int:
    """Fewest steps ``n`` for which the slowest of them bounds the ``q`` quantile from above
    with the two-sided ``confidence``: ``1 - q**n >= 1 - (1 - confidence) / 2``.

    >>> steps_for_quantile(0.99), steps_for_quantile(0.95), steps_for_quantile(0.90)
    (368, 72, 36)
    """
    if not 0 < q < 1 or not 0 < confidence < 1:
        raise ValueError(f"quantile and confidence must lie in (0, 1), got {q} and {confidence}")
    return math.ceil(math.log((1 - confidence) / 2) / math.log(q))


@dataclass(frozen=True)
class WarmupResult:
    steps: int
    seconds: float
    converged: bool  # the last WARMUP_WINDOW steps agreed; False: stopped by the time cap
    last_ms: tuple[float, ...]  # the last window's step times, ms

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds, "converged": self.converged,
                "last_ms": list(self.last_ms)}


def agree(times: list[float], window: int = WARMUP_WINDOW,
          tolerance: float = WARMUP_TOLERANCE) -> bool:
    """Whether the last ``window`` step times lie within ``tolerance`` of their median
    (``(max - min) / median <= tolerance``)."""
    if len(times) < window:
        return False
    last = times[-window:]
    median = statistics.median(last)
    return median > 0 and (max(last) - min(last)) / median <= tolerance


def _one(step: Callable[[], None], clock: Callable[[], float]) -> float:
    t0 = clock()
    step()
    return clock() - t0


def all_ranks(decision: bool) -> bool:
    """One process: the decision itself (the default ``consensus``)."""
    return decision


def warm_up(step: Callable[[], None], clock: Callable[[], float], min_steps: int,
            cap_s: float, consensus: Callable[[bool], bool] = all_ranks) -> WarmupResult:
    """Run ``step`` at least ``min_steps`` times, then until the step times agree
    (:func:`agree`) or ``cap_s`` seconds of warm-up have passed.

    ``consensus`` turns one rank's wish to stop into the decision of all ranks (in DDP every
    rank must take the same number of steps, or the gradient all-reduce hangs).
    """
    if min_steps < 0 or cap_s < 0:
        raise ValueError(f"warm-up needs min_steps >= 0 and cap_s >= 0, got {min_steps} and "
                         f"{cap_s}")
    start = clock()
    times: list[float] = []
    converged = False
    while True:
        if len(times) >= min_steps:
            converged = agree(times)
            if consensus(converged or clock() - start >= cap_s):
                break
        times.append(_one(step, clock))
    last = tuple(t * 1000.0 for t in times[-WARMUP_WINDOW:])
    return WarmupResult(len(times), clock() - start, converged, last)


def time_steps(step: Callable[[], None], clock: Callable[[], float], min_steps: int,
               cap_s: float, target_steps: int | None = None,
               consensus: Callable[[bool], bool] = all_ranks) -> list[float]:
    """Step times (s) of at least ``min_steps`` steps, then on until ``target_steps``
    (default: ``max(min_steps, steps_for_quantile())``) or ``cap_s`` seconds of timing."""
    if min_steps < 2:
        raise ValueError(f"timing needs min_steps >= 2, got {min_steps}")
    target = max(min_steps, steps_for_quantile() if target_steps is None else target_steps)
    start = clock()
    times: list[float] = []
    while True:
        if len(times) >= min_steps and consensus(
                len(times) >= target or clock() - start >= cap_s):
            return times
        times.append(_one(step, clock))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics
    (numpy's default method)."""
    ordered = sorted(values)
    pos = q / 100.0 * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def step_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Latency (ms) mean, median, p90, p95, p99; spread (CV = sample std / mean,
    p99/median, mean/median); whether p99 is resolved (enough steps,
    :func:`steps_for_quantile`) and whether the measurement stands (``steady``:
    :func:`measurement_failure` finds nothing)."""
    if len(seconds) < 2:
        raise ValueError(f"step statistics need >= 2 step times, got {len(seconds)}")
    ms = [t * 1000.0 for t in seconds]
    latency = {"mean": statistics.fmean(ms), "median": statistics.median(ms),
               **{f"p{q}": percentile(ms, q) for q in (90, 95, 99)}}
    spread = {"cv": statistics.stdev(ms) / latency["mean"],
              "p99_over_median": latency["p99"] / latency["median"],
              "mean_over_median": latency["mean"] / latency["median"]}
    return {"latency_ms": latency, "spread": spread,
            "p99_resolved": len(ms) >= steps_for_quantile(),
            "steady": measurement_failure(latency, len(ms)) is None}


def measurement_failure(latency_ms: Mapping[str, float], timed_steps: int | None) -> str | None:
    """Why a cell's figure is not a result, with what to do; ``None``: it is one.

    ``latency_ms``: step times' ``mean`` and ``median`` (ms); ``timed_steps``: how many
    (``None``: not recorded). Module docstring: too few steps, or a mean and a median more
    than :data:`MAX_MEAN_MEDIAN_GAP` apart.
    """
    if timed_steps is not None and timed_steps < MIN_TIMED_STEPS:
        return (f"{timed_steps} timed steps < {MIN_TIMED_STEPS}: raise benchmark.timed_steps "
                "or benchmark.max_timing_s")
    mean, median = float(latency_ms["mean"]), float(latency_ms["median"])
    gap = abs(mean - median) / median if median > 0 else math.inf
    if gap > MAX_MEAN_MEDIAN_GAP:
        return (f"mean {mean:.4g} ms vs median {median:.4g} ms step, {gap:.0%} apart: two "
                "groups of step times (another job on the machine?); rerun this cell alone")
    return None


def record_failure(record: Mapping[str, Any]) -> str | None:
    """:func:`measurement_failure` of a benchmark record. Records written before the median
    was recorded carry only mean and p99 latency: p99/mean above
    :data:`LEGACY_MAX_P99_OVER_MEAN` marks them (a few stalled steps among fast ones)."""
    lat = record["latency_ms"]
    steps = record.get("timed_steps")
    if "median" in lat:
        return measurement_failure(lat, None if steps is None else int(steps))
    ratio = float(lat["p99"]) / float(lat["mean"])
    if ratio > LEGACY_MAX_P99_OVER_MEAN:
        return (f"p99/mean {ratio:.2f} > {LEGACY_MAX_P99_OVER_MEAN:.1f} and no median "
                "recorded; rerun this cell")
    return None
