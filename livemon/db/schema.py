"""
The unified database's schema, as ordered, named migrations recorded in the
database, and the ``monitoring_events`` view with exactly the seed's columns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from livemon.db import migrations, rollup
from livemon.db.sql import (
    known_label_text,
    known_list_text,
    label_text,
    list_text,
    typed_columns,
)
from livemon.db.sql import run as _run
from livemon.db.sql import unknown_text as unknown_text
from livemon.db.sql import unknown_text_sql as unknown_text_sql
from livemon.db.transaction import atomic
from livemon.record import AGENT_RUN_DTYPE, label_id, list_label_id

MIGRATIONS_TABLE = "_livemon_migrations"
IDENTITY_COLUMNS = ("epoch", "lane", "seq")


def event_columns() -> list[str]:
    """The ``events`` columns after the identity, in ``RECORD_DTYPE`` order.

    A list field (a fixed array of label ids in the record) is one column
    holding the label id of the whole list, whose text is a JSON array:
    three narrow columns instead of 24 cost a third less per insert.
    """
    return [name for name, _ in typed_columns()]


def agent_run_columns() -> list[str]:
    """The ``agent_runs`` columns after the identity: every field of
    ``AGENT_RUN_DTYPE`` under its own name, label ids as integers."""
    return list(AGENT_RUN_DTYPE.names or ())


def _create_events(db: sqlite3.Connection) -> None:
    columns = ",\n            ".join(
        f"{name} {sql_type}" for name, sql_type in typed_columns()
    )
    _run(
        db,
        f"""
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            epoch INTEGER NOT NULL,
            lane INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            {columns}
        );
        CREATE UNIQUE INDEX idx_events_identity ON events(epoch, lane, seq);
        CREATE INDEX idx_timestamp ON events(timestamp_ns);
        CREATE INDEX idx_query_hash ON events(query_hash);
        CREATE INDEX idx_event_type ON events(event_type);
        CREATE TABLE labels (
            label_id INTEGER PRIMARY KEY,
            text TEXT NOT NULL
        );
        CREATE TABLE health (
            id INTEGER PRIMARY KEY,
            timestamp_ns INTEGER NOT NULL,
            drained INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            lanes_in_use INTEGER NOT NULL,
            ring_fill_max REAL NOT NULL,
            ring_fill_json TEXT NOT NULL,
            lag_records INTEGER NOT NULL,
            drain_per_s REAL NOT NULL,
            batch_latency_ms REAL,
            db_size_bytes INTEGER NOT NULL,
            last_error TEXT
        );
        CREATE INDEX idx_health_timestamp ON health(timestamp_ns);
        """,
    )


def _create_monitoring_events_view(
    db: sqlite3.Connection,
    label: Callable[[str, str], str] = label_text,
    listed: Callable[[str, str], str] = list_text,
) -> None:
    flag = "NULLIF(e.{0}, -1) AS {0}"
    _run(
        db,
        f"""
        CREATE VIEW monitoring_events AS
        SELECT
            e.id AS id,
            strftime('%Y-%m-%d %H:%M:%f', e.timestamp_ns / 1e9, 'unixepoch')
                AS timestamp,
            CASE e.event_type WHEN 0 THEN 'request' WHEN 1 THEN 'routing'
                WHEN 2 THEN 'execution' WHEN 3 THEN 'quality' END
                AS event_type,
            printf('%016x', e.query_hash) AS query_hash,
            {label("e", "query_category")} AS query_category,
            NULLIF(e.query_complexity, -1) AS query_complexity,
            {label("e", "intent_category")} AS intent_category,
            {listed("e", "intent_domains")} AS intent_domains,
            {listed("e", "suggested_agents")} AS suggested_agents,
            {label("e", "routing_strategy")} AS routing_strategy,
            e.confidence AS confidence,
            {listed("e", "actual_agents")} AS actual_agents,
            {flag.format("accepted")},
            {label("e", "override_reason")} AS override_reason,
            e.execution_time_ms AS execution_time_ms,
            {flag.format("success")},
            {label("e", "error")} AS error,
            e.quality_score AS quality_score,
            {flag.format("task_completed")},
            {flag.format("code_valid")},
            {flag.format("tests_passed")},
            NULLIF(e.token_count, -1) AS token_count,
            e.context_size_kb AS context_size_kb
        FROM events AS e;
        """,
    )


def _name_unknown_labels(db: sqlite3.Connection) -> None:
    db.execute("DROP VIEW monitoring_events")
    _create_monitoring_events_view(db, known_label_text, known_list_text)


ROLLUP_TABLES_DDL = f"""
    CREATE TABLE list_members (
        list INTEGER NOT NULL,
        member INTEGER NOT NULL,
        PRIMARY KEY (list, member)
    ) WITHOUT ROWID;
    CREATE INDEX idx_list_members_member ON list_members(member);
    CREATE TABLE rollup (
        hour INTEGER NOT NULL,
        agent INTEGER NOT NULL,
        category INTEGER NOT NULL,
        {", ".join(f"{c} REAL NOT NULL" for c in rollup.SUM_COLUMNS)},
        PRIMARY KEY (hour, agent, category)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_latency (
        hour INTEGER NOT NULL,
        agent INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (hour, agent, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_reasons (
        hour INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        label INTEGER NOT NULL,
        agent INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (hour, kind, label, agent)
    ) WITHOUT ROWID
"""
"""The rollup tables, and which agents each agent-list label holds."""


def _create_rollups(db: sqlite3.Connection) -> None:
    _run(db, ROLLUP_TABLES_DDL)
    db.executemany(rollup.INSERT_MEMBERS, members_of_stored_lists(db))
    rollup.add_events_after(db, after_id=0)  # the events stored so far


def members_of_stored_lists(db: sqlite3.Connection) -> list[tuple[int, int]]:
    """(list, member) of every list label already stored, found by its
    text: a JSON array of names whose ids hash to the label's own id."""
    found = []
    for label, text in db.execute(
        "SELECT label_id, text FROM labels WHERE text LIKE '[%]'"
    ):
        try:
            names = json.loads(text)
        except ValueError:
            continue
        if not isinstance(names, list) or not all(
            isinstance(n, str) for n in names
        ):
            continue
        ids = [label_id(n) for n in names]
        if list_label_id(ids) == label:
            found += [(label, member) for member in dict.fromkeys(ids)]
    return found


def last_event_id(db: sqlite3.Connection) -> int:
    """The highest ``events.id`` (0 when empty): rows above it are new."""
    return int(
        db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_events_labels_health", _create_events),
    ("0002_monitoring_events_view", _create_monitoring_events_view),
    ("0003_alerts_adjustments", migrations.create_feedback_tables),
    ("0004_hourly_rollups", _create_rollups),
    ("0005_unknown_labels_named", _name_unknown_labels),
    (
        "0006_health_spill_and_refused_claims",
        migrations.add_health_spill_columns,
    ),
    ("0007_health_drops_per_reason", migrations.add_health_drop_columns),
    ("0008_agent_runs", migrations.create_agent_runs),
    ("0009_sink_progress", migrations.create_sink_progress),
    ("0010_health_agent_runs", migrations.add_health_agent_runs_columns),
]
"""Every schema change, in order; a name is never reused or reordered."""

SCHEMA_VERSION = len(MIGRATIONS)


def applied(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``db``, oldest first."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
        (MIGRATIONS_TABLE,),
    ).fetchone()
    if not exists:
        return []
    return [
        name
        for (name,) in db.execute(
            f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY id"
        )
    ]


def pending(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations not yet applied to ``db``."""
    done = set(applied(db))
    return [name for name, _ in MIGRATIONS if name not in done]


def apply_migrations(db: sqlite3.Connection) -> list[str]:
    """Apply every pending migration, each in its own transaction.

    ``db`` must be in autocommit mode (``isolation_level=None``).  Returns
    the names applied.  Safe to call from several processes at once: the
    migration runs under ``BEGIN IMMEDIATE`` and rechecks what is applied.
    """
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
        "id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
        "applied_at TEXT NOT NULL DEFAULT (datetime('now')))"
    )
    done = []
    for name, migrate in MIGRATIONS:
        with atomic(db):
            if name in applied(db):
                continue
            migrate(db)
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (?)", (name,)
            )
        done.append(name)
    return done
