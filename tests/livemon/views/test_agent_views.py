"""
Reports, ``top`` and ``stats`` use each agent's own runs where they exist
(a parallel pair where one agent fails no longer drags the other down),
and fall back to the requests' figures for agents without runs.
"""

from __future__ import annotations

import contextlib
import sqlite3

import numpy as np
import pytest

from livemon import Monitor
from livemon.db import reading, rollup, schema
from livemon.db.rows import (
    ListLabels,
    insert_agent_runs,
    insert_events,
    insert_labels,
)
from livemon.record import AGENT_RUN_DTYPE, RECORD_DTYPE, label_id
from livemon.views import live
from livemon.views.report import build_report
from ringbuf import Batch

HOUR_NS = rollup.NS_PER_HOUR
START_NS = 1_790_000_000 * 10**9 // HOUR_NS * HOUR_NS
COUNT = 2000  # requests over 10 hours
NAMES = ["healthy", "broken", "legacy", "pair", "parallel"]


def pair_of_runs(count: int):
    """Parallel requests of ``healthy`` (always succeeds, 50 ms) and
    ``broken`` (fails 3 in 4, 500 ms; every 10th run cancelled), plus
    older-style requests of ``legacy`` with no runs."""
    ids = {name: label_id(name) for name in NAMES}
    stamps = START_NS + np.arange(count) * (10 * HOUR_NS // count)
    events = np.zeros(count, RECORD_DTYPE)
    events["timestamp_ns"] = stamps
    events["request_id"] = np.arange(1, count + 1)
    events["execution_time_ms"] = 500.0
    legacy = np.arange(count) % 5 == 0
    events["success"] = np.where(np.arange(count) % 4 == 0, 1, 0)
    events["actual_agents"][:, 0] = np.where(
        legacy, ids["legacy"], ids["healthy"]
    )
    events["actual_agents"][:, 1] = np.where(legacy, 0, ids["broken"])
    paired = np.flatnonzero(~legacy)
    runs = np.zeros(2 * len(paired), AGENT_RUN_DTYPE)
    runs["timestamp_ns"] = np.repeat(stamps[paired], 2)
    runs["request_id"] = np.repeat(events["request_id"][paired], 2)
    runs["agent"][0::2], runs["agent"][1::2] = ids["healthy"], ids["broken"]
    runs["success"][0::2] = 1
    runs["success"][1::2] = np.where(paired % 4 == 0, 1, 0)
    runs["execution_time_ms"][0::2], runs["execution_time_ms"][1::2] = 50, 500
    runs["outcome"][0::2] = 0  # selected
    runs["outcome"][1::2] = np.where(paired % 10 == 1, 3, 2)  # or cancelled
    runs["input_tokens"], runs["output_tokens"] = 10, 5
    runs["quality_score"] = np.nan
    events["quality_score"] = np.nan
    return events, runs, ids


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A database with the requests and their agent runs."""
    path = str(tmp_path_factory.mktemp("agents") / "unified.db")
    events, runs, ids = pair_of_runs(COUNT)
    db = sqlite3.connect(path, isolation_level=None)
    schema.apply_migrations(db)
    lists = ListLabels(db)
    db.execute("BEGIN")
    insert_labels(db, lists, [(i, n) for n, i in ids.items()])
    insert_events(db, lists, 1, Batch(0, 0, events))
    insert_agent_runs(db, 2, [Batch(0, 0, runs)])
    db.execute("COMMIT")
    db.close()
    return path, events, runs


class TestReport:
    """``build_report``'s per-agent table."""

    # Partial hours at both ends: edges from the tables, the rest rollups.
    SPAN = reading.TimeRange(
        START_NS + 17 * 60 * 10**9, START_NS + 10 * HOUR_NS - 10**11
    )

    def agents(self, path):
        with contextlib.closing(reading.open_database(path)) as db:
            report = build_report(db, reading.Labels(db), self.SPAN)
            table = report.table("agents")
            return {r["agent"]: r for r in table.records()}

    def test_runs_where_they_exist(self, stored):
        """healthy and broken from their own runs (cancelled ones
        censored), legacy from its requests."""
        path, _, runs = stored
        agents = self.agents(path)
        stamps = runs["timestamp_ns"]
        mine = runs[
            (stamps >= self.SPAN.start_ns) & (stamps < self.SPAN.end_ns)
        ]
        broken = mine[mine["agent"] == label_id("broken")]
        counted = broken[broken["outcome"] != 3]
        assert agents["healthy"]["source"] == "runs"
        assert agents["healthy"]["success_rate"] == 1.0  # not the pair's
        assert agents["healthy"]["p50_ms"] == pytest.approx(50, rel=0.02)
        assert agents["broken"]["success_rate"] == pytest.approx(
            (counted["success"] == 1).mean()
        )
        assert agents["broken"]["requests"] == len(broken)
        assert agents["broken"]["cancelled"] == (broken["outcome"] == 3).sum()
        assert agents["broken"]["discarded"] == len(counted)
        assert agents["healthy"]["selected"] == agents["healthy"]["requests"]
        assert (
            agents["healthy"]["tokens"] == 15 * agents["healthy"]["requests"]
        )
        assert agents["legacy"]["source"] == "requests"
        assert agents["legacy"]["selected"] is None

    def test_one_agent(self, stored):
        """``--agent`` names an agent known from its runs too."""
        path, _, _ = stored
        with contextlib.closing(reading.open_database(path)) as db:
            report = build_report(
                db, reading.Labels(db), self.SPAN, agent="broken"
            )
        [row] = report.table("agents").records()
        assert row["agent"] == "broken" and row["source"] == "runs"


def test_stats_use_runs(ring_name):
    """The live per-agent table takes each agent's newest runs."""
    with Monitor(ring_name) as monitor:
        for i in range(200):
            with monitor.request(f"q {i}") as ctx:
                ctx.log_execution(
                    actual_agents=["healthy", "broken"], success=i % 2 == 0
                )
                ctx.log_agent("healthy", success=True, execution_time_ms=5.0)
                ctx.log_agent(
                    "broken",
                    success=i % 4 == 0,
                    outcome="cancelled" if i % 10 == 0 else "discarded",
                )
        with monitor.request("old style") as ctx:
            ctx.log_execution(actual_agents=["legacy"], success=True)
        snap = live.snapshot(monitor.config)
    names = {label_id(n): n for n in ("healthy", "broken", "legacy")}
    [table] = [
        t for t in live.stats_tables(snap, names.get) if t.name == "agents"
    ]
    rows = {r["agent"]: r for r in table.records()}
    assert rows["healthy"]["source"] == "runs"
    assert rows["healthy"]["success_rate"] == 1.0
    assert rows["healthy"]["requests"] == 100  # the newest (Policy.recent)
    assert rows["broken"]["success_rate"] == pytest.approx(
        np.mean([i % 4 == 0 for i in range(200) if i % 10][-100:])
    )
    assert rows["legacy"]["source"] == "requests"
