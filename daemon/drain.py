"""
The drain loop: records from the rings into SQLite, exactly once, with
database trouble turned into retries while the records wait in the ring.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

import ringbuf
from daemon.exceptions import DaemonError
from daemon.store import Store
from livemon.config import Config

logger = logging.getLogger("livemon.daemon")

MAX_BACKOFF_S = 5.0


class Drainer:
    """Moves records from the rings into the store, then advances tails.

    Labels are read after the events' heads are fixed, so every label an
    event refers to is committed with it or before it.  Tails advance
    only after the commit: a crash in between replays the batch, and the
    store ignores what it already holds.
    """

    def __init__(
        self,
        config: Config,
        events: ringbuf.Ring,
        labels: ringbuf.Ring,
        open_store: Callable[[], Store],
        feedback: ringbuf.Ring | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.labels = labels
        self.feedback = feedback
        self._open_store = open_store
        self.store: Store | None = None
        self.drained = 0
        self.batch_latency_ms: float | None = None
        self.last_error: str | None = None
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._first_lane = 0

    def drain_once(self) -> int:
        """Commit what is pending now; return the records moved.

        Raises:
            sqlite3.Error, DaemonError: the store failed; nothing was
                advanced, the records stay in the ring.
        """
        store = self._store()
        if store is None:
            return 0
        events = self._pending_events()
        feedback = self._pending_all(self.feedback)
        # Labels last: every label an event or action refers to was
        # published before it, so it is in this read.
        labels = self._pending_all(self.labels)
        if not events and not labels and not feedback:
            return 0
        started = time.perf_counter()
        feedback_epoch = self.feedback.epoch if self.feedback else 0
        store.write(
            self.events.epoch, labels, events, (feedback_epoch, feedback)
        )
        for batch in labels:
            self.labels.advance(batch.lane, batch.end_seq)
        for batch in events:
            self.events.advance(batch.lane, batch.end_seq)
        for batch in feedback:
            assert self.feedback is not None
            self.feedback.advance(batch.lane, batch.end_seq)
        self.batch_latency_ms = (time.perf_counter() - started) * 1e3
        moved = sum(len(b.records) for b in events)
        self.drained += moved
        return moved

    @staticmethod
    def _pending_all(ring: ringbuf.Ring | None) -> list[ringbuf.Batch]:
        if ring is None:
            return []
        batches = [ring.pending(lane) for lane in range(ring.lanes)]
        return [b for b in batches if len(b.records)]

    def _pending_events(self) -> list[ringbuf.Batch]:
        # Up to batch_records in all; the first lane rotates so that a busy
        # lane cannot starve the others.
        lanes = self.events.lanes
        self._first_lane = (self._first_lane + 1) % lanes
        room = self.config.batch_records
        batches = []
        for i in range(lanes):
            if room == 0:
                break
            batch = self.events.pending((self._first_lane + i) % lanes, room)
            if len(batch.records):
                batches.append(batch)
                room -= len(batch.records)
        return batches

    def step(self) -> int:
        """``drain_once``, turning database trouble into a retry later."""
        try:
            moved = self.drain_once()
        except (sqlite3.Error, DaemonError, OSError) as exc:
            self.report_trouble(exc)
            return 0
        if self.store is not None:
            self.last_error = None
            self._backoff_s = 0.0
        return moved

    def lanes(self) -> list[ringbuf.LaneState]:
        """Every event lane's counters."""
        return [self.events.lane_state(i) for i in range(self.events.lanes)]

    def close(self) -> None:
        """Close the store. Idempotent."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def _store(self) -> Store | None:
        if self.store is None and time.monotonic() >= self._retry_at:
            try:
                self.store = self._open_store()
            except (sqlite3.Error, DaemonError, OSError) as exc:
                self.report_trouble(exc)
        return self.store

    def report_trouble(self, exc: BaseException) -> None:
        """Note database trouble: close the store, retry it with backoff."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._backoff_s = min(max(0.1, 2 * self._backoff_s), MAX_BACKOFF_S)
        self._retry_at = time.monotonic() + self._backoff_s
        logger.warning(
            "database unavailable (%s); records stay in the ring, retrying "
            "in %.1f s",
            self.last_error,
            self._backoff_s,
        )
        self.close()  # reopen afresh: a read-only or broken handle stays so
