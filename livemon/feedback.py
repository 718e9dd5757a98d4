"""
The live feedback loop: statistics from the ring's recent window become
routing adjustments (agent confidence, category thresholds, parallel caps)
and quality alerts, each recorded for the daemon to store.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable

import ringbuf
from livemon.monitor import Monitor
from livemon.record import (
    ALERT_ACTIONS,
    FEEDBACK_DTYPE,
    NO_LABEL,
    FeedbackAction,
    struct_for,
)
from livemon.stats import WindowStats, feedback_stats

logger = logging.getLogger("livemon.feedback")

_FEEDBACK = struct_for(FEEDBACK_DTYPE)


@dataclasses.dataclass(frozen=True)
class Policy:
    """When the loop acts, by how much, and how it avoids flapping.

    Decisions need ``min_samples`` and a Wilson bound (at ``z``) that
    clears the threshold; recovery needs the opposite bound to clear it
    (hysteresis: in between, nothing changes).
    """

    recent: int = 100
    baseline: int = 1000
    window_per_lane: int = 2048
    window_s: float | None = None
    interval_s: float = 0.5
    min_samples: int = 30
    z: float = 1.96
    success_threshold: float = 0.80
    confidence_step: float = 0.10
    min_multiplier: float = 0.3
    override_threshold: float = 0.30
    base_threshold: float = 0.5
    threshold_step: float = 0.05
    max_threshold: float = 0.9
    quality_drop: float = 0.10
    quality_recovered: float = 0.05
    slow_mean_ms: float = 5000.0
    slow_p95_ms: float = 10000.0
    slow_recover: float = 0.8
    exploration: float = 0.05

    def __post_init__(self) -> None:
        for name in (
            "success_threshold",
            "override_threshold",
            "confidence_step",
            "exploration",
            "quality_drop",
            "quality_recovered",
            "min_multiplier",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(
                    f"Policy.{name} must be in [0, 1], got {value}"
                )
        if self.recent < 1 or self.min_samples < 1 or self.interval_s <= 0:
            raise ValueError(
                "Policy.recent and min_samples must be >= 1, interval_s > 0"
            )


@dataclasses.dataclass(frozen=True)
class Action:
    """One adjustment or alert, and the statistic that caused it."""

    action: FeedbackAction
    subject: int
    old_value: float
    new_value: float
    statistic: float
    threshold: float
    samples: int
    window_records: int
    message: str


class FeedbackLoop:
    """Adjusts one coordinator's routing from the shared recent window.

    Every coordinator process reads the same window, so processes with
    the same history reach the same decisions without talking.  ``start``
    runs ``update`` every ``policy.interval_s`` in a background thread, so
    no request pays for it (a window costs milliseconds); without the
    thread, ``route`` calls ``maybe_update``, rate-limited the same way.

    Args:
        monitor: the process's monitor (its ring is the window's source).
        policy: thresholds, steps and guards.
        on_alert: called with each alert ``Action``, besides logging.
        clock: monotonic seconds (injectable for simulations).
    """

    def __init__(
        self,
        monitor: Monitor,
        policy: Policy | None = None,
        on_alert: Callable[[Action], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monitor = monitor
        self.policy = policy or Policy()
        self.on_alert = on_alert
        self._clock = clock
        self._next_update = 0.0
        self.multipliers: dict[int, float] = {}
        self.thresholds: dict[int, float] = {}
        self.capped: set[int] = set()
        self.alerts: set[int] = set()
        self.actions_taken = 0
        self.last_stats: WindowStats | None = None
        self._writer: ringbuf.RingWriter | None = None
        self._ring: ringbuf.Ring | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.failures = 0

    @property
    def running(self) -> bool:
        """Whether the background thread is updating (not in a fork child)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Update in a background thread from now on. Idempotent."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="livemon-feedback", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread; return whether it ended within ``timeout_s``."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            try:
                self.update()
            except (ringbuf.RingError, ValueError, OSError):
                # Monitoring never breaks routing: count, keep going.
                self.failures += 1
                logger.exception("feedback update failed")

    # -- what route() asks ----------------------------------------------------

    def confidence_multiplier(self, agent: str) -> float:
        """The factor applied to routing confidence for ``agent``."""
        return self.multipliers.get(self.monitor.intern(agent), 1.0)

    def threshold(self, category: str) -> float:
        """The confidence a route to ``category`` must reach."""
        return self.thresholds.get(
            self.monitor.intern(category), self.policy.base_threshold
        )

    def is_capped(self, agent: str) -> bool:
        """Whether ``agent`` is kept out of parallel fan-outs (too slow)."""
        return self.monitor.intern(agent) in self.capped

    def explores(self, request_id: int) -> bool:
        """Whether this request routes as if no demotion applied."""
        share = self.policy.exploration
        return (request_id * 0x9E3779B97F4A7C15 % 2**64) / 2**64 < share

    # -- the loop -------------------------------------------------------------

    def maybe_update(self) -> list[Action]:
        """``update`` if ``policy.interval_s`` has passed since the last."""
        now = self._clock()
        if now < self._next_update:
            return []
        self._next_update = now + self.policy.interval_s
        return self.update()

    def update(self) -> list[Action]:
        """Read the window, compute statistics, decide, record, apply."""
        rings = self.monitor._rings
        if rings is None:
            return []
        window = rings[0].window(self.policy.window_per_lane)
        since = (
            None
            if self.policy.window_s is None
            else time.time_ns() - int(self.policy.window_s * 1e9)
        )
        stats = feedback_stats(
            window.records,
            self.policy.recent,
            self.policy.baseline,
            since,
            self.policy.z,
        )
        self.last_stats = stats
        actions = self.decide(stats)
        for action in actions:
            self._record(action)
        return actions

    def decide(self, stats: WindowStats) -> list[Action]:
        """Turn statistics into actions, updating this loop's state.

        Deterministic: the same statistics and state give the same actions.
        """
        return [
            *self._agent_confidence(stats),
            *self._slow_agents(stats),
            *self._category_thresholds(stats),
            *self._quality_alerts(stats),
        ]

    def _agent_confidence(self, stats: WindowStats) -> list[Action]:
        p, actions = self.policy, []
        for agent in sorted(stats.agents):
            a = stats.agents[agent]
            if a.known < p.min_samples:
                continue
            old = self.multipliers.get(agent, 1.0)
            if a.success_high < p.success_threshold:
                new = max(p.min_multiplier, old * (1 - p.confidence_step))
                bound = a.success_high
            elif a.success_low >= p.success_threshold and old < 1.0:
                new = min(1.0, old / (1 - p.confidence_step))
                new = 1.0 if new > 1 - 1e-9 else new
                bound = a.success_low
            else:
                continue
            if new == old:
                continue
            self.multipliers[agent] = new
            if new == 1.0:
                del self.multipliers[agent]
            verb = "lowered" if new < old else "restored"
            actions.append(
                Action(
                    FeedbackAction.AGENT_CONFIDENCE,
                    agent,
                    old,
                    new,
                    bound,
                    p.success_threshold,
                    a.known,
                    stats.records,
                    f"{verb} confidence: success {a.success_rate:.1%} over "
                    f"{a.known} requests (bound {bound:.1%})",
                )
            )
        return actions

    def _slow_agents(self, stats: WindowStats) -> list[Action]:
        p, actions = self.policy, []
        for agent in sorted(stats.agents):
            a = stats.agents[agent]
            if a.timed < p.min_samples:
                continue
            slow = a.mean_ms > p.slow_mean_ms or a.p95_ms > p.slow_p95_ms
            fast = (
                a.mean_ms < p.slow_recover * p.slow_mean_ms
                and a.p95_ms < p.slow_recover * p.slow_p95_ms
            )
            if slow and agent not in self.capped:
                self.capped.add(agent)
                old, new = 0.0, 1.0
            elif fast and agent in self.capped:
                self.capped.discard(agent)
                old, new = 1.0, 0.0
            else:
                continue
            actions.append(
                Action(
                    FeedbackAction.PARALLEL_CAP,
                    agent,
                    old,
                    new,
                    a.mean_ms,
                    p.slow_mean_ms,
                    a.timed,
                    stats.records,
                    f"{'capped' if new else 'uncapped'} parallel use: mean "
                    f"{a.mean_ms:.0f} ms, p95 {a.p95_ms:.0f} ms",
                )
            )
        return actions

    def _category_thresholds(self, stats: WindowStats) -> list[Action]:
        p, actions = self.policy, []
        for category in sorted(stats.categories):
            c = stats.categories[category]
            if c.known < p.min_samples:
                continue
            old = self.thresholds.get(category, p.base_threshold)
            if c.override_low > p.override_threshold:
                new = min(p.max_threshold, old + p.threshold_step)
                bound = c.override_low
            elif c.override_high < p.override_threshold and old > (
                p.base_threshold
            ):
                new = max(p.base_threshold, old - p.threshold_step)
                bound = c.override_high
            else:
                continue
            if math.isclose(new, old):
                continue
            self.thresholds[category] = new
            actions.append(
                Action(
                    FeedbackAction.CATEGORY_THRESHOLD,
                    category,
                    old,
                    new,
                    bound,
                    p.override_threshold,
                    c.known,
                    stats.records,
                    f"threshold {old:.2f} -> {new:.2f}: overrides "
                    f"{c.override_rate:.1%} of {c.known}",
                )
            )
        return actions

    def _quality_alerts(self, stats: WindowStats) -> list[Action]:
        p, actions = self.policy, []
        for category in sorted(stats.categories):
            c = stats.categories[category]
            if min(c.quality_recent_n, c.quality_baseline_n) < p.min_samples:
                continue
            drop = c.quality_drop
            spread = math.sqrt(
                c.quality_recent_sd**2 / c.quality_recent_n
                + c.quality_baseline_sd**2 / c.quality_baseline_n
            )
            # Alert only when the fall is both large and beyond noise.
            real = (c.quality_baseline - c.quality_recent) > p.z * spread
            if drop > p.quality_drop and real and category not in self.alerts:
                self.alerts.add(category)
                action = FeedbackAction.QUALITY_ALERT
                text = "quality regression"
            elif drop < p.quality_recovered and category in self.alerts:
                self.alerts.discard(category)
                action = FeedbackAction.QUALITY_RECOVERED
                text = "quality recovered"
            else:
                continue
            actions.append(
                Action(
                    action,
                    category,
                    c.quality_baseline,
                    c.quality_recent,
                    drop,
                    p.quality_drop,
                    c.quality_recent_n,
                    stats.records,
                    f"{text}: mean {c.quality_recent:.3f} vs baseline "
                    f"{c.quality_baseline:.3f} ({drop:+.1%} drop)",
                )
            )
        return actions

    # -- recording ------------------------------------------------------------

    def _record(self, action: Action) -> None:
        self.actions_taken += 1
        if action.action in ALERT_ACTIONS:
            logger.warning(
                "%s (category label %d)", action.message, action.subject
            )
            if self.on_alert is not None:
                self.on_alert(action)
        else:
            logger.info("%s (label %d)", action.message, action.subject)
        writer = self._feedback_writer()
        if writer is None:
            return
        packed = _FEEDBACK.pack(
            time.time_ns(),
            os.getpid(),
            int(action.action),
            action.subject,
            action.old_value,
            action.new_value,
            action.statistic,
            action.threshold,
            action.samples,
            action.window_records,
            self.monitor.intern(action.message) or NO_LABEL,
        )
        if not writer.put(packed):
            self.monitor.counters.dropped += 1

    def _feedback_writer(self) -> ringbuf.RingWriter | None:
        if self._writer is None:
            config = self.monitor.config
            try:
                self._ring = open_feedback_ring(
                    config.feedback_ring, config.lanes, config.mode
                )
                self._writer = self._ring.writer()
            except (ringbuf.RingError, OSError):
                self.monitor.counters.unavailable += 1
                return None
        return self._writer

    def close(self) -> None:
        """Stop the thread, give back the feedback lane. Idempotent."""
        self.stop()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None


FEEDBACK_CAPACITY = 1024


def open_feedback_ring(name: str, lanes: int, mode: int) -> ringbuf.Ring:
    """Attach to (or create) the ring that carries feedback actions."""
    return ringbuf.Ring.open(
        name, FEEDBACK_DTYPE, lanes, FEEDBACK_CAPACITY, mode=mode
    )
