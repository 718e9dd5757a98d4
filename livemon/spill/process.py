"""
A coordinator process's spills: the events and labels lanes it holds,
spilled while full, synced on an interval and sealed once the ring takes
records again, every outcome counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Protocol

import ringbuf
from livemon.config import dir_mode
from livemon.exceptions import SpillConfigError, SpillDtypeError
from livemon.spill._status import SpillStatus
from livemon.spill.drops import LANE_COUNTERS
from livemon.spill.lane import LaneSpill

logger = logging.getLogger("livemon")

SPILL_IDLE_S = 1.0
"""Seconds of ring puts succeeding again before the spill is sealed (the
daemon retires only sealed segments; sealing at once would make a lane
that is full on and off start a segment each time)."""

EVENTS, LABELS = 0, 1
"""Which of the process's lanes a record spills from."""

_FAILURES = (SpillConfigError, SpillDtypeError, OSError)
# Which counter a refused event adds to, beside ``dropped``.
DROP_COUNTERS = {
    SpillStatus.SPILL_CAP: "dropped_spill_cap",
    SpillStatus.DISK_FULL: "dropped_disk_full",
    SpillStatus.IO_ERROR: "dropped_io_error",
    SpillStatus.REJECTED: "dropped_io_error",
}
# Which of the lane's counters (``LANE_COUNTERS``) an outcome adds to.
_LANE_COUNTER = {
    status: LANE_COUNTERS.index(name)
    for status, name in (
        (SpillStatus.STORED, "spilled"),
        (SpillStatus.SPILL_CAP, "spill_cap"),
        (SpillStatus.DISK_FULL, "disk_full"),
        (SpillStatus.IO_ERROR, "io_error"),
        (SpillStatus.REJECTED, "io_error"),
    )
}


class SpillCounts(Protocol):
    """Where a ``ProcessSpill`` counts (``livemon.sink.Counters``)."""

    spilled: int
    labels_spilled: int
    dropped_spill_cap: int
    dropped_disk_full: int
    dropped_io_error: int


class ProcessSpill:
    """The spills of this process's lanes, opened when first needed.

    Args:
        root: the spill root (``livemon.ipc.spill_root``).
        options: ``SpillWriter`` keywords (``livemon.ipc.spill_options``).
        counters: where spilled and refused records are counted.
        retry_interval_s: how long after a spill failed to open it is
            tried again (records are dropped meanwhile, counted).
    """

    def __init__(
        self,
        root: str,
        options: dict[str, Any],
        counters: SpillCounts,
        retry_interval_s: float,
    ) -> None:
        self.root = root
        self._options = options
        self._counters = counters
        self._retry_interval_s = retry_interval_s
        # A SpillWriter takes one put at a time (the ring's writer locks
        # its own); only the spilling path pays for this lock.
        self._lock = threading.Lock()
        self._lanes: list[LaneSpill | None] = [None, None]
        self._retry_at = 0.0
        self._spilled_at = 0.0
        self.active = False  # a spill is open: the ring path settles it

    def renewed(self) -> ProcessSpill:
        """The same settings for a forked child, which owns no spill."""
        return ProcessSpill(
            self.root, self._options, self._counters, self._retry_interval_s
        )

    def put(
        self,
        which: int,
        record: bytes,
        ring: ringbuf.Ring,
        writer: ringbuf.RingWriter,
    ) -> SpillStatus:
        """Spill one record of lane ``writer`` of ``ring``; never raises.

        Events refused are counted per reason; a label refused is left to
        the label cache, which holds and retries it.  Either way the
        outcome is counted in the lane's header too (``LANE_COUNTERS``).
        """
        with self._lock:
            lane_spill = self._lanes[which]
            if lane_spill is None:
                lane_spill = self._lanes[which] = self._open(ring, writer)
            status = (
                SpillStatus.IO_ERROR
                if lane_spill is None
                else lane_spill.put(record)
            )
            try:  # noqa: SIM105 (free unless raised; suppress() costs 0.3 us)
                writer.count(_LANE_COUNTER[status])
            except ringbuf.RingError:
                pass  # closed under us: the record's outcome stands
        counters = self._counters
        if status is SpillStatus.STORED:
            if which == EVENTS:
                counters.spilled += 1
            else:
                counters.labels_spilled += 1
            self._spilled_at = time.monotonic()
            self.active = True
        elif which == EVENTS:
            name = DROP_COUNTERS[status]
            setattr(counters, name, getattr(counters, name) + 1)
        return status

    def settle(self) -> None:
        """While the ring takes records again: sync, then seal the spills."""
        if time.monotonic() - self._spilled_at >= SPILL_IDLE_S:
            self.close()
            return
        with self._lock:
            for lane_spill in self._lanes:
                if lane_spill is not None:
                    lane_spill.sync_if_due()

    def close(self) -> None:
        """Seal every open spill (a new ring or lane opens new ones)."""
        with self._lock:
            for lane_spill in self._lanes:
                if lane_spill is not None:
                    lane_spill.close()
            self._lanes = [None, None]
            self.active = False

    def _open(
        self, ring: ringbuf.Ring, writer: ringbuf.RingWriter
    ) -> LaneSpill | None:
        # Opening reads the lane's spill directory once; after a failure
        # it is tried again only after retry_interval_s.
        now = time.monotonic()
        lane = writer.lane
        if lane is None or now < self._retry_at:
            return None
        try:
            _make_parent(self.root, self._options.get("mode", 0o600))
            return LaneSpill.open(
                self.root,
                ring.name,
                ring.epoch,
                lane,
                ring.dtype,
                **self._options,
            )
        except _FAILURES as exc:
            self._retry_at = now + self._retry_interval_s
            logger.warning(
                "cannot spill ring %r lane %d (its records are dropped, "
                "counted): %s",
                ring.name,
                lane,
                exc,
            )
            return None


def _make_parent(path: str, mode: int) -> None:
    """Make the spill root's parent (the database's directory, by default)
    as the daemon would, should coordinators spill before it ever ran."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=dir_mode(mode), exist_ok=True)
