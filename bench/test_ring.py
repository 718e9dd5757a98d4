"""
Ring throughput against multiprocessing queues, in one run.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

import ringbuf
from livemon.record import RECORD_DTYPE

pytestmark = pytest.mark.benchmark(group="ring")

LOOP = 1000  # puts per timed call: the per-record figure divides by it
RECORD = np.zeros(1, RECORD_DTYPE)[0]
FIELDS = tuple(range(28))  # one request's numbers, as a tuple


def consume(queue) -> None:
    """Read a queue until it yields None (the baselines' other end)."""
    while queue.get() is not None:
        pass


@pytest.fixture
def ring(ring_name):
    """A one-lane ring of livemon records, big enough for a round."""
    with ringbuf.Ring.create(ring_name, RECORD_DTYPE, 1, 1 << 15) as ring:
        yield ring


@pytest.fixture(params=["Queue", "SimpleQueue"])
def queue(request):
    """A multiprocessing queue drained by a consumer process."""
    ctx = multiprocessing.get_context("fork")
    queue = getattr(ctx, request.param)()
    reader = ctx.Process(target=consume, args=(queue,))
    reader.start()
    yield queue
    queue.put(None)
    reader.join(timeout=30)
    if reader.is_alive():
        reader.kill()


def test_queue_put_baseline(benchmark, record, queue):
    """multiprocessing queue put of one request's tuple (baseline)."""

    def put_loop():
        for _ in range(LOOP):
            queue.put(FIELDS)

    benchmark.pedantic(put_loop, rounds=100)
    record(benchmark, items=LOOP)


def test_put(benchmark, record, ring):
    """RingWriter.put of one livemon record (bytes), lane kept drained."""
    writer = ring.writer()
    packed = RECORD.tobytes()

    def put_loop():
        for _ in range(LOOP):
            writer.put(packed)

    def drain():
        ring.advance(0, ring.lane_state(0).head)

    benchmark.pedantic(put_loop, setup=drain, rounds=300)
    state = ring.lane_state(0)
    assert (state.head, state.dropped) == (300 * LOOP, 0)
    record(benchmark, items=LOOP, baseline="test_queue_put_baseline[Queue]")
    writer.close()


@pytest.mark.parametrize("batch", [100, 1000, 10_000], ids="batch={}".format)
def test_put_many(benchmark, record, ring, batch):
    """RingWriter.put_many of a numpy batch, per record."""
    writer = ring.writer()
    records = np.zeros(batch, RECORD_DTYPE)

    def drain():
        ring.advance(0, ring.lane_state(0).head)

    stored = []
    benchmark.pedantic(
        lambda: stored.append(writer.put_many(records)),
        setup=drain,
        rounds=200,
    )
    assert set(stored) == {batch}
    record(benchmark, items=batch)
    writer.close()


def test_consumer_read(benchmark, record, ring):
    """pending + advance of 10,000 records, per record."""
    writer = ring.writer()
    records = np.zeros(10_000, RECORD_DTYPE)

    def fill():
        writer.put_many(records)

    def read():
        batch = ring.pending(0)
        ring.advance(0, batch.end_seq)
        return len(batch.records)

    counts = []
    benchmark.pedantic(lambda: counts.append(read()), setup=fill, rounds=100)
    assert set(counts) == {10_000}
    record(benchmark, items=10_000)
    writer.close()


def test_window_read(benchmark, record, ring_name):
    """window() of the 10,000 most recent records over 4 lanes."""
    with ringbuf.Ring.create(ring_name, RECORD_DTYPE, 4, 4096) as ring:
        writers = [ring.writer() for _ in range(4)]
        for writer in writers:
            writer.put_many(np.zeros(4000, RECORD_DTYPE))
        window = benchmark(ring.window, 2500)
        assert len(window.records) == 10_000
        record(benchmark)
        for writer in writers:
            writer.close()
