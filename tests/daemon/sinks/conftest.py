"""
Destinations for the forwarder's tests, and a store holding events.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import ringbuf
from daemon.forward import DestinationError, Rows
from daemon.store import Store
from livemon.record import LABEL_DTYPE, RECORD_DTYPE, label_id, label_record
from tests.daemon.sinks.receivers import Receiver, otlp_spans


class Recording:
    """A destination that keeps what it was handed, and fails on demand.

    Not a stand-in for a real server: it is the far end the forwarder
    talks to in these tests, which test the forwarder.
    """

    sources = ("events",)

    def __init__(self, name="recording", sources=("events",)):
        self.name = name
        self.sources = sources
        self.shipped: dict[str, list[Rows]] = {s: [] for s in sources}
        self.attempts = 0
        self.fail_next = 0  # this many calls raise
        self.error: Exception = DestinationError("refused for the test")
        self.block = threading.Event()  # set: ship waits until cleared
        self.closed = False

    def ship(self, source: str, rows: Rows) -> None:
        self.attempts += 1
        while self.block.is_set():
            time.sleep(0.01)
        if self.fail_next:
            self.fail_next -= 1
            raise self.error
        self.shipped[source].append(rows)

    def close(self) -> None:
        self.closed = True

    def ids(self, source="events") -> list[int]:
        """Every id shipped, in order."""
        return [i for rows in self.shipped[source] for i in rows.columns["id"]]


def event_batch(count: int, lane: int = 0, first_seq: int = 0):
    """``count`` records with an agent list and a category, stamped now."""
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = time.time_ns() + np.arange(count)
    records["request_id"] = np.arange(first_seq, first_seq + count) + 7
    records["query_category"] = label_id("coding")
    records["actual_agents"][:, 0] = label_id("coder")
    records["success"] = 1
    records["execution_time_ms"] = np.nan
    records["token_count"] = -1
    return ringbuf.Batch(lane, first_seq, records)


def label_batch(*texts: str) -> ringbuf.Batch:
    """Label records for ``texts``."""
    raw = b"".join(label_record(t) for t in texts)
    return ringbuf.Batch(0, 0, np.frombuffer(raw, LABEL_DTYPE).copy())


@pytest.fixture
def store(tmp_path):
    """A store with 250 events (labels known), closed after the test."""
    store = Store(str(tmp_path / "unified.db"))
    store.write(1, [label_batch("coding", "coder")], [event_batch(250)])
    yield store
    store.close()


@pytest.fixture
def clickhouse(tmp_path):
    """A running clickhouse-server (marker clickhouse), killed after."""
    from tests.daemon.sinks.clickhouse_server import (
        ClickHouseServer,
        available,
    )

    if not available():
        pytest.fail(
            "clickhouse-server is not installed: apt-get install "
            "clickhouse-server (.ci/run does), or deselect -m clickhouse"
        )
    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    yield server
    server.stop()


AGENT_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS agent_runs (
    id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, lane INTEGER NOT NULL,
    seq INTEGER NOT NULL, timestamp_ns INTEGER, request_id INTEGER,
    pid INTEGER, agent INTEGER, outcome INTEGER, query_category INTEGER,
    routing_strategy INTEGER, execution_time_ms REAL, success INTEGER,
    error INTEGER, input_tokens INTEGER, output_tokens INTEGER,
    quality_score REAL, UNIQUE (epoch, lane, seq));
CREATE VIEW IF NOT EXISTS agent_runs_view AS SELECT
    a.id AS id,
    strftime('%Y-%m-%d %H:%M:%f', a.timestamp_ns / 1e9, 'unixepoch')
        AS timestamp,
    a.request_id AS request_id, a.pid AS pid,
    (SELECT text FROM labels WHERE label_id = a.agent) AS agent,
    CASE a.outcome WHEN 0 THEN 'selected' WHEN 1 THEN 'merged'
        WHEN 2 THEN 'discarded' WHEN 3 THEN 'cancelled' END AS outcome,
    (SELECT text FROM labels WHERE label_id = a.query_category)
        AS query_category,
    (SELECT text FROM labels WHERE label_id = a.routing_strategy)
        AS routing_strategy,
    a.execution_time_ms AS execution_time_ms,
    CASE a.success WHEN 0 THEN 0 WHEN 1 THEN 1 END AS success,
    (SELECT text FROM labels WHERE label_id = a.error) AS error,
    NULLIF(a.input_tokens, -1) AS input_tokens,
    NULLIF(a.output_tokens, -1) AS output_tokens,
    a.quality_score AS quality_score
FROM agent_runs AS a;
"""
"""agent_runs as the contract (issue 15, migration 0008) defines it, for
a database from before that migration is merged here."""


def add_agent_runs(db, count: int) -> None:
    """Create agent_runs (if missing) and add ``count`` runs of 'coder'."""
    for statement in AGENT_RUNS_DDL.split(";"):
        if statement.strip():
            db.execute(statement)
    first = db.execute("SELECT coalesce(max(seq), -1) + 1 FROM agent_runs")
    start = first.fetchone()[0]
    now = time.time_ns()
    db.executemany(
        "INSERT INTO agent_runs (epoch, lane, seq, timestamp_ns, request_id, "
        "pid, agent, outcome, query_category, routing_strategy, "
        "execution_time_ms, success, error, input_tokens, output_tokens, "
        "quality_score) VALUES (1, 0, ?, ?, ?, 42, ?, 1, ?, 0, 12.5, 1, 0, "
        "-1, 300, NULL)",
        [
            (seq, now + seq, seq + 7, label_id("coder"), label_id("coding"))
            for seq in range(start, start + count)
        ],
    )


@pytest.fixture
def receiver():
    """A strict OTLP/JSON receiver on loopback, stopped after the test
    (the webhook tests have their own, taking any JSON)."""
    server = Receiver(check=otlp_spans)
    yield server
    server.stop()
