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
from livemon.views.report import Table


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One look at the rings.

    Attributes:
        lanes: each lane's counters (fill is ``pending / capacity``).
        overhead_ns: p50 and p99 of the recording cost in the window.
        daemon: the daemon's status file, or None if it is not running.
    """

    stats: WindowStats
    feedback: FeedbackState
    lanes: list[ringbuf.LaneState]
    refused_claims: int
    capacity_records: int
    overhead_ns: tuple[float, float]
    names: dict[int, str]
    daemon: dict[str, Any] | None


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
    )


def _ring_records(spec: ipc.RingSpec) -> npt.NDArray[np.void]:
    """Every record still readable in ring ``spec`` (none if it is gone)."""
    try:
        with ipc.attach_ring(spec) as ring:
            return ring.window(ring.capacity_records).records
    except ringbuf.RingError:
        return np.empty(0, spec.dtype)


def _ring_labels(config: Config) -> dict[int, str]:
    """Label texts still in the labels ring (the database has the rest)."""
    return dict(label_texts(_ring_records(ipc.labels_ring(config))))


def stats_tables(snap: Snapshot, name: Callable[[int], str]) -> list[Table]:
    """The live statistics as report tables, names given by ``name``."""
    fb = snap.feedback
    agents = [
        (
            name(a.agent),
            a.requests,
            a.success_rate,
            a.success_low,
            a.success_high,
            a.p50_ms,
            a.p95_ms,
            fb.multipliers.get(a.agent, 1.0),
            "capped" if a.agent in fb.capped else "",
        )
        for a in sorted(snap.stats.agents.values(), key=lambda a: -a.requests)
    ]
    categories = [
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
    alerts = [(name(k), text) for k, text in sorted(fb.alerts.items())]
    return [
        Table(
            "agents",
            "Per agent (each one's newest requests in the window)",
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
            ),
            agents,
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
            categories,
        ),
        Table("alerts", "Active alerts", ("category", "alert"), alerts),
    ]
