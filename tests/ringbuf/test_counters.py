"""
The four producer counters of a lane (header words 4-7): written by the
lane's producer, read by any consumer, kept across owners.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import ringbuf
from tests.ringbuf.records import TEST_DTYPE

ADD_IN_CHILD = """
import sys, ringbuf
from tests.ringbuf.records import TEST_DTYPE
ring = ringbuf.Ring.attach(sys.argv[1], TEST_DTYPE)
writer = ring.writer()
writer.count(3, 7)
print(writer.lane)
"""


class TestCounters:
    def test_counted_per_lane_and_read_by_the_consumer(self, make_ring):
        """Each writer counts into its own lane; others stay zero."""
        ring = make_ring(TEST_DTYPE, lanes=2)
        first, second = ring.writer(), ring.writer()
        first.count(0)
        first.count(0, 4)
        first.count(2, 9)
        second.count(1)
        assert ring.lane_state(first.lane).counters == (5, 0, 9, 0)
        assert ring.lane_state(second.lane).counters == (0, 1, 0, 0)
        assert ring.lane_state(first.lane).dropped == 0  # not the ring's

    def test_a_new_owner_goes_on_from_the_old_values(
        self, make_ring, ring_name
    ):
        """Another process claiming the lane later adds to what is there."""
        ring = make_ring(TEST_DTYPE, lanes=1)
        writer = ring.writer()
        writer.count(3, 2)
        writer.close()
        out = subprocess.run(
            [sys.executable, "-c", ADD_IN_CHILD, ring_name],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "0"
        assert ring.lane_state(0).counters == (0, 0, 0, 9)

    @pytest.mark.parametrize("counter", [-1, 4, True, 1.0])
    def test_bad_counter_is_refused(self, make_ring, counter):
        writer = make_ring(TEST_DTYPE).writer()
        with pytest.raises(ringbuf.RingError):
            writer.count(counter)

    def test_bad_amount_is_refused(self, make_ring):
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        with pytest.raises(ringbuf.RingArgumentError):
            writer.count(0, -1)
        assert ring.lane_state(writer.lane).counters == (0, 0, 0, 0)

    def test_closed_writer_refuses(self, make_ring):
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        lane = writer.lane
        writer.close()
        with pytest.raises(ringbuf.RingClosed):
            writer.count(0)
        assert ring.lane_state(lane).counters == (0, 0, 0, 0)
