"""
The window reader against a producer caught between writing slots and
publishing ``head``: ``put`` has at most one such slot, ``put_many`` at
most ``publish_step`` of them, and the reader discards that many.
"""

from __future__ import annotations

import numpy as np
import pytest

from ringbuf import _lanes, _layout

DTYPE = np.dtype([("v", "<i8")])
CAPACITY = 64


def values(start: int, count: int) -> np.ndarray:
    """Records whose value is their seq."""
    return np.arange(start, start + count).astype(np.int64).view(DTYPE)


class TestWindowDuringPutMany:
    @pytest.mark.parametrize("unpublished", [1, 8])
    def test_slots_written_ahead_of_head_are_discarded(
        self, make_ring, monkeypatch, unpublished
    ):
        """A producer mid-put_many has overwritten the oldest slots: the
        window returns only records whose value matches their seq."""
        ring = make_ring(DTYPE, lanes=1, capacity=CAPACITY)
        with ring.writer() as writer:
            assert writer.put_many(values(0, CAPACITY)) == CAPACITY
        ring.advance(0, CAPACITY)
        original = _lanes.Lanes.copy_into

        def racing_copy(self, out, lane, low, high):
            slots = self.slots(lane)
            for seq in range(CAPACITY, CAPACITY + unpublished):
                slots[seq % CAPACITY] = values(seq, 1).view(self.raw)[0]
            original(self, out, lane, low, high)

        monkeypatch.setattr(_lanes.Lanes, "copy_into", racing_copy)
        window = ring.window(CAPACITY)
        assert len(window.seqs) == CAPACITY - _layout.publish_step(CAPACITY)
        assert np.array_equal(
            window.records["v"], window.seqs.astype(np.int64)
        )
