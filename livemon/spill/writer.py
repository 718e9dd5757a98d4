"""
The producer's side of spilling: a lane's records appended to preallocated,
memory-mapped segment files while its ring lane is full.
"""

from __future__ import annotations

import operator
import os
import struct
import time
import weakref
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from livemon.config import dir_mode
from livemon.spill import _format, _rotation, _segment
from livemon.spill._limits import (
    DEFAULT_LANE_CAP_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_MODE,
    DEFAULT_RETRY_INTERVAL_MS,
    DEFAULT_SEGMENT_BYTES,
    DEFAULT_SYNC_INTERVAL_MS,
    DEFAULT_TOTAL_CAP_BYTES,
    check_limits,
)
from livemon.spill._status import SpillStatus

_COMMITTED_WORD = _format.COMMITTED_OFFSET // 8
_SEQ_AT = _format.FRAME_SEQ_OFFSET
_crc32 = zlib.crc32
_time_ns = time.time_ns
_STORED = SpillStatus.STORED


class SpillWriter(_rotation.SegmentRotation):
    """Appends one lane's records to spill segments, with no syscall per
    record and never raising from ``put``.

    Files live at ``<spill_dir>/<ring>/<epoch:016x>/<lane:05d>/
    <first_seq:020d>.lms``; each segment is preallocated to
    ``segment_bytes`` (``posix_fallocate``, so a full disk shows as
    DISK_FULL when a segment is created, never as SIGBUS when a mapped page
    is first touched) and memory-mapped.  Segment layout, little-endian:

    ======  ==========================================================
    offset  header: 64 immutable bytes, then mutable words
    ======  ==========================================================
    0       magic ``LMSPILL\\0``
    8       u16 format version (1); u16 data offset (128)
    12      u32 frame bytes; u32 record bytes; u32 capacity in frames
    24      u64 dtype fingerprint (as the ring's)
    32      u64 epoch; u64 first seq; u64 created, ns since Unix epoch
    56      u32 lane
    60      u32 CRC-32 (``zlib.crc32``) of bytes 0..59
    64      u64 published frames (stored after each frame's bytes)
    72      u64 ``SEAL`` once the writer closed the segment cleanly
    128     frames, ``frame_bytes`` each, frame ``i`` at 128 + i * size
    ======  ==========================================================

    A frame is u64 epoch, u32 lane, u32 flags (0), u64 seq, u64 spilled
    ns, the record's bytes, zero padding to 8, and last a u32 CRC-32 of
    everything before it.  Seqs come from the caller (the lane's seq
    space) and strictly increase within a lane; they may skip (records the
    ring took meanwhile).

    Publication order: the frame's bytes, then its CRC, then the published
    count.  A reader of a live segment reads only frames below the count;
    a frame past it may be half written.  A put that returned STORED is in
    the page cache, so a producer killed at any point loses nothing it
    reported stored.

    Durability and the loss window: the writer calls ``msync`` when a put
    or ``sync_if_due`` finds ``sync_interval_ms`` elapsed since the last
    sync, and ``fsync``s on rotation and close; the directory is fsynced
    when a segment is created.  On power failure (or a kernel crash) the
    records at risk are those stored since the last sync: at most
    ``sync_interval_ms`` of puts while the writer is being called, and if
    it stops being called, those since its last call until the kernel's
    own writeback (``vm.dirty_expire_centisecs``, 30 s by default) or
    ``close``.  The put that falls due pays one msync of that interval's
    pages; ``sync_interval_ms=None`` leaves it all to the kernel.

    Caps are checked when a segment is created, never per record: the
    lane directory's bytes, every file below ``spill_dir`` (summed by a
    walk), and ``os.statvfs`` free space.  After a refusal, puts return the
    same status at the cost of a clock read for ``retry_interval_ms``.

    One thread at a time: the caller assigns seqs in order, so it
    serializes puts already.  A forked child's writer refuses every put
    (REJECTED); the child spills through a writer for its own lane.
    """

    _closed: bool = False

    def __init__(
        self,
        spill_dir: str | os.PathLike[str],
        ring: str,
        epoch: int,
        lane: int,
        dtype: npt.DTypeLike,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        lane_cap_bytes: int = DEFAULT_LANE_CAP_BYTES,
        total_cap_bytes: int = DEFAULT_TOTAL_CAP_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        sync_interval_ms: int | None = DEFAULT_SYNC_INTERVAL_MS,
        retry_interval_ms: int = DEFAULT_RETRY_INTERVAL_MS,
        mode: int = DEFAULT_MODE,
    ) -> None:
        """Check the arguments and make ``spill_dir``; no segment yet.

        Args:
            spill_dir: the spill root (made, owner-only, if missing; its
                parent must exist).
            ring: the ring's name, the first directory level.
            epoch: the ring's epoch (0..2**64-1).
            lane: the lane this process holds (0..2**32-1).
            dtype: the ring's structured record dtype.
            segment_bytes: a segment's size (its header and at least one
                frame, at most 2 GiB).
            lane_cap_bytes: most bytes of this lane's files.
            total_cap_bytes: most bytes of all files below ``spill_dir``.
            min_free_bytes: free space a new segment must leave (0: no
                floor; a full disk then shows as ENOSPC preallocating).
            sync_interval_ms: most time between msyncs, None for none.
            retry_interval_ms: wait after a refused segment.
            mode: file permission bits: owner read-write, optionally
                group bits, never other (directories get x beside r).

        Raises:
            SpillConfigError: an argument is out of range; fix it.
            SpillDtypeError: ``dtype`` is not a structured dtype.
            SpillDirError: ``spill_dir`` cannot be made or is not a
                directory; create it or configure another.
        """
        self.ring = _format.check_ring(ring)
        self.epoch = _format.check_int("epoch", epoch, 0, _format.MAX_SEQ)
        self.lane = _format.check_int("lane", lane, 0, _format.MAX_LANE)
        self.dtype = _format.check_dtype(dtype)
        self._record_bytes = self.dtype.itemsize
        self._frame_bytes = _format.frame_bytes_for(self._record_bytes)
        self._crc_at = _format.crc_offset(self._frame_bytes)
        self._limits = limits = check_limits(
            self._frame_bytes,
            segment_bytes=segment_bytes,
            lane_cap_bytes=lane_cap_bytes,
            total_cap_bytes=total_cap_bytes,
            min_free_bytes=min_free_bytes,
            sync_interval_ms=sync_interval_ms,
            retry_interval_ms=retry_interval_ms,
            mode=mode,
        )
        self._segment_bytes = limits.segment_bytes
        self._sync_interval_ns = limits.sync_interval_ns
        self._dir_mode = dir_mode(mode)
        self.spill_dir = os.fspath(spill_dir)
        _segment.make_root(self.spill_dir, self._dir_mode)
        epoch_dir = _format.epoch_name(self.epoch)
        self._dirs = (self.ring, epoch_dir, _format.lane_name(self.lane))
        self._header = _rotation.header_template(
            self.dtype, self.epoch, self.lane, self._segment_bytes
        )
        self._pack_frame = struct.Struct(f"<QQ{self._record_bytes}s").pack_into
        self._pack_crc = _format.CRC.pack_into
        self._last_seq = self._first_seq = -1
        self._synced_ns = time.time_ns()
        self._sync_at_ns = self._synced_ns + self._sync_interval_ns
        self._synced_count = 0
        self._retry_at_ns = 0
        self._refusal = SpillStatus.STORED
        self._drops = [0] * len(SpillStatus)
        self.sync_errors = 0
        _abandon_after_fork(self)

    # -- the hot path ----------------------------------------------------

    def put(self, seq: int, record: Any) -> SpillStatus:
        """Store one record under ``seq``; never raises, never waits.

        A put makes no syscall, except the one that starts a segment
        (once per ``segment_bytes``: creation, caps, fsyncs) and the one
        that falls due for the msync (once per ``sync_interval_ms``).

        Args:
            seq: the record's seq in its lane, above every seq put before.
            record: ``bytes`` of exactly the record size (fastest), or an
                ``np.void``/one-element array of the dtype, or bytes-like.

        Returns:
            STORED, or the reason it was dropped: the caller counts it.
        """
        offset = self._offset
        view = self._view
        now = _time_ns()
        try:  # free in 3.11 unless raised: the hot path never raises
            if (
                offset >= self._end
                or seq <= self._last_seq
                or len(record) != self._record_bytes
            ):
                return self._put_slow(seq, record)
            # Epoch and lane were filled in when the segment was created.
            self._pack_frame(view, offset + _SEQ_AT, seq, now, record)
        except (struct.error, TypeError):
            return self._put_slow(seq, record)  # not bytes, odd seq
        crc_at = offset + self._crc_at
        # The CRC is the frame's last store: frame bytes, then CRC.
        self._pack_crc(view, crc_at, _crc32(view[offset:crc_at]))
        count = self._count + 1
        self._count = count
        self._offset = offset + self._frame_bytes
        self._last_seq = seq
        # Publish with one aligned 8-byte store after the frame: x86-64
        # (TSO) makes the frame visible to any reader that sees the count.
        # Other architectures would need a release fence here.
        self._words[_COMMITTED_WORD] = count
        if not self._synced_ns <= now < self._sync_at_ns:
            self._sync(now)  # interval elapsed, or the clock went back
        return _STORED

    def _put_slow(self, seq: int, record: Any) -> SpillStatus:
        """Convert, check, rotate or refuse: all but the common put."""
        if self._closed:
            return self._drop(SpillStatus.REJECTED)
        if type(record) is not bytes or len(record) != self._record_bytes:
            converted = self._as_bytes(record)
            if converted is None:
                return self._drop(SpillStatus.REJECTED)
            record = converted
        try:
            seq = operator.index(seq)  # numpy integers are seqs too
        except TypeError:
            return self._drop(SpillStatus.REJECTED)
        if not self._last_seq < seq <= _format.MAX_SEQ:
            return self._drop(SpillStatus.REJECTED)
        if self._offset >= self._end:
            status = self._rotate(seq)
            if status is not SpillStatus.STORED:
                return self._drop(status)
        return self.put(seq, record)  # fits the fast path now

    def _drop(self, status: SpillStatus) -> SpillStatus:
        self._drops[status] += 1
        return status

    def _as_bytes(self, record: Any) -> bytes | None:
        if isinstance(record, (np.void, np.ndarray)) and record.dtype.names:
            if record.dtype != self.dtype or record.size != 1:
                return None  # a record of another dtype, or several
            return np.ascontiguousarray(record).tobytes()
        try:
            view = memoryview(record)
        except TypeError:
            return None
        return view.tobytes() if view.nbytes == self._record_bytes else None

    # -- durability ------------------------------------------------------

    def sync_if_due(self) -> bool:
        """Msync if ``sync_interval_ms`` has passed; True if it synced.

        Call it from any periodic place when puts may stop for a while,
        to keep the power-failure window bounded without a thread.
        """
        now = time.time_ns()
        due = not self._synced_ns <= now < self._sync_at_ns
        if due and self._count > self._synced_count:
            self._sync(now)
            return True
        return False

    def sync(self) -> bool:
        """Msync the current segment now; False if the kernel refused."""
        return self._sync(time.time_ns())

    def _sync(self, now: int) -> bool:
        self._synced_ns = now
        self._sync_at_ns = now + self._sync_interval_ns
        if self._mmap is None or self._count == self._synced_count:
            return True
        try:
            self._mmap.flush(0, self._used_bytes())
        except OSError:
            # Still in the page cache: counted, never raised to a producer.
            self.sync_errors += 1
            return False
        self._synced_count = self._count
        return True

    # -- lifetime --------------------------------------------------------

    @property
    def drops(self) -> dict[SpillStatus, int]:
        """Records refused by this writer, per reason (STORED excluded)."""
        return {s: self._drops[s] for s in SpillStatus if s}

    @property
    def segment_frames(self) -> int:
        """Frames stored in the current segment (0 if none is open)."""
        return self._count

    @property
    def unsynced_frames(self) -> int:
        """Frames stored since the last msync (the power-loss window)."""
        return self._count - self._synced_count

    def close(self) -> None:
        """Seal and fsync the segment, trim its unused tail. Idempotent."""
        if not self._closed:
            self._closed = True
            self._seal(truncate=True)

    def __enter__(self) -> SpillWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SpillWriter({self.spill_dir!r}, {self.ring!r}, "
            f"epoch={self.epoch:#x}, lane={self.lane})"
        )

    def _abandon(self) -> None:
        """Let go of the segment unsealed, as a killed producer would.

        After a fork the parent still appends to the segment, so the
        child must neither write nor seal it; closing the child's copies
        leaves the parent's lock in place.
        """
        self._closed = True
        self._release()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _abandon_after_fork(writer: SpillWriter) -> None:
    """Have a forked child's copy of ``writer`` let go of its segment.

    Through a weak reference: the hook must not keep the writer alive.
    """
    method = weakref.WeakMethod(writer._abandon)

    def reinit() -> None:
        bound = method()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=reinit)
