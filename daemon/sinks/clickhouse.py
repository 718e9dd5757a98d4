"""
The ClickHouse destination: events and agent runs of every host in one
database, through ``clickhouse-driver`` (the native protocol, columnar
inserts), into ReplacingMergeTree tables the sink creates.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import Any

from daemon.forward import BATCH_BYTES, DestinationError, Rows
from daemon.sinks.clickhouse_ddl import LIST_COLUMNS, TABLES, is_modern
from livemon.views.clickhouse import parse_url, server_message

CONNECT_TIMEOUT_S = 5.0
SEND_RECEIVE_TIMEOUT_S = 30.0
INSTALL_HINT = (
    "the ClickHouse sink needs clickhouse-driver: pip install "
    "'livemon[clickhouse]' (events wait in the outbox meanwhile)"
)
# Server errors that retrying cannot mend: credentials, rights, a table
# whose columns are not the sink's.  Shown in status, retried slowly.
_PERMANENT_CODES = frozenset({8, 16, 47, 53, 164, 192, 193, 194, 497, 516})
# Server errors that ask us to slow down: seconds to wait.
_SLOW_DOWN_S = {202: 5.0, 241: 5.0, 252: 10.0}
_LIST_CACHE_MAX = 100_000
_BUCKET_NS = 28 * 86_400 * 10**9  # no longer than the shortest month
_MAX_BUCKETS = 45  # of them per insert: at most 90 months (100 allowed)


class ClickHouseDestination:
    """Ships the ``events`` and ``agent_runs`` sources to ClickHouse.

    Connects on the first ``ship`` (so a daemon starts while ClickHouse
    is down), creates the database and tables once per connection, with
    the DDL the server's version takes, and inserts each batch as one
    columnar block; a batch stops at ``batch_bytes`` of estimated size
    (``outbox.row_bytes``), so long texts cannot make one insert (and
    the block the driver builds) hundreds of MB.  A failed insert is
    repeated whole; the table's ReplacingMergeTree key makes the repeat
    harmless.
    """

    name: str = "clickhouse"
    sources: tuple[str, ...] = ("events", "agent_runs")

    def __init__(
        self,
        url: str,
        host: str,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        send_receive_timeout_s: float = SEND_RECEIVE_TIMEOUT_S,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        if not host:
            raise ValueError("host must not be empty")
        if connect_timeout_s <= 0 or send_receive_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if batch_bytes < 1:
            raise ValueError("batch_bytes must be at least 1")
        self.batch_bytes = batch_bytes
        self._args = parse_url(url)
        self.database = self._args.pop("database")
        self.host = host
        self._timeouts = (connect_timeout_s, send_receive_timeout_s)
        self._client: Any = None
        self.modern: bool | None = None  # known once connected
        self._lists: dict[str | None, list[str]] = {}

    def ship(self, source: str, rows: Rows) -> None:
        """Insert ``rows`` into the source's table.

        Raises:
            DestinationError: ClickHouse is unreachable, slow or refused
                the batch (``permanent`` for what a retry cannot fix).
            KeyError: ``source`` is not one this destination takes.
        """
        table = TABLES[source]
        missing = [
            c for c in table.columns if c != "host" and c not in rows.columns
        ]
        if missing:
            raise DestinationError(
                f"the outbox's {source} rows lack {missing}: this livemon's "
                "ClickHouse sink and database schema disagree",
                permanent=True,
            )
        data = [self._column(name, rows) for name in table.columns]
        errors = driver().errors
        try:
            client = self._connect()
            for block in _blocks(rows.columns["timestamp_ns"], data):
                client.execute(
                    table.insert(self.database), block, columnar=True
                )
        except (errors.Error, OSError, EOFError) as exc:
            self.close()  # a fresh connection (and table check) next time
            raise _as_destination_error(exc) from exc

    def close(self) -> None:
        """Drop the connection (the next ``ship`` opens another)."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        connect_s, io_s = self._timeouts
        client = driver().Client(
            **self._args,
            connect_timeout=connect_s,
            send_receive_timeout=io_s,
            sync_request_timeout=io_s,
        )
        client.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        version = client.connection.server_info.version_tuple()
        self.modern = is_modern(version)
        for table in TABLES.values():
            client.execute(table.ddl(self.database, self.modern))
        self._client = client
        return client

    def _column(self, name: str, rows: Rows) -> list[Any]:
        if name == "host":
            return [self.host] * len(rows)
        values = rows.columns[name]
        if name not in LIST_COLUMNS:
            return list(values)  # a driver may write None -> 0 into it
        # Few distinct lists (each is a label): parse each once, then
        # map the column in C.
        cache = self._lists
        new = set(values).difference(cache)
        if len(cache) + len(new) > _LIST_CACHE_MAX:
            cache.clear()
            new = set(values)
        for text in new:
            cache[text] = _parse_list(text)
        return list(map(cache.__getitem__, values))


def _blocks(times_ns: list[int], data: list[list[Any]]) -> list[list[Any]]:
    """``data`` (columns) as inserts of at most ~90 months each.

    A server refuses an insert touching more than 100 monthly partitions
    (``max_partitions_per_insert_block``), the same batch on every retry:
    a batch whose times span more (a migrated history, damaged times)
    goes in groups of at most ``_MAX_BUCKETS`` 28-day buckets, each of
    which overlaps at most two calendar months.
    """
    if max(times_ns) - min(times_ns) < (_MAX_BUCKETS - 1) * _BUCKET_NS:
        return [data]  # the usual batch: one insert
    rows_of: dict[int, list[int]] = {}
    for n, time_ns in enumerate(times_ns):
        rows_of.setdefault(time_ns // _BUCKET_NS, []).append(n)
    buckets = sorted(rows_of)
    groups = [
        [
            n
            for bucket in buckets[i : i + _MAX_BUCKETS]
            for n in rows_of[bucket]
        ]
        for i in range(0, len(buckets), _MAX_BUCKETS)
    ]
    return [
        [[column[n] for n in group] for column in data] for group in groups
    ]


def _parse_list(text: str | None) -> list[str]:
    """A list column's JSON text as the array ClickHouse stores."""
    try:
        parsed = json.loads(text) if text else []
    except (ValueError, RecursionError):  # nested past the stack: a text
        parsed = [text]
    if not isinstance(parsed, list):
        parsed = [parsed]
    return [str(item) for item in parsed]


def driver() -> Any:
    """The ``clickhouse_driver`` module, imported on first use: the
    daemon runs without it until a ClickHouse sink is configured.

    Raises:
        DestinationError: (permanent) it is not installed; says how.
    """
    # Its connection logger writes a traceback for every refused connect;
    # the forwarder logs each new error once, without one.
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    try:
        module = importlib.import_module("clickhouse_driver")
        importlib.import_module("clickhouse_driver.errors")
    except ImportError as exc:
        raise DestinationError(INSTALL_HINT, permanent=True) from exc
    return module


def _as_destination_error(exc: BaseException) -> DestinationError:
    code = getattr(exc, "code", None)
    text = server_message(exc)
    if code in _PERMANENT_CODES:
        return DestinationError(
            f"ClickHouse refused the batch (code {code}): {text}; fix the "
            "credentials, rights or table, then it ships by itself",
            permanent=True,
        )
    return DestinationError(
        f"ClickHouse: {type(exc).__name__}: {text}",
        retry_after=_SLOW_DOWN_S.get(code) if code is not None else None,
    )
