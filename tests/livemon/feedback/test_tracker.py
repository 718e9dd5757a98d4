"""
Attribution: each agent is judged on its own runs (cancelled ones
censored, discarded ones counted for reliability, not wins), and on the
request's figures only for requests without agent runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from livemon.feedback.rules import Policy
from livemon.feedback.tracker import Tracker
from livemon.record import AGENT_RUN_DTYPE, RECORD_DTYPE, AgentOutcome

A, B, CATEGORY = 101, 102, 201


def spread(count, rate):
    """``count`` outcomes, ``rate`` of them successes, evenly interleaved
    (no run of failures a change detector would rightly call a change)."""
    i = np.arange(count)
    return np.floor((i + 1) * rate) > np.floor(i * rate)


def runs(agent, count, *, success=1.0, ms=100.0, outcome=-1, start=0, rid=0):
    """``count`` agent runs, a ``success`` share of them spread evenly."""
    out = np.zeros(count, AGENT_RUN_DTYPE)
    out["timestamp_ns"] = np.arange(start, start + count)
    out["request_id"] = np.arange(rid, rid + count)
    out["agent"] = agent
    out["outcome"] = outcome
    out["success"] = spread(count, success)
    out["execution_time_ms"] = ms
    out["quality_score"] = np.nan
    return out


def requests(agents, count, *, success=1.0, ms=100.0, start=0, rid=0):
    """``count`` request records using ``agents`` together."""
    out = np.zeros(count, RECORD_DTYPE)
    out["timestamp_ns"] = np.arange(start, start + count)
    out["request_id"] = np.arange(rid, rid + count)
    out["actual_agents"][:, : len(agents)] = agents
    out["intent_category"] = CATEGORY
    out["success"] = spread(count, success)
    out["accepted"] = 1
    out["execution_time_ms"] = ms
    out["quality_score"] = 0.9
    return out


def tracked(run_records, request_records) -> Tracker:
    tracker = Tracker(Policy())
    tracker.add(run_records, request_records)
    tracker.flush()
    return tracker


class TestRuns:
    def test_cancelled_runs_are_censored(self):
        """Cancelled: no failure, no latency sample, not even a request."""
        cancelled = runs(
            A, 50, success=0.0, ms=9e9, outcome=AgentOutcome.CANCELLED
        )
        done = runs(A, 40, ms=200.0, outcome=AgentOutcome.SELECTED, rid=100)
        figures = tracked(
            np.concatenate([cancelled, done]), requests([], 0)
        ).stats()
        a = figures.agents[A]
        assert (a.requests, a.known, a.successes) == (40, 40, 40)
        assert a.mean_ms == pytest.approx(200.0)
        assert a.runs == 40

    def test_discarded_runs_count_for_reliability_not_wins(self):
        """Discarded failures count as failures; only selected are wins."""
        selected = runs(A, 30, outcome=AgentOutcome.SELECTED)
        discarded = runs(
            A, 30, success=0.0, outcome=AgentOutcome.DISCARDED, rid=30
        )
        a = tracked(np.concatenate([selected, discarded]), requests([], 0))
        figures = a.stats().agents[A]
        assert (figures.known, figures.successes) == (60, 30)
        assert (figures.runs, figures.wins) == (60, 30)

    def test_parallel_pair_each_judged_on_its_own_runs(self):
        """A fails and is slow, B is fine: only A is demoted and slow."""
        a = runs(A, 200, success=0.4, ms=9000.0, rid=0)
        b = runs(B, 200, success=0.95, ms=500.0, rid=0)  # same requests
        both = requests([A, B], 200, success=0.4, ms=9000.0)
        figures = tracked(np.concatenate([a, b]), both).stats().agents
        assert figures[A].demoted and not figures[B].demoted
        assert figures[A].mean_ms == pytest.approx(9000.0)
        assert figures[B].mean_ms == pytest.approx(500.0)
        assert figures[B].known == 100  # its own runs only (recent=100)


class TestFallback:
    def test_requests_without_runs_count_for_their_agents(self):
        """No agent runs at all: the request's figures, for each agent."""
        figures = tracked(
            runs(A, 0), requests([A, B], 100, success=0.3)
        ).stats()
        assert figures.agents[A].demoted and figures.agents[B].demoted
        assert figures.agents[A].successes == 30

    def test_requests_with_runs_are_not_counted_twice(self):
        """Runs of a request written one update after its record count
        instead of it: the request waits one update to be judged."""
        tracker = Tracker(Policy())
        tracker.add(runs(A, 0), requests([A], 50, success=0.0))
        tracker.add(runs(A, 50), requests([A], 0))  # the runs, next update
        tracker.flush()
        a = tracker.stats().agents[A]
        assert (a.known, a.successes) == (50, 50)

    def test_categories_count_every_request(self):
        """Overrides and quality are the request's, runs or not."""
        reqs = requests([A], 100)
        reqs["accepted"][:40] = 0
        category = tracked(runs(A, 100), reqs).stats().categories[CATEGORY]
        assert (category.known, category.overrides) == (100, 40)
        assert category.quality_recent == pytest.approx(0.9)


def test_records_of_another_dtype_are_refused():
    """A typed error naming what the tracker takes."""
    from livemon.feedback.tracker import InvalidRecords

    with pytest.raises(InvalidRecords, match="runs"):
        Tracker(Policy()).add(requests([A], 3), requests([A], 3))
