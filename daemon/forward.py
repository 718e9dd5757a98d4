"""
Forwarding from the SQLite outbox to shared destinations (ClickHouse,
OTLP, webhooks): the destination protocol, the outbox sources, and one
thread per destination that ships rows above its high-water mark.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from daemon.exceptions import DaemonError
from daemon.outbox import (
    SOURCES,
    Rows,
    Source,
    lowest_marks,
    read_marks,
    read_rows,
)

logger = logging.getLogger("livemon.daemon.forward")

BATCH_ROWS = 20_000
IDLE_S = 0.25  # between looks at the outbox when a destination is caught up
LAG_INTERVAL_S = 1.0
BUSY_TIMEOUT_MS = 1000

__all__ = [
    "BATCH_ROWS",
    "SOURCES",
    "Backoff",
    "Destination",
    "DestinationError",
    "Forwarder",
    "Rows",
    "Source",
    "lowest_marks",
    "read_marks",
    "read_rows",
]


class DestinationError(DaemonError, ConnectionError):
    """A destination refused or failed to take a batch.

    Nothing is lost: the batch stays in the outbox and is shipped again.

    Attributes:
        retry_after: seconds the destination asked us to wait (None: ours).
        permanent: retrying soon cannot help (bad credentials, a missing
            client library); retried at the slow cap and shown in status
            until someone fixes what the message says.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent

    def __reduce__(
        self,
    ) -> tuple[type[DestinationError], tuple[str, float | None, bool]]:
        return (
            DestinationError,
            (str(self), self.retry_after, self.permanent),
        )


class Destination(Protocol):
    """Where a forwarder ships rows; one instance per configured sink."""

    name: str  # the sink_progress key: "clickhouse", "otlp", "webhook"
    sources: tuple[str, ...]  # outbox sources it takes, from SOURCES

    def ship(self, source: str, rows: Rows) -> None:
        """Store ``rows`` durably, or raise ``DestinationError``.

        Called again with the same rows after a failure or a crash, so
        shipping must be idempotent on the rows' identity.
        """

    def close(self) -> None:
        """Release connections; called once, after the last ``ship``."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between retries: exponential with jitter, capped.

    Attributes:
        base_s: the first delay.
        cap_s: the longest delay for a failure that may pass.
        permanent_s: the delay after a permanent failure (the slow cap).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    permanent_s: float = 300.0

    def delay_s(
        self,
        failures: int,
        error: BaseException,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """How long to wait after the ``failures``-th failure in a row.

        Half the exponential delay is fixed and half random ("equal
        jitter"), so many hosts that failed together do not retry
        together; a destination's ``retry_after`` is honoured (up to the
        slow cap).
        """
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if isinstance(error, DestinationError) and error.permanent:
            return self.permanent_s
        exp: float = min(
            self.cap_s, self.base_s * 2.0 ** min(failures - 1, 32)
        )
        delay = exp / 2 + exp / 2 * rand()
        if isinstance(error, DestinationError) and error.retry_after:
            delay = max(delay, min(error.retry_after, self.permanent_s))
        return delay


@dataclasses.dataclass
class _Progress:
    """One source of one destination: its mark and how far behind it is."""

    mark: int = 0
    shipped_rows: int = 0
    lag_rows: int = 0
    lag_s: float = 0.0


class Forwarder:
    """Ships one destination's sources from the outbox in its own thread.

    The thread has its own read-only connection, so the drain never waits
    for a destination.  A batch's mark moves (in memory) only after
    ``ship`` returned; ``Forwarding.save`` stores the marks through the
    daemon's write connection.  Failures are retried with ``backoff``.
    """

    def __init__(
        self,
        db_path: str,
        destination: Destination,
        *,
        batch_rows: int = BATCH_ROWS,
        backoff: Backoff | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        unknown = sorted(set(destination.sources) - set(SOURCES))
        if not destination.name or unknown or not destination.sources:
            raise ValueError(
                f"destination {destination.name!r}: sources must be some "
                f"of {sorted(SOURCES)}, not {list(destination.sources)}"
            )
        if batch_rows < 1 or idle_s <= 0:
            raise ValueError("batch_rows must be >= 1 and idle_s positive")
        self.db_path = os.path.abspath(db_path)
        self.destination = destination
        self.batch_rows = batch_rows
        self.backoff = backoff or Backoff()
        self.idle_s = idle_s
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failures = 0  # in a row; 0 while shipping works
        self._retry_at: float | None = None
        self._delay_s = 0.0
        self._progress = {s: _Progress() for s in destination.sources}
        self._loaded = False  # marks read from the database
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._deadline = float("inf")
        self._lag_due = 0.0
        self._db: sqlite3.Connection | None = None
        self._thread = threading.Thread(
            target=self._run,
            name=f"livemon-forward-{destination.name}",
            daemon=True,  # a destination stuck in a call never holds exit
        )

    @property
    def name(self) -> str:
        """The destination's name (its ``sink_progress`` key)."""
        return self.destination.name

    def start(self) -> None:
        """Start shipping in the background."""
        self._thread.start()

    def request_stop(self, deadline: float) -> None:
        """Ship what is left until ``deadline`` (monotonic), then stop."""
        self._deadline = deadline
        self._stopping.set()
        self._wake.set()  # out of a backoff wait

    def join(self, deadline: float) -> bool:
        """Wait until ``deadline`` for the thread; return whether it ended.

        A thread still inside ``ship`` is left behind (it is a daemon
        thread): what it did not ship is shipped after the next start.
        """
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            logger.warning(
                "sink %s: still shipping at stop; the rest ships after "
                "the next start",
                self.name,
            )
            return False
        return True

    def marks(self) -> dict[str, int]:
        """The marks per source ({} until read from the database)."""
        with self._lock:
            if not self._loaded:
                return {}
            return {s: p.mark for s, p in self._progress.items()}

    def figures(self) -> dict[str, Any]:
        """What status and ``top`` show of this destination."""
        with self._lock:
            sources = {
                s: dataclasses.asdict(p) for s, p in self._progress.items()
            }
        retry = self._retry_at
        return {
            "sink": self.name,
            "lag_rows": sum(p["lag_rows"] for p in sources.values()),
            "lag_s": round(max(p["lag_s"] for p in sources.values()), 1),
            "shipped_rows": sum(p["shipped_rows"] for p in sources.values()),
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "retry_in_s": None
            if retry is None
            else round(max(retry - time.monotonic(), 0.0), 1),
            "sources": sources,
        }

    def _run(self) -> None:
        try:
            while not (
                self._stopping.is_set() and time.monotonic() >= self._deadline
            ):
                moved = self._attempt()
                if self._stopping.is_set() and not moved:
                    break  # caught up, or failing: the rest ships later
                if moved is None:
                    self._retry_at = time.monotonic() + self._delay_s
                    self._sleep(self._delay_s)
                    self._retry_at = None
                elif moved == 0:
                    self._sleep(self.idle_s)
        finally:
            self._close()

    def _sleep(self, seconds: float) -> None:
        # In slices, so the lag shown stays current through a long backoff.
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self._wake.wait(min(left, LAG_INTERVAL_S)):
                break
            if self._db is not None:
                try:
                    self._measure_lag(self._db)
                except sqlite3.Error:
                    self._close_db()
        self._wake.clear()

    def _attempt(self) -> int | None:
        """One batch of each source; rows shipped, or None on failure."""
        try:
            db = self._connect()
            self._measure_lag(db)
            moved = sum(self._ship_one(db, s) for s in self._progress)
        except Exception as exc:  # the forwarder loop's boundary
            self._fail(exc)
            return None
        if self.failures:
            logger.info(
                "sink %s: shipping again after %d failed attempts",
                self.name,
                self.failures,
            )
            self.failures = 0
        return moved

    def _ship_one(self, db: sqlite3.Connection, source: str) -> int:
        progress = self._progress[source]
        rows = read_rows(db, source, progress.mark, self.batch_rows)
        if rows is None:
            return 0
        self.destination.ship(source, rows)
        # Only now: a batch the destination did not take is read again.
        with self._lock:
            progress.mark = rows.last_id
            progress.shipped_rows += len(rows)
            progress.lag_rows = max(progress.lag_rows - len(rows), 0)
        return len(rows)

    def _fail(self, exc: Exception) -> None:
        self.failures += 1
        self._delay_s = self.backoff.delay_s(self.failures, exc)
        if isinstance(exc, sqlite3.Error):
            self._close_db()  # a fresh connection next time
        text = (
            str(exc)
            if isinstance(exc, DestinationError)
            else f"{type(exc).__name__}: {exc}"
        )
        if not isinstance(exc, DestinationError | sqlite3.Error):
            logger.exception("sink %s: unexpected failure", self.name)
        elif text != self.last_error:
            logger.warning(
                "sink %s: %s; retrying, nothing is lost", self.name, text
            )
        self.last_error = text
        self.last_error_at = time.time()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            uri = f"file:{urllib.parse.quote(self.db_path)}?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db = db
        if not self._loaded:
            stored = read_marks(self._db, self.name)
            with self._lock:
                for source, progress in self._progress.items():
                    progress.mark = stored.get(source, 0)
                self._loaded = True
        return self._db

    def _measure_lag(self, db: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL_S
        for source, progress in self._progress.items():
            table = SOURCES[source].table
            try:
                top, oldest_ns = db.execute(
                    f"SELECT (SELECT max(id) FROM {table}), (SELECT "
                    f"timestamp_ns FROM {table} WHERE id > ? ORDER BY id "
                    "LIMIT 1)",
                    (progress.mark,),
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                top, oldest_ns = None, None
            with self._lock:
                progress.lag_rows = max((top or 0) - progress.mark, 0)
                progress.lag_s = (
                    0.0
                    if oldest_ns is None
                    else max(time.time() - oldest_ns / 1e9, 0.0)
                )

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _close(self) -> None:
        self._close_db()
        try:
            self.destination.close()
        except Exception:  # closing must not break the daemon's stop
            logger.exception("sink %s: close failed", self.name)
