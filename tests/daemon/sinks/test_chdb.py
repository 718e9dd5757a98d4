"""
The production DDL (LowCardinality, DateTime64, the 90-day TTL), which
the 18.16 server CI runs cannot take, checked in-process by chDB (the
current engine, marker ``chdb``, extra ``chdb``): tables created, the
sink's batches stored, a batch twice counted once, the report's queries.
"""

from __future__ import annotations

import json
import math

import pytest

from daemon.forward import read_rows
from daemon.sinks.clickhouse import ClickHouseDestination
from daemon.sinks.clickhouse_ddl import TABLES, is_modern
from livemon.db.reading import TimeRange
from livemon.views.clickhouse import build_clickhouse_report
from tests.daemon.sinks.conftest import add_agent_runs, event_batch

pytestmark = pytest.mark.chdb


class ChdbClient:
    """The two calls the sink's report makes on a ``clickhouse_driver``
    client, answered by a chDB session (no server to talk to here)."""

    def __init__(self, session) -> None:
        self.session = session
        session.query("SET output_format_json_quote_64bit_integers = 0")

    def execute(self, sql: str, params=None) -> list[tuple]:
        quoted = {
            k: v if isinstance(v, int) else "'" + v.replace("'", "\\'") + "'"
            for k, v in (params or {}).items()
        }
        result = self.session.query(sql % quoted, "JSONCompact")
        text = (
            result.bytes().decode()
            if hasattr(result, "bytes")
            else str(result)
        )
        return [tuple(row) for row in json.loads(text)["data"]] if text else []


@pytest.fixture
def engine(tmp_path):
    """A chDB session with the modern tables in database ``livemon``."""
    try:
        from chdb import session
    except ImportError:
        pytest.fail("chDB is missing: pip install -e '.[chdb]'")
    chdb = session.Session(str(tmp_path / "chdb"))
    version = chdb.query("SELECT version()", "CSV").bytes().decode()
    assert is_modern(tuple(int(p) for p in version.strip('"\n').split(".")))
    chdb.query("CREATE DATABASE IF NOT EXISTS livemon")
    for table in TABLES.values():
        chdb.query(table.ddl("livemon", modern=True))
    yield chdb
    chdb.close()


def insert(engine, source: str, rows, host: str) -> None:
    """Insert a batch converted exactly as the sink converts it."""
    sink = ClickHouseDestination("clickhouse://127.0.0.1/livemon", host)
    table = TABLES[source]
    columns = [sink._column(name, rows) for name in table.columns]
    lines = [
        json.dumps(dict(zip(table.columns, values, strict=True)))
        for values in zip(*columns, strict=True)
    ]
    engine.query(
        f"INSERT INTO livemon.{table.name} ({', '.join(table.columns)}) "
        "FORMAT JSONEachRow\n" + "\n".join(lines)
    )


def test_the_modern_ddl_as_created(engine):
    """TTL, DateTime64 and LowCardinality are in the stored table."""
    shown = engine.query("SHOW CREATE TABLE livemon.events", "TSVRaw")
    text = shown.bytes().decode()
    assert "ReplacingMergeTree" in text and "TTL" in text
    assert "DateTime64(9, 'UTC')" in text
    assert "`host` LowCardinality(String)" in text
    assert "ORDER BY (host, epoch, lane, seq)" in text


def test_batches_twice_count_once_with_exact_times(engine, store):
    """The sink's batch twice: FINAL counts it once, the DateTime64
    default keeps the nanosecond timestamp."""
    rows = read_rows(store.db, "events", 0, 1000)
    insert(engine, "events", rows, "web-1")
    insert(engine, "events", rows, "web-1")
    counts = engine.query(
        "SELECT count(), uniqExact(epoch, lane, seq), "
        "countIf(toUnixTimestamp64Nano(timestamp) = timestamp_ns) "
        "FROM livemon.events FINAL",
        "CSV",
    )
    assert counts.bytes().decode().strip() == "250,250,250"
    nulls = engine.query(
        "SELECT countIf(isNull(execution_time_ms)), any(actual_agents) "
        "FROM livemon.events",
        "CSV",
    )
    assert nulls.bytes().decode().strip() == "500,\"['coder']\""


def test_agent_runs_fit(engine, store):
    """agent_runs rows (the contract's table) fit the modern table."""
    add_agent_runs(store.db, 12)
    insert(
        engine, "agent_runs", read_rows(store.db, "agent_runs", 0, 100), "h"
    )
    found = engine.query(
        "SELECT count(), any(outcome) FROM livemon.agent_runs FINAL", "CSV"
    )
    assert found.bytes().decode().strip() == '12,"merged"'


def test_the_report_runs_on_the_current_engine(engine, store):
    """Every report query runs on the modern types, per host."""
    store.write(1, [], [event_batch(10, lane=1)])
    rows = read_rows(store.db, "events", 0, 1000)
    insert(engine, "events", rows, "web-1")
    insert(engine, "events", rows, "web-2")
    add_agent_runs(store.db, 5)
    runs = read_rows(store.db, "agent_runs", 0, 100)
    insert(engine, "agent_runs", runs, "web-2")
    report = build_clickhouse_report(
        ChdbClient(engine), "livemon", TimeRange.parse("1d", "now")
    )
    hosts = report.table("hosts")
    assert [r[:2] for r in hosts.rows] == [("web-1", 260), ("web-2", 260)]
    assert report.table("agents").column("hosts") == [2]
    assert math.isnan(report.table("agents").column("mean_ms")[0])
    [row] = report.table("agent_runs").records()
    assert (row["agent"], row["runs"], row["merged"]) == ("coder", 5, 5)


def test_the_ttl_keeps_freshly_shipped_rows_of_any_time(engine, store):
    """Rows whose own time is long past (a migrated history, a clock
    behind, a zero or damaged timestamp) or far ahead survive a merge
    right after shipping: the TTL counts from when ClickHouse received
    them, so the per-host reconciliation stays exact."""
    add_agent_runs(store.db, 6)
    rows = read_rows(store.db, "agent_runs", 0, 100)
    day_ns = 86_400 * 10**9
    now_ns = rows.columns["timestamp_ns"][0]
    rows.columns["timestamp_ns"] = [
        now_ns,
        now_ns - 400 * day_ns,  # older than the 90 days
        0,
        -(2**63),
        2**63 - 1,
        now_ns + 3650 * day_ns,
    ]
    insert(engine, "agent_runs", rows, "h")
    engine.query("OPTIMIZE TABLE livemon.agent_runs FINAL")
    found = engine.query(
        "SELECT count() FROM livemon.agent_runs FINAL", "CSV"
    ).bytes()
    assert found.decode().strip() == "6"


class ChdbInserts:
    """The insert call the sink makes on a ``clickhouse_driver`` client
    (``execute(sql, columns, columnar=True)``), made on a chDB session:
    the current engine enforces limits the 18.16 server CI runs lacks."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.inserts = 0

    def execute(self, sql: str, data, columnar: bool) -> None:
        assert columnar
        names = sql[sql.index("(") + 1 : sql.index(")")].split(", ")
        lines = [
            json.dumps(dict(zip(names, values, strict=True)))
            for values in zip(*data, strict=True)
        ]
        self.engine.query(
            sql.removesuffix(" VALUES")
            + " FORMAT JSONEachRow\n"
            + "\n".join(lines)
        )
        self.inserts += 1


def test_a_batch_over_many_months_ships(engine, store):
    """A batch whose times span more than the 100 monthly partitions one
    insert may touch (a migrated history, damaged times) ships in
    several inserts, rather than being refused on every retry."""
    add_agent_runs(store.db, 240)
    store.db.execute(
        "UPDATE agent_runs SET timestamp_ns = timestamp_ns - id * ?",
        (31 * 86_400 * 10**9,),
    )
    sink = ClickHouseDestination("clickhouse://127.0.0.1/livemon", "h")
    sink._client = client = ChdbInserts(engine)  # as connected
    sink.ship("agent_runs", read_rows(store.db, "agent_runs", 0, 1000))
    found = engine.query(
        "SELECT count(), uniqExact(toYYYYMM(timestamp)) "
        "FROM livemon.agent_runs FINAL",
        "CSV",
    )
    assert found.bytes().decode().strip() == "240,240"
    assert client.inserts == 6  # 240 months in 28-day buckets, 45 each
