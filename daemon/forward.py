"""
Forwarding from the SQLite outbox to shared destinations (ClickHouse,
OTLP, webhooks): the destination protocol, the outbox sources, and one
thread per destination that ships rows above its high-water mark.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from daemon.outbox import (
    SOURCES,
    OutboxReader,
    OutboxReplaced,
    Rows,
    Source,
    lowest_marks,
    read_marks,
    read_rows,
    unshipped,
)
from daemon.retry import Backoff, DestinationError

logger = logging.getLogger("livemon.daemon.forward")

BATCH_ROWS = 20_000
BATCH_BYTES = 8 * 2**20
"""A batch's estimated size (``outbox.row_bytes``) when its destination
names none: rows with 4 KiB texts stop a batch long before 20,000."""
IDLE_S = 0.25  # between looks at the outbox when a destination is caught up
LAG_INTERVAL_S = 1.0
BUSY_SHARE = 0.15  # of the time a forwarder may work while the drain is busy

__all__ = [
    "BATCH_BYTES",
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


class Destination(Protocol):
    """Where a forwarder ships rows; one instance per configured sink."""

    name: str  # the sink_progress key: "clickhouse", "otlp", "webhook"
    sources: tuple[str, ...]  # outbox sources it takes, from SOURCES
    # A destination may also name its ``batch_bytes`` (int): the
    # estimated size a batch stops at (else BATCH_BYTES); and have a
    # ``refused()`` -> dict[str, int]: what the far end would not take and
    # was skipped, shown in status.

    def ship(self, source: str, rows: Rows) -> None:
        """Store ``rows`` durably, or raise ``DestinationError``.

        Called again with the same rows after a failure or a crash, so
        shipping must be idempotent on the rows' identity.
        """

    def close(self) -> None:
        """Release connections; called once, after the last ``ship``."""


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

    A batch holds at most ``batch_rows`` rows and stops at the row that
    brings its estimated size to ``batch_bytes`` (one row at least).  One
    batch is read ahead while another ships, for one source at a time,
    so the forwarder holds about two batches at most.

    The drain comes first: while ``drain_busy()`` says it has a backlog,
    the forwarder works at most ``busy_share`` of the time (it shares the
    interpreter's lock with the drain, and a local server the CPUs),
    then catches up at full speed.
    """

    def __init__(
        self,
        db_path: str,
        destination: Destination,
        *,
        batch_rows: int = BATCH_ROWS,
        batch_bytes: int | None = None,
        backoff: Backoff | None = None,
        idle_s: float = IDLE_S,
        drain_busy: Callable[[], bool] | None = None,
        busy_share: float = BUSY_SHARE,
    ) -> None:
        unknown = sorted(set(destination.sources) - set(SOURCES))
        if not destination.name or unknown or not destination.sources:
            raise ValueError(
                f"destination {destination.name!r}: sources must be some "
                f"of {sorted(SOURCES)}, not {list(destination.sources)}"
            )
        if batch_bytes is None:
            batch_bytes = getattr(destination, "batch_bytes", BATCH_BYTES)
        if (
            not isinstance(batch_bytes, int)
            or isinstance(batch_bytes, bool)
            or batch_bytes < 1
        ):
            raise ValueError(
                f"destination {destination.name!r}: batch_bytes must be "
                f"a whole number of bytes >= 1, not {batch_bytes!r}"
            )
        if batch_rows < 1 or idle_s <= 0 or not 0 < busy_share <= 1:
            raise ValueError(
                "batch_rows must be >= 1, idle_s positive, busy_share in "
                "(0, 1]"
            )
        self.batch_bytes = batch_bytes
        self.drain_busy = drain_busy
        self.busy_share = busy_share
        self.destination = destination
        self.batch_rows = batch_rows
        self.backoff = backoff or Backoff()
        self.idle_s = idle_s
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failures = 0  # in a row; 0 while shipping works
        self.failed_attempts = 0  # since start: /metrics' counter
        self._retry_at: float | None = None
        self._delay_s = 0.0
        self._progress = {s: _Progress() for s in destination.sources}
        self._loaded = False  # marks read from the database
        self._marks_of: tuple[int, int] | None = None  # from this file
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._deadline = float("inf")
        self._lag_due = 0.0
        self._reader = OutboxReader(db_path, destination.name)
        self._next: dict[
            str, tuple[int, concurrent.futures.Future[Rows | None]]
        ] = {}
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

    def marks(self) -> tuple[tuple[int, int] | None, dict[str, int]]:
        """The database file the marks belong to (st_dev, st_ino), and the
        marks per source ({} until read from that file)."""
        with self._lock:
            if not self._loaded:
                return None, {}
            marks = {s: p.mark for s, p in self._progress.items()}
            return self._marks_of, marks

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
            "failed_attempts": self.failed_attempts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "retry_in_s": None
            if retry is None
            else round(max(retry - time.monotonic(), 0.0), 1),
            "sources": sources,
            "refused": getattr(self.destination, "refused", dict)(),
        }

    def _run(self) -> None:
        try:
            while not (
                self._stopping.is_set() and time.monotonic() >= self._deadline
            ):
                spent_s = time.monotonic()
                moved = self._attempt()
                spent_s = time.monotonic() - spent_s
                if self._stopping.is_set() and not moved:
                    break  # caught up, or failing: the rest ships later
                if moved is None:
                    self._retry_at = time.monotonic() + self._delay_s
                    self._sleep(self._delay_s)
                    self._retry_at = None
                elif moved == 0:
                    self._sleep(self.idle_s)
                elif self._yields():
                    share = self.busy_share
                    self._sleep(spent_s * (1 - share) / share)
        finally:
            self._close()

    def _yields(self) -> bool:
        """Whether to hold back for the drain (never in the final flush)."""
        busy = self.drain_busy
        return busy is not None and not self._stopping.is_set() and busy()

    def _sleep(self, seconds: float) -> None:
        # In slices, so the lag shown stays current through a long backoff.
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self._wake.wait(min(left, LAG_INTERVAL_S)):
                break
            if self._loaded:
                with contextlib.suppress(sqlite3.Error):  # reported next
                    self._measure_lag()
        self._wake.clear()

    def _attempt(self) -> int | None:
        """One batch of each source; rows shipped, or None on failure."""
        try:
            self._load_marks()
            self._measure_lag()
            moved = sum(self._ship_one(s) for s in self._progress)
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

    def _ship_one(self, source: str) -> int:
        progress = self._progress[source]
        after, pending = self._next.pop(source, (-1, None))
        if pending is None or after != progress.mark:
            pending = self._read(source, progress.mark)
        rows = pending.result()
        if rows is None:
            return 0
        # The next batch is read while this one ships (a failure drops
        # it), unless another source's read-ahead is held: one at a time
        # keeps the memory held to about two batches.
        if not self._next:
            ahead = self._read(source, rows.last_id)
            self._next[source] = (rows.last_id, ahead)
        # The lag measured may predate these rows, and a ship can last
        # until its timeout: status shows them behind meanwhile.
        with self._lock:
            progress.lag_rows = max(progress.lag_rows, len(rows))
            first_ns = rows.columns.get("timestamp_ns", [None])[0]
            if first_ns is not None:
                age_s = max(time.time() - first_ns / 1e9, 0.0)
                progress.lag_s = max(progress.lag_s, age_s)
        self.destination.ship(source, rows)
        # Only now: a batch the destination did not take is read again.
        with self._lock:
            progress.mark = rows.last_id
            progress.shipped_rows += len(rows)
            progress.lag_rows = max(progress.lag_rows - len(rows), 0)
        return len(rows)

    def _read(
        self, source: str, after_id: int
    ) -> concurrent.futures.Future[Rows | None]:
        return self._reader.submit(
            functools.partial(
                read_rows,
                source=source,
                after_id=after_id,
                limit=self.batch_rows,
                max_bytes=self.batch_bytes,
            )
        )

    def _fail(self, exc: Exception) -> None:
        self.failures += 1
        self.failed_attempts += 1
        self._delay_s = self.backoff.delay_s(self.failures, exc)
        self._next.clear()
        if isinstance(exc, OutboxReplaced):
            with self._lock:
                self._loaded = False  # the new file's marks, next attempt
        text = (
            str(exc)
            if isinstance(exc, DestinationError)
            else f"{type(exc).__name__}: {exc}"
        )
        if text != self.last_error:  # once per new error, not per retry
            if isinstance(exc, DestinationError | sqlite3.Error):
                logger.warning(
                    "sink %s: %s; retrying, nothing is lost", self.name, text
                )
            else:
                logger.exception("sink %s: unexpected failure", self.name)
        self.last_error = text
        self.last_error_at = time.time()

    def _load_marks(self) -> None:
        if self._loaded:
            return
        reader = self._reader
        of, stored = reader.call(
            lambda db: (reader.identity, read_marks(db, self.name)),
            reload=True,
        )
        with self._lock:
            for source, progress in self._progress.items():
                progress.mark = stored.get(source, 0)
            self._marks_of = of
            self._loaded = True

    def _measure_lag(self) -> None:
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL_S
        for source, progress in self._progress.items():
            top, oldest_ns = self._reader.call(
                functools.partial(unshipped, source=source, mark=progress.mark)
            )
            with self._lock:
                progress.lag_rows = max(top - progress.mark, 0)
                progress.lag_s = (
                    0.0
                    if oldest_ns is None
                    else max(time.time() - oldest_ns / 1e9, 0.0)
                )

    def _close(self) -> None:
        self._reader.close()
        try:
            self.destination.close()
        except Exception:  # closing must not break the daemon's stop
            logger.exception("sink %s: close failed", self.name)
