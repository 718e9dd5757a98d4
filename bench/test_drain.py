"""
Sustained drain rate into SQLite (indexes in place) with two producer
processes writing, against raw ``executemany`` of the same rows.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

import ringbuf
from daemon.drain import Drainer
from daemon.store import Store
from livemon.config import load_config
from livemon.db.rows import INSERT_EVENTS, event_rows, list_columns
from livemon.ipc import open_rings
from livemon.record import RECORD_DTYPE, label_id

pytestmark = pytest.mark.benchmark(group="drain")

PER_ROUND = 100_000
BATCH = 20_000
ROUNDS = 5  # the inserts wait on WAL syncs now and then: a median of 5


AGENTS = [label_id(f"agent-{n}") for n in range(12)]
CATEGORIES = [label_id(f"category-{n}") for n in range(8)]
ERRORS = [label_id(f"error-{n}") for n in range(20)]


def realistic_records(count: int, seed: int) -> np.ndarray:
    """Records as a coordinator writes them: label ids (64-bit hashes) for
    agents and categories, one to three agents a request, latencies,
    outcomes, half the requests scored, 5% failed with an error text."""
    rng = np.random.default_rng(seed)
    records = np.zeros(count, RECORD_DTYPE)
    records["timestamp_ns"] = time.time_ns() + np.arange(count)
    records["request_id"] = rng.integers(0, 2**62, count)
    records["query_hash"] = rng.integers(-(2**62), 2**62, count)
    records["intent_category"] = rng.choice(CATEGORIES, count)
    records["confidence"] = rng.random(count)
    records["suggested_agents"][:, :2] = rng.choice(AGENTS, (count, 2))
    records["actual_agents"][:, 0] = rng.choice(AGENTS, count)
    for slot, share in ((1, 0.3), (2, 0.1)):
        more = rng.random(count) < share
        records["actual_agents"][more, slot] = rng.choice(AGENTS, more.sum())
    records["execution_time_ms"] = rng.lognormal(6, 1, count)
    records["success"] = rng.random(count) < 0.95
    records["accepted"] = rng.choice([-1, 0, 1, 1, 1], count)
    records["quality_score"] = np.where(
        rng.random(count) < 0.5, rng.random(count), np.nan
    )
    records["token_count"] = rng.integers(50, 4000, count)
    failed = records["success"] == 0
    records["error"][failed] = rng.choice(ERRORS, failed.sum())
    return records


def produce(name: str, seed: int, stop) -> None:
    """A producer process: put_many batches until told to stop."""
    with ringbuf.Ring.attach(name, RECORD_DTYPE) as ring:
        writer = ring.writer()
        records = realistic_records(1000, seed)
        while not stop.is_set():
            if writer.put_many(records) < len(records):
                time.sleep(0.0005)  # lane full: the drainer is behind
        writer.close()


@pytest.fixture
def producers(ring_name):
    """Two producer processes keeping the ring full while we drain."""
    config = load_config({"ring": ring_name, "capacity_records": 65536})
    events, labels = open_rings(config)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs = [
        ctx.Process(target=produce, args=(ring_name, s, stop))
        for s in range(2)
    ]
    for proc in procs:
        proc.start()
    yield config, events, labels
    stop.set()
    for proc in procs:
        proc.join(timeout=30)
    events.close()
    labels.close()


def test_raw_executemany_baseline(benchmark, record, tmp_path):
    """executemany of prebuilt rows into the same schema (baseline).

    Only the inserts are timed (one transaction per batch, as the drain
    commits); the rows are built from numpy before each round.
    """
    store = Store(str(tmp_path / "raw.db"))
    records = realistic_records(BATCH, 7)
    first = [0]

    def build_rows():
        batches = []
        for _ in range(PER_ROUND // BATCH):
            batch = ringbuf.Batch(0, first[0], records)
            ids = list_columns(batch.records, store._lists)
            batches.append(list(event_rows(1, batch, ids)))
            first[0] += BATCH
        return (batches,), {}

    def insert_round(batches):
        for rows in batches:
            with store.atomic() as db:
                db.executemany(INSERT_EVENTS, rows)

    benchmark.pedantic(insert_round, setup=build_rows, rounds=ROUNDS)
    result = record(benchmark, items=PER_ROUND)
    print(f"\nraw executemany: {1e6 / result['median_us']:,.0f} rows/s")
    count = store.db.execute("SELECT count(*) FROM events").fetchone()
    assert count[0] == first[0]
    store.close()


def test_drain_with_two_producers(benchmark, record, producers, tmp_path):
    """Drainer.drain_once until 100,000 records are committed (its ratio
    against the quiet raw baseline, as the issue measured it)."""
    config, events, labels = producers
    drainer = Drainer(
        config, events, labels, lambda: Store(str(tmp_path / "drain.db"))
    )
    lags = []

    def drain_round():
        moved = 0
        while moved < PER_ROUND:
            moved += drainer.drain_once()
        lags.append(sum(s.pending for s in drainer.lanes()))

    benchmark.pedantic(drain_round, rounds=ROUNDS)
    result = record(
        benchmark, items=PER_ROUND, baseline="test_raw_executemany_baseline"
    )
    rate = 1e6 / result["median_us"]
    print(
        f"\ndrain: {rate:,.0f} records/s, lag median "
        f"{int(np.median(lags))} max {max(lags)} records"
    )
    count = drainer.store.db.execute("SELECT count(*) FROM events").fetchone()
    assert count[0] == drainer.drained >= ROUNDS * PER_ROUND
    drainer.close()


def test_drain_and_raw_interleaved(record_samples, producers, tmp_path):
    """The drain against the raw baseline under the same conditions, in
    alternate rounds of 100,000 (order swapped each round), the same two
    producers writing through both: the raw round consumes their records
    from the ring as the drain does and inserts prebuilt rows in their
    place.  The ratio is then the drain's own work (rows from numpy,
    lists, rollups, bookkeeping), not the producers' share of the
    machine, and slow WAL syncs fall on both alike."""
    config, events, labels = producers
    raw = Store(str(tmp_path / "raw.db"))
    drainer = Drainer(
        config, events, labels, lambda: Store(str(tmp_path / "drain.db"))
    )
    records = realistic_records(BATCH, 7)
    inserted = 0

    def prebuilt() -> list[list[tuple[object, ...]]]:
        nonlocal inserted
        batches = []
        for _ in range(PER_ROUND // BATCH):
            batch = ringbuf.Batch(0, inserted, records)
            ids = list_columns(batch.records, raw._lists)
            batches.append(list(event_rows(1, batch, ids)))
            inserted += BATCH
        return batches

    def raw_round(batches: list[list[tuple[object, ...]]]) -> None:
        for rows in batches:
            left = len(rows)
            while left > 0:
                for lane in range(events.lanes):
                    batch = events.pending(lane, left)
                    if len(batch.records):
                        events.advance(lane, batch.end_seq)
                        left -= len(batch.records)
            with raw.atomic() as db:
                db.executemany(INSERT_EVENTS, rows)

    def drain_round() -> None:
        moved = 0
        while moved < PER_ROUND:
            moved += drainer.drain_once()

    samples: dict[str, list[int]] = {"raw": [], "drain": []}
    for turn in range(2 * ROUNDS + 2):
        batches = prebuilt()
        for name in ("raw", "drain") if turn % 2 else ("drain", "raw"):
            started = time.perf_counter_ns()
            if name == "raw":
                raw_round(batches)
            else:
                drain_round()
            took = time.perf_counter_ns() - started
            samples[name].append(took // PER_ROUND)
    baseline = "raw executemany, producers running"
    raw_result = record_samples(baseline, samples["raw"])
    drain_result = record_samples(
        "drain, interleaved with raw", samples["drain"], baseline=baseline
    )
    print(
        f"\ndrain / raw, same conditions: "
        f"{drain_result['median_us'] / raw_result['median_us']:.2f}x"
    )
    count = raw.db.execute("SELECT count(*) FROM events").fetchone()
    assert count[0] == inserted
    assert drainer.drained >= len(samples["drain"]) * PER_ROUND
    drainer.close()
    raw.close()


@pytest.mark.parametrize(
    "retention",
    [False, True],
    ids=lambda on: f"retention={'on' if on else 'off'}",
)
def test_drain_with_old_rows(
    benchmark, record, producers, tmp_path, retention
):
    """Drain into a database holding 300,000 rows older than 90 days,
    with and without retention moving them out meanwhile."""
    from daemon.retention import DAEMON_SHARE, NS_PER_DAY, Retention

    config, events, labels = producers
    path = str(tmp_path / "retained.db")
    store = Store(path)
    old = realistic_records(BATCH, 11)
    old["timestamp_ns"] -= 200 * NS_PER_DAY
    for start in range(0, 300_000, BATCH):
        store.write(99, [], [ringbuf.Batch(0, start, old)])
    store.close()
    drainer = Drainer(config, events, labels, lambda: Store(path))
    drainer.drain_once()  # opens the store
    mover = Retention(drainer.store, 90, str(tmp_path / "archive"))

    def drain_round():
        drained = 0
        while drained < PER_ROUND:
            drained += drainer.drain_once()
            if retention:
                mover.step_within(DAEMON_SHARE)  # as the daemon's loop does

    benchmark.pedantic(drain_round, rounds=6)
    baseline = "test_drain_with_old_rows[retention=off]" if retention else None
    result = record(benchmark, items=PER_ROUND, baseline=baseline)
    moved = (
        300_000
        - drainer.store.db.execute(
            "SELECT count(*) FROM events WHERE epoch = 99"
        ).fetchone()[0]
    )
    print(
        f"\ndrain: {1e6 / result['median_us']:,.0f} records/s, "
        f"{moved:,} old rows moved meanwhile"
    )
    assert (moved > 0) == retention
    drainer.close()
