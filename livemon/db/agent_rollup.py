"""
Hourly rollups of the agent runs: each agent's own runs per hour and
category (success, latency, tokens, outcomes) and a latency histogram, so
reports read per-agent figures without scanning ``agent_runs``.

Kept in step by whoever inserts agent runs (``rows.insert_agent_runs``),
in the same transaction, from the rows just added.
"""

from __future__ import annotations

import sqlite3

from livemon.db.rollup import (
    BUCKETS_PER_DOUBLING,
    MAX_BUCKET,
    NS_PER_HOUR,
    ensure_math,
)

# Per hour, agent and category, from each agent's own runs.  A cancelled
# run (stopped because a sibling won) is censored: it counts in
# ``cancelled`` only, neither as a success or failure nor as a latency
# sample; a discarded one counts for success, not in ``selected``.

AGENT_SUM_COLUMNS = [  # of ``rollup_agent_runs``, after its key
    "runs",
    "known",
    "successes",
    "timed",
    "time_ms_sum",
    "scored",
    "quality_sum",
    "input_tokens",
    "output_tokens",
    "selected",
    "merged",
    "discarded",
    "cancelled",
]

_CENSORED = 3  # AgentOutcome.CANCELLED

AGENT_ROLLUP_SELECT = f"""
    SELECT a.timestamp_ns / {NS_PER_HOUR} AS hour, a.agent AS agent,
        a.query_category AS category,
        count(*) AS runs,
        sum(a.success >= 0 AND a.outcome != {_CENSORED}) AS known,
        sum(a.success = 1 AND a.outcome != {_CENSORED}) AS successes,
        sum(a.execution_time_ms IS NOT NULL AND a.outcome != {_CENSORED})
            AS timed,
        total(CASE WHEN a.outcome != {_CENSORED}
            THEN a.execution_time_ms END) AS time_ms_sum,
        count(a.quality_score) AS scored,
        total(a.quality_score) AS quality_sum,
        total(max(a.input_tokens, 0)) AS input_tokens,
        total(max(a.output_tokens, 0)) AS output_tokens,
        sum(a.outcome = 0) AS selected,
        sum(a.outcome = 1) AS merged,
        sum(a.outcome = 2) AS discarded,
        sum(a.outcome = {_CENSORED}) AS cancelled
    FROM agent_runs AS a WHERE {{where}}
    GROUP BY 1, 2, 3"""

AGENT_LATENCY_SELECT = f"""
    SELECT a.timestamp_ns / {NS_PER_HOUR} AS hour, a.agent AS agent,
        CAST(min({BUCKETS_PER_DOUBLING}
            * log2(1 + max(a.execution_time_ms, 0)), {MAX_BUCKET})
            AS INTEGER) AS bucket,
        count(*) AS runs
    FROM agent_runs AS a
    WHERE a.execution_time_ms IS NOT NULL AND a.outcome != {_CENSORED}
        AND ({{where}})
    GROUP BY 1, 2, 3"""

AGENT_ROLLUP_TABLES = ("rollup_agent_runs", "rollup_agent_latency")
_UPSERT_AGENTS = [
    f"INSERT INTO {table} SELECT * FROM ({select.format(where='a.id > ?')})"
    f" WHERE true {conflict}"
    for table, select, conflict in (
        (
            AGENT_ROLLUP_TABLES[0],
            AGENT_ROLLUP_SELECT,
            "ON CONFLICT (hour, agent, category) DO UPDATE SET "
            + ", ".join(
                f"{c} = {c} + excluded.{c}" for c in AGENT_SUM_COLUMNS
            ),
        ),
        (
            AGENT_ROLLUP_TABLES[1],
            AGENT_LATENCY_SELECT,
            "ON CONFLICT (hour, agent, bucket) DO UPDATE SET "
            "runs = runs + excluded.runs",
        ),
    )
]


def add_agent_runs_after(db: sqlite3.Connection, after_id: int) -> None:
    """Fold the agent runs with ``id > after_id`` into their rollups.

    In SQL, from the rows SQLite kept (a replayed run is ignored by the
    insert and gets no id, so each run is counted once).  The caller
    owns the transaction.
    """
    ensure_math(db)
    for statement in _UPSERT_AGENTS:
        db.execute(statement, (after_id,))


AGENT_ROLLUP_DDL = f"""
    CREATE TABLE rollup_agent_runs (
        hour INTEGER NOT NULL,
        agent INTEGER NOT NULL,
        category INTEGER NOT NULL,
        {", ".join(f"{c} REAL NOT NULL" for c in AGENT_SUM_COLUMNS)},
        PRIMARY KEY (hour, agent, category)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_agent_latency (
        hour INTEGER NOT NULL,
        agent INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        runs INTEGER NOT NULL,
        PRIMARY KEY (hour, agent, bucket)
    ) WITHOUT ROWID
"""
"""The agent-run rollup tables (migration ``0008_agent_runs``)."""
