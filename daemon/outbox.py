"""
The outbox side of forwarding: the sources a destination may take, read
from SQLite with texts resolved, and the destinations' stored marks.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rows:
    """One batch of one source, in ascending ``id``.

    Attributes:
        columns: column name -> that column's values, one per row; texts
            resolved to ``str | None``, numbers as Python numbers or None
            for unknown.
        last_id: the outbox id of the batch's last row (the new mark once
            the destination took the batch).
    """

    columns: dict[str, list[Any]]
    last_id: int

    def __len__(self) -> int:
        return len(self.columns["id"]) if "id" in self.columns else 0


@dataclasses.dataclass(frozen=True)
class Source:
    """An outbox table and the query that reads it with texts resolved.

    ``query`` takes the mark and a row limit; the first column is ``id``.
    """

    name: str
    table: str
    query: str


def _source(name: str, table: str, view: str, request: bool) -> Source:
    more = "t.request_id, " if request else ""
    return Source(
        name,
        table,
        f"SELECT v.*, t.epoch, t.lane, t.seq, {more}t.timestamp_ns "
        f"FROM {table} AS t JOIN {view} AS v ON v.id = t.id "
        "WHERE t.id > ? ORDER BY t.id LIMIT ?",
    )


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        _source("events", "events", "monitoring_events", True),
        _source("agent_runs", "agent_runs", "agent_runs_view", True),
        _source("alerts", "alerts", "alert_log", False),
        _source("adjustments", "adjustments", "adjustment_log", False),
    )
}
"""The outbox sources a destination may take, by name."""


def read_rows(
    db: sqlite3.Connection, source: str, after_id: int, limit: int
) -> Rows | None:
    """Read up to ``limit`` rows of ``source`` with ``id > after_id``.

    Returns None when there are none, or the source's table does not
    exist yet (a database from before its migration).

    Raises:
        KeyError: ``source`` is not one of ``SOURCES``.
        ValueError: ``limit`` is below 1.
        sqlite3.Error: the database cannot be read (retry later).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    spec = SOURCES[source]
    try:
        cursor = db.execute(spec.query, (after_id, limit))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    rows = cursor.fetchall()
    if not rows:
        return None
    names = [d[0] for d in cursor.description]
    columns: dict[str, list[Any]] = {}
    for name, values in zip(names, zip(*rows, strict=True), strict=True):
        # A view column also selected from the table keeps its first copy.
        columns.setdefault(name, list(values))
    return Rows(columns, int(rows[-1][0]))


def read_marks(db: sqlite3.Connection, sink: str) -> dict[str, int]:
    """``sink``'s stored marks per source (none before migration 0009)."""
    try:
        found = db.execute(
            "SELECT source, last_id FROM sink_progress WHERE sink = ?",
            (sink,),
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    return {source: int(last_id) for source, last_id in found}


def lowest_marks(
    db: sqlite3.Connection, sinks: Sequence[str], source: str
) -> int | None:
    """The lowest stored mark of ``sinks`` for ``source`` (a sink with no
    mark yet counts as 0); None when ``sinks`` is empty."""
    if not sinks:
        return None
    return min(read_marks(db, sink).get(source, 0) for sink in sinks)
