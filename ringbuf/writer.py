"""
The producer: one lane per process, written without locks or syscalls.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ringbuf import _lanelock, _layout
from ringbuf._compiled import install_put
from ringbuf._counters import LaneCounters
from ringbuf._lanes import Lanes
from ringbuf.exceptions import LanesExhausted, RecordDtypeError, RingClosed

STALE_CHECK_S = 1.0  # at most one os.stat of the segment's name per second
_monotonic = time.monotonic  # a vDSO call on Linux: no syscall
_RETIRED = _layout.H_RETIRED  # one global lookup on the hot path
_CLOCK_EVERY = 8  # puts between clock reads (a power of two)
_CLOCK_MASK = _CLOCK_EVERY - 1


class RingWriter(LaneCounters):
    """Writes records into a lane that this process alone holds.

    The lane is claimed at construction and again, lazily, in a forked
    child (which must never write into its parent's lane).  ``put`` and
    ``put_many`` never block on another process: a full lane drops the
    record and counts it in the lane's ``dropped`` word.  An in-process
    ``threading.Lock`` keeps threads of one process from interleaving.

    A writer becomes ``stale`` when its ring is retired or its name no
    longer maps to its segment (unlinked, or replaced by a new ring): from
    then on ``put`` returns False and writes nothing.  A producer can then
    take its ``unconsumed()`` records over to the new ring.

    Get one from ``Ring.writer()``; it keeps the mapping alive, not the
    ``Ring``, and stops working when that ring is closed.
    """

    _lane: int | None = None
    _head: int = 0
    _lock_fd: int = -1
    _closed: bool = False
    _pid: int = -1
    _replaced: bool = False
    _check_at: float = 0.0  # monotonic time of the next name check

    def __init__(
        self,
        lanes: Lanes,
        *,
        process_identifier: Callable[[], int] = os.getpid,
    ) -> None:
        """Claim a lane of ``lanes`` (use ``Ring.writer()``).

        Args:
            lanes: the mapped ring.
            process_identifier: the pid source; tests inject a fake one
                to simulate a fork without the at-fork hook.

        Raises:
            LanesExhausted: every lane is held by a live producer.
        """
        self._lanes = lanes
        self._getpid = process_identifier
        self.dtype = lanes.dtype
        self._capacity = lanes.geometry.capacity_records
        self._record_bytes = lanes.geometry.record_bytes
        # The ring's own views: closing the ring releases them, and then
        # any use raises ValueError, turned into RingClosed below.
        self._words = lanes.words()
        self._bytes = lanes.buf()
        self._thread_lock = threading.Lock()
        self._locked = self._thread_lock.locked  # the compiled put's look
        self._check_at = _monotonic() + STALE_CHECK_S
        self._claim()
        _LIVE.add(self)

    @property
    def lane(self) -> int | None:
        """The lane this process holds; None in a child until it writes."""
        self._check_pid()
        return self._lane

    @property
    def stale(self) -> bool:
        """Whether this ring was retired, unlinked or replaced by name.

        Retirement is seen at once; an unlinked or replaced name within
        ``STALE_CHECK_S`` of it.  Once stale, always stale.

        Raises:
            RingClosed: the ring was closed.
        """
        with self._thread_lock:
            if self._lanes.closed:
                raise self._lanes.closed_error()
            return self._stale_now()

    def put(self, record: Any) -> bool:
        """Store one record; return False if the lane is full or stale.

        A full lane counts the record as dropped; a stale ring (see
        ``stale``) is not written at all.

        Args:
            record: an ``np.void`` of the ring's dtype, or any contiguous
                bytes-like object of exactly the record size.

        Raises:
            RecordDtypeError: the record has the wrong size or dtype.
            LanesExhausted: (forked child only) no lane was free to claim.
            RingClosed: the writer or its ring is closed.
        """
        with self._thread_lock:
            try:
                words = self._words
                # Staleness: one shared load (retired) per put; the name
                # check (os.stat) once per STALE_CHECK_S, timed by a clock
                # read (~50 ns) every _CLOCK_EVERY puts (head only grows).
                head = self._head
                if (words[_RETIRED] or self._replaced) and self._stale_now():
                    return False  # once stale (by any check), always
                if (
                    not head & _CLOCK_MASK
                    and _monotonic() >= self._check_at
                    and self._stale_now()
                ):
                    return False
                # After the checks: the pid check in them may drop the lane.
                if self._lane is None:  # first write in a forked child
                    if self._stale_now():
                        return False
                    self._claim()
                    head = self._head
                cap = self._capacity
                # Load tail before overwriting a slot: x86-64 keeps
                # load->store order, so the slot we reuse was consumed.
                if head - words[self._tail_word] >= cap:
                    # An orphaned ring fills up: check that before
                    # counting a drop, so stale is seen without new puts.
                    if not self._stale_now():
                        words[self._dropped_word] += 1
                    return False
                size = self._record_bytes
                start = self._slots_offset + (head % cap) * size
                try:
                    self._bytes[start : start + size] = record
                except (TypeError, ValueError):
                    self._bytes[start : start + size] = self._as_bytes(record)
                # x86-64 (TSO) commits stores in program order: a reader
                # that sees the new head also sees the slot bytes above.
                # Other CPUs would need a release fence, hence the check
                # in _open.  head is one aligned 8-byte store (memoryview
                # "Q"), so readers never see half of it.
                head += 1
                words[self._head_word] = head
                self._head = head
                return True
            except ValueError as exc:
                if self._lanes.closed:  # the views were released
                    raise self._lanes.closed_error() from exc
                raise

    _put_python = put  # the compiled put's fallback (see the module's end)

    def put_many(self, records: npt.NDArray[np.void]) -> int:
        """Store a batch in order; return how many fit (the rest are dropped).

        Args:
            records: a 1-D array of the ring's dtype.

        Raises:
            RecordDtypeError: ``records`` is not a 1-D array of that dtype.
            LanesExhausted: (forked child only) no lane was free to claim.
            RingClosed: the writer or its ring is closed.
        """
        if not isinstance(records, np.ndarray) or records.dtype != self.dtype:
            raise RecordDtypeError(
                f"put_many needs a numpy array of the ring's dtype, got "
                f"{getattr(records, 'dtype', type(records).__name__)}"
            )
        if records.ndim != 1:
            raise RecordDtypeError(
                f"put_many needs a 1-D array, got shape {records.shape}"
            )
        with self._thread_lock:
            if self._lanes.closed:
                raise self._lanes.closed_error()
            if self._stale_now():
                return 0
            if self._lane is None:
                self._claim()
            assert self._lane is not None
            head, words, cap = self._head, self._lanes.words(), self._capacity
            free = cap - (head - words[self._tail_word])
            count = int(min(len(records), free))
            slots = self._lanes.slots(self._lane)
            raw = np.ascontiguousarray(records).view(self._lanes.raw)
            if count < len(records):
                words[self._dropped_word] += len(records) - count
            # Head is published after every publish_step slots: a window
            # reader trusts only slots that many below the head it sees.
            step = _layout.publish_step(cap)
            for done in range(0, count, step):
                n = min(step, count - done)
                start = head % cap
                first = min(n, cap - start)
                slots[start : start + first] = raw[done : done + first]
                slots[: n - first] = raw[done + first : done + n]
                # Same ordering argument as in put: slots before head.
                head += n
                words[self._head_word] = head
            self._head = head
            return count

    def unconsumed(self) -> npt.NDArray[np.void]:
        """Return a copy of this lane's records not yet consumed.

        These are seqs ``tail..head-1``: published, not yet advanced past
        by a consumer.  A producer whose ring went stale with no consumer
        (see ``Ring.consumer_attached``) can put them into the new ring.

        Returns:
            records: the ring's dtype [n], oldest first; empty when this
            process holds no lane.

        Raises:
            RingClosed: the writer or its ring is closed.
        """
        with self._thread_lock:
            words = self._lanes.words()
            if self._closed:
                raise RingClosed("this RingWriter is closed")
            if self._lane is None:
                return np.empty(0, self.dtype)
            # Only we move head, and never past an unconsumed slot while
            # we hold the thread lock: the copy is stable.
            tail = words[self._tail_word]
            return self._lanes.records(self._lane, tail, self._head)

    def consumer_attached(self) -> bool:
        """Whether some process holds the ring's consumer lock.

        Asked through the lock file this writer's lane is locked in: the
        same file even after its name was unlinked (or recreated), so a
        producer of a stale ring learns whether anyone still drains it.
        False before the first ``put`` (no lane, no lock file yet).

        Raises:
            RingClosed: the writer was closed.
        """
        with self._thread_lock:
            if self._closed:
                raise RingClosed("this RingWriter is closed")
            if self._lock_fd < 0:
                return False
            return _lanelock.is_locked(
                self._lock_fd, _layout.CONSUMER_LOCK_BYTE
            )

    def close(self) -> None:
        """Give the lane back (its pending records stay). Idempotent."""
        with self._thread_lock:
            self._check_pid()
            if self._lane is not None and not self._lanes.closed:
                self._words[self._lane_word + _layout.L_OWNER_PID] = 0
            self._release()
            self._closed = True
        _LIVE.discard(self)

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lane ownership --------------------------------------------------

    def _claim(self) -> None:
        if self._closed:
            raise RingClosed("this RingWriter is closed: create a new one")
        geometry = self._lanes.geometry
        words = self._lanes.words()
        fd = self._lanes.open_lock_file()
        for lane in range(geometry.lanes):
            if _lanelock.try_lock(fd, lane):
                break
        else:
            try:
                self._count_refusal(fd, words)
            finally:
                os.close(fd)
            raise LanesExhausted(
                f"all {geometry.lanes} lanes of ring "
                f"{self._lanes.name!r} are held by live producers: recreate "
                "the ring with more lanes, or run fewer producer processes"
            )
        base = self._lanes.lane_word(lane)
        self._lock_fd = fd
        self._fd_closer = weakref.finalize(self, os.close, fd)
        self._lane_word = base
        self._head_word = base + _layout.L_HEAD
        self._tail_word = base + _layout.L_TAIL
        self._dropped_word = base + _layout.L_DROPPED
        self._slots_offset = geometry.slots_offset(lane)
        # A previous owner may have died; its published records stay and
        # numbering continues after them, so seq never repeats.
        self._head = words[self._head_word]
        tail = words[self._tail_word]
        if not tail <= self._head <= tail + geometry.capacity_records:
            # Cursors no producer or consumer could have left (a damaged
            # or foreign write): what lies between is not records.  Start
            # over at the tail, so the consumer reads this lane again.
            self._head = tail
            words[self._head_word] = tail
        self._pid = self._getpid()
        words[base + _layout.L_OWNER_PID] = self._pid
        words[base + _layout.L_CLAIMS] += 1
        self._lane = lane

    @staticmethod
    def _count_refusal(fd: int, words: memoryview) -> None:
        # A read-modify-write of a shared word: without the lock two
        # refused processes could both write n+1.  Refusals are rare, so
        # a blocking file lock is cheap enough to make the count exact.
        # (Releases before this word existed never touch it.)
        with _lanelock.held(fd, _layout.COUNTER_LOCK_BYTE):
            words[_layout.H_REFUSED_CLAIMS] += 1

    def _release(self) -> None:
        if self._lock_fd >= 0:
            self._fd_closer()  # os.close once; a writer never closed: at GC
        self._lock_fd = -1
        self._lane = None

    def _stale_now(self) -> bool:
        if self._words[_layout.H_RETIRED]:
            return True
        if self._replaced:
            return True
        now = _monotonic()
        if now >= self._check_at:
            self._check_at = now + STALE_CHECK_S
            self._check_pid()
            if self._lanes.segment.replaced():
                self._replaced = True
                # Due at once from now on, so put's test sends every call
                # here, which answers from the flag without a syscall.
                self._check_at = 0.0
        return self._replaced

    def _forget_lane(self) -> None:
        # Closing the child's copy of the lock fd keeps the parent's lock.
        self._thread_lock = threading.Lock()
        self._locked = self._thread_lock.locked
        self._release()

    def _check_pid(self) -> None:
        # The at-fork hook misses forks that bypass os.fork (a C library
        # calling fork()); the pid check, off the hot path, catches those.
        if self._lane is not None and self._getpid() != self._pid:
            self._release()

    def _as_bytes(self, record: Any) -> memoryview:
        if isinstance(record, (np.void, np.ndarray)):
            if record.dtype != self.dtype or record.size != 1:
                raise RecordDtypeError(
                    f"record dtype {record.dtype} (size {record.size}) does "
                    f"not match the ring's {self.dtype}"
                )
            return np.ascontiguousarray(record).view(np.uint8).data
        raise RecordDtypeError(
            f"a record must be {self._record_bytes} bytes or an np.void of "
            f"the ring's dtype, got {type(record).__name__}"
        )


# Every live writer: one at-fork hook for all (hooks never go away).
_LIVE: weakref.WeakSet[RingWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_LIVE):
        writer._forget_lane()


os.register_at_fork(after_in_child=_after_fork_in_child)

COMPILED = install_put(RingWriter, _RETIRED, _CLOCK_EVERY)
"""Whether ``RingWriter.put`` stores its common case in compiled code."""
