"""
The report's per-agent figures from each agent's own runs (``agent_runs``
and its rollups), merged with the request-based figures of agents that
have no runs in the range (data older than agent runs, or coordinators
that do not log them).
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any, Protocol

from livemon.db import agent_rollup, rollup

RUN_COLUMNS = ("selected", "merged", "discarded", "cancelled", "source")
"""Columns the per-agent table has after the request-based ones."""


class Sources(Protocol):
    """What ``report._Sources`` gives: subqueries over the range."""

    params: dict[str, int]
    agent_rows: str

    def of(self, table: str, select: str) -> str:
        """A subquery over the range: ``table``'s rollup rows for whole
        hours, ``select`` over the raw rows for the partial ones."""
        ...


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


def run_rows(
    db: sqlite3.Connection, src: Sources
) -> dict[int, tuple[Any, ...]]:
    """Per agent with runs in the range: runs, success rate, mean ms, p50
    and p95 ms, quality, tokens (in + out), then the outcome counts.

    Cancelled runs are censored (neither in the rate nor the latency);
    discarded ones count for the rate, not as selected.
    """
    table = src.of(
        agent_rollup.AGENT_ROLLUP_TABLES[0], agent_rollup.AGENT_ROLLUP_SELECT
    )
    sums = ", ".join(f"sum({c})" for c in agent_rollup.AGENT_SUM_COLUMNS)
    sql = (
        f"SELECT agent, {sums} FROM {table} WHERE {src.agent_rows} GROUP BY 1"
    )
    percentiles = _percentiles(db, src)
    found = {}
    for agent, *row in db.execute(sql, src.params):
        runs, known, ok, timed, ms, scored, quality, t_in, t_out = row[:9]
        p50, p95 = percentiles.get(agent, (math.nan, math.nan))
        found[agent] = (
            int(runs),
            _ratio(ok, known),
            _ratio(ms, timed),
            p50,
            p95,
            _ratio(quality, scored),
            int(t_in + t_out),
            *(int(n) for n in row[9:]),
        )
    return found


def _percentiles(
    db: sqlite3.Connection, src: Sources
) -> dict[int, list[float]]:
    table = src.of(
        agent_rollup.AGENT_ROLLUP_TABLES[1], agent_rollup.AGENT_LATENCY_SELECT
    )
    sql = (
        f"SELECT agent, bucket, sum(runs) FROM {table} "
        f"WHERE {src.agent_rows} GROUP BY 1, 2"
    )
    return rollup.percentiles_per_key(db.execute(sql, src.params))


def merged(
    request_rows: dict[int, tuple[Any, ...]],
    runs: dict[int, tuple[Any, ...]],
) -> list[tuple[int, tuple[Any, ...]]]:
    """Each agent's figures: from its runs where it has any in the range,
    else from the requests that used it; most requests (runs) first.

    Args:
        request_rows: per agent, requests, success rate, mean, p50, p95,
            quality, tokens (the request-based figures).
        runs: from ``run_rows``.
    """
    rows = {
        agent: (*figures, None, None, None, None, "requests")
        for agent, figures in request_rows.items()
    }
    rows |= {agent: (*figures, "runs") for agent, figures in runs.items()}
    return sorted(rows.items(), key=lambda item: -item[1][0])
