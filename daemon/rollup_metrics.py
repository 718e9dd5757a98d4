"""
Per-agent Prometheus metrics from the hourly rollups: requests, failures
and latency histograms, read through a read-only connection and cached.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from livemon.db import rollup, schema

logger = logging.getLogger("livemon.daemon")

MAX_AGENTS = 100
"""Agents with series of their own (the most requested; the rest are
summed under ``agent="(other agents)"``): ~20 series each."""
OTHER_AGENTS = "(other agents)"
Agent = int | str  # a label id, or OTHER_AGENTS
ROLLUP_CACHE_S = 15.0
"""Rollups are read at most this often: a scrape is then a dict walk."""
LATENCY_BOUNDS_S = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
"""Histogram bounds, from the rollups' 9%-wide buckets (a rollup bucket
counts under a bound only when it lies wholly below it)."""


class RollupReader:
    """Per-agent request, failure and latency metrics from the hourly
    rollups, read through a read-only connection and cached."""

    def __init__(self, db_path: str) -> None:
        self._path = db_path
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._metrics: list[Metric] = []
        self._ok = False
        self._monotonic = Monotonic()

    def metrics(self) -> Iterator[Metric]:
        """The cached metrics (re-read when older than ROLLUP_CACHE_S)."""
        with self._lock:
            if time.monotonic() - self._read_at >= ROLLUP_CACHE_S:
                self._read_at = time.monotonic()
                self._refresh()
            cached, ok = list(self._metrics), self._ok
        readable = GaugeMetricFamily(
            "livemon_rollups_readable",
            "1 when the last read of the rollups succeeded.",
        )
        readable.add_metric([], int(ok))
        yield readable
        yield from cached

    def _refresh(self) -> None:
        try:
            with contextlib.closing(
                sqlite3.connect(
                    f"file:{urllib.parse.quote(self._path)}?mode=ro",
                    uri=True,
                    timeout=1.0,
                    check_same_thread=False,
                )
            ) as db:
                self._metrics = self._monotonic.apply(rollup_metrics(db))
            self._ok = True
        except sqlite3.Error as exc:  # locked, missing: the last ones stay
            logger.debug("metrics: rollups not read: %s", exc)
            self._ok = False


_Group = tuple[str, tuple[tuple[str, str], ...]]  # family, labels but le


class Monotonic:
    """Counters and histograms read from rollups, kept from falling.

    Retention deletes old events and rebuilds their hours' rollups, and
    the database can be replaced: the totals read then fall, and
    Prometheus takes a fall for a reset (``rate`` and ``increase`` show
    the whole total as new).  A series (a family's samples of one label
    set, every ``le`` together, so a histogram stays consistent) moves
    by what it gained since the last read; a read in which any of its
    samples fell moves it by nothing (what that interval added is not
    counted) and becomes the new base.  A series whose rows are all
    gone is not shown (summed under ``OTHER_AGENTS``, or archived); its
    value is kept, so it goes on from there if it comes back.
    """

    def __init__(self) -> None:
        self._raw: dict[_Group, dict[Any, float]] = {}
        self._shown: dict[_Group, dict[Any, Sample]] = {}

    def apply(self, families: list[Metric]) -> list[Metric]:
        """``families`` with their counter and histogram samples moved
        to the values shown (in place; gauges as read)."""
        for family in families:
            if family.type not in ("counter", "histogram"):
                continue
            series: dict[_Group, list[Sample]] = {}
            for sample in family.samples:
                series.setdefault(_series(family.name, sample), []).append(
                    sample
                )
            family.samples = [
                shown
                for group, samples in series.items()
                for shown in self._advance(group, samples)
            ]
        return families

    def _advance(self, group: _Group, samples: list[Sample]) -> list[Sample]:
        raw = {_identity(s): s.value for s in samples}
        last_raw = self._raw.get(group, {})
        shown = self._shown.setdefault(group, {})
        fell = any(raw.get(key, 0.0) < v for key, v in last_raw.items())
        for sample in samples:
            key = _identity(sample)
            before = shown.get(key)
            if before is None:
                shown[key] = sample
            elif not fell:
                gained = sample.value - last_raw.get(key, 0.0)
                shown[key] = before._replace(value=before.value + gained)
        self._raw[group] = raw
        return list(shown.values())


def _identity(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def _series(family: str, sample: Sample) -> _Group:
    labels = sorted((k, v) for k, v in sample.labels.items() if k != "le")
    return family, tuple(labels)


def rollup_metrics(db: sqlite3.Connection) -> list[Metric]:
    """Requests, failures and latency histograms from the rollups: for
    every request (no label) and per agent (``agent`` label)."""
    names = dict(db.execute("SELECT label_id, text FROM labels"))
    counts = db.execute(
        "SELECT agent, total(requests), total(known - successes) "
        "FROM rollup GROUP BY agent"
    ).fetchall()
    sums = dict(
        db.execute("SELECT agent, total(time_ms_sum) FROM rollup GROUP BY 1")
    )
    buckets: dict[Agent, list[tuple[int, int]]] = {}
    for agent, bucket, n in db.execute(
        "SELECT agent, bucket, sum(requests) FROM rollup_latency "
        "GROUP BY agent, bucket"
    ):
        buckets.setdefault(agent, []).append((bucket, n))
    counts = _bounded(counts, sums, buckets)
    names[OTHER_AGENTS] = OTHER_AGENTS
    out: list[Metric] = []
    for scope, label in (("request", []), ("agent", ["agent"])):
        requests = CounterMetricFamily(
            "livemon_requests" if not label else "livemon_agent_requests",
            "Requests recorded.",
            labels=label,
        )
        failures = CounterMetricFamily(
            f"livemon_{scope}_failures",
            "Requests whose success was known and false.",
            labels=label,
        )
        latency = HistogramMetricFamily(
            f"livemon_{scope}_latency_seconds",
            "Execution time of requests.",
            labels=label,
        )
        for agent, n, failed in counts:
            if (agent == rollup.EVERY_REQUEST) != (not label):
                continue
            value = [] if not label else [_name(names, agent)]
            requests.add_metric(value, n)
            failures.add_metric(value, failed)
            latency.add_metric(
                value,
                _cumulative(buckets.get(agent, [])),
                sum_value=sums.get(agent, 0.0) / 1e3,
            )
        out += [requests, failures, latency]
    return out


def _bounded(
    counts: list[tuple[Agent, float, float]],
    sums: dict[Agent, float],
    buckets: dict[Agent, list[tuple[int, int]]],
) -> list[tuple[Agent, float, float]]:
    """``counts`` with at most ``MAX_AGENTS`` agents: the most requested,
    and the rest summed as ``OTHER_AGENTS`` (into ``sums`` and
    ``buckets`` too), so agent names made per request (an id in the
    name) cannot grow a scrape without bound."""
    every = [c for c in counts if c[0] == rollup.EVERY_REQUEST]
    agents = sorted(
        (c for c in counts if c[0] != rollup.EVERY_REQUEST),
        key=lambda c: (-c[1], c[0]),
    )
    if len(agents) <= MAX_AGENTS:
        return counts
    kept, rest = agents[: MAX_AGENTS - 1], agents[MAX_AGENTS - 1 :]
    other = OTHER_AGENTS
    sums[other] = sum(sums.pop(a, 0.0) for a, _, _ in rest)
    buckets[other] = [b for a, _, _ in rest for b in buckets.pop(a, [])]
    merged = (other, sum(c[1] for c in rest), sum(c[2] for c in rest))
    return [*every, *kept, merged]


def _name(names: Mapping[Agent, str], agent: Agent) -> str:
    text = names.get(agent)
    return schema.unknown_text(int(agent)) if text is None else text


def _cumulative(buckets: list[tuple[int, int]]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le``, count at or below) from rollup ones."""
    upper_s = [
        (2 ** ((b + 1) / rollup.BUCKETS_PER_DOUBLING) - 1) / 1e3
        for b, _ in buckets
    ]
    result = [
        (
            repr(bound),
            sum(
                n
                for (_, n), top in zip(buckets, upper_s, strict=True)
                if top <= bound
            ),
        )
        for bound in LATENCY_BOUNDS_S
    ]
    return [*result, ("+Inf", sum(n for _, n in buckets))]
