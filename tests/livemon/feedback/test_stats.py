"""
The vectorized statistics agree with a straightforward pure-Python
reference on random windows.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from livemon.feedback.stats import feedback_stats, wilson
from livemon.record import RECORD_DTYPE


def window(rows) -> np.ndarray:
    """Records from (ts, agents, success, ms, category, accepted, quality)."""
    records = np.zeros(len(rows), RECORD_DTYPE)
    for i, (ts, agents, ok, ms, category, accepted, quality) in enumerate(
        rows
    ):
        records["timestamp_ns"][i] = ts
        records["actual_agents"][i, : len(agents)] = agents
        records["success"][i] = ok
        records["execution_time_ms"][i] = ms
        records["intent_category"][i] = category
        records["accepted"][i] = accepted
        records["quality_score"][i] = quality
    return records


row = st.tuples(
    st.integers(0, 10**6),
    st.lists(st.sampled_from([11, 12, 13]), max_size=3, unique=True),
    st.sampled_from([-1, 0, 1]),
    st.one_of(st.just(math.nan), st.floats(0, 1e4)),
    st.sampled_from([0, 21, 22]),
    st.sampled_from([-1, 0, 1]),
    st.one_of(st.just(math.nan), st.floats(0, 1)),
)


def reference(rows, recent, baseline):
    """The same figures, one record at a time, the obvious way."""
    ordered = sorted(enumerate(rows), key=lambda r: (r[1][0], r[0]))
    ordered = [r for _, r in ordered]
    agents = {}
    for _, names, ok, ms, *_ in ordered:
        for name in names:
            agents.setdefault(name, []).append((ok, ms))
    agent_figures = {}
    for name, uses in agents.items():
        uses = uses[-recent:]
        known = [ok for ok, _ in uses if ok >= 0]
        times = sorted(ms for _, ms in uses if not math.isnan(ms))
        agent_figures[name] = (
            len(uses),
            len(known),
            sum(1 for ok in known if ok == 1),
            statistics.fmean(times) if times else math.nan,
            float(np.percentile(times, 95)) if times else math.nan,
        )
    categories = {}
    for *_, category, accepted, quality in ordered:
        if category:
            categories.setdefault(category, []).append((accepted, quality))
    category_figures = {}
    for category, uses in categories.items():
        now, before = (
            uses[-recent:],
            uses[-recent - baseline : -recent or None],
        )
        if len(uses) <= recent:
            before = []
        known = [a for a, _ in now if a >= 0]
        q_now = [q for _, q in now if not math.isnan(q)]
        q_before = [q for _, q in before if not math.isnan(q)]
        category_figures[category] = (
            len(now),
            len(known),
            sum(1 for a in known if a == 0),
            statistics.fmean(q_now) if q_now else math.nan,
            statistics.fmean(q_before) if q_before else math.nan,
        )
    return agent_figures, category_figures


def close(a, b):
    """Equal, or both NaN, or equal to float rounding."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


class TestAgainstReference:
    @given(st.lists(row, max_size=80), st.integers(1, 30), st.integers(0, 30))
    def test_numpy_matches_pure_python(self, rows, recent, baseline):
        """Property: every figure equals the one-at-a-time computation."""
        stats = feedback_stats(window(rows), recent, baseline)
        agents, categories = reference(rows, recent, baseline)
        assert set(stats.agents) == set(agents)
        for name, (requests, known, ok, mean, p95) in agents.items():
            a = stats.agents[name]
            assert (a.requests, a.known, a.successes) == (requests, known, ok)
            assert close(a.mean_ms, mean) and close(a.p95_ms, p95)
        assert set(stats.categories) == set(categories)
        for category, (
            requests,
            known,
            over,
            q_now,
            q_before,
        ) in categories.items():
            c = stats.categories[category]
            assert (c.requests, c.known, c.overrides) == (
                requests,
                known,
                over,
            )
            assert close(c.quality_recent, q_now)
            assert close(c.quality_baseline, q_before)

    def test_since_keeps_only_recent_times(self):
        """A time bound drops older records before anything is counted."""
        rows = [(t, [11], 1, 10.0, 21, 1, 0.5) for t in range(10)]
        stats = feedback_stats(window(rows), since_ns=7)
        assert stats.agents[11].requests == 3


class TestWilson:
    def test_known_values(self):
        """Against a textbook value: 8 of 10 -> [0.490, 0.943]."""
        low, high = wilson(np.array([8]), np.array([10]))
        assert round(low[0], 3) == 0.490 and round(high[0], 3) == 0.943

    def test_zero_trials_is_nan(self):
        """No trials, no bound (never a division error)."""
        low, high = wilson(np.array([0]), np.array([0]))
        assert math.isnan(low[0]) and math.isnan(high[0])
