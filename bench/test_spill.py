"""
Spill file put against a ring put, in one run; the reader's cost per
record; and a whole Monitor request spilling against one the ring takes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ringbuf
from bench.test_monitor import ITERATIONS, one_request
from daemon.replay import STEP_BATCHES
from livemon import Monitor
from livemon.config import Config, load_config
from livemon.record import RECORD_DTYPE
from livemon.spill import SpillReader, SpillStatus, SpillWriter

pytestmark = pytest.mark.benchmark(group="spill")

LOOP = 1000  # puts per timed call: the per-record figure divides by it
ROUNDS = 300
RECORD = np.zeros(1, RECORD_DTYPE)[0]
EPOCH, LANE = 1, 0


@pytest.fixture
def ring(ring_name):
    """A one-lane ring of livemon records, big enough for a round."""
    with ringbuf.Ring.create(ring_name, RECORD_DTYPE, 1, 1 << 15) as ring:
        yield ring


def spill_writer(tmp_path, ring_name, **kwargs) -> SpillWriter:
    """A writer with default segments and caps wide enough for a run."""
    return SpillWriter(
        tmp_path / "spill",
        ring_name,
        EPOCH,
        LANE,
        RECORD_DTYPE,
        lane_cap_bytes=1 << 40,
        total_cap_bytes=1 << 40,
        min_free_bytes=0,
        **kwargs,
    )


def test_ring_put(benchmark, record, ring):
    """RingWriter.put of one livemon record (bytes), lane kept drained."""
    writer = ring.writer()
    packed = RECORD.tobytes()

    def put_loop():
        for _ in range(LOOP):
            writer.put(packed)

    def drain():
        ring.advance(0, ring.lane_state(0).head)

    benchmark.pedantic(put_loop, setup=drain, rounds=ROUNDS)
    state = ring.lane_state(0)
    assert (state.head, state.dropped) == (ROUNDS * LOOP, 0)
    record(benchmark, items=LOOP)
    writer.close()


@pytest.mark.parametrize(
    "sync_ms", [500, None], ids=["sync=500ms", "sync=none"]
)
def test_spill_put(benchmark, record, tmp_path, ring_name, sync_ms):
    """SpillWriter.put of one record (bytes): fresh pages, rotations and
    the periodic msync included, as a spilling producer pays them."""
    writer = spill_writer(tmp_path, ring_name, sync_interval_ms=sync_ms)
    packed = RECORD.tobytes()
    seq = iter(range(10**12))

    def put_loop():
        put = writer.put
        for _ in range(LOOP):
            put(next(seq), packed)

    benchmark.pedantic(put_loop, rounds=ROUNDS)
    assert sum(writer.drops.values()) == 0
    writer.close()
    reader = SpillReader(tmp_path / "spill", ring_name, RECORD_DTYPE)
    stored = sum(len(b.records) for b in reader.read(EPOCH, LANE))
    assert stored == ROUNDS * LOOP
    record(benchmark, items=LOOP, baseline="test_ring_put")


def test_spill_read(benchmark, record, tmp_path, ring_name):
    """SpillReader.read of 10,000 spilled records (CRC each), per record."""
    writer = spill_writer(tmp_path, ring_name)
    packed = RECORD.tobytes()
    for seq in range(10_000):
        assert writer.put(seq, packed) is SpillStatus.STORED
    writer.close()

    def read():
        reader = SpillReader(tmp_path / "spill", ring_name, RECORD_DTYPE)
        return sum(len(b.records) for b in reader.read(EPOCH, LANE))

    counts = []
    benchmark.pedantic(lambda: counts.append(read()), rounds=50)
    assert set(counts) == {10_000}
    record(benchmark, items=10_000)


MONITOR_ROUNDS = 3000


@dataclasses.dataclass(frozen=True)
class _SpillingConfig(Config):
    """The Config with the spill keys a later Config will carry."""

    spill: bool = True
    spill_min_free_bytes: int = 0


def monitor_config(tmp_path, ring_name, capacity: int) -> _SpillingConfig:
    """One lane of ``capacity`` records; full lanes spill beside the db."""
    base = load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / "livemon.db"),
            "lanes": 1,
            "capacity_records": capacity,
        }
    )
    fields = {
        f.name: getattr(base, f.name) for f in dataclasses.fields(Config)
    }
    return _SpillingConfig(**fields)


def test_monitor_request_ring(benchmark, record, tmp_path, ring_name):
    """One whole request (bench/test_monitor.py's) the ring takes."""
    config = monitor_config(tmp_path, ring_name, 2 * MONITOR_ROUNDS)
    with Monitor(config=config) as monitor:
        benchmark.pedantic(
            one_request,
            args=(monitor,),
            rounds=MONITOR_ROUNDS // ITERATIONS,
            iterations=ITERATIONS,
            warmup_rounds=10,
        )
        assert monitor.counters.recorded >= MONITOR_ROUNDS
        assert monitor.counters.spilled == monitor.counters.dropped == 0
    record(benchmark)


def test_monitor_request_spilling(benchmark, record, tmp_path, ring_name):
    """The same request while the lane is full: spilled to a file."""
    config = monitor_config(tmp_path, ring_name, 4)
    with Monitor(config=config) as monitor:
        for _ in range(10):  # fill the lane, open the spill
            one_request(monitor)
        assert monitor.counters.spilled
        benchmark.pedantic(
            one_request,
            args=(monitor,),
            rounds=MONITOR_ROUNDS // ITERATIONS,
            iterations=ITERATIONS,
            warmup_rounds=10,
        )
        assert monitor.counters.spilled >= MONITOR_ROUNDS
        assert monitor.counters.dropped == 0
    record(benchmark, baseline="test_monitor_request_ring")


REPLAY_BATCH = 20_000
REPLAY_ROUNDS = 8


def test_drain_batch(benchmark, record, tmp_path, ring_name):
    """Drainer.drain_once of a full 20,000-record lane into SQLite."""
    from bench.test_drain import realistic_records
    from daemon.drain import Drainer
    from daemon.store import Store
    from livemon.ipc import open_rings

    config = load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / "drain.db"),
            "lanes": 1,
            "capacity_records": REPLAY_BATCH,
        }
    )
    events, labels = open_rings(config)
    writer = events.writer()
    store = Store(config.db)
    drainer = Drainer(config, events, labels, lambda: store)
    records = realistic_records(REPLAY_BATCH, 3)
    moved = []

    def fill():
        assert writer.put_many(records) == REPLAY_BATCH

    benchmark.pedantic(
        lambda: moved.append(drainer.drain_once()),
        setup=fill,
        rounds=REPLAY_ROUNDS,
    )
    assert set(moved) == {REPLAY_BATCH}
    record(benchmark, items=REPLAY_BATCH)
    drainer.close()
    writer.close()
    events.close()
    labels.close()


def test_replay_batch(benchmark, record, tmp_path, ring_name):
    """SpillReplayer.replay_once of 20,000 spilled records into SQLite
    (read, CRC, insert, commit, retire): must keep up with the drain."""
    from bench.test_drain import realistic_records
    from daemon.replay import SpillReplayer
    from daemon.store import Store
    from livemon.spill import LaneSpill

    spill_root = tmp_path / "spill"
    store = Store(str(tmp_path / "replay.db"))
    replayer = SpillReplayer(spill_root, ring_name, store)
    records = [r.tobytes() for r in realistic_records(REPLAY_BATCH, 3)]
    lanes = iter(range(4096))
    moved = []

    def spill_a_lane():
        lane_spill = LaneSpill.open(
            spill_root,
            ring_name,
            EPOCH,
            next(lanes),
            RECORD_DTYPE,
            min_free_bytes=0,
        )
        for packed in records:
            lane_spill.put(packed)
        lane_spill.close()

    benchmark.pedantic(
        lambda: moved.append(replayer.replay_once(REPLAY_BATCH)),
        setup=spill_a_lane,
        rounds=REPLAY_ROUNDS,
    )
    assert set(moved) == {REPLAY_BATCH}
    assert replayer.backlog()["records"] == 0
    record(benchmark, items=REPLAY_BATCH, baseline="test_drain_batch")
    store.close()


@pytest.mark.parametrize(
    "lanes_a_step", [STEP_BATCHES, 1], ids=["replay-step", "drain-sized-step"]
)
def test_replay_vs_drain_interleaved(
    benchmark, record, tmp_path, ring_name, lanes_a_step
):
    """Replay and drain of the same records, alternating in every round (a
    shared CPU's load then weighs on both alike): replay per record over
    drain per record is in ``extra_info`` and printed.

    The drain takes 20,000 records a step (its batch, all the ring
    holds); a replay step takes ``lanes_a_step`` spilled lanes of 20,000:
    ``replay-step`` is the daemon's (``STEP_BATCHES`` batches, a backlog
    being caught up), ``drain-sized-step`` the drain's size, for scale.
    Every replay step reads, CRC-checks, commits, fsyncs and unlinks.
    """
    import time

    from bench.test_drain import realistic_records
    from daemon.drain import Drainer
    from daemon.replay import SpillReplayer
    from daemon.store import Store
    from livemon.ipc import open_rings
    from livemon.spill import LaneSpill

    config = load_config(
        {
            "ring": ring_name,
            "db": str(tmp_path / "drain.db"),
            "lanes": 1,
            "capacity_records": REPLAY_BATCH,
        }
    )
    events, labels = open_rings(config)
    writer = events.writer()
    drain_store = Store(config.db)
    drainer = Drainer(config, events, labels, lambda: drain_store)
    records = realistic_records(REPLAY_BATCH, 3)
    packed = [r.tobytes() for r in records]
    spill_root = tmp_path / "spill"
    replay_store = Store(str(tmp_path / "replay.db"))
    replayer = SpillReplayer(spill_root, ring_name, replay_store)
    lanes = iter(range(4096))
    step = lanes_a_step * REPLAY_BATCH
    drain_s: list[float] = []
    moved = []

    def drain_then_spill():
        for _ in range(lanes_a_step):
            assert writer.put_many(records) == REPLAY_BATCH
            started = time.perf_counter()
            assert drainer.drain_once() == REPLAY_BATCH
            drain_s.append(time.perf_counter() - started)
            lane_spill = LaneSpill.open(
                spill_root,
                ring_name,
                EPOCH,
                next(lanes),
                RECORD_DTYPE,
                min_free_bytes=0,
            )
            for one in packed:
                lane_spill.put(one)
            lane_spill.close()

    benchmark.pedantic(
        lambda: moved.append(replayer.replay_once(step)),
        setup=drain_then_spill,
        rounds=max(2 * REPLAY_ROUNDS // lanes_a_step, 6),
    )
    assert set(moved) == {step}
    assert replayer.backlog()["records"] == 0  # every segment retired
    drain_us = float(np.median(drain_s)) / REPLAY_BATCH * 1e6
    replay = record(benchmark, items=step)
    ratio = replay["median_us"] / drain_us
    benchmark.extra_info.update(drain_us=drain_us, replay_over_drain=ratio)
    print(
        f"\nreplay {replay['median_us']:.2f} us/record ({step} a step), "
        f"drain {drain_us:.2f} us/record: replay/drain {ratio:.2f}"
    )
    for closing in (drainer, writer, events, labels, replay_store):
        closing.close()
