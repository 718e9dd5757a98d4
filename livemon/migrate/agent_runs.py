"""
The seed's agent-performance log was per agent: each of its rows is one
agent's run.  Each migrated row therefore also becomes an ``agent_runs``
row, made in SQL from the execution event just stored from it (so both
say the same thing), with the same identity (epoch, lane, rowid), and
counted in the agent-run rollups.

Its request is the one the legacy row names: the execution event of the
same row (same ``request_id``).  The legacy layout links a performance
row to no routing or quality row (it has no request id; ``query_hash``
repeats for a repeated query), so no other link is made: see
docs/migration.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from livemon.db import agent_rollup
from livemon.db.rollup import (
    BUCKETS_PER_DOUBLING,
    MAX_BUCKET,
    NS_PER_HOUR,
    group_rows,
)
from livemon.migrate.reconcile import Check, Totals
from livemon.record import AgentOutcome

_COLUMNS = (
    "epoch, lane, seq, timestamp_ns, request_id, pid, agent, outcome, "
    "query_category, routing_strategy, execution_time_ms, success, error, "
    "input_tokens, output_tokens, quality_score"
)

# The agent is the one member of the run's single-name agent list; the
# outcome is unknown (the seed did not record which output was used), and
# the legacy token count is not split into input and output.
INSERT_RUNS = f"""
    INSERT OR IGNORE INTO agent_runs ({_COLUMNS})
    SELECT e.epoch, e.lane, e.seq, e.timestamp_ns, e.request_id, e.pid,
        m.member, {int(AgentOutcome.UNKNOWN)}, e.query_category,
        e.routing_strategy, e.execution_time_ms, e.success, e.error, -1, -1,
        e.quality_score
    FROM events AS e JOIN list_members AS m ON m.list = e.actual_agents
    WHERE {{where}}
"""


def insert_runs(
    db: sqlite3.Connection,
    epoch: int,
    lane: int,
    chunk: tuple[npt.NDArray[np.void], npt.NDArray[np.int64]],
    events: tuple[int, int],
) -> int:
    """Add the agent runs of one chunk's execution events; return runs
    added.  The caller owns the transaction (the chunk's).

    Runs already there (a rerun, or a moved copy) are ignored, so each
    legacy row is one run, once, also in a database migrated before runs
    were made.

    Args:
        chunk: the chunk's records (RECORD_DTYPE) and their seqs (rowids),
            as just given to ``insert_events``.
        events: (events that insert added, the highest event id before
            it): when it added every record, the runs are read from the
            new ids, else from the chunk's identities.
    """
    records, seqs = chunk
    added_events, last_event_id = events
    if len(records) != len(seqs):
        raise ValueError(f"{len(records)} records but {len(seqs)} seqs")
    if not len(records):
        return 0
    (last_id,) = db.execute(
        "SELECT coalesce(max(id), 0) FROM agent_runs"
    ).fetchone()
    before = db.total_changes
    if added_events == len(records):  # new ids, in one range: no search
        db.execute(INSERT_RUNS.format(where="e.id > ?"), (last_event_id,))
    else:
        db.execute(
            INSERT_RUNS.format(
                where="e.epoch = ? AND e.lane = ? AND e.seq BETWEEN ? AND ?"
            ),
            (epoch, lane, int(seqs.min()), int(seqs.max())),
        )
    added = db.total_changes - before
    if added == len(records):
        _add_rollups(db, records)
    elif added:
        agent_rollup.add_agent_runs_after(db, last_id)
    return added


def _add_rollups(
    db: sqlite3.Connection, records: npt.NDArray[np.void]
) -> None:
    """Fold the runs of ``records`` (every one just added) into the agent
    rollups, in numpy, as ``rows.insert_agent_runs`` does in SQL (SQL
    aggregation cost 40% of the runs' insert; ``rollup.add_records`` does
    the same for events).  A legacy run's outcome is unknown, so none is
    censored and no outcome is counted; its tokens are unknown (0).
    """
    stamps = records["timestamp_ns"]
    hour = np.where(
        stamps >= 0, stamps // NS_PER_HOUR, -(-stamps // NS_PER_HOUR)
    )
    agent = records["actual_agents"][:, 0]  # a one-name list: its agent
    category = records["query_category"]
    first, group = group_rows(hour, agent, category)
    success, time_ms = records["success"], records["execution_time_ms"]
    quality = records["quality_score"]
    timed = ~np.isnan(time_ms)
    sums = {
        "runs": np.ones(len(records)),
        "known": success >= 0,
        "successes": success == 1,
        "timed": timed,
        "time_ms_sum": np.nan_to_num(time_ms, nan=0.0),
        "scored": ~np.isnan(quality),
        "quality_sum": np.nan_to_num(quality, nan=0.0),
    }
    columns = [
        np.bincount(group, weights=sums[c], minlength=len(first))
        if c in sums
        else np.zeros(len(first))
        for c in agent_rollup.AGENT_SUM_COLUMNS
    ]
    keys = [hour[first], agent[first], category[first]]
    db.executemany(_UPSERT[0], _rows(keys + columns))
    shifted = 1 + np.maximum(time_ms[timed], 0.0)
    bucket = np.minimum(
        BUCKETS_PER_DOUBLING * np.log2(shifted), MAX_BUCKET
    ).astype(np.int64)
    first, group = group_rows(hour[timed], agent[timed], bucket)
    counts = np.bincount(group, minlength=len(first))
    keys = [hour[timed][first], agent[timed][first], bucket[first]]
    db.executemany(_UPSERT[1], _rows([*keys, counts]))


def _rows(columns: list[npt.NDArray[Any]]) -> Iterator[tuple[Any, ...]]:
    return zip(*(c.tolist() for c in columns), strict=True)


_UPSERT = (
    "INSERT INTO rollup_agent_runs VALUES (?, ?, ?, "
    + ", ".join("?" * len(agent_rollup.AGENT_SUM_COLUMNS))
    + ") ON CONFLICT (hour, agent, category) DO UPDATE SET "
    + ", ".join(
        f"{c} = {c} + excluded.{c}" for c in agent_rollup.AGENT_SUM_COLUMNS
    ),
    "INSERT INTO rollup_agent_latency VALUES (?, ?, ?, ?) "
    "ON CONFLICT (hour, agent, bucket) DO UPDATE SET "
    "runs = runs + excluded.runs",
)


def compare_runs(
    db: sqlite3.Connection, epoch: int, lane: int, totals: Totals
) -> list[Check]:
    """The agent runs stored with this identity epoch and lane against
    the rows migrated: one run per row, the same execution time.

    (Each run is made from the event of its row, same identity and
    request, so the link needs no check of its own: joining the two
    cost 4% of a migration.)
    """
    runs, ms = db.execute(
        "SELECT count(*), total(execution_time_ms) FROM agent_runs "
        "WHERE epoch = ? AND lane = ?",
        (epoch, lane),
    ).fetchone()
    return [
        Check("agent runs", totals.count, runs),
        Check("agent runs sum execution_time_ms", totals.execution_ms, ms),
    ]
