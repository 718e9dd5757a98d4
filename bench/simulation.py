"""
Synthetic agents behind a real Coordinator, Monitor and ring, to measure
what the feedback loop does to routing (seeded, reproducible).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import numpy as np

from livemon import Monitor
from livemon.config import load_config
from livemon.coordinator import Coordinator, Result, TableSelector
from livemon.feedback import FeedbackLoop, Policy

QUERIES = {
    "code": "fix the failing python test",
    "data": "which sql query scans the table",
    "writing": "write a summary email",
}
AGENTS = {
    "code": ("coder",),
    "data": ("analyst_a", "analyst_b"),
    "writing": ("writer",),
    "general": ("generalist",),
}
STAND_INS = {
    "code": ("coder_b",),
    "data": ("analyst_c",),
    "writing": ("generalist",),
}


@dataclasses.dataclass
class Agent:
    """A simulated agent: chance of success and mean latency."""

    success: float
    latency_ms: float


def stable_agents() -> dict[str, Agent]:
    """Every agent healthy: above 80% success, under 5 s."""
    return {
        "coder": Agent(0.95, 2000),
        "coder_b": Agent(0.90, 2500),
        "analyst_a": Agent(0.97, 1000),
        "analyst_b": Agent(0.97, 1500),
        "analyst_c": Agent(0.95, 1800),
        "writer": Agent(0.95, 800),
        "generalist": Agent(0.90, 1200),
    }


@dataclasses.dataclass
class Outcome:
    """What one simulated run measured after the change."""

    requests: int
    success_rate: float
    mean_quality: float
    data_latency_ms: float
    first_action: dict[str, int]
    adjustments: int


def run(
    ring: str,
    requests: int,
    feedback: bool,
    change_at: int | None = None,
    seed: int = 7,
) -> Outcome:
    """Route ``requests`` queries; at ``change_at`` coder fails half the
    time and analyst_a slows to 8 s.  Figures cover requests after it.
    """
    rng = random.Random(seed)
    agents = stable_agents()
    clock = itertools.count()  # simulated: 10 ms per request
    config = load_config({"ring": ring, "lanes": 1, "capacity_records": 8192})
    with Monitor(config=config) as monitor:
        loop = (
            FeedbackLoop(monitor, Policy(), clock=lambda: next(clock) * 0.01)
            if feedback
            else None
        )
        coordinator = Coordinator(
            monitor, selector=TableSelector(AGENTS, STAND_INS), feedback=loop
        )
        ring_events = monitor._rings[0]  # type: ignore[index]
        ok, quality, data_ms = [], [], []
        first: dict[str, int] = {}
        names = {monitor.intern(n): n for n in agents}
        start = change_at or 0
        for i in range(requests):
            if i == change_at:
                agents["coder"].success = 0.5
                agents["analyst_a"].latency_ms = 8000
            category = rng.choice(tuple(QUERIES))
            decision = coordinator.route(QUERIES[category])
            outcome = _execute(decision.agents, agents, rng)
            coordinator.complete(decision, outcome)
            if i >= start:
                ok.append(outcome.success)
                quality.append(outcome.quality_score)
                if category == "data":
                    data_ms.append(outcome.execution_time_ms)
            if loop is not None and i >= start:
                for agent in list(loop.state.multipliers) + list(
                    loop.state.capped
                ):
                    first.setdefault(names.get(agent, str(agent)), i - start)
            if i % 1000 == 999:  # stand in for the daemon: keep it drained
                ring_events.advance(0, ring_events.lane_state(0).head)
        adjustments = loop.actions_taken if loop else 0
        if loop is not None:
            loop.close()
    return Outcome(
        requests=len(ok),
        success_rate=float(np.mean(ok)),
        mean_quality=float(np.mean(quality)),
        data_latency_ms=float(np.mean(data_ms)) if data_ms else math.nan,
        first_action=first,
        adjustments=adjustments,
    )


def _execute(chosen, agents, rng) -> Result:
    """Run the chosen agents in parallel: all must succeed; slowest wins."""
    results = [rng.random() < agents[a].success for a in chosen]
    latency = max(
        rng.lognormvariate(math.log(agents[a].latency_ms), 0.3) for a in chosen
    )
    success = all(results)
    return Result(
        agents_used=tuple(chosen),
        success=success,
        execution_time_ms=latency,
        quality_score=rng.uniform(0.75, 0.95) if success else 0.2,
        accepted=rng.random() > 0.1,
    )
