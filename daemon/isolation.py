"""
Bad input never stops the drain: a lane whose cursors are impossible
waits in quarantine, and the records a store refuses are found by halving
their batch and set aside, so the rest of it is stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import ringbuf
from daemon.exceptions import DaemonError
from daemon.quarantine import Quarantine
from daemon.store import is_damage

# Past this many records set aside in one step, the store, not the
# records, is at fault: the step fails and everything stays in the ring.
MAX_ISOLATED_PER_STEP = 16


class SystemicFault(RuntimeError):
    """Every record fails to be stored: a fault of the store, not theirs."""


def is_trouble(exc: BaseException) -> bool:
    """Database or filesystem trouble, as opposed to a record's fault."""
    return isinstance(
        exc, (OSError, DaemonError, sqlite3.OperationalError)
    ) or is_damage(exc)


def lane_batch(
    quarantine: Quarantine,
    ring: ringbuf.Ring,
    lane: int,
    room: int | None = None,
) -> ringbuf.Batch | None:
    """Up to ``room`` (default: all) of a lane's pending records; None
    when it has none, or while its cursors are impossible."""
    # The cursors come from shared memory any process can scribble
    # on: a head behind the tail, or more than a lap ahead, would
    # read garbage (or fail); such a lane waits in quarantine.
    state = ring.lane_state(lane)
    count = state.head - state.tail
    if not 0 <= count <= ring.capacity_records:
        quarantine.lane(ring.name, lane, state.head, state.tail)
        return None
    quarantine.release(ring.name, lane)
    if count == 0 or room == 0:
        return None
    batch = ring.pending(lane, count if room is None else min(count, room))
    return batch if len(batch.records) else None


class Isolation:
    """Stores a transaction's batches in parts, setting aside the records
    at fault, once a write of them all failed for a reason of theirs.

    Each batch is halved until the records that fail alone are found;
    each of those is quarantined.  Past ``MAX_ISOLATED_PER_STEP`` of them
    in one transaction's batches the fault is the store's (a bug, say):
    ``SystemicFault`` is raised and the records stay in the ring.

    Args:
        quarantine: where the records at fault are set aside.
    """

    def __init__(self, quarantine: Quarantine) -> None:
        self.quarantine = quarantine
        self._isolated = 0  # records set aside for this transaction

    def store_apart(
        self,
        batches: list[tuple[str, ringbuf.Batch]],
        write: Callable[[str, ringbuf.Batch], object],
    ) -> None:
        """Store each ``(ring name, batch)``, in order, by ``write(ring
        name, part)``, each part committed on its own.

        Raises:
            SystemicFault: too many records failed: the store is at
                fault; what was not stored stays in the ring.
            sqlite3.Error, DaemonError, OSError: database trouble (see
                ``is_trouble``), raised as it is: nothing is set aside
                for it.
        """
        self._isolated = 0
        for ring, batch in batches:
            self._write(write, ring, batch)

    def _write(
        self,
        write: Callable[[str, ringbuf.Batch], object],
        ring: str,
        batch: ringbuf.Batch,
    ) -> None:
        try:
            write(ring, batch)
            return
        except Exception as exc:
            if is_trouble(exc):
                raise
            if len(batch.records) == 1:
                self._set_aside(ring, batch, exc)
                return
        half = len(batch.records) // 2
        for low, high in ((0, half), (half, len(batch.records))):
            part = ringbuf.Batch(
                batch.lane, batch.first_seq + low, batch.records[low:high]
            )
            self._write(write, ring, part)

    def _set_aside(
        self, ring: str, batch: ringbuf.Batch, exc: Exception
    ) -> None:
        self._isolated += 1
        if self._isolated > MAX_ISOLATED_PER_STEP:
            # Record after record fails: the fault is not theirs (a bug,
            # say).  Keep them all in the ring instead.
            raise SystemicFault(
                f"{self._isolated} records in a row cannot be stored "
                f"({type(exc).__name__}: {exc}); they stay in the ring"
            ) from exc
        self.quarantine.add(
            ring,
            batch.lane,
            batch.first_seq,
            batch.records,
            f"cannot be stored: {type(exc).__name__}: {exc}",
        )
