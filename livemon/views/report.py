"""
The dashboard queries: per agent and per category figures, trends, top
errors and override reasons, feedback actions, over a time range.

Whole hours come from the rollups, the partial hours at either end from
the events themselves (through the timestamp index), so a report costs
the same on ten thousand events or ten million.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections.abc import Sequence
from typing import Any

from livemon.db import rollup
from livemon.db.reading import Labels, TimeRange, format_ns
from livemon.views import agent_report

NS_PER_HOUR = rollup.NS_PER_HOUR
HOURS_PER = {"hour": 1, "day": 24}
# The columns of tables both backends give (SQLite here, ClickHouse in
# views/clickhouse.py): one shape, whichever answers.
CATEGORY_COLUMNS = (
    "category",
    "requests",
    "override_rate",
    "success_rate",
    "mean_ms",
    "quality",
)
TREND_COLUMNS = (
    "start",
    "requests",
    "success_rate",
    "override_rate",
    "mean_ms",
    "p95_ms",
    "quality",
)


@dataclasses.dataclass(frozen=True)
class Table:
    """One titled table of a report; ``columns`` name each row's values."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        """The rows as column -> value mappings (for JSON)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """Every row's value in column ``name``."""
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


@dataclasses.dataclass(frozen=True)
class Report:
    """A report's tables, in the order people read them."""

    span: TimeRange
    per: str
    tables: list[Table]

    def table(self, name: str) -> Table:
        """The table called ``name`` (``agents``, ``trend``, ...)."""
        return next(t for t in self.tables if t.name == name)


def build_report(
    db: sqlite3.Connection,
    labels: Labels,
    span: TimeRange,
    per: str = "hour",
    agent: str | None = None,
    top: int = 10,
) -> Report:
    """Query everything a report shows.

    Args:
        per: trend bucket, ``hour`` or ``day`` (UTC).
        agent: only requests that used this agent.
        top: how many errors and override reasons to list.

    Raises:
        UnknownName: ``agent`` never appears in the database.
        sqlite3.Error: the database failed (see ``reading.explain``).
    """
    if per not in HOURS_PER:
        raise ValueError(f"per must be one of {sorted(HOURS_PER)}")
    sources = _Sources(span, labels.agent(agent) if agent else None)
    return Report(
        span,
        per,
        [
            _agents(db, labels, sources),
            _categories(db, labels, sources),
            _trend(db, sources, HOURS_PER[per]),
            *_reasons(db, labels, sources, top),
            *_feedback(db, labels, span),
        ],
    )


class _Sources:
    """Subqueries shaped like each rollup table, covering the range.

    Whole hours read the rollup table; partial hours aggregate events.
    """

    def __init__(self, span: TimeRange, agent: int | None) -> None:
        first = -(-span.start_ns // NS_PER_HOUR)  # first whole hour
        end = span.end_ns // NS_PER_HOUR  # after the last whole hour
        self.params: dict[str, int] = {
            "first": first,
            "end": end,
            "agent": agent or rollup.EVERY_REQUEST,
        }
        # Rows of the per-agent table, and rows that count each request
        # once (all of them, or those that used the one agent asked for).
        self.agent_rows = "agent != 0" if agent is None else "agent = :agent"
        self.request_rows = "agent = :agent"
        if first < end:
            edges = [(span.start_ns, first * NS_PER_HOUR)]
            edges.append((end * NS_PER_HOUR, span.end_ns))
        else:
            edges = [(span.start_ns, span.end_ns)]
        self._raw = []
        for i, (start, stop) in enumerate(edges):
            if start < stop:
                self.params |= {f"s{i}": start, f"e{i}": stop}
                self._raw.append(
                    f"timestamp_ns >= :s{i} AND timestamp_ns < :e{i}"
                )

    def of(self, table: str, select: str) -> str:
        """A subquery of ``table``'s rows over the range."""
        parts = []
        if self.params["first"] < self.params["end"]:
            parts.append(
                f"SELECT * FROM {table} WHERE hour >= :first AND hour < :end"
            )
        parts += [select.format(where=where) for where in self._raw]
        return f"({' UNION ALL '.join(parts) or select.format(where='0')})"

    @property
    def rollup(self) -> str:
        return self.of("rollup", rollup.ROLLUP_SELECT)

    @property
    def latency(self) -> str:
        return self.of("rollup_latency", rollup.LATENCY_SELECT)

    @property
    def reasons(self) -> str:
        return self.of("rollup_reasons", rollup.REASONS_SELECT)


def _figures_by(
    db: sqlite3.Connection, src: _Sources, key: str, where: str, order: str
) -> list[tuple[int, tuple[Any, ...]]]:
    """``_figures`` per value of the SQL expression ``key``, over the
    rollup rows matching ``where``, in ``order`` (an ORDER BY list)."""
    sums = ", ".join(f"sum({c})" for c in rollup.SUM_COLUMNS)
    sql = (
        f"SELECT {key}, {sums} FROM {src.rollup} WHERE {where} "
        f"GROUP BY 1 ORDER BY {order}"
    )
    return [
        (value, _figures(row)) for value, *row in db.execute(sql, src.params)
    ]


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


def _figures(sums: Sequence[float]) -> tuple[Any, ...]:
    """requests, success rate, override rate, mean ms, mean quality,
    tokens, from one row of ``rollup.SUM_COLUMNS``."""
    requests, known, successes, decided, overrides = sums[:5]
    timed, time_ms, scored, quality, tokens = sums[5:]
    return (
        int(requests),
        _ratio(successes, known),
        _ratio(overrides, decided),
        _ratio(time_ms, timed),
        _ratio(quality, scored),
        int(tokens),
    )


def _agents(db: sqlite3.Connection, labels: Labels, src: _Sources) -> Table:
    percentiles = _latency_percentiles(db, src, "agent", src.agent_rows)
    by_requests: dict[int, tuple[Any, ...]] = {}
    for agent, figures in _figures_by(
        db, src, "agent", src.agent_rows, "2 DESC"
    ):
        requests, success, _, mean_ms, quality, tokens = figures
        p50, p95 = percentiles.get(agent, (math.nan, math.nan))
        by_requests[agent] = (
            requests,
            success,
            mean_ms,
            p50,
            p95,
            quality,
            tokens,
        )
    # Each agent's own runs where it has any (issue 15), else the
    # figures of the requests that used it.
    runs = agent_report.run_rows(db, src)
    rows = [
        (labels.text(agent), *figures)
        for agent, figures in agent_report.merged(by_requests, runs)
    ]
    return Table(
        "agents",
        "Per agent",
        (
            "agent",
            "requests",
            "success_rate",
            "mean_ms",
            "p50_ms",
            "p95_ms",
            "quality",
            "tokens",
            *agent_report.RUN_COLUMNS,
        ),
        rows,
    )


def _latency_percentiles(
    db: sqlite3.Connection, src: _Sources, key: str, where: str
) -> dict[int, list[float]]:
    """p50 and p95 latency (ms) per value of the SQL expression ``key``,
    over the latency rows matching ``where``."""
    sql = (
        f"SELECT {key}, bucket, sum(requests) FROM {src.latency} "
        f"WHERE {where} GROUP BY 1, 2"
    )
    return rollup.percentiles_per_key(db.execute(sql, src.params))


def _categories(
    db: sqlite3.Connection, labels: Labels, src: _Sources
) -> Table:
    rows = []
    for category, figures in _figures_by(
        db, src, "category", src.request_rows, "2 DESC"
    ):
        requests, success, overrides, mean_ms, quality, _ = figures
        name = labels.text(category) or "(none)"
        rows.append((name, requests, overrides, success, mean_ms, quality))
    return Table(
        "categories",
        "Per category",
        CATEGORY_COLUMNS,
        rows,
    )


def _trend(db: sqlite3.Connection, src: _Sources, hours: int) -> Table:
    percentiles = _latency_percentiles(
        db, src, f"hour / {hours}", src.request_rows
    )
    rows = []
    for slot, figures in _figures_by(
        db, src, f"hour / {hours}", src.request_rows, "1"
    ):
        requests, success, overrides, mean_ms, quality, _ = figures
        _, p95 = percentiles.get(slot, (math.nan, math.nan))
        start = format_ns(slot * hours * NS_PER_HOUR)[
            : 16 if hours < 24 else 10
        ]
        rows.append(
            (start, requests, success, overrides, mean_ms, p95, quality)
        )
    return Table(
        "trend",
        f"Trend per {'hour' if hours == 1 else 'day'} (UTC)",
        TREND_COLUMNS,
        rows,
    )


def _reasons(
    db: sqlite3.Connection, labels: Labels, src: _Sources, top: int
) -> list[Table]:
    tables = []
    for kind, name, title in (
        (rollup.ERROR, "errors", "Top errors"),
        (rollup.OVERRIDE, "overrides", "Top override reasons"),
    ):
        sql = (
            f"SELECT label, sum(requests) FROM {src.reasons} "
            f"WHERE kind = {kind} AND {src.request_rows} "
            f"GROUP BY label ORDER BY 2 DESC LIMIT {top}"
        )
        rows = [
            (count, labels.text(label))
            for label, count in db.execute(sql, src.params)
        ]
        tables.append(Table(name, title, ("count", "reason"), rows))
    return tables


def _feedback(
    db: sqlite3.Connection, labels: Labels, span: TimeRange
) -> list[Table]:
    tables = []
    for table, title in (
        ("adjustments", "Routing adjustments"),
        ("alerts", "Alerts"),
    ):
        sql = (
            "SELECT timestamp_ns, action, subject, old_value, new_value, "
            f"message FROM {table} WHERE timestamp_ns >= ? "
            "AND timestamp_ns < ? ORDER BY timestamp_ns"
        )
        rows = [
            (
                format_ns(stamp),
                action,
                labels.text(subject),
                old,
                new,
                labels.text(message),
            )
            for stamp, action, subject, old, new, message in db.execute(
                sql, (span.start_ns, span.end_ns)
            )
        ]
        tables.append(
            Table(
                table,
                title,
                ("time", "action", "subject", "old", "new", "message"),
                rows,
            )
        )
    return tables
