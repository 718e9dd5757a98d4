"""
The feedback leader's running figures, fed only the records that are new:
each agent's detector, success and latency from its own agent runs (the
request's figures for requests without runs), each category's overrides
and quality.  ``stats()`` gives them as ``WindowStats`` for ``decide``.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import numpy.typing as npt

from livemon.exceptions import LivemonError
from livemon.feedback.detect import Detector, wilson_bounds
from livemon.feedback.rules import Policy
from livemon.feedback.stats import AgentStats, CategoryStats, WindowStats
from livemon.record import AGENT_RUN_DTYPE, RECORD_DTYPE, AgentOutcome

_WINS = (int(AgentOutcome.SELECTED), int(AgentOutcome.MERGED))
_COVERED_CYCLES = 3  # updates a run's request id is remembered for
MAX_TRACKED = 1024
"""Agents, and categories, the leader follows at most: beyond, the one
seen least recently is forgotten (``Tracker.evicted``).  Names made
unique per request (an id in the name) would otherwise grow the leader's
memory and each update without bound; and 1,024 of each, at two
decisions apiece, is what the decisions segment holds (4,096)."""


class InvalidRecords(LivemonError, TypeError):
    """Records of another dtype than the rings carry."""


@dataclasses.dataclass
class _Category:
    """A category's newest requests: accepted (-1/0/1) and quality."""

    accepted: collections.deque[int]
    quality: collections.deque[float]


@dataclasses.dataclass
class _Agent:
    """An agent's detector, newest outcomes and latencies, run counts."""

    detector: Detector
    outcomes: collections.deque[int]
    latencies: collections.deque[float]
    runs: int = 0
    wins: int = 0


class Tracker:
    """Incremental per-agent and per-category figures of one host.

    A cancelled run is censored: neither a success, a failure nor a
    latency sample.  A discarded one counts for reliability and latency,
    not as a win.  A request record counts for its agents only if no
    agent run of it was seen; since a request's runs are written just
    after its record, request records wait one update (``add_requests``
    takes the previous update's) before they are judged.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.settings = policy.detector_settings()
        # Least recently seen first (each access moves one to the end).
        self.agents: collections.OrderedDict[int, _Agent] = (
            collections.OrderedDict()
        )
        self._categories: collections.OrderedDict[int, _Category] = (
            collections.OrderedDict()
        )
        self.evicted = 0
        # Figures are recomputed only for what changed since stats().
        self._agent_figures: dict[int, AgentStats] = {}
        self._category_figures: dict[int, CategoryStats] = {}
        self._dirty: set[int] = set()
        self._dirty_categories: set[int] = set()
        self._covered: collections.deque[npt.NDArray[np.int64]] = (
            collections.deque(maxlen=_COVERED_CYCLES)
        )
        self._held: npt.NDArray[np.void] | None = None
        self._fed = 0

    def detector(self, agent: int) -> Detector:
        """The detector of ``agent`` (a fresh one if it is new)."""
        return self._agent(agent).detector

    def _agent(self, agent: int) -> _Agent:
        entry = self.agents.get(agent)
        if entry is not None:
            self.agents.move_to_end(agent)
            return entry
        if len(self.agents) >= MAX_TRACKED:
            gone, _ = self.agents.popitem(last=False)
            self._agent_figures.pop(gone, None)
            self._dirty.discard(gone)
            self.evicted += 1
        recent = self.policy.recent
        entry = self.agents[agent] = _Agent(
            Detector(self.settings),
            collections.deque(maxlen=recent),
            collections.deque(maxlen=recent),
        )
        return entry

    def add(
        self, runs: npt.NDArray[np.void], requests: npt.NDArray[np.void]
    ) -> None:
        """Feed one update's new agent runs and request records.

        Args:
            runs: AGENT_RUN_DTYPE[n], new since the last call.
            requests: RECORD_DTYPE[m], new since the last call (judged
                at the next call, once their runs had time to appear).

        Raises:
            InvalidRecords: either array has another dtype.
        """
        for name, array, dtype in (
            ("runs", runs, AGENT_RUN_DTYPE),
            ("requests", requests, RECORD_DTYPE),
        ):
            if getattr(array, "dtype", None) != dtype:
                raise InvalidRecords(
                    f"{name} must be a numpy array of {dtype.names!r} "
                    "records, as the rings hold"
                )
        self._fed += len(runs) + len(requests)
        self._covered.append(runs["request_id"].astype(np.int64))
        held, self._held = self._held, requests
        self._add_runs(runs)
        if held is not None and len(held):
            self._add_requests(held)

    def flush(self) -> None:
        """Judge the held request records now (no runs are coming)."""
        held, self._held = self._held, None
        if held is not None and len(held):
            self._add_requests(held)

    def _add_runs(self, runs: npt.NDArray[np.void]) -> None:
        kept = runs[runs["outcome"] != int(AgentOutcome.CANCELLED)]
        kept = kept[np.argsort(kept["timestamp_ns"], kind="stable")]
        for agent, outcome, success, ms in zip(
            kept["agent"].tolist(),
            kept["outcome"].tolist(),
            kept["success"].tolist(),
            kept["execution_time_ms"].tolist(),
            strict=True,
        ):
            if agent == 0:
                continue
            self._dirty.add(agent)
            entry = self._agent(agent)
            entry.runs += 1
            entry.wins += outcome in _WINS
            self._sample(entry, success, ms)

    def _add_requests(self, requests: npt.NDArray[np.void]) -> None:
        requests = requests[
            np.argsort(requests["timestamp_ns"], kind="stable")
        ]
        for category, accepted, quality in zip(
            requests["intent_category"].tolist(),
            requests["accepted"].tolist(),
            requests["quality_score"].tolist(),
            strict=True,
        ):
            if category != 0:
                window = self._category(category)
                window.accepted.append(accepted)
                window.quality.append(quality)
        covered = np.concatenate(list(self._covered))
        alone = requests[~np.isin(requests["request_id"], covered)]
        for agents, success, ms in zip(
            alone["actual_agents"].tolist(),
            alone["success"].tolist(),
            alone["execution_time_ms"].tolist(),
            strict=True,
        ):
            for agent in agents:
                if agent:
                    self._dirty.add(agent)
                    self._sample(self._agent(agent), success, ms)

    def _category(self, category: int) -> _Category:
        window = self._categories.get(category)
        if window is not None:
            self._categories.move_to_end(category)
        else:
            if len(self._categories) >= MAX_TRACKED:
                gone, _ = self._categories.popitem(last=False)
                self._category_figures.pop(gone, None)
                self._dirty_categories.discard(gone)
                self.evicted += 1
            size = self.policy.recent + self.policy.baseline
            window = self._categories[category] = _Category(
                collections.deque(maxlen=size), collections.deque(maxlen=size)
            )
        self._dirty_categories.add(category)
        return window

    @staticmethod
    def _sample(entry: _Agent, success: int, ms: float) -> None:
        entry.outcomes.append(success)
        if success >= 0:
            entry.detector.observe(success == 1)
        if not math.isnan(ms):
            entry.latencies.append(ms)

    def stats(self) -> WindowStats:
        """The figures now, per agent (with its verdict) and category;
        ``records``: every record read since this tracker began."""
        for agent in self._dirty:
            self._agent_figures[agent] = self._agent_stats(agent)
        for category in self._dirty_categories:
            self._category_figures[category] = self._category_stats(
                category, self._categories[category]
            )
        self._dirty.clear()
        self._dirty_categories.clear()
        return WindowStats(
            records=self._fed,
            agents=dict(self._agent_figures),
            categories=dict(self._category_figures),
        )

    def _agent_stats(self, agent: int) -> AgentStats:
        entry = self.agents[agent]
        outcomes = np.fromiter(entry.outcomes, np.int64, len(entry.outcomes))
        known = int((outcomes >= 0).sum())
        successes = int((outcomes == 1).sum())
        low, high = wilson_bounds(successes, known, self.policy.z)
        ms = sorted(entry.latencies)
        total = math.fsum(ms)
        d = entry.detector
        return AgentStats(
            agent=agent,
            requests=len(outcomes),
            known=known,
            successes=successes,
            success_rate=successes / known if known else math.nan,
            success_low=low if known else math.nan,
            success_high=high if known else math.nan,
            timed=len(ms),
            mean_ms=total / len(ms) if ms else math.nan,
            p50_ms=_percentile(ms, 50),
            p95_ms=_percentile(ms, 95),
            demoted=d.low if d.samples >= self.settings.min_samples else None,
            change_rate=d.statistic,
            change_bound=d.bound,
            change_samples=d.segment,
            runs=entry.runs,
            wins=entry.wins,
        )

    def _category_stats(
        self, category: int, window: _Category
    ) -> CategoryStats:
        n = len(window.accepted)
        accepted = np.fromiter(window.accepted, np.int64, n)
        quality = np.fromiter(window.quality, np.float64, n)
        cut = max(0, n - self.policy.recent)
        accepted = accepted[cut:]
        known = int((accepted >= 0).sum())
        overrides = int((accepted == 0).sum())
        low, high = wilson_bounds(overrides, known, self.policy.z)
        q_now, sd_now, n_now = _mean_sd(quality[cut:])
        q_before, sd_before, n_before = _mean_sd(quality[:cut])
        return CategoryStats(
            category=category,
            requests=len(accepted),
            known=known,
            overrides=overrides,
            override_rate=overrides / known if known else math.nan,
            override_low=low if known else math.nan,
            override_high=high if known else math.nan,
            quality_recent=q_now,
            quality_recent_sd=sd_now,
            quality_recent_n=n_now,
            quality_baseline=q_before,
            quality_baseline_sd=sd_before,
            quality_baseline_n=n_before,
        )


def _percentile(ordered: list[float], percent: float) -> float:
    """As ``np.percentile`` interpolates, over an already sorted list."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * percent / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean_sd(values: npt.NDArray[np.float64]) -> tuple[float, float, int]:
    known = values[~np.isnan(values)]
    n = len(known)
    if n == 0:
        return math.nan, math.nan, 0
    sd = float(known.std(ddof=1)) if n > 1 else math.nan
    return float(known.mean()), sd, n
