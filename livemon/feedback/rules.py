"""
The feedback loop's rules, pure: ``decide(stats, state, policy)`` turns the
window's statistics and the standing decisions into actions and the new
standing decisions. No ring, no clock, no thread.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from livemon.feedback.detect import DetectorSettings
from livemon.feedback.policy_checks import check_policy
from livemon.feedback.stats import Z_95, WindowStats
from livemon.record import FeedbackAction


@dataclasses.dataclass(frozen=True)
class Policy:
    """When the loop acts, by how much, and how it avoids flapping.

    Decisions need ``min_samples`` and a Wilson bound (at ``z``) that
    clears the threshold; recovery needs the opposite bound to clear it
    (hysteresis: in between, nothing changes).  Agent success is judged
    by each agent's change detector (``detect.Detector``): a CUSUM bank
    against its own baseline for drops to ``success_threshold`` minus
    each of ``change_drops``, deciding at ``cusum_h`` nats, confirmed by
    a Wilson bound at ``confirm_z``.

    Attributes:
        recent: each agent's newest requests the statistics cover.
        baseline: each category's requests before those, for quality.
        window_per_lane: records a new leader reads from each lane of
            the rings (its history); later it reads only what is new.
        interval_s: seconds between two updates.
        slow_recover: a capped agent is uncapped below this share of
            both latency limits.
        change_drops: the drops below the threshold the CUSUMs watch for.
        cusum_h: the CUSUM decision threshold (nats); 13 keeps agents
            stable at 0.82 undemoted over 100,000 requests (bench/).
        confirm_z: the confirming Wilson bound's normal quantile.
        baseline_memory: outcomes an agent's baseline remembers.
        baseline_z: the baseline used is its lower bound at this z.
    """

    recent: int = 100
    baseline: int = 1000
    window_per_lane: int = 2048
    interval_s: float = 0.5
    min_samples: int = 30
    z: float = Z_95
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
    change_drops: tuple[float, ...] = (0.10, 0.30)
    cusum_h: float = 13.0
    confirm_z: float = 2.0
    baseline_memory: int = 1000
    baseline_z: float = 1.0

    def __post_init__(self) -> None:
        """Refuse any setting the loop cannot work with.

        Raises:
            ConfigError: a wrong type or a value out of range; the
                message names the parameter and what it may be.
        """
        check_policy(self)
        self.detector_settings()  # refuses a tuning that cannot work

    def detector_settings(self) -> DetectorSettings:
        """The tuning of each agent's change detector."""
        return DetectorSettings(
            threshold=self.success_threshold,
            drops=self.change_drops,
            h=self.cusum_h,
            z=self.confirm_z,
            memory=self.baseline_memory,
            min_samples=self.min_samples,
            baseline_z=self.baseline_z,
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


@dataclasses.dataclass
class FeedbackState:
    """The standing decisions, by label id.

    Attributes:
        multipliers: agents whose routing confidence is scaled (< 1).
        thresholds: categories whose confidence threshold was raised.
        capped: agents kept out of parallel fan-outs (too slow).
        alerts: categories with an active quality alert, and its text.
    """

    multipliers: dict[int, float] = dataclasses.field(default_factory=dict)
    thresholds: dict[int, float] = dataclasses.field(default_factory=dict)
    capped: set[int] = dataclasses.field(default_factory=set)
    alerts: dict[int, str] = dataclasses.field(default_factory=dict)

    def apply(
        self, action: FeedbackAction, subject: int, new_value: float, text: str
    ) -> None:
        """Make one action standing (unknown codes change nothing)."""
        if action is FeedbackAction.AGENT_CONFIDENCE:
            if new_value == 1.0:
                self.multipliers.pop(subject, None)
            else:
                self.multipliers[subject] = new_value
        elif action is FeedbackAction.CATEGORY_THRESHOLD:
            self.thresholds[subject] = new_value
        elif action is FeedbackAction.PARALLEL_CAP:
            if new_value:
                self.capped.add(subject)
            else:
                self.capped.discard(subject)
        elif action is FeedbackAction.QUALITY_ALERT:
            self.alerts[subject] = text
        elif action is FeedbackAction.QUALITY_RECOVERED:
            self.alerts.pop(subject, None)


def decide(
    stats: WindowStats, state: FeedbackState, policy: Policy
) -> tuple[FeedbackState, list[Action]]:
    """Turn statistics into actions; return the new state and the actions.

    Deterministic: the same statistics and state give the same actions.
    ``state`` itself is left as it was.
    """
    actions = [
        *_agent_confidence(stats, state, policy),
        *_slow_agents(stats, state, policy),
        *_category_thresholds(stats, state, policy),
        *_quality_alerts(stats, state, policy),
    ]
    new = copy.deepcopy(state)
    for a in actions:
        new.apply(a.action, a.subject, a.new_value, a.message)
    return new, actions


def replay(records: npt.NDArray[np.void]) -> FeedbackState:
    """The standing decisions after ``records`` (``FEEDBACK_DTYPE``).

    Args:
        records: feedback records in any order; applied oldest first.
    """
    state = FeedbackState()
    for r in np.sort(records, order="timestamp_ns", kind="stable"):
        code = int(r["action"])
        if code not in _KNOWN_ACTIONS:
            continue  # a newer coordinator's action: not ours to replay
        old = float(r["old_value"])
        new = float(r["new_value"])
        state.apply(
            FeedbackAction(code),
            int(r["subject"]),
            new,
            f"quality {new:.3f} vs baseline {old:.3f}",
        )
    return state


_KNOWN_ACTIONS = frozenset(int(a) for a in FeedbackAction)


def _agent_confidence(
    stats: WindowStats, state: FeedbackState, p: Policy
) -> Iterable[Action]:
    """Step an agent's confidence down while its detector has it demoted,
    back up once it has recovered (one step per update either way)."""
    for agent in sorted(stats.agents):
        a = stats.agents[agent]
        if a.demoted is None:
            continue  # no verdict (a plain window, or too few outcomes)
        old = state.multipliers.get(agent, 1.0)
        if a.demoted:
            new = max(p.min_multiplier, old * (1 - p.confidence_step))
        elif old < 1.0:
            new = min(1.0, old / (1 - p.confidence_step))
            new = 1.0 if new > 1 - 1e-9 else new
        else:
            continue
        if new == old:
            continue
        verb = "lowered" if new < old else "restored"
        yield Action(
            FeedbackAction.AGENT_CONFIDENCE,
            agent,
            old,
            new,
            a.change_bound,
            p.success_threshold,
            a.change_samples,
            stats.records,
            f"{verb} confidence: success {a.change_rate:.1%} over the "
            f"{a.change_samples} outcomes since the change (bound "
            f"{a.change_bound:.1%})",
        )


def _slow_agents(
    stats: WindowStats, state: FeedbackState, p: Policy
) -> Iterable[Action]:
    for agent in sorted(stats.agents):
        a = stats.agents[agent]
        if a.timed < p.min_samples:
            continue
        slow = a.mean_ms > p.slow_mean_ms or a.p95_ms > p.slow_p95_ms
        fast = (
            a.mean_ms < p.slow_recover * p.slow_mean_ms
            and a.p95_ms < p.slow_recover * p.slow_p95_ms
        )
        if slow and agent not in state.capped:
            old, new = 0.0, 1.0
        elif fast and agent in state.capped:
            old, new = 1.0, 0.0
        else:
            continue
        yield Action(
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


def _category_thresholds(
    stats: WindowStats, state: FeedbackState, p: Policy
) -> Iterable[Action]:
    for category in sorted(stats.categories):
        c = stats.categories[category]
        if c.known < p.min_samples:
            continue
        old = state.thresholds.get(category, p.base_threshold)
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
        yield Action(
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


def _quality_alerts(
    stats: WindowStats, state: FeedbackState, p: Policy
) -> Iterable[Action]:
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
        alerted = category in state.alerts
        if drop > p.quality_drop and real and not alerted:
            action, text = FeedbackAction.QUALITY_ALERT, "quality regression"
        elif drop < p.quality_recovered and alerted:
            action, text = (
                FeedbackAction.QUALITY_RECOVERED,
                "quality recovered",
            )
        else:
            continue
        yield Action(
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
