"""
A ring's spill files as the reader finds them: lanes and segments listed,
headers checked, damaged segments set aside, headers and frames read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from livemon.spill import _format, _fs
from ringbuf import dtype_fingerprint

# The reader's logger: its warnings keep the name they always had.
logger = logging.getLogger("livemon.spill.reader")

STALE_TMP_S = 60.0  # a segment still being created is gone well before
_PEEK_BYTES = _format.DATA_OFFSET + _format.FRAME_PREFIX_BYTES
_FIRST_NS_AT = _format.DATA_OFFSET + _format.FRAME_NS_OFFSET


class Segment(NamedTuple):
    """One segment file of a lane, its header checked when listed."""

    epoch: int
    lane: int
    first_seq: int
    name: str
    path: str
    size_bytes: int
    created_ns: int


class Frames(NamedTuple):
    """One read of a segment: its header, lock state and frames."""

    header: _format.Header
    active: bool
    published: int
    frames: npt.NDArray[np.void]
    data: bytes


class SegmentFiles:
    """The spill files of one ring and dtype, for a ``SpillReader``.

    Attributes:
        bad_segments: segments renamed aside to ``<name>.bad`` so far.
    """

    def __init__(
        self, spill_dir: str, ring: str, dtype: np.dtype[np.void]
    ) -> None:
        """Keep the (checked) arguments; nothing is opened until asked."""
        self.spill_dir = spill_dir
        self.ring = ring
        self.dtype = dtype
        self._fingerprint = dtype_fingerprint(dtype)
        self._frame_bytes = _format.frame_bytes_for(dtype.itemsize)
        self._frame_dtype = _format.frame_dtype(dtype.itemsize)
        self.bad_segments = 0
        # Segments that could not be renamed aside or unlinked (a
        # read-only filesystem): said once each, then skipped quietly.
        self._stuck: set[str] = set()

    def lanes(self) -> list[tuple[int, int]]:
        """Every (epoch, lane) that has a spill directory, sorted."""
        found = []
        ring = (self.ring,)
        for name, epoch in _fs.subdirs(
            self.spill_dir, ring, _format.parse_epoch
        ):
            below = (self.ring, name)
            for _, lane in _fs.subdirs(
                self.spill_dir, below, _format.parse_lane
            ):
                found.append((epoch, lane))
        return sorted(found)

    def segments(self, epoch: int, lane: int) -> list[Segment]:
        """A lane's segments in seq order; bad headers renamed aside."""
        found = []
        with _fs.dir_or_none(self.spill_dir, self._names(epoch, lane)) as fd:
            if fd < 0:
                return []
            with os.scandir(fd) as entries:
                names = [
                    e.name for e in entries if e.is_file(follow_symlinks=False)
                ]
            for name in names:
                first_seq = _format.parse_segment(name)
                if first_seq is not None:
                    segment = self._listed(fd, epoch, lane, first_seq, name)
                    if segment is not None:
                        found.append(segment)
                elif name.endswith(_format.TMP_SUFFIX):
                    _fs.remove_stale(fd, name, STALE_TMP_S)
        return sorted(found, key=lambda s: s.first_seq)

    def peek(self, segment: Segment) -> tuple[int, int]:
        """A segment's published count and its first frame's spill time.

        Returns:
            Both from the header and first frame, unchecked; (0, 0) if
            the segment vanished or is too short.
        """
        with self._lane_dir(segment) as dir_fd:
            if dir_fd < 0:
                return 0, 0
            fd = _fs.open_regular(segment.name, dir_fd)
            if fd < 0:
                return 0, 0
            try:
                head = os.pread(fd, _PEEK_BYTES, 0)
            finally:
                os.close(fd)
        if len(head) < _PEEK_BYTES:
            return 0, 0
        published = _word(head, _format.COMMITTED_OFFSET)
        return published, _word(head, _FIRST_NS_AT)

    def load(
        self, segment: Segment, *, published_only: bool = False
    ) -> Frames | None:
        """Read a segment's frames: up to its published count if a writer
        holds it (or ``published_only``), else every whole frame.

        Returns:
            None if it vanished, or its header is bad (then set aside).
        """
        with self._opened(segment) as opened:
            if opened is None:
                return None
            dir_fd, fd = opened
            active = _fs.is_locked(fd)
            head = os.pread(fd, _format.DATA_OFFSET, 0)
            try:
                header = self._check(head, segment)
            except _format.HeaderError as exc:
                self._set_aside(dir_fd, segment.name, exc, active)
                return None
            published = min(
                _word(head, _format.COMMITTED_OFFSET),
                header.capacity_frames,
            )
            # Read the count before the frames: every frame below it
            # was complete when the count was stored (see the writer).
            size = os.fstat(fd).st_size - _format.DATA_OFFSET
            whole = min(
                header.capacity_frames, max(size, 0) // self._frame_bytes
            )
            limit = (
                min(published, whole) if active or published_only else whole
            )
            data = os.pread(fd, limit * self._frame_bytes, _format.DATA_OFFSET)
        count = len(data) // self._frame_bytes
        frames = np.frombuffer(data, self._frame_dtype, count)
        return Frames(header, active, published, frames, data)

    def state(self, segment: Segment) -> tuple[bool, int] | None:
        """Whether a writer holds the segment, and how many frames a
        ``load`` of it would read if none does (every whole one): a lock
        probe, an fstat and a header read, no frames.

        Returns:
            None if it vanished or its header is bad (``load`` sets it
            aside).
        """
        with self._opened(segment) as opened:
            if opened is None:
                return None
            _, fd = opened
            active = _fs.is_locked(fd)
            head = os.pread(fd, _format.DATA_OFFSET, 0)
            size = os.fstat(fd).st_size - _format.DATA_OFFSET
        try:
            header = self._check(head, segment)
        except _format.HeaderError:
            return None
        whole = max(size, 0) // self._frame_bytes
        return active, min(header.capacity_frames, whole)

    def unlink(self, segment: Segment, *, sync: bool = True) -> bool:
        """Unlink a segment, durably unless ``sync`` is off (the caller
        then calls ``sync_lane`` after its last unlink in the lane, one
        directory fsync for them all); False if it or its lane is gone.
        """
        with self._lane_dir(segment) as fd:
            if fd < 0:
                return False
            try:
                os.unlink(segment.name, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as exc:  # read-only: this lane's trouble only
                self._cannot(segment.path, "unlink", exc)
                return False
            if sync:  # the unlink is durable before the caller moves on
                os.fsync(fd)
        return True

    def sync_lane(self, epoch: int, lane: int) -> None:
        """Fsync a lane's directory: the unlinks in it are durable."""
        with _fs.dir_or_none(self.spill_dir, self._names(epoch, lane)) as fd:
            if fd >= 0:
                os.fsync(fd)

    def prune(self, epoch: int, lane: int) -> bool:
        """Remove a lane's directory if empty, then its epoch's if empty.

        ``rmdir`` removes only an empty directory, atomically: a segment
        (or a ``.tmp`` being made, or one set aside as ``.bad``) keeps
        it.  A writer that loses its directory this way makes it again
        (``open_segment`` retries).

        Returns:
            True if the lane's directory was removed.
        """
        epoch_name = _format.epoch_name(epoch)
        with _fs.dir_or_none(self.spill_dir, (self.ring, epoch_name)) as fd:
            if fd < 0:
                return False
            try:
                os.rmdir(_format.lane_name(lane), dir_fd=fd)
            except OSError:  # not empty, gone, or not ours to remove
                return False
        with _fs.dir_or_none(self.spill_dir, (self.ring,)) as fd:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.rmdir(epoch_name, dir_fd=fd)
        return True

    def _check(self, head: bytes, segment: Segment) -> _format.Header:
        header = _format.unpack_header(head)
        if header.fingerprint != self._fingerprint:
            raise _format.HeaderError(
                "records of another dtype (the record layout changed?)"
            )
        if header.record_bytes != self.dtype.itemsize:
            raise _format.HeaderError("records of another size")
        if (header.epoch, header.lane, header.first_seq) != (
            segment.epoch,
            segment.lane,
            segment.first_seq,
        ):
            raise _format.HeaderError("header does not match the file name")
        return header

    def _listed(
        self, dir_fd: int, epoch: int, lane: int, first_seq: int, name: str
    ) -> Segment | None:
        path = os.path.join(
            self.spill_dir,
            self.ring,
            _format.epoch_name(epoch),
            _format.lane_name(lane),
            name,
        )
        fd = _fs.open_regular(name, dir_fd)
        if fd < 0:
            return None
        try:
            head = os.pread(fd, _format.DATA_OFFSET, 0)
            size = os.fstat(fd).st_size
            active = _fs.is_locked(fd)
        finally:
            os.close(fd)
        segment = Segment(epoch, lane, first_seq, name, path, size, 0)
        try:
            header = self._check(head, segment)
        except _format.HeaderError as exc:
            self._set_aside(dir_fd, name, exc, active)
            return None
        return segment._replace(created_ns=header.created_ns)

    def _set_aside(
        self, dir_fd: int, name: str, exc: Exception, active: bool
    ) -> None:
        if active:
            # A live writer still appends to it (a reader of another dtype
            # during an upgrade?): skip it now, set it aside once it is
            # abandoned, never pull it from under its writer.
            logger.warning("spill segment %s skipped: %s", name, exc)
            return
        try:
            os.rename(
                name,
                name + _format.BAD_SUFFIX,
                src_dir_fd=dir_fd,
                dst_dir_fd=dir_fd,
            )
        except FileNotFoundError:
            return
        except OSError as err:  # read-only: skipped at every listing
            self._cannot(name, f"set aside ({exc})", err)
            return
        else:
            self.bad_segments += 1
            logger.warning(
                "spill segment %s set aside as %s%s: %s",
                name,
                name,
                _format.BAD_SUFFIX,
                exc,
            )

    def _cannot(self, name: str, what: str, exc: OSError) -> None:
        """Say once that a segment cannot be ``what``: it stays, and
        every other segment and lane goes on."""
        if name not in self._stuck:
            self._stuck.add(name)
            logger.warning(
                "spill segment %s cannot be %s: %s; it stays where it is",
                name,
                what,
                exc,
            )

    def _names(self, epoch: int, lane: int) -> tuple[str, str, str]:
        return (self.ring, _format.epoch_name(epoch), _format.lane_name(lane))

    @contextlib.contextmanager
    def _opened(self, segment: Segment) -> Iterator[tuple[int, int] | None]:
        """The segment's lane directory and the segment itself, opened
        read-only (closed after); None if either has vanished."""
        with self._lane_dir(segment) as dir_fd:
            if dir_fd < 0:
                yield None
                return
            fd = _fs.open_regular(segment.name, dir_fd)
            if fd < 0:
                yield None
                return
            try:
                yield dir_fd, fd
            finally:
                os.close(fd)

    def _lane_dir(
        self, segment: Segment
    ) -> contextlib.AbstractContextManager[int]:
        names = self._names(segment.epoch, segment.lane)
        return _fs.dir_or_none(self.spill_dir, names)


def _word(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")
