"""
The feedback loop's four triggers: each fires on data built to cross it,
not just below it or on too few samples, and recovers with hysteresis;
and the loop applies them in routing and in its thread.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from livemon import Monitor
from livemon.coordinator import Coordinator, Intent, Selection, TableSelector
from livemon.feedback import FeedbackLoop, Policy
from livemon.feedback.stats import feedback_stats
from livemon.feedback.tracker import Tracker
from livemon.record import AGENT_RUN_DTYPE, RECORD_DTYPE, FeedbackAction

AGENT, OTHER, CATEGORY = 101, 102, 201


def requests(
    count,
    *,
    success=1.0,
    ms=100.0,
    accepted=1.0,
    quality=0.9,
    agent=AGENT,
    start=0,
    spread=False,
):
    """``count`` records of one agent and category with given outcomes.

    Rates are exact: the first ``rate * count`` records succeed, and so
    on; ``spread``: successes interleaved evenly instead (a run of
    failures is a change the detector rightly reacts to).
    """
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = np.arange(start, start + count)
    records["actual_agents"][:, 0] = agent
    records["intent_category"] = CATEGORY
    i = np.arange(count)
    records["success"] = (
        np.floor((i + 1) * success) > np.floor(i * success)
        if spread
        else i < round(success * count)
    )
    records["accepted"] = np.arange(count) < round(accepted * count)
    records["execution_time_ms"] = ms
    records["quality_score"] = quality
    return records


@pytest.fixture
def loop(ring_name):
    """A feedback loop with the default policy on a fresh monitor."""
    with Monitor(ring_name) as monitor:
        feedback = FeedbackLoop(monitor)
        yield feedback
        feedback.close()


def decide(loop, records, **kwargs):
    """The loop's actions for a window, as (action, subject, new value)."""
    stats = feedback_stats(records, **kwargs)
    return [(a.action, a.subject, a.new_value) for a in loop.decide(stats)]


def judge(loop, tracker, records):
    """Feed request records to a tracker; the loop's actions on its figures."""
    tracker.add(np.empty(0, AGENT_RUN_DTYPE), records)
    tracker.flush()
    return [
        (a.action, a.subject, a.new_value)
        for a in loop.decide(tracker.stats())
    ]


class TestAgentSuccess:
    def test_fires_when_clearly_below_and_steps_down(self, loop):
        """50% success: -10% confidence per update while it stays low."""
        tracker = Tracker(loop.policy)
        low = requests(100, success=0.5, spread=True)
        assert judge(loop, tracker, low) == [
            (FeedbackAction.AGENT_CONFIDENCE, AGENT, pytest.approx(0.9))
        ]
        assert judge(loop, tracker, low[:0])[0][2] == pytest.approx(0.81)

    @pytest.mark.parametrize(
        ("count", "success"),
        [(100, 0.78), (29, 0.0), (300, 0.82)],
        ids=["just-below", "too-few", "above"],
    )
    def test_does_not_fire_without_evidence(self, loop, count, success):
        """Just below 80%, or too few outcomes: no confirmed drop."""
        records = requests(count, success=success, spread=True)
        assert judge(loop, Tracker(loop.policy), records) == []

    def test_recovers_step_by_step_with_hysteresis(self, loop):
        """Back only once the detector confirms it, one step at a time."""
        tracker = Tracker(loop.policy)
        judge(loop, tracker, requests(100, success=0.5, spread=True))
        for _ in range(2):
            judge(loop, tracker, requests(0))
        assert loop.state.multipliers[AGENT] == pytest.approx(0.729)
        steps = judge(loop, tracker, requests(2000, success=0.97, spread=True))
        assert steps == [
            (FeedbackAction.AGENT_CONFIDENCE, AGENT, pytest.approx(0.81))
        ]
        steps = [judge(loop, tracker, requests(0))[0][2] for _ in range(2)]
        assert steps == [pytest.approx(0.9), 1.0]
        assert AGENT not in loop.state.multipliers
        assert judge(loop, tracker, requests(0)) == []

    def test_each_agent_judged_on_its_own_requests(self, loop):
        """A rarely used agent's bad requests count even among many good."""
        old_bad = requests(40, success=0.2, agent=OTHER)
        busy_good = requests(500, success=1.0, start=100)
        actions = judge(
            loop, Tracker(loop.policy), np.concatenate([old_bad, busy_good])
        )
        assert [(a, s) for a, s, _ in actions] == [
            (FeedbackAction.AGENT_CONFIDENCE, OTHER)
        ]

    def test_a_plain_window_gives_no_verdict(self, loop):
        """feedback_stats has no detector: no agent-confidence action."""
        assert decide(loop, requests(100, success=0.0)) == []


class TestCategoryOverrides:
    def test_raises_the_threshold_then_lowers_it(self, loop):
        """Overrides above 30% raise the category's threshold."""
        assert decide(loop, requests(100, accepted=0.5)) == [
            (FeedbackAction.CATEGORY_THRESHOLD, CATEGORY, pytest.approx(0.55))
        ]
        assert decide(loop, requests(100, accepted=0.75)) == []  # hold
        assert decide(loop, requests(100, accepted=0.95)) == [
            (FeedbackAction.CATEGORY_THRESHOLD, CATEGORY, pytest.approx(0.5))
        ]

    def test_just_above_thirty_percent_is_not_enough(self, loop):
        """33% overrides of 100: the lower bound is below 30%."""
        assert decide(loop, requests(100, accepted=0.67)) == []


class TestQualityDrift:
    def test_alerts_on_a_real_drop_and_clears(self, ring_name):
        """Quality 0.9 -> 0.7 alerts once; back to 0.9 clears it."""
        alerts = []
        with Monitor(ring_name) as monitor:
            loop = FeedbackLoop(monitor, on_alert=alerts.append)
            rng = np.random.default_rng(1)
            before = requests(300, quality=0.9)
            before["quality_score"] += rng.normal(0, 0.02, 300)
            after = requests(100, quality=0.7, start=300)
            window = np.concatenate([before, after])
            stats = feedback_stats(window)
            actions = loop.decide(stats)
            assert [a.action for a in actions] == [
                FeedbackAction.QUALITY_ALERT
            ]
            assert loop.decide(stats) == []  # raised once
            for action in actions:
                loop._record(action)
            assert [a.subject for a in alerts] == [CATEGORY]
            healed = np.concatenate([before, requests(100, start=400)])
            assert [a.action for a in loop.decide(feedback_stats(healed))] == [
                FeedbackAction.QUALITY_RECOVERED
            ]
            loop.close()

    @pytest.mark.parametrize(
        ("now", "noise", "recent_n"),
        [(0.84, 0.0, 100), (0.7, 0.0, 20), (0.79, 0.6, 100)],
        ids=["8%-drop", "too-few", "within-noise"],
    )
    def test_no_alert_without_a_real_drop(self, loop, now, noise, recent_n):
        """Under 10%, too few samples, or inside the noise: no alert."""
        before = requests(300, quality=0.9)
        recent = requests(recent_n, quality=now, start=300)
        recent["quality_score"] += noise * (-1) ** np.arange(recent_n)
        assert decide(loop, np.concatenate([before, recent])) == []


class TestSlowAgents:
    def test_caps_a_slow_agent_and_releases_it(self, loop):
        """Mean over 5 s caps parallel use; under 4 s releases it."""
        assert decide(loop, requests(100, ms=8000.0)) == [
            (FeedbackAction.PARALLEL_CAP, AGENT, 1.0)
        ]
        assert decide(loop, requests(100, ms=4500.0)) == []  # hold
        assert decide(loop, requests(100, ms=1000.0)) == [
            (FeedbackAction.PARALLEL_CAP, AGENT, 0.0)
        ]

    def test_long_tail_counts_through_p95(self, loop):
        """A fine mean with a p95 over 10 s is still slow."""
        records = requests(100, ms=1000.0)
        records["execution_time_ms"][-10:] = 30_000.0
        assert decide(loop, records)[0][:2] == (
            FeedbackAction.PARALLEL_CAP,
            AGENT,
        )

    def test_just_under_five_seconds_is_fine(self, loop):
        """4.9 s mean, p95 under 10 s: not capped."""
        assert decide(loop, requests(100, ms=4900.0)) == []


class TestPolicy:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"success_threshold": 1.5},
            {"recent": 0},
            {"exploration": -0.1},
            {"interval_s": 0},
        ],
    )
    def test_bad_policy_is_refused(self, kwargs):
        """Out-of-range settings raise ValueError at construction."""
        with pytest.raises(ValueError, match="Policy"):
            Policy(**kwargs)


class TestRouting:
    def test_route_applies_the_adjustments(self, ring_name):
        """Demoted agents give way, slow ones leave parallel fan-outs."""
        selector = TableSelector(
            {"code": ("coder", "reviewer"), "general": ("generalist",)},
            alternatives={"code": ("coder_b",)},
        )
        with Monitor(ring_name) as monitor:
            loop = FeedbackLoop(monitor, Policy(exploration=0.0))
            coordinator = Coordinator(
                monitor, selector=selector, feedback=loop
            )
            loop._next_update = float("inf")  # decisions set by hand below
            loop.state.multipliers[monitor.intern("coder")] = 0.9
            loop.state.capped.add(monitor.intern("reviewer"))
            decision = coordinator.route("fix this python bug")
            assert decision.agents == ("coder_b",)
            assert decision.selection.strategy == "single"
            decision.context.end()
            loop.close()

    def test_exploration_keeps_a_share_for_demoted_agents(self, ring_name):
        """About ``exploration`` of requests route as if not demoted."""
        with Monitor(ring_name) as monitor:
            loop = FeedbackLoop(monitor, Policy(exploration=0.05))
            share = np.mean([loop.explores(i) for i in range(1, 20_001)])
            assert 0.04 < share < 0.06
            selection = Selection(("coder",), "single", 0.8)
            coordinator = Coordinator(monitor, feedback=loop)
            loop.state.multipliers[monitor.intern("coder")] = 0.5
            kept = sum(
                coordinator._adjusted(Intent("code"), selection, i).agents
                == ("coder",)
                for i in range(1, 2001)
            )
            assert 60 < kept < 140
            loop.close()


class TestBackgroundThread:
    def test_thread_updates_without_route_paying(self, ring_name):
        """start(): decisions appear while nobody calls update()."""
        with Monitor(ring_name) as monitor:
            writer = monitor._rings[0].writer()
            writer.put_many(requests(100, success=0.3))
            loop = FeedbackLoop(monitor, Policy(interval_s=0.01))
            loop.start()
            assert loop.running
            deadline = time.monotonic() + 10
            while AGENT not in loop.state.multipliers:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert loop.stop(timeout_s=5) and not loop.running
            assert loop.failures == 0
            writer.close()
            loop.close()
