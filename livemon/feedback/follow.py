"""
The records a ring gained since the last look, for the feedback leader:
per-lane cursors over ``Ring.window``, so each update copies only what is
new (plus a little), never the whole window again.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import ringbuf
from livemon import ipc

_FIRST_STEP = 64  # records per lane the first incremental read copies
_MIN_STEP = 16


class RingFollower:
    """Reads the new records of one ring, whichever lanes they are in.

    The first read after attaching copies up to ``warm_per_lane`` of each
    lane (the history a new leader starts from); later reads copy
    ``step`` per lane and double it while some lane has more new records
    than that.  Records a producer overwrote before we looked are counted
    in ``missed``.  A retired or replaced ring is followed to the new one
    (its seqs restart), skipping the records producers carried over into
    it (none newer than what was read from the old one).
    """

    def __init__(self, spec: ipc.RingSpec, warm_per_lane: int) -> None:
        """Follow ring ``spec``; a first read copies ``warm_per_lane``.

        Raises:
            ValueError: ``warm_per_lane`` is negative.
        """
        if warm_per_lane < 0:
            raise ValueError(
                f"warm_per_lane must be >= 0, got {warm_per_lane}"
            )
        self.spec = spec
        self.warm_per_lane = warm_per_lane
        self.missed = 0
        self._ring: ringbuf.Ring | None = None
        self._cursors: npt.NDArray[np.uint64] | None = None
        self._step = _FIRST_STEP
        self._latest_ns: int | None = None  # newest timestamp read
        self._since_ns: int | None = None  # skip at or before, once

    def read(self) -> npt.NDArray[np.void]:
        """The records written since the last call (none if no ring)."""
        ring = self._attached()
        if ring is None:
            return np.empty(0, self.spec.dtype)
        cap = ring.capacity_records
        if self._cursors is None:
            window = ring.window(min(self.warm_per_lane, cap))
            self._cursors = np.zeros(ring.lanes, np.uint64)
            records = self._advance(window, count_missed=False)
            if self._since_ns is not None:
                # A replacement ring holds what producers carried over
                # from the old one: read already, not to count twice.
                records = records[records["timestamp_ns"] > self._since_ns]
                self._since_ns = None
            return records
        while True:
            per_lane = min(self._step, cap)
            window = ring.window(per_lane)
            if per_lane == cap or not self._gap(window, per_lane):
                break
            self._step *= 2  # a busy lane: look further back
        return self._advance(window, count_missed=True)

    def _gap(self, window: ringbuf.Window, per_lane: int) -> bool:
        """Whether some lane may hold new records older than the window."""
        assert self._cursors is not None
        counts = np.bincount(window.lanes, minlength=len(self._cursors))
        full = counts >= per_lane
        if not full.any():
            return False
        lows = np.full(len(self._cursors), np.iinfo(np.uint64).max, np.uint64)
        np.minimum.at(lows, window.lanes, window.seqs)
        return bool((full & (lows > self._cursors)).any())

    def _advance(
        self, window: ringbuf.Window, count_missed: bool
    ) -> npt.NDArray[np.void]:
        assert self._cursors is not None
        new = window.seqs >= self._cursors[window.lanes]
        lanes, seqs = window.lanes[new], window.seqs[new]
        if len(seqs):
            lows = np.full(
                len(self._cursors), np.iinfo(np.uint64).max, np.uint64
            )
            np.minimum.at(lows, lanes, seqs)
            seen = np.unique(lanes)
            gaps = lows[seen].astype(np.int64) - self._cursors[seen].astype(
                np.int64
            )
            if count_missed:
                self.missed += int(np.maximum(gaps, 0).sum())
            np.maximum.at(self._cursors, lanes, seqs + np.uint64(1))
        # Next time, copy about twice what the busiest lane just gained.
        busiest = int(np.bincount(lanes).max()) if len(lanes) else 0
        self._step = max(_MIN_STEP, 2 * busiest)
        records: npt.NDArray[np.void] = window.records[new]
        if len(records):
            newest = int(records["timestamp_ns"].max())
            self._latest_ns = max(newest, self._latest_ns or newest)
        return records

    def _attached(self) -> ringbuf.Ring | None:
        ring = self._ring
        if ring is not None and (ring.retired or ring.replaced):
            ring.close()  # the daemon replaced it: follow the new one
            ring = self._ring = None
            self._cursors = None
            self._since_ns = self._latest_ns
        if ring is None:
            try:
                ring = self._ring = ipc.attach_ring(self.spec)
            except (ringbuf.RingError, OSError):
                return None
        return ring

    def close(self) -> None:
        """Detach from the ring. Idempotent."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
