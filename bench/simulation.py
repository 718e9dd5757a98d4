"""
Synthetic agents behind a real Coordinator, Monitor, rings and feedback
loop, to measure what the loop does to routing (seeded, reproducible):
how many of an agent's own requests pass before the loop acts on a drop,
how often it acts on stable agents, and the success it wins back.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping

import numpy as np

import ringbuf
from livemon import Monitor
from livemon.config import load_config
from livemon.coordinator import (
    AgentResult,
    Coordinator,
    Intent,
    Result,
    TableSelector,
)
from livemon.feedback import Action, FeedbackLoop, Policy
from livemon.feedback.decisions import VERDICTS_SUFFIX
from livemon.record import AGENT_RUN_DTYPE, RECORD_DTYPE, FeedbackAction

SECONDS_PER_REQUEST = 0.25  # simulated: an update every 2 requests
SUFFIXES = ("", ".labels", ".feedback", ".agents", VERDICTS_SUFFIX)


def unlink_all(ring: str) -> None:
    """Remove every segment and lock file a run created under ``ring``."""
    for suffix in SUFFIXES:
        ringbuf.unlink(ring + suffix)  # with its lock file


@dataclasses.dataclass
class World:
    """Who serves which category, and how well.

    Attributes:
        success: each agent's chance of success (changed by ``change``).
        latency_ms: each agent's median latency.
        table: category -> agents chosen (parallel when several).
        stand_ins: category -> agents that replace demoted ones.
        change: agent -> success from request ``change_at`` on.
    """

    success: dict[str, float]
    table: dict[str, tuple[str, ...]]
    stand_ins: dict[str, tuple[str, ...]]
    change: dict[str, float] = dataclasses.field(default_factory=dict)
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    """What one run measured.

    Attributes:
        requests: requests after the change (all, without one).
        success_rate: share of those that succeeded.
        first_action: agent -> its own requests after the change until
            the loop first acted against it (absent: never).
        actions: agent or category -> actions against it, whole run.
        own_requests: agent -> requests it ran, whole run.
    """

    requests: int
    success_rate: float
    first_action: dict[str, int]
    actions: dict[str, int]
    own_requests: dict[str, int]


class _CountingLoop(FeedbackLoop):
    """The real loop, also handing each decided action to the run."""

    seen: list[Action]

    def decide(self, stats):  # type: ignore[no-untyped-def]
        actions = super().decide(stats)
        self.seen.extend(actions)
        return actions


def run(
    ring: str,
    world: World,
    requests: int,
    feedback: bool,
    change_at: int | None = None,
    seed: int = 7,
    policy: Policy | None = None,
    stop_when_acted: bool = False,
) -> Outcome:
    """Route ``requests`` queries of random categories through the world.

    Each chosen agent runs (parallel agents: the first success is
    selected, the others discarded; the request succeeds if one did) and
    its run is recorded as an agent run (``Result.agents``).
    ``stop_when_acted``: end at the loop's first action against an agent
    after the change.
    """
    rng = random.Random(seed)
    success = dict(world.success)
    ticks = [0]
    config = load_config({"ring": ring, "lanes": 1, "capacity_records": 8192})
    with Monitor(config=config) as monitor:
        loop = None
        if feedback:
            loop = _CountingLoop(
                monitor,
                policy or Policy(),
                clock=lambda: ticks[0] * SECONDS_PER_REQUEST,
            )
            loop.seen = []
        coordinator = Coordinator(
            monitor,
            classifier=_ByName(),
            # TableSelector falls back to the "general" row: any stand-in.
            selector=TableSelector(
                {"general": (*world.stand_ins.values(),)[0], **world.table},
                world.stand_ins,
            ),
            feedback=loop,
        )
        names = {monitor.intern(n): n for n in [*success, *world.table]}
        own: dict[str, int] = dict.fromkeys(success, 0)
        at_change: dict[str, int] = {}
        first: dict[str, int] = {}
        actions: dict[str, int] = {}
        ok = []
        categories = tuple(world.table)
        for i in range(requests):
            ticks[0] = i
            if i == change_at:
                success.update(world.change)
                at_change = dict(own)
            decision = coordinator.route(categories[i % len(categories)])
            outcome = _execute(decision.agents, success, world.latency_ms, rng)
            coordinator.complete(decision, outcome)
            for agent in outcome.agents_used:
                own[agent] += 1
            if change_at is None or i >= change_at:
                ok.append(outcome.success)
            if loop is not None:
                for action in loop.seen:
                    name = names.get(action.subject, str(action.subject))
                    actions[name] = actions.get(name, 0) + 1
                    if at_change and name in own and _against(action):
                        first.setdefault(name, own[name] - at_change[name])
                loop.seen.clear()
                if stop_when_acted and first:
                    break
            if i % 1000 == 999:  # stand in for the daemon: keep it drained
                _drain(monitor)
        if loop is not None:
            loop.close()
    return Outcome(len(ok), sum(ok) / len(ok), first, actions, own)


def _against(action: Action) -> bool:
    """Whether an action demotes or caps an agent."""
    return (
        action.action is FeedbackAction.AGENT_CONFIDENCE
        and action.new_value < action.old_value
    ) or (action.action is FeedbackAction.PARALLEL_CAP and action.new_value)


def _execute(
    agents: tuple[str, ...],
    success: Mapping[str, float],
    latency_ms: Mapping[str, float],
    rng: random.Random,
) -> Result:
    """Run the chosen agents, each with its own run in ``Result.agents``."""
    runs = []
    winner = None
    for agent in agents:
        won = rng.random() < success[agent]
        ms = rng.lognormvariate(math.log(latency_ms.get(agent, 1000.0)), 0.3)
        outcome = None
        if len(agents) > 1:
            outcome = "selected" if won and winner is None else "discarded"
        winner = winner or (agent if won else None)
        runs.append(AgentResult(agent, ms, won, outcome=outcome))
    ok = winner is not None
    return Result(
        agents_used=agents,
        success=ok,
        execution_time_ms=max(r.execution_time_ms or 0.0 for r in runs),
        quality_score=rng.uniform(0.75, 0.95) if ok else 0.2,
        accepted=rng.random() > 0.1,
        agents=runs,
    )


def _drain(monitor: Monitor) -> None:
    """Advance every lane's tail to its head, as the daemon would."""
    for spec in (
        monitor.config.ring,
        monitor.config.ring + ".agents",
    ):
        try:
            ring = ringbuf.Ring.attach(spec, _dtype_of(spec))
        except ringbuf.RingError:
            continue
        with ring:
            for lane in range(ring.lanes):
                ring.advance(lane, ring.lane_state(lane).head)


def _dtype_of(name: str) -> np.dtype:
    return AGENT_RUN_DTYPE if name.endswith(".agents") else RECORD_DTYPE


class _ByName:
    """The query is the category's name (the world decides the rest)."""

    def classify(self, query: str) -> Intent:
        return Intent(query)
