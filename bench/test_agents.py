"""
What agent runs cost a request: the same request with two ``log_agent``
calls against it without any, and the drain's insert of agent runs
against the events', measured in the same run.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import ringbuf
from bench.test_monitor import ITERATIONS, ROUNDS, one_request
from livemon import Monitor
from livemon import record as rec
from livemon.config import load_config
from livemon.db import schema
from livemon.db.rows import ListLabels, insert_agent_runs, insert_events

pytestmark = pytest.mark.benchmark(group="agents")

BATCH = 20_000


def two_agents(monitor: Monitor) -> None:
    """The benchmark request, plus its two agents' own runs."""
    with monitor.request("fix the failing test", category="support") as ctx:
        ctx.log_routing(suggested_agents=["coder", "reviewer"])
        ctx.log_agent(
            "coder",
            execution_time_ms=120.5,
            success=True,
            input_tokens=900,
            output_tokens=300,
            outcome="selected",
        )
        ctx.log_agent(
            "reviewer",
            execution_time_ms=340.0,
            success=True,
            input_tokens=800,
            output_tokens=200,
            outcome="discarded",
        )


@pytest.fixture
def monitor(ring_name):
    """A Monitor with room for every round, events and agent runs."""
    config = load_config(
        {"ring": ring_name, "lanes": 1, "capacity_records": 4 * ROUNDS}
    )
    with Monitor(config=config) as mon:
        yield mon
    ringbuf.unlink(ring_name + ".agents")


def test_request_without_runs(benchmark, record, monitor):
    """The monitor benchmark's request, no agent runs (the baseline)."""
    benchmark.pedantic(
        one_request,
        args=(monitor,),
        rounds=ROUNDS // ITERATIONS,
        iterations=ITERATIONS,
        warmup_rounds=10,
    )
    assert monitor.counters.agent_runs_recorded == 0
    record(benchmark)


def test_request_with_two_runs(benchmark, record, monitor):
    """A request with two ``log_agent`` calls: the request's record and
    two agent-run records."""
    benchmark.pedantic(
        two_agents,
        args=(monitor,),
        rounds=ROUNDS // ITERATIONS,
        iterations=ITERATIONS,
        warmup_rounds=10,
    )
    assert monitor.counters.agent_runs_recorded >= 2 * ROUNDS
    assert monitor.counters.invalid == monitor.counters.dropped == 0
    record(benchmark, baseline="test_request_without_runs")


def _db(tmp_path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "bench.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    schema.apply_migrations(db)
    return db


def test_insert_events(benchmark, record, tmp_path):
    """20,000 events inserted with their rollups (the baseline)."""
    db = _db(tmp_path)
    events = np.zeros(BATCH, rec.RECORD_DTYPE)
    events["timestamp_ns"] = 10**18 + np.arange(BATCH)
    events["execution_time_ms"] = 5.0
    lists = ListLabels(db)
    first = iter(range(0, 10**9, BATCH))

    def insert():
        with db:
            db.execute("BEGIN")
            insert_events(db, lists, 1, ringbuf.Batch(0, next(first), events))

    benchmark.pedantic(insert, rounds=5)
    record(benchmark, items=BATCH)
    db.close()


def test_insert_agent_runs(benchmark, record, tmp_path):
    """20,000 agent runs inserted with their rollups."""
    db = _db(tmp_path)
    runs = np.zeros(BATCH, rec.AGENT_RUN_DTYPE)
    runs["timestamp_ns"] = 10**18 + np.arange(BATCH)
    runs["agent"] = np.arange(BATCH) % 4 + 1
    runs["execution_time_ms"] = 5.0
    first = iter(range(0, 10**9, BATCH))

    def insert():
        with db:
            db.execute("BEGIN")
            batch = ringbuf.Batch(0, next(first), runs)
            assert insert_agent_runs(db, 1, [batch]) == BATCH

    benchmark.pedantic(insert, rounds=5)
    record(benchmark, items=BATCH, baseline="test_insert_events")
    db.close()
