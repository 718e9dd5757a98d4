"""
What is happening now, read from the rings (not the database): routing
statistics of the recent window, the feedback loop's current adjustments
and alerts, ring fill per lane, monitoring overhead, and the daemon's
published figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

import ringbuf
from livemon import ipc
from livemon.config import Config
from livemon.exceptions import MonitoringUnavailable
from livemon.feedback.rules import FeedbackState, Policy, replay
from livemon.feedback.stats import WindowStats, feedback_stats
from livemon.ipc import read_status
from livemon.record import label_texts
from livemon.views.agent_live import RunFigures, run_figures
from livemon.views.report import Table


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One look at the rings.

    Attributes:
        lanes: each lane's counters (fill is ``pending / capacity``).
        overhead_ns: p50 and p99 of the recording cost in the window.
        daemon: the daemon's status file, or None if it is not running.
        agent_runs: per agent, figures of its own runs in the agents
            ring's window (agents without runs use the request figures).
    """

    stats: WindowStats
    feedback: FeedbackState
    lanes: list[ringbuf.LaneState]
    refused_claims: int
    capacity_records: int
    overhead_ns: tuple[float, float]
    names: dict[int, str]
    daemon: dict[str, Any] | None
    agent_runs: dict[int, RunFigures] = dataclasses.field(default_factory=dict)


def snapshot(config: Config, policy: Policy | None = None) -> Snapshot:
    """Read the rings of ``config.ring`` as the feedback loop does.

    Raises:
        MonitoringUnavailable: no ring of that name exists (no
            coordinator or daemon has run since boot), or it is damaged.
    """
    policy = policy or Policy()
    try:
        with ipc.attach_ring(ipc.events_ring(config)) as events:
            window = events.window(policy.window_per_lane).records
            lanes = [events.lane_state(n) for n in range(events.lanes)]
            refused = events.refused_claims
            capacity = events.capacity_records
    except ringbuf.RingNotFound as exc:
        raise MonitoringUnavailable(
            f"no ring named {config.ring!r}: no coordinator or daemon has "
            "run since boot, or they use another --ring / LIVEMON_RING"
        ) from exc
    except ringbuf.RingError as exc:
        raise MonitoringUnavailable(f"ring {config.ring!r}: {exc}") from exc
    overhead = window["overhead_ns"][window["overhead_ns"] > 0]
    percentiles = (
        tuple(np.percentile(overhead, [50, 99]).tolist())
        if len(overhead)
        else (math.nan, math.nan)
    )
    return Snapshot(
        stats=feedback_stats(
            window, policy.recent, policy.baseline, None, policy.z
        ),
        feedback=replay(_ring_records(ipc.feedback_ring(config))),
        lanes=lanes,
        refused_claims=refused,
        capacity_records=capacity,
        overhead_ns=percentiles,
        names=_ring_labels(config),
        daemon=read_status(config),
        agent_runs=run_figures(
            _ring_records(ipc.agents_ring(config), policy.window_per_lane),
            policy.recent,
        ),
    )


def _ring_records(
    spec: ipc.RingSpec, per_lane: int | None = None
) -> npt.NDArray[np.void]:
    """The records still readable in ring ``spec``, at most ``per_lane``
    of each lane (all by default; none if the ring is gone)."""
    try:
        with ipc.attach_ring(spec) as ring:
            return ring.window(per_lane or ring.capacity_records).records
    except ringbuf.RingError:
        return np.empty(0, spec.dtype)


def _ring_labels(config: Config) -> dict[int, str]:
    """Label texts still in the labels ring (the database has the rest)."""
    return dict(label_texts(_ring_records(ipc.labels_ring(config))))


def stats_tables(snap: Snapshot, name: Callable[[int], str]) -> list[Table]:
    """The live statistics as report tables, names given by ``name``."""
    alerts = [
        (name(k), text) for k, text in sorted(snap.feedback.alerts.items())
    ]
    return [
        Table(
            "agents",
            "Per agent (each one's newest runs, else requests, in the window)",
            (
                "agent",
                "requests",
                "success_rate",
                "low_rate",
                "high_rate",
                "p50_ms",
                "p95_ms",
                "confidence_x",
                "parallel",
                "source",
            ),
            _agent_rows(snap, name),
        ),
        Table(
            "categories",
            "Per category (newest requests vs the ones before)",
            (
                "category",
                "requests",
                "override_rate",
                "threshold",
                "quality_now",
                "quality_before",
                "drop_rate",
            ),
            _category_rows(snap, name),
        ),
        Table("alerts", "Active alerts", ("category", "alert"), alerts),
    ]


def _agent_rows(
    snap: Snapshot, name: Callable[[int], str]
) -> list[tuple[Any, ...]]:
    """One row per agent, busiest first: its own runs where it has any in
    the window (issue 15), else the requests that used it."""
    figures: dict[int, tuple[Any, ...]] = {
        a.agent: (
            a.requests,
            a.success_rate,
            a.success_low,
            a.success_high,
            a.p50_ms,
            a.p95_ms,
            "requests",
        )
        for a in snap.stats.agents.values()
    }
    figures |= {
        r.agent: (
            r.runs,
            r.success_rate,
            r.success_low,
            r.success_high,
            r.p50_ms,
            r.p95_ms,
            "runs",
        )
        for r in snap.agent_runs.values()
    }
    fb = snap.feedback
    return [
        (
            name(agent),
            *f[:6],
            fb.multipliers.get(agent, 1.0),
            "capped" if agent in fb.capped else "",
            f[6],
        )
        for agent, f in sorted(figures.items(), key=lambda item: -item[1][0])
    ]


def _category_rows(
    snap: Snapshot, name: Callable[[int], str]
) -> list[tuple[Any, ...]]:
    """One row per category, busiest first."""
    fb = snap.feedback
    return [
        (
            name(c.category),
            c.requests,
            c.override_rate,
            fb.thresholds.get(c.category, math.nan),
            c.quality_recent,
            c.quality_baseline,
            c.quality_drop,
        )
        for c in sorted(
            snap.stats.categories.values(), key=lambda c: -c.requests
        )
    ]
