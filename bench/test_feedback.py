"""
Feedback: the cost of the window statistics, and what the loop does to
routing: detection delay against Lorden's floor, false adjustments on
stable agents, and success with and without the loop, in the same run.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

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


SEEDS = range(20)
HISTORY = 500  # requests of stable history before a change


def _one_agent(change: float | None = None) -> simulation.World:
    """One agent per request (the request-level case), a stand-in at 0.85."""
    return simulation.World(
        success={"agent": 0.90, "stand_in": 0.85},
        table={"code": ("agent",)},
        stand_ins={"code": ("stand_in",)},
        change={} if change is None else {"agent": change},
    )


def _delays(ring: str, change: float, after: int) -> list[int]:
    """Per seed: the agent's own requests from the drop to the action."""
    delays = []
    for seed in SEEDS:
        outcome = simulation.run(
            ring,
            _one_agent(change),
            HISTORY + after,
            True,
            change_at=HISTORY,
            seed=seed,
            stop_when_acted=True,
        )
        simulation.unlink_all(ring)
        assert "stand_in" not in outcome.first_action
        delays.append(outcome.first_action.get("agent", after))
    return delays


def _stable(ring: str, requests: int) -> dict[str, float]:
    """False adjustments per 10,000 own requests of agents at 0.82-0.90."""
    world = simulation.World(
        success={"s82": 0.82, "s85": 0.85, "s90": 0.90, "spare": 0.85},
        table={"x": ("s82",), "y": ("s85",), "z": ("s90",)},
        stand_ins={"x": ("spare",), "y": ("spare",), "z": ("spare",)},
    )
    outcome = simulation.run(ring, world, 3 * requests, True, seed=11)
    simulation.unlink_all(ring)
    return {
        agent: outcome.actions.get(agent, 0)
        * 10_000
        / outcome.own_requests[agent]
        for agent in ("s82", "s85", "s90")
    }


def _gain(ring: str) -> tuple[float, float]:
    """Success over the 1,000 requests after a 0.90 -> 0.50 drop, without
    and with the loop (the stand-in runs at 0.85)."""
    rates = []
    for feedback in (False, True):
        outcome = simulation.run(
            ring, _one_agent(0.50), HISTORY + 1000, feedback, HISTORY, seed=3
        )
        simulation.unlink_all(ring)
        rates.append(outcome.success_rate)
    return rates[0], rates[1]


def _parallel_pair(ring: str) -> simulation.Outcome:
    """Two agents in parallel, one degrades 0.90 -> 0.50: actions on each."""
    world = simulation.World(
        success={"pa": 0.90, "pb": 0.90, "pc": 0.85},
        table={"data": ("pa", "pb")},
        stand_ins={"data": ("pc",)},
        change={"pa": 0.50},
    )
    outcome = simulation.run(ring, world, HISTORY + 2000, True, HISTORY, 5)
    simulation.unlink_all(ring)
    return outcome


def _floor(before: float, after: float, arl: float = 1e4) -> float:
    """Lorden's bound: ln(ARL) / KL(after || before), in requests."""
    kl = after * math.log(after / before) + (1 - after) * math.log(
        (1 - after) / (1 - before)
    )
    return math.log(arl) / kl


def test_detection_table(benchmark, ring_name, capsys):
    """Delay, false adjustments and gain, in one run; prints the table."""
    logging.getLogger("livemon.feedback").setLevel(logging.ERROR)
    figures: dict = {}

    def simulate():
        figures["0.50"] = _delays(ring_name, 0.50, 400)
        figures["0.70"] = _delays(ring_name, 0.70, 1000)
        figures["stable"] = _stable(ring_name, 100_000)
        figures["gain"] = _gain(ring_name)
        figures["pair"] = _parallel_pair(ring_name)

    benchmark.pedantic(simulate, rounds=1)
    rows = []
    for drop in ("0.50", "0.70"):
        delays = np.array(figures[drop])
        floor = _floor(0.90, float(drop))
        median, p95 = np.median(delays), np.percentile(delays, 95)
        rows.append(
            f"| 0.90 -> {drop} | {floor:.0f} | {median:.0f} "
            f"({median / floor:.1f}x) | {p95:.0f} |"
        )
        assert median <= 2 * floor, (drop, delays)
    stable = figures["stable"]
    without, with_loop = figures["gain"]
    pair = figures["pair"]
    table = "\n".join(
        [
            "| drop | Lorden floor (requests) | delay, median over "
            f"{len(SEEDS)} seeds | p95 |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            "| stable agent | false adjustments per 10,000 requests |",
            "| --- | --- |",
            *(f"| 0.{a[1:]} | {v:.1f} |" for a, v in stable.items()),
            "",
            "| 0.90 -> 0.50, stand-in at 0.85 | success, next 1,000 |",
            "| --- | --- |",
            f"| without the loop | {without:.1%} |",
            f"| with the loop | {with_loop:.1%} "
            f"(+{100 * (with_loop - without):.1f} points) |",
            "",
            "| parallel pair, pa 0.90 -> 0.50 | actions |",
            "| --- | --- |",
            f"| pa (degraded) | {pair.actions.get('pa', 0)}, first after "
            f"{pair.first_action.get('pa', '-')} of its requests |",
            f"| pb (healthy) | {pair.actions.get('pb', 0)} |",
        ]
    )
    with capsys.disabled():
        print("\n" + table)
    assert all(v == 0 for v in stable.values()), stable
    assert with_loop - without >= 0.25
    assert pair.actions.get("pb", 0) == 0
    assert "pa" in pair.first_action
