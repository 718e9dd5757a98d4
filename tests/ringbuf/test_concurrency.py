"""
The ring across real processes and threads: exactly-once delivery, killed
producers and consumers, forked children, windows under concurrent writes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

import ringbuf
from tests.ringbuf.records import TEST_DTYPE, intact, make_records

PER_PRODUCER = 20_000
CHUNK = 7  # odd, so put_many batches straddle the lane end


def produce(name: str, producer: int, count: int, results) -> None:
    """Put ``count`` records (singles and small batches); report stored."""
    with ringbuf.Ring.attach(name, TEST_DTYPE) as ring:
        writer = ring.writer()
        stored = 0
        for start in range(0, count, CHUNK):
            records = make_records(producer, start, min(CHUNK, count - start))
            if start % 2:
                stored += writer.put_many(records)
            else:
                stored += sum(writer.put(r) for r in records)
        results.put((producer, writer.lane, stored))
        writer.close()


def produce_forever(name: str, producer: int, ready) -> None:
    """Put records until killed, one at a time (the SIGKILL victim)."""
    ring = ringbuf.Ring.attach(name, TEST_DTYPE)
    writer = ring.writer()
    ready.set()
    index = 0
    while True:
        for record in make_records(producer, index, 64):
            writer.put(record)
        index += 64


def read_then_die(name: str, lane: int, seen) -> None:
    """Read a lane's pending records, report them, and die before advancing."""
    ring = ringbuf.Ring.attach(name, TEST_DTYPE)
    seen.put(ring.pending(lane).end_seq)
    os.kill(os.getpid(), signal.SIGKILL)


def drain_until(
    ring: ringbuf.Ring, done, timeout_s: float = 120.0
) -> list[ringbuf.Batch]:
    """Consume every lane until ``done()`` and nothing is pending.

    Fails (instead of hanging the run) after ``timeout_s``.
    """
    batches = []
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            got = sum(len(b.records) for b in batches)
            pytest.fail(f"drain_until: {got} records in {timeout_s:.0f} s")
        finished = done()
        moved = 0
        for lane in range(ring.lanes):
            batch = ring.pending(lane)
            if len(batch.records):
                batches.append(batch)
                ring.advance(lane, batch.end_seq)
                moved += len(batch.records)
        if finished and not moved:
            return batches
        if not moved:
            time.sleep(0.0005)


class _Medium:
    """Runs ``produce`` in threads or in processes of a start method."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def start(self, target, *args):
        if self.kind == "thread":
            worker = threading.Thread(target=target, args=args)
        else:
            ctx = multiprocessing.get_context(self.kind)
            worker = ctx.Process(target=target, args=args)
        worker.start()
        return worker

    def results_queue(self):
        if self.kind == "thread":
            import queue

            return queue.Queue()
        return multiprocessing.get_context(self.kind).Queue()


@pytest.fixture(params=["thread", "fork", "spawn"])
def medium(request):
    """One scenario over threads and both process start methods."""
    return _Medium(request.param)


class TestExactlyOnce:
    def test_every_record_arrives_once_in_order_or_is_counted(
        self, make_ring, medium
    ):
        """Producers x records through a small ring, drained concurrently."""
        producers = 3
        ring = make_ring(TEST_DTYPE, lanes=4, capacity=256)
        results = medium.results_queue()
        workers = [
            medium.start(produce, ring.name, p, PER_PRODUCER, results)
            for p in range(producers)
        ]
        batches = drain_until(
            ring, lambda: not any(w.is_alive() for w in workers)
        )
        for worker in workers:
            worker.join(timeout=30)
        reports = {
            p: (lane, stored)
            for p, lane, stored in (results.get(timeout=10) for _ in workers)
        }

        received = np.concatenate([b.records for b in batches])
        assert intact(received)
        dropped = sum(ring.lane_state(i).dropped for i in range(ring.lanes))
        stored = sum(s for _, s in reports.values())
        assert len(received) == stored
        assert stored + dropped == producers * PER_PRODUCER
        for producer, (lane, count) in reports.items():
            mine = received[received["producer"] == producer]
            assert len(mine) == count
            assert np.all(np.diff(mine["index"].astype(np.int64)) > 0)
            seqs = np.concatenate(
                [
                    np.arange(b.first_seq, b.end_seq)
                    for b in batches
                    if b.lane == lane
                ]
            )
            assert np.array_equal(seqs, np.arange(len(seqs)))


@pytest.mark.stress
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_many_producers_long_run(make_ring, method):
    """Eight producers x 250,000 records through a small ring."""
    ring = make_ring(TEST_DTYPE, lanes=8, capacity=1024)
    medium = _Medium(method)
    results = medium.results_queue()
    workers = [
        medium.start(produce, ring.name, p, 250_000, results) for p in range(8)
    ]
    batches = drain_until(ring, lambda: not any(w.is_alive() for w in workers))
    for worker in workers:
        worker.join(timeout=60)
    stored = sum(results.get(timeout=10)[2] for _ in workers)
    received = np.concatenate([b.records for b in batches])
    dropped = sum(ring.lane_state(i).dropped for i in range(ring.lanes))
    assert intact(received)
    assert len(received) == stored
    assert stored + dropped == 8 * 250_000


class TestKilledProcesses:
    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_sigkilled_producer_leaves_no_partial_record(
        self, make_ring, method
    ):
        """No torn record is visible; the lane is reclaimed, seq goes on."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=1024)
        ctx = multiprocessing.get_context(method)
        for victim in range(3):
            ready = ctx.Event()
            proc = ctx.Process(
                target=produce_forever, args=(ring.name, victim, ready)
            )
            proc.start()
            assert ready.wait(timeout=30)
            deadline = time.monotonic() + 10
            consumed = 0
            while consumed < 5000 and time.monotonic() < deadline:
                batch = ring.pending(0)
                assert intact(batch.records)
                ring.advance(0, batch.end_seq)
                consumed += len(batch.records)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=10)
            head_at_death = ring.lane_state(0).head
            assert not ring.lane_state(0).owned
            assert intact(ring.pending(0).records)
            writer = ring.writer()
            assert writer.lane == 0
            assert writer.put(make_records(99, 0, 1)[0])
            batch = ring.pending(0)
            assert batch.end_seq == head_at_death + 1
            assert batch.records["producer"][-1] == 99
            ring.advance(0, batch.end_seq)
            writer.close()
        assert ring.lane_state(0).claims == 6

    def test_consumer_killed_before_advance_reads_again(self, make_ring):
        """Records read but not advanced are pending for the next reader."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=64)
        writer = ring.writer()
        writer.put_many(make_records(0, 0, 10))
        ctx = multiprocessing.get_context("spawn")
        seen = ctx.SimpleQueue()  # put() is written before it returns
        proc = ctx.Process(target=read_then_die, args=(ring.name, 0, seen))
        proc.start()
        proc.join(timeout=30)
        assert seen.get() == 10
        assert proc.exitcode == -signal.SIGKILL
        batch = ring.pending(0)
        assert (batch.first_seq, batch.end_seq) == (0, 10)


def child_puts(ring: ringbuf.Ring, writer: ringbuf.RingWriter, out) -> None:
    """In a forked child: write through the parent's writer object."""
    writer.put(make_records(2, 0, 1)[0])
    out.put(writer.lane)


class TestFork:
    def test_forked_child_claims_its_own_lane(self, make_ring):
        """A child never writes into the parent's lane."""
        ring = make_ring(TEST_DTYPE, lanes=3, capacity=16)
        writer = ring.writer()
        writer.put(make_records(1, 0, 1)[0])
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        proc = ctx.Process(target=child_puts, args=(ring, writer, out))
        proc.start()
        child_lane = out.get(timeout=30)
        proc.join(timeout=10)
        assert child_lane != writer.lane
        assert ring.pending(child_lane).records["producer"].tolist() == [2]
        assert writer.put(make_records(1, 1, 1)[0])
        assert ring.pending(writer.lane).records["producer"].tolist() == [1, 1]
        assert ring.lane_state(writer.lane).owned


class TestWindow:
    def test_window_under_concurrent_writes_has_no_torn_slot(self, make_ring):
        """Windows read while a producer laps the lane are all intact."""
        ring = make_ring(TEST_DTYPE, lanes=1, capacity=32)
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        proc = ctx.Process(target=produce_forever, args=(ring.name, 5, ready))
        proc.start()
        try:
            assert ready.wait(timeout=30)
            reads = 0
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                # Keep the lane drained so the producer laps the slots.
                ring.advance(0, ring.lane_state(0).head)
                window = ring.window(per_lane=32)
                assert intact(window.records)
                # Seq order is write order (a full lane skips indexes).
                assert np.all(np.diff(window.seqs.astype(np.int64)) == 1)
                assert np.all(
                    np.diff(window.records["index"].astype(np.int64)) > 0
                )
                reads += 1
            assert reads > 100
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=10)


def claim_in_vain(name: str, attempts: int) -> None:
    """Try to claim a lane of a full ring ``attempts`` times."""
    with ringbuf.Ring.attach(name, TEST_DTYPE) as ring:
        for _ in range(attempts):
            with pytest.raises(ringbuf.LanesExhausted):
                ring.writer()


class TestRefusedClaims:
    """Writers refused a lane are counted in the ring, across processes."""

    def test_counted_and_seen_by_every_attacher(self, make_ring):
        """Each LanesExhausted adds one, visible to another attacher."""
        ring = make_ring(TEST_DTYPE, lanes=2)
        held = [ring.writer(), ring.writer()]
        for _ in range(3):
            with pytest.raises(ringbuf.LanesExhausted):
                ring.writer()
        with ringbuf.Ring.attach(ring.name, TEST_DTYPE) as other:
            assert other.refused_claims == 3
        for writer in held:
            writer.close()
        ring.writer().close()
        assert ring.refused_claims == 3

    def test_the_increment_waits_for_the_counter_lock(self, make_ring):
        """A refusal's count waits while another holds the counter lock."""
        from ringbuf import _lanelock, _layout

        ring = make_ring(TEST_DTYPE, lanes=1)
        holder = ring.writer()
        errors = []

        def refused():
            try:
                ring.writer()
            except ringbuf.LanesExhausted as exc:
                errors.append(exc)

        fd = os.open(f"/dev/shm/{ring.name}.lanes", os.O_RDWR)
        try:
            with _lanelock.held(fd, _layout.COUNTER_LOCK_BYTE):
                thread = threading.Thread(target=refused)
                thread.start()
                thread.join(timeout=0.2)
                assert thread.is_alive()
                assert ring.refused_claims == 0
            thread.join(timeout=30)
        finally:
            os.close(fd)
        assert len(errors) == 1 and ring.refused_claims == 1
        holder.close()

    def test_concurrent_refusals_are_all_counted(self, make_ring):
        """Racing refused processes lose no increment (a locked add)."""
        ring = make_ring(TEST_DTYPE, lanes=1)
        holder = ring.writer()
        ctx = multiprocessing.get_context("fork")
        procs = [
            ctx.Process(target=claim_in_vain, args=(ring.name, 200))
            for _ in range(6)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * 6
        assert ring.refused_claims == 6 * 200
        holder.close()
