"""
A producer's spill of one ring lane: the identity its records get in the
database, and the seqs it assigns, resumed after every earlier owner's.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy.typing as npt

from livemon.spill._status import SpillStatus
from livemon.spill.reader import SpillReader
from livemon.spill.writer import SpillWriter

SPILL_LANE_BASE = 1 << 16
"""Added to a ring lane (always below 4096) to make the lane a spilled
record is stored under: spilled records have a seq space of their own,
which must never meet the ring lane's in the ``(epoch, lane, seq)``
identity of the ``events`` table."""


def default_spill_dir(db_path: str | os.PathLike[str]) -> str:
    """The spill root beside the database: ``<dirname(db)>/spill``."""
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), "spill")


def spill_lane(ring_lane: int) -> int:
    """The ``events.lane`` of records spilled from ``ring_lane``."""
    return SPILL_LANE_BASE + ring_lane


def resume_seq(
    spill_dir: str | os.PathLike[str],
    ring: str,
    epoch: int,
    lane: int,
    dtype: npt.DTypeLike,
    now_ns: int | None = None,
) -> int:
    """Return the first seq a new owner of a lane's spill should use.

    It is above every seq in the lane's directory (valid frames, and each
    segment's first seq, which names its file), and at least the time in
    ns: once the daemon has replayed and retired every segment the
    directory is empty, yet the committed rows still hold those seqs.  A
    writer assigns one seq per put, far fewer than one per ns, so seqs
    that start at the clock stay above every earlier owner's, whose rows
    may already be committed (replay skips seqs at or below the lane's
    committed high-water mark).  If the clock stepped back while the
    directory is empty, the records of a step of that size could be taken
    for committed ones: the caveat of any clock.

    Raises:
        OSError: the directory cannot be read.
    """
    reader = SpillReader(spill_dir, ring, dtype)
    last = -1
    segments = reader.segments(epoch, lane)
    if segments:
        segment = segments[-1]
        last = max(segment.first_seq, reader.scan(segment).last_seq)
    clock = time.time_ns() if now_ns is None else now_ns
    return max(last + 1, clock)


class LaneSpill:
    """One lane's ``SpillWriter`` and the seq its next record gets.

    The lane is the producer's ring lane, held exclusively (its ring
    lock), so at most one live ``LaneSpill`` appends to its directory.
    """

    __slots__ = ("next_seq", "writer")

    def __init__(self, writer: SpillWriter, next_seq: int) -> None:
        self.writer = writer
        self.next_seq = next_seq

    @classmethod
    def open(
        cls,
        spill_dir: str | os.PathLike[str],
        ring: str,
        epoch: int,
        lane: int,
        dtype: npt.DTypeLike,
        **options: Any,
    ) -> LaneSpill:
        """Open the lane's spill, continuing after its earlier owners.

        Args:
            options: ``SpillWriter`` keywords (sizes, caps, sync, mode).

        Raises:
            SpillConfigError, SpillDtypeError, SpillDirError: see
                ``SpillWriter``.
            OSError: the lane's directory cannot be read.
        """
        writer = SpillWriter(spill_dir, ring, epoch, lane, dtype, **options)
        try:
            seq = resume_seq(spill_dir, ring, epoch, lane, dtype)
        except BaseException:
            writer.close()
            raise
        return cls(writer, seq)

    def put(self, record: Any) -> SpillStatus:
        """Spill one record under the next seq; never raises."""
        seq = self.next_seq
        # Seqs may skip: a refused seq is not tried again, so a seq some
        # other writer took (it cannot, but if) refuses one record only.
        self.next_seq = seq + 1
        return self.writer.put(seq, record)

    def sync_if_due(self) -> bool:
        """``SpillWriter.sync_if_due``."""
        return self.writer.sync_if_due()

    def close(self) -> None:
        """Seal the segment so the daemon can retire it. Idempotent."""
        self.writer.close()
