"""
The store: schema and migrations, the seed's view, idempotent batches,
ring -> store -> query round trips, corruption refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringbuf
from daemon.exceptions import DatabaseCorrupt, DatabaseFull, DatabaseReplaced
from daemon.store import Store
from livemon.db import schema
from livemon.record import (
    LABEL_DTYPE,
    LIST_FIELDS,
    RECORD_DTYPE,
    label_id,
    label_record,
    list_label_id,
)
from tests import mounts

SEED_COLUMNS = [
    "id",
    "timestamp",
    "event_type",
    "query_hash",
    "query_category",
    "query_complexity",
    "intent_category",
    "intent_domains",
    "suggested_agents",
    "routing_strategy",
    "confidence",
    "actual_agents",
    "accepted",
    "override_reason",
    "execution_time_ms",
    "success",
    "error",
    "quality_score",
    "task_completed",
    "code_valid",
    "tests_passed",
    "token_count",
    "context_size_kb",
]


@pytest.fixture
def store(tmp_path):
    """A fresh store in a temporary directory."""
    store = Store(str(tmp_path / "unified_monitoring.db"))
    yield store
    store.close()


def labels_batch(*texts: str) -> ringbuf.Batch:
    """A batch of label records for ``texts``."""
    raw = b"".join(label_record(t) for t in texts)
    return ringbuf.Batch(0, 0, np.frombuffer(raw, LABEL_DTYPE).copy())


def events_batch(records, lane=0, first_seq=0) -> ringbuf.Batch:
    """A batch of event records as the ring would hand them out."""
    return ringbuf.Batch(lane, first_seq, records)


def one_event(**fields) -> np.ndarray:
    """A single record: unknowns everywhere, then ``fields``."""
    record = np.zeros(1, RECORD_DTYPE)
    for name in (
        "confidence",
        "execution_time_ms",
        "quality_score",
        "context_size_kb",
    ):
        record[name] = np.nan
    for name in (
        "accepted",
        "success",
        "task_completed",
        "code_valid",
        "tests_passed",
        "token_count",
        "query_complexity",
    ):
        record[name] = -1
    for name, value in fields.items():
        record[name] = value
    return record


class TestSchema:
    def test_migrations_are_recorded_in_order(self, store):
        """Every migration is applied once and named in the database."""
        names = [name for name, _ in schema.MIGRATIONS]
        assert schema.applied(store.db) == names
        assert schema.pending(store.db) == []
        assert schema.apply_migrations(store.db) == []

    def test_reopening_applies_nothing_new(self, store):
        """A second Store on the same file keeps the recorded history."""
        Store(store.path).close()
        count = store.db.execute(
            f"SELECT count(*) FROM {schema.MIGRATIONS_TABLE}"
        ).fetchone()[0]
        assert count == schema.SCHEMA_VERSION

    def test_view_has_exactly_the_seed_columns(self, store):
        """Dashboards written for the seed's table run unchanged."""
        cursor = store.db.execute("SELECT * FROM monitoring_events")
        assert [d[0] for d in cursor.description] == SEED_COLUMNS

    def test_wal_and_indexes(self, store):
        """WAL mode, and the seed's indexes serve its queries."""
        db = store.db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = " ".join(
            str(row)
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM events "
                "WHERE timestamp_ns > 5"
            )
        )
        assert "idx_timestamp" in plan
        indexes = {r[1] for r in db.execute("PRAGMA index_list(events)")}
        assert {
            "idx_timestamp",
            "idx_query_hash",
            "idx_event_type",
            "idx_events_identity",
        } <= indexes

    def test_new_database_is_owner_only(self, tmp_path):
        """The file is created 0600 unless group access is configured."""
        path = tmp_path / "x.db"
        Store(str(path)).close()
        assert path.stat().st_mode & 0o777 == 0o600
        Store(str(tmp_path / "g.db"), mode=0o660).close()
        assert (tmp_path / "g.db").stat().st_mode & 0o777 == 0o660


class TestWrites:
    def test_view_rebuilds_text_and_json(self, store):
        """Label ids become texts, lists JSON arrays in their order."""
        from livemon.record import label_id

        texts = ["code", "reviewer", "coder", "timeout"]
        record = one_event(
            timestamp_ns=1_700_000_000_123_000_000,
            intent_category=label_id("code"),
            error=label_id("timeout"),
            success=0,
            confidence=0.5,
        )
        record["suggested_agents"][0, :2] = [
            label_id("reviewer"),
            label_id("coder"),
        ]
        store.write(1, [labels_batch(*texts)], [events_batch(record)])
        row = store.db.execute(
            "SELECT timestamp, event_type, intent_category, "
            "suggested_agents, actual_agents, error, success, accepted, "
            "quality_score, token_count FROM monitoring_events"
        ).fetchone()
        assert row == (
            "2023-11-14 22:13:20.123",
            "request",
            "code",
            '["reviewer","coder"]',
            "[]",
            "timeout",
            0,
            None,
            None,
            None,
        )

    def test_replayed_batch_adds_nothing(self, store):
        """Same (epoch, lane, seq): ignored, so a crash replay is safe."""
        batch = events_batch(np.repeat(one_event(), 5), lane=2, first_seq=7)
        assert store.write(9, [], [batch]) == 5
        assert store.write(9, [], [batch]) == 0
        assert store.write(10, [], [batch]) == 5  # a new ring epoch
        assert store.db.execute("SELECT count(*) FROM events").fetchone() == (
            10,
        )

    def test_failed_batch_leaves_nothing(self, store):
        """One transaction: an error rolls back labels and events."""
        bad = ringbuf.Batch(0, 0, np.zeros(1, [("x", "<u8")]))
        with pytest.raises(ValueError):
            store.write(1, [labels_batch("a")], [bad])
        assert store.db.execute("SELECT count(*) FROM labels").fetchone() == (
            0,
        )

    def test_nested_atomic_uses_savepoints(self, store):
        """An inner failure rolls back only the inner block."""
        with store.atomic() as db:
            db.execute("INSERT INTO labels VALUES (1, 'kept')")
            with pytest.raises(RuntimeError), store.atomic():
                db.execute("INSERT INTO labels VALUES (2, 'gone')")
                raise RuntimeError("inner")
        assert store.db.execute("SELECT text FROM labels").fetchall() == [
            ("kept",)
        ]


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs (root only)."""
    with mounts.tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


class TestHeadroom:
    """``min_free_bytes``, on a real small filesystem."""

    def test_adding_is_refused_short_of_the_headroom(self, small_disk):
        store = Store(str(small_disk / "u.db"), min_free_bytes=2**22)
        try:
            with pytest.raises(DatabaseFull, match="db_min_free_bytes"):
                store.write(1, [labels_batch("a")], [])
            with pytest.raises(DatabaseFull):
                store.add_health(pid=1)
            assert store.db.execute(
                "SELECT count(*) FROM labels"
            ).fetchone() == (0,)
            with store.atomic(grows=False) as db:  # deleting makes room
                db.execute("DELETE FROM labels")
        finally:
            store.close()

    @pytest.mark.parametrize("via", ["path", "symlink"])
    def test_within_the_headroom_a_checkpoint_makes_the_room(
        self, small_disk, tmp_path, via
    ):
        """A WAL that eats into the headroom is checkpointed, then the
        transaction goes ahead; also when the database is reached through
        a symlink (its WAL is beside the file, not the link)."""
        path = small_disk / "u.db"
        if via == "symlink":
            (tmp_path / "link.db").symlink_to(path)
            path = tmp_path / "link.db"
        store = Store(str(path))
        wal = str(small_disk / "u.db-wal")
        try:
            store.db.execute("PRAGMA wal_autocheckpoint = 0")
            store.checkpoint()
            seq = 0
            while os.path.getsize(wal) < 2**19:
                batch = events_batch(np.repeat(one_event(), 50), 0, seq)
                seq += store.write(1, [], [batch])
            fs = os.statvfs(small_disk)
            # One byte short of the WAL's size plus the headroom.
            store.min_free_bytes = (
                fs.f_bavail * fs.f_frsize - os.path.getsize(wal) + 1
            )
            store.write(1, [], [events_batch(one_event(), 0, seq)])
            assert os.path.getsize(wal) < 2**19  # checkpointed first
            assert store.db.execute(
                "SELECT count(*) FROM events"
            ).fetchone() == (seq + 1,)
        finally:
            store.close()


finite = st.floats(min_value=0, max_value=1e9, allow_nan=False)
flag = st.sampled_from([-1, 0, 1])


@st.composite
def records(draw):
    """Arrays of records with arbitrary (valid) field values."""
    count = draw(st.integers(min_value=1, max_value=20))
    array = np.zeros(count, RECORD_DTYPE)
    for i in range(count):
        array["timestamp_ns"][i] = draw(st.integers(0, 2**62))
        array["request_id"][i] = draw(st.integers(-(2**63), 2**63 - 1))
        array["query_hash"][i] = draw(st.integers(-(2**63), 2**63 - 1))
        array["confidence"][i] = draw(st.one_of(st.just(math.nan), finite))
        array["success"][i] = draw(flag)
        array["token_count"][i] = draw(st.integers(-1, 2**40))
        array["suggested_agents"][i] = draw(
            st.lists(st.integers(-(2**63), 2**63 - 1), min_size=8, max_size=8)
        )
    return array


class TestRoundTrip:
    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(batch=records())
    def test_ring_to_store_to_query_equals_the_input(
        self, store, make_ring, batch
    ):
        """Property: records through a real ring and SQLite come back equal."""
        ring = make_ring(RECORD_DTYPE, lanes=1, capacity=64)
        writer = ring.writer()
        writer.put_many(batch)
        pending = ring.pending(0)
        store.write(ring.epoch, [], [pending])
        ring.advance(0, pending.end_seq)
        columns = ", ".join(schema.event_columns())
        rows = store.db.execute(
            f"SELECT {columns} FROM events WHERE epoch = ? ORDER BY seq",
            (ring.epoch,),
        ).fetchall()
        assert len(rows) == len(batch)
        for row, record in zip(rows, batch, strict=True):
            for name, value in zip(RECORD_DTYPE.names, row, strict=True):
                if name in LIST_FIELDS:
                    assert value == list_label_id(record[name].tolist())
                elif value is None:  # NaN is stored as NULL
                    assert math.isnan(record[name])
                else:
                    assert value == record[name].item()
        writer.close()
        ring.close()
        ring.unlink()


class TestCorruption:
    def test_damaged_database_is_refused(self, tmp_path):
        """quick_check failure: a clear error, and no write happens."""
        path = tmp_path / "bad.db"
        store = Store(str(path))
        store.write(1, [], [events_batch(np.repeat(one_event(), 2000))])
        store.close()
        data = bytearray(path.read_bytes())
        page = int.from_bytes(data[16:18], "big")  # the header says
        middle = len(data) // page // 2 * page  # a b-tree page of events
        data[middle : middle + page] = b"\xff" * page
        path.write_bytes(bytes(data))
        with pytest.raises(DatabaseCorrupt, match="damaged") as info:
            Store(str(path))
        assert str(path) in str(info.value)

    def test_a_smaller_file_put_at_the_path_is_a_replacement(self, tmp_path):
        """Checkpointing after someone put a small foreign file at the path:
        a replacement (left alone), never "truncated" (set aside)."""
        path = tmp_path / "u.db"
        store = Store(str(path))
        try:
            store.write(1, [], [events_batch(np.repeat(one_event(), 2000))])
            foreign = tmp_path / "foreign.db"
            with contextlib.closing(sqlite3.connect(foreign)) as db:
                db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
            os.replace(foreign, path)
            with pytest.raises(DatabaseReplaced):
                store.checkpoint()
        finally:
            store.close()

    def test_not_a_database(self, tmp_path):
        """A file that is not SQLite at all is refused the same way."""
        path = tmp_path / "text.db"
        path.write_text("hello, I am not a database" * 200)
        with pytest.raises(DatabaseCorrupt, match="damaged"):
            Store(str(path))


class TestRetry:
    def test_a_batch_retried_after_a_rollback_keeps_its_lists(
        self, store, monkeypatch
    ):
        """A batch whose transaction fails after its inserts is retried:
        its agent list must still be written (the list cache once kept
        believing the rolled-back list was stored)."""
        event = one_event()
        event["actual_agents"][0, 0] = label_id("agent_a")
        calls = []

        def fail_once() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise DatabaseCorrupt("simulated failure after the inserts")

        monkeypatch.setattr(store, "verify", fail_once)
        batch = [labels_batch("agent_a")], [events_batch(event)]
        with pytest.raises(DatabaseCorrupt):
            store.write(1, *batch)
        assert store.write(1, *batch) == 1
        (agents,) = store.db.execute(
            "SELECT actual_agents FROM monitoring_events"
        ).fetchone()
        assert agents == '["agent_a"]'
