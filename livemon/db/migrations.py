"""
The schema's migrations since the first rollups, by topic: the feedback
tables, the health columns (spill, drops, agent runs), the agent runs
with their view and rollups, and the destinations' marks.
``schema.MIGRATIONS`` orders them.
"""

from __future__ import annotations

import sqlite3

from livemon.db import agent_rollup
from livemon.db.sql import known_label_text, run, typed_columns
from livemon.record import AGENT_RUN_DTYPE, AgentOutcome


def add_health_spill_columns(db: sqlite3.Connection) -> None:
    run(
        db,
        """
        ALTER TABLE health ADD COLUMN refused_claims INTEGER;
        ALTER TABLE health ADD COLUMN spill_records INTEGER;
        ALTER TABLE health ADD COLUMN spill_bytes INTEGER;
        """,
    )


def add_health_drop_columns(db: sqlite3.Connection) -> None:
    # Records the producers' full lanes refused: spilled, or lost per
    # reason (their sum is ``dropped``); the spill backlog's age; and the
    # same per lane (JSON: {"drops": [...], "spill": [...]}).
    run(
        db,
        """
        ALTER TABLE health ADD COLUMN spilled INTEGER;
        ALTER TABLE health ADD COLUMN dropped_ring_full INTEGER;
        ALTER TABLE health ADD COLUMN dropped_spill_cap INTEGER;
        ALTER TABLE health ADD COLUMN dropped_disk_full INTEGER;
        ALTER TABLE health ADD COLUMN dropped_io_error INTEGER;
        ALTER TABLE health ADD COLUMN spill_oldest_age_s REAL;
        ALTER TABLE health ADD COLUMN lanes_json TEXT;
        """,
    )


def create_feedback_tables(db: sqlite3.Connection) -> None:
    common = """
            id INTEGER PRIMARY KEY,
            epoch INTEGER NOT NULL,
            lane INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            timestamp_ns INTEGER NOT NULL,
            pid INTEGER NOT NULL,
            action TEXT NOT NULL,
            subject INTEGER NOT NULL,
            old_value REAL,
            new_value REAL,
            statistic REAL,
            threshold REAL,
            samples INTEGER,
            window_records INTEGER,
            message INTEGER
    """
    texts = """
            strftime('%Y-%m-%d %H:%M:%f', t.timestamp_ns / 1e9, 'unixepoch')
                AS timestamp,
            t.pid, t.action,
            (SELECT text FROM labels WHERE label_id = t.subject) AS subject,
            t.old_value, t.new_value, t.statistic, t.threshold, t.samples,
            t.window_records,
            (SELECT text FROM labels WHERE label_id = t.message) AS message
    """
    run(
        db,
        f"""
        CREATE TABLE alerts ({common});
        CREATE UNIQUE INDEX idx_alerts_identity ON alerts(epoch, lane, seq);
        CREATE INDEX idx_alerts_timestamp ON alerts(timestamp_ns);
        CREATE TABLE adjustments ({common});
        CREATE UNIQUE INDEX idx_adjustments_identity
            ON adjustments(epoch, lane, seq);
        CREATE INDEX idx_adjustments_timestamp ON adjustments(timestamp_ns);
        CREATE VIEW alert_log AS SELECT t.id, {texts} FROM alerts AS t;
        CREATE VIEW adjustment_log AS
            SELECT t.id, {texts} FROM adjustments AS t;
        """,
    )


def create_agent_runs(db: sqlite3.Connection) -> None:
    columns = ",\n            ".join(
        f"{name} {sql_type}"
        for name, sql_type in typed_columns(AGENT_RUN_DTYPE)
    )
    outcomes = " ".join(
        f"WHEN {int(o)} THEN '{o.name.lower()}'"
        for o in AgentOutcome
        if o >= 0
    )
    run(
        db,
        f"""
        CREATE TABLE agent_runs (
            id INTEGER PRIMARY KEY,
            epoch INTEGER NOT NULL,
            lane INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            {columns},
            UNIQUE (epoch, lane, seq)
        );
        CREATE INDEX idx_agent_runs_request ON agent_runs(request_id);
        CREATE INDEX idx_agent_runs_timestamp ON agent_runs(timestamp_ns);
        CREATE INDEX idx_events_request ON events(request_id);
        CREATE VIEW agent_runs_view AS
        SELECT
            a.id AS id,
            strftime('%Y-%m-%d %H:%M:%f', a.timestamp_ns / 1e9, 'unixepoch')
                AS timestamp,
            a.request_id AS request_id,
            a.pid AS pid,
            {known_label_text("a", "agent")} AS agent,
            CASE a.outcome {outcomes} END AS outcome,
            {known_label_text("a", "query_category")} AS query_category,
            {known_label_text("a", "routing_strategy")} AS routing_strategy,
            a.execution_time_ms AS execution_time_ms,
            CASE a.success WHEN 0 THEN 0 WHEN 1 THEN 1 END AS success,
            {known_label_text("a", "error")} AS error,
            NULLIF(a.input_tokens, -1) AS input_tokens,
            NULLIF(a.output_tokens, -1) AS output_tokens,
            a.quality_score AS quality_score
        FROM agent_runs AS a;
        """,
    )
    run(db, agent_rollup.AGENT_ROLLUP_DDL)


def create_sink_progress(db: sqlite3.Connection) -> None:
    # Each destination's high-water mark per outbox source (daemon/forward):
    # rows with a higher id are not yet acknowledged by that destination.
    db.execute(
        """
        CREATE TABLE sink_progress (
            sink TEXT NOT NULL,
            source TEXT NOT NULL,
            last_id INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (sink, source)
        )
        """
    )


def add_health_agent_runs_columns(db: sqlite3.Connection) -> None:
    """Migration ``0010_health_agent_runs``: the agent runs' own figures
    in each health row (drained so far, waiting in their ring and in
    spill, lost by full lanes)."""
    run(
        db,
        """
        ALTER TABLE health ADD COLUMN agent_runs_drained INTEGER;
        ALTER TABLE health ADD COLUMN agent_runs_lag_records INTEGER;
        ALTER TABLE health ADD COLUMN agent_runs_spill_records INTEGER;
        ALTER TABLE health ADD COLUMN agent_runs_lost INTEGER;
        """,
    )
