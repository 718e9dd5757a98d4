"""
The ClickHouse sink's shipping rate into a local clickhouse-server, and
the SQLite drain's rate while the sink ships from the same database (its
own thread and connection, as in the daemon), against the drain alone.
"""

from __future__ import annotations

import time

import pytest

import ringbuf
from bench.test_drain import BATCH, PER_ROUND, producers, realistic_records
from daemon.drain import Drainer
from daemon.forward import Forwarder
from daemon.sinks.clickhouse import ClickHouseDestination
from daemon.store import Store
from tests.daemon.sinks.clickhouse_server import ClickHouseServer, available

pytestmark = pytest.mark.benchmark(group="clickhouse")

BACKLOG = 400_000  # rows waiting to ship: the sink stays busy throughout
_RATES: dict[str, float] = {}
_BUSY = [False]  # the drain's last step moved half a batch or more
__all__ = ["producers"]  # the fixture, shared with test_drain


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A clickhouse-server on loopback (skipped where none is installed)."""
    if not available():
        pytest.skip("clickhouse-server is not installed (see .ci/run)")
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    server.start()
    yield server
    server.stop()


def backlog(path: str, rows: int = BACKLOG) -> None:
    """A database holding ``rows`` events nobody shipped yet."""
    store = Store(path)
    records = realistic_records(BATCH, 5)
    for start in range(0, rows, BATCH):
        store.write(7, [], [ringbuf.Batch(1, start, records)])
    store.close()


def shipping(path: str, server, database: str) -> Forwarder:
    """A started forwarder shipping ``path`` into ``database``, told when
    the drain is busy as the daemon's loop tells it."""
    forwarder = Forwarder(
        path,
        ClickHouseDestination(server.url(database), "bench"),
        drain_busy=lambda: _BUSY[0],
    )
    forwarder.start()
    return forwarder


def test_sink_ships_a_backlog(benchmark, record, server, tmp_path):
    """Forwarder + ClickHouse sink: 400,000 waiting rows into the server."""
    path = str(tmp_path / "ship.db")
    backlog(path)
    runs = iter(range(100))

    def ship_all():
        forwarder = shipping(path, server, f"ship{next(runs)}")
        while forwarder.figures()["shipped_rows"] < BACKLOG:
            assert forwarder.failures == 0, forwarder.last_error
            time.sleep(0.002)
        forwarder.request_stop(time.monotonic())
        assert forwarder.join(time.monotonic() + 10)

    benchmark.pedantic(ship_all, rounds=3)
    result = record(benchmark, items=BACKLOG)
    rate = 1e6 / result["median_us"]
    print(f"\nsink: {rate:,.0f} rows/s into clickhouse-server")
    counted = server.query("SELECT count() FROM ship0.events FINAL")[0][0]
    assert counted == BACKLOG
    assert rate >= 100_000


def drain_rate(benchmark, config, events, labels, path) -> float:
    """Records per second Drainer.drain_once commits into ``path``."""
    drainer = Drainer(config, events, labels, lambda: Store(path))

    def drain_round():
        moved = 0
        while moved < PER_ROUND:
            step = drainer.drain_once()
            _BUSY[0] = step >= config.batch_records // 2  # as Service._loop
            moved += step

    benchmark.pedantic(drain_round, rounds=5)
    drainer.close()
    return 1e6 / benchmark.stats.stats.median * PER_ROUND / 1e6


def test_drain_alone(benchmark, record, producers, tmp_path):
    """The drain with two producers, a backlog in the database, no sink."""
    path = str(tmp_path / "alone.db")
    backlog(path)
    _RATES["alone"] = drain_rate(benchmark, *producers, path)
    record(benchmark, items=PER_ROUND)
    print(f"\ndrain alone: {_RATES['alone']:,.0f} records/s")


def test_drain_while_the_sink_ships(
    benchmark, record, producers, server, tmp_path
):
    """The same drain while the sink ships the backlog and what the drain
    adds: it must keep at least 80% of its rate alone."""
    path = str(tmp_path / "shipping.db")
    backlog(path)
    forwarder = shipping(path, server, "drain")
    try:
        rate = drain_rate(benchmark, *producers, path)
        shipped = forwarder.figures()["shipped_rows"]
    finally:
        forwarder.request_stop(time.monotonic())
        forwarder.join(time.monotonic() + 10)
    record(benchmark, items=PER_ROUND, baseline="test_drain_alone")
    ratio = rate / _RATES["alone"]
    print(
        f"\ndrain while shipping: {rate:,.0f} records/s "
        f"({ratio:.0%} of alone); the sink shipped {shipped:,} meanwhile"
    )
    assert shipped > 0 and forwarder.failures == 0
    assert ratio >= 0.8
