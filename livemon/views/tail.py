"""
Events as they are committed, one line each, filtered by agent, category
or outcome; read by primary key, so following costs nothing on any size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from livemon.db import schema
from livemon.db.reading import Labels, format_ns

BACKLOG_SCAN_ROWS = 1_000_000
"""How far back ``latest`` looks for matches: bounds the cost of a filter
that matches nothing recent."""

_COLUMNS = (
    "id",
    "timestamp_ns",
    "intent_category",
    "actual_agents",
    "routing_strategy",
    "confidence",
    "accepted",
    "execution_time_ms",
    "success",
    "quality_score",
    "error",
    "override_reason",
)


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """Which events to show; None means any."""

    agent: int | None = None
    category: int | None = None
    success: bool | None = None

    def sql(self) -> tuple[str, list[int]]:
        """Extra WHERE terms (each starting with AND) and their values."""
        terms, values = "", list[int]()
        if self.agent is not None:
            terms += (
                " AND actual_agents IN "
                "(SELECT list FROM list_members WHERE member = ?)"
            )
            values.append(self.agent)
        if self.category is not None:
            terms += " AND intent_category = ?"
            values.append(self.category)
        if self.success is not None:
            terms += " AND success = ?"
            values.append(int(self.success))
        return terms, values


def latest(
    db: sqlite3.Connection, which: EventFilter, count: int
) -> list[tuple[Any, ...]]:
    """The last ``count`` matching events, oldest first."""
    if count <= 0:
        return []
    terms, values = which.sql()
    rows = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM events WHERE id > "
        f"(SELECT coalesce(max(id), 0) FROM events) - {BACKLOG_SCAN_ROWS}"
        f"{terms} ORDER BY id DESC LIMIT ?",
        [*values, count],
    ).fetchall()
    return rows[::-1]


def newer(
    db: sqlite3.Connection,
    which: EventFilter,
    after_id: int,
    up_to_id: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Matching events with ``after_id < id <= up_to_id``, oldest first."""
    terms, values = which.sql()
    return db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM events "
        f"WHERE id > ? AND id <= ?{terms} ORDER BY id LIMIT ?",
        [after_id, up_to_id, *values, limit],
    ).fetchall()


def follow(
    db: sqlite3.Connection,
    which: EventFilter,
    after_id: int,
    interval_s: float,
    batch: int = 1000,
) -> Iterator[tuple[Any, ...]]:
    """Matching events committed after ``after_id``, forever.

    Polls every ``interval_s`` when nothing is new.  Each poll reads up
    to the newest id taken first, so rows committed meanwhile wait for
    the next poll instead of being skipped, and a filter that matches
    nothing still moves on past what it has seen.
    """
    while True:
        top = schema.last_event_id(db)
        rows = newer(db, which, after_id, top, batch)
        yield from rows
        if len(rows) == batch:
            after_id = rows[-1][0]
            continue
        after_id = top
        time.sleep(interval_s)


def describe(row: tuple[Any, ...], labels: Labels) -> str:
    """One event as a line of text."""
    e = dict(zip(_COLUMNS, row, strict=True))
    outcome = {1: "ok  ", 0: "FAIL", -1: "?   "}.get(e["success"], "?   ")
    parts = [
        format_ns(e["timestamp_ns"]),
        outcome,
        f"{labels.text(e['intent_category']) or '-':<10}",
        f"{','.join(labels.members(e['actual_agents'])) or '-':<20}",
        _number(e["execution_time_ms"], "{:>8,.0f} ms"),
        _number(e["quality_score"], "q={:.2f}"),
        _number(e["confidence"], "conf={:.2f}"),
    ]
    if e["accepted"] == 0:
        reason = labels.text(e["override_reason"])
        parts.append(f"overridden ({reason})" if reason else "overridden")
    if e["error"]:
        parts.append(f"error: {labels.text(e['error'])}")
    return "  ".join(parts)


def as_json(row: tuple[Any, ...], labels: Labels) -> str:
    """One event as a JSON line, names resolved, unknowns null."""
    e = dict(zip(_COLUMNS, row, strict=True))
    return json.dumps(
        {
            "id": e["id"],
            "timestamp": format_ns(e["timestamp_ns"]),
            "category": labels.text(e["intent_category"]) or None,
            "agents": labels.members(e["actual_agents"]),
            "strategy": labels.text(e["routing_strategy"]) or None,
            "confidence": _known(e["confidence"]),
            "accepted": None if e["accepted"] < 0 else bool(e["accepted"]),
            "execution_time_ms": _known(e["execution_time_ms"]),
            "success": None if e["success"] < 0 else bool(e["success"]),
            "quality_score": _known(e["quality_score"]),
            "error": labels.text(e["error"]) or None,
            "override_reason": labels.text(e["override_reason"]) or None,
        },
        ensure_ascii=False,
    )


def _known(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _number(value: float | None, form: str) -> str:
    known = _known(value)
    width = len(form.format(0.0))
    return " " * width if known is None else form.format(known)
