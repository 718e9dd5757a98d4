"""
What a spill put did with a record: stored, or the reason it was dropped.
"""

from __future__ import annotations

import enum


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
