"""
A synthetic coordinator for demos and tests: ``python -m livemon.demo``.

Routes generated queries through ``Coordinator`` to simulated agents
(seeded, so runs are reproducible) and prints its counters as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys

from livemon.config import load_config
from livemon.coordinator import (
    AgentResult,
    Coordinator,
    Result,
    RoutingDecision,
)
from livemon.feedback import FeedbackLoop
from livemon.monitor import Monitor

QUERIES = (
    "fix the failing test in this python function",
    "write a summary email of the release",
    "which sql query finds the slowest table scans",
    "check this auth code for a password vulnerability",
    "refactor the database code and add a test",
    "what is the capital of france",
)
ERRORS = ("TimeoutError: agent did not answer", "ValueError: bad tool input")


def simulate(decision: RoutingDecision, rng: random.Random) -> Result:
    """Pretend to run the agents: success, latency and quality by chance.

    Each agent's own run is reported too: the used agents' outputs are
    selected (merged, for a fan-out), the others' discarded.
    """
    agents = decision.agents
    overridden = rng.random() < 0.1
    used = agents[:1] if overridden and len(agents) > 1 else agents
    runs = [_run(agent, agent in used, len(used) > 1, rng) for agent in agents]
    success = any(run.success for run in runs if run.name in used)
    return Result(
        agents_used=used,
        agents=tuple(runs),
        success=success,
        execution_time_ms=max(run.execution_time_ms or 0.0 for run in runs),
        error=None if success else rng.choice(ERRORS),
        quality_score=round(rng.uniform(0.6, 1.0) if success else 0.2, 3),
        task_completed=success,
        code_valid=success if decision.intent.category == "code" else None,
        tests_passed=success and rng.random() < 0.8,
        token_count=rng.randint(200, 4000),
        context_size_kb=round(rng.uniform(1, 64), 1),
        override_reason="user chose a single agent" if overridden else None,
    )


def _run(
    agent: str, used: bool, fan_out: bool, rng: random.Random
) -> AgentResult:
    success = rng.random() < 0.9
    tokens = rng.randint(100, 2000)
    return AgentResult(
        agent,
        execution_time_ms=rng.lognormvariate(6.0, 0.6),
        success=success,
        error=None if success else rng.choice(ERRORS),
        input_tokens=tokens,
        output_tokens=tokens // 4,
        quality_score=round(rng.uniform(0.6, 1.0) if success else 0.2, 3),
        outcome=("merged" if fan_out else "selected") if used else "discarded",
    )


def main(argv: list[str] | None = None) -> int:
    """Route ``--requests`` queries and print the monitor's counters."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ring")
    parser.add_argument("--config")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = load_config({"ring": args.ring, "config": args.config})
    rng = random.Random(args.seed)
    with Monitor(config=config) as monitor:
        feedback = FeedbackLoop(monitor)
        feedback.start()
        coordinator = Coordinator(monitor, feedback=feedback)
        for _ in range(args.requests):
            decision = coordinator.route(rng.choice(QUERIES))
            coordinator.complete(decision, simulate(decision, rng))
        feedback.close()
        print(json.dumps(dataclasses.asdict(monitor.counters)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
