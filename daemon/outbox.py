"""
The outbox side of forwarding: the sources a destination may take, read
from SQLite with texts resolved, and the destinations' stored marks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
BUSY_TIMEOUT_MS = 1000
VALUE_BYTES = 8
"""What a number (or an unknown) adds to a row's estimated size."""
_FETCH_ROWS = 512  # rows fetched at a time while a budget is counted


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


def row_dicts(
    columns: Mapping[str, Sequence[Any]],
) -> Iterator[dict[str, Any]]:
    """Each row of a column batch (``Rows.columns``) as a dict."""
    count = len(next(iter(columns.values()), ()))
    for i in range(count):
        yield {name: values[i] for name, values in columns.items()}


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


def row_bytes(row: Sequence[Any]) -> int:
    """Estimate one outbox row's size: its texts' lengths, plus
    ``VALUE_BYTES`` for every other value.

    Cheap on purpose (nothing is encoded): it bounds what a batch holds,
    not the exact size of any request.  A text counts its characters,
    which is its UTF-8 size for ASCII and up to 4 times less otherwise.
    """
    texts = [v for v in row if v.__class__ is str]
    return sum(map(len, texts)) + VALUE_BYTES * (len(row) - len(texts))


def _fetch(cursor: sqlite3.Cursor, max_bytes: int | None) -> list[Any]:
    """The cursor's rows, stopping after the one whose estimated size
    (``row_bytes``) brings the total to ``max_bytes``: always one row
    at least, so a single row larger than the budget still moves."""
    if max_bytes is None:
        return cursor.fetchall()
    rows: list[Any] = []
    total = 0
    while chunk := cursor.fetchmany(_FETCH_ROWS):
        for row in chunk:
            rows.append(row)
            total += row_bytes(row)
            if total >= max_bytes:
                cursor.close()  # the rest is read by the next batch
                return rows
    return rows


def read_rows(
    db: sqlite3.Connection,
    source: str,
    after_id: int,
    limit: int,
    max_bytes: int | None = None,
) -> Rows | None:
    """Read up to ``limit`` rows of ``source`` with ``id > after_id``,
    and (if ``max_bytes`` is given) no more rows than reach ``max_bytes``
    of estimated size (``row_bytes``), one row at least.

    Returns None when there are none, or the source's table does not
    exist yet (a database from before its migration).

    Raises:
        KeyError: ``source`` is not one of ``SOURCES``.
        ValueError: ``limit`` or ``max_bytes`` is below 1.
        sqlite3.Error: the database cannot be read (retry later).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError("max_bytes must be at least 1 (None: no bound)")
    spec = SOURCES[source]
    try:
        cursor = db.execute(spec.query, (after_id, limit))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    names = [d[0] for d in cursor.description]
    rows = _fetch(cursor, max_bytes)
    if not rows:
        return None
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


def unshipped(
    db: sqlite3.Connection, source: str, mark: int
) -> tuple[int, int | None]:
    """The highest id of ``source``, and the timestamp of its first row
    above ``mark`` (None: none); (0, None) before its table exists."""
    table = SOURCES[source].table
    try:
        top, oldest_ns = db.execute(
            f"SELECT (SELECT max(id) FROM {table}), (SELECT timestamp_ns "
            f"FROM {table} WHERE id > ? ORDER BY id LIMIT 1)",
            (mark,),
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return 0, None
    return top or 0, oldest_ns


class OutboxReplaced(sqlite3.DatabaseError):
    """Another file now sits at the outbox's path (the daemon moved a
    damaged one aside): the marks must be read again, from that file."""


class OutboxReader:
    """Reads the outbox in a thread of its own, through its own read-only
    connection: a forwarder reads the next batch while it ships the last.

    Every use of the connection runs in that thread, one at a time.  When
    the path names another file, every call raises ``OutboxReplaced``
    until one made with ``reload=True`` (which reads the new marks).
    """

    def __init__(self, db_path: str, name: str) -> None:
        self.path = os.path.abspath(db_path)
        self.uri = f"file:{urllib.parse.quote(self.path)}?mode=ro"
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino)
        self._replaced = False
        self._db: sqlite3.Connection | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"livemon-outbox-{name}"
        )

    def submit(
        self, work: Callable[[sqlite3.Connection], T], reload: bool = False
    ) -> concurrent.futures.Future[T]:
        """Run ``work(connection)`` in the reader's thread."""
        return self._pool.submit(self._run, work, reload)

    def call(
        self, work: Callable[[sqlite3.Connection], T], reload: bool = False
    ) -> T:
        """Run ``work(connection)`` in the reader's thread; its result.

        Raises:
            OutboxReplaced: another file is at the path; call again with
                ``reload=True`` to read its marks.
            sqlite3.Error: the database cannot be read (the connection is
                opened again on the next call).
        """
        return self.submit(work, reload).result()

    def close(self) -> None:
        """Close the connection once pending reads are done."""
        self._pool.submit(self._close_db)
        self._pool.shutdown(wait=False)

    def _run(self, work: Callable[[sqlite3.Connection], T], reload: bool) -> T:
        try:
            now = os.stat(self.path)
        except OSError:
            self._close_db()
            raise sqlite3.OperationalError(
                f"cannot find {self.path}"
            ) from None
        if self._db is not None and (now.st_dev, now.st_ino) != self.identity:
            self._close_db()
        if self._db is None:
            db = sqlite3.connect(self.uri, uri=True, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db = db
            if self.identity not in (None, (now.st_dev, now.st_ino)):
                self._replaced = True
            self.identity = (now.st_dev, now.st_ino)
        if self._replaced and not reload:
            raise OutboxReplaced(f"{self.path} is another file now")
        self._replaced = False
        try:
            return work(self._db)
        except sqlite3.Error:
            self._close_db()
            raise

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
