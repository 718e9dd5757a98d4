"""
A named shared-memory ring of fixed-width numpy records, split in lanes.

This module owns the segment (create, attach, close, unlink) and the
consumer's side: pending records, advancing tails, the recent window.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ringbuf import _lanelock, _layout, _open
from ringbuf._lanes import Lanes
from ringbuf._layout import check_int
from ringbuf._open import unlink
from ringbuf._types import Batch, LaneState, Window
from ringbuf.exceptions import (
    RingArgumentError,
    RingClosed,
    RingExists,
    RingNotFound,
)
from ringbuf.writer import RingWriter

__all__ = ["Batch", "LaneState", "Ring", "Window", "unlink"]


class Ring:
    """A shared-memory ring: ``lanes`` single-producer lanes of records.

    Segment layout (all words little-endian u64):

    ======  =====================================================
    offset  header (128 bytes)
    ======  =====================================================
    0       magic ``LMONRING``
    8       layout version
    16      record size in bytes
    24      lane count
    32      lane capacity in records
    40      dtype fingerprint (blake2b of the dtype's descr)
    48      epoch: random, chosen at creation
    56      creation time, ns since the Unix epoch
    64      checksum (blake2b) of words 0-7, the last store at
            creation: attachers wait until it matches
    72      retired: nonzero once ``retire()`` ran; producers (of this
            release) stop writing
    80      refused claims: writers that found every lane held
            (``LanesExhausted``), counted under a lock-file lock
    88-127  unused, zero.  Words 9-15 are outside the checksum and
            were zero in older releases, which ignore them
    ======  =====================================================

    Each lane follows at ``128 + lane * stride`` (stride: cache-line
    aligned): word 0 ``head``, 1 ``dropped``, 2 owner pid, 3 claim count,
    4-7 four counters of the producer's own (``RingWriter.count``), all
    written only by the lane's producer; word 8 ``tail``, on its own
    cache line, written only by the consumer; words 9-15 unused;
    then ``capacity`` slots.
    ``head`` and ``tail`` are monotonic counters; a record's slot is
    ``seq % capacity`` and its identity is ``(epoch, lane, seq)``.

    Lane ownership is an OFD byte-range lock on byte ``lane`` of the lock
    file ``/dev/shm/<name>.lanes``, the consumer's on byte ``2**32``, the
    refused-claims counter's on ``2**32 + 1``; no lock is taken to write
    or read.  Segment and lock file must be ours or root's (or of the
    allowed ``group``), never open to others (``RingUntrusted``).

    Memory order: x86-64 only.  Every counter is one aligned 8-byte load
    or store (through ``memoryview.cast("Q")``), which x86-64 never tears,
    and x86-64 (TSO) keeps the orders the ring relies on without fences:
    store->store (the producer writes a slot, then publishes ``head``),
    load->load (a reader reads ``head``, copies slots, re-reads ``head``)
    and load->store (the producer reads ``tail`` before overwriting a
    slot; the consumer copies slots before advancing ``tail``).  Python
    cannot issue the fences weaker CPUs (aarch64, POWER) need, so
    ``create`` and ``attach`` refuse to run there (``UnsupportedPlatform``).
    """

    _lanes: Lanes | None = None
    _lock_fd = -1
    _consumer = False  # this object holds the consumer lock
    name: str = "?"

    def __init__(self, lanes: Lanes) -> None:
        self._lanes = lanes
        self.name = lanes.name
        self.group = lanes.group  # the gid trusted besides ours, or None
        self.dtype = lanes.dtype
        self.geometry = lanes.geometry
        words = lanes.words()
        self.epoch = int(words[_layout.H_EPOCH])
        self.created_ns = int(words[_layout.H_CREATED_NS])

    # -- lifecycle -------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        dtype: npt.DTypeLike,
        lanes: int,
        capacity_records: int,
        *,
        mode: int | None = None,
        group: int | None = None,
    ) -> Ring:
        """Create a new ring segment and its lock file.

        Args:
            name: segment name (letters, digits, ``_ . -``).
            dtype: a structured numpy dtype, one record per slot.
            lanes: how many producers can write at once (1..4096).
            capacity_records: slots per lane (1..2**31).
            mode: permission bits of the segment and lock file, never
                for others; default 0600, or 0660 with a ``group``.
            group: a gid to give both files (we must be a member), whose
                members may then attach, and create the ring in turn.

        Raises:
            RingNameError: unsafe name.
            RecordDtypeError: ``dtype`` is not a structured dtype.
            RingArgumentError: geometry, mode or group out of range, or a
                mode with bits for others (a ValueError).
            RingArgumentTypeError: geometry, mode or group not an int.
            RingExists: the name is taken; use ``attach`` or ``open``.
            RingUntrusted: the lock file is a symlink or another user's.
            UnsupportedPlatform: not x86-64 (see Memory order above).
        """
        return cls(
            _open.create(name, dtype, lanes, capacity_records, mode, group)
        )

    @classmethod
    def attach(
        cls, name: str, dtype: npt.DTypeLike, *, group: int | None = None
    ) -> Ring:
        """Attach to an existing ring, checking its owner, header and dtype.

        Only a segment (and lock file) owned by us or root, or by a user
        of ``group``, and with no access for others is used: any other
        may have been planted to read or forge records.

        Raises:
            RingNameError: unsafe name.
            RingNotFound: no such ring; create it first.
            RingUntrusted: the segment may be another user's (its owner
                and mode are in the message): remove it as root or its
                owner (``rm /dev/shm/<name>``), or use another name.
            RingCorrupt: damaged, empty or unfinished header, or another
                layout version.
            RecordDtypeError: the ring holds records of another dtype.
            UnsupportedPlatform: not x86-64 (see Memory order above).
        """
        return cls(_open.attach(name, dtype, group))

    @classmethod
    def open(
        cls,
        name: str,
        dtype: npt.DTypeLike,
        lanes: int,
        capacity_records: int,
        *,
        mode: int | None = None,
        group: int | None = None,
    ) -> Ring:
        """Attach to the ring, creating it with this geometry if missing.

        Whoever starts first (a producer or the consumer) creates the ring;
        the geometry arguments matter only then.  Raises as ``attach``.
        """
        try:
            return cls.attach(name, dtype, group=group)
        except RingNotFound:
            pass
        try:
            return cls.create(
                name, dtype, lanes, capacity_records, mode=mode, group=group
            )
        except RingExists:
            return cls.attach(name, dtype, group=group)

    def close(self) -> None:
        """Detach this process's mapping; the segment stays. Idempotent."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._consumer = False
        if self._lanes is not None:
            self._lanes.close()

    def unlink(self) -> bool:
        """Remove the segment and lock file (the owner does this, once).

        Processes still attached keep their mapping until they close it.
        Returns False if the segment was already gone.
        """
        return unlink(self.name)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reattach, (self.name, self.dtype, self.group))

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"Ring({self.name!r}, lanes={g.lanes}, "
            f"capacity_records={g.capacity_records}, epoch={self.epoch:#x})"
        )

    @property
    def lanes(self) -> int:
        """Number of lanes."""
        return self.geometry.lanes

    @property
    def capacity_records(self) -> int:
        """Slots per lane."""
        return self.geometry.capacity_records

    @property
    def refused_claims(self) -> int:
        """How many writers, in any process, found every lane held.

        Raises:
            RingClosed: the ring was closed.
        """
        return int(self._live().words()[_layout.H_REFUSED_CLAIMS])

    def writer(self) -> RingWriter:
        """Return a producer for this process (claims a lane now).

        Raises:
            LanesExhausted: every lane is held by a live producer.
        """
        return RingWriter(self._live())

    # -- consumer side ---------------------------------------------------

    def lane_state(self, lane: int) -> LaneState:
        """Read a lane's counters, and whether a live producer holds it.

        Raises:
            LaneIndexError: no such lane.
            RingClosed: the ring was closed.
        """
        lanes = self._live()
        base = lanes.lane_word(lane)
        w = lanes.words()
        return LaneState(
            head=w[base + _layout.L_HEAD],
            tail=w[base + _layout.L_TAIL],
            dropped=w[base + _layout.L_DROPPED],
            owner_pid=w[base + _layout.L_OWNER_PID],
            claims=w[base + _layout.L_CLAIMS],
            owned=_lanelock.is_locked(self._probe_fd(), lane),
            counters=tuple(w[base + _layout.L_COUNTERS :][: _layout.COUNTERS]),
        )

    def pending(self, lane: int, max_records: int | None = None) -> Batch:
        """Copy a lane's published, unconsumed records (oldest first).

        The producer never overwrites unconsumed slots, so the copy is
        stable.  Nothing is consumed until ``advance`` is called.

        Raises:
            LaneIndexError: no such lane.
            RingArgumentError: ``max_records`` is negative.
            RingClosed: the ring was closed.
        """
        lanes = self._live()
        base = lanes.lane_word(lane)
        w = lanes.words()
        tail = w[base + _layout.L_TAIL]
        # Reading head once, then only slots below it, is what makes a
        # half-written slot (at seq == head) invisible: the producer
        # stored those slots before head, and x86-64 keeps load->load
        # order, so our slot loads see them.
        head = w[base + _layout.L_HEAD]
        if max_records is not None:
            check_int("max_records", max_records, 0, 2**63)
            head = min(head, tail + max_records)
        return Batch(lane, tail, lanes.records(lane, tail, head))

    def advance(self, lane: int, end_seq: int) -> None:
        """Mark a lane's records before ``end_seq`` consumed (after commit).

        Raises:
            LaneIndexError: no such lane.
            RingArgumentError: ``end_seq`` is behind the tail or past the
                head.
            RingClosed: the ring was closed.
        """
        lanes = self._live()
        base = lanes.lane_word(lane)
        w = lanes.words()
        tail, head = w[base + _layout.L_TAIL], w[base + _layout.L_HEAD]
        if not tail <= end_seq <= head:
            raise RingArgumentError(
                f"lane {lane}: cannot advance tail to {end_seq}, it must lie "
                f"between the tail {tail} and the head {head}"
            )
        # One 8-byte store (memoryview "Q"), never torn.  The caller's
        # loads of the slots (pending) came before it, and x86-64 keeps
        # load->store order: the producer cannot reuse a slot we still read.
        w[base + _layout.L_TAIL] = end_seq

    def window(self, per_lane: int) -> Window:
        """Copy up to ``per_lane`` most recent records of every lane.

        Consumed records stay readable until overwritten.  Slots that a
        producer may have been overwriting during the copy are discarded.

        Raises:
            RingArgumentError: ``per_lane`` is negative.
            RingClosed: the ring was closed.
        """
        check_int("per_lane", per_lane, 0, 2**63)
        return Window(*self._live().recent(per_lane))

    def lock_consumer(self) -> bool:
        """Become this ring's only consumer; False if another process is.

        Two consumers would advance each other's tails and lose records.
        The lock is held until ``close`` or the process dies.
        """
        fd = self._probe_fd()
        self._consumer = _lanelock.try_lock(fd, _layout.CONSUMER_LOCK_BYTE)
        return self._consumer

    def consumer_attached(self) -> bool:
        """Tell whether some process holds this ring's consumer lock.

        A producer whose segment went stale asks its old ring: without a
        consumer, nobody will drain it, and it may carry its
        ``RingWriter.unconsumed()`` records over to the new ring.

        Raises:
            RingClosed: the ring was closed.
            RingUntrusted: the lock file is a symlink or another user's.
        """
        fd = self._probe_fd()
        # F_OFD_GETLK reports locks of other open file descriptions only:
        # our own, taken through this fd, we remember instead.
        return self._consumer or _lanelock.is_locked(
            fd, _layout.CONSUMER_LOCK_BYTE
        )

    def retire(self) -> None:
        """Tell this ring's producers to stop writing into it, for good.

        For the owner replacing the ring (say, with a bigger one): every
        writer's next ``put`` returns False and its ``stale`` turns True.
        Writers of releases before this word existed do not notice.

        Raises:
            RingClosed: the ring was closed.
        """
        # One 8-byte store; producers load it on every put.
        self._live().words()[_layout.H_RETIRED] = 1

    @property
    def retired(self) -> bool:
        """Whether any process ``retire()``-d this ring (or RingClosed)."""
        return bool(self._live().words()[_layout.H_RETIRED])

    @property
    def replaced(self) -> bool:
        """Whether the name now maps to no segment or another (one stat;
        producers have ``RingWriter.stale``). Raises ``RingClosed``."""
        return self._live().segment.replaced()

    # -- internals -------------------------------------------------------

    def _live(self) -> Lanes:
        lanes = self._lanes
        if lanes is None or lanes.closed:  # None: a failed __init__
            raise RingClosed(f"ring {self.name!r} is closed: attach again")
        return lanes

    def _probe_fd(self) -> int:
        self._live()
        if self._lock_fd < 0:
            self._lock_fd = self._live().open_lock_file()
        return self._lock_fd


def _reattach(name: str, dtype: np.dtype[np.void], group: int | None) -> Ring:
    return Ring.attach(name, dtype, group=group)
