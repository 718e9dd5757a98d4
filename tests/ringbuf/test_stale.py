"""
Producers noticing that their ring was retired, unlinked or replaced, and
carrying what nobody consumed over to the new ring.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

import ringbuf
from ringbuf import writer as writer_module
from tests.ringbuf.records import TEST_DTYPE, intact, make_records


def produce_until_stale(name: str, ready, out) -> None:
    """Put records until the writer is stale, then move what is left."""
    ring = ringbuf.Ring.attach(name, TEST_DTYPE)
    writer = ring.writer()
    index = 0
    while not writer.stale:
        if writer.put(make_records(7, index, 1)[0]):
            index += 1
        if index == 5:
            ready.set()
        time.sleep(0.001)
    refused = writer.put(make_records(7, index, 1)[0])
    left = writer.unconsumed()
    consumer = ring.consumer_attached()
    with ringbuf.Ring.attach(name, TEST_DTYPE) as new:
        moved = new.writer().put_many(left)
    out.put((refused, len(left), index, consumer, moved))


def put_after_retire(name: str, retired, out) -> None:
    """Wait until the ring is retired, then try one put."""
    with ringbuf.Ring.attach(name, TEST_DTYPE) as ring:
        writer = ring.writer()
        assert writer.put(make_records(3, 0, 1)[0])
        out.put("ready")
        retired.wait(timeout=30)
        out.put((writer.put(make_records(3, 1, 1)[0]), writer.stale))


class TestRetire:
    """Ring.retire() stops every writer at its next put."""

    def test_next_put_in_this_process(self, make_ring):
        """put returns False and writes nothing; stale tells it from full."""
        ring = make_ring(TEST_DTYPE, lanes=2, capacity=8)
        writer = ring.writer()
        assert writer.put(make_records(0, 0, 1)[0])
        assert not writer.stale and not ring.retired
        ring.retire()
        assert ring.retired
        assert writer.put(make_records(0, 1, 1)[0]) is False
        assert writer.put_many(make_records(0, 1, 3)) == 0
        assert writer.stale
        state = ring.lane_state(writer.lane)
        assert (state.head, state.dropped) == (1, 0)

    def test_next_put_in_another_process(self, make_ring):
        """A producer process sees the retirement on its next put."""
        ring = make_ring(TEST_DTYPE)
        ctx = multiprocessing.get_context("spawn")
        retired, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(
            target=put_after_retire, args=(ring.name, retired, out)
        )
        proc.start()
        assert out.get(timeout=60) == "ready"
        ring.retire()
        retired.set()
        assert out.get(timeout=30) == (False, True)
        proc.join(timeout=30)
        assert sum(ring.lane_state(i).head for i in range(ring.lanes)) == 1

    def test_full_is_not_stale(self, make_ring):
        """A full lane returns False too, but stale stays False."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=2)
        writer = ring.writer()
        assert [writer.put(r) for r in make_records(0, 0, 3)] == [
            True,
            True,
            False,
        ]
        assert not writer.stale
        assert ring.lane_state(0).dropped == 1


class TestReplacedName:
    """The name unlinked or mapped to another segment: stale within ~1 s."""

    def test_unlinked_segment(self, make_ring, monkeypatch):
        """An unlinked name makes the writer stale at its next check."""
        monkeypatch.setattr(writer_module, "STALE_CHECK_S", 0.0)
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        assert not writer.stale
        ring.unlink()
        assert writer.stale
        assert writer.put(make_records(0, 0, 1)[0]) is False
        assert writer.stale  # for good

    def test_no_stat_between_checks(self, make_ring, monkeypatch):
        """Until STALE_CHECK_S has passed, put makes no os.stat call."""
        ring = make_ring(TEST_DTYPE, capacity=64)
        writer = ring.writer()
        calls = []
        monkeypatch.setattr(
            ring._lanes.segment, "replaced", lambda: calls.append(1) or True
        )
        monkeypatch.setattr(writer_module, "_monotonic", lambda: 0.0)
        writer._check_at = 1.0
        assert all(writer.put(r) for r in make_records(0, 0, 40))
        assert calls == []
        monkeypatch.setattr(writer_module, "_monotonic", lambda: 2.0)
        results = [writer.put(r) for r in make_records(0, 40, 8)]
        assert calls == [1] and results[-1] is False

    def test_recreated_under_a_running_producer(self, make_ring, ring_name):
        """A real producer process sees the new ring and moves its records."""
        old = make_ring(TEST_DTYPE, lanes=2, capacity=64)
        ctx = multiprocessing.get_context("fork")
        ready, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(
            target=produce_until_stale, args=(ring_name, ready, out)
        )
        proc.start()
        try:
            assert ready.wait(timeout=30)
            old.unlink()
            new = ringbuf.Ring.create(ring_name, TEST_DTYPE, 4, 128)
            refused, left, written, consumer, moved = out.get(timeout=30)
        finally:
            proc.join(timeout=30)
        assert refused is False and consumer is False
        assert left == moved == written
        lane = next(i for i in range(old.lanes) if old.lane_state(i).head)
        assert old.lane_state(lane).head == written  # nothing after stale
        carried = np.concatenate(
            [new.pending(i).records for i in range(new.lanes)]
        )
        assert intact(carried)
        assert list(carried["index"]) == list(range(written))
        new.close()


class TestUnconsumed:
    """unconsumed() copies tail..head of the writer's lane."""

    def test_only_what_the_consumer_has_not_advanced_past(self, make_ring):
        """Advanced records are not included; the copy is in the dtype."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=8)
        writer = ring.writer()
        writer.put_many(make_records(0, 0, 6))
        ring.advance(0, 4)
        left = writer.unconsumed()
        assert left.dtype == TEST_DTYPE
        assert list(left["index"]) == [4, 5]

    def test_wraps_around_the_lane_end(self, make_ring):
        """A range straddling the lane end comes back in seq order."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=4)
        writer = ring.writer()
        writer.put_many(make_records(0, 0, 3))
        ring.advance(0, 3)
        writer.put_many(make_records(0, 3, 3))
        assert list(writer.unconsumed()["index"]) == [3, 4, 5]

    def test_closed_writer(self, make_ring):
        """A closed writer raises RingClosed."""
        writer = make_ring(TEST_DTYPE).writer()
        writer.close()
        with pytest.raises(ringbuf.RingClosed):
            writer.unconsumed()


class TestConsumerAttached:
    """consumer_attached() tells whether some process holds the lock."""

    def test_seen_from_another_ring_object_and_our_own(self, make_ring):
        """Held through one Ring: that one and any other attacher say so."""
        ring = make_ring(TEST_DTYPE)
        with ringbuf.Ring.attach(ring.name, TEST_DTYPE) as other:
            assert not other.consumer_attached()
            assert ring.lock_consumer()
            assert ring.consumer_attached()
            assert other.consumer_attached()
            ring.close()
            assert not other.consumer_attached()
