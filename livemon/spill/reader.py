"""
The daemon's side of spilling: list a lane's segments, read their valid
frames in seq order, retire segments behind a committed high-water mark.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from livemon.spill import _format, _frames
from livemon.spill._files import Frames, Segment, SegmentFiles
from ringbuf import Batch

logger = logging.getLogger(__name__)


class Scan(NamedTuple):
    """What one read of a segment found.

    ``bad_frames`` and ``torn_frames`` count only frames this reader had
    not reported before (each lost record is counted once).
    """

    batches: list[Batch]
    bad_frames: int
    torn_frames: int
    active: bool
    last_seq: int


class Backlog(NamedTuple):
    """A lane's spilled records not yet committed, from headers (cheap)."""

    segments: int
    records: int
    size_bytes: int
    oldest_ns: int | None

    def oldest_age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the oldest uncommitted record was spilled."""
        if self.oldest_ns is None:
            return 0.0
        now = time.time_ns() if now_ns is None else now_ns
        return max(0.0, (now - self.oldest_ns) / 1e9)


class SpillReader:
    """Reads the spill files of one ring, written by ``SpillWriter``s.

    Every seq comes back exactly as written, in order, once per read.
    A frame is valid if its CRC checks and its identity fits its place:
    the segment's epoch and lane, a seq at least ``first_seq`` plus its
    position (exactly ``first_seq`` at position 0) and above the previous
    valid frame's.  Invalid frames are skipped and counted
    (``bad_frames``): each costs one record.

    A segment still locked by its writer is *active*: only frames below
    its published count are read, so the frame being appended is never
    taken for a corrupt one.  In an abandoned or sealed segment every
    frame is examined; the invalid frames after the last valid one are
    the tail, cut (never read, never corrupt); those of them the header
    said were published are counted as ``torn_frames`` (lost to a crash
    before the kernel wrote them back).  A segment whose header is
    damaged, or of another dtype or version, is renamed aside to
    ``<name>.bad`` and counted in ``bad_segments``; reading goes on.

    Frames at or below ``after_seq`` (the caller's committed high-water
    mark) are not yielded, so a crash between commit and ``retire``
    replays nothing.  The HWM must be the highest seq the caller committed
    *from this reader* (it yields in seq order); a seq committed from the
    ring may be above spilled ones not yet read.  Published frames never
    change, so the reader checks each frame's CRC once and remembers;
    losses are counted once, and not at all if they lie before a frame
    already committed (counted then, or cut after their commit).

    The daemon's loop, per lane, with ``hwm`` kept in SQLite::

        for segment in reader.segments(epoch, lane):
            for batch in reader.scan(segment, hwm).batches:
                ...  # insert rows (identity: epoch, lane, seq)
            hwm = ...  # committed with the rows, in one transaction
            reader.retire(segment, hwm)  # False while seqs > hwm remain
    """

    def __init__(
        self,
        spill_dir: str | os.PathLike[str],
        ring: str,
        dtype: npt.DTypeLike,
    ) -> None:
        """Check the arguments; nothing is opened until asked.

        Raises:
            SpillConfigError: unsafe ring name.
            SpillDtypeError: ``dtype`` is not a structured dtype.
        """
        self.spill_dir = os.fspath(spill_dir)
        self.ring = _format.check_ring(ring)
        self.dtype = _format.check_dtype(dtype)
        self._files = SegmentFiles(self.spill_dir, self.ring, self.dtype)
        self._crc_at = _format.crc_offset(
            _format.frame_bytes_for(self.dtype.itemsize)
        )
        self._reported: dict[str, set[int]] = {}
        # Per segment: which frames were valid, and their seqs, when read.
        self._verified: dict[str, tuple[npt.NDArray[np.bool_], Any]] = {}
        self.bad_frames = 0
        self.torn_frames = 0

    # -- listing ---------------------------------------------------------

    def lanes(self) -> list[tuple[int, int]]:
        """Every (epoch, lane) that has a spill directory, sorted."""
        return self._files.lanes()

    def segments(self, epoch: int, lane: int) -> list[Segment]:
        """A lane's segments in seq order; bad headers renamed aside."""
        return self._files.segments(epoch, lane)

    # -- reading ---------------------------------------------------------

    def read(
        self, epoch: int, lane: int, after_seq: int = -1
    ) -> Iterator[Batch]:
        """Yield a lane's valid records above ``after_seq``, in seq order.

        Each batch holds consecutive seqs (a lost frame or a seq the ring
        took starts a new one).  Segments wholly at or below ``after_seq``
        are passed over (their headers checked, their frames not read).
        """
        for segment in _uncommitted(self.segments(epoch, lane), after_seq):
            yield from self.scan(segment, after_seq).batches

    def scan(self, segment: Segment, after_seq: int = -1) -> Scan:
        """Read one segment's valid frames above ``after_seq``.

        Returns an empty scan if the segment vanished (retired) or had a
        bad header (then renamed aside).
        """
        got = self._files.load(segment)
        if got is None:
            return Scan([], 0, 0, False, -1)
        frames, seqs = got.frames, got.frames["seq"]
        valid = self._validate(segment, got)
        kept = np.flatnonzero(valid)
        last = int(kept[-1]) if len(kept) else -1
        fresh = valid & _frames.above(seqs, after_seq)
        # Frames before the last committed one were counted when read.
        counted_from = self._committed_end(segment.path, after_seq)
        invalid = np.flatnonzero(~valid)
        if got.active:  # every frame below the published count is whole
            lost = invalid[invalid >= counted_from]
            torn = np.empty(0, np.int64)
        else:  # the invalid frames after the last valid one: the tail
            lost = invalid[(invalid >= counted_from) & (invalid < last)]
            torn = np.arange(max(last + 1, counted_from), got.published)
        new_bad = self._report(segment.path, lost)
        new_torn = self._report(segment.path, torn)
        self.bad_frames += new_bad
        self.torn_frames += new_torn
        if new_bad or new_torn:
            logger.warning(
                "spill %s: %d bad and %d torn frames (records lost)",
                segment.path,
                new_bad,
                new_torn,
            )
        # Commonly every frame is fresh: no copy of them for the mask.
        kept_frames = frames if fresh.all() else frames[fresh]
        found = _frames.batches(segment.lane, kept_frames, self.dtype)
        last_seq = int(seqs[last]) if last >= 0 else -1
        return Scan(found, new_bad, new_torn, got.active, last_seq)

    def retire(
        self,
        segment: Segment,
        hwm_seq: int,
        before_unlink: Callable[[], None] | None = None,
        *,
        sync_dir: bool = True,
    ) -> bool:
        """Unlink a segment if every seq in it is at or below ``hwm_seq``.

        Args:
            segment: from ``segments``.
            hwm_seq: the highest seq of the lane the caller has committed
                (with the rows) from this reader.
            before_unlink: called right before the unlink (to make the
                commit durable first); what it raises, the call raises.
            sync_dir: fsync the lane's directory after the unlink; off
                for a caller unlinking several, which calls ``sync_lane``
                after the last.

        Returns:
            True if unlinked; False if it still holds a valid frame above
            ``hwm_seq``, a writer still appends to it, or it is gone.
        """
        state = self._files.state(segment)
        if state is None or state[0]:
            return False
        # Sealed or abandoned, its frames never change: what the last
        # scan validated decides, unless it saw fewer frames than there
        # are now (it read while a writer appended) or the file changed.
        known = self._verified.get(segment.path)
        if known is not None and len(known[0]) == state[1]:
            valid, seqs = known
        else:
            got = self._files.load(segment)
            if got is None or got.active:
                return False
            valid, seqs = self._validate(segment, got), got.frames["seq"]
        if (valid & _frames.above(seqs, hwm_seq)).any():
            return False
        if before_unlink is not None:
            before_unlink()
        if not self._files.unlink(segment, sync=sync_dir):
            return False
        self._reported.pop(segment.path, None)
        self._verified.pop(segment.path, None)
        return True

    def sync_lane(self, epoch: int, lane: int) -> None:
        """Make the unlinks ``retire`` did in a lane durable (one fsync of
        its directory), after unlinking with ``sync_dir`` off."""
        self._files.sync_lane(epoch, lane)

    def prune(self, epoch: int, lane: int) -> bool:
        """Remove a lane's directory once it holds no file (and its
        epoch's, once that holds no lane); True if the lane's went.

        Call it only for a lane no live writer holds: one that is about
        to create a segment makes the directory again, at a cost.
        """
        return self._files.prune(epoch, lane)

    def backlog(self, epoch: int, lane: int, after_seq: int = -1) -> Backlog:
        """Estimate a lane's uncommitted records from headers and seqs.

        Counts published frames, unvalidated (a bad frame counts); reads
        frames only of the one segment that straddles ``after_seq``.
        """
        segments = self.segments(epoch, lane)
        records, oldest = 0, None
        for segment in _uncommitted(segments, after_seq):
            if segment.first_seq > after_seq:
                # Wholly uncommitted: the header's count will do.
                published, first_ns = self._files.peek(segment)
                records += published
                if oldest is None and published:
                    oldest = first_ns
                continue
            got = self._files.load(segment, published_only=True)
            if got is not None:
                pending = got.frames[
                    _frames.above(got.frames["seq"], after_seq)
                ]
                records += len(pending)
                if oldest is None and len(pending):
                    oldest = int(pending["spilled_ns"][0])
        size = sum(s.size_bytes for s in segments)
        return Backlog(len(segments), records, size, oldest)

    def published(self, segment: Segment) -> int:
        """A segment's published frame count, from its header (cheap).

        0 also if it vanished.  A segment of 0 that no writer holds has
        nothing to replay unless a power loss cut its count: ``retire``
        (which reads every frame) decides.
        """
        return self._files.peek(segment)[0]

    @property
    def bad_segments(self) -> int:
        """Segments renamed aside to ``<name>.bad`` by this reader."""
        return self._files.bad_segments

    # -- internals -------------------------------------------------------

    def _validate(
        self, segment: Segment, got: Frames
    ) -> npt.NDArray[np.bool_]:
        known = self._verified.get(segment.path)
        valid = _frames.valid_frames(
            got.data,
            got.frames,
            epoch=segment.epoch,
            lane=segment.lane,
            first_seq=segment.first_seq,
            crc_at=self._crc_at,
            known=None if known is None else known[0],
        )
        # Published frames never change: later reads check only new ones.
        # Keep the longer record: a power loss may have cut the file since.
        if known is None or len(valid) >= len(known[0]):
            self._verified[segment.path] = (valid, got.frames["seq"].copy())
        return valid

    def _committed_end(self, path: str, after_seq: int) -> int:
        """Position after the last valid frame at or below ``after_seq``.

        Losses before it were counted when the frames were read, or
        happened after commit (a power loss cutting committed frames).
        """
        valid, seqs = self._verified[path]
        done = np.flatnonzero(valid & ~_frames.above(seqs, after_seq))
        return int(done[-1]) + 1 if len(done) else 0

    def _report(self, path: str, positions: npt.NDArray[np.int64]) -> int:
        """Count lost frames this reader has not counted yet."""
        seen = self._reported.setdefault(path, set())
        new = set(positions.tolist()) - seen
        seen |= new
        return len(new)


def _uncommitted(segments: list[Segment], after_seq: int) -> list[Segment]:
    """Drop segments whose every seq is at or below ``after_seq``.

    Seqs rise across a lane's segments, so a segment is wholly committed
    when the next one starts at or below ``after_seq + 1``.
    """
    return [
        segment
        for segment, after in itertools.pairwise(segments)
        if after.first_seq > after_seq + 1
    ] + segments[-1:]
