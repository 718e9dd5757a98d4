"""
A coordinator process for the agent-run tests: ``requests`` requests, each
with two agent runs when this livemon has ``log_agent`` (a previous release
has not: it records the requests alone).  Prints its counters as JSON.

Standalone (livemon only), so that a previous release can run it too:
``python -P agent_worker.py REQUESTS SEED [PAUSE_EVERY PAUSE_S]``
(``-P``: the tests directory must not shadow ``livemon``); the ring
and database come from the environment (``LIVEMON_RING``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import livemon
from livemon import Monitor

AGENTS = ("analyst_a", "analyst_b", "coder", "reviewer")
OUTCOMES = ("selected", "discarded", "merged", "cancelled")


def one_request(monitor: Monitor, seed: int, i: int) -> None:
    """One parallel request; its two agents' runs if ``log_agent`` exists."""
    first, second = AGENTS[i % 4], AGENTS[(i + 1) % 4]
    with monitor.request(f"query {seed}-{i}", category="code") as ctx:
        ctx.log_routing(strategy="parallel", suggested_agents=[first, second])
        ctx.log_execution(
            actual_agents=[first, second],
            execution_time_ms=float(10 + i % 50),
            success=i % 7 != 0,
        )
        if not hasattr(ctx, "log_agent"):
            return  # a previous release: requests only
        ctx.log_agent(
            first,
            execution_time_ms=float(5 + i % 20),
            success=True,
            input_tokens=100 + i,
            output_tokens=10,
            outcome=OUTCOMES[i % 2],
        )
        ctx.log_agent(
            second,
            execution_time_ms=float(30 + i % 40),
            success=i % 7 != 0,
            error=None if i % 7 else "timeout",
            outcome=OUTCOMES[2 + i % 2],
        )


def main(argv: list[str]) -> None:
    requests, seed = int(argv[1]), int(argv[2])
    pause_every = int(argv[3]) if len(argv) > 3 else 0
    pause_s = float(argv[4]) if len(argv) > 4 else 0.0
    with Monitor() as monitor:
        for i in range(requests):
            one_request(monitor, seed, i)
            if pause_every and i % pause_every == pause_every - 1:
                time.sleep(pause_s)
        counters = dataclasses.asdict(monitor.counters)
    print(json.dumps({**counters, "livemon": livemon.__file__}))


if __name__ == "__main__":
    main(sys.argv)
