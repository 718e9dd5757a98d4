"""
``livemon report --clickhouse URL``: the report's tables over every
host's events in ClickHouse (as the daemon's sink ships them), plus a
per-host breakdown.  Each event counts once (``FINAL``).
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import urllib.parse
from typing import Any

from livemon.db.reading import TimeRange, format_ns
from livemon.endpoints import hide_password
from livemon.exceptions import DatabaseUnavailable, UnknownName
from livemon.views.report import (
    CATEGORY_COLUMNS,
    HOURS_PER,
    NS_PER_HOUR,
    TREND_COLUMNS,
    Report,
    Table,
)

DEFAULT_DATABASE = "livemon"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REQUESTS = "event_type IN ('request', 'routing')"
# The figures every table shows, over the rows its query selects.
_FIGURES = f"""
    countIf({REQUESTS}) AS requests,
    countIf(success = 1) / countIf(isNotNull(success)) AS success_rate,
    countIf(accepted = 0) / countIf(isNotNull(accepted)) AS override_rate,
    avg(execution_time_ms) AS mean_ms,
    quantile(0.95)(execution_time_ms) AS p95_ms,
    avg(quality_score) AS quality,
    sum(ifNull(greatest(token_count, 0), 0)) AS tokens"""


def connect(url: str) -> tuple[Any, str]:
    """A ``clickhouse-driver`` client for ``url``, and its database.

    Raises:
        DatabaseUnavailable: the driver is not installed, or the URL is
            not ``clickhouse[s]://[user:password@]host[:port]/database``.
    """
    # Its connection logger prints a traceback for a refused connect;
    # the error below says it in one line.
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    try:
        driver = importlib.import_module("clickhouse_driver")
    except ImportError:
        raise DatabaseUnavailable(
            "reading ClickHouse needs clickhouse-driver: pip install "
            "'livemon[clickhouse]'"
        ) from None
    args = parse_url(url)
    database = args.pop("database")
    client = driver.Client(**args, connect_timeout=5, send_receive_timeout=60)
    return client, database


def parse_url(url: str) -> dict[str, Any]:
    """``clickhouse_driver.Client`` arguments and the database name, from
    ``clickhouse[s]://[user:password@]host[:port]/database``.

    Raises:
        DatabaseUnavailable: (a ValueError too) not such a URL, or the
            database is not a plain identifier; shows the accepted form.
    """
    parts = urllib.parse.urlsplit(url)
    database = parts.path.strip("/") or DEFAULT_DATABASE
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("clickhouse", "clickhouses")
        or not parts.hostname
        or port == -1
        or not _IDENTIFIER.fullmatch(database)
    ):
        raise BadClickHouseUrl(
            f"{hide_password(url)!r} is not a ClickHouse URL: write "
            "clickhouse://[USER:PASSWORD@]HOST[:9000]/DATABASE "
            "(clickhouses:// for TLS; a database name of letters, digits, _)"
        )
    secure = parts.scheme == "clickhouses"
    return {
        "host": parts.hostname,
        "port": port or (9440 if secure else 9000),
        "user": urllib.parse.unquote(parts.username or "default"),
        "password": urllib.parse.unquote(parts.password or ""),
        "secure": secure,
        "database": database,
    }


class BadClickHouseUrl(DatabaseUnavailable, ValueError):
    """A URL that does not name a ClickHouse database; says the form."""


def server_message(exc: BaseException) -> str:
    """A driver or server error in one line, without the server's stack."""
    text = str(exc).split("Stack trace:")[0]
    return " ".join(text.split())[:300]


def build_clickhouse_report(
    client: Any,
    database: str,
    span: TimeRange,
    per: str = "hour",
    agent: str | None = None,
    top: int = 10,
) -> Report:
    """Query the report's tables from ``database``, hosts first.

    Args:
        client: a ``clickhouse_driver.Client`` (see ``connect``).
        per: trend bucket, ``hour`` or ``day`` (UTC).
        agent: only requests that used this agent.
        top: how many errors and override reasons to list.

    Raises:
        ValueError: ``per``, ``top`` or ``database`` is not acceptable.
        UnknownName: no event in the range used ``agent``.
        DatabaseUnavailable: ClickHouse cannot be reached or lacks the
            sink's tables; the message says what to do.
    """
    if per not in HOURS_PER or top < 1 or not _IDENTIFIER.fullmatch(database):
        raise ValueError(
            f"per must be one of {sorted(HOURS_PER)}, top at least 1, "
            "database an identifier"
        )
    query = _Query(client, database, span, agent)
    if (
        agent is not None
        and not query.rows("SELECT count() FROM {events} WHERE {where}")[0][0]
    ):
        raise UnknownName(f"no request in this range used agent {agent!r}")
    return Report(
        span,
        per,
        [
            _hosts(query),
            _agents(query),
            _agent_hosts(query),
            _categories(query),
            _trend(query, HOURS_PER[per]),
            *_reasons(query, top),
            _agent_runs(query),
        ],
    )


class _Query:
    """Runs queries over the range (and agent) on one database."""

    def __init__(
        self, client: Any, database: str, span: TimeRange, agent: str | None
    ) -> None:
        self.client = client
        self.params = {
            "start": span.start_ns,
            "end": span.end_ns,
            "agent": agent or "",
        }
        span_sql = "timestamp_ns >= %(start)s AND timestamp_ns < %(end)s"
        self.names = {
            "events": f"`{database}`.events FINAL",
            "where": span_sql
            + (" AND has(actual_agents, %(agent)s)" if agent else ""),
            "agent_runs": f"`{database}`.agent_runs FINAL",
            "run_where": span_sql
            + (" AND agent = %(agent)s" if agent else ""),
        }

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        errors = importlib.import_module("clickhouse_driver.errors")
        try:
            found: list[tuple[Any, ...]] = self.client.execute(
                sql.format(**self.names), self.params
            )
        except errors.ServerException as exc:
            raise DatabaseUnavailable(
                f"ClickHouse refused the report's query: "
                f"{server_message(exc)}; has a daemon with "
                "clickhouse_url shipped to this database yet?"
            ) from exc
        except (errors.Error, OSError, EOFError) as exc:
            raise DatabaseUnavailable(
                f"cannot reach ClickHouse: {exc}; is it running, and is "
                "the URL's port its native (TCP) port, 9000 by default?"
            ) from exc
        return [tuple(_number(v) for v in row) for row in found]


def _number(value: Any) -> Any:
    """None (an aggregate over nothing) as NaN, as the SQLite report."""
    return math.nan if value is None else value


def _hosts(q: _Query) -> Table:
    rows = q.rows(
        f"SELECT host, {_FIGURES}, max(timestamp_ns) FROM {{events}} "
        "WHERE {where} GROUP BY host ORDER BY requests DESC, host"
    )
    return Table(
        "hosts",
        "Per host",
        (
            "host",
            "requests",
            "success_rate",
            "override_rate",
            "mean_ms",
            "p95_ms",
            "quality",
            "tokens",
            "last_event",
        ),
        [(*r[:8], format_ns(int(r[8]))) for r in rows],
    )


def _agents(q: _Query) -> Table:
    rows = q.rows(
        f"SELECT agent, {_FIGURES}, quantile(0.5)(execution_time_ms), "
        "uniqExact(host) FROM {events} ARRAY JOIN actual_agents AS agent "
        "WHERE {where} GROUP BY agent ORDER BY requests DESC, agent"
    )
    return Table(
        "agents",
        "Per agent (all hosts)",
        (
            "agent",
            "requests",
            "success_rate",
            "mean_ms",
            "p50_ms",
            "p95_ms",
            "quality",
            "tokens",
            "hosts",
        ),
        [(r[0], r[1], r[2], r[4], r[8], r[5], r[6], r[7], r[9]) for r in rows],
    )


def _agent_hosts(q: _Query) -> Table:
    rows = q.rows(
        f"SELECT agent, host, {_FIGURES} FROM {{events}} "
        "ARRAY JOIN actual_agents AS agent WHERE {where} "
        "GROUP BY agent, host ORDER BY agent, requests DESC, host"
    )
    return Table(
        "agent_hosts",
        "Per agent and host",
        ("agent", "host", "requests", "success_rate", "mean_ms", "quality"),
        [(r[0], r[1], r[2], r[3], r[5], r[7]) for r in rows],
    )


def _categories(q: _Query) -> Table:
    rows = q.rows(
        f"SELECT ifNull(intent_category, '(none)') AS category, {_FIGURES} "
        "FROM {events} WHERE {where} GROUP BY category "
        "ORDER BY requests DESC, category"
    )
    return Table(
        "categories",
        "Per category",
        CATEGORY_COLUMNS,
        [(r[0], r[1], r[3], r[2], r[4], r[6]) for r in rows],
    )


def _trend(q: _Query, hours: int) -> Table:
    slot_ns = hours * NS_PER_HOUR
    rows = q.rows(
        f"SELECT intDiv(timestamp_ns, {slot_ns}) AS slot, {_FIGURES} "
        "FROM {events} WHERE {where} GROUP BY slot ORDER BY slot"
    )
    width = 16 if hours < 24 else 10
    return Table(
        "trend",
        f"Trend per {'hour' if hours == 1 else 'day'} (UTC, all hosts)",
        TREND_COLUMNS,
        [(format_ns(int(r[0]) * slot_ns)[:width], *r[1:7]) for r in rows],
    )


def _reasons(q: _Query, top: int) -> list[Table]:
    tables = []
    for column, name, title in (
        ("error", "errors", "Top errors"),
        ("override_reason", "overrides", "Top override reasons"),
    ):
        rows = q.rows(
            f"SELECT count() AS n, {column} FROM {{events}} WHERE {{where}} "
            f"AND isNotNull({column}) GROUP BY {column} "
            f"ORDER BY n DESC, {column} LIMIT {int(top)}"
        )
        tables.append(Table(name, title, ("count", "reason"), rows))
    return tables


# A cancelled run (a sibling won) is censored, as in the local report
# (``db.agent_rollup``): counted as cancelled, not as a failure or latency.
_RUN = "ifNull(outcome, '') != 'cancelled'"


def _agent_runs(q: _Query) -> Table:
    rows = q.rows(
        "SELECT ifNull(agent, '(none)') AS name, count() AS runs, "
        "uniqExact(host), countIf(outcome = 'selected'), "
        "countIf(outcome = 'merged'), countIf(outcome = 'discarded'), "
        "countIf(outcome = 'cancelled'), "
        f"countIf(success = 1 AND {_RUN}) "
        f"/ countIf(isNotNull(success) AND {_RUN}), "
        f"avgIf(execution_time_ms, {_RUN}), "
        f"quantileIf(0.95)(execution_time_ms, {_RUN}), "
        "sum(ifNull(input_tokens, 0) + ifNull(output_tokens, 0)) "
        "FROM {agent_runs} WHERE {run_where} GROUP BY name "
        "ORDER BY runs DESC, name"
    )
    return Table(
        "agent_runs",
        "Agent runs (all hosts)",
        (
            "agent",
            "runs",
            "hosts",
            "selected",
            "merged",
            "discarded",
            "cancelled",
            "success_rate",
            "mean_ms",
            "p95_ms",
            "tokens",
        ),
        rows,
    )
