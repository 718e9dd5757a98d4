"""
The drain loop: records from the rings into SQLite, exactly once.  What
goes wrong on the way (database trouble, a moved or damaged file, a bad
lane or record) becomes a retry, a reopen or a quarantine, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable

import ringbuf
from daemon.agent_runs import pending_runs, write_runs
from daemon.exceptions import DatabaseFull, DatabaseGone, DatabaseMoved
from daemon.isolation import Isolation, is_trouble, lane_batch
from daemon.quarantine import Quarantine, sane_events, sane_labels
from daemon.store import Store, is_damage
from livemon.config import Config

logger = logging.getLogger("livemon.daemon")

MAX_BACKOFF_S = 5.0
# A fresh database that is "damaged" again at once is more likely a bug
# here than bad luck: past this many set-asides an hour, only retry.
MAX_SET_ASIDE_PER_HOUR = 3


class Drainer:
    """Moves records from the rings into the store, then advances tails.

    Labels are read after the events' heads are fixed, so every label an
    event refers to is committed with it or before it.  Tails advance
    only after the commit, and only when the store still writes the file
    at the configured path: a crash, a deleted or replaced file replay
    the batch, and the store ignores what it already holds.
    """

    def __init__(
        self,
        config: Config,
        events: ringbuf.Ring,
        labels: ringbuf.Ring,
        open_store: Callable[[], Store],
        feedback: ringbuf.Ring | None = None,
        quarantine: Quarantine | None = None,
        agents: ringbuf.Ring | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.labels = labels
        self.feedback = feedback
        self.agents = agents  # the agents ring, once opened (issue 15)
        self.agent_runs_drained = 0
        self.quarantine = quarantine or Quarantine(
            config.db + ".quarantine.jsonl", config.mode
        )
        self._isolation = Isolation(self.quarantine)
        self._open_store = open_store
        self.store: Store | None = None
        self.drained = 0
        self.failures = 0  # unexpected errors caught at the boundary
        self.batch_latency_ms: float | None = None
        self.last_error: str | None = None
        # The last thing that happened to the database file (deleted,
        # replaced, set aside): kept for status and health until restart.
        self.incident: str | None = None
        self.incident_at: float | None = None
        self._opened = False  # a store was open once: the file was sound
        self._reopening = False  # after an incident: say when it is over
        self._set_asides: list[float] = []
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._first_lane = 0

    def drain_once(self) -> int:
        """Commit what is pending now; return the records moved.

        Raises:
            sqlite3.Error, DaemonError, OSError: the store failed (or was
                moved); what it did not commit was not advanced and stays
                in the ring (events, labels and actions commit together,
                agent runs after them).
        """
        store = self._store()
        if store is None:
            return 0
        events = self._pending_events()
        agents = pending_runs(
            self.agents, self.quarantine, self.config.batch_records
        )
        feedback = self._pending_all(self.feedback)
        # Labels last: every label an event, agent run or action refers
        # to was published before it, so it is in this read.
        labels = self._pending_all(self.labels)
        if not events and not labels and not feedback and not agents:
            return 0
        started = time.perf_counter()
        self._write(
            store,
            self.quarantine.screen(self.labels.name, labels, sane_labels),
            self.quarantine.screen(self.events.name, events, sane_events),
            feedback,
        )
        # What that transaction committed is acknowledged before the agent
        # runs' own transaction: were it to fail (the database damaged or
        # replaced meanwhile), committed events must not be drained again
        # into whatever database comes next.
        _advance(self.labels, labels)
        _advance(self.events, events)
        _advance(self.feedback, feedback)
        self._write_agents(store, agents)  # after the labels they name
        self._advance_agents(agents)  # right after their own commit
        self.batch_latency_ms = (time.perf_counter() - started) * 1e3
        moved = sum(len(b.records) for b in events)
        self.drained += moved
        return moved + sum(len(b.records) for b in agents)

    def _pending_all(self, ring: ringbuf.Ring | None) -> list[ringbuf.Batch]:
        if ring is None:
            return []
        batches = [
            lane_batch(self.quarantine, ring, lane)
            for lane in range(ring.lanes)
        ]
        return [b for b in batches if b is not None]

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
            lane = (self._first_lane + i) % lanes
            batch = lane_batch(self.quarantine, self.events, lane, room)
            if batch is not None:
                batches.append(batch)
                room -= len(batch.records)
        return batches

    def _write(
        self,
        store: Store,
        labels: list[ringbuf.Batch],
        events: list[ringbuf.Batch],
        feedback: list[ringbuf.Batch],
    ) -> None:
        """Store events, labels and actions in one transaction; records
        that cannot be stored are set aside (``daemon.isolation``)."""
        try:
            self._write_parts(store, labels, events, feedback)
            return
        except Exception as exc:
            if is_trouble(exc):
                raise
            logger.warning(
                "a batch could not be stored (%s: %s); storing it in parts "
                "to set the records at fault aside",
                type(exc).__name__,
                exc,
            )
        # Labels first: they must be stored with or before what uses them.
        named = [(self.labels.name, batch) for batch in labels]
        named += [(self.events.name, batch) for batch in events]
        if self.feedback is not None:
            named += [(self.feedback.name, batch) for batch in feedback]
        self._isolation.store_apart(
            named, lambda ring, part: self._write_alone(store, ring, part)
        )

    def _write_parts(
        self,
        store: Store,
        labels: list[ringbuf.Batch],
        events: list[ringbuf.Batch],
        feedback: list[ringbuf.Batch],
    ) -> None:
        feedback_epoch = self.feedback.epoch if self.feedback else 0
        store.write(
            self.events.epoch, labels, events, (feedback_epoch, feedback)
        )

    def _write_alone(
        self, store: Store, ring: str, batch: ringbuf.Batch
    ) -> None:
        """Store one batch of ring ``ring`` in a transaction of its own."""
        parts: tuple[list[ringbuf.Batch], ...] = {
            self.labels.name: ([batch], [], []),
            self.events.name: ([], [batch], []),
        }.get(ring, ([], [], [batch]))
        self._write_parts(store, *parts)

    # -- agent runs (issue 15): their own transaction, after the labels

    def _write_agents(
        self, store: Store, batches: list[ringbuf.Batch]
    ) -> None:
        if self.agents is not None and batches:
            write_runs(store, self.agents, batches, self._isolation)

    def _advance_agents(self, batches: list[ringbuf.Batch]) -> None:
        for batch in batches:
            assert self.agents is not None
            self.agents.advance(batch.lane, batch.end_seq)
            self.agent_runs_drained += len(batch.records)

    def step(self) -> int:
        """``drain_once``, every failure turned into a retry (never raises).

        This is the drain loop's boundary: whatever goes wrong is logged,
        counted and retried with backoff while the records wait in the
        ring.
        """
        if time.monotonic() < self._retry_at:
            return 0
        try:
            moved = self.drain_once()
        except Exception as exc:  # the boundary (STYLE 7): never crash
            self.handle_failure(exc)
            return 0
        if self.store is not None:
            self.last_error = None
            self._backoff_s = 0.0
        return moved

    def handle_failure(self, exc: Exception) -> None:
        """Turn a failure into a reopen, a set-aside, or a retry later.

        Call it from the ``except`` block that caught ``exc`` (its
        traceback is logged for unexpected failures).
        """
        if isinstance(exc, DatabaseMoved):
            self._reopen_moved(exc)
        elif is_damage(exc) and self._opened:
            self._set_aside(exc)
        elif is_trouble(exc) or isinstance(exc, sqlite3.Error):
            self.report_trouble(exc)
        else:
            self.failures += 1
            logger.exception(  # called in the boundary's except blocks
                "drain step failed (%d unexpected failures so far); the "
                "records stay in the ring, retrying",
                self.failures,
            )
            self._back_off(exc)

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
            self.store = self._open_store()
            if self._reopening:
                self._reopening = False
                logger.warning(
                    "database %s open again; the drain resumes", self.config.db
                )
            self._opened = True
        return self.store

    def _back_off(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._backoff_s = min(max(0.1, 2 * self._backoff_s), MAX_BACKOFF_S)
        self._retry_at = time.monotonic() + self._backoff_s

    def report_trouble(self, exc: BaseException) -> None:
        """Note database trouble: retry with backoff, the store reopened
        afresh (a read-only or broken handle stays so); kept open when
        the trouble is only too little room, which reopening cannot mend."""
        self._back_off(exc)
        logger.warning(
            "database unavailable (%s); records stay in the ring, retrying "
            "in %.1f s",
            self.last_error,
            self._backoff_s,
        )
        if not isinstance(exc, DatabaseFull):
            self.close()

    def _note_incident(self, text: str) -> None:
        logger.error("%s", text)
        self.incident = text
        self.incident_at = time.time()
        self._reopening = True
        self.last_error = text

    def _reopen_moved(self, exc: DatabaseMoved) -> None:
        self.close()
        path = self.config.db
        # The WAL and index beside the path are the old file's (SQLite
        # will not checkpoint into a file that moved): applied to the new
        # file they would make a chimera.  The WAL holds the old file's
        # last commits, so it is kept, under a name of its own.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        orphan = f"{path}.orphan-{stamp}-wal"
        try:
            os.rename(path + "-wal", orphan)
            kept = (
                f"; the old file's WAL (its last commits) is kept as {orphan}"
            )
        except OSError:
            kept = ""
        with contextlib.suppress(OSError):
            os.unlink(path + "-shm")
        if isinstance(exc, DatabaseGone):
            self._note_incident(
                f"DATABASE DELETED: {path} was deleted while the daemon "
                "wrote it; a new, empty database is created there and "
                "the records still in the ring go into it (what the "
                f"deleted file held is gone unless you have a backup){kept}"
            )
        else:
            self._note_incident(
                f"DATABASE REPLACED: another file was put at {path} while "
                "the daemon wrote it; the daemon reopens the path and uses "
                f"that file if it is a livemon database{kept}"
            )
        self._retry_at = 0.0

    def _set_aside(self, exc: BaseException) -> None:
        self.close()
        now = time.time()
        self._set_asides = [t for t in self._set_asides if now - t < 3600]
        if len(self._set_asides) >= MAX_SET_ASIDE_PER_HOUR:
            self.report_trouble(exc)
            return
        path = self.config.db
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        aside = f"{path}.damaged-{stamp}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            aside = "(gone already)"
        except OSError as error:
            self.report_trouble(error)
            return
        # The WAL belongs with the damaged file; the index is rebuilt.
        with contextlib.suppress(OSError):
            os.rename(path + "-wal", aside + "-wal")
        with contextlib.suppress(OSError):
            os.unlink(path + "-shm")
        self._set_asides.append(now)
        self._note_incident(
            f"DATABASE DAMAGED: {path} ({type(exc).__name__}: {exc}) was "
            f"moved aside to {aside}; a fresh database is started and the "
            "records still in the ring go into it"
        )
        self._retry_at = 0.0


def _advance(ring: ringbuf.Ring | None, batches: list[ringbuf.Batch]) -> None:
    """Mark ``batches`` of ``ring`` consumed: call it after their commit."""
    for batch in batches:
        assert ring is not None  # batches were read from it
        ring.advance(batch.lane, batch.end_seq)
