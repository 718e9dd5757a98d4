"""
Forwarded batches bounded in bytes as well as rows: the cheap size
estimate, the byte-bounded read, the settings that name the budget per
sink, the forwarder's one read-ahead at a time, and (marker
``clickhouse``) inserts into a real server split by the budget.
"""

from __future__ import annotations

import time

import pytest

from daemon.forward import BATCH_BYTES, Forwarder, read_rows
from daemon.forwarding import Forwarding
from daemon.outbox import VALUE_BYTES, row_bytes
from daemon.sinks import configured, otlp
from daemon.sinks.clickhouse import ClickHouseDestination
from daemon.store import Store
from livemon.config import load_config
from livemon.exceptions import ConfigError
from livemon.record import label_id
from tests.daemon.sinks.conftest import (
    Recording,
    add_agent_runs,
    event_batch,
    label_batch,
)
from tests.daemon.sinks.test_forward import FAST, wait_for

LONG = "e" * 4096  # an error text at the recorder's limit
REASON = "r" * 4096


def add_long_rows(store: Store, count: int, lane: int = 5) -> None:
    """``count`` failed requests (ids above the store fixture's) whose
    error and override reason are 4 KiB each."""
    batch = event_batch(count, lane=lane, first_seq=1000)
    batch.records["success"] = 0
    batch.records["error"] = label_id(LONG)
    batch.records["override_reason"] = label_id(REASON)
    store.write(1, [label_batch(LONG, REASON)], [batch])


def stop(forwarder: Forwarder) -> bool:
    """Stop ``forwarder`` at once (nothing left to flush); whether it
    ended within 10 s."""
    forwarder.request_stop(time.monotonic())
    return forwarder.join(time.monotonic() + 10)


def estimated(rows) -> list[int]:
    """Each row's estimate, from a column batch."""
    names = list(rows.columns)
    return [
        row_bytes([rows.columns[n][i] for n in names])
        for i in range(len(rows))
    ]


class TestEstimate:
    def test_texts_count_their_length_numbers_a_word(self):
        """Texts by length (characters), anything else VALUE_BYTES."""
        assert row_bytes((1, 2.5, None, "abc", "")) == 3 + 3 * VALUE_BYTES
        assert row_bytes(("\U0001f642" * 10,)) == 10
        assert row_bytes(()) == 0

    def test_a_long_row_weighs_its_texts(self, store):
        """A row with two 4 KiB texts estimates above 8 KiB, an ordinary
        one a few hundred bytes (20,000 of them fit the default)."""
        add_long_rows(store, 1)
        rows = read_rows(store.db, "events", 0, 1000)
        *ordinary, long = estimated(rows)
        assert 2 * 4096 < long < 2 * 4096 + 1000
        assert max(ordinary) * 20_000 < BATCH_BYTES


class TestByteBoundedRead:
    def test_stops_at_the_row_that_reaches_the_budget(self, store):
        """Rows are added until their estimate reaches max_bytes: the
        batch is under the budget plus one row, and the next read starts
        right after it, so nothing is skipped."""
        add_long_rows(store, 100)
        ids = read_rows(store.db, "events", 0, 1000).columns["id"]
        budget = 64 * 2**10
        seen: list[int] = []
        mark = ids[249]  # after the 250 ordinary rows
        while rows := read_rows(store.db, "events", mark, 1000, budget):
            sizes = estimated(rows)
            assert sum(sizes[:-1]) < budget
            assert sum(sizes) >= budget or rows.last_id == ids[-1]
            seen += rows.columns["id"]
            mark = rows.last_id
        assert seen == ids[250:]
        assert len(seen) == 100

    def test_a_row_larger_than_the_budget_still_moves(self, store):
        """One row per batch, never none: a huge row cannot stall."""
        add_long_rows(store, 3)
        first = read_rows(store.db, "events", 250, 1000, max_bytes=1)
        assert len(first) == 1
        assert first.columns["error"] == [LONG]

    def test_the_row_limit_still_holds(self, store):
        """A budget far above the rows keeps the row limit."""
        assert len(read_rows(store.db, "events", 0, 40, 2**40)) == 40

    def test_a_budget_below_one_is_refused(self, store):
        """0 and negative budgets are caller errors, with the fix."""
        for bad in (0, -5):
            with pytest.raises(ValueError, match="max_bytes must be"):
                read_rows(store.db, "events", 0, 10, bad)


class TestSettings:
    def test_defaults_are_the_sinks_defaults(self, tmp_path):
        """The config's defaults are the sinks' own, and configured()
        hands them on: 8 MiB for ClickHouse, 3 MiB for OTLP."""
        config = load_config(
            {
                "db": str(tmp_path / "u.db"),
                "clickhouse_url": "clickhouse://127.0.0.1:1/x",
                "otlp_endpoint": "http://127.0.0.1:1",
            }
        )
        assert config.clickhouse_batch_bytes == BATCH_BYTES == 8 * 2**20
        assert config.otlp_batch_bytes == otlp.BATCH_BYTES == 3 * 2**20
        sinks = {d.name: d for d in configured(config, "h")}
        assert sinks["clickhouse"].batch_bytes == BATCH_BYTES
        assert sinks["otlp"].batch_bytes == otlp.BATCH_BYTES

    def test_each_sink_has_its_own(self, tmp_path):
        """LIVEMON_*_BATCH_BYTES set each sink's budget."""
        env = {
            "LIVEMON_DB": str(tmp_path / "u.db"),
            "LIVEMON_CLICKHOUSE_URL": "clickhouse://127.0.0.1:1/x",
            "LIVEMON_OTLP_ENDPOINT": "http://127.0.0.1:1",
            "LIVEMON_CLICKHOUSE_BATCH_BYTES": str(32 * 2**20),
            "LIVEMON_OTLP_BATCH_BYTES": str(2**20),
        }
        sinks = {d.name: d for d in configured(load_config(env=env), "h")}
        assert sinks["clickhouse"].batch_bytes == 32 * 2**20
        assert sinks["otlp"].batch_bytes == 2**20

    @pytest.mark.parametrize(
        "name", ["clickhouse_batch_bytes", "otlp_batch_bytes"]
    )
    @pytest.mark.parametrize("value", [0, 1000, 2**30 + 1])
    def test_out_of_range_is_refused_with_the_range(
        self, tmp_path, name, value
    ):
        """Below 64 KiB (a typo) or above 1 GiB: a ConfigError naming
        the setting and the range."""
        with pytest.raises(ConfigError, match=f"{name} must be 64 KiB"):
            load_config({"db": str(tmp_path / "u.db"), name: value})

    def test_sinks_check_their_own(self):
        """A sink built by hand refuses a budget below one byte."""
        with pytest.raises(ValueError, match="batch_bytes"):
            ClickHouseDestination("clickhouse://h/x", "h", batch_bytes=0)
        with pytest.raises(ValueError, match="batch_bytes"):
            otlp.OtlpDestination("http://h:1", "h", version="0", batch_bytes=0)


class Sized(Recording):
    """A Recording that names its budget and notes the read-aheads held
    by its forwarder at each ship."""

    def __init__(self, batch_bytes, sources=("events",)):
        super().__init__(sources=sources)
        self.batch_bytes = batch_bytes
        self.forwarder: Forwarder | None = None
        self.held: list[int] = []

    def ship(self, source, rows) -> None:
        self.held.append(len(self.forwarder._next))
        super().ship(source, rows)


class TestForwarder:
    def test_the_destinations_budget_bounds_each_batch(self, store):
        """A destination's batch_bytes bounds what it is handed; every
        row still arrives once."""
        add_long_rows(store, 60)
        dest = Sized(64 * 2**10)
        forwarder = Forwarder(store.path, dest, backoff=FAST, idle_s=0.02)
        dest.forwarder = forwarder
        assert forwarder.batch_bytes == 64 * 2**10
        forwarder.start()
        try:
            wait_for(lambda: len(dest.ids()) == 310)
        finally:
            assert stop(forwarder)
        assert dest.ids() == sorted(set(dest.ids()))
        long_batches = [r for r in dest.shipped["events"] if len(r) < 100]
        assert len(long_batches) >= 60 * 8 * 2**10 // (64 * 2**10)
        for rows in dest.shipped["events"]:
            assert sum(estimated(rows)[:-1]) < 64 * 2**10

    @pytest.mark.parametrize("bad", [0, -1, "8MiB", 1.5, True])
    def test_a_bad_budget_is_refused(self, store, bad):
        """Not a whole number of bytes >= 1: refused, naming the sink."""
        with pytest.raises(ValueError, match="'recording': batch_bytes"):
            Forwarder(store.path, Recording(), batch_bytes=bad)

    def test_without_one_the_default(self, store):
        """A destination naming no budget gets BATCH_BYTES."""
        assert Forwarder(store.path, Recording()).batch_bytes == BATCH_BYTES

    def test_one_read_ahead_at_a_time(self, store):
        """Two busy sources: while one batch ships at most one other is
        read ahead (about two batches held), and both ship whole."""
        add_agent_runs(store.db, 300)
        dest = Sized(BATCH_BYTES, sources=("events", "agent_runs"))
        forwarder = Forwarder(
            store.path, dest, batch_rows=20, backoff=FAST, idle_s=0.02
        )
        dest.forwarder = forwarder
        forwarder.start()
        try:
            wait_for(lambda: len(dest.ids("agent_runs")) == 300)
            wait_for(lambda: len(dest.ids()) == 250)
        finally:
            assert stop(forwarder)
        assert max(dest.held) == 1  # read ahead, but never for both
        assert dest.ids("agent_runs") == sorted(set(dest.ids("agent_runs")))


def insert_queries(server) -> int:
    """How many INSERT queries the server has taken since it started."""
    found = server.query(
        "SELECT value FROM system.events WHERE event = 'InsertQuery'"
    )
    return int(found[0][0]) if found else 0


@pytest.mark.clickhouse
def test_clickhouse_inserts_are_split_by_bytes(store, clickhouse):
    """Rows with 4 KiB texts go to a real server in inserts bounded by
    the sink's batch_bytes (counted by the server), each row once."""
    add_long_rows(store, 200)
    dest = ClickHouseDestination(
        clickhouse.url("bytes"), "h", batch_bytes=256 * 2**10
    )
    group = Forwarding(store.path, [dest], backoff=FAST, idle_s=0.02)
    group.start()
    try:
        wait_for(lambda: group.figures()[0]["shipped_rows"] == 450, 60)
    finally:
        assert group.stop(10.0)
    # One insert per batch the budget cuts: 200 rows of ~8.4 KB in 256
    # KiB batches make 7 or more (the 250 small rows share the first).
    batches, mark = 0, 0
    while rows := read_rows(store.db, "events", mark, 20_000, 256 * 2**10):
        batches, mark = batches + 1, rows.last_id
    assert batches >= 7
    assert insert_queries(clickhouse) == batches
    assert clickhouse.query(
        "SELECT count(), uniqExact(epoch, lane, seq), max(length(error)) "
        "FROM bytes.events FINAL"
    ) == [(450, 450, 4096)]
