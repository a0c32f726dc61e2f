from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import pytest

from nnpipe.benchmark.steady import (
    MAX_MEAN_MEDIAN_GAP,
    MIN_TIMED_STEPS,
    WARMUP_WINDOW,
    agree,
    measurement_failure,
    percentile,
    record_failure,
    step_stats,
    steps_for_quantile,
    time_steps,
    warm_up,
)


class FakeClock:
    """Seconds that advance only when a step runs, by the next of ``durations``."""

    def __init__(self, durations: Iterable[float]) -> None:
        self.now = 0.0
        self.durations = iter(durations)
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += next(self.durations)
        self.steps += 1


@pytest.mark.parametrize(("q", "n"), [(0.99, 368), (0.95, 72), (0.90, 36)])
def test_steps_for_quantile(q, n):
    # the sample maximum bounds the q-quantile with 97.5 % (two-sided 95 %) from n steps on
    assert steps_for_quantile(q) == n
    assert 1 - q**n >= 0.975 > 1 - q ** (n - 1)


def test_steps_for_quantile_refuses_nonsense():
    with pytest.raises(ValueError, match="quantile"):
        steps_for_quantile(1.0)


def test_warm_up_converges_when_the_last_steps_agree():
    # slow first steps (autotuning), then steady within 2 %
    clock = FakeClock([5.0, 3.0, 2.0, 1.0, 1.02, 0.99, 1.01, 1.0] + [1.0] * 100)
    result = warm_up(clock.step, clock, min_steps=2, cap_s=1000.0)
    assert result.converged
    assert result.steps == 8  # steps 4..8 are the first window of 5 that agree
    assert result.seconds == pytest.approx(15.02)
    assert result.last_ms == pytest.approx((1000.0, 1020.0, 990.0, 1010.0, 1000.0))


def test_warm_up_stops_at_the_time_cap_when_steps_never_agree():
    clock = FakeClock(itertools.cycle([1.0, 2.0]))  # alternating: range/median 0.67
    result = warm_up(clock.step, clock, min_steps=2, cap_s=20.0)
    assert not result.converged
    # 13 steps take 19 s (7 x 1 + 6 x 2); the 14th brings it to 21 >= 20
    assert result.steps == 14 and result.seconds == 21.0


def test_warm_up_runs_the_configured_steps_even_when_steady_at_once():
    clock = FakeClock(itertools.repeat(1.0))
    result = warm_up(clock.step, clock, min_steps=12, cap_s=1000.0)
    assert result.steps == 12 and result.converged


def test_warm_up_runs_the_configured_steps_even_beyond_the_cap():
    clock = FakeClock(itertools.repeat(100.0))
    result = warm_up(clock.step, clock, min_steps=3, cap_s=30.0)
    assert result.steps == 3 and not result.converged


def test_warm_up_continues_until_every_rank_agrees():
    clock = FakeClock(itertools.repeat(1.0))
    votes = iter([False, False, True])  # the other ranks want two more steps
    result = warm_up(clock.step, clock, min_steps=WARMUP_WINDOW, cap_s=1000.0,
                     consensus=lambda mine: mine and next(votes))
    assert result.steps == WARMUP_WINDOW + 2


def test_agree_window_and_tolerance():
    assert not agree([1.0] * (WARMUP_WINDOW - 1))
    assert agree([9.0] + [1.0, 1.05, 0.96, 1.0, 1.0])
    assert not agree([1.0, 1.0, 1.0, 1.0, 1.2])


def test_time_steps_goes_on_to_the_p99_count():
    clock = FakeClock(itertools.repeat(0.01))
    times = time_steps(clock.step, clock, min_steps=50, cap_s=1000.0)
    assert len(times) == steps_for_quantile() == 368


def test_time_steps_stops_at_the_cap_but_not_before_the_minimum():
    clock = FakeClock(itertools.repeat(1.0))
    assert len(time_steps(clock.step, clock, min_steps=10, cap_s=30.0)) == 30
    clock = FakeClock(itertools.repeat(10.0))
    assert len(time_steps(clock.step, clock, min_steps=10, cap_s=30.0)) == 10


def test_time_steps_measures_each_step():
    clock = FakeClock([0.5, 0.25, 0.125] * 10)
    times = time_steps(clock.step, clock, min_steps=3, cap_s=0.0)
    assert times == [0.5, 0.25, 0.125]


def test_step_stats_values_match_numpy():
    seconds = [0.1, 0.11, 0.12, 0.1, 0.5] * 80
    stats = step_stats(seconds)
    ms = np.asarray(seconds) * 1000
    lat = stats["latency_ms"]
    assert lat["mean"] == pytest.approx(ms.mean())
    assert lat["median"] == pytest.approx(np.median(ms))
    for q in (90, 95, 99):
        assert lat[f"p{q}"] == pytest.approx(np.percentile(ms, q))
    assert stats["spread"]["cv"] == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert stats["spread"]["p99_over_median"] == pytest.approx(500 / 110)
    assert stats["spread"]["mean_over_median"] == pytest.approx(ms.mean() / 110)
    assert stats["p99_resolved"]  # 400 >= 368
    # one step in five at 5x the median: a long tail (CV 0.8), but mean 186 ms and median
    # 110 ms lie 69 % apart, two groups of step times
    assert not stats["steady"]


def test_a_long_tail_alone_is_a_result():
    """A shared CPU's tail (one step in twenty at 3x): CV 0.4 and p99/median 3 (marked by
    the old rule) but mean and median within 10 %: the reference's mean stands."""
    stats = step_stats(([0.02] * 19 + [0.06]) * 20)
    assert stats["spread"]["cv"] > 0.35 and stats["spread"]["p99_over_median"] > 2.9
    assert stats["steady"]


def test_step_stats_steady_cell_and_unresolved_p99():
    stats = step_stats([0.1, 0.101, 0.099, 0.1] * 10)
    assert stats["steady"] and not stats["p99_resolved"]


def test_percentile_interpolates_like_numpy():
    values = [3.0, 1.0, 2.0, 10.0]
    for q in (0, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


@pytest.mark.parametrize(("latency", "steps", "marked"), [
    ({"mean": 10.0, "median": 10.0}, 50, None),
    ({"mean": 12.9, "median": 10.0}, 50, None),  # 29 % apart: within the limit
    ({"mean": 13.1, "median": 10.0}, 50, "mean 13.1 ms vs median 10 ms step, 31% apart"),
    ({"mean": 6.9, "median": 10.0}, 50, "mean 6.9 ms vs median 10 ms step, 31% apart"),
    ({"mean": 10.0, "median": 10.0}, MIN_TIMED_STEPS - 1, "3 timed steps < 4: raise "
     "benchmark.timed_steps or benchmark.max_timing_s"),
    ({"mean": 10.0, "median": 10.0}, None, None),
])
def test_measurement_failure(latency, steps, marked):
    why = measurement_failure(latency, steps)
    assert (why is None) == (marked is None) and (marked is None or why.startswith(marked))
    assert MAX_MEAN_MEDIAN_GAP == 0.30


def test_records_without_a_median_are_judged_by_p99_over_mean():
    # the demo's 2D predict bf16 batch 8 cell of two turns ago: mean 441 ms, p99 1028 ms
    demo = {"latency_ms": {"mean": 441.0, "p90": 900.0, "p95": 1000.0, "p99": 1028.0},
            "timed_steps": 5}
    assert "p99/mean 2.33" in record_failure(demo)
    fine = {"latency_ms": {"mean": 10.0, "p90": 11.0, "p95": 12.0, "p99": 13.0}}
    assert record_failure(fine) is None
