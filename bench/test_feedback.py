"""
Feedback: the cost of the statistics, and what the loop does to routing
(with and without it, in the same run).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ringbuf
from bench import simulation
from livemon.feedback.stats import feedback_stats
from livemon.record import RECORD_DTYPE

pytestmark = pytest.mark.benchmark(group="feedback")


def synthetic_window(count: int, seed: int = 3) -> np.ndarray:
    """A window of ``count`` records over 8 agents and 5 categories."""
    rng = np.random.default_rng(seed)
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = rng.permutation(count)
    records["actual_agents"][:, 0] = rng.integers(1, 9, count)
    records["actual_agents"][:, 1] = rng.integers(0, 9, count)
    records["success"] = rng.random(count) < 0.9
    records["execution_time_ms"] = rng.lognormal(7, 0.5, count)
    records["intent_category"] = rng.integers(1, 6, count)
    records["accepted"] = rng.random(count) < 0.85
    records["quality_score"] = rng.random(count)
    return records


def python_stats(records: np.ndarray) -> dict:
    """Per-agent success and mean latency, one record at a time."""
    figures: dict = {}
    for row in records.tolist():
        agents = row[RECORD_DTYPE.names.index("actual_agents")]
        success = row[RECORD_DTYPE.names.index("success")]
        ms = row[RECORD_DTYPE.names.index("execution_time_ms")]
        for agent in agents:
            if agent:
                n, ok, total = figures.get(agent, (0, 0, 0.0))
                figures[agent] = (n + 1, ok + (success == 1), total + ms)
    return figures


@pytest.mark.parametrize("count", [10_000, 100_000], ids="window={}".format)
def test_stats_python_baseline(benchmark, record, count):
    """A pure-Python pass over the window (baseline; fewer figures)."""
    window = synthetic_window(count)
    figures = benchmark.pedantic(python_stats, args=(window,), rounds=5)
    assert len(figures) == 8
    record(benchmark)


@pytest.mark.parametrize("count", [10_000, 100_000], ids="window={}".format)
def test_feedback_stats(benchmark, record, count):
    """feedback_stats over the whole window, every figure."""
    window = synthetic_window(count)
    stats = benchmark.pedantic(feedback_stats, args=(window, count), rounds=30)
    assert len(stats.agents) == 8 and len(stats.categories) == 5
    record(benchmark, baseline=f"test_stats_python_baseline[window={count}]")


def test_effectiveness(benchmark, ring_name):
    """Agent failure and slowdown mid-run: with vs without the loop."""
    runs = {}

    def simulate():
        for feedback in (False, True):
            runs[feedback] = simulation.run(
                ring_name, 20_000, feedback, change_at=5_000
            )
            for suffix in ("", ".labels", ".feedback"):
                ringbuf.unlink(ring_name + suffix)  # a fresh ring each run

    benchmark.pedantic(simulate, rounds=1)
    without, with_loop = runs[False], runs[True]
    print(f"\n{'':<34}{'without':>10}{'with loop':>12}")
    print(
        f"{'success after the change':<34}{without.success_rate:>10.1%}"
        f"{with_loop.success_rate:>12.1%}"
    )
    print(
        f"{'mean quality after the change':<34}"
        f"{without.mean_quality:>10.3f}{with_loop.mean_quality:>12.3f}"
    )
    print(
        f"{'data requests mean latency (ms)':<34}"
        f"{without.data_latency_ms:>10.0f}"
        f"{with_loop.data_latency_ms:>12.0f}"
    )
    print(f"requests until the loop acted: {with_loop.first_action}")
    assert with_loop.success_rate > without.success_rate
    assert with_loop.data_latency_ms < without.data_latency_ms
    assert {"coder", "analyst_a"} <= set(with_loop.first_action)


def test_stable_workload_does_not_flap(benchmark, ring_name):
    """100,000 requests of healthy agents: no adjustment at all."""
    outcome = benchmark.pedantic(
        simulation.run, args=(ring_name, 100_000, True), rounds=1
    )
    print(
        f"\nstable workload: {outcome.adjustments} adjustments over "
        f"{outcome.requests} requests, success {outcome.success_rate:.1%}"
    )
    assert outcome.adjustments == 0
    assert not math.isnan(outcome.mean_quality)
