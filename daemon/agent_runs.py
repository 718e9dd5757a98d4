"""
Agent runs into the store, exactly once: the agents ring's batches (for
the ``Drainer``) and its producers' spill files (``AgentSpillReplayer``),
inserted on their identity and folded into the per-agent rollups.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import ringbuf
from daemon.exceptions import DaemonError
from daemon.isolation import Isolation, is_trouble, lane_batch
from daemon.quarantine import Quarantine, sane_events
from daemon.spill_lanes import (
    RETIRE_INTERVAL_S,
    backlog_hwm,
    committed_hwm,
    durable_once,
    first_records,
    retire_lane,
)
from daemon.store import Store
from livemon import ipc
from livemon.config import AGENTS_RING_SUFFIX, Config
from livemon.db.rows import insert_agent_runs
from livemon.record import AGENT_RUN_DTYPE
from livemon.spill import SpillReader, spill_lane

logger = logging.getLogger("livemon.daemon")

TABLE = "agent_runs"


def store_agent_runs(
    store: Store, epoch: int, batches: list[ringbuf.Batch]
) -> int:
    """Insert agent runs in one transaction (a savepoint when nested);
    return rows added.

    Checked as ``Store.write`` checks events: the file must still be
    the store's, before the commit and after it, or the caller must not
    advance (the batch is replayed into the new file).

    Raises:
        sqlite3.Error, DaemonError, OSError: the store failed.
    """
    with store.atomic() as db:
        added = insert_agent_runs(db, epoch, batches)
        store.verify()  # raising rolls back: nothing into the void
    store.check_identity()
    return added


def pending_runs(
    ring: ringbuf.Ring | None, quarantine: Quarantine, room: int
) -> list[ringbuf.Batch]:
    """Up to ``room`` agent runs of the agents ring (none while it is not
    open), lanes in order, without the records that cannot be runs (set
    aside).  Read them before the labels: those they name come along."""
    if ring is None:
        return []
    batches = []
    for lane in range(ring.lanes):
        batch = lane_batch(quarantine, ring, lane, room)
        if batch is not None:
            batches.append(batch)
            room -= len(batch.records)
    return quarantine.screen(ring.name, batches, sane_events)


def write_runs(
    store: Store,
    ring: ringbuf.Ring,
    batches: list[ringbuf.Batch],
    isolation: Isolation,
) -> None:
    """Store ``ring``'s agent runs in a transaction of their own; records
    that cannot be stored are set aside, as events are.  Advance the
    tails only once this returned.

    Raises:
        sqlite3.Error, DaemonError, OSError: the store failed (see
            ``is_trouble``): advance nothing.
        SystemicFault: record after record failed: advance nothing.
    """
    try:
        store_agent_runs(store, ring.epoch, batches)
        return
    except Exception as exc:
        if is_trouble(exc):
            raise
    isolation.store_apart(
        [(ring.name, batch) for batch in batches],
        lambda _, part: store_agent_runs(store, ring.epoch, [part]),
    )


class AgentSpillReplayer:
    """Moves spilled agent runs into the store, exactly once, in seq order.

    The rules of ``daemon.replay.SpillReplayer``, on the agents ring's
    spill tree: a run spilled from ring lane ``l`` of epoch ``e`` under
    spill seq ``s`` is stored as ``(e, SPILL_LANE_BASE + l, s)``; each
    step reads, per lane, the runs above the lane's committed high-water
    mark (``max(seq)`` of its rows), commits them, and only then unlinks
    the segments wholly at or below it.  The labels they name are in the
    labels spill, replayed by ``SpillReplayer``: hook this one after it.

    Args:
        spill_dir: the spill root the producers write under.
        ring: the events ring's name (agent runs: ``<ring>.agents``).
        store: a callable returning the current store (None while it is
            unavailable).
    """

    def __init__(
        self,
        spill_dir: str | os.PathLike[str],
        ring: str,
        store: Callable[[], Store | None],
    ) -> None:
        self.reader = SpillReader(
            spill_dir, ring + AGENTS_RING_SUFFIX, AGENT_RUN_DTYPE
        )
        self._store = store
        self._retire_at = 0.0
        self.replayed = 0
        """Agent runs committed from spill files by this replayer."""
        self.last_error: str | None = None

    def step(self, max_records: int) -> int:
        """``replay_once``, turning trouble into a retry at the next step
        (logged once per reason, kept in ``last_error`` for status)."""
        try:
            moved = self.replay_once(max_records)
        except (sqlite3.Error, DaemonError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self.last_error:  # once, not at every step
                logger.warning(
                    "agent-run spill replay failed (%s); the runs stay in "
                    "their spill files, retrying",
                    reason,
                )
            self.last_error = reason
            return 0
        self.last_error = None
        return moved

    def replay_once(self, max_records: int) -> int:
        """Commit up to ``max_records`` spilled runs; return how many.

        Raises:
            sqlite3.Error, DaemonError: the store failed; nothing was
                retired, the runs stay in their files.
            OSError: the spill directory cannot be read.
        """
        store = self._store()
        if store is None:
            return 0
        lanes = self.reader.lanes()
        by_epoch: dict[int, list[ringbuf.Batch]] = {}
        room = max_records
        for epoch, lane in lanes:
            after = committed_hwm(store, epoch, lane, TABLE)
            for batch in self.reader.read(epoch, lane, after):
                if room <= 0:
                    break
                batch = first_records(batch, room)
                room -= len(batch.records)
                by_epoch.setdefault(epoch, []).append(
                    batch._replace(lane=spill_lane(lane))
                )
        moved = sum(len(b.records) for bs in by_epoch.values() for b in bs)
        if moved:
            with store.atomic():
                for epoch, batches in by_epoch.items():
                    store_agent_runs(store, epoch, batches)
        now = time.monotonic()
        if moved or now >= self._retire_at:
            self._retire_at = now + RETIRE_INTERVAL_S
            before_unlink = durable_once(store)  # commits on disk first
            for key in lanes:
                hwm = committed_hwm(store, *key, TABLE)
                retire_lane(self.reader, key, hwm, before_unlink)
        self.replayed += moved
        return moved

    def backlog(self) -> dict[str, Any]:
        """Runs and bytes waiting in the agents spill (for status)."""
        store = self._store()
        records = size = 0
        for epoch, lane in self.reader.lanes():
            after = backlog_hwm(store, epoch, lane, TABLE)
            got = self.reader.backlog(epoch, lane, after)
            records += got.records
            size += got.size_bytes
        return {"records": records, "size_bytes": size}


LAST_OPEN_ERROR: dict[str, str] = {}
"""Why the agents ring of each name could not be had, last time (each
reason is logged once, not at every retry; shown in status)."""


def open_agents_ring(config: Config) -> ringbuf.Ring | None:
    """Attach to (or create) the agents ring and become its consumer.

    None when it cannot be had (logged once per reason): the events go on
    draining, and the runs wait in their ring or spill (the caller tries
    again later).  Another daemon consuming it is refused, as for the
    events ring.
    """
    name = ipc.agents_ring(config).name
    try:
        ring = ipc.open_ring(config, ipc.agents_ring(config))
    except (ringbuf.RingError, OSError) as exc:
        _not_opened(name, f"cannot open ring {name!r}: {exc}")
        return None
    if not ring.lock_consumer():
        ring.close()
        _not_opened(
            name,
            f"ring {name!r} is consumed by another daemon: stop one of "
            "the two",
        )
        return None
    if LAST_OPEN_ERROR.pop(name, None) is not None:
        logger.warning("ring %r open again: agent runs drain", name)
    return ring


def _not_opened(name: str, reason: str) -> None:
    if LAST_OPEN_ERROR.get(name) != reason:
        logger.error("%s (agent runs wait for it; retrying)", reason)
    LAST_OPEN_ERROR[name] = reason
