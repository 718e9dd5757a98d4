"""
A named shared-memory ring of fixed-width numpy records, split in lanes.

This module owns the segment (create, attach, close, unlink) and the
consumer's side: pending records, advancing tails, the recent window.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ringbuf import _lanelock, _layout, _shm
from ringbuf._layout import Geometry
from ringbuf.exceptions import (
    RecordDtypeError,
    RingCorrupt,
    RingExists,
    RingNotFound,
)

if TYPE_CHECKING:
    from multiprocessing.shared_memory import SharedMemory

    from ringbuf.writer import RingWriter

DEFAULT_MODE = 0o600
_ATTACH_WAIT_S = 1.0


class Batch(NamedTuple):
    """Records of one lane with consecutive sequence numbers."""

    lane: int
    first_seq: int
    records: npt.NDArray[np.void]

    @property
    def end_seq(self) -> int:
        """The sequence number after the last record (pass it to advance)."""
        return self.first_seq + len(self.records)


class Window(NamedTuple):
    """A copy of recent records of every lane, with their identities."""

    records: npt.NDArray[np.void]
    lanes: npt.NDArray[np.uint32]
    seqs: npt.NDArray[np.uint64]


class LaneState(NamedTuple):
    """A lane's counters and owner, read without locking."""

    head: int
    tail: int
    dropped: int
    owner_pid: int
    claims: int
    owned: bool

    @property
    def pending(self) -> int:
        """Records published but not yet consumed."""
        return self.head - self.tail


class Ring:
    """A shared-memory ring: ``lanes`` single-producer lanes of records.

    Segment layout (all words little-endian u64):

    ======  =====================================================
    offset  header (128 bytes)
    ======  =====================================================
    0       magic ``LMONRING``, written last at creation
    8       layout version
    16      record size in bytes
    24      lane count
    32      lane capacity in records
    40      dtype fingerprint (blake2b of the dtype's descr)
    48      epoch: random, chosen at creation
    56      creation time, ns since the Unix epoch
    64      checksum of the words above
    ======  =====================================================

    Each lane follows at ``128 + lane * stride`` (stride: cache-line
    aligned): word 0 ``head``, 1 ``dropped``, 2 owner pid, 3 claim count,
    all written only by the lane's producer; word 8 ``tail``, on its own
    cache line, written only by the consumer; then ``capacity`` slots.
    ``head`` and ``tail`` are monotonic counters; a record's slot is
    ``seq % capacity`` and its identity is ``(epoch, lane, seq)``.

    Lane ownership is an OFD byte-range lock on byte ``lane`` of the lock
    file ``/dev/shm/<name>.lanes``, the consumer's on byte ``2**32``; no
    lock is taken to write or read.
    """

    _shm: SharedMemory | None = None
    _words: memoryview | None = None

    def __init__(
        self, shm: SharedMemory, dtype: np.dtype[np.void], geometry: Geometry
    ) -> None:
        self._shm = shm
        self.name: str = shm.name
        self.dtype = dtype
        self.geometry = geometry
        buf = _buffer(shm)
        self._words = buf.cast("Q")
        header = np.frombuffer(buf, "<u8", _layout.HEADER_WORDS)
        self.epoch = int(header[_layout.H_EPOCH])
        self.created_ns = int(header[_layout.H_CREATED_NS])
        # Slots as opaque fixed-size bytes: numpy copies those with one
        # memcpy, where a structured dtype with sub-arrays is copied field
        # by field (measured ~15x slower for livemon's record).
        self._raw = np.dtype(f"V{geometry.record_bytes}")
        self._slots = [
            np.ndarray(
                (geometry.capacity_records,),
                self._raw,
                shm.buf,
                geometry.slots_offset(lane),
            )
            for lane in range(geometry.lanes)
        ]
        self._lock_fd = -1

    # -- lifecycle -------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        dtype: npt.DTypeLike,
        lanes: int,
        capacity_records: int,
        *,
        mode: int = DEFAULT_MODE,
    ) -> Ring:
        """Create a new ring segment and its lock file.

        Args:
            name: segment name (letters, digits, ``_ . -``).
            dtype: a structured numpy dtype, one record per slot.
            lanes: how many producers can write at once (1..4096).
            capacity_records: slots per lane (1..2**31).
            mode: permission bits of the segment and lock file.

        Raises:
            RingNameError: unsafe name.
            RecordDtypeError: ``dtype`` is not a structured dtype.
            ValueError: bad geometry or mode.
            RingExists: the name is taken; use ``attach`` or ``open``.
        """
        _layout.validate_name(name)
        record_dtype = _structured(dtype)
        _check_int("lanes", lanes, 1, 4096)
        _check_int("capacity_records", capacity_records, 1, 2**31)
        _check_int("mode", mode, 0, 0o777)
        geometry = Geometry(record_dtype.itemsize, lanes, capacity_records)
        _lanelock.create_file(_lock_path(name), mode)
        shm = _shm.create(name, geometry.size_bytes, mode)
        header = np.ndarray((_layout.HEADER_WORDS,), "<u8", shm.buf)
        header[_layout.H_VERSION] = _layout.LAYOUT_VERSION
        header[_layout.H_RECORD_BYTES] = geometry.record_bytes
        header[_layout.H_LANES] = lanes
        header[_layout.H_CAPACITY] = capacity_records
        header[_layout.H_FINGERPRINT] = _layout.dtype_fingerprint(record_dtype)
        header[_layout.H_EPOCH] = secrets.randbits(63)
        header[_layout.H_CREATED_NS] = time.time_ns()
        header[_layout.H_MAGIC] = _layout.MAGIC
        header[_layout.H_CHECKSUM] = _layout.header_checksum(header)
        # Attachers wait for a valid checksum, so it is the last store.
        del header
        return cls(shm, record_dtype, geometry)

    @classmethod
    def attach(cls, name: str, dtype: npt.DTypeLike) -> Ring:
        """Attach to an existing ring, checking its header and dtype.

        Raises:
            RingNameError: unsafe name.
            RingNotFound: no such ring; create it first.
            RingCorrupt: damaged header or another layout version.
            RecordDtypeError: the ring holds records of another dtype.
        """
        _layout.validate_name(name)
        record_dtype = _structured(dtype)
        shm = _shm.attach(name)
        try:
            geometry = _read_geometry(shm, record_dtype)
        except BaseException:
            shm.close()
            raise
        return cls(shm, record_dtype, geometry)

    @classmethod
    def open(
        cls,
        name: str,
        dtype: npt.DTypeLike,
        lanes: int,
        capacity_records: int,
        *,
        mode: int = DEFAULT_MODE,
    ) -> Ring:
        """Attach to the ring, creating it with this geometry if missing.

        Whoever starts first (a producer or the consumer) creates the ring;
        the geometry arguments matter only then.  Raises as ``attach``.
        """
        try:
            return cls.attach(name, dtype)
        except RingNotFound:
            pass
        try:
            return cls.create(name, dtype, lanes, capacity_records, mode=mode)
        except RingExists:
            return cls.attach(name, dtype)

    def close(self) -> None:
        """Detach this process's mapping; the segment stays. Idempotent."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._shm is None:
            return
        self._slots = []
        if self._words is not None:
            self._words.release()
            self._words = None
        self._shm.close()
        self._shm = None

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
        return (Ring.attach, (self.name, self.dtype))

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

    def writer(self) -> RingWriter:
        """Return a producer for this process (claims a lane now).

        Raises:
            LanesExhausted: every lane is held by a live producer.
        """
        from ringbuf.writer import RingWriter

        return RingWriter(self)

    # -- consumer side ---------------------------------------------------

    def lane_state(self, lane: int) -> LaneState:
        """Read a lane's counters, and whether a live producer holds it."""
        base = self._lane_word(lane)
        w = self._live_words()
        return LaneState(
            head=w[base + _layout.L_HEAD],
            tail=w[base + _layout.L_TAIL],
            dropped=w[base + _layout.L_DROPPED],
            owner_pid=w[base + _layout.L_OWNER_PID],
            claims=w[base + _layout.L_CLAIMS],
            owned=_lanelock.is_locked(self._probe_fd(), lane),
        )

    def pending(self, lane: int, max_records: int | None = None) -> Batch:
        """Copy a lane's published, unconsumed records (oldest first).

        The producer never overwrites unconsumed slots, so the copy is
        stable.  Nothing is consumed until ``advance`` is called.
        """
        base = self._lane_word(lane)
        w = self._live_words()
        tail = w[base + _layout.L_TAIL]
        # Reading head once, then only slots below it, is what makes a
        # half-written slot (at seq == head) invisible.
        head = w[base + _layout.L_HEAD]
        if max_records is not None:
            _check_int("max_records", max_records, 0, 2**63)
            head = min(head, tail + max_records)
        records = np.empty(head - tail, self._raw)
        self._copy_into(records, lane, tail, head)
        return Batch(lane, tail, records.view(self.dtype))

    def advance(self, lane: int, end_seq: int) -> None:
        """Mark a lane's records before ``end_seq`` consumed (after commit).

        Raises:
            ValueError: ``end_seq`` is behind the tail or past the head.
        """
        base = self._lane_word(lane)
        w = self._live_words()
        tail, head = w[base + _layout.L_TAIL], w[base + _layout.L_HEAD]
        if not tail <= end_seq <= head:
            raise ValueError(
                f"lane {lane}: cannot advance tail to {end_seq}, it must lie "
                f"between the tail {tail} and the head {head}"
            )
        w[base + _layout.L_TAIL] = end_seq

    def window(self, per_lane: int) -> Window:
        """Copy up to ``per_lane`` most recent records of every lane.

        Consumed records stay readable until overwritten.  Slots that a
        producer may have been overwriting during the copy are discarded.
        """
        _check_int("per_lane", per_lane, 0, 2**63)
        cap = self.geometry.capacity_records
        w = self._live_words()
        # One output array: fresh pages cost a fault each, so allocating
        # per lane and concatenating would more than double the time.
        out = np.empty(self.geometry.lanes * min(per_lane, cap), self._raw)
        lanes = np.empty(len(out), np.uint32)
        seqs = np.empty(len(out), np.uint64)
        size = 0
        for lane in range(self.geometry.lanes):
            head_word = self._lane_word(lane) + _layout.L_HEAD
            head = w[head_word]
            low = max(head - min(per_lane, cap), 0)
            self._copy_into(out[size:], lane, low, head)
            # A producer now at head' may be writing seq head' into the
            # slot of seq head' - cap: keep only seqs it cannot have touched.
            # (A producer that lapped the whole copy leaves nothing safe.)
            first_safe = min(head, max(low, w[head_word] - cap + 1))
            kept = head - first_safe
            if first_safe > low:
                skip = size + first_safe - low
                out[size : size + kept] = out[skip : skip + kept].copy()
            lanes[size : size + kept] = lane
            seqs[size : size + kept] = np.arange(first_safe, head)
            size += kept
        return Window(out[:size].view(self.dtype), lanes[:size], seqs[:size])

    def lock_consumer(self) -> bool:
        """Become this ring's only consumer; False if another process is.

        Two consumers would advance each other's tails and lose records.
        The lock is held until ``close`` or the process dies.
        """
        return _lanelock.try_lock(self._probe_fd(), _layout.CONSUMER_LOCK_BYTE)

    # -- internals -------------------------------------------------------

    def _live_words(self) -> memoryview:
        if self._words is None:
            raise ValueError(f"ring {self.name!r} is closed")
        return self._words

    def _live_bytes(self) -> memoryview:
        self._live_words()
        assert self._shm is not None
        return _buffer(self._shm)

    def _lane_word(self, lane: int) -> int:
        if not 0 <= lane < self.geometry.lanes:
            raise IndexError(
                f"lane {lane} out of range 0..{self.geometry.lanes - 1}"
            )
        return self.geometry.lane_offset(lane) // 8

    def _probe_fd(self) -> int:
        if self._lock_fd < 0:
            self._lock_fd = _lanelock.open_file(_lock_path(self.name))
        return self._lock_fd

    def _copy_into(
        self, out: npt.NDArray[np.void], lane: int, low: int, high: int
    ) -> None:
        """Copy seqs ``low..high-1`` of a lane, raw, to the head of ``out``."""
        slots = self._slots[lane]
        cap = self.geometry.capacity_records
        start, count = low % cap, high - low
        first = min(count, cap - start)
        out[:first] = slots[start : start + first]
        out[first:count] = slots[: count - first]


def unlink(name: str) -> bool:
    """Remove a ring's segment and lock file by name; False if gone.

    Raises:
        RingNameError: unsafe name.
    """
    _layout.validate_name(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_lock_path(name))
    return _shm.unlink(name)


def _lock_path(name: str) -> str:
    return os.path.join(_shm.SHM_DIR, name + ".lanes")


def _structured(dtype: npt.DTypeLike) -> np.dtype[np.void]:
    try:
        record_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise RecordDtypeError(f"not a numpy dtype: {dtype!r}") from exc
    if record_dtype.names is None or record_dtype.hasobject:
        raise RecordDtypeError(
            f"ring records need a structured dtype of plain numbers and "
            f"bytes, got {record_dtype}"
        )
    return record_dtype


def _buffer(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    if buf is None:  # only after close()
        raise ValueError(f"shared memory {shm.name!r} is closed")
    return buf


def _read_geometry(shm: SharedMemory, dtype: np.dtype[np.void]) -> Geometry:
    deadline = time.monotonic() + _ATTACH_WAIT_S
    while True:
        if shm.size < _layout.HEADER_BYTES:
            header = None
        else:
            header = np.frombuffer(
                _buffer(shm), "<u8", _layout.HEADER_WORDS
            ).copy()
        if header is not None and header[_layout.H_CHECKSUM] == (
            _layout.header_checksum(header)
        ):
            break
        if time.monotonic() > deadline:
            raise RingCorrupt(
                f"ring {shm.name!r} has a damaged or unfinished header: "
                "unlink it (no process may be using it) and create it again"
            )
        time.sleep(0.005)  # a creator may still be writing the header
    if header[_layout.H_MAGIC] != _layout.MAGIC:
        raise RingCorrupt(f"{shm.name!r} is not a ringbuf segment")
    if header[_layout.H_VERSION] != _layout.LAYOUT_VERSION:
        raise RingCorrupt(
            f"ring {shm.name!r} has layout version "
            f"{header[_layout.H_VERSION]}, this ringbuf reads "
            f"{_layout.LAYOUT_VERSION}: stop its users and recreate it"
        )
    geometry = Geometry(
        int(header[_layout.H_RECORD_BYTES]),
        int(header[_layout.H_LANES]),
        int(header[_layout.H_CAPACITY]),
    )
    if shm.size < geometry.size_bytes:
        raise RingCorrupt(
            f"ring {shm.name!r} is {shm.size} bytes, its header says "
            f"{geometry.size_bytes}: unlink and recreate it"
        )
    if header[_layout.H_FINGERPRINT] != _layout.dtype_fingerprint(dtype):
        raise RecordDtypeError(
            f"ring {shm.name!r} holds records of another dtype "
            f"({geometry.record_bytes} bytes each; yours are "
            f"{dtype.itemsize}): use the same dtype as its creator"
        )
    return geometry


def _check_int(what: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, got {value}")
