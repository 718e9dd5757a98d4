"""
A spill writer's segments: the caps a new one must pass, its creation or
the drop reason, and the current one's mapping, sealing and rotation.
"""

from __future__ import annotations

import logging
import mmap
import os
import time

import numpy as np

from livemon.spill import _format, _fs, _segment
from livemon.spill._limits import Limits
from livemon.spill._status import SpillStatus
from ringbuf import dtype_fingerprint

# The writer's logger: its warnings keep the name they always had.
logger = logging.getLogger("livemon.spill.writer")
_SEALED_WORD = _format.SEALED_OFFSET // 8


def header_template(
    dtype: np.dtype[np.void], epoch: int, lane: int, segment_bytes: int
) -> _format.Header:
    """The header of a lane's segments, but for their seq and time.

    ``open_segment`` takes it with ``first_seq`` set and sets the time.
    """
    frame_bytes = _format.frame_bytes_for(dtype.itemsize)
    return _format.Header(
        frame_bytes=frame_bytes,
        record_bytes=dtype.itemsize,
        capacity_frames=_format.capacity_for(segment_bytes, frame_bytes),
        fingerprint=dtype_fingerprint(dtype),
        epoch=epoch,
        first_seq=0,  # both set per segment
        created_ns=0,
        lane=lane,
    )


def open_segment(
    spill_dir: str,
    dirs: tuple[str, str, str],
    dir_mode: int,
    limits: Limits,
    header: _format.Header,
) -> tuple[int, mmap.mmap] | SpillStatus:
    """Create the lane's segment starting at ``header.first_seq``.

    Caps are checked here, once per segment, never per record.

    Args:
        spill_dir: the spill root.
        dirs: the ring, epoch and lane directory names below it.
        dir_mode: permission bits of directories made on the way.
        limits: the writer's caps, segment size and file mode.
        header: the new segment's header; its creation time is set here.

    Returns:
        The locked descriptor and the mapping, or why there is none:
        REJECTED if that seq was spilled before (refuse it, not the seqs
        after), else SPILL_CAP, DISK_FULL or IO_ERROR (wait before trying
        again).
    """
    try:
        try:
            return _open_segment(spill_dir, dirs, dir_mode, limits, header)
        except FileNotFoundError:
            # The daemon prunes empty lane and epoch directories: one may
            # have gone between making it and creating the segment in it.
            return _open_segment(spill_dir, dirs, dir_mode, limits, header)
    except FileExistsError:
        logger.warning(
            "spill lane %d: seq %d spilled twice",
            header.lane,
            header.first_seq,
        )
        return SpillStatus.REJECTED
    except (OSError, ValueError) as exc:
        logger.warning("spill lane %d: %s", header.lane, exc)
        if getattr(exc, "errno", None) in _fs.DISK_FULL_ERRNOS:
            return SpillStatus.DISK_FULL
        return SpillStatus.IO_ERROR


def _open_segment(
    spill_dir: str,
    dirs: tuple[str, str, str],
    dir_mode: int,
    limits: Limits,
    header: _format.Header,
) -> tuple[int, mmap.mmap] | SpillStatus:
    size = limits.segment_bytes
    lane_fd = _fs.open_dirs(spill_dir, dirs, dir_mode)
    try:
        if _fs.usage_bytes(lane_fd, 0) + size > limits.lane_cap_bytes:
            return SpillStatus.SPILL_CAP
        root_fd = os.open(spill_dir, _fs.OPEN_DIR & ~os.O_NOFOLLOW)
        try:
            total = _fs.usage_bytes(root_fd, len(dirs))
        finally:
            os.close(root_fd)
        if total + size > limits.total_cap_bytes:
            return SpillStatus.SPILL_CAP
        floor = limits.min_free_bytes
        if floor and _fs.free_bytes(lane_fd) - size < floor:
            return SpillStatus.DISK_FULL
        header = header._replace(created_ns=time.time_ns())
        return _segment.create(lane_fd, header, size, limits.mode)
    finally:
        os.close(lane_fd)


class SegmentRotation:
    """The current segment of a ``SpillWriter``: mapped, sealed, rotated.

    A base of the writer, which sets the attributes annotated here (its
    arguments, checked) and appends frames through ``_view``, ``_words``,
    ``_count``, ``_offset`` and ``_end`` on its hot path.
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
    segment_path: str | None = None
    """The segment being appended to, if any."""

    spill_dir: str
    lane: int
    sync_errors: int
    _dirs: tuple[str, str, str]
    _dir_mode: int
    _limits: Limits
    _header: _format.Header
    _frame_bytes: int
    _segment_bytes: int
    _first_seq: int
    _retry_at_ns: int
    _refusal: SpillStatus
    _sync_interval_ns: int
    _synced_ns: int
    _sync_at_ns: int
    _synced_count: int

    def _used_bytes(self) -> int:
        used = _format.DATA_OFFSET + self._count * self._frame_bytes
        pages = -(-used // mmap.PAGESIZE) * mmap.PAGESIZE
        return min(pages, self._segment_bytes)

    def _rotate(self, seq: int) -> SpillStatus:
        self._seal(truncate=False)
        now = time.monotonic_ns()
        if now < self._retry_at_ns:
            return self._refusal
        header = self._header._replace(first_seq=seq)
        opened = open_segment(
            self.spill_dir, self._dirs, self._dir_mode, self._limits, header
        )
        if opened is SpillStatus.REJECTED:
            return opened  # a seq spilled twice: the seqs after still fit
        if isinstance(opened, SpillStatus):
            self._retry_at_ns = now + self._limits.retry_interval_ns
            self._refusal = opened
            return opened
        self._map(seq, *opened)
        return SpillStatus.STORED

    def _map(self, seq: int, fd: int, mm: mmap.mmap) -> None:
        """Append to the new segment ``fd``, mapped as ``mm``, from now."""
        self._fd, self._mmap = fd, mm
        self._view = memoryview(mm)
        self._words = self._view[: _format.DATA_OFFSET].cast("Q")
        self._count = self._synced_count = 0
        self._synced_ns = time.time_ns()  # fsynced on creation
        self._sync_at_ns = self._synced_ns + self._sync_interval_ns
        self._offset = _format.DATA_OFFSET
        capacity = self._header.capacity_frames
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
