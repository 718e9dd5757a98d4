"""
The values the consumer's reads return: batches, windows, lane states.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt


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
    """A lane's counters and owner, read without locking.

    ``counters`` are the four the producer keeps for itself
    (``RingWriter.count``); ringbuf gives them no meaning.
    """

    head: int
    tail: int
    dropped: int
    owner_pid: int
    claims: int
    owned: bool
    counters: tuple[int, ...] = (0, 0, 0, 0)

    @property
    def pending(self) -> int:
        """Records published but not yet consumed."""
        return self.head - self.tail
