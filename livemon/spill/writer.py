"""
The producer's side of spilling: a lane's records appended to preallocated,
memory-mapped segment files while its ring lane is full.
"""

from __future__ import annotations

import enum
import logging
import mmap
import operator
import os
import struct
import time
import weakref
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from livemon.spill import _format, _fs, _segment
from livemon.spill.exceptions import SpillConfigError

logger = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_SEGMENT_BYTES = 4 * MiB
DEFAULT_LANE_CAP_BYTES = 256 * MiB
DEFAULT_TOTAL_CAP_BYTES = 1024 * MiB
DEFAULT_MIN_FREE_BYTES = 128 * MiB  # Aeron's low-storage threshold
DEFAULT_SYNC_INTERVAL_MS = 500  # Vector's flush interval
DEFAULT_RETRY_INTERVAL_MS = 1000
DEFAULT_MODE = 0o600
_NEVER_NS = 1 << 62
_COMMITTED_WORD = _format.COMMITTED_OFFSET // 8
_SEALED_WORD = _format.SEALED_OFFSET // 8
_SEQ_AT = _format.FRAME_SEQ_OFFSET
_crc32 = zlib.crc32
_time_ns = time.time_ns


class SpillStatus(enum.IntEnum):
    """What ``SpillWriter.put`` did with a record; all but STORED are drops.

    Index a per-reason drop counter with it: ``drops[status] += 1``.
    """

    STORED = 0
    """In the page cache, published: survives a crash of the producer."""
    SPILL_CAP = 1
    """The lane's or the spill directory's byte cap refused a segment."""
    DISK_FULL = 2
    """ENOSPC/EDQUOT preallocating a segment, or below the free floor."""
    IO_ERROR = 3
    """Another OSError creating a segment (permissions, read-only...)."""
    REJECTED = 4
    """Not storable: wrong size or dtype, seq not above the last one, a
    seq already spilled, or the writer is closed (or was forked)."""


_STORED = SpillStatus.STORED


class SpillWriter:
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

    _fd: int = -1
    _mmap: mmap.mmap | None = None
    # Empty views while no segment is mapped: the fast path never touches
    # them then (capacity 0), and no Optional check costs it time.
    _view: memoryview = memoryview(b"")
    _words: memoryview = memoryview(b"")
    _count: int = 0
    _offset: int = 0  # of the next frame; at _end when no room (or none)
    _end: int = 0
    _closed: bool = False
    segment_path: str | None = None
    """The segment being appended to, if any."""

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
        low = _format.DATA_OFFSET + self._frame_bytes
        self._segment_bytes = _format.check_int(
            "segment_bytes", segment_bytes, low, 2**31
        )
        for what, value in (
            ("lane_cap_bytes", lane_cap_bytes),
            ("total_cap_bytes", total_cap_bytes),
            ("min_free_bytes", min_free_bytes),
        ):
            _format.check_int(what, value, 0, 2**63)
        self._lane_cap_bytes = lane_cap_bytes
        self._total_cap_bytes = total_cap_bytes
        self._min_free_bytes = min_free_bytes
        if sync_interval_ms is None:
            self._sync_interval_ns = _NEVER_NS
        else:
            ms = _format.check_int(
                "sync_interval_ms", sync_interval_ms, 0, 2**31
            )
            self._sync_interval_ns = ms * 1_000_000
        self._retry_interval_ns = 1_000_000 * _format.check_int(
            "retry_interval_ms", retry_interval_ms, 0, 2**31
        )
        _format.check_int("mode", mode, 0, 0o777)
        if mode & 0o600 != 0o600 or mode & 0o117:
            raise SpillConfigError(
                f"mode {mode:#o}: spill files need owner read-write and may "
                "add group read or write, nothing else (e.g. 0o600, 0o640)"
            )
        self._mode = mode
        self._dir_mode = _fs.dir_mode(mode)
        self.spill_dir = os.fspath(spill_dir)
        _segment.make_root(self.spill_dir, self._dir_mode)
        self._dirs = (
            self.ring,
            _format.epoch_name(self.epoch),
            _format.lane_name(self.lane),
        )
        self._pack_frame = struct.Struct(f"<QQ{self._record_bytes}s").pack_into
        self._pack_crc = _format.CRC.pack_into
        self._last_seq = -1
        self._first_seq = -1
        self._synced_ns = time.time_ns()
        self._sync_at_ns = self._synced_ns + self._sync_interval_ns
        self._synced_count = 0
        self._retry_at_ns = 0
        self._refusal = SpillStatus.STORED
        self._drops = [0] * len(SpillStatus)
        self.sync_errors = 0
        method = weakref.WeakMethod(self._abandon)

        def reinit() -> None:
            bound = method()
            if bound is not None:
                bound()

        os.register_at_fork(after_in_child=reinit)

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

    def _used_bytes(self) -> int:
        used = _format.DATA_OFFSET + self._count * self._frame_bytes
        pages = -(-used // mmap.PAGESIZE) * mmap.PAGESIZE
        return min(pages, self._segment_bytes)

    # -- segments --------------------------------------------------------

    def _rotate(self, seq: int) -> SpillStatus:
        self._seal(truncate=False)
        now = time.monotonic_ns()
        if now < self._retry_at_ns:
            return self._refusal
        try:
            status = self._open_segment(seq)
        except FileExistsError:
            # That seq was spilled before: refuse it, not the seqs after.
            logger.warning(
                "spill lane %d: seq %d spilled twice", self.lane, seq
            )
            return SpillStatus.REJECTED
        except (OSError, ValueError) as exc:
            status = (
                SpillStatus.DISK_FULL
                if getattr(exc, "errno", None) in _fs.DISK_FULL_ERRNOS
                else SpillStatus.IO_ERROR
            )
            logger.warning("spill lane %d: %s", self.lane, exc)
        if status is not SpillStatus.STORED:
            self._retry_at_ns = now + self._retry_interval_ns
            self._refusal = status
        return status

    def _open_segment(self, seq: int) -> SpillStatus:
        size = self._segment_bytes
        lane_fd = _fs.open_dirs(self.spill_dir, self._dirs, self._dir_mode)
        try:
            if _fs.usage_bytes(lane_fd, 0) + size > self._lane_cap_bytes:
                return SpillStatus.SPILL_CAP
            root_fd = os.open(self.spill_dir, _fs.OPEN_DIR & ~os.O_NOFOLLOW)
            try:
                total = _fs.usage_bytes(root_fd, len(self._dirs))
            finally:
                os.close(root_fd)
            if total + size > self._total_cap_bytes:
                return SpillStatus.SPILL_CAP
            floor = self._min_free_bytes
            if floor and _fs.free_bytes(lane_fd) - size < floor:
                return SpillStatus.DISK_FULL
            self._create(lane_fd, seq)
        finally:
            os.close(lane_fd)
        return SpillStatus.STORED

    def _create(self, lane_fd: int, seq: int) -> None:
        capacity = _format.capacity_for(self._segment_bytes, self._frame_bytes)
        header = _format.Header(
            frame_bytes=self._frame_bytes,
            record_bytes=self._record_bytes,
            capacity_frames=capacity,
            fingerprint=_format.dtype_fingerprint(self.dtype),
            epoch=self.epoch,
            first_seq=seq,
            created_ns=time.time_ns(),
            lane=self.lane,
        )
        fd, mm = _segment.create(
            lane_fd, header, self._segment_bytes, self._mode
        )
        self._fd, self._mmap = fd, mm
        self._view = memoryview(mm)
        self._words = self._view[: _format.DATA_OFFSET].cast("Q")
        self._count = self._synced_count = 0
        self._synced_ns = time.time_ns()  # fsynced on creation
        self._sync_at_ns = self._synced_ns + self._sync_interval_ns
        self._offset = _format.DATA_OFFSET
        self._end = _format.DATA_OFFSET + capacity * self._frame_bytes
        self._first_seq = seq
        self.segment_path = os.path.join(
            self.spill_dir, *self._dirs, _format.segment_name(seq)
        )

    def _seal(self, *, truncate: bool) -> None:
        """Mark the segment closed, make it durable, let go of it."""
        if self._mmap is None:
            return
        self._words[_SEALED_WORD] = _format.SEAL  # after every frame
        used = _format.DATA_OFFSET + self._count * self._frame_bytes
        try:
            self._mmap.flush(0, self._used_bytes())
        except OSError:
            self.sync_errors += 1
        self._release()
        try:
            if truncate:  # give back the preallocated, unused tail
                os.ftruncate(self._fd, used)
            os.fsync(self._fd)
        except OSError:
            self.sync_errors += 1
        finally:
            os.close(self._fd)  # with the mmap's own, drops the lock
            self._fd = -1

    def _release(self) -> None:
        # Views first: an mmap with exported views refuses to close.
        self._words.release()
        self._view.release()
        self._words = self._view = memoryview(b"")
        if self._mmap is not None:
            self._mmap.close()
        self._mmap = None
        self._count = self._offset = self._end = 0
        self.segment_path = None

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
